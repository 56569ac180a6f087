"""The code location: every module under `casavi_pipeline/defs/` autoloaded (dg's project layout).

Each module owns one concern (ERP ingestion, casavi mapping, data quality, changeset & sync, jobs,
automation, resources) and exposes one `dg.Definitions` (or a `@dg.definitions` function); this file
only loads them. `workspace.yaml`, `dagster dev -m casavi_pipeline.definitions` and `dg` all point here.
"""

from pathlib import Path

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parent.parent


defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=PROJECT_ROOT),
    # One run = one Mandant, and its steps form a chain: parallelism comes from Mandant runs side by side
    # (queued under dagster.yaml's limits), not from steps. A process per step would re-import dagster
    # and pandas ~30 times per run for nothing.
    dg.Definitions(executor=dg.in_process_executor),
)
