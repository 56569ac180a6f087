"""casavi's manager API v2 as the sandbox judges it, written from `docs/casavi-api.md` (revision 2).

The sandbox's own reading of the contract: it imports nothing from `casavi_pipeline` (an import-linter
contract in the suite enforces it), so a body the pipeline's adapter gets wrong is refused here instead
of being accepted by the same rules that built it. Every name below is the contract's wire name; the
tags say where the contract takes it from ([confirmed], [read], [model]; † a limit the contract sets
though nothing public states it).

Where the sandbox followed the contract against its earlier behaviour (when it validated with the
adapter's rules):

- limits the contract does not list are not enforced: a property's `country` and `note`, an address's
  `street`, a unit's `address`, and a contact's postal address (`street`, `postalCode`, `city`,
  `country`) take strings of any length; the limits marked † in the contract are enforced as written;
- a contact's `email` must be a valid address ("a valid address or null"): exactly one `@`, a non-empty
  local part, a domain with a dot inside, no whitespace;
- `propertyId`, `address` and a contract's `propertyId`/`unitId` are only required (non-null strings): an
  empty one names no object and is a `422`, like any other unknown reference.

What casavi holds may be wider than what the API takes (`problems(..., held=True)`, the rules of the
admin seed and edit endpoints, i.e. of an import or a person in casavi's UI): the UI knows a third unit usage, *Stellplatz*
(parking), and an empty one, so a held unit's `usage` may be any string ([model]: casavi's API name for
Stellplatz is unknown; tests use `PARKING`). A PUT may carry that value back for the unit that holds it
([model]: a generated API takes on write what it returns on read); any other usage outside ours is a 400.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# --- transport ---------------------------------------------------------------------------------------
API_PREFIX = "/v2"
AUTH_PATH = f"{API_PREFIX}/authenticate"  # [confirmed]
AUTH_KEY_FIELD = "key"  # [confirmed]
AUTH_SECRET_FIELD = "secret"  # [confirmed]
AUTH_TOKEN_FIELD = "token"  # [confirmed]
AUTH_EXPIRES_FIELD = "expiresAt"  # [confirmed]
TOKEN_HEADER = "token"  # [confirmed] not `Authorization`
RETRY_AFTER_HEADER = "Retry-After"  # [model]

# --- reads -------------------------------------------------------------------------------------------
PAGE_SIZE_PARAM = "pageSize"  # [read]
MAX_PAGE_SIZE = 500  # [model] more is a 400
MODIFIED_AFTER_PARAM = "modifiedAfter"  # [read] the parameter; [model] ISO 8601 UTC
INCLUDE_INACTIVE_CONTRACTS_PARAM = "includeInactiveContracts"  # [read]
LIST_KEY = "list"  # [read]
LINKS_KEY = "_links"  # [read]
NEXT_LINK_KEY = "next"  # [read]
ID_FIELD = "id"  # [confirmed] the reference id, in every body and path
INTERNAL_ID_FIELD = "internalId"  # [confirmed] returned on reads, never sent
MODIFIED_FIELD = "modified"  # [model] last change, what modifiedAfter filters on
ADDRESS_UNITS_FIELD = "units"  # [read] on each property address in a read
APP_LINK_FIELD = "appLink"  # [read] the link that opens the object in casavi's app
#: [model] where an `appLink` points: `<the host the client called>/app/<collection>/<internalId>`
#: (casavi's real links are unknown; they open the object in casavi's web app by its internal id).
APP_LINK_PATH = "/app"
#: [read] Fields a read may carry that no write sets; `*` ends a prefix. `appLink` is in every read (the
#: sandbox builds it); the others only with the `unmanaged_fields` knob.
UNMANAGED_READ_FIELDS: tuple[str, ...] = (
    "images",
    "responsibilities",
    APP_LINK_FIELD,
    "customFields",
    "msc*",
)

# --- errors [model] ----------------------------------------------------------------------------------
ERROR_MESSAGE_KEY = "message"
ERROR_DETAILS_KEY = "errors"
ERROR_FIELD_KEY = "field"

STATUS_OK = 200  # and an update
STATUS_CREATED = 201
STATUS_DELETED = 204
STATUS_INVALID = 400  # malformed JSON or a field breaking its rule
STATUS_UNAUTHORIZED = 401  # [confirmed]
STATUS_NOT_FOUND = 404
STATUS_CONFLICT = 409  # still referenced
STATUS_UNKNOWN_REFERENCE = 422  # a reference to an object casavi does not know
STATUS_RATE_LIMITED = 429
STATUS_SERVER_ERROR = 500  # the contract says only "5xx is transient"


class Kind(StrEnum):
    """The collections of the API [read]: nothing else (no contracts collection, no buildings)."""

    PROPERTY = "property"
    UNIT = "unit"
    CONTACT = "contact"

    @property
    def collection(self) -> str:
        return _COLLECTIONS[self]


_COLLECTIONS = {Kind.PROPERTY: "properties", Kind.UNIT: "units", Kind.CONTACT: "contacts"}
KINDS_BY_COLLECTION: dict[str, Kind] = {kind.collection: kind for kind in Kind}


def kind_named(name: str) -> Kind:
    """A kind by its name (`unit`) or its collection (`units`); ValueError if neither."""
    kind = KINDS_BY_COLLECTION.get(name)
    if kind is None:
        try:
            kind = Kind(name)
        except ValueError:
            known = sorted([*KINDS_BY_COLLECTION, *(k.value for k in Kind)])
            raise ValueError(f"unknown kind {name!r}; known: {known}") from None
    return kind


# --- fields ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One field of a body and its rule. Required means non-null; a `list` holds objects of `items`, whose
    `unique` field must differ between entries."""

    name: str
    type: str = "string"  # "string", "number", "date", "list"
    required: bool = False
    min_length: int = 0
    max_length: int | None = None
    values: tuple[str, ...] | None = None  # the allowed values of a string
    minimum: float | None = None
    items: tuple[Field, ...] = ()
    unique: str | None = None


