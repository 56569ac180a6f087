"""The changeset: what must be written to casavi so it holds exactly the mapped objects.

Computed in DuckDB SQL: the mapped frames become (kind, ref_id, hash, payload) rows, built and hashed by
`api.payload_json_sql`, so the hash is of the exact body that will be sent. Against the snapshot's
`synced` table: new reference ids are creates, differing hashes updates. Synced ids no longer mapped leave
the scope: what becomes of them is CASAVI_DELETIONS (`state/deletions.py`: deleted now, or left in casavi
waiting for a person's approval, or kept), and only those to delete now are deletes. The result replaces
the snapshot's `pending` table, where `apply` picks it up, so a retried or resumed sync continues with
what is left rather than recomputing.

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
units moved or were deleted (`stage_street_moves`). A unit that leaves the scope but stays in casavi
(waiting for deletion, or kept) still names its street, so its property keeps that street
(`keep_streets`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from casavi_pipeline.casavi import api
from casavi_pipeline.casavi.api import ObjectKind
from casavi_pipeline.state import deletions as leaving
from casavi_pipeline.state.deletions import Deletions, Fate
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
    waiting: int = 0  # out of scope, left in casavi waiting for deletion (CASAVI_DELETIONS=approve)
    kept: int = 0  # out of scope, left in casavi for good (CASAVI_DELETIONS=keep)
    leaving_new: int = 0  # out of scope and not waiting from an earlier run, or deleted unapproved
    losing_contracts: int = 0  # contacts a PUT strips of at least one contract

    @property
    def writes(self) -> int:
        return self.create + self.update + self.delete + self.settle

    @property
    def guarded(self) -> int:
        """What the mass-deletion guard counts of this kind (`sync.guards`)."""
        return self.leaving_new + self.losing_contracts


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
            for change in (*CHANGES, "unchanged", "settle", "waiting", "kept")
            if change not in ("settle", "waiting", "kept") or getattr(changes, change)
        }


def compute_changeset(
    snapshot: Snapshot,
    frames: Mapping[ObjectKind, pd.DataFrame],
    *,
    identity: str | None = None,
    preview_rows: int = 10,
    deletions: Deletions = Deletions.APPROVE,
    left_out: pd.DataFrame | None = None,
) -> ChangesetSummary:
    """Diff the mapped objects against the snapshot and store the result as the pending changeset.

    `frames` holds one mapped frame per object kind (domain columns, one row per reference id). A kind
    missing from `frames` is left untouched rather than read as "delete everything". `identity` (the
    computing run's) is stored with it: the sync sends only a changeset that carries its own run's.
    `deletions` is CASAVI_DELETIONS; `left_out` (kind, ref_id) the ids the export composes that the sync
    rule leaves out, which tells "out of the sync rule" from "removed from the export".
    """
    con = snapshot.connection
    selects = []
    for kind, frame in frames.items():
        view = f"mapped_{kind.value}"
        con.register(view, frame)
        selects.append(hashed_payloads_sql(kind, _keeping_foreign(kind, view)))
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
        leaving.decide(con, deletions, list(frames), left_out)
        keep_streets(con)
        take_what_casavi_holds(con)  # after the desired bodies are final (`keep_streets`)
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
                SELECT kind, 'delete', 'delete', ref_id, NULL, NULL,
                       10 + list_position({_order_list(api.DELETE_ORDER)}, kind)
                FROM leaving WHERE fate = '{Fate.DELETE}'
            )
            """
        )
        stage_street_moves(con)
        desired = dict(con.execute("SELECT kind, count(*) FROM desired GROUP BY kind").fetchall())
        changeset = {
            "id": identity,
            "desired": desired,
            "kinds": [kind.value for kind in frames],
            "losing_contracts": losing_contracts(con),
        }
        snapshot.set_meta(META_CHANGESET, json.dumps(changeset, sort_keys=True))
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


_ADDRESSES = api.rule_of(ObjectKind.PROPERTY, "addresses").casavi
_UNIT_PROPERTY = api.rule_of(ObjectKind.UNIT, "property_id").casavi
_UNIT_ADDRESS = api.rule_of(ObjectKind.UNIT, "address").casavi


def _streets(body: dict) -> set[str]:
    return {a.get("street") for a in body.get(_ADDRESSES) or [] if isinstance(a, dict)} - {None}


def _with_streets(con: duckdb.DuckDBPyConnection, body: dict, streets: set[str]) -> tuple[str, str]:
    """(payload, hash) of a property body with exactly these streets, ordered as the mapping orders them."""
    record = api.record_from_read(ObjectKind.PROPERTY, {**body, _ADDRESSES: [{"street": s} for s in streets]})
    con.register("street_move", pd.DataFrame([record], columns=list(api.DOMAIN_COLUMNS[ObjectKind.PROPERTY])))
    try:
        [(_, _, payload, content_hash)] = con.execute(
            hashed_payloads_sql(ObjectKind.PROPERTY, "street_move")
        ).fetchall()
    finally:
        con.unregister("street_move")
    return payload, content_hash


