"""How the Nomad double runs allocations: a timer heap, local processes, simulated tasks.

* :class:`TimerQueue` - one thread and a heap of deadlines. Placement delays,
  simulated task ends, lost nodes, lock expiry and garbage collection all use it,
  so a thousand simulated allocations cost a thousand heap entries, not threads.
* :class:`ProcessTask` - mode ``exec``: the task's own command as a local
  process in its own process group and a fresh allocation directory
  (``<workdir>/<alloc_id>/{local,secrets,alloc}``), stdout/stderr captured to
  the files the logs API serves. Stopping sends SIGTERM to the group, then
  SIGKILL after the kill timeout.
* :class:`SimulatedTask` - mode ``simulate``: no process; the task "runs" for a
  scripted duration and exits with a scripted code, its stdout kept in memory.

Both report their end through one callback ``on_exit(exit_code, signal)``.
:func:`task_environment` and :func:`task_argv` build what Nomad's client would
hand the task.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import signal as signals
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

ExitCallback = Callable[[int, int], None]
"""``on_exit(exit_code, signal)``; a task killed by a signal reports ``128 + signal``."""


# -- timers -----------------------------------------------------------------------


class Timer:
    """A scheduled call; :meth:`cancel` before it fires to drop it."""

    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    """Calls functions at monotonic deadlines from a single daemon thread."""

    def __init__(self, name: str = "nomad-double-timers") -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` after ``delay`` seconds (0 = as soon as possible)."""
        timer = Timer(time.monotonic() + max(0.0, delay), fn)
        with self._cond:
            heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
            self._cond.notify()
        return timer

    def close(self) -> None:
        """Stop the thread; pending calls are dropped."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for _, _, t in self._heap if not t.cancelled)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except Exception:  # a failing callback must not stop every later one
                log.exception("nomad double: timer callback failed")


# -- what the task is given -------------------------------------------------------------

_RUNTIME_VAR = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` by ``values[NAME]`` as Nomad's client does; unknown names stay as they are."""
    return _RUNTIME_VAR.sub(lambda m: values.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class AllocPaths:
    """The directories Nomad's client gives a task (flattened: one task per allocation)."""

    root: Path

    @property
    def local(self) -> Path:
        return self.root / "local"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def shared(self) -> Path:
        return self.root / "alloc"

    def log_file(self, task: str, kind: str) -> Path:
        return self.shared / "logs" / f"{task}.{kind}.0"

    def create(self) -> None:
        for d in (self.local, self.secrets, self.shared / "logs", self.shared / "data", self.shared / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)


def task_environment(
    *,
    base: Mapping[str, str],
    task: Mapping[str, Any],
    job: Mapping[str, Any],
    group: str,
    alloc_id: str,
    paths: AllocPaths,
    namespace: str,
    region: str = "global",
) -> dict[str, str]:
    """The task's environment: ``base``, the task's ``env`` block (interpolated), meta, ``NOMAD_*``."""
    meta = merged_meta(job, group, task)
    runtime = {
        "NOMAD_TASK_DIR": str(paths.local),
        "NOMAD_SECRETS_DIR": str(paths.secrets),
        "NOMAD_ALLOC_DIR": str(paths.shared),
        "NOMAD_ALLOC_ID": alloc_id,
        "NOMAD_SHORT_ALLOC_ID": alloc_id[:8],
        "NOMAD_ALLOC_NAME": f"{job.get('ID')}.{group}[0]",
        "NOMAD_ALLOC_INDEX": "0",
        "NOMAD_GROUP_NAME": group,
        "NOMAD_JOB_ID": str(job.get("ID", "")),
        "NOMAD_JOB_NAME": str(job.get("Name") or job.get("ID", "")),
        "NOMAD_JOB_PARENT_ID": str(job.get("ParentID") or ""),
        "NOMAD_TASK_NAME": str(task.get("Name", "")),
        "NOMAD_NAMESPACE": namespace,
        "NOMAD_REGION": region,
        "NOMAD_DC": "dc1",
    }
    for key, value in meta.items():
        runtime[f"NOMAD_META_{key}"] = value
        runtime[f"NOMAD_META_{key.upper()}"] = value
    env = dict(base)
    for key, value in (task.get("Env") or {}).items():
        env[key] = interpolate(str(value), {**env, **runtime})
    env.update(runtime)
    return env


def merged_meta(job: Mapping[str, Any], group: str, task: Mapping[str, Any]) -> dict[str, str]:
    """Job meta, overridden by the group's, overridden by the task's (Nomad's precedence)."""
    meta: dict[str, str] = dict(job.get("Meta") or {})
    for g in job.get("TaskGroups") or []:
        if g.get("Name") == group:
            meta.update(g.get("Meta") or {})
    meta.update(task.get("Meta") or {})
    return {k: str(v) for k, v in meta.items()}


def task_argv(task: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``config.command`` + ``config.args``, interpolated; ``python``/``python3`` -> this interpreter.

    The client image would provide the package; on the test host the running
    interpreter is the one that has it installed.
    """
    config = task.get("Config") or {}
    command = config.get("command")
    if not command:
        raise ValueError(f"task {task.get('Name')!r} has no config.command; the double can only run commands")
    command = interpolate(str(command), env)
    if command in ("python", "python3"):
        command = sys.executable
    return [command] + [interpolate(str(a), env) for a in config.get("args") or []]


# -- running tasks ---------------------------------------------------------------------------


class TaskHandle:
    """A running task: read its logs, stop it."""

    def read_log(self, kind: str) -> bytes | None:
        """What the task wrote to ``kind`` (``stdout``/``stderr``) so far; None before it started."""
        raise NotImplementedError

    def log_file_name(self, kind: str) -> str:
        raise NotImplementedError

    def kill(self, kill_timeout: float) -> None:
        """Ask the task to stop (SIGTERM), forcing it (SIGKILL) after ``kill_timeout`` seconds."""
        raise NotImplementedError

    def force_kill(self) -> None:
        """Stop the task at once (server shutdown)."""
        self.kill(0.0)

    @property
    def alive(self) -> bool:
        raise NotImplementedError


@dataclass
class ProcessTask(TaskHandle):
    """A task run as a local process group."""

    task_name: str
    paths: AllocPaths
    proc: subprocess.Popen[bytes]
    timers: TimerQueue
    _finished: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(
        cls,
        *,
        task_name: str,
        argv: list[str],
        env: Mapping[str, str],
        paths: AllocPaths,
        payload: bytes | None,
        payload_file: str | None,
        timers: TimerQueue,
        on_exit: ExitCallback,
    ) -> "ProcessTask":
        """Prepare the allocation directory, write the payload, start the process."""
        paths.create()
        if payload_file:
            target = paths.local / payload_file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload or b"")
        stdout = open(paths.log_file(task_name, "stdout"), "ab")  # a restart in place appends
        stderr = open(paths.log_file(task_name, "stderr"), "ab")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=paths.root,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        finally:
            stdout.close()
            stderr.close()
        handle = cls(task_name=task_name, paths=paths, proc=proc, timers=timers)
        threading.Thread(
            target=handle._wait, args=(on_exit,), name=f"nomad-double-task-{proc.pid}", daemon=True
        ).start()
        return handle

    def _wait(self, on_exit: ExitCallback) -> None:
        code = self.proc.wait()
        self._finished.set()
        if code < 0:
            on_exit(128 - code, -code)
        else:
            on_exit(code, 0)

    def read_log(self, kind: str) -> bytes | None:
        try:
            return self.paths.log_file(self.task_name, kind).read_bytes()
        except FileNotFoundError:
            return None

    def log_file_name(self, kind: str) -> str:
        return f"alloc/logs/{self.task_name}.{kind}.0"

    @property
    def alive(self) -> bool:
        return not self._finished.is_set()

    def _signal(self, sig: int) -> None:
        if self._finished.is_set():
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, kill_timeout: float) -> None:
        if kill_timeout <= 0:
            self._signal(signals.SIGKILL)
            return
        self._signal(signals.SIGTERM)
        self.timers.call_later(kill_timeout, lambda: self._signal(signals.SIGKILL))

    def force_kill(self) -> None:
        self._signal(signals.SIGKILL)
        self._finished.wait(timeout=2)


@dataclass
class SimulatedTask(TaskHandle):
    """A task that only pretends: it ends after ``duration`` seconds with ``exit_code``."""

    task_name: str
    stdout: bytes
    on_exit: ExitCallback
    timer: Timer | None = None
    _done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(
        cls,
        *,
        task_name: str,
        duration: float,
        exit_code: int,
        stdout: str | bytes,
        timers: TimerQueue,
        on_exit: ExitCallback,
    ) -> "SimulatedTask":
        data = stdout.encode("utf-8") if isinstance(stdout, str) else bytes(stdout)
        handle = cls(task_name=task_name, stdout=data, on_exit=on_exit)
        handle.timer = timers.call_later(duration, lambda: handle._finish(exit_code, 0))
        return handle

    def _finish(self, exit_code: int, sig: int) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.on_exit(exit_code, sig)

    def read_log(self, kind: str) -> bytes | None:
        return self.stdout if kind == "stdout" else b""

    def log_file_name(self, kind: str) -> str:
        return f"alloc/logs/{self.task_name}.{kind}.0"

    @property
    def alive(self) -> bool:
        return not self._done

    def kill(self, kill_timeout: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self._finish(128 + signals.SIGTERM, signals.SIGTERM)


class DriverFailureTask(TaskHandle):
    """A task that never started: nothing to read, nothing to stop."""

    def read_log(self, kind: str) -> bytes | None:
        return None

    def log_file_name(self, kind: str) -> str:
        return ""

    @property
    def alive(self) -> bool:
        return False

    def kill(self, kill_timeout: float) -> None:
        return None
