"""ruff and the import contracts are part of the test suite, so `./run test` (and CI) fails on either."""

import contextlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean(processes):
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = processes.run([ruff, "check", "--no-cache", str(ROOT)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_contracts_are_kept(capsys):
    """`lint-imports` with the repository's contracts ([tool.importlinter] in pyproject.toml): the layers
    (operator commands > Dagster wiring > settings > domain), no Dagster in the domain, no network I/O in
    the state, no import cycles, and a sandbox that imports nothing from casavi_pipeline (it judges what
    the pipeline sends)."""
    from importlinter.cli import lint_imports

    with contextlib.chdir(ROOT):
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    printed = capsys.readouterr().out
    assert code == 0, printed
    for contract in ("sandbox imports nothing from casavi_pipeline", "the layers of casavi_pipeline",
                     "never import Dagster", "no import cycles"):  # fmt: skip
        assert contract in " ".join(printed.split()), contract  # each contract was checked
