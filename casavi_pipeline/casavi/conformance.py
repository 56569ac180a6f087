"""Does a casavi account match our model of its API (`api.py`)? What `casavi-pipeline check-casavi` runs.

casavi publishes no write side of its API v2, so our adapter is partly a model (docs/casavi-api.md,
"Checking the model against a real account"). Before the first write to a customer's account, this
module reads what the account holds and compares it with the adapter's constants; every contradiction
names the constant to change.

Read-only (safe on a production account): log in, read the first page of each kind and one object of
each kind by id (7 requests, no writes; an 8th, a page of one object, when no first page carried a next
link), and report per kind the fields we send that casavi returned, the ones it never returned, the
fields it returned that the model does not know, enum values outside ours, the shapes of a property's
addresses (`street`, `units`) and of a contact's contracts, the paging envelope, and the host of the
first `_links.next` (casavi may serve an account under another host: then it suggests the
`CASAVI_BASE_URL` to set; the link is never followed, so the token never goes there). By field names
and counts only: the objects hold names, emails and phone numbers, so no value is ever reported, except
an enum value shaped like a code (`PARKING`, `api.CODE_SHAPE`).

An enum value outside ours is a contradiction (the enum is wrong: the sync would send ours over it),
except for a field whose values casavi's own UI sets beyond ours (`api.FieldRule.keep_foreign`: a
unit's usage Stellplatz, or none): that is a NOTE, since the sync keeps such a value as casavi holds it.

With the write test (a casavi **test** account only): create a property, a unit and a contact with one
contract under the reserved reference-id prefix `casavi-pipeline-check` + separator, read each back,
compare it with what was sent, delete them again (contact → unit → property), read each deleted one
back (gone, or still there: archived?), and report each step's status code, and in one line what
`DELETE` answered per kind (a deletion in casavi is final; what its API answers is [model]). With the separator `/`, the ids carry it, so the write test also shows whether a `/`
survives percent-encoding (`%2F`) in a path.

`Report.exit_code`: 0 the account matches the model, 1 it contradicts it, 2 it could not be checked —
also when the account holds nothing to compare (no property, unit or contact) and the write test was not
asked for: an empty account proves nothing, so 0 would wrongly let a go-live script pass.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import FieldRule, ObjectKind
from casavi_pipeline.casavi.client import CasaviClient, WriteResult
from casavi_pipeline.casavi.errors import (
    CasaviAuthError,
    CasaviError,
    CasaviModelMismatchError,
    CasaviUnavailableError,
)
from casavi_pipeline.casavi.paging import on_origin
from casavi_pipeline.dates import is_iso_date

MATCHES, CONTRADICTS, CANNOT_CHECK = 0, 1, 2
#: The write test's reference ids are this, the separator and the kind (`casavi-pipeline-check-unit`).
RESERVED_PREFIX = "casavi-pipeline-check"
#: A field name casavi returned is shown only in this shape; anything else is only counted (a key could
#: be a value: an email used as a map key).
FIELD_NAME_SHAPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TYPE_WORDS = {
    "string": "strings",
    "number": "numbers",
    "date": "dates YYYY-MM-DD",
    "object_list": "lists of objects",
}
#: casavi's names of what ties a unit to its property's address, by our domain names
_ADDRESSES = api.rule_of(ObjectKind.PROPERTY, "addresses").casavi
_STREET = next(rule.casavi for rule in api.ADDRESS_RULES if rule.name == "street")
_UNIT_PROPERTY = api.rule_of(ObjectKind.UNIT, "property_id").casavi
_UNIT_ADDRESS = api.rule_of(ObjectKind.UNIT, "address").casavi
#: The JSON type a value of each rule type has: an unknown field of that type may be ours, renamed.
_JSON_TYPES = {"string": "string", "date": "string", "number": "number", "object_list": "list"}


@dataclass(frozen=True)
class Contradiction:
    """The account contradicts the model: `constant` names what to change in `api.py`."""

    constant: str  # e.g. 'FIELD_RULES[unit] field "rooms"', 'ContractType'
    problem: str  # what casavi does instead: field names, counts and status codes only

    def __str__(self) -> str:
        return f"{self.constant}: {self.problem}"


def _is_unmanaged(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in api.UNMANAGED_READ_FIELDS)


def _constant_name(value: object) -> str | None:
    """The name under which `api` holds this very object (`ADDRESS_RULES`), if any."""
    return next((name for name, held in vars(api).items() if held is value and name.isupper()), None)


def _enum_name(rule: FieldRule) -> str:
    """The adapter's enum class of a field (`Usage`)."""
    for name, held in vars(api).items():
        if isinstance(held, type) and issubclass(held, StrEnum) and tuple(held) == rule.enum:
            return name
    return f'enum of field "{rule.casavi}"'  # pragma: no cover - every enum field has its class


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), "other")


