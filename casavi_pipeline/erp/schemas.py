"""pandera schemas of the ERP export files, built from the contract (`casavi_pipeline.erp.contract`).

A schema validates the *text* frame the reader builds (every value a stripped `str` or `None`), before
decimals are converted, so a bad value can be reported as written in the file. Checks are vectorised
and named; `describe_failures` turns pandera's failure cases into one line per problem that says
where (row, line, ERP key), what is wrong and what to fix, without showing person data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import pandas as pd
import pandera.pandas as pa
import pycountry

from casavi_pipeline.dates import iso_date_mask
from casavi_pipeline.erp.contract import ANREDEN, NUTZUNGSARTEN, Column, ColumnType, Entity
from casavi_pipeline.erp.errors import key_label, place

# Check names: pandera reports them in `failure_cases["check"]`; `_EXPLANATIONS` says what they mean.
ISO_DATE = "iso_date"
DECIMAL = "decimal"
NON_NEGATIVE = "non_negative"
ALLOWED_VALUE = "allowed_value"
PERSON_HAS_NAME = "person_has_name"
NOT_NULL = "not_nullable"  # pandera's own name
UNIQUE_KEY = "multiple_fields_uniqueness"  # pandera's own name for DataFrameSchema(unique=[...])

_DECIMAL_SHAPE = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
#: Columns whose values come from a fixed list in the contract (`land`: ISO 3166-1 alpha-2, from pycountry).
_VALUE_SETS: dict[str, tuple[str, ...]] = {
    "nutzungsart": NUTZUNGSARTEN,
    "anrede": ANREDEN,
    "land": tuple(country.alpha_2 for country in pycountry.countries),
}


def holds_person_data(entity: Entity) -> bool:
    """Tenant and owner files: their non-key values (names, emails, phones) must never reach a message."""
    return "person_nr" in entity.column_names


def _is_iso_date(values: pd.Series) -> pd.Series:
    return pd.Series(iso_date_mask(values), index=values.index)


def _is_decimal(values: pd.Series) -> pd.Series:
    return values.str.fullmatch(_DECIMAL_SHAPE).fillna(False).astype(bool)


def _is_not_negative(values: pd.Series) -> pd.Series:
    # Unparsable values pass here: the `decimal` check reports them once, with the better hint.
    return ~(pd.to_numeric(values, errors="coerce") < 0)


def _has_name(frame: pd.DataFrame) -> pd.Series:
    return frame["nachname"].notna() | frame["firma"].notna()


def _column_checks(column: Column) -> list[pa.Check]:
    if column.type is ColumnType.DATE:
        return [pa.Check(_is_iso_date, name=ISO_DATE)]
    if column.type is ColumnType.DECIMAL:
        return [pa.Check(_is_decimal, name=DECIMAL), pa.Check(_is_not_negative, name=NON_NEGATIVE)]
    if column.name in _VALUE_SETS:
        allowed = _VALUE_SETS[column.name]
        return [pa.Check(lambda values: values.isin(allowed), name=ALLOWED_VALUE)]
    return []


@cache
def schema_for(entity: Entity) -> pa.DataFrameSchema:
    """The schema of an entity's text frame: contract columns in contract order, all values str or None."""
    columns = {
        column.name: pa.Column(
            nullable=not column.not_null, required=True, checks=_column_checks(column), name=column.name
        )
        for column in entity.columns
    }
    frame_checks = [pa.Check(_has_name, name=PERSON_HAS_NAME)] if holds_person_data(entity) else []
    return pa.DataFrameSchema(
        columns,
        checks=frame_checks,
        unique=list(entity.key),
        report_duplicates="all",
        strict=True,
        ordered=True,
        name=entity.name,
    )


