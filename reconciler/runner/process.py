"""Run a formula as a child process: own process group, deadline, redacted output.

The formula's stdout and stderr are read concurrently by two threads, each
through its own :class:`~reconciler.redact.StreamRedactor`, and written to the
runner's own stdout and stderr as soon as they are safe - so Nomad's logs,
which anyone with ``read-logs`` can read, never hold a secret value.

The deadline is enforced on the whole process group: SIGTERM, then SIGKILL
after a grace period. A SIGTERM or SIGINT sent to the runner itself (Nomad
stopping the job) is forwarded to the group the same way.
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Callable, Mapping, Sequence

from reconciler.redact import Redactor, StreamRedactor

READ_SIZE = 65536


@dataclass(frozen=True)
class FormulaOutcome:
    """How a formula process ended."""

    exit_code: int
    """The process's exit status; ``128 + n`` when killed by signal ``n`` (as a shell reports it)."""
    timed_out: bool
    """The deadline passed and the runner stopped the process group."""
    stopped: bool = False
    """The runner was asked to stop (SIGTERM/SIGINT) and forwarded it to the group."""


def pump(source: BinaryIO, redactor: Redactor, sink: BinaryIO) -> None:
    """Copy ``source`` to ``sink`` until end of file, redacting on the way.

    Bytes are decoded incrementally as UTF-8 (invalid bytes become U+FFFD, so a
    character split across reads survives); everything written is flushed at
    once.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stream = StreamRedactor(redactor)
    fd = source.fileno()

    def emit(text: str) -> None:
        if text:
            sink.write(text.encode("utf-8", errors="replace"))
            sink.flush()

    try:
        while True:
            data = os.read(fd, READ_SIZE)
            if not data:
                break
            emit(stream.feed(decoder.decode(data)))
        emit(stream.feed(decoder.decode(b"", final=True)))
    finally:
        emit(stream.flush())


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _StopRequest:
    """Remembers a SIGTERM/SIGINT received by the runner while the formula runs."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()


def run_formula(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float,
    redactor: Redactor,
    stdout: BinaryIO,
    stderr: BinaryIO,
    cwd: Path | None = None,
    kill_grace: float = 10.0,
    drain_timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> FormulaOutcome:
    """Run ``argv`` in its own process group with ``env``; stream its output redacted.

    After ``timeout`` seconds the group gets SIGTERM, and SIGKILL
    ``kill_grace`` seconds later. Once the formula has exited, its output is
    drained for at most ``drain_timeout`` seconds; whatever it left behind in
    its group that still holds the pipes open is then killed.
    """
    stop = _StopRequest()
    stop.install()  # before the formula starts: a stop request from then on reaches it
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        stop.restore()
        raise
    pgid = proc.pid  # start_new_session: the child leads a new session and group
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, redactor, stdout), name="runner-stdout", daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, redactor, stderr), name="runner-stderr", daemon=True),
    ]
    for t in pumps:
        t.start()
    try:
        timed_out, stopped = _wait(proc, pgid, clock() + timeout, kill_grace, stop, clock)
    finally:
        stop.restore()
    _drain(pumps, pgid, drain_timeout)
    proc.stdout.close()
    proc.stderr.close()
    code = proc.returncode
    return FormulaOutcome(exit_code=128 - code if code < 0 else code, timed_out=timed_out, stopped=stopped)


def _wait(
    proc: subprocess.Popen[bytes],
    pgid: int,
    deadline: float,
    kill_grace: float,
    stop: _StopRequest,
    clock: Callable[[], float],
) -> tuple[bool, bool]:
    """Wait for ``proc``; stop its group at ``deadline`` or when asked. Returns (timed out, stopped)."""
    timed_out = stopped = False
    term_at: float | None = None
    killed = False
    while proc.poll() is None:
        now = clock()
        if term_at is None and (now >= deadline or stop.requested.is_set()):
            timed_out = now >= deadline
            stopped = not timed_out
            _signal_group(pgid, signal.SIGTERM)
            term_at = now
        if term_at is not None and not killed and now >= term_at + kill_grace:
            _signal_group(pgid, signal.SIGKILL)
            killed = True
        next_event = term_at + kill_grace if term_at is not None else deadline
        try:
            proc.wait(timeout=min(0.2, max(0.005, next_event - now)))
        except subprocess.TimeoutExpired:
            pass
    if term_at is not None:
        # Whatever else the formula started goes with it.
        _signal_group(pgid, signal.SIGKILL)
    return timed_out, stopped


def _drain(pumps: list[threading.Thread], pgid: int, drain_timeout: float) -> None:
    """Let the pumps reach end of file; kill leftovers of the group that keep a pipe open."""
    end = time.monotonic() + drain_timeout
    for t in pumps:
        t.join(max(0.0, end - time.monotonic()))
    if any(t.is_alive() for t in pumps):
        _signal_group(pgid, signal.SIGKILL)
        for t in pumps:
            t.join(1.0)
