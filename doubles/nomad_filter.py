"""Nomad's list ``filter`` expressions: go-bexpr's grammar, exactly, and its evaluation over JSON.

Nomad's list endpoints take ``?filter=<expression>`` (``/v1/allocations``, ``/v1/jobs``, ...) and
hand it to ``bexpr.CreateEvaluator`` (go-bexpr v0.1.16, ``nomad/state/paginator/paginator.go``).
This module is a recursive-descent reading of ``grammar/grammar.peg`` rule by rule:

* ``Input``: an ``OrExpression``, optionally wrapped in one pair of parentheses;
* ``or`` / ``and`` / ``not`` (each keyword needs whitespace around it), parentheses;
* match expressions: ``Selector == Value``, ``!=``, ``contains``, ``not contains``, ``matches``,
  ``not matches``; ``Selector is empty``, ``is not empty``, ``is nil``, ``is not nil``;
  ``Value in Selector``, ``Value not in Selector``;
* selectors ``A.B[\"key\"].0`` (``Identifier`` is ``[a-zA-Z][a-zA-Z0-9_/]*``) or a quoted JSON
  pointer ``\"/A/B\"``; values are selectors (an unquoted word is taken literally), numbers, or
  ``\"...\"`` / ```...``` strings.

There are **no relational operators**: ``ModifyIndex > 5`` is not go-bexpr, and Nomad answers 400
``failed to create result paginator: failed to read filter expression: 1:13 (12): no match found,
...`` (``nomad/alloc_endpoint.go`` wraps the paginator's error; ``command/agent/http.go`` writes a
coded RPC error's status and text). The double reproduces the status, the prefix and pigeon's
``line:col (offset)`` of the farthest failure; pigeon's ``expected: ...`` list is left out.

Evaluation follows ``evaluate.go``: the literal is coerced to the field's type (``strconv``
rules), ``contains``/``in`` work on strings (substring), lists and maps (keys), ``matches`` is a
regular expression search; a missing key of a map is "not present" (``NotPresentDisposition``),
a missing top-level field is an error. Evaluation errors are 400 ``failed to read result page:
...``. Collection expressions (``any``/``all``) parse, and answer 501: the double does not
evaluate them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

PARSE_PREFIX = "failed to create result paginator: failed to read filter expression: "
EVAL_PREFIX = "failed to read result page: "


class FilterError(Exception):
    """``status`` 400 (not go-bexpr, or it failed on an object) or 501 (go-bexpr the double does not evaluate)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the AST ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    path: tuple[str, ...]
    pointer: bool = False

    def __str__(self) -> str:
        return "/" + "/".join(self.path) if self.pointer else ".".join(self.path)


@dataclass(frozen=True)
class Match:
    selector: Selector
    op: str  # ==, !=, in, not in, matches, not matches, is empty, is not empty, is nil, is not nil
    value: str | None


@dataclass(frozen=True)
class Binary:
    op: str  # and, or
    left: Any
    right: Any


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class Collection:
    op: str


# -- the parser (grammar/grammar.peg) --------------------------------------------------------------

