"""Runs whose process was killed: mark them failed and free their pool slots; say who holds a pool.

Why this exists (Dagster 1.13): a step that uses a pool (``casavi_sync``, ``pool="casavi_api"``)
claims a row in the instance's ``concurrency_slots`` table and frees it itself when the step ends.
If the process is SIGKILLed (OOM killer, deploy, reboot) nothing frees it: the run stays STARTED,
the slot stays claimed by that run id, and every later run's ``casavi_sync`` waits for it forever
(Dagster only says ``Step blocked by limit for pool casavi_api`` at DEBUG). Dagster does not fix
this by itself for our setup:

* run monitoring (``run_monitoring:`` in dagster.yaml, run by the daemon) checks the health of a
  STARTED run only if the run launcher supports it; ``DefaultRunLauncher`` does not
  (``supports_check_run_worker_health`` is False), and the CLI and ``execute_in_process`` have no
  daemon at all;
* marking a run failed (``instance.report_run_failed``) does not free its slots; only the daemon's
  ``free_slots_after_run_end_seconds`` does, for runs that already ended.

So :func:`reap_dead_runs` finds in-progress runs whose processes are all gone *on this host* (the
pids come from the run's own event log: RUN_START, STEP_START and the engine events that carry a
``pid``), marks them failed and frees their slots. Call it before each run outside the daemon
(``./run demo``, the CLI) and from :func:`build_dead_run_sensor` in the daemon. A run is judged
only where its processes could be seen: its :data:`HOST_TAG` names this host, or it has no such
tag and the instance is SQLite (one machine by construction). A run that never wrote a pid is left
alone (Dagster's run monitoring times out runs stuck in STARTING).

:func:`pool_blockers` / :func:`describe_pool` / :func:`wait_for_pool` name the runs that hold a
pool, so a waiting run says at INFO whom it waits for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import dagster as dg

#: Run tag naming the host a run's processes live on (set by :func:`run_host_tags` or
#: :func:`tag_run_host`). Without it a run is judged only on a SQLite instance.
HOST_TAG = "casavi/run_host"

DEFAULT_POOLS: tuple[str, ...] = ("casavi_api",)

_LOG = logging.getLogger(__name__)

#: Run statuses whose run still owns a live process somewhere (QUEUED/NOT_STARTED own none yet).
_RUNNING_STATUSES = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_PID_EVENT_TYPES = {
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.ENGINE_EVENT,
}
# A process that started this long after the event that named its pid is a later process that
# reuses the pid (e.g. after a reboot), not the run's.
_PID_REUSE_SLACK_SECONDS = 2.0


class Log(Protocol):
    def info(self, msg: str) -> object: ...

    def warning(self, msg: str) -> object: ...


def this_host() -> str:
    return socket.gethostname()


def run_host_tags() -> dict[str, str]:
    """Tags for a run that executes in this process, e.g. ``job.execute_in_process(tags=run_host_tags())``."""
    return {HOST_TAG: this_host()}


def tag_run_host(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> None:
    """Record this host on the current run (call first thing in a pool-holding asset, e.g. casavi_sync).

    Works whichever way the run was started (demo, CLI, daemon), because it runs where the step runs.
    """
    run = context.run
    if run.tags.get(HOST_TAG) != this_host():
        context.instance.add_run_tags(run.run_id, {HOST_TAG: this_host()})


# --- is a run's process still there? -----------------------------------------------------------


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _proc_state(pid: int) -> tuple[str, float | None] | None:
    """(state letter, start time as a Unix timestamp) from /proc, or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return ("X", None)  # gone between the kill(0) and here
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # fields 3.. of proc(5); the name may hold spaces
    state = fields[0]
    boot = _boot_time()
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") if boot is not None else None
    return state, started


