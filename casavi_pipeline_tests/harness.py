"""How tests run the shipped code location: its definitions, with the resources the settings give.

Production: environment → `Settings` → `build_resources` → assets. Tests take the same path with the
settings of one test (its own export folder, snapshot folder and casavi), instead of patching the
environment of the whole process and clearing caches.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from casavi_pipeline.defs.failures import check_evaluations_of_run, failure_reason, step_failures_of_run
from casavi_pipeline.defs.jobs import SYNC_JOB_NAME
from casavi_pipeline.defs.resources import build_resources
from casavi_pipeline.settings import Settings, load_settings

#: The settings without a default, set to values no test sends anything to.
REQUIRED = {
    "ERP_EXPORT_DIR": "/srv/erp",
    "CASAVI_MANDANTEN": "0001",
    "CASAVI_BASE_URL": "https://api.mycasavi.com",
    "CASAVI_API_KEY": "key",
    "CASAVI_API_SECRET": "secret",
}


def settings_from(values: Mapping[str, str]) -> Settings:
    """Settings from variables as the environment would hold them (names as in README)."""
    return load_settings(_env_file=None, **values)


def definitions_with(resources: Mapping[str, object]) -> dg.Definitions:
    """The code location's assets, checks and jobs, bound to these resources."""
    from casavi_pipeline.definitions import defs

    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        resources=dict(resources),
        executor=dg.in_process_executor,
    )


def run_mandant(
    mandant: str,
    resources: Mapping[str, object],
    *,
    instance: dg.DagsterInstance | None = None,
    run_config: Mapping | None = None,
) -> dg.ExecuteInProcessResult:
    """The main job for one Mandant, in this process."""
    job = definitions_with(resources).resolve_job_def(SYNC_JOB_NAME)
    return job.execute_in_process(
        partition_key=mandant,
        instance=instance or dg.DagsterInstance.ephemeral(),
        run_config=dict(run_config or {}),
        raise_on_error=False,
    )


def run_from_environment(
    mandant: str,
    values: Mapping[str, str],
    *,
    instance: dg.DagsterInstance | None = None,
    run_config: Mapping | None = None,
) -> dg.ExecuteInProcessResult:
    """The main job for one Mandant with the resources these settings give, as in production."""
    resources = build_resources(settings_from(values))
    return run_mandant(mandant, resources, instance=instance, run_config=run_config)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def reason_of_run(instance: dg.DagsterInstance, run_id: str) -> str:
    """The one-line reason the failure hook gives for this finished run (without the step's exception)."""
    return failure_reason(check_evaluations_of_run(instance, run_id), step_failures_of_run(instance, run_id))