_WS = re.compile(r"[ \t\r\n]+")
_IDENT = re.compile(r"[a-zA-Z][a-zA-Z0-9_/]*")
_DIGITS = re.compile(r"[0-9]+")
_POINTER_SEGMENT = re.compile(r"/[\w\-.~:|]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


class _RuleError(Exception):
    """A semantic action's error (``&{ return false, errors.New(...) }``): the parse stops."""

    def __init__(self, pos: int, rule: str, message: str) -> None:
        super().__init__(message)
        self.pos, self.rule = pos, rule


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.farthest = 0

    # terminals ---------------------------------------------------------------------------
    def _fail(self, pos: int) -> None:
        self.farthest = max(self.farthest, pos)

    def lit(self, pos: int, word: str) -> int | None:
        if self.text.startswith(word, pos):
            return pos + len(word)
        self._fail(pos)
        return None

    def rx(self, pos: int, pattern: re.Pattern[str]) -> re.Match[str] | None:
        m = pattern.match(self.text, pos)
        if m is None:
            self._fail(pos)
        return m

    def ws(self, pos: int) -> int | None:
        m = self.rx(pos, _WS)
        return m.end() if m else None

    def opt_ws(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        return m.end() if m else pos

    def keyword(self, pos: int, *words: str, lead: bool = True, trail: bool = True) -> int | None:
        """``_ "w1" _ "w2" _`` (leading and trailing whitespace as the rule has them)."""
        p: int | None = pos
        for i, word in enumerate(words):
            if i or lead:
                p = self.ws(p)  # type: ignore[arg-type]
                if p is None:
                    return None
            p = self.lit(p, word)
            if p is None:
                return None
        return self.ws(p) if trail else p

    # rules ----------------------------------------------------------------------------------
    def input(self) -> Any:
        p = self.opt_ws(0)
        q = self.lit(p, "(")
        if q is not None:
            got = self.or_expr(self.opt_ws(q))
            if got is not None:
                node, r = got
                r = self.lit(self.opt_ws(r), ")")
                if r is not None and self.eof(self.opt_ws(r)):
                    return node
        got = self.or_expr(p)
        if got is not None:
            node, r = got
            if self.eof(self.opt_ws(r)):
                return node
        return None

    def eof(self, pos: int) -> bool:
        if pos == len(self.text):
            return True
        self._fail(pos)
        return False

    def or_expr(self, pos: int) -> tuple[Any, int] | None:
        left = self.and_expr(pos)
        if left is not None:
            p = self.keyword(left[1], "or")
            if p is not None:
                right = self.or_expr(p)
                if right is not None:
                    return Binary("or", left[0], right[0]), right[1]
            return left
        return self.collection(pos)

    def and_expr(self, pos: int) -> tuple[Any, int] | None:
        left = self.not_expr(pos)
        if left is None:
            return None
        p = self.keyword(left[1], "and")
        if p is not None:
            right = self.and_expr(p)
            if right is not None:
                return Binary("and", left[0], right[0]), right[1]
        return left

    def not_expr(self, pos: int) -> tuple[Any, int] | None:
        p = self.keyword(pos, "not", lead=False)
        if p is not None:
            inner = self.not_expr(p)
            if inner is not None:
                node = inner[0].operand if isinstance(inner[0], Not) else Not(inner[0])
                return node, inner[1]
        return self.paren(pos)

    def paren(self, pos: int) -> tuple[Any, int] | None:
        p = self.lit(pos, "(")
        if p is not None:
            inner = self.or_expr(self.opt_ws(p))
            if inner is not None:
                q = self.lit(self.opt_ws(inner[1]), ")")
                if q is not None:
                    return inner[0], q
        got = self.match(pos)
        if got is not None:
            return got
        if p is not None:
            inner = self.or_expr(self.opt_ws(p))
            if inner is not None and not self.text.startswith(")", self.opt_ws(inner[1])):
                raise _RuleError(pos, "grouping", "Unmatched parentheses")
        return None

    _SEL_OPS = (("==",), ("!=",), ("contains",), ("not", "contains"), ("matches",), ("not", "matches"))
    _UNARY_OPS = (("is", "empty"), ("is", "not", "empty"), ("is", "nil"), ("is", "not", "nil"))

    def match(self, pos: int) -> tuple[Match, int] | None:
        sel = self.selector(pos)
        if sel is not None:
            for words in self._SEL_OPS:
                if words[0] in ("==", "!="):
                    p = self.lit(self.opt_ws(sel[1]), words[0])
                    p = None if p is None else self.opt_ws(p)
                else:
                    p = self.keyword(sel[1], *words)
                if p is not None:
                    value = self.value(p)
                    if value is not None:
                        op = {"contains": "in", "not contains": "not in"}.get(" ".join(words), " ".join(words))
                        return Match(sel[0], op, value[0]), value[1]
            for words in self._UNARY_OPS:
                p = self.keyword(sel[1], *words, trail=False)
                if p is not None:
                    return Match(sel[0], " ".join(words), None), p
        value = self.value(pos)
        if value is not None:
            for words in (("in",), ("not", "in")):
                p = self.keyword(value[1], *words)
                if p is not None:
                    target = self.selector(p)
                    if target is not None:
                        return Match(target[0], " ".join(words), value[0]), target[1]
                    raise _RuleError(pos, "match", "Invalid selector")
        return None

    def collection(self, pos: int) -> tuple[Any, int] | None:
        for word in ("any", "all"):
            p = self.keyword(pos, word, lead=False)
            if p is None:
                continue
            sel = self.selector(p)
            q = None if sel is None else self.keyword(sel[1], "as")
            if q is None:
                continue
            ident = self.rx(q, _IDENT) or self.rx(q, re.compile("_"))
            if ident is None:
                continue
            r = self.opt_ws(ident.end())
            second = self.lit(r, ",")
            if second is not None:
                name = self.rx(self.opt_ws(second), re.compile(r"[a-zA-Z][a-zA-Z0-9_/]*|_"))
                if name is None:
                    continue
                r = name.end()
            r = self.lit(self.opt_ws(r), "{")
            inner = None if r is None else self.or_expr(self.opt_ws(r))
            end = None if inner is None else self.lit(self.opt_ws(inner[1]), "}")
            if end is not None:
                return Collection(word), end
        return None

    def selector(self, pos: int) -> tuple[Selector, int] | None:
        m = self.rx(pos, _IDENT)
        if m is not None:
            path, p = [m.group(0)], m.end()
            while True:
                nxt = self._selector_part(p)
                if nxt is None:
                    return Selector(tuple(path)), p
                path.append(nxt[0])
                p = nxt[1]
        p = self.lit(pos, '"')
        if p is None:
            return None
        parts = []
        while (seg := _POINTER_SEGMENT.match(self.text, p)) is not None:
            parts.append(seg.group(0)[1:])
            p = seg.end()
        self._fail(p)
        q = self.lit(p, '"')
        if q is None:
            return None
        return Selector(tuple(_unescape_pointer(s) for s in parts), pointer=True), q

    def _selector_part(self, pos: int) -> tuple[str, int] | None:
        p = self.lit(pos, ".")
        if p is not None:
            m = self.rx(p, _IDENT) or self.rx(p, _DIGITS)
            if m is not None:
                return m.group(0), m.end()
        p = self.lit(pos, "[")
        if p is None:
            return None
        q = self.opt_ws(p)
        lit = self.string(q)
        if lit is None:
            raise _RuleError(pos, "index", "Invalid index")
        r = self.lit(self.opt_ws(lit[1]), "]")
        if r is None:
            raise _RuleError(pos, "index", "Unclosed index expression")
        return lit[0], r

    def value(self, pos: int) -> tuple[str, int] | None:
        sel = self.selector(pos)
        if sel is not None:
            return str(sel[0]), sel[1]
        m = self.rx(pos, _NUMBER)
        if m is not None:
            end = m.end()
            if end == len(self.text) or self.text[end] in " \t\r\n)":
                return m.group(0), end
            raise _RuleError(pos, "number", "Invalid number literal")
        return self.string(pos)

    def string(self, pos: int) -> tuple[str, int] | None:
        if self.text.startswith("`", pos):
            end = self.text.find("`", pos + 1)
            if end < 0:
                raise _RuleError(pos, "string", "Unterminated string literal")
            return self.text[pos + 1 : end], end + 1
        if self.text.startswith('"', pos):
            end = self.text.find('"', pos + 1)
            if end < 0:
                raise _RuleError(pos, "string", "Unterminated string literal")
            try:
                return _go_unquote(self.text[pos : end + 1]), end + 1
            except ValueError as exc:
                raise _RuleError(pos, "string", str(exc)) from None
        self._fail(pos)
        return None


def _go_unquote(quoted: str) -> str:
    """``strconv.Unquote`` of a double-quoted literal (JSON's escapes are Go's common ones)."""
    try:
        value = json.loads(quoted)
    except json.JSONDecodeError:
        raise ValueError("invalid syntax") from None
    if not isinstance(value, str) or "\n" in quoted:
        raise ValueError("invalid syntax")
    return value


def _unescape_pointer(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{col} ({offset})"


def parse(expression: str) -> Any:
    """The AST of ``expression``, or FilterError(400) with Nomad's message."""
    parser = _Parser(expression)
    try:
        node = parser.input()
    except _RuleError as exc:
        raise FilterError(400, f"{PARSE_PREFIX}{_position(expression, exc.pos)}: rule {exc.rule}: {exc}") from None
    if node is None:
        raise FilterError(400, f"{PARSE_PREFIX}{_position(expression, parser.farthest)}: no match found")
    return node


def compile_filter(expression: str | None) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for ``expression`` (None when there is no filter); raises FilterError.

    The predicate itself raises FilterError(400, "failed to read result page: ...") when the
    expression cannot be evaluated on an object, as Nomad's paginator does.
    """
    if expression is None or expression == "":
        return None
    node = parse(expression)
    if _has_collection(node):
        raise FilterError(501, "the Nomad double does not evaluate go-bexpr collection expressions (any/all)")

    def predicate(obj: dict[str, Any]) -> bool:
        try:
            return _evaluate(node, obj)
        except _EvalError as exc:
            raise FilterError(400, f"{EVAL_PREFIX}{exc}") from None

    return predicate


def _has_collection(node: Any) -> bool:
    if isinstance(node, Collection):
        return True
    if isinstance(node, Binary):
        return _has_collection(node.left) or _has_collection(node.right)
    if isinstance(node, Not):
        return _has_collection(node.operand)
    return False


# -- evaluation (evaluate.go) ----------------------------------------------------------------------


class _EvalError(Exception):
    pass


_MISSING = object()
_NOT_PRESENT = {
    "==": False, "!=": True, "in": False, "not in": True, "is empty": True, "is not empty": False,
    "matches": False, "not matches": True, "is nil": True, "is not nil": False,
}


def _evaluate(node: Any, obj: Any) -> bool:
    if isinstance(node, Binary):
        if node.op == "and":
            return _evaluate(node.left, obj) and _evaluate(node.right, obj)
        return _evaluate(node.left, obj) or _evaluate(node.right, obj)
    if isinstance(node, Not):
        return not _evaluate(node.operand, obj)
    return _match(node, obj)


def _lookup(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path``; _MISSING for a key missing from a map (not present); an error otherwise."""
    current = obj
    for i, part in enumerate(path):
        if isinstance(current, dict):
            if part not in current:
                if i == 0:  # a top-level name is a struct field on the server: its absence is an error
                    raise _EvalError(f'error finding value in datum: /{"/".join(path)} at part {i}: couldn\'t find key: struct field with name "{part}"')
                return _MISSING
            current = current[part]
        elif isinstance(current, list):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                raise _EvalError(f"error finding value in datum: /{'/'.join(path)} at part {i}: invalid index") from None
        else:
            raise _EvalError(f"error finding value in datum: /{'/'.join(path)} at part {i}: invalid value kind")
    return current


def _coerce(raw: str, like: Any) -> Any:
    try:
        if isinstance(like, bool):
            return {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
                    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}[raw]
        if isinstance(like, int):
            return int(raw, 0)
        if isinstance(like, float):
            return float(raw)
    except (KeyError, ValueError):
        raise _EvalError(f'error getting match value in expression: strconv.Parse: parsing "{raw}": invalid syntax') from None
    return raw


def _match(m: Match, obj: Any) -> bool:
    value = _lookup(obj, m.selector.path)
    if value is _MISSING:
        return _NOT_PRESENT[m.op]
    negate = m.op in ("!=", "not in", "not matches", "is not empty", "is not nil")
    base = {"!=": "==", "not in": "in", "not matches": "matches", "is not empty": "is empty", "is not nil": "is nil"}.get(m.op, m.op)
    return _base_match(base, m, value) != negate


def _base_match(op: str, m: Match, value: Any) -> bool:
    if op == "is nil":
        if value is None:
            return True
        if isinstance(value, (dict, list)):
            return False
        if isinstance(value, (str, int, float)):
            raise _EvalError(f'cannot perform is-nil operations on type {_kind(value)} for selector: "{m.selector}"')
        return False
    if op == "is empty":
        if value is None or isinstance(value, (dict, list, str)):
            return not value
        raise _EvalError(f'cannot perform is-empty operations on type {_kind(value)} for selector: "{m.selector}"')
    assert m.value is not None
    if op == "==":
        if value is None or isinstance(value, (dict, list)):
            raise _EvalError("unable to find suitable primitive comparison function for matching")
        return _coerce(m.value, value) == value
    if op == "matches":
        if not isinstance(value, str):
            raise _EvalError(f"value of type {_kind(value)} is not convertible to []byte")
        try:
            return re.search(m.value, value) is not None
        except re.error as exc:
            raise _EvalError(f"failed to compile regular expression {m.value!r}: {exc}") from None
    # in / contains
    if isinstance(value, str):
        return m.value in value
    if isinstance(value, dict):
        return m.value in value
    if isinstance(value, list):
        for item in value:
            try:
                if not isinstance(item, (dict, list)) and item is not None and _coerce(m.value, item) == item:
                    return True
            except _EvalError:
                continue
        return False
    raise _EvalError(f'cannot perform in/contains operations on type {_kind(value)} for selector: "{m.selector}"')


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "uint64" if value >= 0 else "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "slice"
    if isinstance(value, dict):
        return "map"
    return "invalid"
