"""The sample generator: contract-conform, consistent, deterministic, realistic where the sync rules care."""

from __future__ import annotations

import argparse
import filecmp
import re

import pandas as pd
import pytest

from casavi_harness.local import SAMPLE_EXPORT_DIR, SAMPLE_MANDANTEN
from casavi_harness.sample.__main__ import SAMPLE_ARGS, main, parse_mandanten
from casavi_harness.sample.generator import AS_OF, generate
from casavi_pipeline.casavi.api import ContractType, ObjectKind
from casavi_pipeline.erp.contract import ENTITIES, ENTITIES_BY_NAME, FOREIGN_KEYS
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping import map_mandant, quality
from casavi_pipeline.mapping.email import first_valid_email
from casavi_pipeline.mapping.ids import ALLOWED_SEPARATORS
from casavi_pipeline.mapping.schemas import contract_problems, payload_problems
from casavi_pipeline.mapping.scope import SyncRule

MANDANTEN = ["0001", "0420"]
UNITS = 600  # 300 per Mandant
FILES = [e.file_name for e in ENTITIES]
AS_OF_ISO = str(AS_OF)
KINDS = {kind.collection: kind for kind in ObjectKind}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    assert generate(out, units=UNITS, mandanten=MANDANTEN, seed=7) == {"0001": 300, "0420": 300}
    return out


@pytest.fixture(scope="module")
def erp(export) -> dict[str, dict[str, pd.DataFrame]]:
    """Per Mandant, the seven frames as the pipeline's reader returns them (it validates keys, dates, enums)."""
    return {m: {e.name: read_entity(export, m, e).frame for e in ENTITIES} for m in MANDANTEN}


def _same_files(left, right) -> bool:
    match, mismatch, errors = filecmp.cmpfiles(left, right, FILES, shallow=False)
    return match == FILES and mismatch == [] and errors == []


# --- format ------------------------------------------------------------------------------------------
def test_files_have_exactly_the_contract_headers_and_dialect(export):
    assert sorted(p.name for p in export.iterdir()) == MANDANTEN
    for mandant in MANDANTEN:
        assert sorted(p.name for p in (export / mandant).iterdir()) == sorted(FILES)
        for entity in ENTITIES:
            raw = (export / mandant / entity.file_name).read_bytes()
            assert raw.split(b"\n", 1)[0].decode() == ";".join(entity.column_names)
            assert b"\r" not in raw and not raw.startswith(b"\xef\xbb\xbf")  # \n endings, no BOM


def test_every_file_reads_cleanly_with_the_requested_unit_count(erp):
    for mandant in MANDANTEN:
        assert len(erp[mandant]["verwaltungseinheiten"]) == 300
        assert all(len(erp[mandant][name]) > 0 for name in ENTITIES_BY_NAME)


def test_quoting_survives_values_holding_the_delimiter(export, erp):
    """Email fields with `a; b` must be quoted, and read back as one value."""
    two = erp["0001"]["mieter"]["email"].dropna()
    with_semicolon = two[two.str.contains(";")]
    assert len(with_semicolon) > 0
    text = (export / "0001" / "mieter.csv").read_text(encoding="utf-8")
    assert all(f'"{value}"' in text for value in with_semicolon)


# --- consistency -------------------------------------------------------------------------------------
def test_keys_are_unique_and_every_foreign_key_resolves(erp):
    for frames in erp.values():
        for entity in ENTITIES:
            assert not frames[entity.name].duplicated(list(entity.key)).any(), entity.name
        for child, child_columns, parent, parent_columns in FOREIGN_KEYS:
            parents = frames[parent][list(parent_columns)].drop_duplicates()
            parents.columns = list(child_columns)
            merged = frames[child].merge(parents, on=list(child_columns), how="left", indicator=True)
            assert len(merged) == len(frames[child])
            assert (merged["_merge"] == "both").all(), f"{child}→{parent}"
        assert quality.erp_foreign_keys(frames).passed


def test_numbers_are_zero_padded_digit_strings_without_separators(erp):
    widths = {"we_nr": 4, "geb_nr": 2, "ve_nr": 4, "vertrag_nr": 7, "ev_nr": 7, "person_nr": 6}
    for frames in erp.values():
        for entity in ENTITIES:
            for column in (c for c in entity.column_names if c.endswith("_nr")):
                values = frames[entity.name][column]
                assert values.str.fullmatch(rf"\d{{{widths[column]}}}").all(), (entity.name, column)
                assert values.str.startswith("0").any()  # leading zeros survived the round trip
                assert not values.str.contains("[-_./|]").any()
    assert erp["0001"]["wirtschaftseinheiten"]["we_nr"].iloc[0] == "0001"
    assert erp["0001"]["mieter"]["person_nr"].iloc[0] == "000001"


def test_contract_dates_are_ordered(erp):
    for frames in erp.values():
        for name in ("mietvertraege", "eigentuemervertraege"):
            ended = frames[name].dropna(subset=["ende"])
            assert (ended["ende"] >= ended["beginn"]).all()