def _has_type(rule: FieldRule, value: Any) -> bool:
    if rule.type == "string":
        return isinstance(value, str)
    if rule.type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if rule.type == "date":
        return is_iso_date(value)
    return isinstance(value, list) and all(isinstance(entry, Mapping) for entry in value)


def _names(counts: Mapping[str, int], total: int) -> str:
    """`a, b (2 of 3)`: the names, with a count where not every object had it."""
    if not counts:
        return "-"
    return ", ".join(name if n == total else f"{name} ({n} of {total})" for name, n in counts.items())


@dataclass
class _Level:
    """What the objects of one level carried: a kind's objects, or the entries of one embedded list."""

    constant: str  # how the adapter names the level's rules: 'FIELD_RULES[unit]', 'ADDRESS_RULES'
    rules: tuple[FieldRule, ...]
    #: fields the model expects on reads besides ours, with the constant naming each (address `units`)
    read_only: dict[str, str] = field(default_factory=dict)
    objects: int = 0
    present: Counter[str] = field(default_factory=Counter)  # our fields, by casavi name
    read_only_present: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)  # fields the model does not know
    unknown_types: dict[str, set[str]] = field(default_factory=dict)  # their values' JSON types
    unnamed: int = 0  # keys not shaped like a field name: counted, never shown
    required_empty: Counter[str] = field(default_factory=Counter)  # required, but null or absent
    wrong_type: Counter[str] = field(default_factory=Counter)
    outside: dict[str, Counter[str]] = field(default_factory=dict)  # field → code ("" unshaped) → count
    #: the same for `keep_foreign` fields, whose values outside ours casavi's UI sets: notes, kept by the sync
    foreign: dict[str, Counter[str]] = field(default_factory=dict)
    empty: Counter[str] = field(default_factory=Counter)  # `keep_foreign` fields holding "" (filled by the sync)
    ours_seen: Counter[str] = field(default_factory=Counter)  # `keep_foreign` fields holding one of ours
    children: dict[str, _Level] = field(default_factory=dict)  # the embedded lists' entries

    def __post_init__(self) -> None:
        for rule in self.rules:
            if rule.type == "object_list":
                read_only = (
                    {api.ADDRESS_UNITS_FIELD: "ADDRESS_UNITS_FIELD"}
                    if rule.items is api.ADDRESS_RULES
                    else {}
                )
                constant = _constant_name(rule.items) or f'{self.constant} field "{rule.casavi}" items'
                self.children[rule.casavi] = _Level(constant, rule.items, read_only)

    def add(self, obj: Mapping[str, Any]) -> None:
        self.objects += 1
        ours = {rule.casavi for rule in self.rules}
        for key in obj:
            if key in ours:
                self.present[key] += 1
            elif key in self.read_only:
                self.read_only_present[key] += 1
            elif _is_unmanaged(key):
                continue
            elif FIELD_NAME_SHAPE.fullmatch(key):
                self.unknown[key] += 1
                if obj[key] is not None:
                    self.unknown_types.setdefault(key, set()).add(_json_type(obj[key]))
            else:
                self.unnamed += 1
        for rule in self.rules:
            value = obj.get(rule.casavi)
            if value is None:
                if rule.required:
                    self.required_empty[rule.casavi] += 1
            elif not _has_type(rule, value):
                self.wrong_type[rule.casavi] += 1
            elif rule.keep_foreign and value == "":
                self.empty[rule.casavi] += 1
            elif rule.enum is not None and value not in rule.enum:
                shown = value if api.looks_like_code(value) else ""
                held = self.foreign if rule.keep_foreign else self.outside
                held.setdefault(rule.casavi, Counter())[shown] += 1
            elif rule.keep_foreign:
                self.ours_seen[rule.casavi] += 1
            elif rule.type == "object_list":
                for entry in value:
                    self.children[rule.casavi].add(entry)

    def _field(self, name: str) -> str:
        return f'{self.constant} field "{name}"'

    def renamed_candidates(self, rule: FieldRule) -> list[str]:
        """Unknown fields whose values have this field's type: where a renamed field would show."""
        json_type = _JSON_TYPES[rule.type]
        return [name for name, types in self.unknown_types.items() if json_type in types]

    def contradictions(self) -> list[Contradiction]:
        """Required fields never returned; a field never returned while an unknown field of its type
        was (renamed?); values of another type; enum values outside ours; expected read-only fields."""
        if not self.objects:
            return []
        found: list[Contradiction] = []
        for rule in self.rules:
            name = rule.casavi
            candidates = ", ".join(self.renamed_candidates(rule))
            if not self.present[name] and (rule.required or candidates):
                problem = "casavi never returned it" + (" (required)" if rule.required else "")
                if candidates:
                    problem += f"; it returned fields the model does not know: {candidates} (renamed?)"
                found.append(Contradiction(self._field(name), problem))
            if self.wrong_type[name]:
                found.append(
                    Contradiction(
                        self._field(name),
                        f"{self.wrong_type[name]} of {self.objects} values are not {_TYPE_WORDS[rule.type]}",
                    )
                )
            if name in self.outside:
                found.append(
                    Contradiction(
                        _enum_name(rule),
                        f'field "{name}" has values outside ours: {_outside(self.outside[name])}',
                    )
                )
        for name, constant in self.read_only.items():
            if not self.read_only_present[name]:
                found.append(
                    Contradiction(
                        constant, f'none of {self.objects} entries of {self.constant} carried "{name}"'
                    )
                )
        for child in self.children.values():
            found += child.contradictions()
        return found

    def notes(self) -> list[str]:
        """Values of `keep_foreign` fields outside ours or empty: casavi's UI sets them, the sync keeps them."""
        found = []
        for rule in self.rules:
            name, foreign, empty = rule.casavi, self.foreign.get(rule.casavi), self.empty[rule.casavi]
            if foreign:
                found.append(
                    f'{_enum_name(rule)}: field "{name}" has values casavi\'s UI sets beyond ours: '
                    f"{_outside(foreign)}; the sync keeps them as casavi holds them"
                    + (
                        ""
                        if self.ours_seen[name]
                        else f" (none of ours among {self.objects}: if casavi names ours otherwise, change "
                        f"{_enum_name(rule)})"
                    )
                )
            if empty:
                found.append(
                    f'{_enum_name(rule)}: field "{name}" is empty on {empty} of {self.objects}; the sync fills '
                    "it with the ERP's value"
                )
        for child in self.children.values():
            found += child.notes()
        return found

    def lines(self, indent: str = "  ") -> list[str]:
        n = self.objects
        returned = {
            rule.casavi: self.present[rule.casavi] for rule in self.rules if self.present[rule.casavi]
        }
        never = [rule.casavi for rule in self.rules if not self.present[rule.casavi]]
        lines = [
            f"{indent}fields we send, returned: {_names(returned, n)}",
            f"{indent}fields we send, never returned: {', '.join(never) or '-'}"
            + (" (empty on every object read, or not kept by casavi: the write test tells)" if never else ""),
            f"{indent}fields casavi returned that the model does not know: {_names(self.unknown, n)}"
            + (f" and {self.unnamed} keys not shaped like a field name" if self.unnamed else ""),
        ]
        if self.read_only:
            lines.append(f"{indent}read-only fields: {_names(self.read_only_present, n)}")
        if self.required_empty:
            lines.append(f"{indent}required, but null or absent: {_names(self.required_empty, n)}")
        if self.wrong_type:
            lines.append(f"{indent}not of the model's type: {_names(self.wrong_type, n)}")
        outside = "; ".join(
            f"{name}: {_outside(counts)}" for name, counts in (*self.outside.items(), *self.foreign.items())
        )
        lines.append(f"{indent}enum values outside ours: {outside or '-'}")
        for name, child in self.children.items():
            if child.objects:
                lines.append(f"{indent}{name}: {child.objects} entries")
                lines += child.lines(indent + "  ")
            else:
                lines.append(f"{indent}{name}: no entries to compare")
        return lines


