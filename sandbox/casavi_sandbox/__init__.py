"""A local stand-in for casavi's API v2 (Starlette on uvicorn, SQLite), with knobs to make it misbehave.

Run it with `./run sandbox` or `python -m casavi_sandbox`; drive it from tests, the demo
and benchmarks with `SandboxProcess`. It implements `docs/casavi-api.md` from its own reading of it
(`contract.py`, `model.py`) and imports nothing from casavi_pipeline (an import-linter contract in the
suite holds it to that), so it judges what the pipeline sends rather than agreeing with it by
construction. What glues the pipeline to the sandbox (the fake client, the demo, `./run dev`, the sample
export) is the harness, `casavi_harness`.
"""

from casavi_sandbox.chaos import Knobs
from casavi_sandbox.process import DEFAULT_KEY, DEFAULT_SECRET, PortTakenError, SandboxProcess

__all__ = ["DEFAULT_KEY", "DEFAULT_SECRET", "Knobs", "PortTakenError", "SandboxProcess"]
