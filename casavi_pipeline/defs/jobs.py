"""The main job: the whole graph (ERP → casavi objects → checks → changeset → sync) for one Mandant.

Partitioned by Mandant like every asset it selects. Why a failed run stopped is recorded by the hook its
assets carry (defs/failures.py), as in every other job that runs them."""

import warnings

import dagster as dg

from casavi_pipeline.defs.freshness import casavi_sync_fresh
from casavi_pipeline.defs.partitions import mandant_partitions

SYNC_JOB_NAME = "casavi_sync_job"

# `partitions_def` is deprecated in favour of inference, but Dagster 1.13's
# `build_schedule_from_partitioned_job` needs it for static partitions (see defs/automation.py).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    casavi_sync_job = dg.define_asset_job(
        SYNC_JOB_NAME,
        # The freshness check judges the nights from outside (its sensor): inside a sync it would
        # only ever see the sync it follows.
        selection=dg.AssetSelection.all() - dg.AssetSelection.checks(casavi_sync_fresh),
        partitions_def=mandant_partitions,
        description="Reads one Mandant's ERP export, maps it to casavi objects, checks them, diffs against the "
        "snapshot and writes only what changed to casavi. One run per Mandant (partition).",
    )

defs = dg.Definitions(jobs=[casavi_sync_job])
