"""The email rule (rule 2 of `docs/export-format.md`): which tenants casavi can reach online.

A tenant is synced only with a syntactically valid address. The rule is deliberately pragmatic and
exactly as written in the contract: after trimming, exactly one `@`, no whitespace, a non-empty local
part, and a domain that contains a dot and neither starts nor ends with one. So `max@`, `a b@c.de`,
`x@.de`, `x@de` and `x@de.` are invalid, while `x@d..e` is valid (the contract does not forbid empty
labels in the middle of the domain; a stricter rule would silently drop tenants the contract syncs).
Nor does it restrict the alphabet: `jürgen@example.de` and `name@bücher.de` (internationalised addresses)
are valid and reach casavi as written; casavi's model asks only for a valid address.

"Whitespace" is every character a person cannot see: Unicode's spaces and separators, control
characters, and the invisible format characters (zero-width space U+200B, zero-width joiner, soft
hyphen, byte order mark, direction marks, ...). An ERP or a copy from a web page leaves them behind;
inside an address (`max@exam\u200bple.de`) they make it another address than the one shown, which no
mail server delivers, so such an address is invalid. At either end they are trimmed like a space.

ERPs often keep several addresses in one field: the value is split at `;` and `,`, and the first part
that is valid on its own is used, e.g. `"bad; good@x.de"` → `good@x.de`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# local part: no @, no whitespace, non-empty; domain: no @/whitespace, a dot inside, no dot at either end
# (ASCII control characters count as whitespace; other invisible characters: `_invisible`)
_VALID_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.][^@\s\x00-\x1f\x7f]*\.[^@\s\x00-\x1f\x7f]*[^@\s\x00-\x1f\x7f.]")
_LIST_SEPARATORS = re.compile(r"[;,]")
#: Unicode categories a person cannot see: control, format (U+200B, U+00AD, U+FEFF, ...), separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _invisible(character: str) -> bool:
    return unicodedata.category(character) in _INVISIBLE_CATEGORIES


def is_valid_email(candidate: str | None) -> bool:
    """Whether one address (already trimmed) passes the pragmatic rule."""
    if not isinstance(candidate, str) or _VALID_EMAIL.fullmatch(candidate) is None:
        return False
    # ASCII is settled by the pattern; only other characters need their Unicode category looked up.
    return candidate.isascii() or not any(_invisible(c) for c in candidate if not c.isascii())


def _trimmed(text: str) -> str:
    """`text` without whitespace at either end, invisible characters counted as whitespace."""
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):  # Zs and Cc hold the space, tab and line breaks
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def first_valid_email(value: str | None) -> str | None:
    """The address casavi gets for an ERP `email` value: the first valid, trimmed one, else None."""
    if not isinstance(value, str):
        return None
    for part in _LIST_SEPARATORS.split(value):
        candidate = _trimmed(part)
        if is_valid_email(candidate):
            return candidate
    return None


def first_valid_emails(values: Iterable[str | None]) -> list[str | None]:
    """`first_valid_email` for a whole column (a plain loop: ~1 µs per value, no pandas overhead)."""
    return [first_valid_email(value) for value in values]
