"""The main job: the whole graph (ERP → casavi objects → checks → changeset → sync) for one Mandant.

Partitioned by Mandant because every selected asset is; Dagster infers that from the selection."""

import dagster as dg

SYNC_JOB_NAME = "casavi_sync_job"

casavi_sync_job = dg.define_asset_job(
    SYNC_JOB_NAME,
    selection=dg.AssetSelection.all(),
    description="Reads one Mandant's ERP export, maps it to casavi objects, checks them, diffs against the "
    "snapshot and writes only what changed to casavi. One run per Mandant (partition).",
)

defs = dg.Definitions(jobs=[casavi_sync_job])
