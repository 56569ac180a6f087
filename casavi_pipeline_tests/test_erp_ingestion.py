"""Reading the ERP export: the contract's dialect, and a clear error for every kind of broken input."""

from __future__ import annotations

import numpy as np
import pytest

from casavi_pipeline.erp.contract import ENTITIES_BY_NAME
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.frames import TEXT
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
    # text columns are Arrow-backed strings: a missing value is NA (None in to_dict)
    assert units["lage"].dtype == TEXT
    assert units["lage"].to_dict() == {0: "EG links", 1: "EG rechts", 2: None}
    assert read(root, "gebaeude")["strasse"].tolist() == ["Müllerstraße", "Weißdornweg"]
    assert read(root, "mietvertraege")["ende"].to_dict() == {0: None, 1: "2024-12-31"}


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


def _write_raw(root, name: str, text: str):
    """One export file written byte for byte as given (quoting, control characters and all)."""
    path = root / M / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


_CONTRACTS_HEADER = "vertrag_nr;we_nr;ve_nr;beginn;ende\n"


@pytest.mark.parametrize(
    ("number", "escaped"),
    [("1000\t01", r"'1000\t01'"), ("1000\n01", r"'1000\n01'"), ("1000\r\n01", r"'1000\r\n01'"),
     ("1000\x0001", r"'1000\x0001'"), ("1000\x7f01", r"'1000\x7f01'")],
)  # fmt: skip
def test_control_character_in_a_quoted_key_names_file_row_column_and_the_escaped_key(
    tmp_path, number, escaped
):
    _write_raw(
        tmp_path,
        "mietvertraege",
        f'{_CONTRACTS_HEADER}100001;001;0001;2020-01-01;\n"{number}";001;0002;2020-01-01;\n',
    )
    message = error_of(tmp_path, "mietvertraege")
    assert "mietvertraege.csv" in message and "row 2 (line 3)" in message
    assert f"vertrag_nr={escaped}" in message and "column vertrag_nr" in message
    assert "control character" in message and "ERP" in message
    # One line per problem: the key's control character is escaped, never written out.
    assert all(line.startswith(("  - ", str(tmp_path))) for line in message.splitlines())
    assert number not in message


@pytest.mark.parametrize("control", ["\u202e", "\u202a", "\u2066", "\u2069", "\u200e", "\u200f", "\u061c"])
def test_bidirectional_control_in_a_number_is_refused_and_shown_escaped(tmp_path, control):
    # U+202E (right-to-left override) makes "1000<RLO>10" display as "100001" reversed in casavi and logs
    _write_raw(
        tmp_path,
        "mietvertraege",
        f"{_CONTRACTS_HEADER}100001;001;0001;2020-01-01;\n1000{control}10;001;0002;2020-01-01;\n",
    )
    message = error_of(tmp_path, "mietvertraege")
    escaped = repr(f"1000{control}10")  # e.g. '1000\u202e10'
    assert "\\u" in escaped or "\\x" in escaped
    assert "mietvertraege.csv" in message and "row 2 (line 3)" in message and "column vertrag_nr" in message
    assert f"vertrag_nr={escaped}" in message and "control character" in message
    assert control not in message


def test_bidirectional_control_in_a_person_field_is_data(tmp_path):
    # Arabic or Hebrew names legitimately carry direction marks; only ERP numbers are refused
    header = "vertrag_nr;person_nr;nachname\n"
    _write_raw(tmp_path, "mieter", f"{header}100001;00042;\u200fشريف\n")
    assert read(tmp_path, "mieter")["nachname"].tolist() == ["\u200fشريف"]


def test_control_character_in_a_reference_column_names_that_column_and_the_record_key(tmp_path):
    _write_raw(tmp_path, "mietvertraege", f'{_CONTRACTS_HEADER}100001;"0\t01";0001;2020-01-01;\n')
    message = error_of(tmp_path, "mietvertraege")
    assert "row 1 (line 2), vertrag_nr='100001': column we_nr is '0\\t01'" in message


def test_surrounding_whitespace_of_a_key_is_stripped_not_refused(tmp_path):
    _write_raw(tmp_path, "mietvertraege", f'{_CONTRACTS_HEADER}"\t100001\n";001;0001;2020-01-01;\n')
    assert read(tmp_path, "mietvertraege")["vertrag_nr"].tolist() == ["100001"]


def test_nul_in_a_person_field_names_row_and_column_never_the_value(tmp_path):
    header = "vertrag_nr;person_nr;vorname;nachname;email\n"
    _write_raw(tmp_path, "mieter", f'{header}100001;00042;Jürgen;"Mül\x00ler";"juergen@example.org"\n')
    message = error_of(tmp_path, "mieter")
    assert "mieter.csv" in message and "row 1 (line 2)" in message and "column nachname" in message
    assert "NUL" in message
    assert (
        "Mül" not in message and "ler" not in message and "juergen" not in message and "\x00" not in message
    )


def test_tab_and_line_break_inside_a_quoted_person_field_are_data(tmp_path):
    header = "vertrag_nr;person_nr;nachname;strasse\n"
    _write_raw(tmp_path, "mieter", f'{header}100001;00042;"Müller\tSohn";"Hof 1\nHinterhaus"\n')
    frame = read(tmp_path, "mieter")
    assert frame.loc[0, ["nachname", "strasse"]].tolist() == ["Müller\tSohn", "Hof 1\nHinterhaus"]


