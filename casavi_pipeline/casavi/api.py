"""The casavi manager API v2 adapter: every casavi path, field name and enum lives here, and only here.

casavi's public docs confirm authentication, the reference-ID model and the read shapes; the write side
is our model of it (`docs/casavi-api.md`). Aligning with a customer's downloaded spec must be a change
to this one file, so the rest of the project speaks *domain* names (snake_case, e.g. `postal_code`,
`contract_type`) and converts at the boundary with `to_payload` (writes) / `record_from_read` (reads).
The sandbox server
validates with the same `FIELD_RULES`, so sandbox and client implement exactly one model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from casavi_pipeline.dates import is_iso_date

# --- transport -------------------------------------------------------------------------------------
API_PREFIX = "/v2"
AUTH_PATH = f"{API_PREFIX}/authenticate"
AUTH_KEY_FIELD = "key"
AUTH_SECRET_FIELD = "secret"
AUTH_TOKEN_FIELD = "token"
AUTH_EXPIRES_FIELD = "expiresAt"
TOKEN_HEADER = "token"  # casavi sends the token in a header named `token`, not `Authorization`
RETRY_AFTER_HEADER = "Retry-After"

PAGE_PARAM = "page"  # 1-based
PAGE_SIZE_PARAM = "pageSize"
MODIFIED_AFTER_PARAM = "modifiedAfter"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
LIST_KEY = "list"
LINKS_KEY = "_links"
NEXT_LINK_KEY = "next"
ID_FIELD = "id"  # the reference id, in every body and path
INTERNAL_ID_FIELD = "internalId"  # casavi's database id: returned on reads, never sent
MODIFIED_FIELD = "modified"  # [model] last change (ISO UTC) that modifiedAfter filters on: read-only
ADDRESS_UNITS_FIELD = "units"  # on each property address in a read: the unit ids there; read-only
#: Fields a read carries that are never sent: dropped before a read is compared with a write body.
READ_ONLY_FIELDS: tuple[str, ...] = (INTERNAL_ID_FIELD, MODIFIED_FIELD)
READ_ONLY_ADDRESS_FIELDS: tuple[str, ...] = (ADDRESS_UNITS_FIELD,)

# The error body: `message` texts are casavi's prose and may quote the payload (personal data), so the
# client never passes them on; only `field` names and machine `code`s leave it (see `error_wording`).
ERROR_MESSAGE_KEY = "message"
ERROR_DETAILS_KEY = "errors"
ERROR_FIELD_KEY = "field"
ERROR_CODE_KEY = "code"  # not in our model of casavi's body; taken when a server or proxy sends one

#: Status codes of casavi's answers, by meaning (our model of the write side).
STATUS_CREATED = 201
STATUS_UPDATED = 200
STATUS_DELETED = 204
STATUS_INVALID = 400  # malformed JSON or a field breaking its rule
STATUS_UNAUTHORIZED = 401
STATUS_FORBIDDEN = 403  # a valid token without the permission for this call
STATUS_NOT_FOUND = 404
STATUS_CONFLICT = 409  # delete of a still-referenced object
STATUS_UNKNOWN_REFERENCE = 422  # a reference to an object that does not exist
STATUS_RATE_LIMITED = 429

#: The human text of the client's errors, per status: our own fixed wording, never casavi's `message`.
ERROR_WORDING: dict[int, str] = {
    STATUS_INVALID: "casavi refused a field value",
    STATUS_UNAUTHORIZED: "casavi refused the credentials",
    STATUS_FORBIDDEN: "casavi refused the credentials for this call (missing permission)",
    STATUS_NOT_FOUND: "unknown reference id",
    STATUS_CONFLICT: "still referenced by other objects",
    STATUS_UNKNOWN_REFERENCE: "references an object casavi does not know",
    STATUS_RATE_LIMITED: "too many requests",
}


def error_wording(status: int | None) -> str:
    """Our text for an answer's status; what went wrong in detail is told by field names and codes."""
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
    CONTRACT = "contract"

    @property
    def collection(self) -> str:
        return _COLLECTIONS[self]

    @property
    def collection_path(self) -> str:
        return f"{API_PREFIX}/{self.collection}"

    def object_path(self, ref_id: str) -> str:
        """Path of one object; the reference ID is percent-encoded (it may contain `/` or `|`)."""
        from urllib.parse import quote

        return f"{self.collection_path}/{quote(ref_id, safe='')}"


_COLLECTIONS = {
    ObjectKind.PROPERTY: "properties",
    ObjectKind.UNIT: "units",
    ObjectKind.CONTACT: "contacts",
    ObjectKind.CONTRACT: "contracts",
}
UPSERT_ORDER: tuple[ObjectKind, ...] = (
    ObjectKind.PROPERTY,
    ObjectKind.UNIT,
    ObjectKind.CONTACT,
    ObjectKind.CONTRACT,
)
DELETE_ORDER: tuple[ObjectKind, ...] = tuple(reversed(UPSERT_ORDER))


