"""Redaction of secrets from text: shared by the runner and the reconciler.

Two kinds of secrets are removed:

* **Known values** - the values of the secrets a run declared (and the
  contents of its credential mounts). Each occurrence becomes
  ``[REDACTED:<NAME>]``. A multi-line value (a private key) is also looked for
  line by line, so a formula that prints it reformatted or in pieces is still
  caught. Values (and lines) shorter than :data:`MIN_SECRET_LENGTH` characters
  are ignored: replacing every ``"a"`` or ``"ok"`` would destroy the log
  without protecting anything worth protecting.
* **Secret-shaped strings** (:data:`SECRET_PATTERNS`) - Vault tokens,
  private-key blocks, common API-token formats - whatever their value. Each
  becomes ``[REDACTED]``. This is the reconciler's defence in depth for secrets
  it cannot know (a token a formula minted itself).

Every occurrence of every value and every pattern match is found in the
original text first, overlapping spans are merged, and only then is each
merged span replaced. So a secret overlapping another secret, or a token
inside an ``Authorization`` header, leaves no fragment behind.

:class:`StreamRedactor` does the same for text that arrives in chunks (a
subprocess pipe), holding back just enough text that a secret split across
chunks is still caught. :func:`redacted_tail` redacts *then* cuts, so a secret
straddling the cut leaves no fragment in the tail.

This module does no I/O and imports nothing outside the standard library: the
runner ships it into the task image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

MIN_SECRET_LENGTH = 4
"""Known values (and lines of multi-line values) shorter than this are not redacted."""

GENERIC_MARK = "[REDACTED]"
"""What a secret-shaped string (a pattern match) is replaced with."""

_BOUNDARY = r"(?<![A-Za-z0-9_])"
"""A token must not be the tail of a longer word (``xhvs.…`` is not a token)."""

_PEM_LABEL = r"[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?"
_PEM_END = rf"-----END {_PEM_LABEL}-----"

SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Vault tokens: service, batch and recovery tokens (Vault >= 1.10).
    re.compile(_BOUNDARY + r"hv[sbr]\.[A-Za-z0-9_-]{24,}"),
    # Legacy Vault service tokens: "s." and exactly 24 base62 characters.
    re.compile(r"(?<![A-Za-z0-9_.])s\.[A-Za-z0-9]{24}(?![A-Za-z0-9])"),
    # PEM / PGP private-key blocks; an unterminated one runs to the end of the text.
    re.compile(rf"-----BEGIN {_PEM_LABEL}-----(?:[\s\S]*?{_PEM_END}|[\s\S]*)"),
    # GitHub: classic personal, OAuth, user-to-server, server-to-server, refresh tokens.
    re.compile(_BOUNDARY + r"gh[pousr]_[A-Za-z0-9]{36,}"),
    # GitHub fine-grained personal access tokens.
    re.compile(_BOUNDARY + r"github_pat_[A-Za-z0-9_]{22,}"),
    # npm access tokens.
    re.compile(_BOUNDARY + r"npm_[A-Za-z0-9]{36,}"),
    # Docker Hub personal access tokens.
    re.compile(_BOUNDARY + r"dckr_pat_[A-Za-z0-9_-]{20,}"),
    # Slack tokens (bot, user, app, refresh, ...).
    re.compile(_BOUNDARY + r"xox[abpros]-[A-Za-z0-9-]{10,}"),
    # AWS access key ids (long-lived and temporary).
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"),
    # GitLab personal access tokens.
    re.compile(_BOUNDARY + r"glpat-[A-Za-z0-9_-]{20,}"),
    # HTTP Authorization headers: only the credential is replaced.
    re.compile(r"(?i)authorization[ \t]*[:=][ \t]*(?:bearer|token|basic)[ \t]+(?P<secret>[^\s\"',;]+)"),
)
"""Secret-shaped strings, redacted whatever their value.

A pattern with a ``secret`` group has only that group replaced (so
``Authorization: Bearer [REDACTED]`` still says what it was). Every pattern is
*prefix-closed* beyond its minimal length (a longer prefix of a token still
matches) and, except the private-key block, never spans a newline: this is what
lets :class:`StreamRedactor` decide how much text to hold back.
"""

_PEM_BEGIN_UNTERMINATED = re.compile(rf"-----BEGIN {_PEM_LABEL}-----(?![\s\S]*?{_PEM_END})")
_PEM_END_RE = re.compile(_PEM_END)
_PEM_END_MAX_LEN = 80
"""Longest END marker we keep looking for across chunks while inside a key block."""

PATTERN_HOLDBACK = 256
"""Characters of a line without a newline that :class:`StreamRedactor` holds back.

