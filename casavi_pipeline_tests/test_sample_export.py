"""The sample generator: contract-conform, consistent, realistic in the ways the sync rules care about."""

from __future__ import annotations

import filecmp

import pandas as pd
import pytest

from casavi_pipeline.erp.contract import ENTITIES, ENTITIES_BY_NAME
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping import quality
from casavi_pipeline.mapping.email import first_valid_email
from casavi_pipeline.sample.__main__ import SAMPLE_ARGS, main
from casavi_pipeline.sample.generator import generate
from casavi_pipeline.settings import SAMPLE_EXPORT_DIR

MANDANTEN = ["0001", "0420"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    generate(out, units=600, mandanten=MANDANTEN, seed=7)
    return out


def frames(root, mandant: str, encoding: str = "utf-8") -> dict[str, pd.DataFrame]:
    return {e.name: read_entity(root, mandant, e, encoding).frame for e in ENTITIES}


def test_headers_are_the_contracts_and_every_file_reads_cleanly(export):
    for mandant in MANDANTEN:
        for entity in ENTITIES:
            header = (export / mandant / entity.file_name).read_text(encoding="utf-8").splitlines()[0]
            assert header.split(";") == list(entity.column_names)
        erp = frames(export, mandant)  # keys unique, dates valid, enums allowed: the reader validates
        assert len(erp["verwaltungseinheiten"]) == 300
        assert quality.erp_foreign_keys(erp).passed


def test_deterministic_per_seed(tmp_path, export):
    generate(tmp_path / "again", units=600, mandanten=MANDANTEN, seed=7)
    generate(tmp_path / "other", units=600, mandanten=MANDANTEN, seed=8)
    names = [e.file_name for e in ENTITIES]
    for mandant in MANDANTEN:
        match, mismatch, _ = filecmp.cmpfiles(
            export / mandant, tmp_path / "again" / mandant, names, shallow=False
        )
        assert match == names and mismatch == []
        assert not filecmp.cmp(
            export / mandant / "mieter.csv", tmp_path / "other" / mandant / "mieter.csv", shallow=False
        )


def test_realistic_in_the_ways_the_rules_care_about(export):
    erp = frames(export, "0001")
    mieter, eigentuemer = erp["mieter"], erp["eigentuemer"]
    without_valid = mieter["email"].map(first_valid_email).isna().mean()
    assert 0.05 <= without_valid <= 0.25
    assert mieter["email"].fillna("").str.contains(";|,").any()  # several addresses in one field
    assert set(mieter["person_nr"]) & set(eigentuemer["person_nr"])  # tenant and owner
    assert (eigentuemer["anrede"] == "Firma").any() and eigentuemer.loc[
        eigentuemer["anrede"] == "Firma", "firma"
    ].notna().all()
    assert mieter.groupby("vertrag_nr").size().max() >= 2  # multi-tenant contracts
    assert erp["mietvertraege"]["ende"].notna().any()  # ended contracts
    assert (erp["mietvertraege"]["beginn"] > "2026-11-01").any()  # future contracts
    rented = set(zip(erp["mietvertraege"]["we_nr"], erp["mietvertraege"]["ve_nr"], strict=True))
    units = set(zip(erp["verwaltungseinheiten"]["we_nr"], erp["verwaltungseinheiten"]["ve_nr"], strict=True))
    assert units - rented  # vacant (or owner-occupied) units
    assert set(erp["verwaltungseinheiten"]["nutzungsart"]) >= {"WOHNUNG", "GEWERBE", "STELLPLATZ"}
    assert erp["gebaeude"].groupby("we_nr").size().max() >= 2  # several buildings per economic unit
    assert erp["wirtschaftseinheiten"]["we_nr"].str.startswith("0").all()  # leading zeros
    text = "".join(mieter["nachname"].dropna()) + "".join(erp["gebaeude"]["strasse"])
    assert any(ch in text for ch in "äöüßÄÖÜ")


def test_cp1252_output(tmp_path):
    generate(tmp_path, units=50, mandanten=["0001"], seed=1, encoding="cp1252")
    (tmp_path / "0001" / "mieter.csv").read_bytes().decode("cp1252")
    assert len(read_entity(tmp_path, "0001", ENTITIES_BY_NAME["mieter"], "cp1252").frame) > 0


def test_committed_sample_is_what_the_documented_command_generates(tmp_path, monkeypatch):
    out = tmp_path / "sample"
    args = [*SAMPLE_ARGS]
    args[args.index("--out") + 1] = str(out)
    assert main(args) == 0
    for mandant in ("0001", "0002", "0420"):
        names = [e.file_name for e in ENTITIES]
        matched, mismatch, errors = filecmp.cmpfiles(
            SAMPLE_EXPORT_DIR / mandant, out / mandant, names, shallow=False
        )
        assert (matched, mismatch, errors) == (names, [], []), (
            f"regenerate the sample: {' '.join(SAMPLE_ARGS)}"
        )