def test_a_file_linked_from_outside_the_export_folder_is_refused(tmp_path):
    root = write_export(tmp_path / "export")
    outside = tmp_path / "secret.csv"
    outside.write_text("we_nr;bezeichnung\nsecret-content;Geheim\n", encoding="utf-8")
    target = root / M / "wirtschaftseinheiten.csv"
    target.unlink()
    target.symlink_to(outside)
    message = error_of(root, "wirtschaftseinheiten")
    assert str(target) in message and "outside the export folder" in message
    assert "secret-content" not in message and "Geheim" not in message


def test_a_link_inside_the_export_folder_is_followed(tmp_path):
    root = write_export(tmp_path)
    target = root / M / "wirtschaftseinheiten.csv"
    kept = root / "wirtschaftseinheiten-original.csv"
    target.rename(kept)
    target.symlink_to(kept)
    assert read(root, "wirtschaftseinheiten")["we_nr"].tolist() == ["001"]


def test_missing_column_message_lists_only_part_of_a_huge_header(tmp_path):
    header = ["we_nr", *(f"extra_{i}_{'x' * 20}" for i in range(50_000)), *("y" * 200 for _ in range(50_000))]
    _write_raw(tmp_path, "wirtschaftseinheiten", ";".join(header) + "\n")
    message = error_of(tmp_path, "wirtschaftseinheiten")
    assert "bezeichnung" in message and "wirtschaftseinheiten.csv" in message
    assert "and 99981 more column(s)" in message and "extra_18_" in message and "extra_19_" not in message
    assert len(message) < 3_000


def test_a_person_file_without_header_line_never_echoes_the_person(tmp_path):
    person = ["0000001", "000001", "", "", "Darko", "Schaaf", "", "darko.schaaf@gmail.com", "0351 56145106",
              "", "Geislerweg", "29", "36729", "Sebnitz", "DE"]  # fmt: skip
    _write_raw(
        tmp_path, "mieter", ";".join(person) + "\n" + ";".join(person).replace("000001", "000002") + "\n"
    )
    message = error_of(tmp_path, "mieter")
    assert "mieter.csv" in message
    assert (
        "required column vertrag_nr is missing" in message
        and "required column person_nr is missing" in message
    )
    assert "<cell 5: 5 chars>" in message and "<cell 8: 22 chars>" in message
    for value in (
        "0000001",
        "000001",
        "Darko",
        "Schaaf",
        "darko.schaaf",
        "0351",
        "Geislerweg",
        "36729",
        "Sebnitz",
    ):
        assert value not in message


def test_a_huge_field_is_reported_as_too_long_not_as_an_open_quote(tmp_path):
    long_name = "A" * 10_000_000
    _write_raw(
        tmp_path, "wirtschaftseinheiten", f'we_nr;bezeichnung\n001;Haus A\n002;"{long_name}"\n003;Haus C\n'
    )
    message = error_of(tmp_path, "wirtschaftseinheiten")
    assert "wirtschaftseinheiten.csv" in message and "row 2 (line 3)" in message
    assert "longer than 131072 characters (the csv field limit)" in message
    assert "never closed" not in message and len(message) < 1_000


def test_an_unclosed_quote_in_a_big_file_is_still_reported_as_an_unclosed_quote(tmp_path):
    rows = "".join(f"{i:06d};Haus {i}\n" for i in range(20_000))  # well over the csv field limit after it
    _write_raw(tmp_path, "wirtschaftseinheiten", f'we_nr;bezeichnung\n001;"Haus A\n{rows}')
    message = error_of(tmp_path, "wirtschaftseinheiten")
    assert "row 1 (line 2)" in message and "never closed" in message and "longer than" not in message


def _contracts_with_bad_dates(root, count: int) -> None:
    """`count` contracts whose start date is no real date: one problem each."""
    rows = "".join(f"2{i:05d};001;0001;2024-02-30;\n" for i in range(count))
    _write_raw(root, "mietvertraege", f"{_CONTRACTS_HEADER}{rows}")


def test_a_few_problems_are_all_named_in_the_first_line(tmp_path):
    """The first line is what the run's reason, its tag, the CLI and the alerts show."""
    _contracts_with_bad_dates(tmp_path, 5)
    message = error_of(tmp_path, "mietvertraege")
    first, *rest = message.splitlines()
    assert rest == []
    assert "breaks the ERP export contract in 5 place(s)" in first
    assert [f"vertrag_nr=2{i:05d}" in first for i in range(5)] == [True] * 5


def test_many_problems_name_five_in_the_first_line_and_say_where_the_rest_are(tmp_path):
    _contracts_with_bad_dates(tmp_path, 23)
    first, *rest = error_of(tmp_path, "mietvertraege").splitlines()
    assert "breaks the ERP export contract in 23 place(s)" in first
    assert [f"vertrag_nr=2{i:05d}" in first for i in range(6)] == [True] * 5 + [False]
    assert first.endswith(
        "; and 18 more (the next 15 in the full error: the erp_export step of the run in the Dagster UI)"
    )
    assert [line.split(":")[0] for line in rest[:1]] == ["  - row 6 (line 7), vertrag_nr=200005"]
    assert len(rest) == 16 and rest[-1] == "  ... and 3 more problem(s) of the same file"