@pytest.mark.parametrize("separator", ALLOWED_SEPARATORS)
def test_every_blocking_check_passes_with_every_separator(erp, separator):
    for mandant, frames in erp.items():
        casavi = map_mandant(frames, mandant=mandant, separator=separator, rule=SyncRule.EMAIL)
        for noun, kind in KINDS.items():
            assert quality.unique_ids(noun, casavi[noun], separator).passed
            assert payload_problems(kind, casavi[noun]) == []
        assert contract_problems(casavi["contracts"]) == []
        assert quality.unique_streets(casavi["addresses"]).passed
        assert quality.unit_references(casavi["units"], casavi["properties"]).passed
        assert quality.contract_references(casavi["contracts"], casavi["units"]).passed
        assert quality.email_rule(casavi["contracts"], casavi["contacts"], ContractType.RENTER.value).passed
        assert len(casavi["units"]) == 300


def test_no_two_buildings_of_one_economic_unit_share_street_and_number(tmp_path, erp):
    """casavi tells a property's buildings apart by their street alone, so the pipeline blocks a WE with
    two buildings at one address. With seed 42, Mandant 0001 of 5 000 units draws a corner building
    at its neighbour's address (WE 0125: both `Anke-Trommler-Straße 31`); the later one takes a letter."""
    generate(tmp_path, units=5000, mandanten=["0001"], seed=42)
    drawn = read_entity(tmp_path, "0001", ENTITIES_BY_NAME["gebaeude"]).frame
    for buildings in [drawn, *(frames["gebaeude"] for frames in erp.values())]:
        assert not buildings.duplicated(["we_nr", "strasse", "hausnummer"]).any()
    we = drawn[drawn["we_nr"] == "0125"]
    assert list(zip(we["strasse"], we["hausnummer"], strict=True))[:2] == [
        ("Anke-Trommler-Straße", "31"),
        ("Anke-Trommler-Straße", "31a"),
    ]


# --- determinism -------------------------------------------------------------------------------------
def test_same_arguments_and_seed_give_identical_bytes_another_seed_differs(tmp_path, export):
    generate(tmp_path / "again", units=UNITS, mandanten=MANDANTEN, seed=7)
    generate(tmp_path / "other", units=UNITS, mandanten=MANDANTEN, seed=8)
    for mandant in MANDANTEN:
        assert _same_files(export / mandant, tmp_path / "again" / mandant)
        _, mismatch, _ = filecmp.cmpfiles(
            export / mandant, tmp_path / "other" / mandant, FILES, shallow=False
        )
        assert "mieter.csv" in mismatch and "verwaltungseinheiten.csv" in mismatch


def test_a_mandants_data_does_not_depend_on_the_other_mandanten(tmp_path, export):
    generate(tmp_path, units=300, mandanten=["0420"], seed=7)
    assert _same_files(export / "0420", tmp_path / "0420")


# --- realism -----------------------------------------------------------------------------------------
def test_share_of_tenants_without_a_valid_email_is_about_ten_percent(erp):
    emails = pd.concat([frames["mieter"]["email"] for frames in erp.values()])
    without = emails.map(first_valid_email).isna()
    assert 0.05 <= without.mean() <= 0.20
    assert emails.isna().any()  # missing
    assert (emails.notna() & without).any()  # present but invalid
    for bad in (r"^[a-z-]+@$", r"^\S+ \S+@\S+$", r"^[^@]+\.de$"):  # max@, a b@c.de, mueller.de
        assert emails.dropna().str.match(bad).any(), bad
    listed = emails.dropna()
    assert listed.str.contains(";").any() and listed.str.contains(",").any()  # two addresses in one field


def test_persons_who_are_tenant_and_owner_and_companies_as_owners(erp):
    for frames in erp.values():
        mieter, eigentuemer = frames["mieter"], frames["eigentuemer"]
        assert set(mieter["person_nr"]) & set(eigentuemer["person_nr"])
        companies = eigentuemer[eigentuemer["anrede"] == "Firma"]
        assert len(companies) > 0
        assert companies["firma"].notna().all() and companies["nachname"].isna().all()
        assert companies["vorname"].isna().all()
        persons = pd.concat([mieter, eigentuemer])
        assert (persons["nachname"].notna() | persons["firma"].notna()).all()  # contract: one of both


def test_persons_on_several_contracts_differ_only_slightly(erp):
    mieter = pd.concat([frames["mieter"] for frames in erp.values()], keys=MANDANTEN, names=["mandant", None])
    mieter = mieter.reset_index(level="mandant")
    per_person = mieter.groupby(["mandant", "person_nr"])
    assert (per_person.size() > 1).sum() >= 5
    assert (per_person["telefon"].nunique() > 1).any()  # a changed phone number: the mapping's conflict case
    assert (
        (per_person[["vorname", "nachname", "firma"]].nunique(dropna=False) == 1).all().all()
    )  # same person


