"""The errors every client raises, so the loop knows whether to try again.

    ReconcilerError
    ├── TransientError     try again on a later pass (optionally after ``delay`` seconds):
    │                      connection dropped, timeout, 5xx "no leader", Vault sealed,
    │                      push race, lock held by another process
    └── PermanentError     retrying the same call cannot help: end the run with ``reason``
        └── NotFoundError  the object asked for does not exist (404)

Clients translate library exceptions into these and chain the original
(``raise TransientError(...) from exc``). The message says what failed and,
where it can, what to do.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error a client raises on purpose."""

    def __init__(self, message: str, *, system: str = "", delay: float | None = None) -> None:
        super().__init__(message)
        self.system = system
        self.delay = delay

    @property
    def reason(self) -> str:
        return str(self)


class TransientError(ReconcilerError):
    """Try again later; nothing about the request itself is wrong."""


class PermanentError(ReconcilerError):
    """The request cannot succeed as it is; record the reason and stop."""


class NotFoundError(PermanentError):
    """The object asked for does not exist."""


class ConflictError(TransientError):
    """A check-and-set write lost a race; ``current`` is the object as it now is (or None)."""

    def __init__(self, message: str, current: dict | None = None, *, system: str = "") -> None:
        super().__init__(message, system=system)
        self.current = current
