"""`python -m casavi_harness.dagster_dev …`: `dagster dev …` as `./run dev` starts it, without two notices
that do not apply there and that every start would print:

- Dagster's `SupersessionWarning` that `dagster dev` is superseded by `dg dev` (the same services; `dg dev`
  only adds a project check that `./run dev` does not need);
- "Found a dagster instance configuration value (dagster.yaml) in the current folder, but your
  DAGSTER_HOME …": the repository's dagster.yaml is the template `./run` installs into `$DAGSTER_HOME`,
  and `dagster dev` must run in the repository (its `.env` and `workspace.yaml` are there).
"""

from __future__ import annotations

import logging
import sys
import warnings

SUPERSEDED = r"Function `dev_command` is superseded"
HOME_NOTICE = "Found a dagster instance configuration value"


class _WithoutHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(HOME_NOTICE)


def main() -> int:
    warnings.filterwarnings("ignore", message=SUPERSEDED)
    # On the logger, not a handler: Dagster replaces the handlers when it configures its loggers.
    logging.getLogger("dagster").addFilter(_WithoutHomeNotice())
    from dagster._cli import main as dagster_main  # the `dagster` command itself

    sys.argv = ["dagster", "dev", *sys.argv[1:]]
    return dagster_main()


if __name__ == "__main__":
    sys.exit(main())