def _outside(counts: Counter[str]) -> str:
    shown = [f"{code} ({n})" for code, n in counts.most_common() if code]
    if counts[""]:
        shown.append(f"{counts['']} values not shaped like a code")
    return ", ".join(shown)


@dataclass
class KindCheck:
    """The read-only check of one kind: its first page and one object by id."""

    kind: ObjectKind
    level: _Level
    page_size: int = api.MAX_PAGE_SIZE
    listed: int = 0
    envelope: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    has_next: bool = False
    next_url: str | None = None  # the first page's `_links.next`, resolved; never followed
    read_by_id: str = "not read"  # "200", "404", or why not
    objects: list[dict[str, Any]] = field(default_factory=list, repr=False)  # held in memory only
    contradictions: list[Contradiction] = field(default_factory=list)

    def lines(self) -> list[str]:
        name = self.kind.value
        if not self.listed and not self.contradictions:
            return [f"{name}: nothing to compare (the account has no {self.kind.collection})"]
        paging = "a next link" if self.has_next else "no next link"
        head = (
            f"{name}: {self.listed} objects on the first page ({api.PAGE_SIZE_PARAM}={self.page_size}, "
            f"{paging}); one read by id: {self.read_by_id}"
        )
        return [head, *(self.level.lines() if self.level.objects else [])]


