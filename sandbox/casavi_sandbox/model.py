"""casavi's object model as the sandbox applies it: what a PUT or DELETE is refused with, what a write
stores and what a read returns. One implementation of each rule, over any `Account` (the sandbox's
SQLite store, or the harness's in-memory fake), with the field rules of `contract.py`.

A PUT is refused, checked in this order:

- `400` the body breaks a field rule (`contract.problems`) or its `id` is not the path's;
- `422` a reference does not resolve (`contract.REFERENCES`: a unit's `propertyId`, a contract's
  `propertyId` and `unitId`), a unit's `address` is not one of its property's `addresses[].street`, or a
  contract's `unitId` is a unit of another property than its `propertyId`;
- `409` a property PUT leaves out a street that units of the property still name as their `address`
  ([model]). 409, not 422: the body itself is sound and names nothing unknown; it conflicts with objects
  that depend on it, as a DELETE of a still-referenced object does (rename a street by first adding the
  new one, moving the units, then dropping the old one).

A DELETE is `404` for an unknown id and `409` while the object is referenced: a unit by any contract
of any contact (ended contracts included), a property by its units or by a contract.

A stored object is the body of its last write (every field of the kind, absent ones as null, fields
outside the model dropped). A read leaves null fields out and adds the read-only fields: `internalId`,
`modified`, on each property address the ids of the units at that street, the object's `appLink`
([model] `<host>/app/<collection>/<internalId>`: the host the client called, so the link opens on the
machine that answered; left out when asked to), and, when asked for, other fields the sync does not
manage (`contract.UNMANAGED_READ_FIELDS`). A contact's ended contracts (`endDate` before today, UTC) are
left out unless the read asks for inactive contracts.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from casavi_sandbox import contract as c
from casavi_sandbox.contract import FieldError, Kind
from casavi_sandbox.store import SandboxStore, StoredObject

#: The reads' values of the unmanaged fields the `unmanaged_fields` knob adds (casavi's shapes as the
#: live clients show them); a name only matched by a prefix (`msc…`) reads as a plain string.
_UNMANAGED_VALUES: dict[str, Any] = {
    "images": [{"id": 1, "url": "https://files.sandbox.invalid/images/1.jpg"}],
    "responsibilities": [{"role": "PROPERTY_MANAGER", "userId": 7}],
    "customFields": [{"key": "baujahr", "value": "1965"}],
}
#: Fields every read has already, so the `unmanaged_fields` knob cannot add them.
_ALWAYS_READ = {
    c.INTERNAL_ID_FIELD: "is in every read already",
    c.MODIFIED_FIELD: "is in every read already",
    c.APP_LINK_FIELD: "is in every read already (the omit_app_link knob leaves it out)",
}


class Problem(Exception):
    """A refusal in casavi's terms: status, prose, and the offending fields."""

    def __init__(self, status: int, message: str, errors: Iterable[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors) if errors is not None else None


def unmanaged_field_problem(name: str) -> str | None:
    """Why `name` cannot be an unmanaged read field (None if it can): it must be one of
    `contract.UNMANAGED_READ_FIELDS` (or match one of its prefixes), other than those every read has."""
    if name in _ALWAYS_READ:
        return f"{name} {_ALWAYS_READ[name]}"
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in c.UNMANAGED_READ_FIELDS):
        known = [field for field in c.UNMANAGED_READ_FIELDS if field not in _ALWAYS_READ]
        return f"{name!r} is not a field casavi's reads carry unmanaged; known: {known}"
    return None


def unmanaged_values(names: Iterable[str]) -> dict[str, Any]:
    """The values reads show for these unmanaged fields (names checked by `unmanaged_field_problem`)."""
    return {name: _UNMANAGED_VALUES.get(name, "sandbox") for name in names}


def app_link(app_root: str, kind: Kind, internal_id: int) -> str:
    """The link that opens an object in casavi's app ([model], see the module's docstring)."""
    return f"{app_root.rstrip('/')}{c.APP_LINK_PATH}/{kind.collection}/{internal_id}"


