"""The changeset: what must be written to casavi so it holds exactly the mapped objects.

Computed in DuckDB SQL: the mapped frames become (kind, ref_id, hash, payload) rows, built and hashed by
`api.payload_json_sql`, so the hash is of the exact body that will be sent. Against the snapshot's
`synced` table: new reference ids are creates, differing hashes updates, synced ids no longer mapped
deletes. The result replaces the snapshot's `pending` table, where `apply` picks it up, so a retried or
resumed sync continues with what is left rather than recomputing.

A value casavi holds that our model cannot express, set there by a person (a unit's usage Stellplatz:
`api.FieldRule.keep_foreign`), is casavi's: the desired body carries it as casavi's read has it
(`remote`), so an account holding it is adopted with no write, and a later PUT of that object (a new
name, say) does not overwrite it with the ERP's value. `foreign_values` reports them; one SQL condition
(`_held_sql`) decides for both. What casavi's read shows it already holds exactly as desired is taken as
synced rather than sent again (`take_what_casavi_holds`).

A building whose street changes is the one write that cannot be one PUT: casavi identifies a building by
its street, and refuses a property that drops a street its units still name (our model), while the units
can only move to a street the property already has. Such a property is sent twice: first with the old
and the new streets (so the units can move), and once more, *settled*, with only the new ones after the
units moved or were deleted (`stage_street_moves`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state.hashing import hashed_payloads_sql
from casavi_pipeline.state.snapshot import META_CHANGESET, Snapshot

CHANGES = ("create", "update", "delete")


@dataclass(frozen=True)
class KindChanges:
    kind: ObjectKind
    desired: int  # objects the mapping wants in casavi
    synced: int  # objects the snapshot says casavi holds
    create: int
    update: int
    delete: int
    unchanged: int
    settle: int = 0  # second PUTs of properties that drop a street (`stage_street_moves`)

    @property
    def writes(self) -> int:
        return self.create + self.update + self.delete + self.settle


@dataclass(frozen=True)
class ChangesetSummary:
    mandant: str
    kinds: dict[ObjectKind, KindChanges]
    preview: pd.DataFrame = field(
        repr=False
    )  # kind, change, ref_id, fields: the first few per kind and change

    @property
    def total_writes(self) -> int:
        return sum(k.writes for k in self.kinds.values())

    def counts(self) -> dict[str, int]:
        """Flat counts for Dagster metadata, e.g. {"unit/create": 3, ...}."""
        return {
            f"{kind.value}/{change}": getattr(changes, change)
            for kind, changes in self.kinds.items()
            for change in (*CHANGES, "unchanged", "settle")
            if change != "settle" or changes.settle
        }


def compute_changeset(
    snapshot: Snapshot,
    frames: Mapping[ObjectKind, pd.DataFrame],
    *,
    identity: str | None = None,
    preview_rows: int = 10,
) -> ChangesetSummary:
    """Diff the mapped objects against the snapshot and store the result as the pending changeset.

    `frames` holds one mapped frame per object kind (domain columns, one row per reference id). A kind
    missing from `frames` is left untouched rather than read as "delete everything". `identity` (the
    computing run's) is stored with it: the sync sends only a changeset that carries its own run's.
    """
    con = snapshot.connection
    selects = []
    for kind, frame in frames.items():
        view = f"mapped_{kind.value}"
        con.register(view, frame)
        selects.append(hashed_payloads_sql(kind, _keeping_foreign(kind, view)))
    kinds_sql = ", ".join(f"'{k.value}'" for k in frames)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE desired AS " + " UNION ALL ".join(selects))
        duplicates = con.execute(
            "SELECT kind, ref_id FROM desired GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 5"
        ).fetchall()
        if duplicates:
            listed = ", ".join(f"{kind} {ref_id}" for kind, ref_id in duplicates)
            raise ValueError(
                f"Mandant {snapshot.mandant}: the mapping produced duplicate reference ids ({listed}); "
                "the unique-ID check should have stopped this run — choose another CASAVI_ID_SEPARATOR."
            )
        take_what_casavi_holds(con)
        con.execute("DELETE FROM pending")
        # Upserts in dependency order, deletes in reverse (the order apply sends them in).
        con.execute(
            f"""
            INSERT INTO pending
            SELECT row_number() OVER (ORDER BY stage, ref_id) AS seq, kind, action, change, ref_id,
                   content_hash, payload
            FROM (
                SELECT d.kind, 'upsert' AS action,
                       CASE WHEN s.ref_id IS NULL THEN 'create' ELSE 'update' END AS change,
                       d.ref_id, d.content_hash, d.payload,
                       list_position({_order_list(api.UPSERT_ORDER)}, d.kind) AS stage
                FROM desired d LEFT JOIN synced s ON s.kind = d.kind AND s.ref_id = d.ref_id
                WHERE s.ref_id IS NULL OR s.content_hash <> d.content_hash
                UNION ALL
                SELECT s.kind, 'delete', 'delete', s.ref_id, NULL, NULL,
                       10 + list_position({_order_list(api.DELETE_ORDER)}, s.kind)
                FROM synced s ANTI JOIN desired d ON d.kind = s.kind AND d.ref_id = s.ref_id
                WHERE s.kind IN ({kinds_sql})
            )
            """
        )
        stage_street_moves(con)
        desired = dict(con.execute("SELECT kind, count(*) FROM desired GROUP BY kind").fetchall())
        snapshot.set_meta(META_CHANGESET, json.dumps({"id": identity, "desired": desired}, sort_keys=True))
        con.execute("DROP TABLE desired")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        for kind in frames:
            con.unregister(f"mapped_{kind.value}")
    return summarize(snapshot, kinds=list(frames), preview_rows=preview_rows)


def take_what_casavi_holds(con: duckdb.DuckDBPyConnection) -> int:
    """Record as synced what casavi's read (`remote`) shows it already holds exactly as desired; return
    how many. A read is casavi's confirmation as much as a write's answer, and sending the same body
    again is a write for nothing: e.g. a unit we wrote as PRIVATE that a person then made a Stellplatz,
    whose desired body now keeps that (casavi's API may not even take it back).

    Only for objects casavi changed after we last confirmed them (its `modified` stamp): a read older than
    our last write (a changeset recomputed without a new read) must not undo what that write recorded.
    Without a stamp, or for an object we never wrote, the changeset writes as before."""
    rows = con.execute(
        """
        INSERT OR REPLACE INTO synced
        SELECT d.kind, d.ref_id, d.content_hash, d.payload, now()
        FROM desired d
        JOIN remote r ON r.kind = d.kind AND r.ref_id = d.ref_id AND r.content_hash = d.content_hash
        JOIN synced s ON s.kind = d.kind AND s.ref_id = d.ref_id
        WHERE s.content_hash <> d.content_hash AND TRY_CAST(r.modified AS TIMESTAMPTZ) > s.synced_at
        """
    ).fetchall()
    return rows[0][0] if rows else 0


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _held_sql(kind: ObjectKind) -> str | None:
    """(ref_id, one column per `keep_foreign` field: casavi's value where it is foreign, else NULL) for
    the objects of `kind` in the snapshot's `remote` slice; None when the kind keeps no field."""
    rules = api.KEEP_FOREIGN_RULES[kind]
    if not rules:
        return None
    read = ", ".join(
        f"json_extract_string(payload, {_sql_text('$.' + rule.casavi)}) AS \"{rule.name}\"" for rule in rules
    )
    # `api.is_foreign`, in SQL: not null, not empty, not one of ours
    held = ", ".join(
        f'CASE WHEN "{rule.name}" <> \'\' AND "{rule.name}" NOT IN '
        f"({', '.join(_sql_text(v) for v in rule.enum or ())}) THEN \"{rule.name}\" END AS \"{rule.name}\""
        for rule in rules
    )
    return (
        f"SELECT ref_id, {held} FROM (SELECT ref_id, {read} FROM remote "
        f"WHERE kind = {_sql_text(kind.value)} AND payload IS NOT NULL)"
    )


def _keeping_foreign(kind: ObjectKind, view: str) -> str:
    """The mapped frame `view`, with casavi's foreign values in place of the ERP's (a subquery)."""
    held = _held_sql(kind)
    if held is None:
        return view
    kept = ", ".join(
        f'coalesce(h."{rule.name}", m."{rule.name}") AS "{rule.name}"' for rule in api.KEEP_FOREIGN_RULES[kind]
    )
    return f"(SELECT m.* REPLACE ({kept}) FROM {view} m LEFT JOIN ({held}) h ON h.ref_id = m.id)"


@dataclass(frozen=True)
class ForeignValues:
    """Values casavi holds outside our model that the changeset keeps: how many, and the first few as
    (kind, reference id, casavi field, value)."""

    count: int
    first: list[tuple[str, str, str, str]]

    def lines(self) -> list[str]:
        """One line per value listed; a value is named only if it looks like a code (`api.CODE_SHAPE`)."""
        lines = [
            f"{kind} {ref_id}: {name} "
            + (f"{value!r} is" if api.looks_like_code(value) else "holds a value")
            + " outside casavi_pipeline's model; kept as casavi holds it"
            for kind, ref_id, name, value in self.first
        ]
        if self.count > len(self.first):
            lines.append(f"… and {self.count - len(self.first)} more values outside the model, kept likewise")
        return lines


def foreign_values(snapshot: Snapshot, *, listed: int = 10) -> ForeignValues:
    """The foreign values (`api.FieldRule.keep_foreign`) in the snapshot's `remote` slice."""
    parts = []
    for kind in api.UPSERT_ORDER:
        held = _held_sql(kind)
        for rule in api.KEEP_FOREIGN_RULES[kind]:
            parts.append(
                f"SELECT {_sql_text(kind.value)} AS kind, ref_id, {_sql_text(rule.casavi)} AS field, "
                f'"{rule.name}" AS value FROM ({held}) WHERE "{rule.name}" IS NOT NULL'
            )
    if not parts:
        return ForeignValues(0, [])
    query = " UNION ALL ".join(parts)
    (count,) = snapshot.connection.execute(f"SELECT count(*) FROM ({query})").fetchone()  # type: ignore[misc]
    first = snapshot.connection.execute(f"{query} ORDER BY kind, ref_id, field LIMIT ?", [listed]).fetchall()
    return ForeignValues(count, [tuple(row) for row in first])  # type: ignore[misc]


def _streets(body: dict) -> set[str]:
    return {a.get("street") for a in body.get("addresses") or [] if isinstance(a, dict)} - {None}


def stage_street_moves(con: duckdb.DuckDBPyConnection) -> int:
    """Split each pending property update that drops a street into the two PUTs casavi needs.

    The pending update becomes the property with its old *and* new streets; a `settle` operation with the
    body the mapping wants follows the units (apply sends it after the unit deletes). The old streets come
    from what we confirmed, else from casavi's read (`remote`). Returns how many properties were split.
    """
    rows = con.execute(
        """
        SELECT p.seq, p.payload, coalesce(s.payload, r.payload)
        FROM pending p
        LEFT JOIN synced s ON s.kind = p.kind AND s.ref_id = p.ref_id
        LEFT JOIN remote r ON r.kind = p.kind AND r.ref_id = p.ref_id
        WHERE p.kind = ? AND p.action = 'upsert' AND p.change = 'update'
        """,
        [ObjectKind.PROPERTY.value],
    ).fetchall()
    next_seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM pending").fetchall()[0][0]
    split = 0
    for seq, wanted, held in rows:
        body = json.loads(wanted)
        old, new = _streets(json.loads(held)) if held else set(), _streets(body)
        if not old - new:
            continue
        addresses = api.rule_of(ObjectKind.PROPERTY, "addresses").casavi
        both = {**body, addresses: [{"street": street} for street in old | new]}
        record = api.record_from_read(ObjectKind.PROPERTY, both)  # streets ordered as the mapping orders them
        con.register(
            "street_move", pd.DataFrame([record], columns=list(api.DOMAIN_COLUMNS[ObjectKind.PROPERTY]))
        )
        [(_, _, payload, content_hash)] = con.execute(
            hashed_payloads_sql(ObjectKind.PROPERTY, "street_move")
        ).fetchall()
        con.unregister("street_move")
        con.execute(
            "INSERT INTO pending SELECT ?, kind, 'settle', 'settle', ref_id, content_hash, payload "
            "FROM pending WHERE seq = ?",
            [next_seq + split, seq],
        )
        con.execute(
            "UPDATE pending SET payload = ?, content_hash = ? WHERE seq = ?", [payload, content_hash, seq]
        )
        split += 1
    return split


def changed_fields(new_payload: str | None, old_payload: str | None) -> str:
    """The casavi field names that differ between two bodies, comma-separated (names only, never values:
    they hold personal data). A create lists every field it sets; a delete lists nothing."""
    if new_payload is None:
        return ""
    new = json.loads(new_payload)
    old = json.loads(old_payload) if old_payload else {}
    return ", ".join(
        name for name, value in new.items() if old.get(name) != value and (old or value is not None)
    )


def _order_list(order: tuple[ObjectKind, ...]) -> str:
    return "[" + ", ".join(f"'{k.value}'" for k in order) + "]"


def summarize(
    snapshot: Snapshot, *, kinds: list[ObjectKind] | None = None, preview_rows: int = 10
) -> ChangesetSummary:
    """Counts and a preview of the pending changeset (reference ids only: payloads hold personal data)."""
    con = snapshot.connection
    kinds = kinds or list(api.UPSERT_ORDER)
    pending = snapshot.pending_counts()
    synced = snapshot.synced_counts()
    desired: dict[str, int] = json.loads(snapshot.get_meta(META_CHANGESET) or "{}").get("desired", {})
    result = {}
    for kind in kinds:
        create = pending.get((kind.value, "create"), 0)
        update = pending.get((kind.value, "update"), 0)
        delete = pending.get((kind.value, "delete"), 0)
        n_synced = synced.get(kind.value, 0)
        n_desired = desired.get(kind.value, n_synced + create - delete)
        result[kind] = KindChanges(
            kind=kind,
            desired=n_desired,
            synced=n_synced,
            create=create,
            update=update,
            delete=delete,
            unchanged=n_desired - create - update,
            settle=pending.get((kind.value, "settle"), 0),
        )
    preview = con.execute(
        """
        SELECT p.kind, p.change, p.ref_id, p.payload, s.payload AS synced_payload FROM (
            SELECT kind, change, ref_id, payload, seq,
                   row_number() OVER (PARTITION BY kind, change ORDER BY seq) AS n
            FROM pending) p
        LEFT JOIN synced s ON s.kind = p.kind AND s.ref_id = p.ref_id
        WHERE n <= ? ORDER BY seq
        """,
        [preview_rows],
    ).df()
    preview["fields"] = [
        changed_fields(new, old)
        for new, old in zip(preview["payload"], preview["synced_payload"], strict=True)
    ]
    preview = preview[["kind", "change", "ref_id", "fields"]]
    return ChangesetSummary(mandant=snapshot.mandant, kinds=result, preview=preview)
