"""Golden: the canonical JSON and hash of one payload per kind, pinned.

The changeset compares md5 hashes of the JSON DuckDB writes (`to_json`). A DuckDB release that changed
either (number formatting, key order, escaping) would make every synced object look changed and re-send
the whole account — at casavi's ~80 requests/minute, days of writes. duckdb is pinned to a minor line in
pyproject.toml; this test is what tells an upgrade that it changes the hash. The same hash covers casavi's
normalised reads (read-back), so they are pinned here too.
"""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.sync.changeset import hashed_payloads_sql

RECORDS = {
    ObjectKind.PROPERTY: {
        "id": "0001-001",
        "name": "Lindenhof",
        "number": "001",
        "street": "Lindenstraße 12a",
        "postal_code": "01067",
        "city": "Dresden",
        "country": "DE",
        "note": None,
        "addresses": [
            {
                "id": "0001-001-01",
                "street": "Lindenstraße 12a",
                "postal_code": "01067",
                "city": "Dresden",
                "country": "DE",
            }
        ],
    },
    ObjectKind.UNIT: {
        "id": "0001-001-01-0003",
        "property_id": "0001-001",
        "address_id": "0001-001-01",
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
        "country": "DE",
        "preferred_way_of_contact": "ONLINE",
    },
    ObjectKind.CONTRACT: {
        "id": "0001-MV-100001",
        "contract_type": "RENTER",
        "unit_id": "0001-001-01-0003",
        "contact_ids": ["0001-00042", "0001-00043"],
        "number": "100001",
        "start_date": "2020-01-01",
        "end_date": "9999-12-31",
    },
}
GOLDEN = {
    ObjectKind.PROPERTY: (
        '{"id":"0001-001","name":"Lindenhof","number":"001","street":"Lindenstraße 12a","postalCode":"01067",'
        '"city":"Dresden","country":"DE","note":null,"addresses":[{"id":"0001-001-01","street":"Lindenstraße '
        '12a","postalCode":"01067","city":"Dresden","country":"DE"}]}',
        "bf5cf5985b031ff0f933420acafa11dd",
    ),
    ObjectKind.UNIT: (
        '{"id":"0001-001-01-0003","propertyId":"0001-001","addressId":"0001-001-01","name":"Wohnung 2. OG '
        'links","number":"0003","usage":"PRIVATE","area":54.5,"rooms":2.0}',
        "8cfde241277f9a2436e36b40e24cf62a",
    ),
    ObjectKind.CONTACT: (
        '{"id":"0001-00042","salutation":"MS","title":null,"firstName":"Erika","lastName":"Musterfrau",'
        '"companyName":null,"email":"erika@example.org","telephone":"0351 123","mobile":null,"street":"Weg 1",'
        '"postalCode":"01067","city":"Dresden","country":"DE","preferredWayOfContact":"ONLINE"}',
        "b77215b6dc602cc18455a47745919f82",
    ),
    ObjectKind.CONTRACT: (
        '{"id":"0001-MV-100001","type":"RENTER","unitId":"0001-001-01-0003","contactIds":["0001-00042",'
        '"0001-00043"],"number":"100001","startDate":"2020-01-01","endDate":"9999-12-31"}',
        "f22a97c5b2ac6d89f582e64efa59c7b7",
    ),
}


def _hashed(kind: ObjectKind, record: dict) -> tuple[str, str]:
    con = duckdb.connect()
    con.register("frame", pd.DataFrame([record], columns=list(api.DOMAIN_COLUMNS[kind])))
    _, _, payload, content_hash = con.execute(hashed_payloads_sql(kind, "frame")).fetchone()
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
    if kind is ObjectKind.CONTRACT:
        read["contactIds"] = list(reversed(read["contactIds"]))
    if kind is ObjectKind.PROPERTY:
        read["addresses"] = [{**a, "units": ["0001-001-01-0003"]} for a in read["addresses"]]
    if kind is ObjectKind.UNIT:
        read["rooms"] = 2  # a whole number read back as an int
    assert _hashed(kind, api.record_from_read(kind, read)) == GOLDEN[kind]
