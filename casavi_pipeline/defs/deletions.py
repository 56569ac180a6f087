"""`casavi_approve_deletions`: approve a Mandant's pending deletions from the Dagster UI.

The same as `casavi-pipeline deletions --mandant M --approve ID …` (or `--approve-all`): launch it for the
Mandant's partition with the reference ids in the launchpad's config (`ids`, or `approve_all: true`); the
next run of the Mandant deletes what was approved. Who approved is the run's Dagster user where the
deployment knows it (the run tag `dagster/user`), else "dagster"; it goes into the audit trail. An id that
names no pending deletion refuses the whole approval in one line, and so does a sync of the Mandant that
holds its snapshot (try again when it has finished). `state/deletions.py` says what a pending deletion is.
"""

import dagster as dg
from pydantic import Field

from casavi_pipeline.defs.failures import record_failure_reason
from casavi_pipeline.defs.partitions import mandant_partitions
from casavi_pipeline.defs.resources import SnapshotStore
from casavi_pipeline.state import deletions
from casavi_pipeline.state.deletions import UnknownDeletionError
from casavi_pipeline.state.files import StateBusyError

APPROVE_JOB_NAME = "casavi_approve_deletions"
#: The run tag naming the user who launched a run (set by deployments that know their users).
USER_TAG = "dagster/user"


class ApproveConfig(dg.Config):
    ids: list[str] = Field(
        default_factory=list,
        description="reference ids of pending deletions to approve (as `casavi-pipeline deletions --mandant M` "
        "lists them; `kind:id` when one id names two kinds)",
    )
    approve_all: bool = Field(default=False, description="approve every pending deletion of the Mandant")


@dg.op(out=dg.Out(dg.Nothing))
def approve_deletions(context: dg.OpExecutionContext, config: ApproveConfig, snapshots: SnapshotStore):
    """Approve the configured pending deletions of the run's Mandant and say which, in one line."""
    mandant = context.partition_key
    if not config.ids and not config.approve_all:
        raise dg.Failure(
            description=f"Mandant {mandant}: nothing to approve; give the reference ids in `ids` (or set "
            "`approve_all: true`) in the launchpad's config",
            allow_retries=False,
        )
    user = context.run.tags.get(USER_TAG, "dagster")
    try:
        with snapshots.open(mandant) as snapshot:
            ids = None if config.approve_all else config.ids
            approved = deletions.approve(snapshot, ids, by=user, run_id=context.run.run_id)
    except StateBusyError:
        raise dg.Failure(
            description=f"Mandant {mandant}: a sync holds its snapshot; nothing was approved. Launch this "
            "again when the sync has finished.",
            allow_retries=False,
        ) from None
    except UnknownDeletionError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    named = ", ".join(f"{row.kind} {row.ref_id}" for row in approved) or "nothing new"
    context.log.info(
        f"Mandant {mandant}: approved by {user}: {named}; the next run of the Mandant deletes them"
    )
    yield dg.Output(
        None, metadata={"approved": len(approved), "by": user, "ids": [r.ref_id for r in approved]}
    )


@dg.job(
    name=APPROVE_JOB_NAME,
    partitions_def=mandant_partitions,
    hooks={record_failure_reason},
    description="Approves pending deletions of one Mandant (the partition): `ids` or `approve_all` in the "
    "config. The next run of the Mandant deletes them in casavi. Same as `casavi-pipeline deletions --mandant "
    "M --approve ID`.",
)
def casavi_approve_deletions():
    approve_deletions()


defs = dg.Definitions(jobs=[casavi_approve_deletions])