def pid_alive(pid: int, *, seen_at: float | None = None) -> bool:
    """Whether ``pid`` is a live process on this host that could be the one seen at ``seen_at``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    proc = _proc_state(pid)
    if proc is None:
        return True
    state, started = proc
    if state in ("Z", "X", "x"):  # a killed child its parent has not reaped yet is dead too
        return False
    return not (seen_at is not None and started is not None and started > seen_at + _PID_REUSE_SLACK_SECONDS)


def run_pids(instance: dg.DagsterInstance, run_id: str) -> dict[int, float]:
    """The pids of a run's own processes (orchestrator and step processes), each with when it was seen."""
    pids: dict[int, float] = {}
    conn = instance.get_records_for_run(run_id, of_type=_PID_EVENT_TYPES)
    while True:
        for record in conn.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None:
                continue
            pid: int | None = None
            if event.event_type in (dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START):
                pid = event.pid
            elif event.event_type == dg.DagsterEventType.ENGINE_EVENT:
                # Only engine events that carry a pid are the run worker's; others (like the
                # notes this module posts) may come from any process.
                data = event.engine_event_data
                value = data.metadata.get("pid") if data is not None else None
                if value is not None:
                    try:
                        pid = int(str(value.value))
                    except ValueError:
                        pid = None
            if pid:
                pids[pid] = min(pids.get(pid, entry.timestamp), entry.timestamp)
        if not conn.has_more:
            return pids
        conn = instance.get_records_for_run(run_id, cursor=conn.cursor, of_type=_PID_EVENT_TYPES)


def _storage_is_single_host(instance: dg.DagsterInstance) -> bool:
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def dead_run_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why ``run`` is dead, or None if it is alive, not ours to judge, or there is no evidence."""
    host = run.tags.get(HOST_TAG)
    if host is not None and host != this_host():
        return None  # its processes live elsewhere; judge it there
    if host is None and not _storage_is_single_host(instance):
        return None
    pids = run_pids(instance, run.run_id)
    if not pids:
        return None  # no process recorded yet (e.g. STARTING); not evidence of death
    if any(pid_alive(pid, seen_at=seen) for pid, seen in pids.items()):
        return None
    listed = ", ".join(str(p) for p in sorted(pids))
    return f"none of its processes (pid {listed}) is running on {this_host()}"


# --- pools --------------------------------------------------------------------------------------


def _supports_pools(instance: dg.DagsterInstance) -> bool:
    return bool(instance.event_log_storage.supports_global_concurrency_limits)


def _pool_holders(instance: dg.DagsterInstance, pool: str) -> tuple[list[tuple[str, str]], int | None]:
    """[(run id, step key)] holding (claimed or assigned) a slot of ``pool``, and the pool's limit."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    holders: list[tuple[str, str]] = []
    for slot in info.claimed_slots:
        if (slot.run_id, slot.step_key) not in holders:
            holders.append((slot.run_id, slot.step_key))
    for step in info.pending_steps:  # assigned to a step that has not claimed it yet: taken as well
        if step.assigned_timestamp is not None and (step.run_id, step.step_key) not in holders:
            holders.append((step.run_id, step.step_key))
    return holders, info.limit


def pool_blockers(instance: dg.DagsterInstance, pool: str, *, exclude_run_id: str | None = None) -> list[str]:
    """Ids of the runs that hold a slot of ``pool`` while it has none free (empty when one is free)."""
    if not _supports_pools(instance):
        return []
    holders, limit = _pool_holders(instance, pool)
    if limit is None or len(holders) < limit:
        return []
    return list(dict.fromkeys(run_id for run_id, _ in holders if run_id != exclude_run_id))


def _slot_run_ids(instance: dg.DagsterInstance) -> set[str]:
    """Every run id with a claimed slot or a queued/assigned step in any pool."""
    storage = instance.event_log_storage
    run_ids = set(storage.get_concurrency_run_ids())
    keys = sorted(storage.get_concurrency_keys())
    for info in storage.get_concurrency_infos(keys).values() if keys else []:
        run_ids.update(slot.run_id for slot in info.claimed_slots)
    return run_ids