@dataclass(frozen=True)
class Step:
    """One request of the write test and casavi's answer."""

    call: str  # "PUT /v2/units/{id}"
    status: int | None
    expected: tuple[int, ...]

    def __str__(self) -> str:
        mark = "ok" if self.status in self.expected else f"expected {'/'.join(map(str, self.expected))}"
        return f"{self.call} → {self.status if self.status is not None else 'no answer'} ({mark})"


@dataclass
class Report:
    """The check's outcome: `lines()` for a person, `summary` in one line, `exit_code`."""

    target: str  # casavi's URL (never credentials)
    kinds: list[KindCheck] = field(default_factory=list)
    contradictions: list[Contradiction] = field(default_factory=list)  # besides the kinds' own
    notes: list[str] = field(default_factory=list)
    steps: list[Step] | None = None  # the write test's, when it ran
    deletes: list[str] = field(default_factory=list)  # the write test's: what DELETE answered, per kind
    left_behind: list[str] = field(default_factory=list)  # reference ids the write test could not delete
    cannot_check: str | None = None  # why nothing could be compared, and what to do
    requests: int = 0
    writes: int = 0

    @property
    def all_contradictions(self) -> list[Contradiction]:
        return [c for kind in self.kinds for c in kind.contradictions] + self.contradictions

    @property
    def exit_code(self) -> int:
        if self.cannot_check is not None:
            return CANNOT_CHECK
        return CONTRADICTS if self.all_contradictions or self.left_behind else MATCHES

    @property
    def summary(self) -> str:
        counted = f"{self.requests} requests, {self.writes} writes"
        left = [f"left behind by the write test: {ref} (delete it in casavi)" for ref in self.left_behind]
        if self.cannot_check is not None:
            return f"cannot check casavi at {self.target}: {self.cannot_check} ({counted})" + "".join(
                f" | {line}" for line in left
            )
        problems = [str(c) for c in self.all_contradictions] + left
        if problems:
            return f"casavi at {self.target} contradicts casavi_pipeline's model ({counted}): " + " | ".join(
                problems
            )
        return f"casavi at {self.target} matches casavi_pipeline's model ({counted})"

    def lines(self) -> list[str]:
        mode = "read-only check, then the write test" if self.steps is not None else "read-only check"
        lines = [f"casavi at {self.target}: {mode}"]
        for kind in self.kinds:
            lines += kind.lines()
        lines += self.notes
        if self.kinds:
            lines.append(_paging_line(self.kinds))
        if self.steps is not None:
            lines.append("write test:")
            lines += [f"  {step}" for step in self.steps]
        if self.deletes:
            lines.append(f"DELETE answers: {'; '.join(self.deletes)}")
        lines += [f"NOTE {note}" for kind in self.kinds for note in kind.level.notes()]
        lines += [f"CONTRADICTION {c}" for c in self.all_contradictions]
        lines += [f"LEFT BEHIND {ref}: delete it in casavi" for ref in self.left_behind]
        lines.append(self.summary)
        return lines


def _paging_line(kinds: Iterable[KindCheck]) -> str:
    """The envelope's field names over the kinds read, and which kinds had a next link."""
    envelope = dict.fromkeys(name for k in kinds for name in k.envelope if FIELD_NAME_SHAPE.fullmatch(name))
    links = dict.fromkeys(name for k in kinds for name in k.links if FIELD_NAME_SHAPE.fullmatch(name))
    paged = [k.kind.collection for k in kinds if k.has_next]
    return (
        f"paging envelope: {', '.join(envelope) or 'not read'}; {api.LINKS_KEY}: {', '.join(links) or '-'}"
        + (f" ({api.NEXT_LINK_KEY} on {', '.join(paged)}: not followed)" if paged else "")
    )


# --- the read-only check -----------------------------------------------------------------------------
def check_account(client: CasaviClient, *, separator: str, write_test: bool = False) -> Report:
    """Compare the account behind `client` with the model; with `write_test`, write and delete too.

    Never raises for casavi's answers: an account that cannot be checked is `Report.cannot_check`.
    """
    report = Report(target=client.base_url)
    try:
        try:
            client.authenticate()
        except (CasaviAuthError, CasaviUnavailableError):
            raise
        except CasaviError as exc:  # a 404/405 or a page that is not casavi's: the URL is wrong
            report.cannot_check = (
                f"the login ({exc.call}) answered {exc.status}, not casavi's token: set CASAVI_BASE_URL to "
                "casavi's host root, e.g. https://api.mycasavi.com"
            )
            return report
        for kind in api.UPSERT_ORDER:
            report.kinds.append(_check_kind(client, kind))
        report.contradictions += _check_unit_addresses(report)
        report.contradictions += _check_next_host(client, report)
        empty = not any(kind.listed for kind in report.kinds) and not report.all_contradictions
        if empty and not write_test:
            report.cannot_check = NOTHING_TO_COMPARE
        elif empty:
            report.notes.append("the account holds nothing to compare: only the write test's objects were")
        if write_test:
            _write_test(client, separator, report)
    except CasaviAuthError as exc:
        what = "the API key/secret" if exc.call == f"POST {api.AUTH_PATH}" else f"the key for {exc.call}"
        report.cannot_check = (
            f"casavi refused {what} ({exc.status}): set valid CASAVI_API_KEY and CASAVI_API_SECRET"
            + (
                ""
                if exc.call == f"POST {api.AUTH_PATH}"
                else " for a key that may read and write the account"
            )
        )
    except CasaviUnavailableError as exc:
        report.cannot_check = (
            f"casavi cannot be reached ({exc.message}; {exc.call}): is CASAVI_BASE_URL right and casavi up?"
        )
    finally:
        report.requests, report.writes = client.stats.requests, client.stats.writes
    return report


