"""The local setup of the demo and `./run dev`: the bundled sample export and a casavi sandbox on loopback.

These are defaults of the harness only. casavi_pipeline itself has no default export folder and no
default casavi: a deployment that forgot a setting fails when the code location loads, instead of
syncing generated people into a real account.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path

from casavi_pipeline.settings import is_loopback
from casavi_sandbox.process import SandboxProcess

#: The small generated export committed with the harness.
SAMPLE_EXPORT_DIR = Path(__file__).resolve().parent / "sample_export"
SAMPLE_MANDANTEN = "0001,0002,0420"
SANDBOX_PORT = 8765
#: The sandbox has no casavi-sized rate limit: the demo should take seconds, not an hour.
LOCAL_REQUESTS_PER_MINUTE = "6000"


class LocalSetupError(RuntimeError):
    """The local setup cannot run as asked; the message says why in one line."""


def uses_sample(environ: Mapping[str, str]) -> bool:
    export = environ.get("ERP_EXPORT_DIR")
    return export is None or Path(export).resolve() == SAMPLE_EXPORT_DIR


def refuse_sample_outside_loopback(environ: Mapping[str, str]) -> None:
    """The bundled sample is fake people: it may only ever go to a casavi on this machine."""
    url = environ.get("CASAVI_BASE_URL")
    if url and uses_sample(environ) and not is_loopback(url):
        raise LocalSetupError(
            f"refusing to sync the bundled sample export (generated people) to {url}: the sample is for "
            "the local sandbox only. Set ERP_EXPORT_DIR to your ERP export, or unset CASAVI_BASE_URL."
        )


@contextlib.contextmanager
def local_environment(data_dir: Path, port: int = SANDBOX_PORT) -> Iterator[dict[str, str]]:
    """The environment the pipeline needs, pointed at the sample and at a sandbox started here.

    When `CASAVI_BASE_URL` is set, the user's own settings are used as they are (no sandbox), with the
    sample only as the default export and only towards a loopback casavi.
    """
    environ = dict(os.environ)
    environ.setdefault("CASAVI_SNAPSHOT_DB", str((data_dir / "snapshots").resolve()))
    if environ.get("CASAVI_BASE_URL"):
        environ.setdefault("ERP_EXPORT_DIR", str(SAMPLE_EXPORT_DIR))
        if uses_sample(environ):
            environ.setdefault("CASAVI_MANDANTEN", SAMPLE_MANDANTEN)
        refuse_sample_outside_loopback(environ)
        yield environ
        return
    environ.setdefault("ERP_EXPORT_DIR", str(SAMPLE_EXPORT_DIR))
    if uses_sample(environ):
        environ.setdefault("CASAVI_MANDANTEN", SAMPLE_MANDANTEN)
    # Fresh random credentials for this sandbox only: real ones in the environment never reach it.
    key, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
    with SandboxProcess(data_dir / "sandbox.sqlite3", port=port, api_key=key, api_secret=secret) as sandbox:
        environ.update(
            {"CASAVI_BASE_URL": sandbox.base_url, "CASAVI_API_KEY": key, "CASAVI_API_SECRET": secret}
        )
        environ.setdefault("CASAVI_REQUESTS_PER_MINUTE", LOCAL_REQUESTS_PER_MINUTE)
        yield environ
