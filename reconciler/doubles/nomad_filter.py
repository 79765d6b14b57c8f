"""The part of Nomad's list ``filter`` expressions (go-bexpr) the doubles understand.

Nomad's list endpoints take ``?filter=<expression>`` and return only the
objects it matches (``/v1/allocations``, ``/v1/jobs``, ...). The double knows
comparisons of one field (a dotted selector) with a literal, joined by
``and``::

    ModifyIndex > 1234
    JobID == "vault-runner/dispatch-1" and ClientStatus != "pending"

A malformed expression is a 400, as on the server ("failed to read filter
expression"); a well-formed one the double does not implement (``or``,
``not``, ``in``, ``matches``, parentheses) is a 501 naming what is missing, so
a caller relying on more than the double knows finds out at once instead of
getting an unfiltered answer.
"""

from __future__ import annotations

import re
from typing import Any, Callable

_CLAUSE = re.compile(
    r"""\s*(?P<sel>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*
        (?P<op>==|!=|>=|<=|>|<)\s*
        (?P<val>"(?:[^"\\]|\\.)*"|-?\d+|true|false)\s*$""",
    re.VERBOSE,
)
_UNSUPPORTED = re.compile(r"(?:^|\s)(or|not|in|contains|matches|is)(?:\s|$)|[()]")


class FilterError(Exception):
    """``status`` 400 (malformed) or 501 (valid go-bexpr the double does not implement)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def compile_filter(expression: str | None) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for ``expression`` (None when there is no filter)."""
    if expression is None or not expression.strip():
        return None
    clauses = []
    for part in re.split(r"\s+and\s+", expression.strip()):
        match = _CLAUSE.match(part)
        if match is None:
            unsupported = _UNSUPPORTED.search(part)
            if unsupported:
                raise FilterError(501, f"the Nomad double does not implement {unsupported.group(0).strip()!r} in filter expressions: {expression!r}")
            raise FilterError(400, f"failed to read filter expression: {expression!r}")
        clauses.append((match.group("sel").split("."), match.group("op"), _literal(match.group("val"))))

    def predicate(obj: dict[str, Any]) -> bool:
        return all(_compare(_select(obj, path), op, value) for path, op, value in clauses)

    return predicate


def _literal(raw: str) -> Any:
    if raw.startswith('"'):
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    if raw in ("true", "false"):
        return raw == "true"
    return int(raw)


def _select(obj: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "==":
        return actual == expected or (actual is not None and str(actual) == str(expected) and not isinstance(expected, bool))
    if op == "!=":
        return not _compare(actual, "==", expected)
    try:
        left, right = (float(actual), float(expected)) if isinstance(expected, int) and not isinstance(expected, bool) else (str(actual), str(expected))
    except (TypeError, ValueError):
        return False
    return {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[op]
