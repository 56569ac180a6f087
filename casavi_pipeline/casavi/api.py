"""The casavi manager API v2 adapter: every casavi path, field name and enum lives here, and only here.

The model is revision 2 of our casavi contract (`docs/casavi-api.md`): casavi's docs confirm
authentication, the reference-ID model and the list envelope; the object shapes come from what the live
API returns on reads; the write side is our model of it. Each constant below says which of the three it
is (`[confirmed]`, `[read]`, `[model]`), and `casavi-pipeline check-casavi` compares a customer's account
with them before the first write. Aligning with a customer's downloaded spec must be a change to this one
file, so the rest of the project speaks *domain* names (snake_case, e.g. `postal_code`, `contract_type`)
and converts at the boundary with `to_payload` (writes) / `record_from_read` (reads). The sandbox server
validates with the same `FIELD_RULES`, so sandbox and client implement exactly one model.

Three kinds of object are written: properties (with their addresses: one street per building), units
(naming their address by street) and contacts (with their contracts: one entry per unit the contact
rents or owns). Buildings and contracts have no reference ID of their own in casavi.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any
from urllib.parse import quote

from casavi_pipeline.dates import is_iso_date

#: The revision of this model. Raise it with every change that changes what a body holds or how it is
#: hashed: state kept under another revision is rebuilt from a listing of casavi, never trusted.
MODEL_REVISION = "2"

# --- transport -------------------------------------------------------------------------------------
API_PREFIX = "/v2"
AUTH_PATH = f"{API_PREFIX}/authenticate"  # [confirmed]
AUTH_KEY_FIELD = "key"  # [confirmed]
AUTH_SECRET_FIELD = "secret"  # [confirmed]
AUTH_TOKEN_FIELD = "token"  # [confirmed]
AUTH_EXPIRES_FIELD = "expiresAt"  # [confirmed]
TOKEN_HEADER = "token"  # [confirmed] casavi takes the token in a header named `token`, not `Authorization`
RETRY_AFTER_HEADER = "Retry-After"

#: [read] A listing's first request sends only the page size; every later page is the `_links.next` URL
#: exactly as casavi gave it (casavi's v1 counted pages from 0: a guessed `page=1` would skip a page).
PAGE_SIZE_PARAM = "pageSize"
MAX_PAGE_SIZE = 500  # [model] a 400 for the page size means: ask again with casavi's default
MODIFIED_AFTER_PARAM = "modifiedAfter"  # [read] the parameter; [model] its ISO UTC format (`utc_stamp`)
#: [read] Ended contracts are left out of reads without it; [model] that contacts' reads take it too.
INCLUDE_INACTIVE_CONTRACTS_PARAM = "includeInactiveContracts"
LIST_KEY = "list"  # [read]
LINKS_KEY = "_links"  # [read]
NEXT_LINK_KEY = "next"  # [read]
ID_FIELD = "id"  # [confirmed] the reference id, in every body and path
INTERNAL_ID_FIELD = "internalId"  # [confirmed] casavi's database id: returned on reads, never sent
MODIFIED_FIELD = "modified"  # [model] last change (ISO UTC) that modifiedAfter filters on: read-only
ADDRESS_UNITS_FIELD = "units"  # [read] on each property address in a read: the unit ids there; read-only
#: [read] Fields a read carries that the sync does not manage: never sent, never compared, never an
#: "unknown field" in the conformance check (a prefix ends with `*`).
UNMANAGED_READ_FIELDS: tuple[str, ...] = (
    INTERNAL_ID_FIELD,
    MODIFIED_FIELD,
    "images",
    "responsibilities",
    "appLink",
    "customFields",
    "msc*",
)

# The error body [model]: `message` texts are casavi's prose and may quote the payload (personal data),
# and so may any other free-text slot: only `field` names that name our fields leave the client.
ERROR_DETAILS_KEY = "errors"
ERROR_FIELD_KEY = "field"
#: casavi's prose, top-level and per error: the sandbox writes it, the client never reads it.
ERROR_MESSAGE_KEY = "message"

#: Status codes of casavi's answers, by meaning ([confirmed]: 401; [model]: the write side).
STATUS_CREATED = 201
STATUS_UPDATED = 200
STATUS_DELETED = 204
STATUS_INVALID = 400  # malformed JSON or a field breaking its rule
STATUS_UNAUTHORIZED = 401
STATUS_FORBIDDEN = 403  # a valid token without the permission for this call
STATUS_NOT_FOUND = 404
STATUS_METHOD_NOT_ALLOWED = 405
STATUS_CONFLICT = 409  # delete of a still-referenced object
STATUS_UNKNOWN_REFERENCE = 422  # a reference to an object that does not exist
STATUS_RATE_LIMITED = 429
STATUS_UNAVAILABLE = 503

#: The human text of the client's errors, per status: our own fixed wording, never casavi's `message`.
ERROR_WORDING: dict[int, str] = {
    STATUS_INVALID: "casavi refused a field value",
    STATUS_UNAUTHORIZED: "casavi refused the credentials",
    STATUS_FORBIDDEN: "casavi refused the credentials for this call (missing permission)",
    STATUS_NOT_FOUND: "unknown reference id",
    STATUS_METHOD_NOT_ALLOWED: "casavi does not allow this call at this path",
    STATUS_CONFLICT: "still referenced by other objects",
    STATUS_UNKNOWN_REFERENCE: "references an object casavi does not know",
    STATUS_RATE_LIMITED: "too many requests",
}


def utc_stamp(moment: dt.datetime) -> str:
    """casavi's timestamp form, `YYYY-MM-DDThh:mm:ss.sssZ` [confirmed]; a naive time is refused (server
    time zone, daylight saving: ambiguous), not guessed."""
    if moment.tzinfo is None:
        raise ValueError("modified_after must be timezone-aware")
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_wording(status: int | None) -> str:
    """Our text for an answer's status; what went wrong in detail is told by field names."""
    if status is not None and status in ERROR_WORDING:
        return ERROR_WORDING[status]
    if status is not None and status >= 500:
        return "casavi had a server error"
    return "unexpected answer from casavi"