# --- enums (casavi's values) ------------------------------------------------------------------------
class Usage(StrEnum):
    PRIVATE = "PRIVATE"
    COMMERCIAL = "COMMERCIAL"


class Salutation(StrEnum):
    MR = "MR"
    MS = "MS"
    DIVERSE = "DIVERSE"
    COMPANY = "COMPANY"


class WayOfContact(StrEnum):
    ONLINE = "ONLINE"
    POSTAL = "POSTAL"


class ContractType(StrEnum):
    RENTER = "RENTER"
    OWNER = "OWNER"


# --- fields ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldRule:
    """One payload field: its domain name, casavi's name and the rule casavi applies to it."""

    name: str  # domain name used throughout the project
    casavi: str  # casavi's field name on the wire
    type: str  # "string", "number", "date", "string_list", "address_list"
    required: bool = False
    nullable: bool = True
    min_length: int = 0
    max_length: int | None = None
    enum: tuple[str, ...] | None = None
    minimum: float | None = None


def _s(name: str, casavi: str, **kw: Any) -> FieldRule:
    return FieldRule(name, casavi, "string", **kw)


_ID = _s("id", "id", required=True, nullable=False, min_length=1, max_length=64)
_POSTAL = (
    _s("street", "street", max_length=255),
    _s("postal_code", "postalCode", max_length=32),
    _s("city", "city", max_length=255),
    _s("country", "country", min_length=2, max_length=2),
)

#: The address objects embedded in a property: (domain name, casavi name).
ADDRESS_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("street", "street"),
    ("postal_code", "postalCode"),
    ("city", "city"),
    ("country", "country"),
)

FIELD_RULES: dict[ObjectKind, tuple[FieldRule, ...]] = {
    ObjectKind.PROPERTY: (
        _ID,
        _s("name", "name", required=True, nullable=False, min_length=1, max_length=255),
        _s("number", "number", max_length=64),
        *_POSTAL,
        _s("note", "note"),
        FieldRule("addresses", "addresses", "address_list"),
    ),
    ObjectKind.UNIT: (
        _ID,
        _s("property_id", "propertyId", required=True, nullable=False, min_length=1),
        _s("address_id", "addressId", required=True, nullable=False, min_length=1),
        _s("name", "name", required=True, nullable=False, min_length=1, max_length=255),
        _s("number", "number", max_length=64),
        _s("usage", "usage", enum=tuple(Usage)),
        FieldRule("area", "area", "number", minimum=0),
        FieldRule("rooms", "rooms", "number", minimum=0),
    ),
    ObjectKind.CONTACT: (
        _ID,
        _s("salutation", "salutation", enum=tuple(Salutation)),
        _s("title", "title", max_length=64),
        _s("first_name", "firstName", max_length=255),
        _s("last_name", "lastName", max_length=255),
        _s("company_name", "companyName", max_length=255),
        _s("email", "email", max_length=255),
        _s("telephone", "telephone", max_length=64),
        _s("mobile", "mobile", max_length=64),
        *_POSTAL,
        _s("preferred_way_of_contact", "preferredWayOfContact", enum=tuple(WayOfContact)),
    ),
    ObjectKind.CONTRACT: (
        _ID,
        _s("contract_type", "type", required=True, nullable=False, enum=tuple(ContractType)),
        _s("unit_id", "unitId", required=True, nullable=False, min_length=1),
        FieldRule("contact_ids", "contactIds", "string_list", required=True, nullable=False, min_length=1),
        _s("number", "number", max_length=64),
        FieldRule("start_date", "startDate", "date", required=True, nullable=False),
        FieldRule("end_date", "endDate", "date"),
    ),
}

#: Domain column names per kind, in payload order: the columns of the mapping's frames.
DOMAIN_COLUMNS: dict[ObjectKind, tuple[str, ...]] = {
    kind: tuple(rule.name for rule in rules) for kind, rules in FIELD_RULES.items()
}

#: Every field name casavi knows in our model (bodies, embedded addresses, authentication).
KNOWN_FIELD_NAMES: frozenset[str] = frozenset(
    [rule.casavi for rules in FIELD_RULES.values() for rule in rules]
    + [casavi for _, casavi in ADDRESS_FIELDS]
    + [AUTH_KEY_FIELD, AUTH_SECRET_FIELD]
)
_FIELD_PATH_PART = re.compile(r"^([A-Za-z]+)(\[\d{1,4}\])*$")


def is_known_field_path(value: object) -> bool:
    """Whether an error's `field` names our fields (`email`, `addresses[0].street`, `contactIds.1`).

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


#: References to other objects that casavi resolves (else 422): (kind, domain field, referenced kind).
REFERENCES: tuple[tuple[ObjectKind, str, ObjectKind], ...] = (
    (ObjectKind.UNIT, "property_id", ObjectKind.PROPERTY),
    (ObjectKind.CONTRACT, "unit_id", ObjectKind.UNIT),
    (ObjectKind.CONTRACT, "contact_ids", ObjectKind.CONTACT),
)


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
    must be cleared in casavi rather than kept.
    """
    payload: dict[str, Any] = {}
    for rule in FIELD_RULES[kind]:
        value = _clean(record.get(rule.name))
        if rule.type == "address_list":
            value = [
                {casavi: _clean(address.get(name)) for name, casavi in ADDRESS_FIELDS}
                for address in (value or [])
            ]
        payload[rule.casavi] = value
    return payload


