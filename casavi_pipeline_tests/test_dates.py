"""One date rule (`casavi_pipeline.dates`) for the ERP schema, the mapping's payload schema and casavi's 400s."""

from __future__ import annotations

import pandas as pd
import pytest

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.dates import is_iso_date, iso_date_mask
from casavi_pipeline.erp.contract import MIETVERTRAEGE
from casavi_pipeline.erp.errors import ErpExportError
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping.schemas import contract_problems
from casavi_pipeline_tests.erp_fixtures import default_rows, write_export

VALID = ["2024-02-29", "2000-02-29", "0001-01-01", "9999-12-31", "2262-04-12", "1999-12-31"]
INVALID = [
    "2023-02-30",
    "2023-02-29",
    "1900-02-29",  # not a leap year: divisible by 100, not by 400
    "2024-04-31",
    "2024-13-01",
    "2024-00-10",
    "2024-01-00",
    "0000-01-01",
    "2024-1-01",
    " 2024-01-01",
    "2024-01-01\n",
    "20240101",
    "2024-W01-1",
    "٢٠٢٤-01-01",  # Arabic-Indic digits: \d would match them
    "",
    None,
    20240101,
    float("nan"),
]


def test_scalar_and_vectorised_rule_agree():
    assert [is_iso_date(v) for v in VALID] == [True] * len(VALID)
    assert [is_iso_date(v) for v in INVALID] == [False] * len(INVALID)
    values = pd.Series(VALID + INVALID, dtype=object, index=range(100, 100 + len(VALID) + len(INVALID)))
    assert iso_date_mask(values).tolist() == [True] * len(VALID) + [False] * len(INVALID)


def test_mask_of_a_column_without_strings_is_all_false():
    assert iso_date_mask(pd.Series([1.0, float("nan")])).tolist() == [False, False]
    assert iso_date_mask(pd.Series([], dtype=object)).tolist() == []


def _contract_frame(end_date: str) -> pd.DataFrame:
    record = {
        "contact_id": "0001-00042",
        "contract_type": "RENTER",
        "property_id": "0001-001",
        "unit_id": "0001-001-01-0001",
        "number": "100001",
        "start_date": "2020-01-01",
        "end_date": end_date,
    }
    return pd.DataFrame([record])


@pytest.mark.parametrize(("end_date", "accepted"), [("9999-12-31", True), ("2023-02-30", False)])
def test_open_ended_contract_passes_and_impossible_date_fails_everywhere(tmp_path, end_date, accepted):
    rows = default_rows()
    rows["mietvertraege"][0]["ende"] = end_date
    root = write_export(tmp_path, {"0001": rows})
    if accepted:
        assert read_entity(root, "0001", MIETVERTRAEGE).frame.loc[0, "ende"] == end_date
    else:
        with pytest.raises(ErpExportError, match="ende"):
            read_entity(root, "0001", MIETVERTRAEGE)

    frame = _contract_frame(end_date)
    problems = contract_problems(frame)
    assert (problems == []) is accepted, problems
    if not accepted:
        assert {p.field for p in problems} == {"endDate"}

    contact = {"id": "0001-00042", "last_name": "Musterfrau", "contracts": frame.to_dict("records")}
    payload = api.to_payload(ObjectKind.CONTACT, contact)
    errors = api.validate_payload(ObjectKind.CONTACT, payload)
    assert (errors == []) is accepted, errors
    if not accepted:
        assert [e.field for e in errors] == ["contracts[0].endDate"]
