"""Golden: the canonical JSON and hash of one payload per kind, pinned.

The changeset compares md5 hashes of the JSON DuckDB writes (`to_json`). A DuckDB release that changed
either (number formatting, key order, escaping) would make every synced object look changed and re-send
the whole account — tens of thousands of writes. duckdb is pinned to a minor line in
pyproject.toml; this test is what tells an upgrade that it changes the hash. The same hash covers casavi's
normalised reads (read-back), so they are pinned here too.
"""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state.hashing import hashed_payloads_sql

RECORDS = {
    ObjectKind.PROPERTY: {
        "id": "0001-001",
        "name": "Lindenhof",
        "number": "001",
        "postal_code": "01067",
        "city": "Dresden",
        "country": "Germany",
        "note": None,
        "addresses": [{"street": "Lindenstraße 12a"}, {"street": "Lindenstraße 14"}],
    },
    ObjectKind.UNIT: {
        "id": "0001-001-01-0003",
        "property_id": "0001-001",
        "address": "Lindenstraße 12a",
        "name": "Wohnung 2. OG links",
        "number": "0003",
        "usage": "PRIVATE",
        "area": 54.5,
        "rooms": 2.0,
    },
    ObjectKind.CONTACT: {
        "id": "0001-00042",
        "salutation": "MS",
        "title": None,
        "first_name": "Erika",
        "last_name": "Musterfrau",
        "company_name": None,
        "email": "erika@example.org",
        "telephone": "0351 123",
        "mobile": None,
        "street": "Weg 1",
        "postal_code": "01067",
        "city": "Dresden",
        "country": "Germany",
        "preferred_way_of_contact": "ONLINE",
        "contracts": [
            {
                "contract_type": "RENTER",
                "property_id": "0001-001",
                "unit_id": "0001-001-01-0003",
                "number": "100001",
                "start_date": "2020-01-01",
                "end_date": "9999-12-31",
            },
            {
                "contract_type": "OWNER",
                "property_id": "0001-001",
                "unit_id": "0001-001-01-0004",
                "number": "200007",
                "start_date": "2018-07-01",
                "end_date": None,
            },
        ],
    },
}
GOLDEN = {
    ObjectKind.PROPERTY: (
        '{"id":"0001-001","name":"Lindenhof","number":"001","postalCode":"01067","city":"Dresden",'
        '"country":"Germany","note":null,"addresses":[{"street":"Lindenstraße 12a"},{"street":"Lindenstraße '
        '14"}]}',
        "5f96986f39e6178ae5c3bfb8d7688545",
    ),
    ObjectKind.UNIT: (
        '{"id":"0001-001-01-0003","propertyId":"0001-001","address":"Lindenstraße 12a","name":"Wohnung 2. OG '
        'links","number":"0003","usage":"PRIVATE","area":54.5,"rooms":2.0}',
        "53defb2f6b0301b61e1d1b8c30518087",
    ),
    ObjectKind.CONTACT: (
        '{"id":"0001-00042","salutation":"MS","title":null,"firstName":"Erika","lastName":"Musterfrau",'
        '"companyName":null,"email":"erika@example.org","telephone":"0351 123","mobile":null,"street":"Weg 1",'
        '"postalCode":"01067","city":"Dresden","country":"Germany","preferredWayOfContact":"ONLINE",'
        '"contracts":[{"type":"RENTER","propertyId":"0001-001","unitId":"0001-001-01-0003","number":"100001",'
        '"startDate":"2020-01-01","endDate":"9999-12-31"},{"type":"OWNER","propertyId":"0001-001",'
        '"unitId":"0001-001-01-0004","number":"200007","startDate":"2018-07-01","endDate":null}]}',
        "e35552faceb18350d17f40348820e44c",
    ),
}


def _hashed(kind: ObjectKind, record: dict) -> tuple[str, str]:
    con = duckdb.connect()
    con.register("frame", pd.DataFrame([record], columns=list(api.DOMAIN_COLUMNS[kind])))
    [(_, _, payload, content_hash)] = con.execute(hashed_payloads_sql(kind, "frame")).fetchall()
    return payload, content_hash


@pytest.mark.parametrize("kind", list(ObjectKind))
def test_canonical_json_and_hash_per_kind_are_pinned(kind):
    assert _hashed(kind, RECORDS[kind]) == GOLDEN[kind]


@pytest.mark.parametrize("kind", list(ObjectKind))
def test_a_read_back_hashes_like_the_write_it_came_from(kind):
    """casavi's read (read-only fields added, nulls omitted, lists reordered) normalises to the same hash."""
    body = api.to_payload(kind, RECORDS[kind])
    read = {k: v for k, v in body.items() if v is not None} | {
        "internalId": 7,
        "modified": "2026-11-26T02:00:00.000Z",
    }
    if kind is ObjectKind.CONTACT:  # contracts in another order, an ended one's null left out
        read["contracts"] = [
            {k: v for k, v in c.items() if v is not None} for c in reversed(read["contracts"])
        ]
        read["images"] = []  # a field the sync does not manage
    if kind is ObjectKind.PROPERTY:  # streets in another order, with the read-only units at each
        read["addresses"] = [{**a, "units": ["0001-001-01-0003"]} for a in reversed(read["addresses"])]
    if kind is ObjectKind.UNIT:
        read["rooms"] = 2  # a whole number read back as an int
    assert _hashed(kind, api.record_from_read(kind, read)) == GOLDEN[kind]
