"""What is in scope: the sync rule (rule 2 of `docs/export-format.md`), the one piece of domain vocabulary
the mapping, the guards and the settings share. Where it is applied: `mapping/people.py` (`person_rows`).

And what the sync rule leaves out of the export (`left_out`): the reference ids the export composes,
whatever the rule, that the mapping does not send (rule 6). A synced object that leaves casavi's scope
either went from the export or is still there but out of the sync rule (a tenant who lost their email;
under `last-name` a vacant unit, its owner, a property with nothing rented). The changeset tells the two
apart by these ids (`state/deletions.py`): a person deciding about a pending deletion needs to know which.
"""

from __future__ import annotations

from enum import StrEnum

import pandas as pd

from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.mapping.duck import DuckSession
from casavi_pipeline.mapping.ids import sql_ref_id


class SyncRule(StrEnum):
    """Which tenants, and with them which objects, are synced."""

    EMAIL = "email"  # tenants with a valid email; all real estate and all owners
    LAST_NAME = "last-name"  # Aareon Connect's rule since 2024-02-07: tenants by name, only linked objects


#: Per kind, the ERP entities whose records compose its ids, and the id's parts (as `mapping` composes them).
_COMPOSED: dict[ObjectKind, list[tuple[str, tuple[str, ...]]]] = {
    ObjectKind.PROPERTY: [("wirtschaftseinheiten", ("we_nr",))],
    ObjectKind.UNIT: [("verwaltungseinheiten", ("we_nr", "geb_nr", "ve_nr"))],
    ObjectKind.CONTACT: [("mieter", ("person_nr",)), ("eigentuemer", ("person_nr",))],
}


def left_out(
    erp: dict[str, pd.DataFrame], mapped: dict[ObjectKind, pd.DataFrame], *, mandant: str, separator: str
) -> pd.DataFrame:
    """(kind, ref_id) of every id the export's records compose that `mapped` (the mapping's frames of
    properties, units and contacts) does not hold, sorted."""
    with DuckSession(mandant, separator) as duck:
        composed = []
        for kind, sources in _COMPOSED.items():
            for entity, parts in sources:
                duck.add_erp(entity, erp[entity])
                composed.append(
                    f"SELECT '{kind.value}' AS kind, {sql_ref_id(*parts)} AS ref_id FROM {entity}"
                )
        ids = pd.concat(
            [pd.DataFrame({"kind": kind.value, "ref_id": frame["id"]}) for kind, frame in mapped.items()],
            ignore_index=True,
        )
        duck.add_frame(
            "mapped", ids, ['CAST("kind" AS VARCHAR) AS kind', 'CAST("ref_id" AS VARCHAR) AS ref_id']
        )
        return duck.frame(
            f"""
            SELECT DISTINCT e.kind, e.ref_id FROM ({" UNION ALL ".join(composed)}) e
            WHERE e.ref_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM mapped m WHERE m.kind = e.kind AND m.ref_id = e.ref_id)
            ORDER BY e.kind, e.ref_id
            """
        )
