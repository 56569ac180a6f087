"""How the pipeline's frames hold text: Arrow-backed strings, not Python objects.

An object column keeps one Python `str` per value (~50 bytes of overhead each, plus the pointer); an
Arrow string column keeps the characters in one buffer with a 4-byte offset per value, so a 500 000-unit
Mandant's frames take a fraction of the memory, pickle as a few buffers between Dagster steps, and
DuckDB scans them without converting each value. A missing value is `pd.NA` when iterated (`None` in
`to_dict`), so code that tests values uses `isinstance(value, str)`, never `value is None`.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

#: The dtype of every text column: ERP values, reference ids, casavi fields.
TEXT = pd.ArrowDtype(pa.string())


def _arrow_backed(arrow_type: pa.DataType) -> pd.ArrowDtype | None:
    """Strings and lists (a property's addresses, a contact's contracts) stay Arrow; numbers become
    numpy (`float64`, NaN = missing), as the payload schema expects."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return TEXT
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pd.ArrowDtype(arrow_type)
    return None


def from_arrow(table: pa.Table) -> pd.DataFrame:
    """A frame over an Arrow table (e.g. a DuckDB result), text and lists kept in Arrow buffers."""
    return table.to_pandas(types_mapper=_arrow_backed)


def text_array(values: list[str | None]) -> pd.api.extensions.ExtensionArray:
    """An Arrow-backed text column from Python values (`None` = missing)."""
    return pd.array(pa.array(values, type=pa.string()), dtype=TEXT)
