"""The ERP → casavi mapping, rule by rule (docs/export-format.md rules 2-5), through the real reader."""

from __future__ import annotations

import pandas as pd
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping import map_mandant, quality
from casavi_pipeline.mapping.email import first_valid_email, is_valid_email
from casavi_pipeline.mapping.people import conflicting_persons
from casavi_pipeline.mapping.schemas import payload_problems
from casavi_pipeline_tests.erp_fixtures import Append, default_rows, write_export

M = "0001"


def erp(tmp_path, rows=None) -> dict[str, pd.DataFrame]:
    root = write_export(tmp_path / "export", {M: rows if rows is not None else {}})
    return {e.name: read_entity(root, M, e).frame for e in ENTITIES}


def mapped(frames: dict[str, pd.DataFrame], separator: str = "-") -> dict[str, pd.DataFrame]:
    return map_mandant(frames, mandant=M, separator=separator)


@pytest.mark.parametrize("s", ["-", "_", ".", "/", "|"])
def test_composite_ids_for_every_separator(tmp_path, s):
    out = mapped(erp(tmp_path), separator=s)
    assert list(out["properties"]["id"]) == [f"0001{s}001"]
    assert list(out["addresses"]["id"]) == [f"0001{s}001{s}01", f"0001{s}001{s}02"]
    assert list(out["units"]["id"]) == [
        f"0001{s}001{s}01{s}0001",
        f"0001{s}001{s}01{s}0002",
        f"0001{s}001{s}02{s}0003",
    ]
    assert list(out["contacts"]["id"]) == [f"0001{s}00042", f"0001{s}00044", f"0001{s}00050"]
    assert list(out["contracts"]["id"]) == [
        f"0001{s}EV{s}200001",
        f"0001{s}MV{s}100001",
        f"0001{s}MV{s}100002",
    ]
    unit = out["units"].iloc[0]
    assert (unit["property_id"], unit["address_id"]) == (f"0001{s}001", f"0001{s}001{s}01")


def test_property_fields_with_umlauts_leading_zeros_and_embedded_addresses(tmp_path):
    prop = api.to_payload(api.ObjectKind.PROPERTY, mapped(erp(tmp_path))["properties"].iloc[0].to_dict())
    assert prop == {
        "id": "0001-001",
        "name": "Wohnanlage Müllerstraße",
        "number": "001",
        "street": "Müllerstraße 12",
        "postalCode": "01067",
        "city": "Dresden",
        "country": "DE",
        "note": None,
        "addresses": [
            {
                "id": "0001-001-01",
                "street": "Müllerstraße 12",
                "postalCode": "01067",
                "city": "Dresden",
                "country": "DE",
            },
            # no `land` in the export: DE by default; house number with a letter kept
            {
                "id": "0001-001-02",
                "street": "Weißdornweg 3a",
                "postalCode": "01067",
                "city": "Dresden",
                "country": "DE",
            },
        ],
    }


def test_unit_names_usage_area_and_rooms(tmp_path):
    units = mapped(erp(tmp_path))["units"].set_index("id")
    assert units.loc["0001-001-01-0001", ["name", "usage", "area", "rooms"]].tolist() == [
        "Wohnung EG links",
        "PRIVATE",
        62.5,
        2.5,
    ]
    assert units.loc["0001-001-01-0002", ["name", "usage"]].tolist() == ["Gewerbe EG rechts", "COMMERCIAL"]
    # no lage: "<label> <ve_nr>"
    assert units.loc["0001-001-02-0003", "name"] == "Stellplatz 0003"
    assert pd.isna(units.loc["0001-001-02-0003", "rooms"])


def test_contract_with_one_tenant_without_email_is_sent_with_the_other_only(tmp_path):
    out = mapped(erp(tmp_path))
    contract = out["contracts"].set_index("id").loc["0001-MV-100001"]
    assert list(contract["contact_ids"]) == ["0001-00042"]
    assert "0001-00043" not in set(out["contacts"]["id"])  # Dr. Weiß has no email: not synced