def _explain(check: str, column: str, shown_value: str = "", label: str | None = None) -> str:
    """What is wrong and what to fix, for one failed check of one column; `shown_value` e.g. ` ('80,5')`,
    `label` the column as the message names it (with its source column, see `Origin.column`)."""
    subject = f"column {label or column}{shown_value}"
    if check == NOT_NULL:
        return f"column {label or column} is empty; fill it in (it is required in every row)"
    if check == ISO_DATE:
        return f"{subject} is not a real date in the form YYYY-MM-DD; write it like 2024-03-01"
    if check == DECIMAL:
        return f"{subject} is not a decimal number; use digits with '.' as decimal point, e.g. 52.5"
    if check == NON_NEGATIVE:
        return f"{subject} is negative; it must be 0 or more"
    if check == ALLOWED_VALUE and column == "land":
        return f"{subject} is not an ISO 3166-1 alpha-2 country code; write e.g. DE, AT or CH (empty = DE)"
    if check == ALLOWED_VALUE:
        allowed = ", ".join(_VALUE_SETS[column])
        empty = " or leave it empty" if column == "anrede" else ""
        return f"{subject} is not an allowed value; use one of {allowed}{empty}"
    if check == PERSON_HAS_NAME:
        return "columns nachname and firma are both empty; a person needs at least one of them"
    return f"{subject} fails the check {check!r}; see docs/export-format.md"


def describe_failures(
    entity: Entity,
    frame: pd.DataFrame,
    failure_cases: pd.DataFrame,
    locate: Callable[[int], str],
    column_label: Callable[[str], str] = str,
) -> list[str]:
    """One readable line per problem, in file order: location, ERP key, column, what is wrong, the fix.

    `locate(index)` labels the frame row `index` (e.g. `row 3 (line 4)`, or "" where rows have no place);
    `column_label` names a column (e.g. with the source column it was mapped from). Values are shown only for
    files without person data; for tenants and owners the column and the key must do.
    """
    show_values = not holds_person_data(entity)
    order = {name: position for position, name in enumerate(entity.column_names)}
    cases = failure_cases.assign(index=pd.to_numeric(failure_cases["index"], errors="coerce"))
    located: list[tuple[float, int, str]] = []  # (row index, column position, text): sorts into file order

    duplicates = cases[cases["check"] == UNIQUE_KEY]
    located += _describe_duplicates(entity, frame, duplicates["index"].dropna().astype(int), locate)

    # The frame-wide name check reports one case per column of a failing row: one problem per row is
    # enough.
    others = cases[cases["check"] != UNIQUE_KEY]
    seen_rows_without_name: set[int] = set()
    for case in others.itertuples(index=False):
        column = case.column if isinstance(case.column, str) else ""
        if pd.isna(case.index):  # a schema-level failure, not tied to a row
            located.append(
                (-1.0, order.get(column, -1), _explain(str(case.check), column, "", column_label(column)))
            )
            continue
        index = int(case.index)
        if case.check == PERSON_HAS_NAME:
            if index in seen_rows_without_name:
                continue
            seen_rows_without_name.add(index)
        shown_value = f" ({case.failure_case!r})" if show_values else ""
        text = _explain(str(case.check), column, shown_value, column_label(column))
        where = place(locate(index), key_label(entity.key, _key_values(frame, entity, index)))
        located.append((float(index), order.get(column, -1), f"{where}: {text}"))
    return [text for _, _, text in sorted(located, key=lambda item: (item[0], item[1]))]


def _key_values(frame: pd.DataFrame, entity: Entity, index: int) -> list[object]:
    return [frame.at[index, name] for name in entity.key]


def _describe_duplicates(
    entity: Entity, frame: pd.DataFrame, indexes: pd.Series, locate: Callable[[int], str]
) -> list[tuple[float, int, str]]:
    rows = sorted(set(indexes.tolist()))
    if not rows:
        return []
    keys = frame.loc[rows, list(entity.key)]
    located = []
    for key, group in keys.groupby(list(entity.key), sort=False, dropna=False):
        members = list(group.index)
        values: Sequence[object] = key if isinstance(key, tuple) else (key,)
        places = " and ".join(filter(None, (locate(i) for i in members)))
        located.append(
            (
                float(members[0]),
                -1,
                f"{place(locate(members[0]), key_label(entity.key, values))}: the key "
                f"({', '.join(entity.key)}) appears {f'more than once, in {places}' if places else f'{len(members)} times'}; "
                "each record needs its own key: remove the duplicate or renumber it",
            )
        )
    return located
