"""casavi accounts as customers arrive with them: filled from an ERP export by Aareon Connect or an import.

`mapped_bodies` yields the casavi objects an export maps to (the bodies our sync would send), so a test
or benchmark can seed the sandbox with them through its admin endpoint, as if someone else had filled
the account with the same reference ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.erp.contract import ENTITIES
from casavi_pipeline.erp.reader import read_entity
from casavi_pipeline.mapping import map_mandant
from casavi_pipeline.mapping.scope import SyncRule


def mapped_bodies(
    export_dir: Path, mandant: str, *, separator: str = "-", encoding: str = "utf-8"
) -> Iterator[tuple[ObjectKind, dict[str, Any]]]:
    """(kind, body) of every casavi object one Mandant's export maps to, in upsert order (properties with
    their addresses, units, contacts with their contracts): the mapping's frame of each kind is named
    by the kind's collection."""
    erp = {entity.name: read_entity(Path(export_dir), mandant, entity, encoding).frame for entity in ENTITIES}
    frames = map_mandant(erp, mandant=mandant, separator=separator, rule=SyncRule.EMAIL)
    for kind in api.UPSERT_ORDER:
        for record in frames[kind.collection].to_dict("records"):
            yield kind, api.to_payload(kind, record)