# --- what a write is refused with ----------------------------------------------------------------------
def reference_targets(kind: Kind, body: Mapping[str, Any]) -> Iterator[tuple[str, Kind, str]]:
    """(field path, target kind, target id) of every reference in a body, in `contract.REFERENCES` order."""
    for reference in c.REFERENCES:
        if reference.kind is kind:
            for path, target in c.referenced(reference, body):
                yield path, reference.target, target


def links(kind: Kind, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(target collection, target id) of every reference a body holds: what keeps its targets from
    being deleted (409)."""
    return sorted({(target.collection, ref) for _, target, ref in reference_targets(kind, body) if ref})


def _taken_back(kind: Kind, ref_id: str, body: Mapping[str, Any], error: FieldError, account: Account) -> bool:
    """[model] casavi takes back on a PUT a value outside the API's rules that it holds itself for that
    very object (a usage set in its UI, such as Stellplatz): a generated API accepts on write what it
    returns on read (`docs/casavi-api.md`, revision 2). Any other value outside the rules is a 400."""
    if error.field not in c.WIDER_WHEN_HELD.get(kind, ()):
        return False
    held = account.payload(kind, ref_id)
    return held is not None and held.get(error.field) == body.get(error.field)


class Account(Protocol):
    """What the rules need to know about the objects an account holds."""

    def payload(self, kind: Kind, ref_id: str) -> Mapping[str, Any] | None:
        """The stored body of one object, None if there is none."""

    def units_at(self, property_ids: Sequence[str]) -> dict[tuple[str, str], list[str]]:
        """(property id, street) → ids of the units of those properties whose `address` is that street."""

    def referrers(self, kind: Kind, ref_id: str) -> dict[str, int]:
        """How many objects of each collection reference this one."""


def check_put(kind: Kind, ref_id: str, body: Mapping[str, Any], account: Account) -> dict[str, Any]:
    """The payload to store for a PUT of `body` at `ref_id`; `Problem` 400, 422 or 409 if refused."""
    errors: list[FieldError] = []
    if isinstance(body.get(c.ID_FIELD), str) and body[c.ID_FIELD] != ref_id:
        errors.append(FieldError(c.ID_FIELD, "must equal the id in the path"))
    errors += [e for e in c.problems(kind, body) if not _taken_back(kind, ref_id, body, e, account)]
    if errors:
        raise Problem(c.STATUS_INVALID, f"invalid {kind.value}", errors)
    payload = c.stored_shape(kind, body)
    unknown = [
        FieldError(field, f"unknown {target.value} {target_id}")
        for field, target, target_id in reference_targets(kind, payload)
        if account.payload(target, target_id) is None
    ]
    unknown += _outside_the_property(kind, payload, account)
    if unknown:
        raise Problem(c.STATUS_UNKNOWN_REFERENCE, f"{kind.value} references unknown objects", unknown)
    if kind is Kind.PROPERTY:
        kept = {address.get("street") for address in payload["addresses"] or []}
        orphans = [
            unit
            for (_, street), units in account.units_at([ref_id]).items()
            if street not in kept
            for unit in units
        ]
        if orphans:
            raise Problem(
                c.STATUS_CONFLICT,
                f"{len(orphans)} units of property {ref_id} are at a street the body leaves out",
                [FieldError("addresses", "leaves out a street that units still use")],
            )
    return payload


def _outside_the_property(kind: Kind, payload: Mapping[str, Any], account: Account) -> list[FieldError]:
    """422s of a unit naming a street its property has not, or of a contract whose unit belongs to
    another property (each only where both objects exist: a missing one is reported already)."""
    errors = []
    if kind is Kind.UNIT:
        parent = account.payload(Kind.PROPERTY, payload["propertyId"])
        if parent is not None:
            streets = {
                address.get("street")
                for address in parent.get("addresses") or []
                if isinstance(address, Mapping)
            }
            if payload["address"] not in streets:
                errors.append(FieldError("address", f"is not a street of property {payload['propertyId']}"))
    if kind is Kind.CONTACT:
        for i, contract in enumerate(payload["contracts"] or []):
            property_id, unit_id = contract["propertyId"], contract["unitId"]
            unit = account.payload(Kind.UNIT, unit_id)
            if (
                unit is not None
                and account.payload(Kind.PROPERTY, property_id) is not None
                and unit.get("propertyId") != property_id
            ):
                errors.append(
                    FieldError(f"contracts[{i}].unitId", f"is not a unit of property {property_id}")
                )
    return errors


def check_delete(kind: Kind, ref_id: str, account: Account) -> None:
    """`Problem` 404 for an unknown object, 409 for one that is still referenced."""
    if account.payload(kind, ref_id) is None:
        raise Problem(c.STATUS_NOT_FOUND, f"no {kind.value} with id {ref_id}")
    referrers = account.referrers(kind, ref_id)
    if referrers:
        held_by = ", ".join(f"{count} {collection}" for collection, count in sorted(referrers.items()))
        raise Problem(c.STATUS_CONFLICT, f"{kind.value} {ref_id} is still referenced by {held_by}", [])


# --- what a read returns -----------------------------------------------------------------------------
def without_nulls(value: Any) -> Any:
    """The value with null fields left out of every object in it (lists keep their nulls)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def _ended(contract: Any, today: str) -> bool:
    end = contract.get("endDate") if isinstance(contract, Mapping) else None
    return isinstance(end, str) and end < today


def read_shape(
    kind: Kind,
    payload: Mapping[str, Any],
    *,
    internal_id: int,
    modified: str,
    units_at: Mapping[tuple[str, str], list[str]],
    inactive_contracts: bool,
    unmanaged: Mapping[str, Any],
    app_root: str | None,
) -> dict[str, Any]:
    """The object as a read returns it (see the module's docstring). `units_at` needs the entries of
    this property's streets (`Account.units_at`); `unmanaged` are the extra fields to show; `app_root`
    the host its `appLink` points to (None: no appLink)."""
    shaped = without_nulls(dict(payload))
    if kind is Kind.PROPERTY and isinstance(shaped.get("addresses"), list):
        for address in shaped["addresses"]:
            if isinstance(address, dict):
                key = (payload.get(c.ID_FIELD), address.get("street"))
                address[c.ADDRESS_UNITS_FIELD] = list(units_at.get(key, ()))  # type: ignore[arg-type]
    if kind is Kind.CONTACT and not inactive_contracts and isinstance(shaped.get("contracts"), list):
        today = dt.datetime.now(dt.UTC).date().isoformat()
        shaped["contracts"] = [entry for entry in shaped["contracts"] if not _ended(entry, today)]
    read = {**shaped, **unmanaged, c.INTERNAL_ID_FIELD: internal_id, c.MODIFIED_FIELD: modified}
    if app_root is not None:
        read[c.APP_LINK_FIELD] = app_link(app_root, kind, internal_id)
    return read


class StoredAccount:
    """The sandbox's store as an `Account`, and its objects shaped for reads (the units at each property
    address looked up in one query per page)."""

    def __init__(self, store: SandboxStore) -> None:
        self.store = store
        store.index_field("propertyId")

    def payload(self, kind: Kind, ref_id: str) -> Mapping[str, Any] | None:
        stored = self.store.get(kind.collection, ref_id)
        return stored.payload if stored is not None else None

    def units_at(self, property_ids: Sequence[str]) -> dict[tuple[str, str], list[str]]:
        return self.store.grouped_by(Kind.UNIT.collection, "propertyId", property_ids, also="address")

    def referrers(self, kind: Kind, ref_id: str) -> dict[str, int]:
        return self.store.referrers(kind.collection, ref_id)

    def shape(
        self,
        kind: Kind,
        stored: Sequence[StoredObject],
        *,
        inactive_contracts: bool = True,
        unmanaged: Mapping[str, Any] | None = None,
        app_root: str | None = None,
    ) -> list[dict[str, Any]]:
        units_at = {}
        if kind is Kind.PROPERTY:
            units_at = self.units_at(
                [obj.payload[c.ID_FIELD] for obj in stored if isinstance(obj.payload.get(c.ID_FIELD), str)]
            )
        return [
            read_shape(
                kind,
                obj.payload,
                internal_id=obj.internal_id,
                modified=obj.modified,
                units_at=units_at,
                inactive_contracts=inactive_contracts,
                unmanaged=unmanaged or {},
                app_root=app_root,
            )
            for obj in stored
        ]
