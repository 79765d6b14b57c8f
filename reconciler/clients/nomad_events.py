"""Nomad's event stream, read the way the server writes it.

``GET /v1/event/stream?topic=Allocation&topic=Job&namespace=N&index=I`` (``command/agent/event_endpoint.go``)
answers newline-delimited JSON: one ``{"Index": N, "Events": [...]}`` object per raft index that
produced matching events, and ``{}`` heartbeats - one as soon as the stream is open, then every
**30 s** (``nomad/event_endpoint.go``: ``stream.NewJsonStream(ctx, 30*time.Second)``;
``nomad/stream/ndjson.go``).

Resuming (``nomad/stream/event_broker.go`` ``Subscribe``, ``nomad/stream/event_buffer.go``
``StartAtClosest``): ``index=I`` starts *at* the buffered frame whose index is ``I`` - that frame is
delivered again - or, when it has left the buffer, at the oldest one still there; ``index=0``
replays the whole buffer. The buffer holds the last ``event_buffer_size`` indexes (default 100,
``nomad/config.go``), so after a long drop events can be gone: the first frame after a resume
then has an index above ``I`` and :attr:`EventStream.gap` says so. A reader that falls behind the
buffer is cut off ("event dropped from buffer", ``bufferItem.Next``).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import requests
import urllib3

from reconciler.clients.errors import TransientError

EVENT_HEARTBEAT = 30.0
"""Seconds between the server's ``{}`` heartbeats: a read that waits longer than this (plus slack) is a dead stream."""
TOPICS = ("Allocation", "Job")


@dataclass(frozen=True)
class Frame:
    """One raft index's events (``index`` None: a heartbeat)."""

    index: int | None
    events: tuple[dict[str, Any], ...] = ()


class EventStream:
    """An open event stream: iterate for frames; ``close()`` from any thread ends the iteration.

    Iteration raises TransientError when the connection drops or the server ends the stream
    (Nomad never ends it on its own while healthy), and for a line that is not JSON.
    """

    def __init__(self, response: requests.Response, since: int, *, system: str = "nomad") -> None:
        self._response = response
        self._since = since
        self._system = system
        self._closed = False
        self.gap = False
        """True when the first frame after a resume came after ``since``: events in between may be lost."""

    def close(self) -> None:
        """End the stream from any thread, at once.

        ``Response.close()`` from another thread waits for the reader's blocked read (up to a
        heartbeat period); shutting the socket down wakes that read immediately. The reader's
        own ``finally`` then closes the response.
        """
        self._closed = True
        sock = _socket_of(self._response)
        if sock is None:
            threading.Thread(target=self._response.close, name="event-stream-close", daemon=True).start()
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def __iter__(self) -> Iterator[Frame]:
        first = True
        try:
            for line in _lines(self._response):
                if not line:
                    continue
                frame = parse_line(line, system=self._system)
                if frame.index is not None:
                    if first and self._since > 0 and frame.index > self._since:
                        self.gap = True
                    first = False
                yield frame
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, AttributeError, ValueError) as exc:
            if self._closed:
                return
            raise TransientError(f"Nomad event stream dropped: {type(exc).__name__}", system=self._system) from exc
        finally:
            self._response.close()
        if not self._closed:
            raise TransientError("Nomad event stream ended by the server", system=self._system)


def _lines(response: requests.Response, size: int = 65536) -> Iterator[bytes]:
    """The body's lines as they arrive.

    ``read1`` returns whatever has arrived (a chunk, or what a close-delimited body has so far):
    ``iter_lines`` would either wait for a whole buffer or, with ``chunk_size=1``, make a Python
    call per byte of every Job event.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        yield from response.iter_lines(chunk_size=1)
        return
    pending = b""
    while True:
        data = read1(size)
        if not data:
            if pending:
                yield pending
            return
        pending += data
        *complete, pending = pending.split(b"\n")
        yield from complete


def _socket_of(response: requests.Response) -> socket.socket | None:
    """The connection's socket under urllib3 2.x / http.client, or None when the layout is not one we know."""
    raw = getattr(response, "raw", None)
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:
        sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


_FRAME_INDEX = re.compile(rb'^\{\s*"Index"\s*:\s*(\d+)\s*,')
_WORTH_READING = re.compile(rb'"Topic"\s*:\s*"Allocation"|"Type"\s*:\s*"JobDeregistered"|"Status"\s*:\s*"dead"')


def parse_line(line: bytes, *, system: str = "nomad") -> Frame:
    """One line of the stream: a heartbeat ``{}`` or ``{"Index", "Events"}``.

    Job events carry whole jobs, and a burst of dispatches is a Job event per child: a frame with no
    allocation event, no deregistration and no dead job is not decoded (its index is read, its
    ``events`` are left empty) - the watcher would ignore every one of them.
    """
    head = _FRAME_INDEX.match(line)
    if head is not None and _WORTH_READING.search(line) is None:
        return Frame(int(head.group(1)))
    try:
        message = json.loads(line)
    except ValueError:
        raise TransientError(f"Nomad event stream sent a line that is not JSON ({len(line)} bytes)", system=system) from None
    if not isinstance(message, dict):
        raise TransientError("Nomad event stream sent a JSON value that is not an object", system=system)
    if not message:
        return Frame(None)
    try:
        index = int(message["Index"])
    except (KeyError, TypeError, ValueError):
        raise TransientError("Nomad event stream sent a frame without an Index", system=system) from None
    events = message.get("Events") or []
    return Frame(index, tuple(e for e in events if isinstance(e, dict)))


__all__ = ["EVENT_HEARTBEAT", "TOPICS", "Frame", "EventStream", "parse_line"]