def keep_streets(con: duckdb.DuckDBPyConnection) -> int:
    """Each property the mapping still wants (temp table `desired`) keeps the streets of its units that
    leave the scope but stay in casavi: casavi refuses a property dropping a street a unit names, and the
    unit is not written. Returns how many properties keep a street the mapping dropped."""
    kept: dict[str, set[str]] = {}
    for _, _, unit in leaving.staying_bodies(con, [ObjectKind.UNIT.value]):
        property_id, street = unit.get(_UNIT_PROPERTY), unit.get(_UNIT_ADDRESS)
        if isinstance(property_id, str) and isinstance(street, str):
            kept.setdefault(property_id, set()).add(street)
    if not kept:
        return 0
    rows = con.execute(
        "SELECT ref_id, payload FROM desired WHERE kind = ? AND list_contains(?, ref_id)",
        [ObjectKind.PROPERTY.value, list(kept)],
    ).fetchall()
    changed = 0
    for ref_id, wanted in rows:
        body = json.loads(wanted)
        if kept[ref_id] <= _streets(body):
            continue
        payload, content_hash = _with_streets(con, body, _streets(body) | kept[ref_id])
        con.execute(
            "UPDATE desired SET payload = ?, content_hash = ? WHERE kind = ? AND ref_id = ?",
            [payload, content_hash, ObjectKind.PROPERTY.value, ref_id],
        )
        changed += 1
    return changed


def stage_street_moves(con: duckdb.DuckDBPyConnection) -> int:
    """Split each pending property update that drops a street into the two PUTs casavi needs.

    The pending update becomes the property with its old *and* new streets; a `settle` operation with the
    body the mapping wants follows the units (apply sends it after the unit deletes). The old streets come
    from what we confirmed, else from casavi's read (`remote`). When the first PUT would send exactly what
    casavi holds (the update only drops streets), only the settling one is left. Returns how many
    properties were split.
    """
    rows = con.execute(
        """
        SELECT p.seq, p.payload, coalesce(s.payload, r.payload), s.content_hash
        FROM pending p
        LEFT JOIN synced s ON s.kind = p.kind AND s.ref_id = p.ref_id
        LEFT JOIN remote r ON r.kind = p.kind AND r.ref_id = p.ref_id
        WHERE p.kind = ? AND p.action = 'upsert' AND p.change = 'update'
        """,
        [ObjectKind.PROPERTY.value],
    ).fetchall()
    next_seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM pending").fetchall()[0][0]
    split = 0
    for seq, wanted, held, held_hash in rows:
        body = json.loads(wanted)
        old, new = _streets(json.loads(held)) if held else set(), _streets(body)
        if not old - new:
            continue
        payload, content_hash = _with_streets(con, body, old | new)
        con.execute(
            "INSERT INTO pending SELECT ?, kind, 'settle', 'settle', ref_id, content_hash, payload "
            "FROM pending WHERE seq = ?",
            [next_seq + split, seq],
        )
        if content_hash == held_hash:
            con.execute("DELETE FROM pending WHERE seq = ?", [seq])
        else:
            con.execute(
                "UPDATE pending SET payload = ?, content_hash = ? WHERE seq = ?", [payload, content_hash, seq]
            )
        split += 1
    return split


def _contract_keys(payload_sql: str) -> str:
    """The SQL list of a contact body's contracts as 'unitId|type|number' (what tells one contract from
    another; dates may change without a contract going)."""
    rule = api.rule_of(ObjectKind.CONTACT, "contracts")
    items = {item.name: item.casavi for item in rule.items}
    unit, kind, number = items["unit_id"], items["contract_type"], items["number"]
    shape = json.dumps([{unit: "VARCHAR", kind: "VARCHAR", number: "VARCHAR"}])
    return (
        f"coalesce(list_transform(from_json(json_extract({payload_sql}, '$.{rule.casavi}'), '{shape}'), "
        f"""lambda c: concat_ws('|', c."{unit}", c."{kind}", coalesce(c."{number}", ''))), [])"""
    )


def losing_contracts(con: duckdb.DuckDBPyConnection) -> int:
    """Contacts a pending PUT strips of a contract they hold in casavi (as last confirmed): a truncated
    contract file looks like this before it looks like deletions (the mass-deletion guard counts them)."""
    return con.execute(
        f"""
        SELECT count(*) FROM pending p JOIN synced s ON s.kind = p.kind AND s.ref_id = p.ref_id
        WHERE p.kind = ? AND p.action = 'upsert' AND p.change = 'update' AND s.payload IS NOT NULL
          AND NOT list_has_all({_contract_keys("p.payload")}, {_contract_keys("s.payload")})
        """,
        [ObjectKind.CONTACT.value],
    ).fetchone()[0]  # type: ignore[index]


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
    changeset = json.loads(snapshot.get_meta(META_CHANGESET) or "{}")
    desired: dict[str, int] = changeset.get("desired", {})
    fates = leaving.fate_counts(con)
    guarded = leaving.guard_counts(con)
    result = {}
    for kind in kinds:
        create = pending.get((kind.value, "create"), 0)
        update = pending.get((kind.value, "update"), 0)
        delete = pending.get((kind.value, "delete"), 0)
        n_synced = synced.get(kind.value, 0)
        covered = kind.value in changeset.get("kinds", desired)
        n_desired = desired.get(kind.value, 0) if covered else n_synced + create - delete
        result[kind] = KindChanges(
            kind=kind,
            desired=n_desired,
            synced=n_synced,
            create=create,
            update=update,
            delete=delete,
            unchanged=n_desired - create - update,
            settle=pending.get((kind.value, "settle"), 0),
            waiting=fates.get((kind.value, Fate.WAIT), 0) + fates.get((kind.value, Fate.BLOCKED), 0),
            kept=fates.get((kind.value, Fate.KEEP), 0),
            leaving_new=guarded.get(kind.value, 0),
            losing_contracts=changeset.get("losing_contracts", 0) if kind is ObjectKind.CONTACT else 0,
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