def test_contracts_cover_couples_ended_future_and_vacant_units(erp):
    frames = erp["0001"]
    leases, units = frames["mietvertraege"], frames["verwaltungseinheiten"]
    assert frames["mieter"].groupby("vertrag_nr").size().max() >= 2
    assert (leases["ende"].dropna() < AS_OF_ISO).any()
    assert (leases["beginn"] > AS_OF_ISO).any()
    running = leases[
        (leases["beginn"] <= AS_OF_ISO) & (leases["ende"].isna() | (leases["ende"] >= AS_OF_ISO))
    ]
    let = set(zip(running["we_nr"], running["ve_nr"], strict=True))
    all_units = set(zip(units["we_nr"], units["ve_nr"], strict=True))
    assert all_units - let  # vacant or owner-occupied
    assert not running.duplicated(["we_nr", "ve_nr"]).any()  # never two running leases on one unit
    owned = frames["eigentuemervertraege"]
    assert not owned[owned["ende"].isna()].duplicated(["we_nr", "ve_nr"]).any()  # one current owner contract


def test_real_estate_looks_german(erp):
    frames = erp["0001"]
    we, buildings, units = frames["wirtschaftseinheiten"], frames["gebaeude"], frames["verwaltungseinheiten"]
    assert (
        we["bezeichnung"].str.startswith("WEG ").any()
        and we["bezeichnung"].str.startswith("Wohnanlage ").any()
    )
    assert buildings.groupby("we_nr").size().max() >= 2
    assert buildings["hausnummer"].str.fullmatch(r"\d+[ab]").any()
    assert buildings["plz"].str.fullmatch(r"\d{5}").all()
    kinds = units["nutzungsart"].value_counts(normalize=True)
    assert kinds["WOHNUNG"] > 0.6 and {"GEWERBE", "STELLPLATZ", "GARAGE"} <= set(kinds.index)
    assert units["lage"].dropna().str.fullmatch(r"\d\. OG (links|rechts)").any()
    assert (units["zimmer"] % 1 == 0.5).any()
    assert (units["flaeche_m2"].dropna() > 0).all()
    text = "".join(pd.concat([frames["mieter"]["nachname"].dropna(), buildings["strasse"], buildings["ort"]]))
    assert re.search("[äöüÄÖÜß]", text)


# --- encodings ---------------------------------------------------------------------------------------
def test_utf8_by_default_and_cp1252_when_asked_with_the_same_content(tmp_path):
    generate(tmp_path / "utf8", units=120, mandanten=["0001"], seed=1)
    generate(tmp_path / "cp", units=120, mandanten=["0001"], seed=1, encoding="cp1252")
    for name in FILES:
        utf8 = (tmp_path / "utf8" / "0001" / name).read_bytes()
        cp = (tmp_path / "cp" / "0001" / name).read_bytes()
        assert cp.decode("cp1252") == utf8.decode("utf-8")
    umlauts = (tmp_path / "cp" / "0001" / "mieter.csv").read_bytes()
    assert re.search(rb"[\xe4\xf6\xfc\xdf]", umlauts)  # single-byte umlauts: really cp1252
    with pytest.raises(UnicodeDecodeError):
        umlauts.decode("utf-8")
    frame = read_entity(tmp_path / "cp", "0001", ENTITIES_BY_NAME["mieter"], "cp1252").frame
    assert frame["nachname"].dropna().str.contains("[äöüÄÖÜß]").any()


# --- command line and the committed sample -----------------------------------------------------------
def test_mandanten_argument_is_a_count_or_a_list_of_numbers():
    assert parse_mandanten("3") == ["0001", "0002", "0003"]
    assert parse_mandanten("0420") == ["0420"]
    assert parse_mandanten("0001, 0420") == ["0001", "0420"]
    for bad in ("0001,0001", "00-1", "", "0001,"):
        with pytest.raises(argparse.ArgumentTypeError, match="Mandant numbers"):
            parse_mandanten(bad)


def test_command_line_writes_one_folder_per_mandant(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--units", "30", "--mandanten", "2", "--seed", "3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0001", "0002"]
    assert "wrote 30 units for 2 Mandanten" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--units", "-1"])


def test_committed_sample_is_what_the_documented_command_generates(tmp_path):
    documented = "python -m casavi_harness.sample " + " ".join(SAMPLE_ARGS)
    assert documented in (SAMPLE_EXPORT_DIR / "README.md").read_text(encoding="utf-8")
    assert SAMPLE_ARGS[SAMPLE_ARGS.index("--mandanten") + 1] == SAMPLE_MANDANTEN
    args = [*SAMPLE_ARGS]
    args[args.index("--out") + 1] = str(tmp_path)
    assert main(args) == 0
    for mandant in SAMPLE_MANDANTEN.split(","):
        assert _same_files(SAMPLE_EXPORT_DIR / mandant, tmp_path / mandant), f"regenerate: {documented}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SAMPLE_MANDANTEN.split(","))
