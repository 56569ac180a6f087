"""The shipped code location with `casavi_sync` in one concurrency pool per casavi account: the "pool"
variant of `./run bench queue` (benchmarks/queue.py). The product declares no pool: this measurement
decided against it (benchmarks/RESULTS.md, "Runs of many Mandanten of one account at once")."""

from casavi_pipeline.account import account_id
from casavi_pipeline.definitions import defs
from casavi_pipeline.defs.resources import SETTINGS
from casavi_pipeline.defs.sync import casavi_sync

POOL = f"casavi-account-{account_id(SETTINGS.casavi.api_key.get_secret_value())}"
# Dagster 1.13 keeps an op's pool here (`@dg.asset(pool=...)` sets it); the shipped op is shared by the
# asset definitions the location holds, so every job that runs casavi_sync claims the pool's slot.
casavi_sync.op._pool = POOL

__all__ = ["defs"]
