"""SQLite persistence of the sandbox: objects, the references between them, and issued tokens.

One connection in autocommit mode behind a re-entrant lock: uvicorn serves the API from one event loop,
but the lock keeps the store correct if it is ever called from threads (tests, a threaded server).
WAL with `synchronous=NORMAL` survives a killed process and keeps a write at one small transaction
without an fsync, so thousands of PUTs per second stay possible.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    internal_id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids of deleted objects are never reused
    collection  TEXT NOT NULL,
    ref_id      TEXT NOT NULL,
    payload     TEXT NOT NULL,                      -- the JSON body as stored
    modified    TEXT NOT NULL,                      -- ISO 8601 UTC with milliseconds: sorts as text
    UNIQUE (collection, ref_id)
);
CREATE INDEX IF NOT EXISTS objects_by_collection ON objects (collection, internal_id);
-- one row per reference from an object to another: answers "is it still referenced?" (409) by index
CREATE TABLE IF NOT EXISTS links (
    src_collection TEXT NOT NULL,
    src_id         TEXT NOT NULL,
    dst_collection TEXT NOT NULL,
    dst_id         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS links_by_src ON links (src_collection, src_id);
CREATE INDEX IF NOT EXISTS links_by_dst ON links (dst_collection, dst_id);
CREATE TABLE IF NOT EXISTS tokens (
    token      TEXT PRIMARY KEY,
    expires_at REAL NOT NULL                        -- unix time
);
"""


@dataclass(frozen=True)
class StoredObject:
    internal_id: int
    payload: dict[str, Any]
    modified: str