def record_from_read(kind: ObjectKind, obj: Mapping[str, Any]) -> dict[str, Any]:
    """One object as a read returns it → the domain record the mapping would produce for the same data.

    The read is normalised so that `to_payload(kind, record_from_read(kind, obj))` is the body a write
    of that data sends, and hashes alike: the read-only fields (`internalId`, `modified`, each
    address's `units`) and fields our model does not know are dropped, an absent field is None (a
    read may omit nulls), addresses are ordered by id and contact ids sorted (the mapping sends them
    so), and whole numbers become floats (the mapping's number columns are floating point).
    """
    record: dict[str, Any] = {}
    for rule in FIELD_RULES[kind]:
        value = obj.get(rule.casavi)
        if rule.type == "address_list":
            addresses = [
                {name: address.get(casavi) for name, casavi in ADDRESS_FIELDS}
                for address in (value if isinstance(value, list) else [])
                if isinstance(address, Mapping)
            ]
            value = sorted(addresses, key=lambda a: _order_key(a["id"]))
        elif rule.type == "string_list" and isinstance(value, list):
            value = sorted(value, key=_order_key)
        elif rule.type == "number" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        record[rule.name] = value
    return record


def _order_key(value: Any) -> tuple[bool, str]:
    # Python orders strings by code point, as DuckDB's `ORDER BY` in the mapping orders UTF-8 bytes;
    # a missing id (a hand-made object) sorts last instead of breaking the comparison.
    return (value is None, "" if value is None else str(value))


# --- validation (casavi's 400 rules; the sandbox answers 400 with exactly these) ---------------------
@dataclass(frozen=True)
class FieldError:
    field: str  # casavi's field name
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
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if rule.minimum is not None and value < rule.minimum:
            return f"must be >= {rule.minimum:g}"
        return None
    if rule.type == "date":
        return None if is_iso_date(value) else "must be a real calendar date YYYY-MM-DD"
    if rule.type == "string_list":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return "must be a list of non-empty strings"
        if len(value) < rule.min_length:
            return f"must hold at least {rule.min_length} entry"
        return None
    if rule.type == "address_list":
        if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
            return "must be a list of address objects"
        ids = [a.get("id") for a in value]
        if not all(isinstance(i, str) and i for i in ids):
            return "every address needs a non-empty string id"
        if len(set(ids)) != len(ids):
            return "address ids must be unique within the property"
        return None
    raise ValueError(f"unknown field type {rule.type}")  # pragma: no cover


def validate_payload(kind: ObjectKind, payload: Mapping[str, Any]) -> list[FieldError]:
    """The 400-rules of casavi for one PUT body (casavi field names). Empty list = acceptable."""
    errors: list[FieldError] = []
    for rule in FIELD_RULES[kind]:
        value = payload.get(rule.casavi)
        if value is None:
            if rule.required or not rule.nullable:
                errors.append(FieldError(rule.casavi, "is required"))
            continue
        problem = _check_value(rule, value)
        if problem:
            errors.append(FieldError(rule.casavi, problem))
    if kind is ObjectKind.CONTACT and not (payload.get("lastName") or payload.get("companyName")):
        errors.append(FieldError("lastName", "lastName or companyName is required"))
    if kind is ObjectKind.CONTRACT:
        start, end = payload.get("startDate"), payload.get("endDate")
        if isinstance(start, str) and isinstance(end, str) and end < start:
            errors.append(FieldError("endDate", "must not be before startDate"))
    return errors


# --- the same conversion, vectorised in DuckDB (the changeset hashes millions of rows) --------------
_SQL_TYPES = {"string": "VARCHAR", "date": "VARCHAR", "number": "DOUBLE", "string_list": "VARCHAR[]"}
_ADDRESS_SQL_TYPE = "STRUCT(" + ", ".join(f"{name} VARCHAR" for name, _ in ADDRESS_FIELDS) + ")[]"


def payload_json_sql(kind: ObjectKind) -> str:
    """A DuckDB expression that turns a row of the mapping's frame (domain columns) into the JSON body.

    It yields the same body as `to_payload` (field order included), so the changeset can hash what
    will be sent without a Python loop per row. Explicit casts keep all-NULL or empty columns typed.
    """
    fields = []
    for rule in FIELD_RULES[kind]:
        column = f'"{rule.name}"'
        if rule.type == "address_list":
            inner = ", ".join(f"'{casavi}': a.{name}" for name, casavi in ADDRESS_FIELDS)
            value = f"list_transform(coalesce({column}::{_ADDRESS_SQL_TYPE}, []), lambda a: {{{inner}}})"
        else:
            value = f"{column}::{_SQL_TYPES[rule.type]}"
        fields.append(f"'{rule.casavi}': {value}")
    return "to_json({" + ", ".join(fields) + "})::VARCHAR"