#: Why an empty account cannot be checked, and what to do (`Report.cannot_check`).
NOTHING_TO_COMPARE = (
    "the account holds no property, unit or contact, so nothing was compared: run `casavi-pipeline "
    "check-casavi --write-test` (in Dagster: casavi_conformance with write_test) against a casavi test account"
)


def _check_next_host(client: CasaviClient, report: Report) -> list[Contradiction]:
    """The host of the first `_links.next` (a page of one object when no first page had one): casavi
    may serve an account under another host (a vendor links `api-v2.mycasavi.com`). The sync sends its
    token only to the configured host and stops at a link elsewhere, so that host is the one to set."""
    link = next((kind.next_url for kind in report.kinds if kind.next_url), None)
    probe = next((kind.kind for kind in report.kinds if kind.listed >= 2), None)
    if link is None and probe is not None:
        link = _first_next_link(client, probe)
    if link is None:
        report.notes.append("next link: none seen (no kind holds two objects); its host is not checked")
        return []
    target = httpx.URL(link)
    origin = f"{target.scheme}://{target.netloc.decode()}"
    if on_origin(link, httpx.URL(client.base_url)):
        report.notes.append(f"next link: on {target.host}, the configured host")
        return []
    report.notes.append(f"next link: on {target.host}, not the configured host (not followed)")
    return [
        Contradiction(
            "CASAVI_BASE_URL",
            f"casavi's next-page link points at {origin}, not at {client.base_url}: set "
            f"CASAVI_BASE_URL={origin} (the sync sends its token only to the configured host, and stops "
            "at a link elsewhere)",
        )
    ]


def _first_next_link(client: CasaviClient, kind: ObjectKind) -> str | None:
    """The `_links.next` of a first page of one object (the link is not followed)."""
    pages = client.list_pages(kind, page_size=1)
    try:
        return next(pages).next_url
    except (CasaviAuthError, CasaviUnavailableError):
        raise
    except (CasaviError, StopIteration):  # the kind's own listing reported what casavi answered
        return None
    finally:
        pages.close()


def _check_kind(client: CasaviClient, kind: ObjectKind) -> KindCheck:
    check = KindCheck(kind, _Level(f"FIELD_RULES[{kind.value}]", api.FIELD_RULES[kind]))
    pages = client.list_pages(kind, page_size=check.page_size)
    try:
        page = next(pages)
    except (CasaviAuthError, CasaviUnavailableError):
        raise
    except CasaviError as exc:
        check.contradictions.append(_listing_contradiction(kind, exc))
        return check
    finally:
        pages.close()  # the first page only: the next link is not followed
    check.listed, check.envelope, check.links = len(page.objects), page.envelope, page.links
    check.has_next, check.next_url = page.next_url is not None, page.next_url
    if check.listed > check.page_size:
        check.contradictions.append(
            Contradiction(
                "PAGE_SIZE_PARAM",
                f"casavi returned {check.listed} {kind.collection} for {api.PAGE_SIZE_PARAM}={check.page_size}",
            )
        )
    elif check.listed == check.page_size and not check.has_next:  # the sync would miss the rest
        check.contradictions.append(
            Contradiction(
                "LINKS_KEY / NEXT_LINK_KEY",
                f"a full first page of {kind.collection} carries no {api.LINKS_KEY}.{api.NEXT_LINK_KEY}",
            )
        )
    check.objects = [obj for obj in page.objects if isinstance(obj, Mapping)]
    if len(check.objects) < check.listed:
        check.contradictions.append(
            Contradiction(
                "LIST_KEY", f"{check.listed - len(check.objects)} entries of the list are not objects"
            )
        )
    for obj in check.objects:
        check.level.add(obj)
    listed = next((obj for obj in check.objects if isinstance(obj.get(api.ID_FIELD), str)), None)
    if listed is None:
        check.read_by_id = "no listed object with an id" if check.objects else "nothing listed"
    else:
        _read_by_id(client, check, listed)
    check.contradictions[:0] = check.level.contradictions()
    return check