Longer than the minimal match of every pattern (and than a PEM ``BEGIN``
marker), so a token starting before the cut already matches in the buffer and
is held back as a whole.
"""


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    label: str | None
    """The secret's name for a known value; ``None`` for a pattern match."""


def _value_variants(value: str) -> list[str]:
    """What to look for for one known value: itself, stripped, and each line."""
    variants = {value, value.strip()}
    if "\n" in value or "\r" in value:
        variants.update(line.strip() for line in value.splitlines())
    return [v for v in variants if len(v) >= MIN_SECRET_LENGTH]


def _merge(spans: Iterable[_Span]) -> list[_Span]:
    """Merge overlapping spans; a merged span keeps the name of the longest value in it.

    Adjacent (touching, not overlapping) spans stay apart, so two secrets
    printed back to back give two markers, however the text was chunked.
    """
    merged: list[_Span] = []
    best_len: list[int] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            label, length = last.label, best_len[-1]
            if span.label is not None and (label is None or span.end - span.start > length):
                label, length = span.label, span.end - span.start
            merged[-1] = _Span(last.start, max(last.end, span.end), label)
            best_len[-1] = length
        else:
            merged.append(span)
            best_len.append(span.end - span.start if span.label is not None else -1)
    return merged


class Redactor:
    """Replaces known secret values and secret-shaped strings in text.

    ``values`` maps a secret's name (``GITHUB_TOKEN``, ``mount:ssh/id_ed25519``)
    to its value. Values shorter than :data:`MIN_SECRET_LENGTH` are ignored.
    """

    def __init__(self, values: Mapping[str, str] | None = None, patterns: Iterable[re.Pattern[str]] = SECRET_PATTERNS):
        needles: dict[str, str] = {}
        for name, value in (values or {}).items():
            for variant in _value_variants(value):
                # One name per needle; keep the first (a variant shared by two
                # secrets is redacted either way).
                needles.setdefault(variant, name)
        # Longest first: the name of the longest value wins a merged span.
        self._needles: list[tuple[str, str]] = sorted(needles.items(), key=lambda kv: -len(kv[0]))
        self._patterns = tuple(patterns)

    @property
    def longest_value(self) -> int:
        """Length of the longest text searched for as a known value (0 if none)."""
        return len(self._needles[0][0]) if self._needles else 0

    @property
    def needles(self) -> list[str]:
        """Every text searched for as a known value, longest first."""
        return [n for n, _ in self._needles]

    def value_spans(self, text: str) -> list[_Span]:
        """Every occurrence (overlapping ones included) of every known value."""
        spans: list[_Span] = []
        for needle, name in self._needles:
            i = text.find(needle)
            while i != -1:
                spans.append(_Span(i, i + len(needle), name))
                i = text.find(needle, i + 1)
        return spans

    def pattern_matches(self, text: str) -> list[tuple[int, int, int, int]]:
        """``(match start, match end, redact start, redact end)`` of each pattern match."""
        found = []
        for rx in self._patterns:
            for m in rx.finditer(text):
                if m.end() == m.start():
                    continue
                if "secret" in rx.groupindex and m.group("secret") is not None:
                    found.append((m.start(), m.end(), m.start("secret"), m.end("secret")))
                else:
                    found.append((m.start(), m.end(), m.start(), m.end()))
        return found

    def spans(self, text: str) -> list[_Span]:
        """The merged spans of ``text`` that :meth:`redact` replaces."""
        spans = self.value_spans(text)
        spans.extend(_Span(a, b, None) for _, _, a, b in self.pattern_matches(text))
        return _merge(spans)

    def redact(self, text: str) -> str:
        """``text`` with every known value and every secret-shaped string replaced."""
        if not text:
            return text
        out: list[str] = []
        pos = 0
        for span in self.spans(text):
            out.append(text[pos : span.start])
            out.append(GENERIC_MARK if span.label is None else f"[REDACTED:{span.label}]")
            pos = span.end
        out.append(text[pos:])
        return "".join(out)


