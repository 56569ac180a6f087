"""How the sandbox stores and reads casavi objects, shared by the API (app.py) and the admin endpoints.

Every casavi name comes from the adapter `casavi_pipeline.casavi.api`. A stored payload is the object
as casavi holds it (the fields of its last write, nulls kept); a read adds the read-only fields
(`internalId`, `modified`, the `units` of each property address) and leaves null fields out, as
`docs/casavi-api.md` ("What a read returns") allows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from casavi_pipeline.casavi import api
from casavi_sandbox.store import SandboxStore, StoredObject

KINDS_BY_COLLECTION = {kind.collection: kind for kind in api.ObjectKind}
#: The read-only list of unit ids on each property address. The adapter does not name it yet; if it
#: ever does (`api.ADDRESS_UNITS_FIELD`), the sandbox follows.
ADDRESS_UNITS_FIELD: str = getattr(api, "ADDRESS_UNITS_FIELD", "units")
ADDRESS_ID = dict(api.ADDRESS_FIELDS)["id"]


@functools.cache
def wire_name(kind: api.ObjectKind, domain_name: str) -> str:
    """casavi's field name for a domain field of `kind` (the adapter owns the mapping)."""
    return next(rule.casavi for rule in api.FIELD_RULES[kind] if rule.name == domain_name)


def kind_named(name: str) -> api.ObjectKind:
    """An object kind by its value (`unit`) or its collection (`units`); ValueError if neither."""
    kind = KINDS_BY_COLLECTION.get(name)
    if kind is None:
        try:
            kind = api.ObjectKind(name)
        except ValueError:
            known = sorted([*KINDS_BY_COLLECTION, *(k.value for k in api.ObjectKind)])
            raise ValueError(f"unknown kind {name!r}; known: {known}") from None
    return kind


#: A unit's address must belong to the unit's property: (kind, address field, parent field, parent
#: kind, parent's address-list field), in domain names. The same rule puts unit ids on addresses.
ADDRESS_RULES = ((api.ObjectKind.UNIT, "address_id", "property_id", api.ObjectKind.PROPERTY, "addresses"),)


def stored_shape(kind: api.ObjectKind, body: Mapping[str, Any]) -> dict[str, Any]:
    """PUT replaces the object: every field of the kind, absent ones as null, unknown ones dropped."""
    payload = {rule.casavi: body.get(rule.casavi) for rule in api.FIELD_RULES[kind]}
    for rule in api.FIELD_RULES[kind]:
        if rule.type == "address_list" and payload[rule.casavi] is not None:
            payload[rule.casavi] = [
                {casavi: address.get(casavi) for _, casavi in api.ADDRESS_FIELDS}
                for address in payload[rule.casavi]
            ]
    return payload


def reference_targets(kind: api.ObjectKind, payload: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(field, target collection, target id) of every reference in the payload (`api.REFERENCES`).

    Absent or non-string targets are skipped: an imported object may lack them.
    """
    targets = []
    for source_kind, field, target_kind in api.REFERENCES:
        if source_kind is not kind:
            continue
        name = wire_name(kind, field)
        value = payload.get(name)
        for target in value if isinstance(value, list) else [value]:
            if isinstance(target, str) and target:
                targets.append((name, target_kind.collection, target))
    return targets


def without_nulls(value: Any) -> Any:
    """The value with null fields left out of every object in it (lists keep their nulls)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def read_shape(
    kind: api.ObjectKind, stored: StoredObject, units_at: Mapping[tuple[str, str], list[str]] | None = None
) -> dict[str, Any]:
    """The object as a read returns it: no null fields, plus internalId, modified and, on each property
    address, the ids of the units at it (`units_at`: (property id, address id) → unit ids)."""
    shaped = without_nulls(stored.payload)
    if kind is api.ObjectKind.PROPERTY and units_at is not None:
        addresses = shaped.get(wire_name(kind, "addresses"))
        if isinstance(addresses, list):
            property_id = stored.payload.get(wire_name(kind, "id"))
            for address in addresses:
                if isinstance(address, dict):
                    key = (property_id, address.get(ADDRESS_ID))
                    address[ADDRESS_UNITS_FIELD] = list(units_at.get(key, ()))  # type: ignore[arg-type]
    return {**shaped, api.INTERNAL_ID_FIELD: stored.internal_id, api.MODIFIED_FIELD: stored.modified}


class Reader:
    """Shapes stored objects for reads, looking up the units at each property address in one query."""

    def __init__(self, store: SandboxStore) -> None:
        self.store = store
        kind, address_field, parent_field, parent_kind, _list_field = ADDRESS_RULES[0]
        self._units = kind.collection
        self._parent_kind = parent_kind
        self._parent_field = wire_name(kind, parent_field)
        self._address_field = wire_name(kind, address_field)
        store.index_field(self._parent_field)

    def shape(self, kind: api.ObjectKind, stored: Sequence[StoredObject]) -> list[dict[str, Any]]:
        units_at = None
        if kind is self._parent_kind:
            id_field = wire_name(kind, "id")
            units_at = self.store.grouped_by(
                self._units,
                self._parent_field,
                [obj.payload[id_field] for obj in stored if isinstance(obj.payload.get(id_field), str)],
                also=self._address_field,
            )
        return [read_shape(kind, obj, units_at) for obj in stored]

    def shape_one(self, kind: api.ObjectKind, stored: StoredObject) -> dict[str, Any]:
        return self.shape(kind, [stored])[0]
