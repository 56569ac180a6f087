"""How much memory one DuckDB database of the pipeline may hold before it spills to disk.

DuckDB lets each database grow to 80 % of the machine's RAM before its sorts, joins, aggregates and
windows spill, so a 500 000-unit Mandant's mapping and diff held 1-1.5 GiB more than they needed (on top
of the frames Python holds). Bounded, the same queries spill to a temporary directory instead and the
process stays under 2 GiB; at 100 000 units they still run in memory. Results handed to Python (Arrow
tables) are not counted: the bound is on DuckDB's working memory, not on a query's output.
"""

from __future__ import annotations

#: DuckDB's `memory_limit` for every connection of the pipeline. 512 MB: measured to keep a 500 000-unit
#: Mandant's contacts query, its person-conflict check and its changeset below 2 GiB peak RSS.
MEMORY_LIMIT = "512MB"


def config(temp_directory: str | None = None) -> dict[str, str]:
    """`duckdb.connect(..., config=...)` for a bounded database; `temp_directory` is where it spills
    (a file database spills beside its file, `<file>.tmp`, unless given one)."""
    settings = {"memory_limit": MEMORY_LIMIT}
    if temp_directory is not None:
        settings["temp_directory"] = temp_directory
    return settings
