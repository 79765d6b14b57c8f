"""The run store: SQLite (schema through sqlite-utils, rows in plain SQL).

One row per run (``runs``) and an append-only journal (``journal``). A state
change and its journal entry are written in one transaction, guarded by the
state machine and by the state the caller believed the run was in, so two
writers can never move a run along an edge that does not exist.

Writes go through one connection under a lock, each a short transaction; reads
use a connection of their own per thread (WAL mode: a reader sees what is
committed and never waits for a writer), except inside a transaction, which
reads its own writes.

The schema is versioned (table ``schema_version``); an older file is migrated
when it is opened, a newer one is refused with a message saying so.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import sqlite_utils

from states.machine import ACTIVE, IN_FLIGHT, State, Transition, next_state

from .models import JournalEntry, RunBrief, RunRecord

SCHEMA_VERSION = 3

Clock = Callable[[], float]


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 UTC with second precision."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    """RFC 3339 (``Z`` or an offset, with or without fractions) → Unix time."""
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # Nomad gives nanoseconds; Python takes at most microseconds
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tz}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _column_values(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` (RunRecord field -> value) as SQLite column values; unknown fields are refused."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in _RUN_COLUMNS:
            raise StoreError(f"no column {key!r} in runs")
        if key in ("secrets", "mounts"):
            value = json.dumps(list(value or []))
        elif key == "state":
            value = State(value).value
        out[key] = value
    return out


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


class StaleState(StoreError):
    """The run was not in the state the caller expected: someone else moved it."""


_STATES: dict[str, State] = {s.value: s for s in State}

_RUN_COLUMNS: dict[str, type] = {
    name: (int if name in ("attempt", "exit_code", "issue", "pull_number", "timeout_minutes", "failures") else str)
    for name in RunRecord.model_fields
}


_ADDED_LATER = {"trigger"}
"""Columns that later migrations add (so version 1 is created as it was)."""


def _migrate_0_to_1(db: sqlite_utils.Database) -> None:
    columns = {k: v for k, v in _RUN_COLUMNS.items() if k not in _ADDED_LATER}
    db["runs"].create(columns, pk="id", not_null={"kind", "state"})
    db["runs"].create_index(["state"])
    db["runs"].create_index(["action_id"])
    db["runs"].create_index(["issue", "kind"])
    db["journal"].create(
        {
            "id": int,
            "run_id": str,
            "at": str,
            "from_state": str,
            "to_state": str,
            "transition": str,
            "reason": str,
            "details": str,
        },
        pk="id",
    )
    db["journal"].create_index(["run_id"])
    db["kv"].create({"key": str, "value": str}, pk="key")


def _migrate_1_to_2(db: sqlite_utils.Database) -> None:
    """Sidecar runs remember the trigger that started them."""
    db["runs"].add_column("trigger", str)


def _migrate_2_to_3(db: sqlite_utils.Database) -> None:
    """A journal of operator controls that concern no single run (pause, resume, drain)."""
    db["control"].create({"id": int, "at": str, "action": str, "reason": str, "by": str}, pk="id")


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _migrate_0_to_1,
    2: _migrate_1_to_2,
    3: _migrate_2_to_3,
}


class RunStore:
    """Runs and their journal, in one SQLite file."""

    def __init__(self, path: Path | str, clock: Clock) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder for RECONCILER_DB={path}: {exc}") from None
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"RECONCILER_DB={path} is not a usable SQLite file: {exc}") from None
        self._conn = conn
        self.db = sqlite_utils.Database(conn)
        self._local = threading.local()
        self._readers: dict[int, sqlite3.Connection] = {}
        self._shared_reads = str(path) == ":memory:"
        self.observers: list[Callable[[RunRecord, str, str | None, str], None]] = []
        """Called after each committed transition with (run, transition, from_state, to_state); for metrics."""
        self._migrate()

    # -- schema ---------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            if "schema_version" not in self.db.table_names():
                self.db["schema_version"].create({"version": int})
                self.db["schema_version"].insert({"version": 0})
            version = int(self.db.execute("select max(version) from schema_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"RECONCILER_DB={self.path} has schema version {version}, newer than this reconciler "
                    f"understands ({SCHEMA_VERSION}); upgrade the reconciler or point RECONCILER_DB elsewhere"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                with self._tx():
                    MIGRATIONS[target](self.db)
                    self.db.execute("update schema_version set version = ?", [target])

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("select max(version) from schema_version").fetchone()[0])

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction under the store's lock; nested blocks become savepoints."""
        with self._lock, self.db.atomic():
            self._local.writing = getattr(self._local, "writing", 0) + 1
            try:
                yield
            finally:
                self._local.writing -= 1

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection to read from: this thread's own (WAL: readers never wait for the writer, and see
        what is committed), or the writer's inside a transaction (to see its own writes)."""
        if self._shared_reads or getattr(self._local, "writing", 0):
            with self._lock:
                yield self._conn
            return
        conn = getattr(self._local, "reader", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA cache_size=-1024")  # 1 MiB per reading thread
            with self._lock:
                alive = {t.ident for t in threading.enumerate()}
                for ident in [i for i in self._readers if i not in alive]:
                    self._readers.pop(ident).close()
                self._readers[threading.get_ident()] = conn
            self._local.reader = conn
        yield conn

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._reading() as conn:
            cursor = conn.execute(sql, list(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _tuples(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            return conn.execute(sql, list(params)).fetchall()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes in one transaction (each write inside is a savepoint: a refused one undoes only itself)."""
        with self._tx():
            yield

    def close(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
            self._conn.close()

    def now(self) -> str:
        return rfc3339(self._clock())

    # -- reads ----------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord | None:
        rows = self._rows("select * from runs where id = ?", [run_id])
        return RunRecord.from_row(rows[0]) if rows else None

    def find(self, ref: str) -> RunRecord | None:
        """A run by run id, action id (its newest run) or ``issue:<n>:<kind>`` (newest)."""
        run = self.get(ref)
        if run is not None:
            return run
        if ref.startswith("issue:"):
            parts = ref.split(":")
            if len(parts) >= 3 and parts[1].isdigit():
                rows = self._rows(
                    "select * from runs where issue = ? and kind = ? order by created_at desc, rowid desc limit 1",
                    [int(parts[1]), parts[2]],
                )
                return RunRecord.from_row(rows[0]) if rows else None
            return None
        rows = self._rows("select * from runs where action_id = ? order by created_at desc, rowid desc limit 1", [ref])
        return RunRecord.from_row(rows[0]) if rows else None

    def runs(self, states: Iterable[State] | None = None) -> list[RunRecord]:
        if states is None:
            rows = self._rows("select * from runs order by created_at, rowid")
        else:
            values = [State(s).value for s in states]
            marks = ",".join("?" * len(values))
            rows = self._rows(f"select * from runs where state in ({marks}) order by created_at, rowid", values)
        return [RunRecord.from_row(r) for r in rows]

    def briefs(
        self, states: Iterable[State], *, kinds: Iterable[str] | None = None, due_by: str | None = None, limit: int | None = None
    ) -> list[RunBrief]:
        """``RunBrief`` of the runs in ``states``, oldest first: cheap enough for every pass.

        ``kinds``: only runs of these kinds; ``due_by``: only runs without a ``next_try_at``
        later than this RFC 3339 time; ``limit``: at most this many.
        """
        values: list[Any] = [State(s).value for s in states]
        where = f"state in ({','.join('?' * len(values))})"
        if kinds is not None:
            wanted = list(kinds)
            where += f" and kind in ({','.join('?' * len(wanted))})"
            values.extend(wanted)
        if due_by is not None:
            where += " and (next_try_at is null or next_try_at <= ?)"
            values.append(due_by)
        sql = (
            "select id, kind, state, next_try_at, nomad_job_id, created_at, started_at, timeout_minutes"
            f" from runs where {where} order by created_at, rowid"
        )
        if limit is not None:
            sql += " limit ?"
            values.append(max(0, int(limit)))
        rows = self._tuples(sql, values)
        return [RunBrief(r[0], r[1], _STATES[r[2]], r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def earliest_retry(self, states: Iterable[State]) -> str | None:
        """The earliest ``next_try_at`` of the runs in ``states`` (None: no run is requeued)."""
        values = [State(s).value for s in states]
        rows = self._tuples(
            f"select min(next_try_at) from runs where state in ({','.join('?' * len(values))}) and next_try_at is not null", values
        )
        return rows[0][0] if rows else None

    def get_many(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """The runs with these ids that exist, in the order asked."""
        ids = list(run_ids)
        found: dict[str, RunRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in self._rows(f"select * from runs where id in ({','.join('?' * len(chunk))})", chunk):
                record = RunRecord.from_row(row)
                found[record.id] = record
        return [found[i] for i in ids if i in found]

    def active(self) -> list[RunRecord]:
        return self.runs(ACTIVE)

    def column_by_state(self, column: str, states: Iterable[State]) -> list[tuple[str, str | None]]:
        """``(id, column)`` of the runs in ``states``, without building records (cheap over long histories)."""
        if column not in RunRecord.model_fields:
            raise StoreError(f"no column {column!r}")
        values = [State(s).value for s in states]
        marks = ",".join("?" * len(values))
        return [(r[0], r[1]) for r in self._tuples(f"select id, {column} from runs where state in ({marks})", values)]

    def has_active_run(self, action_id: str) -> bool:
        values = [s.value for s in ACTIVE]
        rows = self._tuples(
            f"select 1 from runs where action_id = ? and state in ({','.join('?' * len(values))}) limit 1", [action_id, *values]
        )
        return bool(rows)

    def runs_for_action(self, action_id: str) -> list[RunRecord]:
        rows = self._rows("select * from runs where action_id = ? order by created_at, rowid", [action_id])
        return [RunRecord.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._tuples("select state, count(*) from runs group by state")
        return {state: n for state, n in rows}

    def oldest_by_state(self) -> dict[str, float]:
        """For each non-terminal state, the Unix time its oldest run entered it (for the stuck-run alert)."""
        values = [s.value for s in ACTIVE]
        rows = self._tuples(
            f"select state, min(state_since) from runs where state in ({','.join('?' * len(values))}) group by state", values
        )
        return {state: parse_rfc3339(since) for state, since in rows if since}

    def runs_for_jobs(self, job_ids: Iterable[str]) -> list[tuple[str, State, str]]:
        """``(id, state, nomad_job_id)`` of the in-flight runs whose Nomad child is one of ``job_ids``."""
        jobs = list(job_ids)
        states = [s.value for s in IN_FLIGHT]
        out: list[tuple[str, State, str]] = []
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            rows = self._tuples(
                f"select id, state, nomad_job_id from runs where state in ({','.join('?' * len(states))})"
                f" and nomad_job_id in ({','.join('?' * len(chunk))})",
                [*states, *chunk],
            )
            out.extend((r[0], _STATES[r[1]], r[2]) for r in rows)
        return out

    def changed_elsewhere(self) -> bool:
        """True when another connection (another process: ``reconciler cancel``, ``retry``, ``pause``) committed
        to the file since the last call. SQLite's ``data_version`` moves only for other connections' commits,
        and this process writes through one connection only."""
        with self._lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        last, self._data_version = getattr(self, "_data_version", None), version
        return last is not None and version != last

    def in_flight(self) -> int:
        values = [s.value for s in IN_FLIGHT]
        return int(self._tuples(f"select count(*) from runs where state in ({','.join('?' * len(values))})", values)[0][0])

    def journal(self, run_id: str) -> list[JournalEntry]:
        rows = self._rows("select * from journal where run_id = ? order by id", [run_id])
        out = []
        for r in rows:
            r = dict(r)
            r["details"] = json.loads(r["details"] or "{}")
            out.append(JournalEntry(**r))
        return out

    # -- writes ---------------------------------------------------------------
    def create(self, record: RunRecord, reason: str, details: dict[str, Any] | None = None) -> RunRecord:
        """Insert a new run in ``pending`` with its creation journaled; returns the stored run.

        Creating a run that already exists returns the existing one unchanged.
        """
        now = self.now()
        with self._tx():
            existing = self.get(record.id)
            if existing is not None:
                return existing
            rec = record.model_copy(
                update={"state": State.PENDING, "state_since": now, "created_at": now, "updated_at": now}
            )
            row = rec.to_row()
            self._conn.execute(
                f"insert into runs ({', '.join(row)}) values ({', '.join('?' * len(row))})", list(row.values())
            )
            self._append(rec.id, now, None, State.PENDING.value, "create", reason, details or {})
        self._notify(rec, "create", None, State.PENDING.value)
        return rec

    def transition(
        self,
        run_id: str,
        transition: Transition | str,
        *,
        expect: State | str,
        reason: str = "",
        changes: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Move a run along one edge of the state machine, journaled, in one transaction.

        ``expect`` is the state the caller read; if the run has moved since,
        :class:`StaleState` is raised and nothing is written.
        """
        trig = Transition(transition)
        now = self.now()
        update = _column_values(changes or {})
        with self._tx():
            found = self._conn.execute("select state from runs where id = ?", [run_id]).fetchone()
            if found is None:
                raise StoreError(f"no run {run_id!r}")
            before = State(found[0])
            if before != State(expect):
                raise StaleState(f"run {run_id} is {before.value}, not {State(expect).value}; someone else moved it")
            dest = next_state(before, trig)
            update.update({"state": dest.value, "updated_at": now})
            if dest != before or trig in (Transition.REBIND,):
                update["state_since"] = now
            row = self._write(run_id, update)
            self._append(run_id, now, before.value, dest.value, trig.value, reason, details or {})
        new = RunRecord.from_row(row)
        self._notify(new, trig.value, before.value, dest.value)
        return new

    def _write(self, run_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """UPDATE the run's columns in ``values`` and return the whole row as stored (inside a transaction)."""
        assignments = ", ".join(f'"{k}" = ?' for k in values)
        cursor = self._conn.execute(f"update runs set {assignments} where id = ?", [*values.values(), run_id])
        if cursor.rowcount == 0:
            raise StoreError(f"no run {run_id!r}")
        cursor = self._conn.execute("select * from runs where id = ?", [run_id])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone()))

    def _notify(self, run: RunRecord, transition: str, from_state: str | None, to_state: str) -> None:
        for observe in self.observers:
            try:
                observe(run, transition, from_state, to_state)
            except Exception:  # an observer must never break a transition
                pass

    def update(self, run_id: str, changes: dict[str, Any], *, note: str | None = None, details: dict[str, Any] | None = None) -> RunRecord:
        """Change fields of a run without changing its state (intents, requeues, waiting reasons)."""
        if "state" in changes:
            raise StoreError("state changes go through transition()")
        now = self.now()
        values = _column_values(changes)
        values["updated_at"] = now
        with self._tx():
            row = self._write(run_id, values)
            if note:
                self._append(run_id, now, row["state"], row["state"], "note", note, details or {})
        return RunRecord.from_row(row)

    def _append(
        self, run_id: str, at: str, from_state: str | None, to_state: str, transition: str, reason: str, details: dict[str, Any]
    ) -> None:
        self._conn.execute(
            "insert into journal (run_id, at, from_state, to_state, transition, reason, details) values (?, ?, ?, ?, ?, ?, ?)",
            [run_id, at, from_state, to_state, transition, reason, json.dumps(details, sort_keys=True, default=str)],
        )

    def control_event(self, action: str, *, reason: str = "", by: str = "") -> None:
        """Journal an operator control (pause, resume, drain, revoke-all)."""
        with self._tx():
            self.db["control"].insert({"at": self.now(), "action": action, "reason": reason, "by": by})

    def control_events(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._rows("select at, action, reason, by from control order by id desc limit ?", [limit])
        return list(reversed(rows))

    # -- small durable facts (last seen head, leadership...) -----------------
    def get_value(self, key: str) -> str | None:
        rows = self._tuples("select value from kv where key = ?", [key])
        return rows[0][0] if rows else None

    def set_value(self, key: str, value: str) -> None:
        with self._tx():
            self._conn.execute(
                "insert into kv (key, value) values (?, ?) on conflict(key) do update set value = excluded.value", [key, value]
            )
