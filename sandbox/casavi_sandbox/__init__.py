"""A local stand-in for casavi's API v2 (Starlette on uvicorn, SQLite), with knobs to make it misbehave.

Run it with `./run sandbox` or `python -m casavi_sandbox`; drive it from tests, the demo
and benchmarks with `SandboxProcess`. It implements the model of `docs/casavi-api.md` through the
adapter `casavi_pipeline.casavi.api`, so the sandbox cannot drift from what the client sends.
"""

from casavi_sandbox.chaos import Knobs
from casavi_sandbox.process import DEFAULT_KEY, DEFAULT_SECRET, PortTakenError, SandboxProcess

__all__ = ["DEFAULT_KEY", "DEFAULT_SECRET", "Knobs", "PortTakenError", "SandboxProcess"]