def _read_by_id(client: CasaviClient, check: KindCheck, listed: Mapping[str, Any]) -> None:
    """Read one listed object by its id: the path works, and the listing carries what the read does."""
    try:
        obj = client.get_object(check.kind, listed[api.ID_FIELD])
    except (CasaviAuthError, CasaviUnavailableError):
        raise
    except CasaviError as exc:
        check.read_by_id = str(exc.status)
        check.contradictions.append(Contradiction("ObjectKind.object_path", str(exc)))
        return
    if obj is None:
        check.read_by_id = str(api.STATUS_NOT_FOUND)
        check.contradictions.append(
            Contradiction(
                "ID_FIELD / ObjectKind.object_path",
                f"GET {check.kind.collection_path}/{{id}} with an id the listing gave answered 404",
            )
        )
        return
    ours = {rule.casavi for rule in api.FIELD_RULES[check.kind]}
    only_read = sorted(ours & set(obj) - set(listed))
    only_listed = sorted(ours & set(listed) - set(obj))
    check.read_by_id = "200, " + (
        "the same fields as listed"
        if not only_read and not only_listed
        else f"fields only in the read: {', '.join(only_read) or '-'}, only listed: {', '.join(only_listed) or '-'}"
    )
    if only_read:  # the sync reads listings: what they leave out would look deleted in casavi
        check.contradictions.append(
            Contradiction(
                "LIST_KEY", f"the listing leaves out fields a read by id returns: {', '.join(only_read)}"
            )
        )


def _listing_contradiction(kind: ObjectKind, exc: CasaviError) -> Contradiction:
    if isinstance(exc, CasaviModelMismatchError):
        constant = f"_COLLECTIONS[{kind.name}]"
    elif exc.status == api.STATUS_INVALID:
        constant = "MAX_PAGE_SIZE / ObjectKind.read_params"
    elif exc.status is None:  # the next link left the configured casavi
        constant = "LINKS_KEY / NEXT_LINK_KEY (or CASAVI_BASE_URL)"
    else:
        constant = "LIST_KEY"
    return Contradiction(constant, str(exc))


def _check_unit_addresses(report: Report) -> list[Contradiction]:
    """A unit's `address` names one of its property's streets; that address lists the unit in `units`.

    Compared for the units whose property is on the first page of properties.
    """
    objects = {check.kind: check.objects for check in report.kinds}
    streets: dict[str, dict[str, Any]] = {}
    for prop in objects.get(ObjectKind.PROPERTY, []):
        addresses = prop.get(_ADDRESSES)
        if isinstance(prop.get(api.ID_FIELD), str) and isinstance(addresses, list):
            streets[prop[api.ID_FIELD]] = {
                a.get(_STREET): a.get(api.ADDRESS_UNITS_FIELD) for a in addresses if isinstance(a, Mapping)
            }
    compared = matched = listed = 0
    for unit in objects.get(ObjectKind.UNIT, []):
        at = streets.get(unit.get(_UNIT_PROPERTY))
        if not at:
            continue
        compared += 1
        address = unit.get(_UNIT_ADDRESS)
        if isinstance(address, str) and address in at:
            matched += 1
            units = at[address]
            listed += isinstance(units, list) and unit.get(api.ID_FIELD) in units
    if not compared:
        report.notes.append("unit addresses: no unit's property is on the first page; not compared")
        return []
    report.notes.append(
        f'unit addresses: {matched} of {compared} units name a street of their property in "{_UNIT_ADDRESS}"; '
        f'{listed} of {matched} are in that address\'s "{api.ADDRESS_UNITS_FIELD}"'
    )
    if matched < compared:
        return [
            Contradiction(
                f'FIELD_RULES[{ObjectKind.UNIT.value}] field "{_UNIT_ADDRESS}"',
                f"{compared - matched} of {compared} units name no street of their property",
            )
        ]
    return []


