"""The one rule for dates: plain ISO `YYYY-MM-DD`, a real calendar date, years 0001 to 9999.

The ERP schema, the mapping's payload schema and the casavi adapter all check dates with this module,
so a date one of them accepts is never refused by another. Checked by hand rather than with
`pd.to_datetime` (its range ends in 2262, and ERPs write open-ended contracts as 9999-12-31, a real
date) or `datetime.date.fromisoformat` (it also accepts `20240301` and, with Python 3.11, week dates).
`iso_date_mask` (vectorised) and `is_iso_date` (one value) share the shape and `_is_real_date`, so
they cannot disagree.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# [0-9], not \d: \d also matches other scripts' digits (e.g. Arabic-Indic), which no API reads as a date.
_ISO_DATE_SHAPE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_ISO_DATE = re.compile(_ISO_DATE_SHAPE)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _is_real_date(year: Any, month: Any, day: Any) -> Any:
    """Whether year/month/day name a real date; ints or numpy int arrays (then elementwise)."""
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    valid_month = (month >= 1) & (month <= 12)
    last_day = _DAYS_IN_MONTH[np.where(valid_month, month, 0)] + ((month == 2) & leap)
    return (year >= 1) & valid_month & (day >= 1) & (day <= last_day)


def iso_date_mask(values: pd.Series) -> np.ndarray:
    """One bool per value: is it a `str` holding a real date `YYYY-MM-DD`? Missing and non-str → False."""
    try:
        matched = values.str.fullmatch(_ISO_DATE_SHAPE)
    except AttributeError:  # the .str accessor refuses a column without any string (e.g. all numbers)
        return np.zeros(len(values), dtype=bool)
    shaped = matched.to_numpy(dtype=bool, na_value=False)
    if not shaped.any():
        return shaped
    dates = values[shaped]
    year = dates.str.slice(0, 4).astype(int).to_numpy()
    month = dates.str.slice(5, 7).astype(int).to_numpy()
    day = dates.str.slice(8, 10).astype(int).to_numpy()
    valid = shaped.copy()
    valid[shaped] = _is_real_date(year, month, day)
    return valid


def is_iso_date(value: object) -> bool:
    """Is `value` a `str` holding a real date `YYYY-MM-DD` (the same rule as `iso_date_mask`)?"""
    if not isinstance(value, str) or _ISO_DATE.fullmatch(value) is None:
        return False
    return bool(_is_real_date(int(value[0:4]), int(value[5:7]), int(value[8:10])))
