"""The main job: the whole graph (ERP → casavi objects → checks → changeset → sync) for one Mandant.

Partitioned by Mandant like every asset it selects. Why a failed run stopped is recorded by the hook its
assets carry (defs/failures.py), as in every other job that runs them.

Its runs carry a maximum runtime (`dagster/max_runtime`, CASAVI_MAX_RUNTIME_HOURS, 20 h by default): run
monitoring (dagster.yaml) ends a run that is still going by then, so a hung run never holds its Mandant
into the next night (the schedule's period is 24 h). A long first sync that it ends loses nothing: what
casavi confirmed is recorded, and the next night's run sends the rest."""

import warnings

import dagster as dg

from casavi_pipeline.defs.freshness import casavi_sync_fresh
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SETTINGS

SYNC_JOB_NAME = "casavi_sync_job"
#: Dagster's run tag for the seconds after which run monitoring ends a run.
MAX_RUNTIME_TAG = "dagster/max_runtime"


def max_runtime_tags(hours: float) -> dict[str, str]:
    """The job's run tags for a maximum runtime of `hours` (0: none)."""
    return {MAX_RUNTIME_TAG: str(round(hours * 3600))} if hours else {}


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
        tags=max_runtime_tags(SETTINGS.sync.max_runtime_hours),
        description="Reads one Mandant's ERP export, maps it to casavi objects, checks them, diffs against the "
        "snapshot and writes only what changed to casavi. One run per Mandant (partition).",
    )

defs = dg.Definitions(jobs=[casavi_sync_job])
