"""A protocol double of the Nomad HTTP API (the facts of ``shared/docs/CONTRACTS.md``).

Real HTTP on loopback: python-nomad and ``requests`` talk to it unchanged.
What it honours, in the server's words:

* ``X-Nomad-Token`` (when the double has a token: missing -> 403 "Permission
  denied", wrong -> 403 "ACL token not found"), ``namespace=`` and ``region=``;
* ``X-Nomad-Index`` on reads, blocking queries ``?index=N&wait=30s``;
* plain-text error bodies; write failures are HTTP 500 with the server's message;
* register (``EnforceIndex``), parse (HCL2 -> job JSON, see :mod:`.nomad_hcl`),
  dispatch (idempotency token from the query or the body, the query winning;
  existing child -> its ID with an empty ``EvalID``; meta and payload rules;
  child ID formats), list stubs with ``meta=true``, summary, evaluations
  (``blocked`` with ``FailedTGAllocs`` when capacity is exhausted), allocations
  (``filter=`` expressions, see :mod:`.nomad_filter`; task events, ``Terminated`` exit codes, ``lost``/``unknown`` nodes with
  replacement allocations), logs (plain and framed), stop/purge, garbage
  collection, Variables with CAS and locks, the event stream.

Allocations really run: mode ``exec`` starts the task's own ``config.command``
as a local process (see :mod:`.nomad_exec`); mode ``simulate`` only pretends,
for benchmarks with a thousand allocations.

Scripting for tests (attributes and methods of :class:`NomadDouble`):
``placement_delay``, ``capacity``, ``script_next(...)``, ``race_drop_second``
(issue 26690), ``simulate``, ``gc()``, ``gc_after``, ``stop_behind_back()``,
``lose()``; inspection: ``children()``, ``allocations_of()``,
``processes_started()``, ``wait_until()``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import copy
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping
from urllib.parse import unquote

from doubles.http import DoubleServer, Request, Response, StreamingResponse
from doubles.nomad_filter import FilterError, compile_filter
from doubles.nomad_acl import ACL, PolicyError, host_volume_needs, namespace_need, parse_policy, variable_need
from doubles.nomad_exec import (
    AllocPaths,
    DriverFailureTask,
    ProcessTask,
    SimulatedTask,
    TaskHandle,
    Timer,
    TimerQueue,
    task_argv,
    task_environment,
)
from doubles.nomad_hcl import (
    NS_PER_SECOND,
    JobspecError,
    canonicalize_job,
    format_duration,
    parse_duration,
    parse_jobspec,
    validate_job,
)

__all__ = ["NomadDouble", "DISPATCH_PAYLOAD_LIMIT"]

DISPATCH_PAYLOAD_LIMIT = 16 * 1024
"""Bytes of (decoded) dispatch payload Nomad accepts."""

ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Nomad's JSON shows an unset ``time.Time`` (``StartedAt`` before the task started)."""

MAX_WAIT = 300.0
"""``nomad/structs/structs.go`` ``MaxBlockingRPCQueryTime``: a longer ``wait`` is cut to 300 s."""
DEFAULT_WAIT = 300.0

JobKey = tuple[str, str]
"""(namespace, job id)."""

SimulateHook = Callable[[dict[str, Any]], tuple[float, int, str]]



_VOLATILE_JOB_FIELDS = frozenset(
    {"Status", "StatusDescription", "CreateIndex", "ModifyIndex", "JobModifyIndex", "SubmitTime", "Version", "Stable"}
)
"""Fields the server sets on a job: dropped from a submitted job and ignored when comparing two specs."""

class _Fail(Exception):
    """An HTTP error reply: plain text, like Nomad's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- small helpers -------------------------------------------------------------------------


def _now_ns() -> int:
    return time.time_ns()


def _rfc3339(ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _bool_arg(value: str | None) -> bool:
    """Go's ``strconv.ParseBool``, which python-nomad's ``True`` also satisfies."""
    return (value or "").strip() in ("1", "t", "T", "true", "TRUE", "True")


def _field(body: Mapping[str, Any], name: str) -> Any:
    """A JSON field as Go decodes it: exact name, else a case-insensitive match (underscores matter)."""
    if name in body:
        return body[name]
    lowered = name.lower()
    for key, value in body.items():
        if key.lower() == lowered:
            return value
    return None


def _go_list(items: list[str]) -> str:
    """A Go ``%v`` of a string slice: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def _parse_wait(value: str | None) -> float:
    if not value:
        return DEFAULT_WAIT
    try:
        seconds = parse_duration(value) / NS_PER_SECOND
    except ValueError:
        raise _Fail(400, f"Invalid wait time: {value!r}") from None
    return min(max(seconds, 0.0), MAX_WAIT)


def _json_body(req: Request) -> dict[str, Any]:
    """The request's JSON object; 400 as Go's decoder answers malformed bodies."""
    try:
        body = req.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Fail(400, f"failed to decode request body: {exc}") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _Fail(400, "json: cannot unmarshal request body: expected a JSON object")
    return body


def _is_parameterized(job: Mapping[str, Any]) -> bool:
    return bool(job.get("ParameterizedJob")) and not job.get("Dispatched")


def _decode_payload(raw: Any) -> bytes:
    if raw in (None, ""):
        return b""
    if not isinstance(raw, str):
        raise _Fail(
            400, "json: cannot unmarshal payload into Go struct field JobDispatchRequest.Payload of type []uint8"
        )
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fail(400, f"illegal base64 data: {exc}") from None


# -- scripting ---------------------------------------------------------------------------------


@dataclass
class _Script:
    """How the next job matching ``match`` behaves (``NomadDouble.script_next``)."""

    match: Callable[[dict[str, Any]], bool]
    placement_delay: float | None = None
    never_start: str | None = None
    lose_after: float | None = None
    lose_as: str = "lost"
    replace: bool = True


@dataclass
class _JobRuntime:
    """What the double keeps about a job besides its JSON."""

    payload: bytes = b""
    script: _Script | None = None
    processes_started: int = 0
    lost_once: bool = False
    gc_timer: Timer | None = None


@dataclass
class _Alloc:
    """One allocation: its JSON (``data``) and the running task behind it."""

    data: dict[str, Any]
    key: JobKey
    group: str
    task: dict[str, Any]
    handle: TaskHandle | None = None
    disconnected: bool = False
    restart_timer: Timer | None = None
    paths: AllocPaths | None = None

    @property
    def id(self) -> str:
        return str(self.data["ID"])

    @property
    def task_state(self) -> dict[str, Any]:
        return self.data["TaskStates"][self.task["Name"]]


def _event(kind: str, display: str, **extra: Any) -> dict[str, Any]:
    """A Nomad ``TaskEvent``."""
    ev: dict[str, Any] = {
        "Type": kind,
        "Time": _now_ns(),
        "Message": extra.pop("Message", display),
        "DisplayMessage": display,
        "Details": extra.pop("Details", {}),
        "FailsTask": extra.pop("FailsTask", False),
        "ExitCode": extra.pop("ExitCode", 0),
        "Signal": extra.pop("Signal", 0),
    }
    ev.update(extra)
    return ev


# -- variables ------------------------------------------------------------------------------


@dataclass
class _Var:
    data: dict[str, Any]
    lock_expires: float | None = None
    lock_delay_until: float = 0.0