# --- the write test ----------------------------------------------------------------------------------
def write_test_records(separator: str) -> dict[ObjectKind, dict[str, Any]]:
    """The write test's objects (domain records): every field filled, no person's data."""
    ref = {kind: f"{RESERVED_PREFIX}{separator}{kind.value}" for kind in api.UPSERT_ORDER}
    street = "Prüfweg 1"
    place = {"postal_code": "10115", "city": "Berlin", "country": api.country_names()["DE"]}
    return {
        ObjectKind.PROPERTY: {
            "id": ref[ObjectKind.PROPERTY],
            "name": "casavi-pipeline check-casavi",
            "number": "CHECK",
            **place,
            "note": "written and deleted again by casavi-pipeline check-casavi --write-test",
            "addresses": [{"street": street}],
        },
        ObjectKind.UNIT: {
            "id": ref[ObjectKind.UNIT],
            "property_id": ref[ObjectKind.PROPERTY],
            "address": street,
            "name": "Prüfeinheit",
            "number": "CHECK-1",
            "usage": api.Usage.PRIVATE.value,
            "area": 50.5,
            "rooms": 2.0,
        },
        ObjectKind.CONTACT: {
            "id": ref[ObjectKind.CONTACT],
            "salutation": api.Salutation.DIVERSE.value,
            "title": "Dr.",
            "first_name": "Prüf",
            "last_name": "Konto",
            "company_name": "casavi-pipeline check-casavi",
            "email": "casavi-pipeline-check@example.com",
            "telephone": "+49 30 0000000",
            "mobile": "+49 170 0000000",
            "street": street,
            **place,
            "preferred_way_of_contact": api.WayOfContact.POSTAL.value,
            "contracts": [
                {
                    "contract_type": api.ContractType.RENTER.value,
                    "property_id": ref[ObjectKind.PROPERTY],
                    "unit_id": ref[ObjectKind.UNIT],
                    "number": "CHECK-1",
                    "start_date": "2000-01-01",
                    "end_date": None,
                }
            ],
        },
    }


#: How a test object's write and read-back ended: read back; refused (400, 422); lost on the way (a
#: 404/405 on its PUT, or a 404 reading it back: casavi's paths are not what the model says).
_READ, _REFUSED, _LOST = "read", "refused", "lost"


def _write_test(client: CasaviClient, separator: str, report: Report) -> None:
    """Create, read back and delete one object of each kind; each step's status lands in the report."""
    report.steps = []
    records = write_test_records(separator)
    outcomes: list[str] = []
    try:
        for kind in api.UPSERT_ORDER:
            outcomes.append(_write_and_read_back(client, kind, records[kind], report))
            if outcomes[-1] != _READ:
                break  # the next kind references this one
    finally:
        _clean_up(client, records, report)
    if separator == "/":  # the test ids carry it: did casavi's front end route `%2F` in a path segment?
        if _LOST in outcomes:
            report.contradictions.append(
                Contradiction(
                    "CASAVI_ID_SEPARATOR",
                    "a test object whose reference id holds '/' (%2F in the path) could not be written or read "
                    "back by id: unless the read-only part found the same path contradicted, choose another "
                    "separator",
                )
            )
        elif outcomes and outcomes[0] == _READ:
            report.notes.append("separator '/': a reference id with '/' (%2F in the path) survives")


def _clean_up(client: CasaviClient, records: Mapping[ObjectKind, Mapping[str, Any]], report: Report) -> None:
    """Delete the test objects (contact → unit → property), each even if an earlier delete failed; what
    is left is named. A casavi that fails or refuses meanwhile is raised after every delete was tried."""
    failure: CasaviError | None = None
    for kind in api.DELETE_ORDER:
        ref_id = records[kind]["id"]
        answer = "no answer"
        try:
            result = _write_step(report, kind, "DELETE", lambda k=kind, r=ref_id: client.delete(k, r))
        except CasaviAuthError as exc:
            result = None
            if exc.status == api.STATUS_FORBIDDEN:  # this key may not delete: recorded, not fatal
                answer = f"{exc.status} (this API key may not delete)"
            else:
                failure = failure or exc
        except CasaviUnavailableError as exc:
            failure, result = failure or exc, None
        if result is None or not result.ok:
            report.left_behind.append(ref_id)
        if result is not None:
            answer = str(result.status)
            if result.ok and result.status != api.STATUS_NOT_FOUND:
                answer += _read_back_deleted(client, kind, ref_id, report)
        report.deletes.append(f"{kind.value} {answer}")
        if result is not None and result.status == api.STATUS_CONFLICT:
            report.contradictions.append(
                Contradiction(
                    "DELETE_ORDER", f"deleting the test {kind.value} answered 409 (still referenced)"
                )
            )
    if failure is not None:
        raise failure


def _read_back_deleted(client: CasaviClient, kind: ObjectKind, ref_id: str, report: Report) -> str:
    """Read a test object casavi confirmed deleted: gone (404), or still there (archived, not deleted?)."""
    assert report.steps is not None
    call = f"GET {kind.collection_path}/{{id}}"
    try:
        read = client.get_object(kind, ref_id)
    except (CasaviAuthError, CasaviUnavailableError):
        raise
    except CasaviError as exc:
        report.steps.append(Step(call, exc.status, (api.STATUS_NOT_FOUND,)))
        return f", then {exc.status} reading it"
    report.steps.append(Step(call, api.STATUS_NOT_FOUND if read is None else 200, (api.STATUS_NOT_FOUND,)))
    if read is None:
        return ", gone when read back"
    report.left_behind.append(ref_id)
    report.contradictions.append(
        Contradiction(
            "STATUS_DELETED",
            f"the test {kind.value} casavi confirmed deleted is still read by id (archived, not deleted?)",
        )
    )
    return ", still read by id"


