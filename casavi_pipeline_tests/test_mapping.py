"""The ERP → casavi mapping, rule by rule (docs/export-format.md rules 2-5), through the real reader."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from casavi_pipeline import duck_memory
from casavi_pipeline.casavi import api
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping import map_mandant, quality
from casavi_pipeline.mapping.duck import DuckSession
from casavi_pipeline.mapping.email import first_valid_email, is_valid_email
from casavi_pipeline.mapping.people import conflicting_persons
from casavi_pipeline.mapping.schemas import contract_problems, payload_problems
from casavi_pipeline.mapping.scope import SyncRule
from casavi_pipeline_tests.erp_fixtures import Append, default_rows, write_export

M = "0001"


def erp(tmp_path, rows=None) -> dict[str, pd.DataFrame]:
    root = write_export(tmp_path / "export", {M: rows if rows is not None else {}})
    return {e.name: read_entity(root, M, e).frame for e in ENTITIES}


def mapped(
    frames: dict[str, pd.DataFrame], separator: str = "-", rule: SyncRule = SyncRule.EMAIL
) -> dict[str, pd.DataFrame]:
    return map_mandant(frames, mandant=M, separator=separator, rule=rule)


@pytest.mark.parametrize("s", ["-", "_", ".", "/", "|"])
def test_composite_ids_for_every_separator(tmp_path, s):
    out = mapped(erp(tmp_path), separator=s)
    assert list(out["properties"]["id"]) == [f"0001{s}001"]
    assert list(out["units"]["id"]) == [
        f"0001{s}001{s}01{s}0001",
        f"0001{s}001{s}01{s}0002",
        f"0001{s}001{s}02{s}0003",
    ]
    assert list(out["contacts"]["id"]) == [f"0001{s}00042", f"0001{s}00044", f"0001{s}00050"]
    # buildings and contracts have no reference id of their own (revision 2)
    assert list(out["addresses"]["property_id"]) == [f"0001{s}001"] * 2
    assert list(out["contracts"]["contact_id"]) == [f"0001{s}00042", f"0001{s}00044", f"0001{s}00050"]
    unit = out["units"].iloc[0]
    assert (unit["property_id"], unit["address"]) == (f"0001{s}001", "Müllerstraße 12")


def test_property_fields_with_umlauts_leading_zeros_and_embedded_addresses(tmp_path):
    prop = api.to_payload(api.ObjectKind.PROPERTY, mapped(erp(tmp_path))["properties"].iloc[0].to_dict())
    assert prop == {
        "id": "0001-001",
        "name": "Wohnanlage Müllerstraße",
        "number": "001",
        "postalCode": "01067",
        "city": "Dresden",
        "country": "Germany",  # casavi shows the name of land DE
        "note": None,
        # one street per building, ordered by street; a house number with a letter kept
        "addresses": [{"street": "Müllerstraße 12"}, {"street": "Weißdornweg 3a"}],
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


def _contracts_of(out: dict[str, pd.DataFrame], contact_id: str) -> list[dict]:
    contact = out["contacts"].set_index("id").loc[contact_id]
    return api.to_payload(api.ObjectKind.CONTACT, {"id": contact_id, **contact.to_dict()})["contracts"]


def test_contract_with_one_tenant_without_email_is_sent_with_the_other_only(tmp_path):
    out = mapped(erp(tmp_path))
    assert [c["number"] for c in _contracts_of(out, "0001-00042")] == ["100001"]
    assert "0001-00043" not in set(out["contacts"]["id"])  # Dr. Weiß has no email: not synced
    assert "0001-00043" not in set(out["contracts"]["contact_id"])


def test_contract_whose_tenants_all_lack_email_is_not_synced(tmp_path):
    rows = default_rows()
    rows["mieter"][2]["email"] = "info at baeckerei"
    out = mapped(erp(tmp_path, rows))
    assert "100002" not in set(out["contracts"]["number"])
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
        # non-ASCII local part or domain (an internationalised address): the contract's rule accepts them
        ("name@bücher.de", "name@bücher.de"),
        ("jürgen@example.de", "jürgen@example.de"),
        ("bad; Jürgen.Weiß@straße.example", "Jürgen.Weiß@straße.example"),
        # invisible characters are whitespace: inside an address they make another address than the one shown
        ("max@exam\u200bple.org", None),  # zero-width space
        ("max@example\u2060.org", None),  # word joiner
        ("ma\u00adx@example.org", None),  # soft hyphen
        ("max@exam\ufeffple.org", None),  # byte order mark
        ("max@example\u00a0.org", None),  # no-break space
        ("max@ex\u202eample.org", None),  # right-to-left override
        ("max\x01@example.org", None),  # a control character
        ("max@exam\u200bple.org; max@example.org", "max@example.org"),
        ("", None),
        (None, None),
    ],
)
def test_email_rule(value, expected):
    assert first_valid_email(value) == expected
    if value and ";" not in value and "," not in value:
        assert is_valid_email(value.strip()) is (expected is not None)


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", "\u00a0", "\u200b \u2060"])
def test_invisible_characters_at_either_end_are_trimmed_like_spaces(invisible):
    assert first_valid_email(f"{invisible}max@example.org{invisible}") == "max@example.org"


def test_a_tenant_whose_email_hides_a_zero_width_space_is_not_synced_under_the_email_rule(tmp_path):
    rows = default_rows()
    rows["mieter"][0]["email"] = "j.mueller@exam\u200bple.com"
    out = mapped(erp(tmp_path, rows))
    assert "0001-00042" not in set(out["contacts"]["id"])
    assert "\u200b" not in "".join(out["contacts"]["email"].dropna())


def test_a_tenant_with_a_non_ascii_email_is_synced_online_and_passes_casavis_rules(tmp_path):
    rows = default_rows()
    rows["mieter"][0]["email"] = "jürgen.müller@bücher.de"
    out = mapped(erp(tmp_path, rows))
    contact = out["contacts"].set_index("id").loc["0001-00042"]
    assert (contact["email"], contact["preferred_way_of_contact"]) == ("jürgen.müller@bücher.de", "ONLINE")
    assert payload_problems(api.ObjectKind.CONTACT, out["contacts"]) == []
    body = api.to_payload(api.ObjectKind.CONTACT, {"id": "0001-00042", **contact.to_dict()})
    assert api.validate_payload(api.ObjectKind.CONTACT, body) == []  # what the sandbox answers 400 with
    assert quality.email_rule(out["contracts"], out["contacts"], "RENTER").passed


def test_ended_contract_keeps_its_end_date_and_owner_contract_has_type_owner(tmp_path):
    out = mapped(erp(tmp_path))
    assert _contracts_of(out, "0001-00044") == [
        {
            "type": "RENTER",
            "propertyId": "0001-001",
            "unitId": "0001-001-01-0002",
            "number": "100002",
            "startDate": "2019-05-01",
            "endDate": "2024-12-31",
        }
    ]
    [owner] = _contracts_of(out, "0001-00050")
    assert (owner["type"], owner["number"], owner["endDate"]) == ("OWNER", "200001", None)


def test_person_who_is_tenant_and_owner_is_one_contact_carrying_both_contracts(tmp_path):
    rows = default_rows()
    rows["eigentuemer"][0] = {**rows["mieter"][0], "ev_nr": "200001"}
    rows["eigentuemer"][0].pop("vertrag_nr")
    out = mapped(erp(tmp_path, rows))
    assert list(out["contacts"]["id"]) == ["0001-00042", "0001-00044"]
    # ordered by (unitId, type, startDate, number): the rented unit 01-0001 before the owned 02-0003
    assert [(c["type"], c["unitId"]) for c in _contracts_of(out, "0001-00042")] == [
        ("RENTER", "0001-001-01-0001"),
        ("OWNER", "0001-001-02-0003"),
    ]


def test_tenant_without_email_who_owns_a_unit_is_synced_with_the_ownership_only(tmp_path):
    rows = default_rows()
    rows["eigentuemer"][0] = {**rows["mieter"][1], "ev_nr": "200001"}  # Dr. Weiß: no email
    rows["eigentuemer"][0].pop("vertrag_nr")
    out = mapped(erp(tmp_path, rows))
    assert [(c["type"], c["number"]) for c in _contracts_of(out, "0001-00043")] == [("OWNER", "200001")]
    contact = out["contacts"].set_index("id").loc["0001-00043"]
    assert pd.isna(contact["email"]) and contact["preferred_way_of_contact"] == "POSTAL"


def test_owner_without_email_is_synced_postal(tmp_path):
    rows = default_rows()
    rows["eigentuemer"][0]["email"] = ""
    contact = mapped(erp(tmp_path, rows))["contacts"].set_index("id").loc["0001-00050"]
    assert pd.isna(contact["email"]) and contact["preferred_way_of_contact"] == "POSTAL"


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
    conflicts = conflicting_persons(*people, mandant=M, separator="-", rule=SyncRule.EMAIL)
    assert conflicts.to_dict("records") == [{"contact_id": "0001-00042", "rows": 2}]

    # Counted and listed, passing: such persons are everyday ERP data. Above the share, a warning.
    counted = quality.conflicting_person_rows(list(conflicts["contact_id"]), contacts=20)
    assert counted.passed and counted.ids == ("0001-00042",)
    assert counted.reason.startswith("1 of 20 persons (5%) have differing rows across contracts")
    warned = quality.conflicting_person_rows(list(conflicts["contact_id"]), contacts=19)
    assert not warned.passed and warned.severity is quality.Severity.WARN
    assert "more than the usual 5% (first: 0001-00042)" in warned.reason


def test_erp_number_containing_the_separator_collides_and_the_check_names_both(tmp_path):
    rows = default_rows()
    building = {"we_nr": "001", "strasse": "Hof", "hausnummer": "1", "plz": "01067", "ort": "Dresden"}
    rows["gebaeude"].append({**building, "geb_nr": "01-02"})
    rows["verwaltungseinheiten"] += [
        {"we_nr": "001", "geb_nr": "01-02", "ve_nr": "0009", "nutzungsart": "GARAGE"},
        {"we_nr": "001", "geb_nr": "01", "ve_nr": "02-0009", "nutzungsart": "GARAGE"},
    ]
    units = mapped(erp(tmp_path, rows))["units"]
    assert list(units["id"]).count("0001-001-01-02-0009") == 2  # kept, not silently merged

    outcome = quality.unique_ids("units", units, "-", singular="unit")
    assert not outcome.passed and outcome.severity is quality.Severity.ERROR
    assert outcome.ids == ("0001-001-01-02-0009",)
    assert outcome.details == (
        "0001-001-01-02-0009 ← we_nr=001 geb_nr=01 ve_nr=02-0009 | we_nr=001 geb_nr=01-02 ve_nr=0009",
    )
    assert "CASAVI_ID_SEPARATOR to '_'" in outcome.reason
    # With another separator the same export is collision-free.
    assert quality.unique_ids("units", mapped(erp(tmp_path, rows), separator="_")["units"], "_").passed


def test_two_buildings_with_one_street_in_an_economic_unit_block_naming_both(tmp_path):
    rows = default_rows()
    rows["gebaeude"].append(
        {
            "we_nr": "001",
            "geb_nr": "03",
            "strasse": "Müllerstraße",
            "hausnummer": "12",
            "plz": "01067",
            "ort": "Dresden",
        }
    )
    out = mapped(erp(tmp_path, rows))
    outcome = quality.unique_streets(out["addresses"])
    assert not outcome.passed and outcome.severity is quality.Severity.ERROR
    # named by both buildings and the street they share (the company's address, what to fix)
    expected = "0001-001: we_nr=001 geb_nr=01 and we_nr=001 geb_nr=03 share the street 'Müllerstraße 12'"
    assert outcome.details == (expected,)
    assert expected in outcome.reason and "\n" not in outcome.reason
    # casavi would refuse the property too (streets are unique within a property)
    assert {p.field for p in payload_problems(api.ObjectKind.PROPERTY, out["properties"])} == {"addresses"}
    # the same street in another economic unit is no collision
    rows["wirtschaftseinheiten"].append({"we_nr": "002", "bezeichnung": "Nachbarhaus"})
    rows["gebaeude"][-1]["we_nr"] = "002"
    assert quality.unique_streets(mapped(erp(tmp_path, rows))["addresses"]).passed


def test_country_is_the_name_casavi_shows(tmp_path):
    rows = default_rows()
    rows["wirtschaftseinheiten"][0]["land"] = "AT"
    rows["eigentuemer"][0]["land"] = "CH"
    out = mapped(erp(tmp_path, rows))
    assert out["properties"]["country"].tolist() == ["Austria"]
    countries = out["contacts"].set_index("id")["country"]
    # no land (and no postal address at all) is Germany, as the contract says
    assert (countries["0001-00050"], countries["0001-00042"]) == ("Switzerland", "Germany")


def test_unknown_country_code_is_refused_with_file_row_and_column(tmp_path):
    rows = default_rows()
    rows["wirtschaftseinheiten"][0]["land"] = "XY"
    with pytest.raises(ErpExportError, match=r"(?s)wirtschaftseinheiten.*land.*ISO 3166-1 alpha-2"):
        erp(tmp_path, rows)


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
    assert quality.contract_references(out["contracts"], out["units"]).passed
    assert quality.unique_streets(out["addresses"]).passed
    assert quality.email_rule(out["contracts"], out["contacts"], "RENTER").passed
    for kind, name in [(api.ObjectKind.PROPERTY, "properties"), (api.ObjectKind.UNIT, "units"),
                       (api.ObjectKind.CONTACT, "contacts")]:  # fmt: skip
        assert payload_problems(kind, out[name]) == [], kind
    assert contract_problems(out["contracts"]) == []


def test_contract_of_a_unit_missing_from_the_export_is_blocked_by_its_erp_key(tmp_path):
    out = mapped(erp(tmp_path))
    units = out["units"][out["units"]["id"] != "0001-001-01-0002"]
    outcome = quality.contract_references(out["contracts"], units)
    assert not outcome.passed
    assert outcome.details == ("vertrag_nr=100002 person_nr=00044: unit missing",)


def test_email_rule_check_fails_for_a_tenant_contact_without_email(tmp_path):
    out = mapped(erp(tmp_path))
    contacts = out["contacts"].copy()
    contacts.loc[contacts["id"] == "0001-00042", "email"] = None
    outcome = quality.email_rule(out["contracts"], contacts, "RENTER")
    assert not outcome.passed and outcome.ids == ("0001-00042",)


def test_payload_schema_names_row_and_field_never_the_value(tmp_path):
    units = mapped(erp(tmp_path))["units"].copy()
    units.loc[0, "name"] = ""
    units.loc[1, "usage"] = "BUERO"
    units.loc[2, "number"] = "9" * 65  # one over casavi's 64
    units["name"] = units["name"].astype(object)  # an Arrow string column cannot hold anything else
    units.loc[1, "name"] = 42  # not a string at all
    problems = {(p.row, p.field) for p in payload_problems(api.ObjectKind.UNIT, units)}
    assert problems == {(0, "name"), (1, "usage"), (2, "number"), (1, "name")}


def test_payload_schema_keeps_the_cross_field_rules(tmp_path):
    out = mapped(erp(tmp_path))
    contacts = out["contacts"].copy()
    contacts.loc[1, ["last_name", "company_name"]] = None  # neither lastName nor companyName
    assert {(p.row, p.field) for p in payload_problems(api.ObjectKind.CONTACT, contacts)} == {(1, "lastName")}
    contracts = out["contracts"].copy()
    contracts.loc[1, "end_date"] = "2001-01-01"  # before its start
    contracts.loc[2, "contract_type"] = "TENANT"  # not casavi's
    assert {(p.row, p.field) for p in contract_problems(contracts)} == {(1, "endDate"), (2, "type")}


# --- the sync rule last-name (CASAVI_SYNC_RULE) --------------------------------------------------------
def _with_vacant_economic_unit() -> dict:
    """The default rows (unit 0003 is vacant and owned by Erika Schäfer, 00050), plus economic unit 002
    whose only unit is vacant and owned by 00060, and owner 00061 of the rented unit 0001."""
    rows = default_rows()
    rows["wirtschaftseinheiten"].append({"we_nr": "002", "bezeichnung": "Leerstand"})
    rows["gebaeude"].append(
        {
            "we_nr": "002",
            "geb_nr": "01",
            "strasse": "Hof",
            "hausnummer": "1",
            "plz": "01067",
            "ort": "Dresden",
        }
    )
    rows["verwaltungseinheiten"].append(
        {"we_nr": "002", "ve_nr": "0001", "geb_nr": "01", "nutzungsart": "GARAGE"}
    )
    rows["eigentuemervertraege"] += [
        {"ev_nr": "200002", "we_nr": "002", "ve_nr": "0001", "beginn": "2018-07-01"},
        {"ev_nr": "200003", "we_nr": "001", "ve_nr": "0001", "beginn": "2018-07-01"},
    ]
    rows["eigentuemer"] += [
        {"ev_nr": "200002", "person_nr": "00060", "nachname": "Leer", "email": "leer@example.org"},
        {"ev_nr": "200003", "person_nr": "00061", "nachname": "Vermieter"},
    ]
    return rows


def test_last_name_rule_sends_tenants_by_name_and_only_the_real_estate_their_contracts_link(tmp_path):
    frames = erp(tmp_path, _with_vacant_economic_unit())
    out = mapped(frames, rule=SyncRule.LAST_NAME)
    # Dr. Weiß has no email but a last name: synced, reached by post, on her rental contract
    assert [(c["type"], c["number"]) for c in _contracts_of(out, "0001-00043")] == [("RENTER", "100001")]
    weiss = out["contacts"].set_index("id").loc["0001-00043"]
    assert pd.isna(weiss["email"]) and weiss["preferred_way_of_contact"] == "POSTAL"
    # a company tenant is named by its firma: synced (its contract ended, and is sent with its end date)
    assert [c["number"] for c in _contracts_of(out, "0001-00044")] == ["100002"]
    # the owners of only vacant units (00050, 00060) are not synced; the owner of a rented unit is
    assert list(out["contacts"]["id"]) == ["0001-00042", "0001-00043", "0001-00044", "0001-00061"]
    assert [(c["type"], c["unitId"]) for c in _contracts_of(out, "0001-00061")] == [
        ("OWNER", "0001-001-01-0001")
    ]
    # vacant units are not sent, nor is the economic unit with nothing linked; the linked property keeps
    # all its buildings' addresses
    assert list(out["units"]["id"]) == ["0001-001-01-0001", "0001-001-01-0002"]
    assert list(out["properties"]["id"]) == ["0001-001"]
    assert len(out["properties"].iloc[0]["addresses"]) == 2
    # what is sent is consistent: every check passes, and names the rule
    assert quality.unit_references(out["units"], out["properties"]).passed
    assert quality.contract_references(out["contracts"], out["units"]).passed
    outcome = quality.email_rule(out["contracts"], out["contacts"], "RENTER", rule=SyncRule.LAST_NAME)
    assert outcome.passed and outcome.reason.startswith("sync rule last-name: all 2 rental contracts")
    assert "no email required (1 of 3 tenants have none: reached by post)" in outcome.reason
    assert "valid email" not in outcome.reason
    people = (
        frames["mieter"],
        frames["mietvertraege"],
        frames["eigentuemer"],
        frames["eigentuemervertraege"],
    )
    conflicts = conflicting_persons(*people, mandant=M, separator="-", rule=SyncRule.LAST_NAME)
    assert conflicts.empty


def test_email_rule_is_unchanged_by_the_last_name_rule_beside_it(tmp_path):
    out = mapped(erp(tmp_path, _with_vacant_economic_unit()), rule=SyncRule.EMAIL)
    # every unit and property of the export and every owner; tenants only with a valid email
    assert list(out["units"]["id"]) == [
        "0001-001-01-0001", "0001-001-01-0002", "0001-001-02-0003", "0001-002-01-0001"
    ]  # fmt: skip
    assert list(out["properties"]["id"]) == ["0001-001", "0001-002"]
    assert list(out["contacts"]["id"]) == [
        "0001-00042",
        "0001-00044",
        "0001-00050",
        "0001-00060",
        "0001-00061",
    ]


def test_under_last_name_the_checks_name_the_rule_and_never_require_an_email(tmp_path):
    frames = erp(tmp_path)
    out = mapped(frames, rule=SyncRule.LAST_NAME)
    dropped = quality.email_rule_dropped(
        frames["mieter"], frames["mietvertraege"], out["contracts"], "RENTER", warn_share=0.25,
        rule=SyncRule.LAST_NAME,
    )  # fmt: skip
    assert dropped.passed and dropped.counts["tenants_dropped"] == 0
    assert dropped.reason.startswith("sync rule last-name: 0 of 3 tenants (0%) have neither last name nor")
    assert "no email is required (1 tenant row without a valid email: reached by post)" in dropped.reason
    # the safety net checks the rule in force: a tenant contact without a name, not one without email
    contacts = out["contacts"].copy()
    contacts.loc[contacts["id"] == "0001-00043", "last_name"] = None
    failed = quality.email_rule(out["contracts"], contacts, "RENTER", rule=SyncRule.LAST_NAME)
    assert not failed.passed and failed.ids == ("0001-00043",)
    assert failed.reason.startswith("sync rule last-name: 1 contacts carry a rental contract without a last")
    # under the email rule the same contacts fail for the missing email
    email = quality.email_rule(out["contracts"], out["contacts"], "RENTER", rule=SyncRule.EMAIL)
    assert not email.passed and email.ids == ("0001-00043",)


def test_a_mapping_session_is_bounded_and_spills_into_a_private_directory_removed_with_it():
    bounded = duckdb.connect(config=duck_memory.config())
    expected = bounded.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    bounded.close()
    with DuckSession("0001", "-") as duck:
        limit, spill = duck.connection.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
        assert limit == expected  # 512 MB, not DuckDB's 80 % of the RAM
        assert Path(spill).is_dir() and Path(spill).name.startswith("casavi-duck-")  # not `.tmp` in the cwd
    assert not Path(spill).exists()
