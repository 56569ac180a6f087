"""The code location: every module under `casavi_pipeline/defs/` autoloaded (dg's project layout).

Each module owns one concern (ERP ingestion, casavi mapping, data quality, changeset & sync, jobs,
automation, resources) and exposes one `dg.Definitions` (or a `@dg.definitions` function); this file
only loads them. `workspace.yaml`, `dagster dev -m casavi_pipeline.definitions` and `dg` all point here.
"""

import warnings
from pathlib import Path

import dagster as dg

from casavi_pipeline.settings import SettingsError

try:
    # The settings first, before Dagster's component loader imports the modules that use them: a bad or
    # missing setting then stops the load with its one line and this one frame (docs/settings.md), not
    # with the line three times in the loader's nested stack traces.
    import casavi_pipeline.defs.resources
except SettingsError as exc:
    raise SettingsError(str(exc)) from None

import casavi_pipeline.defs
from casavi_pipeline.defs.failures import with_failure_reason

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# dg's autoloading calls Dagster's own preview loaders: nothing of ours to act on (docs/operating.md says so once).
warnings.filterwarnings(
    "ignore", message="Function `load_definitions_from_module", category=dg.PreviewWarning
)
# Dagster copies each asset check that carries a hook through a beta parameter of its own: not ours either.
warnings.filterwarnings("ignore", message="Parameter `execution_type` of function", category=dg.BetaWarning)


# Every asset and check carries the failure hook, so every run records why it stopped (defs/failures.py).
# (One Definitions object at module scope: Dagster refuses a module with two.)
defs = with_failure_reason(
    # What `dg.load_from_defs_folder` does, without needing pyproject.toml beside the code: a
    # deployment that installed the package (not the repo) has none.
    dg.ComponentTree.from_module(defs_module=casavi_pipeline.defs, project_root=PROJECT_ROOT).build_defs()
)
