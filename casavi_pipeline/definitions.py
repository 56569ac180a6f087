"""The code location: every domain's definitions, merged, with the resources bound once.

Each module under `casavi_pipeline.defs` owns one concern (ERP ingestion, casavi mapping, data
quality, changeset & sync, jobs, automation) and exposes `defs`; this file only puts them together.
"""

import dagster as dg

from casavi_pipeline.defs import automation, casavi, erp, jobs, quality, sync
from casavi_pipeline.defs.resources import casavi_resource_from_env

defs = dg.Definitions.merge(
    erp.defs,
    casavi.defs,
    quality.defs,
    sync.defs,
    jobs.defs,
    automation.defs,
    dg.Definitions(
        resources={"casavi": casavi_resource_from_env()},
        # One run = one Mandant, and its steps form a chain: parallelism comes from Mandant runs side by
        # side (queued under dagster.yaml's limits), not from steps. A process per step would re-import
        # dagster and pandas ~30 times per run for nothing.
        executor=dg.in_process_executor,
    ),
)
