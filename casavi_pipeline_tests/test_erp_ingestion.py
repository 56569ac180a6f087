"""Reading the ERP export: the contract's dialect, and a clear error for every kind of broken input."""

from __future__ import annotations

import numpy as np
import pytest

from casavi_pipeline.erp.contract import ENTITIES_BY_NAME
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline_tests.erp_fixtures import Append, default_rows, write_export

M = "0001"


def read(root, name: str, encoding: str = "utf-8"):
    return read_entity(root, M, ENTITIES_BY_NAME[name], encoding).frame


def error_of(root, name: str, encoding: str = "utf-8") -> str:
    with pytest.raises(ErpExportError) as info:
        read_entity(root, M, ENTITIES_BY_NAME[name], encoding)
    return str(info.value)


def test_frame_contract_leading_zeros_umlauts_and_types(tmp_path):
    root = write_export(tmp_path)
    units = read(root, "verwaltungseinheiten")
    assert list(units.columns) == list(ENTITIES_BY_NAME["verwaltungseinheiten"].column_names)
    assert units["ve_nr"].tolist() == ["0001", "0002", "0003"]
    assert units["flaeche_m2"].dtype == np.float64 and units["flaeche_m2"].isna().tolist() == [
        False,
        False,
        True,
    ]
    assert units["lage"].tolist() == ["EG links", "EG rechts", None]
    assert read(root, "gebaeude")["strasse"].tolist() == ["Müllerstraße", "Weißdornweg"]
    assert read(root, "mietvertraege")["ende"].tolist() == [None, "2024-12-31"]


@pytest.mark.parametrize(("encoding", "bom", "newline"), [("utf-8", True, "\r\n"), ("cp1252", False, "\r\n")])
def test_bom_crlf_and_cp1252(tmp_path, encoding, bom, newline):
    root = write_export(tmp_path, encoding=encoding, bom=bom, newline=newline)
    frame = read(root, "wirtschaftseinheiten", encoding)
    assert frame.loc[0, ["we_nr", "bezeichnung"]].tolist() == ["001", "Wohnanlage Müllerstraße"]


def test_quoting_whitespace_extra_and_missing_optional_columns(tmp_path):
    path = tmp_path / M / "wirtschaftseinheiten.csv"
    path.parent.mkdir()
    path.write_text('we_nr;bezeichnung;intern\n  007 ;"Haus ""Eiche""; Hof";x\n', encoding="utf-8")
    frame = read(tmp_path, "wirtschaftseinheiten")
    assert frame.to_dict("records") == [
        {"we_nr": "007", "bezeichnung": 'Haus "Eiche"; Hof', "strasse": None, "hausnummer": None,
         "plz": None, "ort": None, "land": None}
    ]  # fmt: skip


def test_header_only_file_is_an_empty_entity(tmp_path):
    root = write_export(tmp_path, {M: {"mieter": []}})
    frame = read(root, "mieter")
    assert len(frame) == 0 and list(frame.columns) == list(ENTITIES_BY_NAME["mieter"].column_names)


def test_missing_mandant_folder_names_the_path_and_the_folders_there(tmp_path):
    root = write_export(tmp_path, {"0420": {}})
    message = error_of(root, "gebaeude")
    assert str(tmp_path / M) in message and "0420" in message


def test_missing_file_is_an_error_not_zero_rows(tmp_path):
    root = write_export(tmp_path, {M: {"gebaeude": None}})
    message = error_of(root, "gebaeude")
    assert "gebaeude.csv" in message and "missing" in message.lower()


def test_missing_required_column_names_file_and_column(tmp_path):
    root = write_export(tmp_path, drop_columns={"verwaltungseinheiten": ["nutzungsart"]})
    message = error_of(root, "verwaltungseinheiten")
    assert "verwaltungseinheiten.csv" in message and "nutzungsart" in message


def test_undecodable_bytes_point_at_the_row_and_suggest_cp1252(tmp_path):
    root = write_export(tmp_path, encoding="cp1252")
    message = error_of(root, "gebaeude", "utf-8")
    assert "gebaeude.csv" in message and "ERP_EXPORT_ENCODING=cp1252" in message
    assert "row 1" in message or "line 2" in message


def test_duplicate_key_names_both_rows_and_the_key(tmp_path):
    rows = default_rows()
    rows["verwaltungseinheiten"].append(dict(rows["verwaltungseinheiten"][0]))
    message = error_of(write_export(tmp_path, {M: rows}), "verwaltungseinheiten")
    assert "we_nr=001, ve_nr=0001" in message and "row 1" in message and "row 4" in message


def test_unparsable_date_names_row_key_and_column(tmp_path):
    rows = default_rows()
    rows["mietvertraege"][1]["beginn"] = "2019-02-30"
    message = error_of(write_export(tmp_path, {M: rows}), "mietvertraege")
    assert "mietvertraege.csv" in message and "row 2" in message
    assert "vertrag_nr=100002" in message and "beginn" in message


def test_invalid_nutzungsart_lists_the_allowed_values(tmp_path):
    rows = default_rows()
    rows["verwaltungseinheiten"][2]["nutzungsart"] = "BUERO"
    message = error_of(write_export(tmp_path, {M: rows}), "verwaltungseinheiten")
    assert "nutzungsart" in message and "ve_nr=0003" in message and "WOHNUNG" in message


def test_malformed_row_names_the_line(tmp_path):
    path = tmp_path / M / "wirtschaftseinheiten.csv"
    path.parent.mkdir()
    path.write_text('we_nr;bezeichnung\n001;Haus A\n002;"Haus B\n003;Haus C\n', encoding="utf-8")
    message = error_of(tmp_path, "wirtschaftseinheiten")
    assert "wirtschaftseinheiten.csv" in message and "line 3" in message


def test_person_file_errors_never_show_names_or_emails(tmp_path):
    rows = {M: {"mieter": Append([{"vertrag_nr": "100001", "person_nr": "00099", "vorname": "Renée",
                                   "nachname": "Größenwahn", "email": "renee@example.org", "anrede": "Baron"}])}}  # fmt: skip
    message = error_of(write_export(tmp_path, rows), "mieter")
    assert "person_nr=00099" in message and "anrede" in message
    assert "Größenwahn" not in message and "renee@example.org" not in message and "Baron" not in message