class SandboxStore:
    """Objects by (collection, reference ID), their outgoing references, and the tokens issued."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of atomic() blocks: only the outermost one begins and commits
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Tokens are checked on every request: keep them in memory, the table only survives restarts.
        now = time.time()
        self._tokens = {
            token: expires
            for token, expires in self._db.execute("SELECT token, expires_at FROM tokens")
            if expires > now
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction under the lock: checks and writes inside it see and leave a consistent store."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    # --- tokens ------------------------------------------------------------------------------------
    def add_token(self, token: str, expires_at: float) -> None:
        now = time.time()
        with self.atomic():
            self._db.execute("DELETE FROM tokens WHERE expires_at <= ?", (now,))
            self._db.execute("INSERT INTO tokens VALUES (?, ?)", (token, expires_at))
            self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = expires_at

    def token_expiry(self, token: str) -> float | None:
        """When the token expires (unix time), or None if it was never issued."""
        return self._tokens.get(token)

    # --- objects -----------------------------------------------------------------------------------
    def get(self, collection: str, ref_id: str) -> StoredObject | None:
        with self._lock:
            row = self._db.execute(
                "SELECT internal_id, payload, modified FROM objects WHERE collection = ? AND ref_id = ?",
                (collection, ref_id),
            ).fetchone()
        return _stored(row) if row else None

    def exists(self, collection: str, ref_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM objects WHERE collection = ? AND ref_id = ?", (collection, ref_id)
                ).fetchone()
                is not None
            )

    def page(
        self, collection: str, *, limit: int, modified_after: str | None = None, after_id: int | None = None
    ) -> list[StoredObject]:
        """Objects in a stable order (internal id), after the internal id `after_id` (keyset: an index
        seek, so the 850th page of a large account costs what the first does), optionally only those
        changed after a timestamp."""
        sql = "SELECT internal_id, payload, modified FROM objects WHERE collection = ? AND internal_id > ?"
        params: list[Any] = [collection, after_id or 0]
        if modified_after is not None:
            sql += " AND modified > ?"
            params.append(modified_after)
        sql += " ORDER BY internal_id LIMIT ?"
        params.append(limit)
        with self._lock:
            return [_stored(row) for row in self._db.execute(sql, params)]

    def upsert(
        self,
        collection: str,
        ref_id: str,
        payload: dict[str, Any],
        links: Iterable[tuple[str, str]],
        modified: str,
    ) -> tuple[StoredObject, bool]:
        """Create or replace one object and its references; returns it and whether it was created.

        An identical body keeps its `modified` timestamp, so an idempotent repeat is not a change.
        """
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        with self.atomic():
            row = self._db.execute(
                "SELECT internal_id, payload, modified FROM objects WHERE collection = ? AND ref_id = ?",
                (collection, ref_id),
            ).fetchone()
            if row is None:
                cursor = self._db.execute(
                    "INSERT INTO objects (collection, ref_id, payload, modified) VALUES (?, ?, ?, ?)",
                    (collection, ref_id, body, modified),
                )
                internal_id, created = int(cursor.lastrowid or 0), True
            else:
                internal_id, created = row[0], False
                if row[1] == body:
                    modified = row[2]
                else:
                    self._db.execute(
                        "UPDATE objects SET payload = ?, modified = ? WHERE internal_id = ?",
                        (body, modified, internal_id),
                    )
            self._db.execute(
                "DELETE FROM links WHERE src_collection = ? AND src_id = ?", (collection, ref_id)
            )
            self._db.executemany(
                "INSERT INTO links VALUES (?, ?, ?, ?)",
                [(collection, ref_id, dst_collection, dst_id) for dst_collection, dst_id in set(links)],
            )
        return StoredObject(internal_id, payload, modified), created

    def replace(
        self,
        collection: str,
        ref_id: str,
        payload: dict[str, Any],
        links: Iterable[tuple[str, str]],
        modified: str,
    ) -> StoredObject | None:
        """Overwrite an existing object and its references, always taking the new `modified` (an edit by
        a person is a change even if it saves the same values); None if there is no such object."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        with self.atomic():
            cursor = self._db.execute(
                "UPDATE objects SET payload = ?, modified = ? WHERE collection = ? AND ref_id = ?"
                " RETURNING internal_id",
                (body, modified, collection, ref_id),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            self._db.execute(
                "DELETE FROM links WHERE src_collection = ? AND src_id = ?", (collection, ref_id)
            )
            self._db.executemany(
                "INSERT INTO links VALUES (?, ?, ?, ?)",
                [(collection, ref_id, dst_collection, dst_id) for dst_collection, dst_id in set(links)],
            )
        return StoredObject(int(row[0]), payload, modified)

    def seed(
        self,
        objects: Sequence[tuple[str, str, dict[str, Any]]],
        links: Iterable[tuple[str, str, str, str]],
        modified: str,
    ) -> int:
        """Create or replace many objects at once, in one transaction; returns how many were new.

        `objects` are (collection, reference id, payload), `links` (source collection, source id, target
        collection, target id). Replaced objects keep their internal id and lose their old references.
        Every object takes `modified`, changed or not: an import rewrites what it imports.
        """
        rows = [
            (collection, ref_id, json.dumps(payload, ensure_ascii=False, separators=(",", ":")), modified)
            for collection, ref_id, payload in objects
        ]
        keys = [(collection, ref_id) for collection, ref_id, _, _ in rows]
        with self.atomic():
            # which of them exist already, found in one join rather than a lookup per object: only
            # their old references need dropping (a DELETE per object costs more than the inserts)
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seed_keys (collection TEXT, ref_id TEXT)")
            self._db.execute("DELETE FROM seed_keys")
            self._db.executemany("INSERT INTO seed_keys VALUES (?, ?)", keys)
            existing = self._db.execute(
                "SELECT DISTINCT k.collection, k.ref_id FROM seed_keys k"
                " JOIN objects o ON o.collection = k.collection AND o.ref_id = k.ref_id"
            ).fetchall()
            self._db.execute("DELETE FROM seed_keys")
            self._db.executemany(
                "INSERT INTO objects (collection, ref_id, payload, modified) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (collection, ref_id)"
                " DO UPDATE SET payload = excluded.payload, modified = excluded.modified",
                rows,
            )
            self._db.executemany("DELETE FROM links WHERE src_collection = ? AND src_id = ?", existing)
            self._db.executemany("INSERT INTO links VALUES (?, ?, ?, ?)", set(links))
        return len(set(keys)) - len(existing)

    def index_field(self, field: str) -> None:
        """Index a top-level payload field per collection, for `grouped_by` (created once per file)."""
        expression = _field_expression(field)
        with self.atomic():
            self._db.execute(
                f"CREATE INDEX IF NOT EXISTS {_index_name(field)} ON objects (collection, {expression})"
            )

    def grouped_by(
        self, collection: str, field: str, values: Iterable[str], *, also: str
    ) -> dict[tuple[str, str], list[str]]:
        """Reference ids of the objects whose `field` is one of `values`, grouped by (field, `also`)
        value, in internal-id order: e.g. the units of some properties, by property and street."""
        wanted = sorted(set(values))
        if not wanted:
            return {}
        expression, other = _field_expression(field), _field_expression(also)
        groups: dict[tuple[str, str], list[str]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = self._db.execute(
                    # INDEXED BY: without ANALYZE statistics SQLite would scan the whole collection
                    f"SELECT {expression}, {other}, ref_id FROM objects INDEXED BY {_index_name(field)}"
                    f" WHERE collection = ? AND {expression} IN ({', '.join('?' * len(chunk))})"
                    " ORDER BY internal_id",
                    [collection, *chunk],
                ).fetchall()
                for value, other_value, ref_id in rows:
                    groups.setdefault((value, other_value), []).append(ref_id)
        return groups

    def referrers(self, collection: str, ref_id: str) -> dict[str, int]:
        """How many objects of each collection still reference this one."""
        with self._lock:
            rows = self._db.execute(
                "SELECT src_collection, count(DISTINCT src_id) FROM links"
                " WHERE dst_collection = ? AND dst_id = ? GROUP BY src_collection",
                (collection, ref_id),
            ).fetchall()
        return dict(rows)

    def delete(self, collection: str, ref_id: str) -> bool:
        """Remove one object and its outgoing references; False if it did not exist."""
        with self.atomic():
            cursor = self._db.execute(
                "DELETE FROM objects WHERE collection = ? AND ref_id = ?", (collection, ref_id)
            )
            self._db.execute(
                "DELETE FROM links WHERE src_collection = ? AND src_id = ?", (collection, ref_id)
            )
        return cursor.rowcount > 0

    def dump(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every stored payload: collection → reference ID → payload, in internal-id order."""
        result: dict[str, dict[str, dict[str, Any]]] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT collection, ref_id, payload FROM objects ORDER BY internal_id"
            ).fetchall()
        for collection, ref_id, payload in rows:
            result.setdefault(collection, {})[ref_id] = json.loads(payload)
        return result

    def wipe(self) -> None:
        """Delete every object and reference (tokens stay valid: clients need not re-authenticate)."""
        with self.atomic():
            self._db.execute("DELETE FROM objects")
            self._db.execute("DELETE FROM links")


def _field_expression(field: str) -> str:
    """The SQL of a top-level payload field; the name is checked, as it becomes part of the SQL text."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
        raise ValueError(f"not a plain field name: {field!r}")
    return f"json_extract(payload, '$.{field}')"


def _index_name(field: str) -> str:
    return f"objects_by_{field}"  # field is checked by _field_expression


def _stored(row: tuple[int, str, str]) -> StoredObject:
    return StoredObject(row[0], json.loads(row[1]), row[2])