def test_contract_whose_tenants_all_lack_email_is_not_synced(tmp_path):
    rows = default_rows()
    rows["mieter"][2]["email"] = "info at baeckerei"
    out = mapped(erp(tmp_path, rows))
    assert "0001-MV-100002" not in set(out["contracts"]["id"])
    assert "0001-00044" not in set(out["contacts"]["id"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max@example.org", "max@example.org"),
        ("  max@example.org ", "max@example.org"),
        ("max@", None),
        ("a b@c.de", None),
        ("x@.de", None),
        ("x@de.", None),
        ("x@de", None),
        ("@example.org", None),
        ("a@b@c.de", None),
        ("bad; good@x.de", "good@x.de"),
        ("first@x.de, second@y.de", "first@x.de"),
        ("", None),
        (None, None),
    ],
)
def test_email_rule(value, expected):
    assert first_valid_email(value) == expected
    if value and ";" not in value and "," not in value:
        assert is_valid_email(value.strip()) is (expected is not None)


def test_ended_contract_keeps_its_end_date_and_owner_contract_has_type_owner(tmp_path):
    contracts = mapped(erp(tmp_path))["contracts"].set_index("id")
    ended = api.to_payload(
        api.ObjectKind.CONTRACT, {"id": "0001-MV-100002", **contracts.loc["0001-MV-100002"].to_dict()}
    )
    assert (ended["type"], ended["startDate"], ended["endDate"], ended["unitId"]) == (
        "RENTER", "2019-05-01", "2024-12-31", "0001-001-01-0002"
    )  # fmt: skip
    owner = contracts.loc["0001-EV-200001"]
    assert (owner["contract_type"], list(owner["contact_ids"]), owner["end_date"]) == (
        "OWNER",
        ["0001-00050"],
        None,
    )


def test_person_who_is_tenant_and_owner_is_one_contact_on_both_contracts(tmp_path):
    rows = default_rows()
    rows["eigentuemer"][0] = {**rows["mieter"][0], "ev_nr": "200001"}
    rows["eigentuemer"][0].pop("vertrag_nr")
    out = mapped(erp(tmp_path, rows))
    assert list(out["contacts"]["id"]) == ["0001-00042", "0001-00044"]
    by_contract = out["contracts"].set_index("id")["contact_ids"].map(list).to_dict()
    assert by_contract["0001-MV-100001"] == by_contract["0001-EV-200001"] == ["0001-00042"]


def test_owner_without_email_is_synced_postal(tmp_path):
    rows = default_rows()
    rows["eigentuemer"][0]["email"] = ""
    contact = mapped(erp(tmp_path, rows))["contacts"].set_index("id").loc["0001-00050"]
    assert (contact["email"], contact["preferred_way_of_contact"]) == (None, "POSTAL")


def test_conflicting_rows_latest_beginn_wins_and_are_counted(tmp_path):
    later = {**default_rows()["mieter"][0], "vertrag_nr": "100003", "telefon": "0351 999"}
    rows = {
        "mietvertraege": Append(
            [{"vertrag_nr": "100003", "we_nr": "001", "ve_nr": "0003", "beginn": "2023-06-01"}]
        ),
        "mieter": Append([later]),
    }
    frames = erp(tmp_path, rows)
    contact = mapped(frames)["contacts"].set_index("id").loc["0001-00042"]
    assert contact["telephone"] == "0351 999"
    people = (
        frames["mieter"],
        frames["mietvertraege"],
        frames["eigentuemer"],
        frames["eigentuemervertraege"],
    )
    conflicts = conflicting_persons(*people, mandant=M, separator="-")
    assert conflicts.to_dict("records") == [{"contact_id": "0001-00042", "rows": 2}]


