"""A tiny code location for the run monitoring test: one partitioned asset that holds while a file exists.

It uses the code location's own executor (`run_values_executor`), which records the run's worker for the
shipped launcher's health check, so what is under test is what the real job does; only the work is tiny.
"""

import os
import time
from pathlib import Path

import dagster as dg

from casavi_pipeline.runs.values import run_values_executor

GATE = Path(os.environ.get("CASAVI_TEST_GATE", "/nonexistent"))


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["0001", "0002"]))
def held(context: dg.AssetExecutionContext) -> int:
    """Returns once `$CASAVI_TEST_GATE/hold` is gone (the test kills the first run while it holds)."""
    while (GATE / "hold").exists():
        time.sleep(0.1)
    return len(context.partition_key)


defs = dg.Definitions(
    assets=[held],
    jobs=[dg.define_asset_job("held_job", selection=[held])],
    executor=run_values_executor(GATE / "values"),
)