class _Variables:
    """Nomad Variables: durable, CAS-checked, lockable. All calls run under the double's lock."""

    def __init__(self, next_index: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        """Seconds, monotonic: lock TTLs and LockDelay run on it (tests may replace it to jump ahead)."""
        self._vars: dict[tuple[str, str], _Var] = {}
        self._next_index = next_index
        self.index = 1

    def _bump(self) -> int:
        self.index = self._next_index()
        return self.index

    def _expire(self, var: _Var) -> None:
        """Drop a lock whose holder stopped renewing for 2 x TTL; nobody may take it until LockDelay
        has passed after that (``nomad/locks.go`` ``CreateVariableLockTTLTimer``)."""
        lock = var.data.get("Lock")
        if lock and var.lock_expires is not None and self.clock() >= var.lock_expires:
            var.lock_delay_until = var.lock_expires + parse_seconds(lock.get("LockDelay"))
            var.lock_expires = None
            var.data["Lock"] = None
            idx = self._bump()
            var.data["ModifyIndex"] = idx
            var.data["ModifyTime"] = _now_ns()

    def get(self, ns: str, path: str) -> _Var | None:
        var = self._vars.get((ns, path))
        if var is not None:
            self._expire(var)
        return var

    @staticmethod
    def public(var: _Var, *, items: bool = True, lock: str = "none") -> dict[str, Any]:
        """The variable as a reply shows it. ``lock``: ``full`` (its holder), ``redacted`` (no ID), ``none``.

        Reads and lists show no lock, as Nomad does for any non-management token.
        """
        out = copy.deepcopy(var.data)
        if not items:
            out.pop("Items", None)
        if out.get("Lock") and lock == "redacted":
            out["Lock"] = {k: v for k, v in out["Lock"].items() if k != "ID"}
        if not out.get("Lock") or lock == "none":
            out.pop("Lock", None)
        return out

    def listing(self, ns: str, prefix: str) -> list[dict[str, Any]]:
        out = []
        for (vns, path), var in sorted(self._vars.items()):
            if (ns == "*" or vns == ns) and path.startswith(prefix):
                self._expire(var)
                out.append(self.public(var, items=False))
        return out

    @staticmethod
    def _zero(ns: str, path: str) -> Response:
        """The zero-valued variable Nomad answers a refused lock operation with
        (``nomad/state/state_store_variables.go``: "Avoid showing the variable data")."""
        body = {
            "Namespace": ns, "Path": path, "CreateIndex": 0, "CreateTime": 0, "ModifyIndex": 0, "ModifyTime": 0,
            "Lock": {"TTL": "", "LockDelay": "", "ID": ""}, "Items": None,
        }
        return Response.json(body, 409, {"X-Nomad-Index": "0"})

    def _conflict(self, ns: str, path: str, var: _Var | None) -> Response:
        body = (
            self.public(var, lock="redacted")
            if var
            else {"Namespace": ns, "Path": path, "CreateIndex": 0, "ModifyIndex": 0, "CreateTime": 0, "ModifyTime": 0}
        )
        return Response.json(body, 409, {"X-Nomad-Index": str(body.get("ModifyIndex", 0))})

    def _write(self, ns: str, path: str, var: _Var | None, items: dict[str, str] | None) -> _Var:
        idx = self._bump()
        now = _now_ns()
        if var is None:
            var = _Var(
                {"Namespace": ns, "Path": path, "CreateIndex": idx, "CreateTime": now, "Items": {}, "Lock": None}
            )
            self._vars[(ns, path)] = var
        if items is not None:
            var.data["Items"] = dict(items)
        var.data["ModifyIndex"] = idx
        var.data["ModifyTime"] = now
        return var

    def put(self, ns: str, path: str, body: Mapping[str, Any], cas: int | None) -> Response:
        items = _field(body, "Items") or {}
        if not items:
            raise _Fail(400, "variable missing required Items object")
        _check_items(items)
        var = self.get(ns, path)
        lock = var.data.get("Lock") if var else None
        given_lock = _field(body, "Lock") or {}
        if lock and given_lock.get("ID") != lock.get("ID"):
            return self._zero(ns, path)
        if cas is not None:
            current = var.data["ModifyIndex"] if var else 0
            if cas != current:
                return self._conflict(ns, path, var)
        var = self._write(ns, path, var, items)
        shown = "full" if lock else "none"
        return Response.json(self.public(var, lock=shown), 200, {"X-Nomad-Index": str(var.data["ModifyIndex"])})

    def delete(self, ns: str, path: str, cas: int | None) -> Response:
        var = self.get(ns, path)
        if var and var.data.get("Lock"):
            return self._zero(ns, path)
        if cas is not None:
            current = var.data["ModifyIndex"] if var else 0
            if cas != current:
                return self._conflict(ns, path, var)
        if var is not None:
            del self._vars[(ns, path)]
        idx = self._bump()
        return Response(204, b"", {"X-Nomad-Index": str(idx)})

    def lock_acquire(self, ns: str, path: str, body: Mapping[str, Any]) -> Response:
        # nomad/structs/variables.go: Canonicalize (zero TTL or LockDelay -> 15 s), then Validate.
        spec = _field(body, "Lock") or {}
        ttl = spec.get("TTL") or DEFAULT_LOCK
        delay = spec.get("LockDelay") or DEFAULT_LOCK
        problems = []
        if parse_seconds(ttl) < 0 or parse_seconds(delay) < 0:
            problems.append("Lock delay and TTL must be positive")
        if not MIN_LOCK_TTL <= parse_seconds(ttl) <= MAX_LOCK_TTL:
            problems.append("TTL must be between 10 seconds and 24 hours")
        if problems:
            raise _Fail(400, _multierror(problems))
        items = _field(body, "Items") or {}
        if items:
            _check_items(items)
        var = self.get(ns, path)
        if var is not None and (var.data.get("Lock") or self.clock() < var.lock_delay_until):
            return self._zero(ns, path)
        var = self._write(ns, path, var, dict(items))  # acquiring overwrites Items (nomad/state/state_store_variables.go)
        var.data["Lock"] = {"TTL": ttl, "LockDelay": delay, "ID": _new_id()}
        var.lock_expires = self.clock() + 2 * parse_seconds(ttl)
        var.lock_delay_until = 0.0
        return Response.json(self.public(var, lock="full"), 200, {"X-Nomad-Index": str(var.data["ModifyIndex"])})

    def lock_renew(self, ns: str, path: str, body: Mapping[str, Any]) -> Response:
        var = self.get(ns, path)
        if var is None:
            raise _Fail(404, "variable doesn't exist")
        lock = var.data.get("Lock")
        given = (_field(body, "Lock") or {}).get("ID")
        if not lock:
            raise _Fail(409, "variable doesn't hold a lock")
        if not given or given != lock.get("ID"):
            raise _Fail(409, "attempting to modify locked variable")
        var.lock_expires = self.clock() + 2 * parse_seconds(lock.get("TTL"))
        return Response.json(
            self.public(var, items=False, lock="full"), 200, {"X-Nomad-Index": str(var.data["ModifyIndex"])}
        )

    def lock_release(self, ns: str, path: str, body: Mapping[str, Any]) -> Response:
        if _field(body, "Items"):
            raise _Fail(400, "lock release operation doesn't take variable items")
        var = self.get(ns, path)
        given = (_field(body, "Lock") or {}).get("ID")
        if not given:
            raise _Fail(400, "release requires all lock information")
        if var is None:
            raise _Fail(404, "variable not found")
        if not var.data.get("Lock"):
            raise _Fail(500, "variable doesn't hold a lock")  # VarLockRelease's ErrorResponse
        if var.data["Lock"].get("ID") != given:
            return self._zero(ns, path)
        var.data["Lock"] = None
        var.lock_expires = None
        var = self._write(ns, path, var, None)
        return Response.json(self.public(var), 200, {"X-Nomad-Index": str(var.data["ModifyIndex"])})


def parse_seconds(duration: Any) -> float:
    """A Go duration string -> seconds."""
    try:
        return parse_duration(duration or "0") / NS_PER_SECOND
    except ValueError:
        raise _Fail(400, f"time: invalid duration {duration!r}") from None


DEFAULT_LOCK = "15s"
"""``nomad/structs/variables.go`` ``defaultLockTTL`` and ``defaultLockDelay``."""
MIN_LOCK_TTL, MAX_LOCK_TTL = 10.0, 24 * 3600.0
"""``minVariableLockTTL``, ``maxVariableLockTTL``."""
MAX_VARIABLE_SIZE = 65536
"""``maxVariableSize``: the Items' keys and values together."""


_VALID_VARIABLE_PATH = re.compile(r"^[a-zA-Z0-9-_~/]{1,128}$")


def _variable_path_problem(path: str) -> str | None:
    """``nomad/structs/variables.go`` ``ValidatePath``: the charset, and ``nomad/`` reserved."""
    if not _VALID_VARIABLE_PATH.match(path):
        return f"invalid path {json.dumps(path)}"
    parts = path.split("/")
    if parts[0] != "nomad":
        return None
    if len(parts) == 1:
        return ('"nomad" is a reserved top-level directory path, but you may write variables to "nomad/jobs", '
                '"nomad/job-templates", "nomad/sentinel", or below')
    if parts[1] in ("jobs", "sentinel") or (parts[1] == "job-templates" and len(parts) == 3):
        return None
    if parts[1] == "job-templates":
        return ('"nomad/job-templates" is a reserved directory path, but you may write variables at the level below it, '
                'for example, "nomad/job-templates/template-name"')
    return 'only paths at "nomad/jobs" or "nomad/job-templates" and below are valid paths under the top-level "nomad" directory'


def _multierror(problems: list[str]) -> str:
    """go-multierror's text, as Nomad returns a failed validation."""
    n = len(problems)
    return f"{n} error{'s' if n > 1 else ''} occurred:\n" + "".join(f"\t* {p}\n" for p in problems) + "\n"


def _check_items(items: Any) -> None:
    if not isinstance(items, dict) or not all(isinstance(v, str) for v in items.values()):
        raise _Fail(400, "json: cannot unmarshal variable items: values must be strings")
    if sum(len(k.encode()) + len(v.encode()) for k, v in items.items()) > MAX_VARIABLE_SIZE:
        raise _Fail(400, "variables are limited to 64KiB in total size")


# -- the double -------------------------------------------------------------------------------


class NomadDouble(DoubleServer):
    """A Nomad server (one region, one client node) on loopback.

    Use as a context manager, or ``start()`` / ``stop()``. ``stop()`` also kills
    every task process it started.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: Literal["exec", "simulate"] = "exec",
        capacity: int | None = None,
        gc_after: float | None = None,
        env: dict[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        if mode not in ("exec", "simulate"):
            raise ValueError(f"mode must be 'exec' or 'simulate', not {mode!r}")
        super().__init__("nomad", host, port)
        self.token = token
        self.acl_policies: dict[str, dict[str, Any]] = {}
        """ACL policies by name (``Rules`` in Nomad's policy language, ``JobACL``)."""
        self.acl_tokens: dict[str, list[str]] = {}
        """Client token secret -> the names of its policies (``token`` itself is the management token)."""
        self._acl_cache: dict[tuple[str, ...], ACL] = {}
        self.mode = mode
        self.capacity = capacity
        """At most this many allocations run at once; the rest wait behind a blocked evaluation."""
        self.gc_after = gc_after
        """Seconds after which a dead job is garbage-collected on its own (None: only ``gc()``)."""
        self.env: dict[str, str] = dict(env or {})
        """Base environment of every task process (e.g. PATH); the task's env and NOMAD_* go on top."""
        self.region = "global"
        self.placement_delay = 0.0
        """Seconds between an evaluation and its allocation's placement."""
        self.kill_timeout = 1.0
        """Upper bound on a task's ``kill_timeout`` when the double stops it (SIGTERM -> SIGKILL)."""
        self.race_drop_second = False
        """Issue 26690: concurrent dispatches with one token both succeed, the second child is dropped."""
        self.race_window = 0.2
        """Seconds a tokened dispatch waits for a concurrent one while ``race_drop_second`` is set."""
        self.simulate: SimulateHook = lambda job: (0.1, 0, "ok\n")
        """Mode ``simulate``: ``job -> (duration seconds, exit code, stdout)``."""
        self.event_heartbeat = 30.0
        """Seconds between ``{}`` heartbeats of the event stream (``nomad/event_endpoint.go``: 30 s)."""
        self.event_buffer_size = 100
        """Indexes the event buffer keeps (``nomad/config.go`` ``EventBufferSize``, default 100)."""
        self.event_stream_cut = False
        """Fault injection: while set, every open event stream is cut and new ones are refused (500)."""
        self.node_id = _new_id()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="nomad-double-"))

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._index = 10
        self._table_index = {"jobs": 1, "allocs": 1, "evals": 1}
        self._jobs: dict[JobKey, dict[str, Any]] = {}
        self._runtime: dict[JobKey, _JobRuntime] = {}
        self._allocs: dict[str, _Alloc] = {}
        self._job_allocs: dict[JobKey, list[str]] = collections.defaultdict(list)
        self._evals: dict[str, dict[str, Any]] = {}
        self._job_evals: dict[JobKey, list[str]] = collections.defaultdict(list)
        self._eval_work: dict[str, list[tuple[str, str | None]]] = {}
        self._blocked: collections.deque[str] = collections.deque()
        self._occupying: set[str] = set()
        self._orphans: list[TaskHandle] = []
        self._scripts: list[_Script] = []
        self._inflight: dict[tuple[str, str, str], threading.Event] = {}
        self._event_frames: collections.deque[tuple[int, list[dict[str, Any]]]] = collections.deque()
        self._events_pruned_upto = 0
        """The highest index whose frame has left the event buffer."""
        self._vars = _Variables(self._next_index)
        self._timers = TimerQueue()
        # Headers and body go out in separate writes; with Nagle's algorithm and delayed
        # ACKs every keep-alive request would then wait ~40 ms. The handler class is
        # this server's own, so this changes nothing for other doubles.
        self._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        self._register_routes()

    # ==========================================================================
    # Scripting and inspection (tests)
    # ==========================================================================

    def script_next(
        self,
        match: Callable[[dict[str, Any]], bool],
        *,
        placement_delay: float | None = None,
        never_start: str | None = None,
        lose_after: float | None = None,
        lose_as: Literal["lost", "unknown"] = "lost",
        replace: bool = True,
    ) -> None:
        """Script the next job (dispatched child or registered job) for which ``match(job)`` is true.

        ``never_start``: the task never starts; its ``Driver Failure`` event's
        ``DisplayMessage`` is this text. ``lose_after``: that many seconds after
        it started, the allocation turns ``lose_as`` (its process keeps running)
        and, with ``replace``, Nomad places a replacement that runs the command
        again.
        """
        if lose_as not in ("lost", "unknown"):
            raise ValueError("lose_as must be 'lost' or 'unknown'")
        with self._lock:
            self._scripts.append(_Script(match, placement_delay, never_start, lose_after, lose_as, replace))

    def gc(self) -> int:
        """Garbage-collect every dead job now: job, allocations, evaluations, idempotency token. Returns how many."""
        with self._lock:
            dead = [key for key, job in self._jobs.items() if job["Status"] == "dead"]
            for key in dead:
                self._remove_job(key)
            return len(dead)

    def stop_behind_back(self, job_id: str, *, purge: bool = False, namespace: str | None = None) -> None:
        """Stop (or purge) a job as an operator would, without going through HTTP."""
        with self._lock:
            key = self._find_key(job_id, namespace)
            if key is None:
                raise KeyError(f"no job {job_id!r}")
            self._stop_job(key, purge=purge)

    def lose(self, alloc_id: str, *, lose_as: Literal["lost", "unknown"] = "lost", replace: bool = True) -> None:
        """Turn a running allocation ``lost``/``unknown`` now (its node stopped heartbeating)."""
        with self._lock:
            self._lose(alloc_id, lose_as, replace)

    def children(self, parent: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every dispatched child of ``parent`` (full job JSON), oldest first."""
        with self._lock:
            kids = [
                copy.deepcopy(job)
                for (ns, _), job in self._jobs.items()
                if job.get("ParentID") == parent and (namespace is None or ns == namespace)
            ]
        return sorted(kids, key=lambda j: j["CreateIndex"])

    def job(self, job_id: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The job's JSON, or None."""
        with self._lock:
            key = self._find_key(job_id, namespace)
            return copy.deepcopy(self._jobs[key]) if key else None

    def allocations_of(self, job_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The job's allocations (oldest first)."""
        with self._lock:
            key = self._find_key(job_id, namespace)
            if key is None:
                return []
            return [copy.deepcopy(self._allocs[a].data) for a in self._job_allocs.get(key, []) if a in self._allocs]

    def evaluations_of(self, job_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            key = self._find_key(job_id, namespace)
            if key is None:
                return []
            return [copy.deepcopy(self._evals[e]) for e in self._job_evals.get(key, []) if e in self._evals]

    def processes_started(self, job_id: str, namespace: str | None = None) -> int:
        """How many times the job's task was started (replacements and restarts included)."""
        with self._lock:
            key = self._find_key(job_id, namespace)
            return self._runtime[key].processes_started if key else 0

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``condition()`` holds (re-checked on every state change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return bool(condition())
                self._cond.wait(min(remaining, 0.2))
        return True

    def register_jobspec(
        self, path: Path, variables: dict[str, str] | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        """Parse a jobspec file (the code path of ``/v1/jobs/parse``) and register it; returns the job."""
        job = parse_jobspec(Path(path).read_text(encoding="utf-8"), variables or {}, canonicalize=True)
        if namespace is not None:
            job["Namespace"] = namespace
        with self._lock:
            try:
                self._register(job, job.get("Namespace") or "default", enforce=None)
            except _Fail as fail:
                raise ValueError(f"registering {path}: {fail.message}") from None
            return copy.deepcopy(self._jobs[(job["Namespace"], job["ID"])])

    def stop(self) -> None:
        """Stop serving and kill every task process the double started."""
        with self._lock:
            self._closing = True
            handles = [a.handle for a in self._allocs.values() if a.handle is not None] + self._orphans
            self._cond.notify_all()
        for handle in handles:
            try:
                handle.force_kill()
            except Exception:  # a dead process must not stop the teardown
                pass
        self._timers.close()
        if self._thread is not None:
            super().stop()
        else:  # never started: there is no serve loop to shut down
            self._httpd.server_close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ==========================================================================
    # HTTP plumbing
    # ==========================================================================

    def _register_routes(self) -> None:
        r = self._add
        r("GET", r"/v1/status/leader", lambda req: Response.json(f"{self._httpd.server_address[0]}:4647"))
        r("POST", r"/v1/jobs/parse", self._h_parse)
        r("GET", r"/v1/jobs", self._h_jobs_list)
        r("POST", r"/v1/jobs", self._h_register)
        r("PUT", r"/v1/jobs", self._h_register)
        r("POST", r"/v1/job/(?P<id>.+)/dispatch", self._h_dispatch)
        r("PUT", r"/v1/job/(?P<id>.+)/dispatch", self._h_dispatch)
        r("GET", r"/v1/job/(?P<id>.+)/allocations", self._h_job_allocations)
        r("GET", r"/v1/job/(?P<id>.+)/evaluations", self._h_job_evaluations)
        r("GET", r"/v1/job/(?P<id>.+)/summary", self._h_job_summary)
        r("GET", r"/v1/job/(?P<id>.+)", self._h_job_read)
        r("POST", r"/v1/job/(?P<id>.+)", self._h_register)
        r("PUT", r"/v1/job/(?P<id>.+)", self._h_register)
        r("DELETE", r"/v1/job/(?P<id>.+)", self._h_job_stop)
        r("GET", r"/v1/allocations", self._h_allocs_list)
        r("GET", r"/v1/allocation/(?P<id>[^/]+)", self._h_alloc_read)
        r("GET", r"/v1/evaluation/(?P<id>[^/]+)", self._h_eval_read)
        r("GET", r"/v1/client/fs/logs/(?P<id>[^/]+)", self._h_logs)
        r("GET", r"/v1/vars", self._h_vars_list)
        r("GET", r"/v1/var/(?P<path>.+)", self._h_var_read)
        r("PUT", r"/v1/var/(?P<path>.+)", self._h_var_write)
        r("POST", r"/v1/var/(?P<path>.+)", self._h_var_write)
        r("DELETE", r"/v1/var/(?P<path>.+)", self._h_var_delete)
        r("GET", r"/v1/event/stream", self._h_event_stream)
        r("GET", r"/v1/acl/token/self", self._h_acl_token_self)
        r("GET", r"/v1/acl/policies", self._h_acl_policies)
        r("GET", r"/v1/acl/policy/(?P<name>[^/]+)", self._h_acl_policy_read)
        r("POST", r"/v1/acl/policy/(?P<name>[^/]+)", self._h_acl_policy_write)
        r("PUT", r"/v1/acl/policy/(?P<name>[^/]+)", self._h_acl_policy_write)
        r("DELETE", r"/v1/acl/policy/(?P<name>[^/]+)", self._h_acl_policy_delete)

    def _add(self, method: str, pattern: str, handler: Callable[[Request], Response]) -> None:
        def wrapped(req: Request) -> Response:
            req.params = {k: unquote(v) for k, v in req.params.items()}
            try:
                self._authorize(req)
                region = req.arg("region")
                if region and region != self.region:
                    raise _Fail(500, "No path to region")
                return handler(req)
            except _Fail as fail:
                return Response.text(fail.message, fail.status)

        self.add_route(method, pattern, wrapped)

    def _authorize(self, req: Request) -> None:
        """Resolve the token to an ACL and check the capability the endpoint needs (``nomad_acl``).

        With ``token`` None the double runs with ACLs disabled (everything allowed). ``token`` is
        the management token; tokens made by :meth:`add_token` carry policies.
        """
        req.acl = None  # type: ignore[attr-defined]
        if self.token is None:
            return
        if req.path == "/v1/status/leader":
            return  # Status.Leader checks no ACL
        supplied = req.header("x-nomad-token")
        auth = req.header("authorization") or ""
        if not supplied and auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        if not supplied:
            raise _Fail(403, "Permission denied")  # the anonymous token: no policy in this double
        if supplied == self.token:
            acl = ACL(management=True)
        elif supplied in self.acl_tokens:
            with self._lock:
                rules = tuple(self.acl_policies[name]["Rules"] for name in self.acl_tokens[supplied] if name in self.acl_policies)
            acl = self._acl_of(rules)
        else:
            raise _Fail(403, "ACL token not found")
        req.acl = acl  # type: ignore[attr-defined]
        req.token_secret = supplied  # type: ignore[attr-defined]
        ns = req.arg("namespace") or "default"
        if req.path.startswith("/v1/acl/"):
            if req.path == "/v1/acl/token/self":
                return  # any valid token reads itself
            held = self.acl_tokens.get(supplied, [])
            if req.method == "GET" and req.path.startswith("/v1/acl/policy/") and unquote(req.path.rsplit("/", 1)[1]) in held:
                return  # nomad/acl_endpoint.go GetPolicy: a token may read the policies it holds
            if not acl.management:
                raise _Fail(403, "Permission denied")
            return
        if req.path.startswith("/v1/var/"):
            path = unquote(req.path[len("/v1/var/"):])
            if not acl.allow_variable(ns, path, variable_need(req.method, req.query)):
                raise _Fail(403, "Permission denied")
            return
        need = namespace_need(req.method, req.path, req.query)
        if need is None:
            return
        if req.method in ("POST", "PUT") and (req.path == "/v1/jobs" or (req.path.startswith("/v1/job/") and not req.path.endswith("/dispatch"))):
            try:
                body = req.json() or {}
            except ValueError:
                body = {}
            job = _field(body, "Job") if isinstance(body, dict) else None
            ns = req.arg("namespace") or (_field(body, "Namespace") if isinstance(body, dict) else None) or (job or {}).get("Namespace") or "default"
            if not acl.allow_ns(ns, *need):
                raise _Fail(403, "Permission denied")
            for source, caps in host_volume_needs(job or {}):
                if not acl.allow_host_volume(source, *caps):
                    raise _Fail(403, "Permission denied")
            return
        if not acl.allow_ns(ns, *need):
            raise _Fail(403, "Permission denied")

    # -- ACL policies and tokens (``nomad/acl_endpoint.go``) -------------------------------------

    def _acl_of(self, rules: tuple[str, ...]) -> ACL:
        """The merged ACL of these policy texts, parsed once per distinct set (``nomad/acl.go`` keeps
        an ACL cache keyed by the token's policies, too). Keyed by the texts themselves, so a policy
        rewritten or deleted applies to the very next request; the ACL is only read after this."""
        acl = self._acl_cache.get(rules)
        if acl is None:
            acl = ACL.of(parse_policy(text) for text in rules)
            if len(self._acl_cache) >= 256:
                self._acl_cache.clear()
            self._acl_cache[rules] = acl
        return acl

    def set_policy(self, name: str, rules: str, *, description: str = "", job_acl: dict[str, Any] | None = None) -> None:
        """Store an ACL policy as ``POST /v1/acl/policy/<name>`` does (validated; raises PolicyError)."""
        parse_policy(rules)
        with self._lock:
            idx = self._next_index()
            old = self.acl_policies.get(name)
            self.acl_policies[name] = {
                "Name": name,
                "Description": description,
                "Rules": rules,
                "JobACL": copy.deepcopy(job_acl) if job_acl else None,
                "CreateIndex": old["CreateIndex"] if old else idx,
                "ModifyIndex": idx,
            }

    def add_token(self, policies: Iterable[str], secret: str | None = None) -> str:
        """A client token carrying ``policies`` (by name; a policy written later applies at once)."""
        secret = secret or str(uuid.uuid4())
        with self._lock:
            self.acl_tokens[secret] = list(policies)
        return secret

    def _acl_enabled(self) -> None:
        if self.token is None:
            raise _Fail(400, "ACL support disabled")  # nomad/acl_endpoint.go: ACLs off

    def _h_acl_token_self(self, req: Request) -> Response:
        """``GET /v1/acl/token/self`` (nomad/acl_endpoint.go ResolveToken): the caller's token."""
        self._acl_enabled()
        secret = getattr(req, "token_secret", "")
        management = secret == self.token
        body = {
            "AccessorID": str(uuid.uuid5(uuid.NAMESPACE_OID, secret)),
            "SecretID": secret,
            "Name": "management" if management else "client",
            "Type": "management" if management else "client",
            "Policies": [] if management else list(self.acl_tokens.get(secret, [])),
            "Global": False,
        }
        return self._reply(body, self._index)

    def _h_acl_policy_read(self, req: Request) -> Response:
        self._acl_enabled()
        name = req.params["name"]
        with self._lock:
            policy = self.acl_policies.get(name)
            if policy is None:
                raise _Fail(404, "ACL policy not found")
            return self._reply(copy.deepcopy(policy), policy["ModifyIndex"])

    def _h_acl_policy_write(self, req: Request) -> Response:
        self._acl_enabled()
        name = req.params["name"]
        body = _json_body(req)
        if _field(body, "Name") and _field(body, "Name") != name:
            raise _Fail(400, "ACL policy name does not match request path")
        try:
            self.set_policy(name, str(_field(body, "Rules") or ""), description=str(_field(body, "Description") or ""), job_acl=_field(body, "JobACL"))
        except PolicyError as exc:
            raise _Fail(400, f"policy 0 invalid: {exc}") from None
        return Response(200, b"", {"X-Nomad-Index": str(self.acl_policies[name]["ModifyIndex"])})

    def _h_acl_policy_delete(self, req: Request) -> Response:
        self._acl_enabled()
        with self._lock:
            self.acl_policies.pop(req.params["name"], None)
            idx = self._next_index()
        return Response(200, b"", {"X-Nomad-Index": str(idx)})

    def _h_acl_policies(self, req: Request) -> Response:
        self._acl_enabled()
        with self._lock:
            stubs = [{k: p[k] for k in ("Name", "Description", "CreateIndex", "ModifyIndex")} for _, p in sorted(self.acl_policies.items())]
            return self._reply(stubs, max([p["ModifyIndex"] for p in self.acl_policies.values()] or [1]))

    def injected_error(self, req: Request) -> Response:
        """An injected failure looks like a leader election in progress."""
        return Response.text("No cluster leader", 500)

    def not_found(self, req: Request) -> Response:
        return Response.text("Invalid URL path", 404)

    @staticmethod
    def _ns(req: Request) -> str:
        return req.arg("namespace") or "default"

    def _reply(self, data: Any, index: int, status: int = 200) -> Response:
        return Response.json(
            data,
            status,
            {"X-Nomad-Index": str(max(index, 1)), "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"},
        )

    def _blocking(
        self, req: Request, compute: Callable[[], tuple[Any, int]], index_of: Callable[[], int] | None = None
    ) -> Response:
        """Answer a read; with ``?index=N`` wait until its index passes N or ``wait`` ends.

        ``index_of``: the answer's index without building the answer (a long list is then
        built once, when the wait ends, not at every change anywhere in the cluster).
        """
        raw = req.arg("index")
        try:
            min_index = int(raw) if raw else 0
        except ValueError:
            raise _Fail(400, f"Invalid index: {raw!r}") from None
        deadline = time.monotonic() + _parse_wait(req.arg("wait"))
        with self._cond:
            while True:
                if index_of is not None:
                    index = index_of()
                else:
                    data, index = compute()
                remaining = deadline - time.monotonic()
                if min_index <= 0 or index > min_index or remaining <= 0 or self._closing:
                    break
                self._cond.wait(min(remaining, 1.0))
            if index_of is not None:
                data, index = compute()
            data = copy.deepcopy(data)
        return self._reply(data, index)

    def _next_index(self) -> int:
        self._index += 1
        self._cond.notify_all()
        return self._index

    def _touch(self, table: str) -> int:
        idx = self._next_index()
        self._table_index[table] = idx
        return idx

    def _find_key(self, job_id: str, namespace: str | None) -> JobKey | None:
        if namespace is not None:
            return (namespace, job_id) if (namespace, job_id) in self._jobs else None
        for key in self._jobs:
            if key[1] == job_id:
                return key
        return None

    def _job_or_404(self, req: Request) -> tuple[JobKey, dict[str, Any]]:
        key = (self._ns(req), req.params["id"])
        job = self._jobs.get(key)
        if job is None:
            raise _Fail(404, "job not found")
        return key, job

    # ==========================================================================
    # Jobs: parse, register, read, list, stop
    # ==========================================================================

    def _h_parse(self, req: Request) -> Response:
        body = _json_body(req)
        hcl = _field(body, "JobHCL")
        if not hcl:
            raise _Fail(400, "error parsing: empty JobHCL")
        try:
            job = parse_jobspec(hcl, _field(body, "Variables"), canonicalize=bool(_field(body, "Canonicalize")))
        except JobspecError as exc:
            raise _Fail(400, str(exc)) from None
        return Response.json(job)

    def _h_register(self, req: Request) -> Response:
        body = _json_body(req)
        job = _field(body, "Job")
        if not isinstance(job, dict):
            raise _Fail(400, "Job must be specified")
        path_id = req.params.get("id")
        if path_id is not None and job.get("ID") and job.get("ID") != path_id:
            raise _Fail(400, "Job ID does not match name")
        enforce = None
        if _field(body, "EnforceIndex"):
            enforce = int(_field(body, "JobModifyIndex") or 0)
        # As Nomad's namespaceForJob: the query parameter wins, then the request body, then the job.
        ns = req.arg("namespace") or _field(body, "Namespace") or job.get("Namespace") or "default"
        with self._lock:
            reply = self._register(job, ns, enforce=enforce)
        return Response.json(reply)

    def _register(self, raw_job: Mapping[str, Any], ns: str, *, enforce: int | None) -> dict[str, Any]:
        job = canonicalize_job(raw_job, namespace=ns)
        job["Namespace"] = ns
        problems = validate_job(job)
        if problems:
            raise _Fail(
                500,
                f"{len(problems)} error{'s' if len(problems) > 1 else ''} occurred:\n"
                + "".join(f"\t* {p}\n" for p in problems)
                + "\n",
            )
        key = (ns, job["ID"])
        existing = self._jobs.get(key)
        if enforce is not None:
            if existing is not None and enforce == 0:
                raise _Fail(500, "Enforcing job modify index 0: job already exists")
            if existing is not None and enforce != existing["JobModifyIndex"]:
                raise _Fail(
                    500,
                    f"Enforcing job modify index {enforce}: "
                    f"job exists with conflicting job modify index: {existing['JobModifyIndex']}",
                )
            if existing is None and enforce != 0:
                raise _Fail(500, f"Enforcing job modify index {enforce}: job does not exist")
        if existing is None and job.get("Dispatched"):
            raise _Fail(500, "job can't be submitted with 'Dispatched' set")
        if existing is not None:
            if existing["Type"] != job["Type"]:
                raise _Fail(500, f'cannot update job from type "{existing["Type"]}" to "{job["Type"]}"')
            if _is_parameterized(existing) != _is_parameterized(job):
                raise _Fail(
                    500,
                    (
                        "cannot update parameterized job to being non-parameterized"
                        if _is_parameterized(existing)
                        else "cannot update non-parameterized job to being parameterized"
                    ),
                )
            if not self._spec_changed(existing, job):
                # nomad/job_endpoint.go Register: an unchanged spec is not written; the reply's
                # JobModifyIndex is the job's ModifyIndex, and a service or batch job (not
                # parameterized, not periodic) still gets a forced evaluation.
                reply = {
                    "EvalID": "",
                    "EvalCreateIndex": 0,
                    "JobModifyIndex": existing["ModifyIndex"],
                    "Warnings": "",
                    "Index": existing["ModifyIndex"],
                }
                if not _is_parameterized(existing) and not existing.get("Periodic"):
                    ev = self._new_eval(key, "job-register", [])
                    self._update_eval(ev, Status="complete")
                    reply.update(EvalID=ev["ID"], EvalCreateIndex=ev["CreateIndex"], Index=ev["CreateIndex"])
                return reply
        idx = self._touch("jobs")
        for volatile in _VOLATILE_JOB_FIELDS:
            job.pop(volatile, None)
        job.update(
            Status="pending",
            StatusDescription="",
            CreateIndex=existing["CreateIndex"] if existing else idx,
            ModifyIndex=idx,
            JobModifyIndex=idx,
            SubmitTime=_now_ns(),
            Version=existing["Version"] + 1 if existing else 0,
            Stable=False,
        )
        self._jobs[key] = job
        runtime = self._runtime.setdefault(key, _JobRuntime())
        if runtime.gc_timer is not None:
            runtime.gc_timer.cancel()
            runtime.gc_timer = None
        self._publish("Job", "JobRegistered", job["ID"], ns, {"Job": job}, idx)
        reply = {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": idx, "Warnings": "", "Index": idx}
        if not _is_parameterized(job) and not job.get("Periodic"):
            if runtime.script is None:
                runtime.script = self._take_script(job)
            ev = self._new_eval(key, "job-register", self._initial_work(job))
            reply.update(EvalID=ev["ID"], EvalCreateIndex=ev["CreateIndex"], Index=ev["CreateIndex"])
            self._schedule_eval(ev["ID"], self._placement_delay(key))
        self._refresh_job(key)
        return reply

    @staticmethod
    def _spec_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        strip = lambda j: {k: v for k, v in j.items() if k not in _VOLATILE_JOB_FIELDS}  # noqa: E731
        return json.dumps(strip(old), sort_keys=True, default=str) != json.dumps(
            strip(new), sort_keys=True, default=str
        )

    def _h_job_read(self, req: Request) -> Response:
        def compute() -> tuple[Any, int]:
            _, job = self._job_or_404(req)
            return job, job["ModifyIndex"]

        return self._blocking(req, compute)

    def _stub(self, key: JobKey, job: Mapping[str, Any], meta: bool) -> dict[str, Any]:
        stub = {
            "ID": job["ID"],
            "ParentID": job.get("ParentID", ""),
            "Name": job.get("Name", job["ID"]),
            "Namespace": key[0],
            "Datacenters": job.get("Datacenters"),
            "NodePool": job.get("NodePool", "default"),
            "Type": job["Type"],
            "Priority": job.get("Priority", 50),
            "Periodic": bool(job.get("Periodic")),
            "ParameterizedJob": bool(job.get("ParameterizedJob")),
            "Stop": job.get("Stop", False),
            "Status": job["Status"],
            "StatusDescription": job.get("StatusDescription", ""),
            "JobSummary": self._summary(key),
            "CreateIndex": job["CreateIndex"],
            "ModifyIndex": job["ModifyIndex"],
            "JobModifyIndex": job["JobModifyIndex"],
            "SubmitTime": job["SubmitTime"],
        }
        if meta:
            stub["Meta"] = job.get("Meta")
        return stub

    def _h_jobs_list(self, req: Request) -> Response:
        ns = self._ns(req)
        prefix = req.arg("prefix") or ""
        meta = _bool_arg(req.arg("meta"))
        kept = self._list_filter(req)  # evaluated on the job itself, as Job.List's paginator does

        def compute() -> tuple[Any, int]:
            stubs = [
                self._stub(key, job, meta)
                for key, job in sorted(self._jobs.items())
                if (ns == "*" or key[0] == ns) and key[1].startswith(prefix) and kept(job)
            ]
            return stubs, self._table_index["jobs"]

        return self._blocking(req, compute)

    def _summary(self, key: JobKey) -> dict[str, Any]:
        job = self._jobs[key]
        groups = {
            g["Name"]: {"Queued": 0, "Complete": 0, "Failed": 0, "Running": 0, "Starting": 0, "Lost": 0, "Unknown": 0}
            for g in job.get("TaskGroups") or []
        }
        column = {
            "pending": "Starting",
            "running": "Running",
            "complete": "Complete",
            "failed": "Failed",
            "lost": "Lost",
            "unknown": "Unknown",
        }
        for alloc_id in self._job_allocs.get(key, []):
            alloc = self._allocs.get(alloc_id)
            if alloc is not None and alloc.group in groups:
                groups[alloc.group][column[alloc.data["ClientStatus"]]] += 1
        for eval_id in self._job_evals.get(key, []):
            for group, _ in self._eval_work.get(eval_id, []):
                if group in groups:
                    groups[group]["Queued"] += 1
        children = {"Pending": 0, "Running": 0, "Dead": 0}
        if _is_parameterized(job):
            for (ns, _), other in self._jobs.items():
                if ns == key[0] and other.get("ParentID") == job["ID"]:
                    children[other["Status"].capitalize()] += 1
        return {
            "JobID": job["ID"],
            "Namespace": key[0],
            "Summary": groups,
            "Children": children,
            "CreateIndex": job["CreateIndex"],
            "ModifyIndex": job["ModifyIndex"],
        }

    def _h_job_summary(self, req: Request) -> Response:
        def compute() -> tuple[Any, int]:
            key, _ = self._job_or_404(req)
            return self._summary(key), self._table_index["jobs"]

        return self._blocking(req, compute)

    def _h_job_stop(self, req: Request) -> Response:
        purge = _bool_arg(req.arg("purge"))
        with self._lock:
            key = (self._ns(req), req.params["id"])
            if key not in self._jobs:
                # nomad/job_endpoint.go Deregister: a missing job is no error (ACL checked first).
                return Response.json({"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "Index": self._index})
            reply = self._stop_job(key, purge=purge)
        return Response.json(reply)

    def _stop_job(self, key: JobKey, *, purge: bool) -> dict[str, Any]:
        job = self._jobs[key]
        idx = self._touch("jobs")
        job["Stop"] = True
        job["ModifyIndex"] = idx
        job["JobModifyIndex"] = idx
        job["Version"] = job.get("Version", 0) + 1
        for eval_id in list(self._job_evals.get(key, [])):
            ev = self._evals.get(eval_id)
            if ev is not None and ev["Status"] in ("pending", "blocked"):
                self._eval_work.pop(eval_id, None)
                self._update_eval(ev, Status="canceled", StatusDescription="evaluation canceled: job stopped")
        stop_eval = self._new_eval(key, "job-deregister", [])
        self._update_eval(stop_eval, Status="complete")
        for alloc_id in list(self._job_allocs.get(key, [])):
            self._stop_alloc(alloc_id, "alloc not needed due to job update")
        self._publish("Job", "JobDeregistered", job["ID"], key[0], {"Job": job}, idx)
        self._refresh_job(key)
        if purge:
            self._remove_job(key)
        return {
            "EvalID": stop_eval["ID"],
            "EvalCreateIndex": stop_eval["CreateIndex"],
            "JobModifyIndex": idx,
            "Index": stop_eval["ModifyIndex"],
        }

    def _remove_job(self, key: JobKey) -> None:
        """Purge or garbage-collect: the job, its allocations and evaluations vanish (404)."""
        job = self._jobs.pop(key, None)
        runtime = self._runtime.pop(key, None)
        if runtime is not None and runtime.gc_timer is not None:
            runtime.gc_timer.cancel()
        for alloc_id in self._job_allocs.pop(key, []):
            alloc = self._allocs.pop(alloc_id, None)
            self._occupying.discard(alloc_id)
            if alloc is not None and alloc.handle is not None and alloc.handle.alive:
                self._orphans.append(alloc.handle)
        for eval_id in self._job_evals.pop(key, []):
            self._evals.pop(eval_id, None)
            self._eval_work.pop(eval_id, None)
            if eval_id in self._blocked:
                self._blocked.remove(eval_id)
        self._touch("allocs")
        self._touch("evals")
        idx = self._touch("jobs")
        if job is not None:
            self._publish("Job", "JobDeregistered", job["ID"], key[0], {"Job": job}, idx)
        self._unblock()

    # ==========================================================================
    # Dispatch
    # ==========================================================================

    def _h_dispatch(self, req: Request) -> Response:
        ns = self._ns(req)
        parent_id = req.params["id"]
        body = _json_body(req)
        body_job = _field(body, "JobID")
        if body_job and body_job != parent_id:
            raise _Fail(400, "Job ID does not match")
        meta = _field(body, "Meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise _Fail(
                400,
                "json: cannot unmarshal Meta into Go struct field JobDispatchRequest.Meta of type map[string]string",
            )
        payload = _decode_payload(_field(body, "Payload"))
        token = req.arg("idempotency_token") or _field(body, "IdempotencyToken") or ""
        template = _field(body, "IdPrefixTemplate") or ""
        race_key = (ns, parent_id, token)
        with self._lock:
            parent = self._checked_parent(ns, parent_id, meta, payload)
            if token:
                existing = self._child_with_token(ns, parent_id, token)
                if existing is not None:
                    return Response.json(
                        {
                            "DispatchedJobID": existing["ID"],
                            "EvalID": "",
                            "EvalCreateIndex": 0,
                            "JobCreateIndex": existing["CreateIndex"],
                            "Index": existing["ModifyIndex"],
                        }
                    )
            inflight = self._inflight.get(race_key) if (token and self.race_drop_second) else None
            if inflight is None and token and self.race_drop_second:
                self._inflight[race_key] = threading.Event()
        if inflight is not None:
            return self._phantom_dispatch(parent_id, template, inflight)
        if token and self.race_drop_second:
            time.sleep(self.race_window)  # the window in which a concurrent dispatch slips past the token check
        try:
            with self._lock:
                parent = self._checked_parent(ns, parent_id, meta, payload)
                reply = self._create_child(ns, parent, meta, payload, token, template)
        finally:
            if token and self.race_drop_second:
                with self._lock:
                    done = self._inflight.pop(race_key, None)
                if done is not None:
                    done.set()
        return Response.json(reply)

    def _phantom_dispatch(self, parent_id: str, template: str, first_done: threading.Event) -> Response:
        """Issue 26690: the second of two concurrent dispatches is applied after the first and dropped."""
        first_done.wait(timeout=self.race_window + 5)
        with self._lock:
            idx = self._next_index()
        return Response.json(
            {
                "DispatchedJobID": self._child_id(parent_id, template),
                "EvalID": _new_id(),
                "EvalCreateIndex": idx,
                "JobCreateIndex": idx,
                "Index": idx,
            }
        )

    def _checked_parent(self, ns: str, parent_id: str, meta: Mapping[str, str], payload: bytes) -> dict[str, Any]:
        """The parent job, or the 500 Nomad answers (messages as the server words them)."""
        parent = self._jobs.get((ns, parent_id))
        if parent is None:
            raise _Fail(500, "parameterized job not found")
        if not _is_parameterized(parent):
            raise _Fail(500, f'Specified job "{parent_id}" is not a parameterized job')
        if parent.get("Stop"):
            raise _Fail(500, f'Specified job "{parent_id}" is stopped')
        spec = parent["ParameterizedJob"]
        rule = spec.get("Payload") or "optional"
        if rule == "required" and not payload:
            raise _Fail(500, "Payload is not provided but required by parameterized job")
        if rule == "forbidden" and payload:
            raise _Fail(500, "Payload provided but forbidden by parameterized job")
        if len(payload) > DISPATCH_PAYLOAD_LIMIT:
            raise _Fail(500, f"Payload exceeds maximum size; {len(payload)} > {DISPATCH_PAYLOAD_LIMIT}")
        required = list(spec.get("MetaRequired") or [])
        allowed = set(required) | set(spec.get("MetaOptional") or [])
        unpermitted = [k for k in meta if k not in allowed]
        if unpermitted:
            raise _Fail(500, f"Dispatch request included unpermitted metadata keys: {_go_list(unpermitted)}")
        missing = [k for k in required if k not in meta]
        if missing:
            raise _Fail(500, f"Dispatch did not provide required meta keys: {_go_list(missing)}")
        return parent

    def _child_with_token(self, ns: str, parent_id: str, token: str) -> dict[str, Any] | None:
        for (jns, _), job in self._jobs.items():
            if jns == ns and job.get("ParentID") == parent_id and job.get("DispatchIdempotencyToken") == token:
                return job
        return None

    @staticmethod
    def _child_id(parent_id: str, template: str) -> str:
        stamp = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
        return f"{parent_id}/dispatch-{template}-{stamp}" if template else f"{parent_id}/dispatch-{stamp}"

    def _create_child(
        self, ns: str, parent: Mapping[str, Any], meta: Mapping[str, str], payload: bytes, token: str, template: str
    ) -> dict[str, Any]:
        child = copy.deepcopy(dict(parent))
        child_id = self._child_id(parent["ID"], template)
        merged = dict(parent.get("Meta") or {})
        merged.update(meta)
        idx = self._touch("jobs")
        child.update(
            ID=child_id,
            Name=child_id,
            ParentID=parent["ID"],
            Dispatched=True,
            DispatchIdempotencyToken=token,
            Meta=merged or None,
            Payload=base64.b64encode(payload).decode("ascii") if payload else None,
            Status="pending",
            StatusDescription="",
            Stop=False,
            Version=0,
            Stable=False,
            CreateIndex=idx,
            ModifyIndex=idx,
            JobModifyIndex=idx,
            SubmitTime=_now_ns(),
        )
        key = (ns, child_id)
        self._jobs[key] = child
        runtime = _JobRuntime(payload=payload)
        self._runtime[key] = runtime
        runtime.script = self._take_script(child)
        self._publish("Job", "JobRegistered", child_id, ns, {"Job": child}, idx)
        ev = self._new_eval(key, "job-register", self._initial_work(child))
        self._schedule_eval(ev["ID"], self._placement_delay(key))
        return {
            "DispatchedJobID": child_id,
            "EvalID": ev["ID"],
            "EvalCreateIndex": ev["CreateIndex"],
            "JobCreateIndex": idx,
            "Index": ev["CreateIndex"],
        }

    def _take_script(self, job: Mapping[str, Any]) -> _Script | None:
        for i, script in enumerate(self._scripts):
            try:
                matched = script.match(copy.deepcopy(dict(job)))
            except Exception:
                matched = False
            if matched:
                return self._scripts.pop(i)
        return None

    # ==========================================================================
    # Evaluations and placement
    # ==========================================================================

    @staticmethod
    def _initial_work(job: Mapping[str, Any]) -> list[tuple[str, str | None]]:
        return [(g["Name"], None) for g in job.get("TaskGroups") or [] for _ in range(int(g.get("Count", 1)))]

    def _placement_delay(self, key: JobKey) -> float:
        runtime = self._runtime.get(key)
        if runtime and runtime.script and runtime.script.placement_delay is not None:
            return runtime.script.placement_delay
        return self.placement_delay

    def _new_eval(
        self,
        key: JobKey,
        triggered_by: str,
        work: list[tuple[str, str | None]],
        *,
        status: str = "pending",
        previous: str = "",
    ) -> dict[str, Any]:
        job = self._jobs[key]
        idx = self._touch("evals")
        now = _now_ns()
        ev = {
            "ID": _new_id(),
            "Namespace": key[0],
            "Priority": job.get("Priority", 50),
            "Type": job["Type"],
            "TriggeredBy": triggered_by,
            "JobID": job["ID"],
            "JobModifyIndex": job["JobModifyIndex"],
            "NodeID": "",
            "Status": status,
            "StatusDescription": "",
            "Wait": 0,
            "WaitUntil": ZERO_TIME,
            "NextEval": "",
            "PreviousEval": previous,
            "BlockedEval": "",
            "FailedTGAllocs": None,
            "ClassEligibility": None,
            "EscapedComputedClass": False,
            "QueuedAllocations": None,
            "CreateIndex": idx,
            "ModifyIndex": idx,
            "CreateTime": now,
            "ModifyTime": now,
        }
        self._evals[ev["ID"]] = ev
        self._job_evals[key].append(ev["ID"])
        if work:
            self._eval_work[ev["ID"]] = list(work)
        self._publish("Evaluation", "EvaluationUpdated", ev["ID"], key[0], {"Evaluation": ev}, idx)
        return ev

    def _update_eval(self, ev: dict[str, Any], **changes: Any) -> None:
        ev.update(changes)
        idx = self._touch("evals")
        ev["ModifyIndex"] = idx
        ev["ModifyTime"] = _now_ns()
        self._publish("Evaluation", "EvaluationUpdated", ev["ID"], ev["Namespace"], {"Evaluation": ev}, idx)

    def _schedule_eval(self, eval_id: str, delay: float) -> None:
        self._timers.call_later(delay, lambda: self._process_eval_locked(eval_id))

    def _process_eval_locked(self, eval_id: str) -> None:
        with self._lock:
            if not self._closing:
                self._process_eval(eval_id)

    def _capacity_left(self) -> float:
        if self.capacity is None:
            return float("inf")
        return self.capacity - len(self._occupying)

    def _process_eval(self, eval_id: str) -> None:
        """Place what the evaluation asks for; what does not fit waits behind a blocked evaluation."""
        ev = self._evals.get(eval_id)
        if ev is None or ev["Status"] not in ("pending", "blocked"):
            return
        key = (ev["Namespace"], ev["JobID"])
        job = self._jobs.get(key)
        work = self._eval_work.pop(eval_id, [])
        if job is None or job.get("Stop"):
            self._update_eval(ev, Status="canceled" if job is None else "complete")
            return
        remaining: list[tuple[str, str | None]] = []
        for group, previous in work:
            if self._capacity_left() >= 1:
                self._place(key, group, previous, eval_id)
            else:
                remaining.append((group, previous))
        queued = {g["Name"]: sum(1 for grp, _ in remaining if grp == g["Name"]) for g in job.get("TaskGroups") or []}
        if not remaining:
            self._update_eval(ev, Status="complete", QueuedAllocations=queued)
        elif ev["Status"] == "blocked":
            self._eval_work[eval_id] = remaining
            self._update_eval(ev, FailedTGAllocs=self._failed_tg_allocs(job, remaining), QueuedAllocations=queued)
            self._blocked.appendleft(eval_id)
        else:
            failed = self._failed_tg_allocs(job, remaining)
            blocked = self._new_eval(key, "queued-allocs", remaining, status="blocked", previous=eval_id)
            self._update_eval(
                blocked,
                StatusDescription="created to place remaining allocations",
                FailedTGAllocs=failed,
                QueuedAllocations=queued,
            )
            self._blocked.append(blocked["ID"])
            self._update_eval(
                ev, Status="complete", BlockedEval=blocked["ID"], FailedTGAllocs=failed, QueuedAllocations=queued
            )
        self._refresh_job(key)

    def _failed_tg_allocs(self, job: Mapping[str, Any], remaining: list[tuple[str, str | None]]) -> dict[str, Any]:
        """Why the allocations did not fit: the one node is out of CPU."""
        out: dict[str, Any] = {}
        for group in sorted({g for g, _ in remaining}):
            out[group] = {
                "NodesEvaluated": 1,
                "NodesFiltered": 0,
                "NodesInPool": 1,
                "NodesAvailable": {"dc1": 1},
                "ClassFiltered": None,
                "ConstraintFiltered": None,
                "NodesExhausted": 1,
                "ClassExhausted": None,
                "DimensionExhausted": {"cpu": 1},
                "QuotaExhausted": None,
                "ResourcesExhausted": None,
                "ScoreMetaData": None,
                "AllocationTime": 12_000,
                "CoalescedFailures": sum(1 for g, _ in remaining if g == group) - 1,
            }
        return out

    def _unblock(self) -> None:
        """Capacity freed: blocked evaluations are processed again, oldest first."""
        while self._blocked and self._capacity_left() >= 1 and not self._closing:
            eval_id = self._blocked.popleft()
            ev = self._evals.get(eval_id)
            if ev is None or ev["Status"] != "blocked":
                continue
            self._process_eval(eval_id)

    def _place(self, key: JobKey, group_name: str, previous: str | None, eval_id: str) -> None:
        job = self._jobs[key]
        group = next(g for g in job["TaskGroups"] if g["Name"] == group_name)
        task = group["Tasks"][0]
        idx = self._touch("allocs")
        now = _now_ns()
        alloc_id = _new_id()
        prev = self._allocs.get(previous) if previous else None
        tracker = None
        if prev is not None and prev.data["ClientStatus"] == "failed":
            events = list((prev.data.get("RescheduleTracker") or {}).get("Events") or [])
            events.append({"RescheduleTime": now, "PrevAllocID": prev.id, "PrevNodeID": self.node_id, "Delay": 0})
            tracker = {"Events": events}
        data = {
            "ID": alloc_id,
            "EvalID": eval_id,
            "Name": f"{job['ID']}.{group_name}[0]",
            "Namespace": key[0],
            "NodeID": self.node_id,
            "NodeName": "nomad-double-client",
            "JobID": job["ID"],
            "JobType": job["Type"],
            "JobVersion": job.get("Version", 0),
            "TaskGroup": group_name,
            "DesiredStatus": "run",
            "DesiredDescription": "",
            "DesiredTransition": {},
            "ClientStatus": "pending",
            "ClientDescription": "No tasks have started",
            "TaskStates": {
                task["Name"]: {
                    "State": "pending",
                    "Failed": False,
                    "Restarts": 0,
                    "LastRestart": ZERO_TIME,
                    "StartedAt": ZERO_TIME,
                    "FinishedAt": ZERO_TIME,
                    "Events": [_event("Received", "Task received by client")],
                }
            },
            "DeploymentStatus": None,
            "FollowupEvalID": "",
            "RescheduleTracker": tracker,
            "PreviousAllocation": previous or "",
            "NextAllocation": "",
            "CreateIndex": idx,
            "ModifyIndex": idx,
            "AllocModifyIndex": idx,
            "CreateTime": now,
            "ModifyTime": now,
        }
        alloc = _Alloc(data=data, key=key, group=group_name, task=task)
        self._allocs[alloc_id] = alloc
        self._job_allocs[key].append(alloc_id)
        self._occupying.add(alloc_id)
        if prev is not None:
            prev.data["NextAllocation"] = alloc_id
            self._alloc_changed(prev)
        self._publish("Allocation", "PlanResult", alloc_id, key[0], {"Allocation": self._alloc_public(alloc)}, idx)
        self._timers.call_later(0.0, lambda: self._start_task_locked(alloc_id))

    # ==========================================================================
    # Task lifecycle
    # ==========================================================================

    def _start_task_locked(self, alloc_id: str) -> None:
        with self._lock:
            if not self._closing:
                self._start_task(alloc_id)

    def _start_task(self, alloc_id: str) -> None:
        alloc = self._allocs.get(alloc_id)
        if alloc is None or alloc.data["DesiredStatus"] != "run" or alloc.data["ClientStatus"] != "pending":
            return
        runtime = self._runtime[alloc.key]
        script = runtime.script
        state = alloc.task_state
        state["Events"].append(_event("Task Setup", "Building Task Directory", Message="Building Task Directory"))
        if script is not None and script.never_start is not None:
            self._driver_failure(alloc, script.never_start)
            return
        try:
            alloc.handle = self._launch(alloc, runtime)
        except (OSError, ValueError) as exc:
            self._driver_failure(alloc, f"failed to launch command with executor: {exc}")
            return
        runtime.processes_started += 1
        state["Events"].append(_event("Started", "Task started by client"))
        state["State"] = "running"
        if state["StartedAt"] == ZERO_TIME:
            state["StartedAt"] = _rfc3339(_now_ns())
        alloc.data["ClientStatus"] = "running"
        alloc.data["ClientDescription"] = "Tasks are running"
        self._alloc_changed(alloc)
        if script is not None and script.lose_after is not None and not runtime.lost_once:
            runtime.lost_once = True
            self._timers.call_later(
                script.lose_after, lambda: self._lose_locked(alloc_id, script.lose_as, script.replace)
            )

    def _launch(self, alloc: _Alloc, runtime: _JobRuntime) -> TaskHandle:
        job = self._jobs[alloc.key]
        on_exit = lambda code, sig: self._on_exit(alloc.id, code, sig)  # noqa: E731
        if self.mode == "simulate":
            duration, exit_code, stdout = self.simulate(copy.deepcopy(job))
            return SimulatedTask.start(
                task_name=alloc.task["Name"],
                duration=duration,
                exit_code=exit_code,
                stdout=stdout,
                timers=self._timers,
                on_exit=on_exit,
            )
        paths = alloc.paths or AllocPaths(self.workdir / alloc.id)
        alloc.paths = paths
        env = task_environment(
            base=self.env,
            task=alloc.task,
            job=job,
            group=alloc.group,
            alloc_id=alloc.id,
            paths=paths,
            namespace=alloc.key[0],
            region=self.region,
        )
        payload_file = (alloc.task.get("DispatchPayload") or {}).get("File")
        return ProcessTask.start(
            task_name=alloc.task["Name"],
            argv=task_argv(alloc.task, env),
            env=env,
            paths=paths,
            payload=runtime.payload if job.get("Dispatched") else None,
            payload_file=payload_file if job.get("Dispatched") else None,
            timers=self._timers,
            on_exit=on_exit,
        )

    def _driver_failure(self, alloc: _Alloc, message: str) -> None:
        """The task never starts (image, driver, volume, template): no Terminated event."""
        state = alloc.task_state
        state["Events"].append(_event("Driver Failure", message, Message=message, DriverError=message, FailsTask=True))
        state["State"] = "dead"
        state["Failed"] = True
        state["FinishedAt"] = _rfc3339(_now_ns())
        alloc.handle = DriverFailureTask()
        alloc.data["ClientStatus"] = "failed"
        alloc.data["ClientDescription"] = "Failed tasks"
        self._occupying.discard(alloc.id)
        self._alloc_changed(alloc)
        self._maybe_reschedule(alloc)
        self._unblock()

    def _on_exit(self, alloc_id: str, exit_code: int, sig: int) -> None:
        with self._lock:
            alloc = self._allocs.get(alloc_id)
            if alloc is None or alloc.disconnected or self._closing:
                return  # purged, or its node is gone: nobody hears the exit
            self._task_exited(alloc, exit_code, sig)

    def _task_exited(self, alloc: _Alloc, exit_code: int, sig: int) -> None:
        state = alloc.task_state
        detail = f"Exit Code: {exit_code}" + (f", Signal: {sig}" if sig else "")
        state["Events"].append(
            _event(
                "Terminated",
                detail,
                ExitCode=exit_code,
                Signal=sig,
                Details={"exit_code": str(exit_code), "signal": str(sig)},
            )
        )
        killed = alloc.data["DesiredStatus"] != "run"
        if killed:
            state["Events"].append(_event("Killed", "Task successfully killed"))
        elif exit_code != 0 and self._restart_in_place(alloc):
            return
        elif exit_code != 0:
            policy = alloc.task.get("RestartPolicy") or {}
            interval = format_duration(int(policy.get("Interval", 0)))
            text = (
                f"Exceeded allowed attempts {policy.get('Attempts', 0)} in interval {interval} "
                f'and mode is "{policy.get("Mode", "fail")}"'
            )
            state["Events"].append(_event("Not Restarting", text, FailsTask=True, RestartReason=text))
        failed = exit_code != 0 and not killed
        state["State"] = "dead"
        state["Failed"] = failed
        state["FinishedAt"] = _rfc3339(_now_ns())
        alloc.data["ClientStatus"] = "failed" if failed else "complete"
        alloc.data["ClientDescription"] = "Failed tasks" if failed else "All tasks have completed"
        self._occupying.discard(alloc.id)
        self._alloc_changed(alloc)
        if failed:
            self._maybe_reschedule(alloc)
        self._unblock()

    def _restart_in_place(self, alloc: _Alloc) -> bool:
        """A failed task restarts in its allocation while the restart policy allows (Nomad's default: 3 times)."""
        policy = alloc.task.get("RestartPolicy") or {}
        state = alloc.task_state
        if state["Restarts"] >= int(policy.get("Attempts", 0)):
            return False
        delay_ns = int(policy.get("Delay", 15 * NS_PER_SECOND))
        state["Events"].append(
            _event(
                "Restarting",
                f"Task restarting in {format_duration(delay_ns)}",
                RestartReason="Restart within policy",
                StartDelay=delay_ns,
            )
        )
        state["State"] = "pending"
        state["Restarts"] += 1
        state["LastRestart"] = _rfc3339(_now_ns())
        self._alloc_changed(alloc)

        def restart() -> None:
            with self._lock:
                if (
                    self._closing
                    or alloc.id not in self._allocs
                    or alloc.data["DesiredStatus"] != "run"
                    or alloc.disconnected
                ):
                    return
                runtime = self._runtime[alloc.key]
                try:
                    alloc.handle = self._launch(alloc, runtime)
                except (OSError, ValueError) as exc:
                    self._driver_failure(alloc, f"failed to launch command with executor: {exc}")
                    return
                runtime.processes_started += 1
                state["Events"].append(_event("Started", "Task started by client"))
                state["State"] = "running"
                self._alloc_changed(alloc)

        alloc.restart_timer = self._timers.call_later(delay_ns / NS_PER_SECOND, restart)
        return True

    def _maybe_reschedule(self, alloc: _Alloc) -> None:
        """A failed allocation is rescheduled while the group's reschedule policy allows."""
        job = self._jobs.get(alloc.key)
        if job is None or job.get("Stop"):
            return
        group = next((g for g in job["TaskGroups"] if g["Name"] == alloc.group), {})
        policy = group.get("ReschedulePolicy") or {}
        done = len((alloc.data.get("RescheduleTracker") or {}).get("Events") or [])
        if not policy.get("Unlimited") and done >= int(policy.get("Attempts", 0)):
            return
        delay = int(policy.get("Delay", 0)) / NS_PER_SECOND
        ev = self._new_eval(alloc.key, "alloc-failure", [(alloc.group, alloc.id)])
        self._update_eval(ev, WaitUntil=_rfc3339(_now_ns() + int(delay * NS_PER_SECOND)))
        alloc.data["FollowupEvalID"] = ev["ID"]
        self._alloc_changed(alloc)
        self._schedule_eval(ev["ID"], delay + self._placement_delay(alloc.key))

    def _stop_alloc(self, alloc_id: str, why: str) -> None:
        alloc = self._allocs.get(alloc_id)
        if alloc is None or alloc.data["DesiredStatus"] != "run":
            return
        alloc.data["DesiredStatus"] = "stop"
        alloc.data["DesiredDescription"] = why
        if alloc.disconnected or alloc.data["ClientStatus"] in ("complete", "failed"):
            self._alloc_changed(alloc)
            return
        if alloc.restart_timer is not None:
            alloc.restart_timer.cancel()
        state = alloc.task_state
        if alloc.data["ClientStatus"] == "pending" or alloc.handle is None or not alloc.handle.alive:
            state["State"] = "dead"
            state["FinishedAt"] = _rfc3339(_now_ns())
            alloc.data["ClientStatus"] = "complete"
            alloc.data["ClientDescription"] = "All tasks have completed"
            self._occupying.discard(alloc.id)
            self._alloc_changed(alloc)
            self._unblock()
            return
        timeout = min(int(alloc.task.get("KillTimeout", 5 * NS_PER_SECOND)) / NS_PER_SECOND, self.kill_timeout)
        state["Events"].append(
            _event(
                "Killing",
                f"Sent interrupt. Waiting {format_duration(int(timeout * NS_PER_SECOND))} before force killing",
                KillTimeout=int(timeout * NS_PER_SECOND),
            )
        )
        self._alloc_changed(alloc)
        alloc.handle.kill(timeout)

    def _lose_locked(self, alloc_id: str, lose_as: str, replace: bool) -> None:
        with self._lock:
            if not self._closing:
                self._lose(alloc_id, lose_as, replace)

    def _lose(self, alloc_id: str, lose_as: str, replace: bool) -> None:
        """The allocation's node stops heartbeating: the work may still be running there."""
        alloc = self._allocs.get(alloc_id)
        if alloc is None or alloc.data["ClientStatus"] not in ("pending", "running"):
            return
        alloc.disconnected = True
        alloc.data["ClientStatus"] = lose_as
        if lose_as == "lost":
            alloc.data["DesiredStatus"] = "stop"
            alloc.data["DesiredDescription"] = "alloc is lost since its node is down"
            alloc.data["ClientDescription"] = "alloc is lost since its node is down"
        else:
            alloc.data["ClientDescription"] = "alloc is unknown since its node is disconnected"
        self._occupying.discard(alloc_id)
        self._alloc_changed(alloc)
        job = self._jobs.get(alloc.key)
        if replace and job is not None and not job.get("Stop"):
            ev = self._new_eval(alloc.key, "node-update", [(alloc.group, alloc_id)])
            self._schedule_eval(ev["ID"], self._placement_delay(alloc.key))
        self._unblock()

    # ==========================================================================
    # Allocation bookkeeping
    # ==========================================================================

    def _alloc_public(self, alloc: _Alloc) -> dict[str, Any]:
        return alloc.data

    def _alloc_changed(self, alloc: _Alloc) -> None:
        idx = self._touch("allocs")
        alloc.data["ModifyIndex"] = idx
        alloc.data["ModifyTime"] = _now_ns()
        self._publish("Allocation", "AllocationUpdated", alloc.id, alloc.key[0], {"Allocation": alloc.data}, idx)
        self._refresh_job(alloc.key)

    def _job_status(self, key: JobKey) -> str:
        job = self._jobs[key]
        if _is_parameterized(job) or job.get("Periodic"):
            return "dead" if job.get("Stop") else "running"
        if job.get("Stop"):
            return "dead"
        allocs = [self._allocs[a] for a in self._job_allocs.get(key, []) if a in self._allocs]
        for alloc in allocs:
            status = alloc.data["ClientStatus"]
            if alloc.data["DesiredStatus"] == "run" and status in ("pending", "running"):
                return "running"
            if status in ("lost", "unknown") and not alloc.data["NextAllocation"]:
                return "running"  # the work may still be running on the vanished node
        for eval_id in self._job_evals.get(key, []):
            ev = self._evals.get(eval_id)
            if ev is not None and ev["Status"] in ("pending", "blocked"):
                return "pending"
        return "dead" if allocs else "pending"

    def _refresh_job(self, key: JobKey) -> None:
        job = self._jobs.get(key)
        if job is None:
            return
        status = self._job_status(key)
        if status == job["Status"]:
            return
        job["Status"] = status
        job["ModifyIndex"] = self._touch("jobs")
        if status == "dead" and self.gc_after is not None:
            runtime = self._runtime.get(key)
            if runtime is not None:
                if runtime.gc_timer is not None:
                    runtime.gc_timer.cancel()
                runtime.gc_timer = self._timers.call_later(self.gc_after, lambda: self._gc_one(key))

    def _gc_one(self, key: JobKey) -> None:
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job["Status"] == "dead" and not self._closing:
                self._remove_job(key)

    def _h_job_allocations(self, req: Request) -> Response:
        key = (self._ns(req), req.params["id"])

        def compute() -> tuple[Any, int]:
            allocs = [self._allocs[a].data for a in self._job_allocs.get(key, []) if a in self._allocs]
            index = max((a["ModifyIndex"] for a in allocs), default=self._table_index["allocs"])
            return allocs, index

        return self._blocking(req, compute)

    def _h_job_evaluations(self, req: Request) -> Response:
        key = (self._ns(req), req.params["id"])

        def compute() -> tuple[Any, int]:
            evals = [self._evals[e] for e in self._job_evals.get(key, []) if e in self._evals]
            index = max((e["ModifyIndex"] for e in evals), default=self._table_index["evals"])
            return evals, index

        return self._blocking(req, compute)

    def _h_allocs_list(self, req: Request) -> Response:
        ns = self._ns(req)
        prefix = req.arg("prefix") or ""
        task_states = req.arg("task_states")
        with_states = task_states is None or _bool_arg(task_states)
        kept = self._list_filter(req)

        def compute() -> tuple[Any, int]:
            out = []
            for alloc in self._allocs.values():
                if (ns == "*" or alloc.key[0] == ns) and alloc.id.startswith(prefix) and kept(alloc.data):
                    data = dict(alloc.data)
                    if not with_states:
                        data["TaskStates"] = None
                    out.append(data)
            out.sort(key=lambda a: a["CreateIndex"])
            return out, self._table_index["allocs"]

        return self._blocking(req, compute, index_of=lambda: self._table_index["allocs"])

    @staticmethod
    def _list_filter(req: Request) -> Callable[[dict[str, Any]], bool]:
        """``filter=`` of a paginated list (``nomad/state/paginator/paginator.go``): a go-bexpr predicate on
        the listed object; a bad expression is a 400 before any wait, an evaluation error a 400 too."""
        try:
            keep = compile_filter(req.arg("filter"))
        except FilterError as exc:
            raise _Fail(exc.status, str(exc)) from None

        def kept(data: dict[str, Any]) -> bool:
            try:
                return keep is None or keep(data)
            except FilterError as exc:  # the expression cannot be evaluated on this object
                raise _Fail(exc.status, str(exc)) from None

        return kept

    def _h_alloc_read(self, req: Request) -> Response:
        alloc_id = req.params["id"]

        def compute() -> tuple[Any, int]:
            alloc = self._allocs.get(alloc_id)
            if alloc is None:
                raise _Fail(404, "alloc not found")
            data = dict(alloc.data)
            data["Job"] = self._jobs.get(alloc.key)
            return data, alloc.data["ModifyIndex"]

        return self._blocking(req, compute)

    def _h_eval_read(self, req: Request) -> Response:
        eval_id = req.params["id"]

        def compute() -> tuple[Any, int]:
            ev = self._evals.get(eval_id)
            if ev is None:
                raise _Fail(404, "eval not found")
            return ev, ev["ModifyIndex"]

        return self._blocking(req, compute)

    # ==========================================================================
    # Logs
    # ==========================================================================

    def _h_logs(self, req: Request) -> Response:
        task = req.arg("task")
        kind = req.arg("type")
        origin = req.arg("origin") or "start"
        plain = _bool_arg(req.arg("plain"))
        follow = _bool_arg(req.arg("follow"))
        try:
            offset = int(req.arg("offset") or 0)
        except ValueError:
            raise _Fail(400, f"error parsing offset: {req.arg('offset')!r}") from None
        with self._lock:
            alloc = self._allocs.get(req.params["id"])
            if alloc is None:
                raise _Fail(404, f'Unknown allocation "{req.params["id"]}"')
            if not task:
                raise _Fail(400, "must provide task name")
            job = self._jobs.get(alloc.key) or {}
            group = next((g for g in job.get("TaskGroups") or [] if g["Name"] == alloc.group), {})
            if task not in {t["Name"] for t in group.get("Tasks") or []}:
                raise _Fail(400, f'unknown task name "{task}"')
            if kind not in ("stdout", "stderr"):
                raise _Fail(400, "must provide log type (stdout/stderr)")
            if origin not in ("start", "end"):
                raise _Fail(400, "origin must be start or end")
            handle = alloc.handle if task == alloc.task["Name"] else None
        data = handle.read_log(kind) if handle is not None else None
        if data is None or handle is None:
            raise _Fail(404, f'log entry for task "{task}" and log type "{kind}" not found')
        start = max(0, len(data) - offset) if origin == "end" else min(max(offset, 0), len(data))
        if plain and not follow:
            return Response(200, data[start:], {"Content-Type": "text/plain; charset=utf-8"})
        return StreamingResponse(
            self._log_frames(handle, kind, start, plain, follow),
            headers={"Content-Type": "application/json" if not plain else "text/plain; charset=utf-8"},
        )

    def _log_frames(self, handle: TaskHandle, kind: str, start: int, plain: bool, follow: bool) -> Iterator[bytes]:
        """The framed form: ``{"Data": <base64>, "File", "Offset"}`` objects back to back (64 KiB each)."""
        sent = start
        name = handle.log_file_name(kind)
        last_beat = time.monotonic()
        while True:
            data = handle.read_log(kind) or b""
            while sent < len(data):
                chunk = data[sent : sent + 64 * 1024]
                if plain:
                    yield chunk
                else:
                    yield json.dumps(
                        {"Offset": sent, "Data": base64.b64encode(chunk).decode("ascii"), "File": name}
                    ).encode()
                sent += len(chunk)
                last_beat = time.monotonic()
            if not follow or not handle.alive or self._closing:
                if follow and not self._closing:
                    data = handle.read_log(kind) or b""
                    if sent < len(data):
                        continue
                return
            if not plain and time.monotonic() - last_beat >= 1.0:
                yield b"{}"
                last_beat = time.monotonic()
            time.sleep(0.05)

    # ==========================================================================
    # Variables
    # ==========================================================================

    def _var_path(self, req: Request) -> str:
        path = req.params["path"]
        if not path:
            raise _Fail(400, "missing variable path")
        return path

    def _cas(self, req: Request) -> int | None:
        raw = req.arg("cas")
        if raw in (None, ""):
            return None
        try:
            return int(raw)
        except ValueError:
            raise _Fail(400, f"can not parse cas: {raw!r}") from None

    def _h_var_read(self, req: Request) -> Response:
        ns, path = self._ns(req), self._var_path(req)

        def compute() -> tuple[Any, int]:
            var = self._vars.get(ns, path)
            if var is None:
                raise _Fail(404, "variable not found")
            return self._vars.public(var), var.data["ModifyIndex"]

        return self._blocking(req, compute)

    def _h_var_write(self, req: Request) -> Response:
        ns, path = self._ns(req), self._var_path(req)
        problem = _variable_path_problem(path)
        if problem and not req.has_arg("lock-renew"):
            raise _Fail(400, problem)
        body = _json_body(req)
        with self._lock:
            if req.has_arg("lock-acquire"):
                return self._vars.lock_acquire(ns, path, body)
            if req.has_arg("lock-renew"):
                return self._vars.lock_renew(ns, path, body)
            if req.has_arg("lock-release"):
                return self._vars.lock_release(ns, path, body)
            return self._vars.put(ns, path, body, self._cas(req))

    def _h_var_delete(self, req: Request) -> Response:
        ns, path = self._ns(req), self._var_path(req)
        with self._lock:
            return self._vars.delete(ns, path, self._cas(req))

    def _h_vars_list(self, req: Request) -> Response:
        ns, prefix = self._ns(req), req.arg("prefix") or ""
        kept = self._list_filter(req)

        acl = getattr(req, "acl", None)

        def compute() -> tuple[Any, int]:
            listing = [v for v in self._vars.listing(ns, prefix) if kept(v)]
            if acl is not None:  # nomad/variables_endpoint.go List: only what the token may list
                listing = [v for v in listing if acl.allow_variable(v["Namespace"], v["Path"], "list")]
            return listing, self._vars.index

        return self._blocking(req, compute)

    # ==========================================================================
    # Event stream
    # ==========================================================================

    def _publish(self, topic: str, kind: str, key: str, ns: str, payload: dict[str, Any], index: int) -> None:
        filter_keys = []
        if topic == "Allocation":
            filter_keys = [payload["Allocation"]["JobID"], payload["Allocation"]["EvalID"]]
        elif topic == "Evaluation":
            filter_keys = [payload["Evaluation"]["JobID"]]
        # The payload is serialized now (a snapshot of this moment), and spliced in when streamed.
        event = {
            "Topic": topic,
            "Type": kind,
            "Key": key,
            "Namespace": ns,
            "FilterKeys": filter_keys,
            "Index": index,
            "_payload": json.dumps(payload, default=str),
        }
        # One buffer item per raft index (nomad/stream/event_buffer.go), the oldest dropped past the size.
        with self._cond:  # re-entrant: callers may hold the lock already
            if self._event_frames and self._event_frames[-1][0] == index:
                self._event_frames[-1][1].append(event)
            else:
                self._event_frames.append((index, [event]))
                while len(self._event_frames) > max(1, self.event_buffer_size):
                    self._events_pruned_upto = self._event_frames.popleft()[0]
            self._cond.notify_all()

    @staticmethod
    def _event_json(ev: dict[str, Any]) -> str:
        head = json.dumps({k: v for k, v in ev.items() if k != "_payload"})
        return head[:-1] + ', "Payload": ' + ev["_payload"] + "}"

    @staticmethod
    def _topic_filter(values: list[str]) -> Callable[[dict[str, Any]], bool]:
        """``topic=T`` or ``topic=T:key`` (``command/agent/event_endpoint.go`` ``parseEventTopics``); none: all."""
        wanted: dict[str, set[str]] = {}
        for value in values or ["*"]:
            parts = value.split(":")
            if len(parts) > 2:
                raise _Fail(400, f"Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: {value}")
            wanted.setdefault(parts[0], set()).add(parts[1] if len(parts) == 2 else "*")

        def match(ev: dict[str, Any]) -> bool:
            keys = wanted.get(ev["Topic"]) or wanted.get("*")
            if not keys:
                return False
            return "*" in keys or ev["Key"] in keys or any(k in keys for k in ev["FilterKeys"])

        return match

    def _h_event_stream(self, req: Request) -> Response:
        """The event stream (``command/agent/event_endpoint.go``, ``nomad/event_endpoint.go``, ``nomad/stream/*.go``).

        A ``{}`` heartbeat at once and then every ``event_heartbeat`` seconds; ``index=I`` starts at the
        buffered frame of index ``I`` (delivered again) or the oldest still buffered (``StartAtClosest``),
        ``index=0`` at the oldest; a reader whose next frame has left the buffer is cut off ("event dropped
        from buffer"). Only the namespace's events, only frames with a matching event.
        """
        match = self._topic_filter(req.query.get("topic", []))
        ns = self._ns(req)
        raw = req.arg("index") or "0"
        try:
            start = int(raw)
        except ValueError:
            raise _Fail(400, f'Unable to parse index: strconv.Atoi: parsing "{raw}": invalid syntax') from None
        if self.event_stream_cut:
            raise _Fail(500, "rpc error: EOF")

        def frames() -> Iterator[bytes]:
            with self._cond:
                seen = max(start - 1, self._events_pruned_upto)
            yield b"{}\n"
            next_beat = time.monotonic() + self.event_heartbeat
            while True:
                with self._cond:
                    while True:
                        if self._closing or self.event_stream_cut:
                            return
                        if self._events_pruned_upto > seen:
                            return  # this reader fell behind the buffer: Nomad ends its subscription
                        newer = [f for f in self._event_frames if f[0] > seen]
                        if newer:
                            seen = newer[-1][0]
                        batch = []
                        for index, events in newer:
                            kept = [e for e in events if (ns == "*" or e["Namespace"] == ns) and match(e)]
                            if kept:
                                batch.append((index, kept))
                        beat = time.monotonic() >= next_beat
                        if batch or beat:
                            break
                        self._cond.wait(min(max(next_beat - time.monotonic(), 0.01), 0.5))
                for index, events in batch:
                    body = ", ".join(self._event_json(e) for e in events)
                    yield f'{{"Index": {index}, "Events": [{body}]}}\n'.encode()
                if beat:
                    next_beat += self.event_heartbeat  # a ticker: events do not move it
                    yield b"{}\n"

        return StreamingResponse(frames(), headers={"Content-Type": "application/json"})