def test_erp_number_containing_the_separator_collides_and_the_check_names_both(tmp_path):
    rows = default_rows()
    rows["wirtschaftseinheiten"].append({"we_nr": "001-01", "bezeichnung": "Anbau"})
    rows["gebaeude"].append(
        {
            "we_nr": "001-01",
            "geb_nr": "02",
            "strasse": "Hof",
            "hausnummer": "1",
            "plz": "01067",
            "ort": "Dresden",
        }
    )
    rows["gebaeude"].append(
        {
            "we_nr": "001",
            "geb_nr": "01-02",
            "strasse": "Hof",
            "hausnummer": "2",
            "plz": "01067",
            "ort": "Dresden",
        }
    )
    addresses = mapped(erp(tmp_path, rows))["addresses"]
    assert list(addresses["id"]).count("0001-001-01-02") == 2  # kept, not silently merged

    outcome = quality.unique_ids("addresses", addresses, "-", singular="address")
    assert not outcome.passed and outcome.severity is quality.Severity.ERROR
    assert outcome.ids == ("0001-001-01-02",)
    assert outcome.details == ("0001-001-01-02 ← we_nr=001 geb_nr=01-02 | we_nr=001-01 geb_nr=02",)
    assert "CASAVI_ID_SEPARATOR to '_'" in outcome.reason
    # With another separator the same export is collision-free.
    assert quality.unique_ids(
        "addresses", mapped(erp(tmp_path, rows), separator="_")["addresses"], "_"
    ).passed


def test_dangling_foreign_keys_are_listed(tmp_path):
    rows = default_rows()
    rows["verwaltungseinheiten"].append(
        {"we_nr": "001", "ve_nr": "0004", "geb_nr": "09", "nutzungsart": "GARAGE"}
    )
    rows["mieter"].append(
        {"vertrag_nr": "999999", "person_nr": "00077", "nachname": "Niemand", "email": "n@x.de"}
    )
    outcome = quality.erp_foreign_keys(erp(tmp_path, rows))
    assert not outcome.passed
    assert set(outcome.details) == {
        "verwaltungseinheiten we_nr=001 ve_nr=0004 → missing gebaeude we_nr=001 geb_nr=09",
        "mieter vertrag_nr=999999 person_nr=00077 → missing mietvertraege vertrag_nr=999999",
    }
    assert "Niemand" not in outcome.reason and "n@x.de" not in " ".join(outcome.details)


def test_checks_pass_on_a_consistent_export(tmp_path):
    frames = erp(tmp_path)
    out = mapped(frames)
    assert quality.erp_foreign_keys(frames).passed
    assert quality.unit_references(out["units"], out["properties"]).passed
    assert quality.contract_references(out["contracts"], out["units"], out["contacts"]).passed
    assert quality.email_rule(out["contracts"], out["contacts"], "RENTER").passed
    for kind, name in [(api.ObjectKind.PROPERTY, "properties"), (api.ObjectKind.UNIT, "units"),
                       (api.ObjectKind.CONTACT, "contacts"), (api.ObjectKind.CONTRACT, "contracts")]:  # fmt: skip
        assert payload_problems(kind, out[name]) == [], kind


def test_email_rule_check_fails_for_a_tenant_contact_without_email(tmp_path):
    out = mapped(erp(tmp_path))
    contacts = out["contacts"].copy()
    contacts.loc[contacts["id"] == "0001-00042", "email"] = None
    outcome = quality.email_rule(out["contracts"], contacts, "RENTER")
    assert not outcome.passed and outcome.ids == ("0001-MV-100001",)


def test_payload_schema_names_row_and_field_never_the_value(tmp_path):
    units = mapped(erp(tmp_path))["units"].copy()
    units.loc[0, "name"] = ""
    units.loc[1, "usage"] = "BUERO"
    units.loc[2, "number"] = "9" * 65  # one over casavi's 64
    units.loc[1, "name"] = 42  # not a string at all
    problems = {(p.row, p.field) for p in payload_problems(api.ObjectKind.UNIT, units)}
    assert problems == {(0, "name"), (1, "usage"), (2, "number"), (1, "name")}


def test_payload_schema_keeps_the_cross_field_rules(tmp_path):
    out = mapped(erp(tmp_path))
    contacts = out["contacts"].copy()
    contacts.loc[1, ["last_name", "company_name"]] = None  # neither lastName nor companyName
    assert {(p.row, p.field) for p in payload_problems(api.ObjectKind.CONTACT, contacts)} == {(1, "lastName")}
    contracts = out["contracts"].copy()
    contracts.loc[2, "end_date"] = "2001-01-01"  # before its start
    assert {(p.row, p.field) for p in payload_problems(api.ObjectKind.CONTRACT, contracts)} == {
        (2, "endDate")
    }
