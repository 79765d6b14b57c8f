"""Prometheus metrics and a small HTTP endpoint for ``/metrics`` and ``/healthz``.

The loop records what happened through the methods of :class:`Metrics`; nothing
here reads the store or calls another system, so recording never fails a pass.
Each :class:`Metrics` owns its own ``CollectorRegistry`` (tests and the demo
run several reconcilers in one process).

``/healthz`` answers 200 ``ok`` with the age of the last finished pass, and 503
once no pass finished for ``stale_intervals`` loop intervals (the loop is wedged
or the process is starving): a supervisor or load balancer can act on it.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from states.machine import State

__all__ = ["Metrics", "MetricsServer", "parse_address"]

#: Seconds: merge → dispatch and job end → result pushed range from a second to the placement deadline.
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
PASS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters, histograms and gauges of one reconciler, in a registry of its own.

    ``interval`` is the loop interval (``RECONCILER_INTERVAL``) and ``stale_intervals``
    how many of them may pass without a finished pass before ``/healthz`` fails.
    ``clock`` is injectable for tests.
    """

    def __init__(self, *, interval: float = 10.0, stale_intervals: float = 3.0, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.interval = interval
        self.stale_intervals = stale_intervals
        self._clock = clock
        self._started = clock()
        self._last_pass: float | None = None
        self._last_alive: float | None = None
        self._lock = threading.Lock()
        r = self.registry
        self._transitions = Counter(
            "reconciler_transitions", "Run transitions journaled, by run kind, transition and states.",
            ["kind", "transition", "from_state", "to_state"], registry=r,
        )
        self._dispatch_latency = Histogram(
            "reconciler_dispatch_latency_seconds", "Seconds from the action's merge on main to its confirmed dispatch.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._report_latency = Histogram(
            "reconciler_report_latency_seconds", "Seconds from the job's end to its result being pushed.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._external_errors = Counter(
            "reconciler_external_errors", "Errors from an external system (nomad, vault, forge, git).", ["system"], registry=r,
        )
        self._pass_duration = Histogram(
            "reconciler_pass_duration_seconds", "Seconds one reconcile pass took (the service: one round of its main loop - ops repo, admission, metrics).", buckets=PASS_BUCKETS, registry=r,
        )
        self._last_pass_gauge = Gauge(
            "reconciler_last_pass_timestamp_seconds", "Unix time the last reconcile pass finished.", registry=r,
        )
        self._runs = Gauge("reconciler_runs", "Runs in the store, by state.", ["state"], registry=r)
        self._leader = Gauge("reconciler_leader", "1 while this process holds the leader lock, else 0.", registry=r)
        self._oldest = Gauge(
            "reconciler_run_oldest_age_seconds", "Seconds the oldest run in each non-terminal state has been in it.",
            ["state"], registry=r,
        )
        self._revocation_failures = Counter(
            "reconciler_claim_revocation_failures",
            "Claim or wrapping token revocations that failed: a token may be alive past its run's collection.",
            registry=r,
        )
        self._result_push_failures = Counter(
            "reconciler_result_push_failures", "Result pushes to the ops remote that failed (after their retries).", registry=r,
        )
        for system in ("nomad", "vault", "forge", "git"):
            self._external_errors.labels(system=system)  # exported at 0 from the start, so alerts and panels see it
        self._nomad_watch = Gauge(
            "reconciler_nomad_watch_live",
            "1 while the Nomad event stream is followed; 0 while it fails and the loop polls instead.", registry=r,
        )
        self._nomad_watch_failures = Counter(
            "reconciler_nomad_watch_failures", "Times the Nomad watch started failing (one per failure streak).", registry=r,
        )
        for state in State:
            self._runs.labels(state=state.value).set(0)
            if state.value != "reported":
                self._oldest.labels(state=state.value).set(0)

    # -- what the loop records -----------------------------------------------------
    def transition(self, kind: str, transition: str, from_state: str | None, to_state: str) -> None:
        """One journaled transition (``from_state`` None or "" for a run's creation)."""
        self._transitions.labels(
            kind=str(kind or "vault-action"), transition=str(transition), from_state=str(from_state or "none"), to_state=str(to_state)
        ).inc()

    def dispatch_latency(self, seconds: float) -> None:
        """Merge → confirmed dispatch, in seconds (negative values, from clock skew, count as 0)."""
        self._dispatch_latency.observe(max(0.0, float(seconds)))

    def report_latency(self, seconds: float) -> None:
        """Job end (or rejection) → result pushed, in seconds."""
        self._report_latency.observe(max(0.0, float(seconds)))

    def external_error(self, system: str) -> None:
        """One failed call to ``system`` (``nomad``, ``vault``, ``forge``, ``git``...)."""
        self._external_errors.labels(system=str(system or "unknown")).inc()

    def pass_duration(self, seconds: float) -> None:
        """A pass finished after ``seconds``; also marks the time ``/healthz`` measures from."""
        self._pass_duration.observe(max(0.0, float(seconds)))
        now = self._clock()
        with self._lock:
            self._last_pass = now
        self._last_pass_gauge.set(now)

    def set_runs_by_state(self, counts: Mapping[str, int]) -> None:
        """Runs per state (``RunStore.counts()``); states absent from ``counts`` are set to 0."""
        for state in State:
            self._runs.labels(state=state.value).set(int(counts.get(state.value, 0)))
        for name, n in counts.items():
            if name not in State._value2member_map_:
                self._runs.labels(state=str(name)).set(int(n))

    def set_oldest_by_state(self, since: Mapping[str, float]) -> None:
        """The oldest ``state_since`` (Unix time) per non-terminal state; states absent are 0 s old."""
        now = self._clock()
        for state in State:
            if state.value != "reported":
                at = since.get(state.value)
                self._oldest.labels(state=state.value).set(max(0.0, now - at) if at is not None else 0.0)

    def revocation_failed(self) -> None:
        self._revocation_failures.inc()

    def result_push_failed(self) -> None:
        self._result_push_failures.inc()

    def nomad_watch(self, live: bool) -> None:
        """The Nomad watch is live (True) or has just started failing (False: one failure streak)."""
        self._nomad_watch.set(1 if live else 0)
        if not live:
            self._nomad_watch_failures.inc()

    def set_leader(self, leader: bool) -> None:
        self._leader.set(1 if leader else 0)

    def alive(self) -> None:
        """The loop is turning without running passes (a standby waiting for the lock): keeps ``/healthz`` green."""
        now = self._clock()
        with self._lock:
            self._last_alive = now

    # -- what the endpoint shows -----------------------------------------------------
    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, str]:
        """``(healthy, message)``: healthy while the last pass (or the start) is younger than the limit."""
        now = self._clock()
        limit = self.interval * self.stale_intervals
        with self._lock:
            last = self._last_pass
            alive = self._last_alive
        if alive is not None and (last is None or alive > last) and now - alive <= limit:
            return True, f"ok: standby, loop alive {now - alive:.1f} s ago"
        if last is None:
            age = now - self._started
            if age > limit:
                return False, f"no pass finished in {age:.1f} s since start (limit {limit:.1f} s)"
            return True, f"ok: starting, no pass finished yet ({age:.1f} s since start)"
        age = now - last
        if age > limit:
            return False, f"last pass finished {age:.1f} s ago (limit {limit:.1f} s = {self.stale_intervals:g} intervals)"
        return True, f"ok: last pass {age:.1f} s ago"

    def serve(self, address: str) -> "MetricsServer":
        """Start the HTTP endpoint on ``address`` (``host:port``, ``:port``, port 0 = any free port)."""
        return MetricsServer(self, address).start()


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` → ``("127.0.0.1", 9464)``; ``":9464"`` listens on all interfaces; ``[::1]:9464`` for IPv6."""
    text = address.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {address!r} must be host:port (e.g. 127.0.0.1:9464)")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@dataclass
class MetricsServer:
    """A running endpoint; ``url`` is where it listens, ``stop()`` closes it."""

    metrics: Metrics
    address: str
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> "MetricsServer":
        host, port = parse_address(self.address)
        metrics = self.metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    healthy, message = metrics.health()
                    self._send(200 if healthy else 503, (message + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line
                return

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._httpd = server_class((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host = str(self._httpd.server_address[0])
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
