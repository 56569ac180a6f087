"""The local setup of the demo and `./run dev`: the bundled sample export and a casavi sandbox on loopback.

These are defaults of the harness only. casavi_pipeline itself has no default export folder and no
default casavi: a deployment that forgot a setting fails when the code location loads, instead of
syncing generated people into a real account.

`dagster dev` (which `./run dev` starts in the project root) loads a `.env` from its working directory
*over* the environment it was given (`dagster._cli.utils._inject_local_env_file`). A `.env` with a
production `CASAVI_BASE_URL` and credentials would therefore replace the sandbox settings made here and
send the sample to production: the local setup refuses to start a sandbox while such a `.env` exists.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from dotenv import dotenv_values

from casavi_pipeline.settings import is_loopback
from casavi_pipeline.urls import shown_url
from casavi_sandbox.process import SandboxProcess

#: The small generated export committed with the harness.
SAMPLE_EXPORT_DIR = Path(__file__).resolve().parent / "sample_export"
#: The project root: the working directory of `dagster dev` under `./run dev` (and of `./run demo`).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The settings the local sandbox setup makes; a `.env` setting one of them would override it.
LOCAL_SETUP_VARIABLES = (
    "CASAVI_BASE_URL", "CASAVI_API_KEY", "CASAVI_API_SECRET", "ERP_EXPORT_DIR", "CASAVI_MANDANTEN",
)  # fmt: skip
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
            f"refusing to sync the bundled sample export (generated people) to {shown_url(url)}: the sample is for "
            "the local sandbox only. Set ERP_EXPORT_DIR to your ERP export, or unset CASAVI_BASE_URL."
        )


def dotenv_settings(env_dirs: Sequence[Path]) -> dict[str, str]:
    """What a `.env` in these folders sets (later folders win), as `dagster dev` would read it."""
    found: dict[str, str] = {}
    for folder in env_dirs:
        path = folder / ".env"
        if path.is_file():
            found.update({key: value for key, value in dotenv_values(path).items() if value is not None})
    return found


def refuse_dotenv_over_sandbox(env_dirs: Sequence[Path]) -> None:
    """A `.env` setting what the sandbox setup sets would win over it under `dagster dev`: refuse."""
    for folder in env_dirs:
        path = folder / ".env"
        overriding = [name for name in LOCAL_SETUP_VARIABLES if name in dotenv_settings([folder])]
        if overriding:
            raise LocalSetupError(
                f"{path} sets {', '.join(overriding)}, which would override the local sandbox setup "
                "(dagster dev applies .env over the environment); set them in the environment instead, "
                "or remove them from .env."
            )


@contextlib.contextmanager
def local_environment(
    data_dir: Path, port: int = SANDBOX_PORT, env_dirs: Sequence[Path] = (PROJECT_ROOT,)
) -> Iterator[dict[str, str]]:
    """The environment the pipeline needs, pointed at the sample and at a sandbox started here.

    When `CASAVI_BASE_URL` is set, the user's own settings are used as they are (no sandbox), with the
    sample only as the default export and only towards a loopback casavi. `env_dirs` are the folders
    whose `.env` `dagster dev` would apply over the environment (its working directory).
    """
    environ = dict(os.environ)
    environ.setdefault("CASAVI_SNAPSHOT_DB", str((data_dir / "snapshots").resolve()))
    if environ.get("CASAVI_BASE_URL"):
        environ.setdefault("ERP_EXPORT_DIR", str(SAMPLE_EXPORT_DIR))
        if uses_sample(environ):
            environ.setdefault("CASAVI_MANDANTEN", SAMPLE_MANDANTEN)
        refuse_sample_outside_loopback(environ)
        # What dagster dev will see: the .env applied over this environment.
        refuse_sample_outside_loopback({**environ, **dotenv_settings(env_dirs)})
        yield environ
        return
    refuse_dotenv_over_sandbox(env_dirs)
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