_ID = Field(ID_FIELD, required=True, min_length=1, max_length=64)  # [confirmed]
USAGES = ("PRIVATE", "COMMERCIAL")  # [model] casavi's UI: Privat / Geschäftlich
SALUTATIONS = ("MR", "MS", "DIVERSE", "COMPANY")  # [model]
WAYS_OF_CONTACT = ("ONLINE", "POSTAL")  # [read] ONLINE; [model] POSTAL
CONTRACT_TYPES = ("RENTER", "OWNER")  # [read]

#: A contact's contracts [read]: one entry per unit the contact rents or owns ([model] `number`).
CONTRACT_FIELDS: tuple[Field, ...] = (
    Field("type", required=True, values=CONTRACT_TYPES),
    Field("propertyId", required=True),
    Field("unitId", required=True),
    Field("number", max_length=64),
    Field("startDate", "date", required=True),
    Field("endDate", "date"),
)

FIELDS: dict[Kind, tuple[Field, ...]] = {
    Kind.PROPERTY: (
        _ID,
        Field("name", required=True, min_length=1, max_length=255),  # [read]
        Field("number", max_length=64),  # [read] †
        Field("postalCode", max_length=32),  # [read] †
        Field("city", max_length=255),  # [read] †
        Field("country"),  # [read] the country's English short name
        Field("note"),  # [read]
        # [read] one address per building, identified by its street (house number included)
        Field(
            "addresses",
            "list",
            items=(Field("street", required=True, min_length=1),),
            unique="street",
        ),
    ),
    Kind.UNIT: (
        _ID,
        Field("propertyId", required=True),  # [read] must exist (else 422)
        Field("address", required=True),  # [read] a street of the property (else 422)
        Field("name", required=True, min_length=1, max_length=255),  # [read: UI]
        Field("number", max_length=64),  # [read: UI] †
        Field("usage", values=USAGES),  # [model: values]
        Field("area", "number", minimum=0),  # [model]
        Field("rooms", "number", minimum=0),  # [model]
    ),
    Kind.CONTACT: (
        _ID,
        Field("salutation", values=SALUTATIONS),
        Field("title", max_length=64),  # [read] †
        Field("firstName", max_length=255),  # [read] †
        Field("lastName", max_length=255),  # [read] †
        Field("companyName", max_length=255),  # [read] †
        Field("email", max_length=255),  # [read] † a valid address or null
        Field("telephone", max_length=64),  # [read] †
        Field("mobile", max_length=64),  # [read] †
        Field("street"),  # [read] the postal address
        Field("postalCode"),
        Field("city"),
        Field("country"),
        Field("preferredWayOfContact", values=WAYS_OF_CONTACT),
        Field("contracts", "list", items=CONTRACT_FIELDS),
    ),
}

#: What casavi holds may be wider than what its API takes: a unit's usage set in the UI (see above). A PUT
#: may carry such a value back for the object that holds it (`model._taken_back`).
WIDER_WHEN_HELD: dict[Kind, tuple[str, ...]] = {Kind.UNIT: ("usage",)}
_HELD_FIELDS: dict[Kind, tuple[Field, ...]] = {
    **FIELDS,
    **{
        kind: tuple(Field(f.name) if f.name in names else f for f in FIELDS[kind])
        for kind, names in WIDER_WHEN_HELD.items()
    },
}


@dataclass(frozen=True)
class Reference:
    """A reference casavi resolves on write (else 422) and that keeps its target from being deleted (409):
    a field of the body, or (`list`, `item`) a field of every entry of a list."""

    kind: Kind
    path: tuple[str, ...]
    target: Kind


REFERENCES: tuple[Reference, ...] = (
    Reference(Kind.UNIT, ("propertyId",), Kind.PROPERTY),  # [read]
    Reference(Kind.CONTACT, ("contracts", "propertyId"), Kind.PROPERTY),  # [read]
    Reference(Kind.CONTACT, ("contracts", "unitId"), Kind.UNIT),  # [read]
)