class StreamRedactor:
    """Redacts text arriving in chunks, e.g. from a subprocess pipe.

    :meth:`feed` returns the part of what has arrived so far that can no longer
    be part of a secret, redacted; the rest is held back until more text
    arrives or :meth:`flush` is called at the end of the stream. What is held
    back:

    * a tail that is a prefix of a known value (a value split across chunks);
    * any known value or pattern match that would straddle the cut, or that
      reaches the end of the buffer and might still grow (a token, an
      unterminated private-key block);
    * the current line, unless it is longer than :data:`PATTERN_HOLDBACK`
      characters, in which case only its last :data:`PATTERN_HOLDBACK`.

    So whole lines are emitted as soon as their newline arrives, unless they
    may be part of a secret.

    Memory is bounded by ``max_pending``: when a held-back pattern match (an
    endless token, a key block without an END line) grows beyond it, what has
    arrived is emitted redacted; inside a key block everything is then
    discarded until its END line.
    """

    def __init__(self, redactor: Redactor | Mapping[str, str] | None = None, max_pending: int = 256 * 1024):
        self._redactor = redactor if isinstance(redactor, Redactor) else Redactor(redactor)
        self._pending = ""
        self._in_key_block = False
        self._max_pending = max(max_pending, PATTERN_HOLDBACK + self._redactor.longest_value + 1)

    @property
    def pending(self) -> int:
        """Characters currently held back."""
        return len(self._pending)

    def feed(self, chunk: str) -> str:
        """Add ``chunk``; return the redacted text that is now safe to emit."""
        buf = self._pending + chunk
        if self._in_key_block:
            buf = self._skip_key_block(buf)
            if self._in_key_block:
                return ""
        cut = self._safe_cut(buf)
        if len(buf) - cut > self._max_pending:
            return self._force(buf)
        self._pending = buf[cut:]
        return self._redactor.redact(buf[:cut])

    def flush(self) -> str:
        """End of stream: return everything still held back, redacted."""
        buf, self._pending = self._pending, ""
        if self._in_key_block:
            self._in_key_block = False
            return ""
        return self._redactor.redact(buf)

    # -- internals ------------------------------------------------------------
    def _safe_cut(self, buf: str) -> int:
        """The largest index before which ``buf`` can be emitted without cutting a secret."""
        end = len(buf)
        cut = max(end - PATTERN_HOLDBACK, buf.rfind("\n") + 1)
        cut = min(cut, self._partial_value_start(buf))
        return self._before_straddling(buf, cut, include_patterns=True)

    def _partial_value_start(self, buf: str) -> int:
        """Start of the earliest tail of ``buf`` that is a proper prefix of a known value."""
        end = len(buf)
        earliest = end
        for needle in self._redactor.needles:
            first = needle[0]
            i = buf.find(first, max(0, end - len(needle) + 1))
            while i != -1 and i < earliest:
                if needle.startswith(buf[i:]):
                    earliest = i
                    break
                i = buf.find(first, i + 1)
        return earliest

    def _before_straddling(self, buf: str, cut: int, include_patterns: bool) -> int:
        """Move ``cut`` back to the start of any secret straddling it (or growing at the end)."""
        end = len(buf)
        ranges = [(s.start, s.end) for s in self._redactor.value_spans(buf)]
        growing: list[tuple[int, int]] = []
        if include_patterns:
            for start, stop, _, _ in self._redactor.pattern_matches(buf):
                (growing if stop == end else ranges).append((start, stop))
        changed = True
        while changed:
            changed = False
            for start, stop in ranges:
                if start < cut < stop:
                    cut, changed = start, True
            for start, _ in growing:
                if start < cut:
                    cut, changed = start, True
        return cut

    def _force(self, buf: str) -> str:
        """Emit an over-long held-back buffer, keeping only partial known values back."""
        cut = min(len(buf), self._partial_value_start(buf))
        cut = self._before_straddling(buf, cut, include_patterns=False)
        head, self._pending = buf[:cut], buf[cut:]
        if _PEM_BEGIN_UNTERMINATED.search(head):
            # redact() replaces the block to the end of `head`; the rest of the
            # block is still to come and must be swallowed until its END line.
            self._in_key_block = True
            self._pending = ""
        return self._redactor.redact(head)

    def _skip_key_block(self, buf: str) -> str:
        """Inside an over-long key block: drop text up to and including its END line."""
        m = _PEM_END_RE.search(buf)
        if m is None:
            self._pending = buf[-_PEM_END_MAX_LEN:]
            return ""
        self._in_key_block = False
        return buf[m.end() :]


def redacted_tail(text: str, values: Mapping[str, str] | None = None, limit: int = 1000) -> str:
    """The last ``limit`` characters of ``text`` after redaction.

    Redacts first, then cuts: a secret straddling the cut is already replaced,
    so at worst a fragment of a ``[REDACTED...]`` marker survives the cut,
    never a fragment of the secret.
    """
    if limit <= 0:
        return ""
    return Redactor(values).redact(text)[-limit:]
