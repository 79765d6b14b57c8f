"""A small loopback HTTP server that the protocol doubles build on.

Each double (Nomad, Vault, Forgejo) registers routes on a :class:`DoubleServer`
and serves real HTTP, so the real client libraries talk to it unchanged.

Besides routing, the server offers what fault-injection tests need:

* ``faults.fail_next(n, kind)`` / ``faults.set_rate(p, kinds, seed)``: make calls
  fail with an HTTP 500 (``"error"``), a connection dropped before the call is
  applied (``"drop"``), or the call applied and its reply dropped
  (``"apply-then-drop"``).
* ``faults.hold(match)``: apply a matching call, then block its reply until
  ``faults.release()`` - the window in which a crash test kills the client.
* ``calls``: every request seen (method, path, query, headers, body), so tests
  can check what reached the wire (for example that the idempotency token
  travels as a query parameter).
"""

from __future__ import annotations

import json
import random
import re
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = ("error", "drop", "apply-then-drop")


@dataclass
class Request:
    """One HTTP request as a double sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default

    def has_arg(self, name: str) -> bool:
        return name in self.query

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    """What a route handler returns."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        return cls(status, json.dumps(data).encode("utf-8"), hdrs)

    @classmethod
    def text(cls, text: str, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        hdrs = {"Content-Type": "text/plain; charset=utf-8"}
        hdrs.update(headers or {})
        return cls(status, text.encode("utf-8"), hdrs)

    @classmethod
    def empty(cls, status: int = 204) -> "Response":
        return cls(status, b"", {})


Handler = Callable[[Request], Response]


class _Hold:
    def __init__(self, match: Callable[[Request], bool]):
        self.match = match
        self.arrived = threading.Event()
        self.released = threading.Event()


class Faults:
    """Failure injection shared by every double."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str, Callable[[Request], bool]]] = []
        self._rate = 0.0
        self._rate_kinds: tuple[str, ...] = FAULT_KINDS
        self._rate_match: Callable[[Request], bool] = lambda r: True
        self._rng = random.Random(0)
        self._holds: list[_Hold] = []
        self.injected: list[tuple[str, str, str]] = []

    def fail_next(self, n: int = 1, kind: str = "error", match: Callable[[Request], bool] | None = None) -> None:
        """Make the next ``n`` matching calls fail with ``kind``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose one of {FAULT_KINDS}")
        with self._lock:
            self._queue.extend([(kind, match or (lambda r: True))] * n)

    def set_rate(
        self,
        rate: float,
        kinds: tuple[str, ...] = FAULT_KINDS,
        seed: int = 0,
        match: Callable[[Request], bool] | None = None,
    ) -> None:
        """Fail a random fraction ``rate`` of matching calls with one of ``kinds``."""
        with self._lock:
            self._rate = rate
            self._rate_kinds = kinds
            self._rng = random.Random(seed)
            self._rate_match = match or (lambda r: True)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rate = 0.0
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.released.set()

    def hold(self, match: Callable[[Request], bool]) -> _Hold:
        """Apply the next matching call, then block its reply until released."""
        h = _Hold(match)
        with self._lock:
            self._holds.append(h)
        return h

    def release(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for h in holds:
            h.released.set()

    def _pick(self, req: Request) -> str | None:
        with self._lock:
            for i, (kind, match) in enumerate(self._queue):
                if match(req):
                    del self._queue[i]
                    self.injected.append((kind, req.method, req.path))
                    return kind
            if self._rate and self._rate_match(req) and self._rng.random() < self._rate:
                kind = self._rng.choice(self._rate_kinds)
                self.injected.append((kind, req.method, req.path))
                return kind
        return None

    def _take_hold(self, req: Request) -> _Hold | None:
        with self._lock:
            for h in self._holds:
                if not h.arrived.is_set() and h.match(req):
                    h.arrived.set()
                    return h
        return None


class _DropConnection(Exception):
    pass


class DoubleServer:
    """A threaded HTTP server on loopback with regex routes and fault injection."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults = Faults()
        self.calls: list[Request] = []
        self.malformed: list[tuple[str, str, int, str]] = []
        """``(method, path, status, body)`` of every 400 or 501 answered: a request the real server refuses as
        malformed, or one relying on what the double does not implement (tests assert the client sends none)."""
        self._calls_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._make_handler())
        self._httpd.daemon_threads = True
        # Accepted sockets inherit TCP_NODELAY: without it a kept-alive reply waits ~40 ms (Nagle).
        self._httpd.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._httpd.handle_error = self._quiet_handle_error  # type: ignore[method-assign]
        self._thread: threading.Thread | None = None

    # -- routing --------------------------------------------------------------
    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register ``handler`` for ``method`` and a full-match path regex.

        Named groups of the regex become ``request.params``.
        """

        def register(handler: Handler) -> Handler:
            self._routes.append((method.upper(), re.compile(pattern), handler))
            return handler

        return register

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method.upper(), re.compile(pattern), handler))

    def not_found(self, req: Request) -> Response:
        """Reply for a path no route matches; doubles override the body format."""
        return Response.text("404 page not found", 404)

    # -- lifecycle ------------------------------------------------------------
    def serve_tls(self, certfile: str, keyfile: str, *, client_ca: str | None = None) -> "DoubleServer":
        """Serve HTTPS with this certificate (call before ``start``): the handshake runs in each
        connection's own thread, on its first read, so a client refusing the certificate stalls nobody.
        ``client_ca``: require a client certificate signed by it (a listener with mutual TLS)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        if client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=client_ca)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._tls = True
        return self

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{'https' if getattr(self, '_tls', False) else 'http'}://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def _quiet_handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timeout, held reply) is normal here, not a traceback."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError)):
            return  # ssl.SSLError: a client that refused the certificate (no CA configured)
        ThreadingHTTPServer.handle_error(self._httpd, request, client_address)

    def start(self) -> "DoubleServer":
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.faults.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "DoubleServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def calls_to(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        with self._calls_lock:
            return [c for c in self.calls if c.method == method.upper() and rx.fullmatch(c.path)]

    # -- dispatch -------------------------------------------------------------
    def _dispatch(self, req: Request) -> Response:
        with self._calls_lock:
            self.calls.append(req)
        kind = self.faults._pick(req)
        if kind == "error":
            return self.injected_error(req)
        if kind == "drop":
            raise _DropConnection()
        resp = self._apply(req)
        if resp.status in (400, 501):
            with self._calls_lock:
                self.malformed.append((req.method, req.path, resp.status, resp.body[:300].decode("utf-8", "replace")))
        if kind == "apply-then-drop":
            raise _DropConnection()
        hold = self.faults._take_hold(req)
        if hold is not None:
            hold.released.wait()
        return resp

    def injected_error(self, req: Request) -> Response:
        """The reply for an injected server error; doubles override the format."""
        return Response.text("injected fault: internal server error", 500)

    def _apply(self, req: Request) -> Response:
        method_allowed = False
        for method, rx, handler in self._routes:
            m = rx.fullmatch(req.path)
            if not m:
                continue
            if method != req.method:
                method_allowed = True
                continue
            req.params = {k: v for k, v in m.groupdict().items() if v is not None}
            return handler(req)
        if method_allowed:
            return Response.text("405 method not allowed", 405)
        return self.not_found(req)

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked()  # git sends large pushes chunked
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                req = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    resp = server._dispatch(req)
                except _DropConnection:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                except Exception as exc:  # a bug in a double must still answer
                    resp = Response.text(f"double internal error: {type(exc).__name__}: {exc}", 500)
                if isinstance(resp, StreamingResponse):
                    self._stream(resp)
                    return
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            def _read_chunked(self) -> bytes:
                """A ``Transfer-Encoding: chunked`` request body (RFC 9112 7.1), trailers skipped."""
                parts: list[bytes] = []
                while True:
                    size_line = self.rfile.readline(65537)
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline(3)  # the CRLF after the chunk

            def _stream(self, resp: "StreamingResponse") -> None:
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")  # said, so a client does not reuse it (git's chunked pushes cannot rewind)
                self.end_headers()
                try:
                    for chunk in resp.chunks:
                        if not chunk:
                            continue
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_HEAD = do_PATCH = _handle

        return _Handler


class StreamingResponse(Response):
    """A chunked response whose body is produced by an iterator (event streams)."""

    def __init__(self, chunks: Any, status: int = 200, headers: dict[str, str] | None = None):
        super().__init__(status, b"", headers or {"Content-Type": "application/json"})
        self.chunks = chunks