def referenced(reference: Reference, body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, target id) of one reference in a body, an entry's named by its index
    (`contracts[1].unitId`). Absent or non-string targets are skipped: an import may lack them."""
    if len(reference.path) == 1:
        value = body.get(reference.path[0])
        if isinstance(value, str):
            yield reference.path[0], value
        return
    list_name, item = reference.path
    entries = body.get(list_name)
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        value = entry.get(item) if isinstance(entry, Mapping) else None
        if isinstance(value, str):
            yield f"{list_name}[{i}].{item}", value


# --- validation: the 400 rules -----------------------------------------------------------------------
@dataclass(frozen=True)
class FieldError:
    field: str  # a path inside a list: `contracts[0].unitId`
    message: str


# [model] "a valid address": one @, a non-empty local part, a domain with a dot that neither starts nor
# ends it, no whitespace anywhere
_EMAIL = re.compile(r"[^@\s]+@[^@\s.][^@\s]*\.[^@\s]*[^@\s.]")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _is_date(value: Any) -> bool:
    """A real calendar date written `YYYY-MM-DD` (years 0001 to 9999)."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return False
    try:
        dt.date(int(value[:4]), int(value[5:7]), int(value[8:]))
    except ValueError:
        return False
    return True


def _value_problem(rule: Field, value: Any) -> str | None:
    if rule.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "must be a number"
        if rule.minimum is not None and value < rule.minimum:
            return f"must be >= {rule.minimum:g}"
        return None
    if rule.type == "date":
        return None if _is_date(value) else "must be a real calendar date YYYY-MM-DD"
    if not isinstance(value, str):
        return "must be a string"
    if len(value) < rule.min_length:
        return "must not be empty"
    if rule.max_length is not None and len(value) > rule.max_length:
        return f"must have at most {rule.max_length} chars"
    if rule.values is not None and value not in rule.values:
        return f"must be one of {', '.join(rule.values)}"
    return None


def _field_problems(rules: tuple[Field, ...], body: Mapping[str, Any], prefix: str = "") -> list[FieldError]:
    errors: list[FieldError] = []
    for rule in rules:
        value, name = body.get(rule.name), prefix + rule.name
        if value is None:
            if rule.required:
                errors.append(FieldError(name, "is required"))
        elif rule.type == "list":
            errors += _list_problems(rule, value, name)
        elif problem := _value_problem(rule, value):
            errors.append(FieldError(name, problem))
    return errors


def _list_problems(rule: Field, value: Any, name: str) -> list[FieldError]:
    if not isinstance(value, list) or not all(isinstance(entry, Mapping) for entry in value):
        return [FieldError(name, "must be a list of objects")]
    errors = [e for i, entry in enumerate(value) for e in _field_problems(rule.items, entry, f"{name}[{i}].")]
    if rule.unique is not None:
        keys = [entry.get(rule.unique) for entry in value]
        if len(set(map(str, keys))) != len(keys):
            errors.append(FieldError(name, f"{rule.unique} must be unique within the list"))
    return errors


def problems(kind: Kind, body: Mapping[str, Any], *, held: bool = False) -> list[FieldError]:
    """Why casavi answers a PUT of `body` with 400 (empty: it does not). `held=True`: the rules of what
    casavi can hold (an import, casavi's UI), which are wider for a unit's usage."""
    errors = _field_problems((_HELD_FIELDS if held else FIELDS)[kind], body)
    if kind is Kind.CONTACT:
        if not (body.get("lastName") or body.get("companyName")):
            errors.append(FieldError("lastName", "lastName or companyName is required"))
        email = body.get("email")
        if isinstance(email, str) and len(email) <= 255 and not _EMAIL.fullmatch(email):
            errors.append(FieldError("email", "must be a valid email address"))
        contracts = body.get("contracts")
        for i, entry in enumerate(contracts if isinstance(contracts, list) else []):
            start, end = (
                (entry.get("startDate"), entry.get("endDate")) if isinstance(entry, Mapping) else (0, 0)
            )
            if _is_date(start) and _is_date(end) and end < start:
                errors.append(FieldError(f"contracts[{i}].endDate", "must not be before startDate"))
    return errors


def stored_shape(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """What a PUT stores [model]: every field of the kind, absent ones as null, others dropped, in list
    entries too (so a read-only `units` sent on an address is not stored)."""
    stored: dict[str, Any] = {}
    for rule in FIELDS[kind]:
        value = body.get(rule.name)
        if rule.type == "list" and isinstance(value, list):
            value = [{item.name: entry.get(item.name) for item in rule.items} for entry in value]
        stored[rule.name] = value
    return stored


def utc_timestamp(unix_time: float) -> str:
    """casavi's timestamp format [confirmed]: ISO 8601 UTC with milliseconds; sorts as text."""
    moment = dt.datetime.fromtimestamp(unix_time, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
