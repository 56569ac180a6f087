"""`casavi-pipeline`: the operator's commands of an installed casavi_pipeline (no Dagster needed).

    casavi-pipeline check-casavi [--write-test]
        compare the casavi account of the settings with casavi_pipeline's model of its API
        (exit 0 it matches, 1 it contradicts the model, 2 it cannot be checked: settings, network,
        credentials, or an empty account, which compares nothing without --write-test)
    casavi-pipeline sync --mandant M [--dry-run]
        run the main job for one Mandant in the Dagster instance ($DAGSTER_HOME) and print a short
        summary: progress, per kind what casavi confirmed, a dry run's preview, or why it stopped
    casavi-pipeline audit [--mandant M] [--ref-id ID] [--run RUN] [--since T] [--until T] [--csv]
        the audit trail: every write attempt casavi answered (names and statuses, never values)
    casavi-pipeline deletions --mandant M [--approve ID [ID ...] | --approve-all]
        the Mandant's pending deletions (kind, id, since, why, approved?); approve some or all of them:
        the next run of the Mandant deletes them in casavi
    casavi-pipeline erase-personal-data M [--snapshot-dir DIR]
        erase what casavi_pipeline keeps about Mandant M's people (an erasure request, GDPR art. 17)

Settings come from the environment or `.env` in the working directory, exactly as the code location
reads them (docs/settings.md). In the repository, `./run check-casavi` runs the same command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from casavi_pipeline.cli import audit, check, deletions, erase, sync


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casavi-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in (check, sync, audit, deletions, erase):  # one module per command: it adds its parser
        command.add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)