def _unexpected(report: Report, kind: ObjectKind, call: str, exc: CasaviError) -> None:
    """A write-test call casavi answered unexpectedly: a contradiction (refusals and outages propagate)."""
    if isinstance(exc, CasaviAuthError | CasaviUnavailableError):
        raise exc
    constant = (
        f"_COLLECTIONS[{kind.name}] / ObjectKind.object_path"
        if isinstance(exc, CasaviModelMismatchError)
        else call
    )
    report.contradictions.append(Contradiction(constant, str(exc)))


def _write_step(
    report: Report, kind: ObjectKind, method: str, send: Callable[[], WriteResult]
) -> WriteResult | None:
    """One write of the write test: its step, and a contradiction unless casavi confirmed it (None: the
    call itself is not what the model says)."""
    assert report.steps is not None
    call = f"{method} {kind.collection_path}/{{id}}"
    expected = (
        (api.STATUS_CREATED, api.STATUS_UPDATED)
        if method == "PUT"
        else (api.STATUS_DELETED, api.STATUS_UPDATED, api.STATUS_NOT_FOUND)  # 404: never created, or gone
    )
    try:
        result = send()
    except CasaviError as exc:
        report.steps.append(Step(call, exc.status, expected))
        _unexpected(report, kind, call, exc)
        return None
    report.steps.append(Step(call, result.status, expected))
    if not result.ok and result.status != api.STATUS_CONFLICT:
        fields = ", ".join(result.error.fields) if result.error else ""
        constant = f"FIELD_RULES[{kind.value}]" + (f" fields {fields}" if fields else "")
        if result.status == api.STATUS_UNKNOWN_REFERENCE:
            constant = "REFERENCES"
        report.contradictions.append(Contradiction(constant, f"the test {kind.value}: {result.error}"))
    return result


def _write_and_read_back(
    client: CasaviClient, kind: ObjectKind, record: Mapping[str, Any], report: Report
) -> str:
    assert report.steps is not None
    payload = api.to_payload(kind, record)
    result = _write_step(report, kind, "PUT", lambda: client.upsert(kind, payload))
    if result is None:
        return _LOST
    if not result.ok:
        return _REFUSED
    if kind is ObjectKind.PROPERTY:  # PUT creates *or updates*: the same body again is an update
        again = _write_step(report, kind, "PUT", lambda: client.upsert(kind, payload))
        if again is not None and again.status != api.STATUS_UPDATED:
            report.contradictions.append(
                Contradiction(
                    "STATUS_UPDATED", f"a second PUT of the same {kind.value} answered {again.status}"
                )
            )
    call = f"GET {kind.collection_path}/{{id}}"
    try:
        read = client.get_object(kind, payload[api.ID_FIELD])
    except CasaviError as exc:
        report.steps.append(Step(call, exc.status, (200,)))
        _unexpected(report, kind, call, exc)
        return _LOST
    report.steps.append(Step(call, api.STATUS_NOT_FOUND if read is None else 200, (200,)))
    if read is None:
        report.contradictions.append(
            Contradiction(
                "ObjectKind.object_path", f"the test {kind.value} just written answers 404 when read by id"
            )
        )
        return _LOST
    report.contradictions += _compare(kind, payload, read)
    return _READ


def _compare(kind: ObjectKind, sent: Mapping[str, Any], read: Mapping[str, Any]) -> list[Contradiction]:
    """What a read of a written object lost or changed, by field (normalised as the sync compares)."""
    want = api.to_payload(kind, api.record_from_read(kind, sent))
    got = api.to_payload(kind, api.record_from_read(kind, read))
    found: list[Contradiction] = []
    for rule in api.FIELD_RULES[kind]:
        name = rule.casavi
        if want[name] == got[name]:
            continue
        if rule.type != "object_list" or len(want[name]) != len(got[name]) or name not in read:
            found.append(
                Contradiction(f'FIELD_RULES[{kind.value}] field "{name}"', _lost_or_changed(name in read))
            )
            continue
        items = _constant_name(rule.items) or f'FIELD_RULES[{kind.value}] field "{name}" items'
        entries = [entry for entry in read[name] if isinstance(entry, Mapping)]
        for item in rule.items:
            if any(w[item.casavi] != g[item.casavi] for w, g in zip(want[name], got[name], strict=True)):
                returned = any(item.casavi in entry for entry in entries)
                found.append(Contradiction(f'{items} field "{item.casavi}"', _lost_or_changed(returned)))
    return found


def _lost_or_changed(returned: bool) -> str:
    return "read back different from what was written" if returned else "written, read back without it"
