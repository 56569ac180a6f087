"""The one hash of the project: md5 of the exact JSON body a write sends (`api.payload_json_sql`).

The diff hashes the mapped objects with it and the listing hashes casavi's normalised reads with it, so
equal hashes mean casavi holds what the ERP says.
"""

from __future__ import annotations

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind


def hashed_payloads_sql(kind: ObjectKind, view: str, *, keep: tuple[str, ...] = ()) -> str:
    """(kind, ref_id, payload, content_hash[, keep...]) for every row of a frame of domain columns.

    `keep` passes extra columns through.
    """
    extra = "".join(f', "{column}"' for column in keep)
    return (
        f"SELECT '{kind.value}' AS kind, id AS ref_id, payload, md5(payload) AS content_hash{extra} "
        f"FROM (SELECT id, {api.payload_json_sql(kind)} AS payload{extra} FROM {view})"
    )