class ObjectKind(StrEnum):
    """The casavi object kinds the sync writes, in upsert order (deletes run in reverse)."""

    PROPERTY = "property"
    UNIT = "unit"
    CONTACT = "contact"

    @property
    def collection(self) -> str:
        return _COLLECTIONS[self]

    @property
    def collection_path(self) -> str:
        return f"{API_PREFIX}/{self.collection}"

    def object_path(self, ref_id: str) -> str:
        """Path of one object; the reference ID is percent-encoded (it may contain `/` or `|`)."""
        return f"{self.collection_path}/{quote(ref_id, safe='')}"

    @property
    def read_params(self) -> dict[str, str]:
        """The query parameters every read of this kind sends: listings (besides the page size) and reads
        of one object alike, so a contact read back shows its ended contracts too."""
        return dict(_READ_PARAMS.get(self, {}))


#: [read] properties, units, contacts; [model] that each takes PUT and DELETE by reference id.
_COLLECTIONS = {
    ObjectKind.PROPERTY: "properties",
    ObjectKind.UNIT: "units",
    ObjectKind.CONTACT: "contacts",
}
_READ_PARAMS = {ObjectKind.CONTACT: {INCLUDE_INACTIVE_CONTRACTS_PARAM: "true"}}
UPSERT_ORDER: tuple[ObjectKind, ...] = (ObjectKind.PROPERTY, ObjectKind.UNIT, ObjectKind.CONTACT)
#: Contacts (and with them their contracts) go first, then units, then properties: casavi refuses to
#: delete a unit a contract references or a property that still has units (409).
DELETE_ORDER: tuple[ObjectKind, ...] = tuple(reversed(UPSERT_ORDER))


# --- enums (casavi's values) ------------------------------------------------------------------------
class Usage(StrEnum):  # [model] the values; casavi's UI says Privat / Geschäftlich
    PRIVATE = "PRIVATE"
    COMMERCIAL = "COMMERCIAL"


class Salutation(StrEnum):  # [model]
    MR = "MR"
    MS = "MS"
    DIVERSE = "DIVERSE"
    COMPANY = "COMPANY"


class WayOfContact(StrEnum):  # [read] ONLINE; [model] POSTAL
    ONLINE = "ONLINE"
    POSTAL = "POSTAL"


class ContractType(StrEnum):  # [read]
    RENTER = "RENTER"
    OWNER = "OWNER"