def describe_pool(
    instance: dg.DagsterInstance, pool: str, *, waiting_run_id: str | None = None
) -> str | None:
    """An INFO line naming the runs that hold ``pool`` when it has no free slot, else None."""
    blockers = pool_blockers(instance, pool, exclude_run_id=waiting_run_id)
    if not blockers:
        return None
    holders, limit = _pool_holders(instance, pool)
    parts = []
    for run_id in blockers:
        run = instance.get_run_by_id(run_id)
        steps = ", ".join(step for rid, step in holders if rid == run_id)
        if run is None:
            parts.append(f"run {run_id} (deleted; step {steps})")
        else:
            partition = run.tags.get("dagster/partition")
            parts.append(
                f"run {run_id} (job {run.job_name}"
                + (f", partition {partition}" if partition else "")
                + f", step {steps}, status {run.status.value}"
                + (f", host {run.tags[HOST_TAG]}" if HOST_TAG in run.tags else "")
                + ")"
            )
    who = "This run" if waiting_run_id else "The next run using it"
    return (
        f"Pool {pool} is full ({len(holders)} of {limit} slot(s) taken) by {'; '.join(parts)}. "
        f"{who} waits until it is freed. A killed holder is marked failed and freed by "
        "`python -m casavi_pipeline.runs.health` or the dead-run sensor; a live one finishes first."
    )


def free_run_slots(instance: dg.DagsterInstance, run_id: str) -> None:
    """Free every pool slot and queued step of ``run_id`` (the next waiting step gets the slot)."""
    if _supports_pools(instance):
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


# --- the fix ------------------------------------------------------------------------------------


def reap_dead_runs(instance: dg.DagsterInstance, *, log: Log = _LOG) -> list[str]:
    """Mark runs whose processes are gone failed, and free the pool slots of runs that cannot use them.

    * A STARTING/STARTED/CANCELING run judged dead by :func:`dead_run_reason` is reported failed
      (``instance.report_run_failed``) and its slots are freed.
    * A run that has ended (or was deleted) but still holds a slot or a queued step in a pool gets
      it freed (what ``free_slots_after_run_end_seconds`` does in the daemon, without the daemon).

    Returns the ids of the runs acted on. Safe to call any time, from any process, repeatedly.
    """
    acted: list[str] = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_RUNNING_STATUSES)):
        reason = dead_run_reason(instance, run)
        if reason is None:
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.is_finished:
            continue
        message = (
            f"The run's process was killed: {reason}. Marked as failed by casavi_pipeline.runs.health "
            f"(pid {os.getpid()} on {this_host()}); its pool slots are freed."
        )
        instance.report_run_failed(current, message)
        free_run_slots(instance, run.run_id)
        log.warning(f"Run {run.run_id} ({run.job_name}, status {run.status.value}): {message}")
        acted.append(run.run_id)

    if _supports_pools(instance):
        for run_id in sorted(_slot_run_ids(instance) - set(acted)):
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                continue
            free_run_slots(instance, run_id)
            state = "was deleted" if run is None else f"ended ({run.status.value})"
            log.warning(f"Freed the pool slots of run {run_id}, which {state} without freeing them.")
            acted.append(run_id)
    return acted


class PoolBusyError(RuntimeError):
    """The pool stayed full for longer than the caller was willing to wait."""


def wait_for_pool(
    instance: dg.DagsterInstance,
    pool: str,
    *,
    log: Log = _LOG,
    timeout_seconds: float,
    poll_seconds: float = 5.0,
) -> None:
    """Before starting a run outside the daemon: reap dead runs, then wait until ``pool`` has a free slot.

    Says at INFO who holds the pool (again whenever that changes), and raises :class:`PoolBusyError`
    with the same text after ``timeout_seconds``, so a caller never hangs silently. Best effort: a
    run started elsewhere in between may still take the slot first (the step then waits in Dagster).
    """
    deadline = time.monotonic() + timeout_seconds
    said: list[str] | None = None
    while True:
        reap_dead_runs(instance, log=log)
        blockers = pool_blockers(instance, pool)
        if not blockers:
            return
        message = describe_pool(instance, pool) or f"Pool {pool} is full."
        if blockers != said:
            log.info(message)
            said = blockers
        if time.monotonic() >= deadline:
            raise PoolBusyError(f"Gave up after {timeout_seconds:.0f} s: {message}")
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())) or 0.01)


