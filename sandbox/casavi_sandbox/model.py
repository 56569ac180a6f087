"""casavi's object model as the sandbox and the fake client apply it: what a PUT or DELETE is refused
with, what a write stores and what a read returns. One implementation of each rule, over any `Account`
(the sandbox's SQLite store, the fake's dicts), so the server and the fake cannot drift apart.

Every casavi name and field rule comes from the adapter `casavi_pipeline.casavi.api` (revision 2 of
`docs/casavi-api.md`). A PUT is refused, checked in this order:

- `400` the body breaks a field rule (`api.validate_payload`) or its `id` is not the path's;
- `422` a reference does not resolve (`api.REFERENCES`: a unit's `propertyId`, a contract's
  `propertyId` and `unitId`), a unit's `address` is not one of its property's `addresses[].street`, or a
  contract's `unitId` is a unit of another property than its `propertyId`;
- `409` a property PUT leaves out a street that units of the property still name as their `address`.
  409, not 422: the body itself is sound and names nothing unknown; it conflicts with objects that
  depend on it, as a DELETE of a still-referenced object does (rename a street by first adding the
  new one, moving the units, then dropping the old one).

A DELETE is `404` for an unknown id and `409` while the object is referenced: a unit by any contract
of any contact (ended contracts included), a property by its units or by a contract.

A stored object is the body of its last write (every field of the kind, absent ones as null, fields
outside the model dropped). A read leaves null fields out and adds the read-only fields: `internalId`,
`modified`, on each property address the ids of the units at that street (`api.ADDRESS_UNITS_FIELD`),
the server's `appLink` to the object (`app_link`), and, when asked for, fields the sync does not manage
(`api.UNMANAGED_READ_FIELDS`). A contact's ended contracts (`endDate` before today, UTC) are left out
unless the read asks for inactive contracts.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from casavi_pipeline.casavi import api
from casavi_sandbox.store import SandboxStore, StoredObject

Kind = api.ObjectKind
KINDS_BY_COLLECTION = {kind.collection: kind for kind in Kind}
#: Domain field names → casavi's, per kind (the adapter owns the mapping).
_CASAVI = {kind: {rule.name: rule.casavi for rule in rules} for kind, rules in api.FIELD_RULES.items()}
_ID = api.ID_FIELD
_UNIT_PROPERTY = _CASAVI[Kind.UNIT]["property_id"]
_UNIT_ADDRESS = _CASAVI[Kind.UNIT]["address"]
_ADDRESSES = _CASAVI[Kind.PROPERTY]["addresses"]
_STREET = next(rule.casavi for rule in api.ADDRESS_RULES if rule.name == "street")
_CONTRACTS = _CASAVI[Kind.CONTACT]["contracts"]
_CONTRACT = {rule.name: rule.casavi for rule in api.CONTRACT_RULES}
#: The reads' values of the unmanaged fields the `unmanaged_fields` knob adds (casavi's shapes as the
#: live clients show them); a name only matched by a prefix (`msc…`) reads as a plain string.
_UNMANAGED_VALUES: dict[str, Any] = {
    "images": [{"id": 1, "url": "https://files.sandbox.invalid/images/1.jpg"}],
    "responsibilities": [{"role": "PROPERTY_MANAGER", "userId": 7}],
    "appLink": "https://app.sandbox.invalid/object",
    "customFields": [{"key": "baujahr", "value": "1965"}],
}
_ALWAYS_READ = frozenset({api.INTERNAL_ID_FIELD, api.MODIFIED_FIELD})


class Problem(Exception):
    """A refusal in casavi's terms: status, prose, and the offending fields (`api.FieldError`)."""

    def __init__(self, status: int, message: str, errors: Iterable[api.FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors) if errors is not None else None


def utc_timestamp(unix_time: float) -> str:
    """ISO 8601 UTC with milliseconds, casavi's format (`YYYY-MM-DDThh:mm:ss.sssZ`); sorts as text."""
    moment = dt.datetime.fromtimestamp(unix_time, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def kind_named(name: str) -> Kind:
    """An object kind by its value (`unit`) or its collection (`units`); ValueError if neither."""
    kind = KINDS_BY_COLLECTION.get(name)
    if kind is None:
        try:
            kind = Kind(name)
        except ValueError:
            known = sorted([*KINDS_BY_COLLECTION, *(k.value for k in Kind)])
            raise ValueError(f"unknown kind {name!r}; known: {known}") from None
    return kind


def unmanaged_field_problem(name: str) -> str | None:
    """Why `name` cannot be an unmanaged read field (None if it can): it must be one of
    `api.UNMANAGED_READ_FIELDS` (or match one of its prefixes), other than those every read has."""
    if name in _ALWAYS_READ:
        return f"{name} is in every read already"
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in api.UNMANAGED_READ_FIELDS):
        return f"{name!r} is not one of api.UNMANAGED_READ_FIELDS {list(api.UNMANAGED_READ_FIELDS)}"
    return None


def app_link(base_url: str, kind: Kind, internal_id: int) -> str:
    """The `appLink` a read carries: a link into the app on the host that served the read, by the object's
    internal id, as casavi's links open an object (`http://127.0.0.1:8765/app/units/17`)."""
    return f"{base_url.rstrip('/')}/app/{kind.collection}/{internal_id}"


def unmanaged_values(names: Iterable[str]) -> dict[str, Any]:
    """The values reads show for these unmanaged fields (names checked by `unmanaged_field_problem`)."""
    return {name: _UNMANAGED_VALUES.get(name, "sandbox") for name in names}


# --- what a write stores -----------------------------------------------------------------------------
def stored_shape(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """PUT replaces the object: every field of the kind, absent ones as null, unknown ones dropped, in
    embedded entries too (so a read-only `units` sent on an address is not stored)."""
    payload: dict[str, Any] = {}
    for rule in api.FIELD_RULES[kind]:
        value = body.get(rule.casavi)
        if rule.type == "object_list" and isinstance(value, list):
            value = [{item.casavi: entry.get(item.casavi) for item in rule.items} for entry in value]
        payload[rule.casavi] = value
    return payload


def reference_targets(kind: Kind, payload: Mapping[str, Any]) -> Iterator[tuple[str, Kind, str]]:
    """(field path, target kind, target id) of every reference in a body (`api.REFERENCES`), an
    embedded one named by its entry (`contracts[1].unitId`). Absent or non-string targets are skipped:
    an imported object may lack them."""
    for reference in api.REFERENCES:
        if reference.kind is not kind:
            continue
        if "." not in reference.field:
            name = _CASAVI[kind][reference.field]
            for target in api.referenced_ids(reference, payload):
                yield name, reference.target, target
            continue
        list_name, item_name = reference.field.split(".", 1)
        list_rule = api.rule_of(kind, list_name)
        item = next(rule.casavi for rule in list_rule.items if rule.name == item_name)
        entries = payload.get(list_rule.casavi)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            for target in api.referenced_ids(reference, {list_rule.casavi: [entry]}):
                yield f"{list_rule.casavi}[{i}].{item}", reference.target, target


def links(kind: Kind, payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(target collection, target id) of every reference a body holds: what keeps its targets from
    being deleted (409)."""
    found = {
        (reference.target.collection, target)
        for reference in api.REFERENCES
        if reference.kind is kind
        for target in api.referenced_ids(reference, payload)
    }
    return sorted(found)


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
    errors: list[api.FieldError] = []
    if isinstance(body.get(_ID), str) and body[_ID] != ref_id:
        errors.append(api.FieldError(_ID, "must equal the id in the path"))
    errors += api.validate_payload(kind, body)
    if errors:
        raise Problem(api.STATUS_INVALID, f"invalid {kind.value}", errors)
    payload = stored_shape(kind, body)
    unknown = [
        api.FieldError(field, f"unknown {target.value} {target_id}")
        for field, target, target_id in reference_targets(kind, payload)
        if account.payload(target, target_id) is None
    ]
    unknown += _outside_the_property(kind, payload, account)
    if unknown:
        raise Problem(api.STATUS_UNKNOWN_REFERENCE, f"{kind.value} references unknown objects", unknown)
    if kind is Kind.PROPERTY:
        kept = {address.get(_STREET) for address in payload[_ADDRESSES] or []}
        orphans = [
            unit
            for (_, street), units in account.units_at([ref_id]).items()
            if street not in kept
            for unit in units
        ]
        if orphans:
            raise Problem(
                api.STATUS_CONFLICT,
                f"{len(orphans)} units of property {ref_id} are at a street the body leaves out",
                [api.FieldError(_ADDRESSES, "leaves out a street that units still use")],
            )
    return payload


def _outside_the_property(kind: Kind, payload: Mapping[str, Any], account: Account) -> list[api.FieldError]:
    """422s of a unit naming a street its property has not, or of a contract whose unit belongs to
    another property (each only where both objects exist: a missing one is reported already)."""
    errors = []
    if kind is Kind.UNIT:
        parent = account.payload(Kind.PROPERTY, payload[_UNIT_PROPERTY])
        if parent is not None:
            streets = {
                address.get(_STREET)
                for address in parent.get(_ADDRESSES) or []
                if isinstance(address, Mapping)
            }
            if payload[_UNIT_ADDRESS] not in streets:
                errors.append(
                    api.FieldError(_UNIT_ADDRESS, f"is not a street of property {payload[_UNIT_PROPERTY]}")
                )
    if kind is Kind.CONTACT:
        for i, contract in enumerate(payload[_CONTRACTS] or []):
            property_id, unit_id = contract[_CONTRACT["property_id"]], contract[_CONTRACT["unit_id"]]
            unit = account.payload(Kind.UNIT, unit_id)
            if (
                unit is not None
                and account.payload(Kind.PROPERTY, property_id) is not None
                and unit.get(_UNIT_PROPERTY) != property_id
            ):
                errors.append(
                    api.FieldError(
                        f"{_CONTRACTS}[{i}].{_CONTRACT['unit_id']}",
                        f"is not a unit of property {property_id}",
                    )
                )
    return errors


def check_delete(kind: Kind, ref_id: str, account: Account) -> None:
    """`Problem` 404 for an unknown object, 409 for one that is still referenced."""
    if account.payload(kind, ref_id) is None:
        raise Problem(api.STATUS_NOT_FOUND, f"no {kind.value} with id {ref_id}")
    referrers = account.referrers(kind, ref_id)
    if referrers:
        held_by = ", ".join(f"{count} {collection}" for collection, count in sorted(referrers.items()))
        raise Problem(api.STATUS_CONFLICT, f"{kind.value} {ref_id} is still referenced by {held_by}", [])


# --- what a read returns -----------------------------------------------------------------------------
def without_nulls(value: Any) -> Any:
    """The value with null fields left out of every object in it (lists keep their nulls)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def _ended(contract: Any, today: str) -> bool:
    end = contract.get(_CONTRACT["end_date"]) if isinstance(contract, Mapping) else None
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
) -> dict[str, Any]:
    """The object as a read returns it (see the module's docstring). `units_at` needs the entries of
    this property's streets (`Account.units_at`); `unmanaged` are the extra fields to show."""
    shaped = without_nulls(dict(payload))
    if kind is Kind.PROPERTY and isinstance(shaped.get(_ADDRESSES), list):
        for address in shaped[_ADDRESSES]:
            if isinstance(address, dict):
                key = (payload.get(_ID), address.get(_STREET))
                address[api.ADDRESS_UNITS_FIELD] = list(units_at.get(key, ()))  # type: ignore[arg-type]
    if kind is Kind.CONTACT and not inactive_contracts and isinstance(shaped.get(_CONTRACTS), list):
        today = dt.datetime.now(dt.UTC).date().isoformat()
        shaped[_CONTRACTS] = [entry for entry in shaped[_CONTRACTS] if not _ended(entry, today)]
    return {**shaped, **unmanaged, api.INTERNAL_ID_FIELD: internal_id, api.MODIFIED_FIELD: modified}


class StoredAccount:
    """The sandbox's store as an `Account`, and its objects shaped for reads (the units at each property
    address looked up in one query per page)."""

    def __init__(self, store: SandboxStore) -> None:
        self.store = store
        store.index_field(_UNIT_PROPERTY)

    def payload(self, kind: Kind, ref_id: str) -> Mapping[str, Any] | None:
        stored = self.store.get(kind.collection, ref_id)
        return stored.payload if stored is not None else None

    def units_at(self, property_ids: Sequence[str]) -> dict[tuple[str, str], list[str]]:
        return self.store.grouped_by(Kind.UNIT.collection, _UNIT_PROPERTY, property_ids, also=_UNIT_ADDRESS)

    def referrers(self, kind: Kind, ref_id: str) -> dict[str, int]:
        return self.store.referrers(kind.collection, ref_id)

    def shape(
        self,
        kind: Kind,
        stored: Sequence[StoredObject],
        *,
        inactive_contracts: bool = True,
        unmanaged: Mapping[str, Any] | None = None,
        app_links: str | None = None,
    ) -> list[dict[str, Any]]:
        """The objects as a read returns them; `app_links`: the base URL each one's `appLink` starts with
        (None: reads carry none)."""
        units_at = {}
        if kind is Kind.PROPERTY:
            units_at = self.units_at(
                [obj.payload[_ID] for obj in stored if isinstance(obj.payload.get(_ID), str)]
            )
        return [
            read_shape(
                kind,
                obj.payload,
                internal_id=obj.internal_id,
                modified=obj.modified,
                units_at=units_at,
                inactive_contracts=inactive_contracts,
                unmanaged={
                    **(unmanaged or {}),
                    **({api.APP_LINK_FIELD: app_link(app_links, kind, obj.internal_id)} if app_links else {}),
                },
            )
            for obj in stored
        ]