@cache
def country_names() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code → the English short name casavi shows (`DE` → `Germany`) [read: example].

    From pycountry (ISO's list, maintained upstream) rather than a table kept by hand; its common name
    where ISO's formal one reads differently (`TW` → `Taiwan`, not `Taiwan, Province of China`).
    """
    import pycountry  # here: ~20 ms to load ISO's list, paid only by what maps or checks countries

    return {c.alpha_2: getattr(c, "common_name", None) or c.name for c in pycountry.countries}


# --- fields ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldRule:
    """One payload field: its domain name, casavi's name and the rule casavi applies to it.

    An `object_list` field embeds objects without an id of their own (a property's addresses, a
    contact's contracts): `items` are their fields, `order` the domain fields a body orders them by,
    `unique` the domain fields whose values must be unique within one list.

    `keep_foreign` (an `enum` field): casavi may hold values outside `enum` that a person set in casavi's
    UI. Such a *foreign* value (`is_foreign`) is casavi's to keep: a read carrying it is compared as read,
    the changeset sends it back as casavi holds it instead of the ERP's value (`state.diff`), the run
    reports it, and `check-casavi` notes it instead of calling it a contradiction. An empty value ("" or
    none) is not foreign: the ERP's value fills it.
    """

    name: str  # domain name used throughout the project
    casavi: str  # casavi's field name on the wire
    type: str  # "string", "number", "date", "object_list"
    required: bool = False
    nullable: bool = True
    min_length: int = 0
    max_length: int | None = None
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    items: tuple[FieldRule, ...] = ()
    order: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    keep_foreign: bool = False


def _s(name: str, casavi: str, **kw: Any) -> FieldRule:
    return FieldRule(name, casavi, "string", **kw)


_ID = _s("id", "id", required=True, nullable=False, min_length=1, max_length=64)  # [confirmed]
_REQUIRED_ID = {"required": True, "nullable": False, "min_length": 1}
#: [read] postal code, city and country of a property or a contact; country as a name (`Germany`).
_PLACE = (
    _s("postal_code", "postalCode", max_length=32),
    _s("city", "city", max_length=255),
    _s("country", "country", max_length=255),
)

#: [read] A property's addresses: one per building, identified by its street (house number included)
#: within the property. Reads add `units` (read-only).
ADDRESS_RULES: tuple[FieldRule, ...] = (
    _s("street", "street", required=True, nullable=False, min_length=1, max_length=255),
)
#: [read] A contact's contracts: one per unit the contact rents or owns ([model]: `number`). A PUT of the
#: contact replaces them as a whole.
CONTRACT_RULES: tuple[FieldRule, ...] = (
    _s("contract_type", "type", required=True, nullable=False, enum=tuple(ContractType)),
    _s("property_id", "propertyId", **_REQUIRED_ID),
    _s("unit_id", "unitId", **_REQUIRED_ID),
    _s("number", "number", max_length=64),
    FieldRule("start_date", "startDate", "date", required=True, nullable=False),
    FieldRule("end_date", "endDate", "date"),
)

FIELD_RULES: dict[ObjectKind, tuple[FieldRule, ...]] = {
    ObjectKind.PROPERTY: (
        _ID,
        _s("name", "name", required=True, nullable=False, min_length=1, max_length=255),  # [read]
        _s("number", "number", max_length=64),  # [read]
        *_PLACE,
        _s("note", "note"),  # [read]
        FieldRule(
            "addresses",
            "addresses",
            "object_list",
            items=ADDRESS_RULES,
            order=("street",),
            unique=("street",),
        ),
    ),
    ObjectKind.UNIT: (
        _ID,
        _s("property_id", "propertyId", **_REQUIRED_ID),  # [read]
        _s("address", "address", **_REQUIRED_ID, max_length=255),  # [read] a street of the property
        _s("name", "name", required=True, nullable=False, min_length=1, max_length=255),  # [read: UI]
        _s("number", "number", max_length=64),  # [read: UI]
        # [model: values] casavi's help centre ("Verbrauchsdaten – Voraussetzungen") shows a third usage
        # in its UI, Stellplatz (parking), and an empty one: a person's choice our ERP mapping cannot
        # express, so it is kept as casavi holds it ([model]: the API's name for it is unknown).
        _s("usage", "usage", enum=tuple(Usage), keep_foreign=True),
        FieldRule("area", "area", "number", minimum=0),  # [model]
        FieldRule("rooms", "rooms", "number", minimum=0),  # [model]
    ),
    ObjectKind.CONTACT: (
        _ID,
        _s("salutation", "salutation", enum=tuple(Salutation)),
        _s("title", "title", max_length=64),  # [read] from here to mobile
        _s("first_name", "firstName", max_length=255),
        _s("last_name", "lastName", max_length=255),
        _s("company_name", "companyName", max_length=255),
        _s("email", "email", max_length=255),
        _s("telephone", "telephone", max_length=64),
        _s("mobile", "mobile", max_length=64),
        _s("street", "street", max_length=255),  # [read] the postal address
        *_PLACE,
        _s("preferred_way_of_contact", "preferredWayOfContact", enum=tuple(WayOfContact)),
        FieldRule(
            "contracts",
            "contracts",
            "object_list",
            items=CONTRACT_RULES,
            order=("unit_id", "contract_type", "start_date", "number"),
        ),
    ),
}

#: Domain column names per kind, in payload order: the columns of the mapping's frames.
DOMAIN_COLUMNS: dict[ObjectKind, tuple[str, ...]] = {
    kind: tuple(rule.name for rule in rules) for kind, rules in FIELD_RULES.items()
}


def rule_of(kind: ObjectKind, name: str) -> FieldRule:
    """The rule of one field of a kind, by domain name."""
    return next(rule for rule in FIELD_RULES[kind] if rule.name == name)


#: The fields of each kind whose foreign values casavi keeps (`FieldRule.keep_foreign`).
KEEP_FOREIGN_RULES: dict[ObjectKind, tuple[FieldRule, ...]] = {
    kind: tuple(rule for rule in rules if rule.keep_foreign) for kind, rules in FIELD_RULES.items()
}

#: An enum value is shown (in the run's output, `check-casavi`) only in this shape: a code such as
#: `PARKING`. Anything else (a name, a sentence typed into a field) is only counted: it may be personal.
CODE_SHAPE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")


def looks_like_code(value: object) -> bool:
    """Whether a value may be shown: shaped like an enum code (`CODE_SHAPE`)."""
    return isinstance(value, str) and CODE_SHAPE.fullmatch(value) is not None


def is_foreign(rule: FieldRule, value: object) -> bool:
    """A value casavi holds for a `keep_foreign` field that is outside ours and not empty."""
    return (
        rule.keep_foreign
        and rule.enum is not None
        and isinstance(value, str)
        and value != ""
        and value not in rule.enum
    )


def _all_rules() -> Iterator[FieldRule]:
    for rules in FIELD_RULES.values():
        for rule in rules:
            yield rule
            yield from rule.items


#: Every field name casavi knows in our model (bodies, embedded objects, authentication).
KNOWN_FIELD_NAMES: frozenset[str] = frozenset(
    [rule.casavi for rule in _all_rules()] + [AUTH_KEY_FIELD, AUTH_SECRET_FIELD]
)
_FIELD_PATH_PART = re.compile(r"^([A-Za-z]+)(\[\d{1,4}\])*$")


def is_known_field_path(value: object) -> bool:
    """Whether an error's `field` names our fields (`email`, `addresses[0].street`, `contracts.1.unitId`).

    Only such names leave the client: an error field is otherwise free text from casavi or a proxy,
    which could quote a value (personal data) instead of naming a field.
    """
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        return False
    for part in value.split("."):
        if part.isdigit() and len(part) <= 4:
            continue
        match = _FIELD_PATH_PART.match(part)
        if match is None or match.group(1) not in KNOWN_FIELD_NAMES:
            return False
    return True


@dataclass(frozen=True)
class Reference:
    """A reference from one object to another that casavi resolves on write (else 422) and that keeps
    its target from being deleted (409). `field` is a domain field, or `list.item` for a field of every
    embedded entry (`contracts.unit_id`)."""

    kind: ObjectKind
    field: str
    target: ObjectKind


REFERENCES: tuple[Reference, ...] = (
    Reference(ObjectKind.UNIT, "property_id", ObjectKind.PROPERTY),  # [read]
    Reference(ObjectKind.CONTACT, "contracts.property_id", ObjectKind.PROPERTY),  # [read]
    Reference(ObjectKind.CONTACT, "contracts.unit_id", ObjectKind.UNIT),  # [read]
)


def referenced_ids(reference: Reference, payload: Mapping[str, Any]) -> list[str]:
    """The ids one reference of a body (casavi names) points at, in body order, without repeats."""
    found: list[str] = []
    if "." in reference.field:
        list_name, item_name = reference.field.split(".", 1)
        list_rule = rule_of(reference.kind, list_name)
        item_casavi = next(r.casavi for r in list_rule.items if r.name == item_name)
        entries = payload.get(list_rule.casavi)
        values = (
            [e.get(item_casavi) for e in entries if isinstance(e, Mapping)]
            if isinstance(entries, list)
            else []
        )
    else:
        values = [payload.get(rule_of(reference.kind, reference.field).casavi)]
    for value in values:
        if isinstance(value, str) and value and value not in found:
            found.append(value)
    return found


# --- conversion at the boundary ----------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """pandas/numpy values to plain JSON values (NaN/NA → None, numpy scalars → Python, arrays → lists)."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    import pandas as pd  # here, not at the top: the sandbox server imports this module and needs no pandas

    if value is pd.NA or value is pd.NaT:
        return None
    return value


def to_payload(kind: ObjectKind, record: Mapping[str, Any]) -> dict[str, Any]:
    """A domain record (a row of the mapping's frame) → the JSON body casavi expects for a PUT.

    Every field is sent, absent values as null: PUT replaces the object, so a removed phone number
    must be cleared in casavi rather than kept. Embedded lists are sent as the record holds them (the
    mapping orders them as `FieldRule.order` says).
    """
    payload: dict[str, Any] = {}
    for rule in FIELD_RULES[kind]:
        value = _clean(record.get(rule.name))
        if rule.type == "object_list":
            value = [
                {item.casavi: _clean(entry.get(item.name)) for item in rule.items} for entry in (value or [])
            ]
        payload[rule.casavi] = value
    return payload


def _read_value(rule: FieldRule, value: Any) -> Any:
    if rule.type == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # the mapping's number columns are floating point
    return value


def record_from_read(kind: ObjectKind, obj: Mapping[str, Any]) -> dict[str, Any]:
    """One object as a read returns it → the domain record the mapping would produce for the same data.

    The read is normalised so that `to_payload(kind, record_from_read(kind, obj))` is the body a write
    of that data sends, and hashes alike: read-only and unmanaged fields (`internalId`, `modified`,
    each address's `units`, `images`, …) and fields our model does not know are dropped, an absent field
    is None (a read may omit nulls), embedded lists are ordered as the mapping orders them, and whole
    numbers become floats.
    """
    record: dict[str, Any] = {}
    for rule in FIELD_RULES[kind]:
        value = obj.get(rule.casavi)
        if rule.type == "object_list":
            entries = [
                {item.name: _read_value(item, entry.get(item.casavi)) for item in rule.items}
                for entry in (value if isinstance(value, list) else [])
                if isinstance(entry, Mapping)
            ]
            value = sorted(entries, key=lambda e, order=rule.order: tuple(_order_key(e[n]) for n in order))
        else:
            value = _read_value(rule, value)
        record[rule.name] = value
    return record


def _order_key(value: Any) -> tuple[bool, str]:
    # Python orders strings by code point, as DuckDB's `ORDER BY` in the mapping orders UTF-8 bytes;
    # a missing value (a hand-made entry) sorts last, as DuckDB's NULLS LAST does.
    return (value is None, "" if value is None else str(value))


# --- validation (casavi's 400 rules; the sandbox answers 400 with exactly these) ---------------------
@dataclass(frozen=True)
class FieldError:
    field: str  # casavi's field name (a path like `contracts[0].unitId` inside an embedded list)
    message: str


def _check_string(rule: FieldRule, value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) < rule.min_length:
        return "must not be empty" if rule.min_length == 1 else f"must have at least {rule.min_length} chars"
    if rule.max_length is not None and len(value) > rule.max_length:
        return f"must have at most {rule.max_length} chars"
    if rule.enum is not None and value not in rule.enum:
        return f"must be one of {', '.join(rule.enum)}"
    return None


def _check_value(rule: FieldRule, value: Any) -> str | None:
    if rule.type == "string":
        return _check_string(rule, value)
    if rule.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "must be a number"
        if rule.minimum is not None and value < rule.minimum:
            return f"must be >= {rule.minimum:g}"
        return None
    if rule.type == "date":
        return None if is_iso_date(value) else "must be a real calendar date YYYY-MM-DD"
    raise ValueError(f"unknown field type {rule.type}")  # pragma: no cover


def _check_fields(rules: tuple[FieldRule, ...], body: Mapping[str, Any], prefix: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for rule in rules:
        value = body.get(rule.casavi)
        name = prefix + rule.casavi
        if value is None:
            if rule.required or not rule.nullable:
                errors.append(FieldError(name, "is required"))
        elif rule.type == "object_list":
            errors.extend(_check_list(rule, value, name))
        elif problem := _check_value(rule, value):
            errors.append(FieldError(name, problem))
    return errors


def _check_list(rule: FieldRule, value: Any, name: str) -> list[FieldError]:
    if not isinstance(value, list) or not all(isinstance(entry, Mapping) for entry in value):
        return [FieldError(name, "must be a list of objects")]
    errors: list[FieldError] = []
    for i, entry in enumerate(value):
        errors.extend(_check_fields(rule.items, entry, f"{name}[{i}]."))
    if rule.unique:
        casavi = [item.casavi for item in rule.items if item.name in rule.unique]
        keys = [tuple(entry.get(c) for c in casavi) for entry in value]
        if len(set(keys)) != len(keys):
            errors.append(FieldError(name, f"{', '.join(casavi)} must be unique within the list"))
    return errors


def validate_payload(kind: ObjectKind, payload: Mapping[str, Any]) -> list[FieldError]:
    """The 400-rules of casavi for one PUT body (casavi field names). Empty list = acceptable.

    What casavi *holds* may be wider (a `keep_foreign` field set in its UI: `unholdable_fields` is what
    a read must pass); whether a PUT takes such a value back is [model]: assumed not.
    """
    errors = _check_fields(FIELD_RULES[kind], payload, "")
    if kind is ObjectKind.CONTACT:
        if not (payload.get("lastName") or payload.get("companyName")):
            errors.append(FieldError("lastName", "lastName or companyName is required"))
        contracts = payload.get("contracts")
        for i, entry in enumerate(contracts if isinstance(contracts, list) else []):
            start, end = (
                (entry.get("startDate"), entry.get("endDate")) if isinstance(entry, Mapping) else (0, 0)
            )
            if isinstance(start, str) and isinstance(end, str) and end < start:
                errors.append(FieldError(f"contracts[{i}].endDate", "must not be before startDate"))
    return errors


def _holds(rule: FieldRule, value: Any) -> bool:
    if value is None:
        return True
    if rule.type in ("string", "date"):  # held as text; a date that is no date is just a difference
        return isinstance(value, str)
    if rule.type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, list) and all(
        isinstance(entry, Mapping) and not unholdable_fields(rule.items, entry) for entry in value
    )


def unholdable_fields(rules: tuple[FieldRule, ...], body: Mapping[str, Any]) -> list[str]:
    """The fields of a read (casavi names) our model cannot hold at all: a number field that is text, a
    list that is not a list of objects. Everything else is compared as read: values outside our enums,
    lengths and empty required fields are casavi's to decide, and only differ from what we send."""
    return [rule.casavi for rule in rules if not _holds(rule, body.get(rule.casavi))]


# --- the same conversion, vectorised in DuckDB (the changeset hashes millions of rows) --------------
_SQL_TYPES = {"string": "VARCHAR", "date": "VARCHAR", "number": "DOUBLE"}


def _struct_type(items: tuple[FieldRule, ...]) -> str:
    return "STRUCT(" + ", ".join(f"{item.name} {_SQL_TYPES[item.type]}" for item in items) + ")[]"


def payload_json_sql(kind: ObjectKind) -> str:
    """A DuckDB expression that turns a row of the mapping's frame (domain columns) into the JSON body.

    It yields the same body as `to_payload` (field order included), so the changeset can hash what
    will be sent without a Python loop per row. Explicit casts keep all-NULL or empty columns typed.
    """
    fields = []
    for rule in FIELD_RULES[kind]:
        column = f'"{rule.name}"'
        if rule.type == "object_list":
            inner = ", ".join(f"'{item.casavi}': e.{item.name}" for item in rule.items)
            value = (
                f"list_transform(coalesce({column}::{_struct_type(rule.items)}, []), lambda e: {{{inner}}})"
            )
        else:
            value = f"{column}::{_SQL_TYPES[rule.type]}"
        fields.append(f"'{rule.casavi}': {value}")
    return "to_json({" + ", ".join(fields) + "})::VARCHAR"


def struct_sql_type(kind: ObjectKind, name: str) -> str:
    """The DuckDB type of an embedded list column (`contracts`), for frames that carry one."""
    return _struct_type(rule_of(kind, name).items)