def announce_pool_waits(
    instance: dg.DagsterInstance,
    pools: Iterable[str],
    *,
    log: Log = _LOG,
    announced: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Post an INFO engine event into each run waiting on a full pool, naming the runs it waits for.

    ``announced`` is what the previous call returned: a run is told again only when its blockers
    change. Returns the new state (keys ``"<pool>:<run id>:<step key>"``).
    """
    announced = announced or {}
    state: dict[str, list[str]] = {}
    if not _supports_pools(instance):
        return state
    for pool in pools:
        info = instance.event_log_storage.get_concurrency_info(pool)
        for step in info.pending_steps:
            if step.assigned_timestamp is not None:
                continue
            blockers = pool_blockers(instance, pool, exclude_run_id=step.run_id)
            if not blockers:
                continue
            key = f"{pool}:{step.run_id}:{step.step_key}"
            state[key] = blockers
            if announced.get(key) == blockers:
                continue
            run = instance.get_run_by_id(step.run_id)
            message = describe_pool(instance, pool, waiting_run_id=step.run_id)
            if run is None or run.is_finished or message is None:
                continue
            instance.report_engine_event(message, run, step_key=step.step_key)  # INFO in its run log
            log.info(f"Run {step.run_id} step {step.step_key}: {message}")
    return state


def build_dead_run_sensor(
    *,
    name: str = "casavi_dead_runs",
    pools: Sequence[str] = DEFAULT_POOLS,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor for the daemon path (dagster dev / dagster-daemon): reaps dead runs every tick and
    tells waiting runs, in their own run log at INFO, which runs hold their pool.

    It requests no runs. It evaluates in the code server, i.e. on the host where the default run
    launcher starts the run workers, so it can see their pids.
    """

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            "Marks runs whose process was killed as failed and frees their pool slots "
            f"({', '.join(pools)}); tells waiting runs which run holds the pool."
        ),
    )
    def _dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        acted = reap_dead_runs(context.instance, log=context.log)
        previous = json.loads(context.cursor) if context.cursor else {}
        state = announce_pool_waits(context.instance, pools, log=context.log, announced=previous)
        if state != previous:
            context.update_cursor(json.dumps(state, sort_keys=True))
        waiting = len(state)
        return dg.SkipReason(
            (f"Reaped/freed runs: {', '.join(acted)}. " if acted else "No dead runs. ")
            + (f"{waiting} step(s) waiting on a full pool." if waiting else "No step waits on a pool.")
        )

    return _dead_run_sensor


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m casavi_pipeline.runs.health``: reap dead runs on this instance ($DAGSTER_HOME),
    then say who holds each pool; with ``--wait S`` wait up to S seconds for a free slot."""
    parser = argparse.ArgumentParser(description=(main.__doc__ or "").strip())
    parser.add_argument("--pool", action="append", help="pool(s) to report (default: casavi_api)")
    parser.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long for a free slot")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _LOG.addHandler(handler)  # only this module's lines, not the storage's migration chatter
    _LOG.setLevel(logging.INFO)
    _LOG.propagate = False
    pools = args.pool or list(DEFAULT_POOLS)
    with dg.DagsterInstance.get() as instance:
        try:
            for pool in pools:
                if args.wait is not None:
                    wait_for_pool(instance, pool, timeout_seconds=args.wait)
                else:
                    reap_dead_runs(instance)
                    _LOG.info(describe_pool(instance, pool) or f"Pool {pool} has a free slot.")
        except PoolBusyError as err:
            _LOG.error(str(err))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
