"""The ops repo, through real git: the only module of the reconciler that runs git.

Layout on disk
    ``OpsRepoSettings.root`` is a **bare** clone (``git init --bare`` + a fetch of the
    primary branch only). It is a cache of objects and refs, never a checkout: reads go
    through ``cat-file`` / ``log`` / ``diff`` on commit shas, and results are written with
    plumbing (``fast-import`` for the blobs, a temporary index, ``commit-tree``, ``push``).
    The remote-tracking ref ``refs/remotes/origin/<primary_branch>`` is the last fetched
    head.

    An existing *non-bare* clone at ``root`` (the old shell dispatcher kept one at
    ``./ops``) is accepted as it is: only its ``.git`` is used, its working tree and
    index are never read or written.

Crash safety
    Every instance holds a shared ``flock`` on ``<git dir>/reconciler.flock`` while it
    lives. ``ensure_ready`` first tries to take that lock exclusively: if it gets it, no
    other ``OpsRepo`` uses the clone, so every git ``*.lock`` file (``index.lock``,
    ``HEAD.lock``, ref locks), every half-done rebase/merge/cherry-pick state and every
    leftover scratch index was left by a killed process and is removed, whatever its age.
    Otherwise (a neighbour is alive) it waits for the writer lock below, so no neighbour is
    mid-fetch or mid-push, and removes only leftovers older than ``stale_lock_seconds``
    (protection against a git run by hand in the same clone). A killed clone leaves only a
    hidden sibling directory holding the history steps already fetched, which the next attempt
    resumes from: the clone is renamed into place when complete.

Concurrency
    One instance may be used from many threads: reads share one long-lived
    ``git cat-file --batch`` process behind a lock; fetch and push rounds hold the writer
    lock (an RLock per instance plus an exclusive ``flock`` on
    ``<git dir>/reconciler-writer.flock``, so processes sharing one clone take turns
    instead of failing on each other's ref locks). Clones on other hosts or paths push to
    the same remote at once: a rejected non-fast-forward push is normal, and is rebuilt on
    the freshly fetched head and retried with backoff and jitter.

Full history
    History-based answers (``last_change``, ``history``, ``is_ancestor``, ``merge_base``, …) need a
    full clone: a shallow clone's boundary commit has no parents, so ``git log -- <path>`` would
    name it as the change of every file. ``ensure_ready`` unshallows an existing shallow clone
    (``git fetch --unshallow``), and so do ``fetch`` and every history verb if one is made shallow
    later; when that fetch fails the clone is refused with how to fix it.

Reading
    Paths are resolved through tree objects read with ``cat-file`` and cached by object
    id (immutable, so never stale), then blobs are read by id in one pipelined exchange.
    ``cat-file <sha>:<path>`` would scan a directory's entries on every call, which made
    reading 10,000 files of one directory quadratic (23 s instead of 0.2 s).

    Names are taken verbatim from tree objects and from ``-z`` listings, never from quoted
    output: they may hold newlines, tabs and any UTF-8 (bytes that are not UTF-8 come back
    as surrogate escapes). Only regular files (modes 100644, 100755) are files to ``read`` and
    ``list_dir``; ``list_entries`` also shows symlinks, submodules (gitlinks) and directories.

Writing
    Results are one commit built on the head known here and pushed with
    ``--force-with-lease=refs/heads/<branch>:<that head>``: a remote that moved - on, or back
    after a human's force-push - refuses, and the commit is rebuilt on the fetched head. A plain
    push would fast-forward over a rewound branch and bring back what the human removed.

Errors
    Network, lock and race problems raise ``TransientError(system="git")``; a remote that
    does not exist, refused credentials, a missing branch or a server-side refusal raise
    ``PermanentError``; an unknown commit given to a history verb raises ``NotFoundError``.
    Messages carry git's stderr with any ``user:password@`` removed from URLs.

The subprocess environment is the process's own (git needs ``PATH``, ``HOME``, SSH agent,
proxy settings), passed through uninterpreted, minus variables that would point git at
another repository, plus ``GIT_TERMINAL_PROMPT=0``, ``LC_ALL=C`` (stable messages to
classify) and the author/committer identity from settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

from reconciler.clients.git_env import GitAuth, clean_env
from reconciler.clients.errors import NotFoundError, PermanentError, ReconcilerError, TransientError
from reconciler.facts import CommitInfo
from reconciler.settings import OpsRepoSettings

log = logging.getLogger(__name__)

SYSTEM = "git"
REMOTE = "origin"
"""Name of the remote inside the local clone; commands use the name, so the URL (which
may carry credentials) never appears in a process's argv after setup."""

_PROCESS_LOCK = "reconciler.flock"
"""Shared flock held by every live instance (named so git's ``*.lock`` cleanup never matches it)."""
_WRITER_LOCK = "reconciler-writer.flock"
"""Exclusive flock held around fetch and push rounds, so processes sharing one clone take turns."""
_TMP_DIR = "reconciler-tmp"

# Variables that would make git use another repository, index or object store.
_SCRUBBED_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_QUARANTINE_PATH",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_REPLACE_REF_BASE",
)

# `-c` options given to every command.
_CONFIG = (
    "core.hooksPath=/dev/null",  # a legacy clone's local hooks must not run on our pushes
    "core.filesRefLockTimeout=10000",  # wait (ms) for a neighbour's ref lock instead of failing
    "core.packedRefsTimeout=10000",
    "core.quotePath=false",
    "commit.gpgSign=false",
    "advice.detachedHead=false",
    "gc.autoDetach=false",  # no background gc outliving us while holding locks we would clean
    "maintenance.autoDetach=false",
    "credential.helper=",  # no configured helper (``store``) may copy the askpass token to disk
)

# Half-done operations a killed git (or a human) may leave in a git dir.
_OPERATION_STATE = (
    "rebase-merge",
    "rebase-apply",
    "sequencer",
    "MERGE_HEAD",
    "MERGE_MSG",
    "MERGE_MODE",
    "MERGE_RR",
    "AUTO_MERGE",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
)

_TREE_MODE = "40000"
_BLOB_MODES = ("100644", "100755", "120000")  # what ``ls-tree`` calls blobs (symlinks included)
_FILE_MODES = ("100644", "100755")  # regular files: the only entries ``read`` and ``list_dir`` answer with
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TREE_CACHE_SIZE = 256
_BLOB_CACHE_SIZE = 4096
"""Small blobs kept by object id (immutable: never stale): an action file is read when it is found,
again when its run is validated, and by the approval check, each a ``cat-file`` exchange otherwise."""
_BLOB_CACHE_MAX = 64 * 1024
_GRAPH_CACHE_SIZE = 8192
"""Answers about the commit graph between full commit ids (ancestry, merge base, presence): fixed by
the ids themselves, so kept across passes; the approval gate asks the same ones pass after pass."""
_COMMIT_MEMO_SIZE = 4096

_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")

# Phrases in git's output, lower-cased. Checked in this order.
_RACE_PHRASES = (
    "[rejected]",
    "fetch first",
    "non-fast-forward",
    "stale info",
    "failed to update ref",
    "cannot lock ref",
    "incorrect old value",
    "failed to lock",
)
_PERMANENT_PHRASES = (
    "does not appear to be a git repository",
    "repository not found",
    "not found",  # "fatal: repository 'https://…' not found", HTTP 404
    "couldn't find remote ref",
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "permission denied",
    "returned error: 401",
    "returned error: 403",
    "returned error: 404",
    "is not supported",  # unknown protocol
    "[remote rejected]",  # server-side hook or protected branch: retrying cannot help
    "not a git repository",
)


def redact(text: str) -> str:
    """Remove ``user:password@`` from every URL in ``text`` (for messages and logs)."""
    return _URL_USERINFO.sub(r"\1", text)


_TRANSIENT_PHRASES = (
    "cannot lock",
    "unable to lock",
    ".lock': file exists",
    "timed out",
    "could not resolve",
    "connection refused",
    "connection reset",
    "hung up",
    "early eof",
    "rpc failed",
    "returned error: 5",  # HTTP 5xx
    "temporarily unavailable",
)


def _error_class(output: str) -> type[ReconcilerError]:
    """Classify a failed git command by its output: race, lock and network problems are
    transient, a missing remote or branch and refused credentials are permanent, and
    anything unrecognised is transient (tried again on a later pass, visible in status)."""
    low = output.lower()
    if any(p in low for p in _RACE_PHRASES) and "[remote rejected]" not in low:
        return TransientError
    if any(p in low for p in _TRANSIENT_PHRASES):
        return TransientError
    if any(p in low for p in _PERMANENT_PHRASES):
        return PermanentError
    return TransientError


def credential_hint(output: str, *, write: bool) -> str:
    """What a refusal by the forge means, naming the missing permission ("" when it is not one).

    Forgejo answers git over HTTP (``routers/web/repo/githttp.go``) with 401 for a token it does
    not know, a bare 403 ``Forbidden`` for a token without the repository scope, and 404
    ``Repository not found`` to a user who may not read (or, for a push, write) the repository:
    git's own message names none of these, so the hint does.
    """
    low = output.lower()
    if any(p in low for p in ("authentication failed", "could not read username", "could not read password", "terminal prompts disabled")):
        return (
            "; the forge did not accept the token (FORGE_TOKEN or FORGE_TOKEN_FILE is wrong, revoked or missing, "
            "or the remote is not on FORGE_URL): git needs a forge token with scope read:repository to fetch "
            "and write:repository to push"
        )
    if "returned error: 403" in low:
        scope = "write:repository" if write else "read:repository"
        return f"; the forge token lacks the {scope} scope (or is public-only and the repository is private): mint one with {scope}"
    if write and ("not found" in low or "returned error: 404" in low):
        return "; the token's user lacks write permission on the ops repo (Forgejo answers 404): make it a collaborator with write access"
    return ""


def _is_push_race(output: str) -> bool:
    """True when a push was refused only because the branch moved under us."""
    low = output.lower()
    return any(p in low for p in _RACE_PHRASES)


_MISSING_ON_REMOTE = (
    "couldn't find remote ref",
    "no such remote ref",
    "not our ref",
    "unadvertised object",
    "no matching remote head",
)


def _is_missing_on_remote(output: str) -> bool:
    """A fetch refused only because the remote has no such ref or object (an answer, not a failure)."""
    low = output.lower()
    return any(p in low for p in _MISSING_ON_REMOTE)


def _incoming_bytes(git_dir: Path) -> int:
    """Bytes of incoming packs (``index-pack`` writes ``objects/pack/tmp_pack_*``; a push received
    is ``objects/incoming-*``): it grows while a fetch or clone receives data."""
    total = 0
    objects = git_dir / "objects"
    for pattern in ("pack/tmp_*", "incoming-*/pack/tmp_*", "pack/*.pack"):
        for path in objects.glob(pattern):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


def _check_path(path: str) -> str:
    """A repository-relative file path to *write*: safe on a ``fast-import`` line or an index entry."""
    if any(c in path for c in "\n\r"):
        raise ValueError(f"not a repository path: {path!r}")
    return _check_read_path(path)


def _check_read_path(path: str) -> str:
    """A repository-relative path to *read* (resolved through tree objects, or one argv word after ``--``).

    Tree entry names may hold newlines, tabs and any bytes but ``/`` and NUL, so only those
    are refused, with the components git itself never writes (empty, ``.``, ``..``).
    """
    if not path or path.startswith("/") or "\0" in path:
        raise ValueError(f"not a repository path: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"not a normalised repository path: {path!r}")
    return path


def _check_rev(rev: str) -> str:
    """A revision given on the command line: never an option, never several words."""
    if not rev or rev.startswith("-") or any(c.isspace() or c == "\0" for c in rev):
        raise ValueError(f"not a git revision: {rev!r}")
    return rev


def _parse_tree(raw: bytes, oid_bytes: int) -> dict[str, tuple[str, str]]:
    """Entries of a raw tree object: ``<mode> <name>\\0<binary id>`` repeated."""
    entries: dict[str, tuple[str, str]] = {}
    i, end = 0, len(raw)
    while i < end:
        space = raw.index(b" ", i)
        nul = raw.index(b"\0", space)
        mode = raw[i:space].decode("ascii")
        name = raw[space + 1 : nul].decode("utf-8", "surrogateescape")
        entries[name] = (mode, raw[nul + 1 : nul + 1 + oid_bytes].hex())
        i = nul + 1 + oid_bytes
    return entries


def _parse_name_log(raw: bytes, directory: str) -> dict[str, list[str]]:
    """Per path, the commits of a ``git log --format=%x01%H --name-only -z`` listing, newest first.

    With ``-z`` every name ends in NUL and is otherwise verbatim (newlines, tabs, any bytes); git
    puts one ``\\n`` between a commit's header and its first name (after the header's NUL, or in
    the same token in older versions). Every name starts with ``<directory>/``, so a token that
    does not is that separator and a name: exactly one newline is dropped, nothing else.
    """
    histories: dict[str, list[str]] = {}
    current = ""
    prefix = directory + "/"
    for token in raw.decode("utf-8", "surrogateescape").split("\0"):
        if token.startswith("\x01"):
            header, _, rest = token[1:].partition("\n")
            current = header.strip()
            token = rest
        if token.startswith("\n") and not token.startswith(prefix):
            token = token[1:]
        if not token:
            continue
        shas = histories.setdefault(token, [])
        if not shas or shas[-1] != current:
            shas.append(current)
    return histories


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PushOutcome:
    """What ``push_files`` did."""

    commit: str | None
    """The commit now on the remote branch carrying ``pushed``; None when nothing was left to push."""
    pushed: list[str] = field(default_factory=list)
    """Paths this call changed upstream."""
    already_upstream: list[str] = field(default_factory=list)
    """Paths whose content was already identical upstream (another writer won): adopted."""
    attempts: int = 0
    """Fetch-build-push rounds used (1 when no race happened)."""


class _CatFile:
    """One long-lived ``git cat-file --batch`` process, restarted when it dies.

    Requests are pipelined (a writer thread feeds names while the caller reads answers),
    so reading 10,000 small files costs one process and no round trip per file. A
    watchdog kills the process if a request takes longer than ``timeout``; the caller
    then gets a ``TransientError`` and the next request starts a new process.
    """

    _CHUNK = 1 << 16

    def __init__(self, argv: list[str], env: Mapping[str, str], timeout: float) -> None:
        self._argv = argv
        self._env = dict(env)
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._closed = False
        self._watchdog: threading.Thread | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._reap()
        self._proc = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self._env,
            start_new_session=True,
        )
        if self._watchdog is None or not self._watchdog.is_alive():
            self._watchdog = threading.Thread(target=self._watch, name="opsrepo-cat-file-watchdog", daemon=True)
            self._watchdog.start()
        return self._proc

    def _watch(self) -> None:
        interval = min(1.0, self._timeout / 4)
        while not self._closed:
            time.sleep(interval)
            since, proc = self._busy_since, self._proc
            if since is not None and proc is not None and time.monotonic() - since > self._timeout:
                proc.kill()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._reap()

    def objects(self, names: Sequence[str], max_bytes: int | None) -> list[tuple[str, str, bytes] | None]:
        """``(object id, type, content)`` per name, or None when the name does not resolve.

        Content longer than ``max_bytes`` is cut to its first ``max_bytes + 1`` bytes; the
        rest is drained from the pipe in chunks without being kept.
        """
        with self._lock:
            for attempt in (1, 2):
                proc = self._start()
                try:
                    return self._exchange(proc, names, max_bytes)
                except (OSError, EOFError, ValueError) as exc:
                    self._reap()
                    if attempt == 2 or self._closed:
                        raise TransientError(
                            f"git cat-file --batch failed while reading {len(names)} object(s): {exc or 'process died'}",
                            system=SYSTEM,
                        ) from exc
                finally:
                    self._busy_since = None
        raise AssertionError("unreachable")

    def _exchange(
        self, proc: subprocess.Popen[bytes], names: Sequence[str], max_bytes: int | None
    ) -> list[tuple[str, str, bytes] | None]:
        assert proc.stdin is not None and proc.stdout is not None
        payload = "".join(f"{n}\n" for n in names).encode("utf-8")
        self._busy_since = time.monotonic()
        writer: threading.Thread | None = None
        write_error: list[BaseException] = []
        if len(payload) <= 4096:
            proc.stdin.write(payload)
            proc.stdin.flush()
        else:
            writer = threading.Thread(target=self._feed, args=(proc.stdin, payload, write_error), daemon=True)
            writer.start()
        try:
            return [self._answer(proc.stdout, max_bytes) for _ in names]
        finally:
            if writer is not None:
                writer.join()
            if write_error:
                raise EOFError(f"writing to git cat-file failed: {write_error[0]}")

    @staticmethod
    def _feed(stdin: IO[bytes], payload: bytes, errors: list[BaseException]) -> None:
        try:
            stdin.write(payload)
            stdin.flush()
        except (OSError, ValueError) as exc:
            errors.append(exc)

    def _answer(self, out: IO[bytes], max_bytes: int | None) -> tuple[str, str, bytes] | None:
        header = out.readline()
        if not header.endswith(b"\n"):
            raise EOFError("git cat-file stopped answering")
        parts = header[:-1].rsplit(b" ", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            return None  # "<name> missing" or "<name> ambiguous"
        oid, kind, size = parts[0].decode("ascii"), parts[1].decode("ascii"), int(parts[2])
        keep = size if max_bytes is None else min(size, max_bytes + 1)
        data = out.read(keep)
        left = size - keep
        while left > 0:
            chunk = out.read(min(left, self._CHUNK))
            if not chunk:
                break
            left -= len(chunk)
        if len(data) != keep or left or out.read(1) != b"\n":
            raise EOFError("git cat-file answer was cut short")
        return oid, kind, data


class OpsRepo:
    """The reconciler's ops repo: read desired state at a commit, push results.

    ``remote`` is the URL to clone, fetch and push (``Settings.ops_remote``: explicit or
    derived from the forge). ``timeout`` bounds every git command; ``sleep`` and ``rng``
    are injectable so tests control the push backoff.
    """

    def __init__(
        self,
        settings: OpsRepoSettings,
        remote: str,
        *,
        timeout: float = 60.0,
        max_transfer_seconds: float = 6 * 3600.0,
        clone_step: int = 500,
        stale_lock_seconds: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
        auth: GitAuth | None = None,
    ) -> None:
        if not remote:
            raise PermanentError("no ops repo remote configured; set OPS_REPO_REMOTE", system=SYSTEM)
        self._settings = settings
        self._remote = remote
        self._root = Path(settings.root).absolute()
        self._branch = settings.primary_branch
        self._tracking = f"refs/remotes/{REMOTE}/{self._branch}"
        self._timeout = timeout
        self.max_transfer_seconds = max_transfer_seconds
        self.clone_step = clone_step
        """Commits fetched per step of a first clone (each finished step survives a restart)."""
        """Longest a clone or fetch may run while it still receives data (``timeout`` bounds silence)."""
        self._stale = stale_lock_seconds
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._env = self._make_env(os.environ if env is None else env)
        self._auth = auth
        self._ready_done = False
        self._setup_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._lock_fd: int | None = None
        self._writer_fd: int | None = None
        self._writer_depth = 0
        self._git_dir: Path | None = None
        self._head: str | None = None
        self.pushed_head: str | None = None
        """The commit of this client's last successful push (a remote head the reconciler made itself)."""
        self._cat: _CatFile | None = None
        self._tree_lock = threading.Lock()
        self._histories: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._trees: OrderedDict[str, dict[str, tuple[str, str]]] = OrderedDict()
        self._commit_trees: dict[str, str] = {}
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._graph: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        """``("anc", a, b)`` -> bool, ``("base", a, b)`` -> merge base, ``("has", sha)`` -> True; full ids only."""
        """Whole contents of small blobs by object id (``_BLOB_CACHE_SIZE``, ``_BLOB_CACHE_MAX``)."""

    # ----------------------------------------------------------------- plumbing

    def _make_env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in clean_env(base).items() if k not in _SCRUBBED_ENV}
        env.update(
            LC_ALL="C",
            LANG="C",
            GIT_LITERAL_PATHSPECS="1",
            GIT_CEILING_DIRECTORIES=str(self._root.parent),
            GIT_AUTHOR_NAME=self._settings.author_name,
            GIT_AUTHOR_EMAIL=self._settings.author_email,
            GIT_COMMITTER_NAME=self._settings.author_name,
            GIT_COMMITTER_EMAIL=self._settings.author_email,
        )
        return env

    def _argv(self, args: Sequence[str], cwd: Path | None = None) -> list[str]:
        argv = ["git", "-C", str(cwd or self._root)]
        for option in _CONFIG:
            argv += ["-c", option]
        return argv + list(args)

    def _run(
        self,
        args: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        check: bool = True,
        what: str | None = None,
        transfer: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one git command; on failure (with ``check``) raise a classified error.

        ``transfer`` (the git dir a fetch writes into) makes ``timeout`` a limit on *silence*
        rather than on the whole command: a clone of a large repository over a slow link runs
        as long as it keeps receiving data (the incoming pack ``objects/pack/tmp_pack_*``
        grows, or git writes output), up to ``max_transfer_seconds``.
        """
        what = what or f"git {args[0]}"
        argv = self._argv(args, cwd)
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**self._env, **(self._auth.env() if self._auth else {}), **(env or {})},
                # Own session: no terminal to prompt on (ssh), and a Ctrl-C meant for the
                # reconciler does not kill a push half-way.
                start_new_session=True,
            )
        except OSError as exc:
            raise PermanentError(f"cannot run git ({exc}); is git installed?", system=SYSTEM) from exc
        try:
            if transfer is None:
                out, err = child.communicate(input, timeout=self._timeout)
            else:
                out, err = self._communicate_while_progressing(child, input, transfer, what)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # git and its helpers (ssh, remote-http)
            child.communicate()
            raise TransientError(f"{what} timed out after {self._timeout:g}s", system=SYSTEM) from exc
        proc = subprocess.CompletedProcess(argv, child.returncode, out, err)
        if check and proc.returncode != 0:
            raise self._failure(what, proc)
        return proc

    def _communicate_while_progressing(
        self, child: subprocess.Popen[bytes], input: bytes | None, git_dir: Path, what: str
    ) -> tuple[bytes, bytes]:
        """``communicate`` with a deadline that moves while the transfer progresses."""
        result: dict[str, tuple[bytes, bytes]] = {}
        reader = threading.Thread(target=lambda: result.setdefault("out", child.communicate(input)), daemon=True)
        reader.start()
        started = last_progress = time.monotonic()
        seen = _incoming_bytes(git_dir)
        poll = min(1.0, max(0.05, self._timeout / 10))
        while True:
            reader.join(poll)
            if not reader.is_alive():
                return result["out"]
            now = time.monotonic()
            size = _incoming_bytes(git_dir)
            if size != seen:
                seen, last_progress = size, now
            if now - last_progress > self._timeout:
                why = f"after {self._timeout:g}s without receiving data"
            elif now - started > self.max_transfer_seconds:
                why = f"after {self.max_transfer_seconds:g}s, still transferring (max_transfer_seconds)"
            else:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # git and its helpers (ssh, remote-http)
            reader.join()  # returns once the killed processes' pipes close
            raise TransientError(f"{what} timed out {why}", system=SYSTEM)

    @staticmethod
    def _output(proc: subprocess.CompletedProcess[bytes]) -> str:
        text = (proc.stderr or b"").decode("utf-8", "replace").strip()
        if not text:
            text = (proc.stdout or b"").decode("utf-8", "replace").strip()
        return redact(text[-2000:]) or f"exit status {proc.returncode}"

    def _failure(self, what: str, proc: subprocess.CompletedProcess[bytes]) -> ReconcilerError:
        message = self._output(proc)
        return _error_class(message)(f"{what} failed: {message}{credential_hint(message, write=False)}", system=SYSTEM)

    def _ready(self) -> None:
        """Prepare the clone on first use (once, even when many threads start together)."""
        if not self._ready_done:
            with self._write_lock, self._setup_lock:
                if not self._ready_done:
                    self._prepare()

    def _cat_file(self) -> _CatFile:
        if self._cat is None:
            self._cat = _CatFile(self._argv(["cat-file", "--batch"]), self._env, self._timeout)
        return self._cat

    # ----------------------------------------------------------------- setup

    def ensure_ready(self) -> None:
        """Clone if ``root`` is absent; else clean what a killed process left and fix the remote URL.

        Holds this instance's write lock, so its own pushes and fetches are never cleaned up
        from under them.
        """
        with self._write_lock, self._setup_lock:
            self._prepare()

    def _prepare(self) -> None:
        if not self._root.exists() or (self._root.is_dir() and not any(self._root.iterdir())):
            self._clone()
        self._git_dir = self._find_git_dir()
        exclusive = self._take_process_lock(self._git_dir)
        # Neighbours fetch and push only while holding the writer lock: holding it here means
        # none of their locks or scratch files is in use while we clean.
        with self._writing():
            self._clean_leftovers(self._git_dir, exclusive)
            self._check_remote()
            if self._is_shallow():
                self._unshallow()
        (self._git_dir / _TMP_DIR).mkdir(exist_ok=True)
        self._ready_done = True

    def _clone(self) -> None:
        """Clone into a hidden sibling directory, then rename: a killed clone leaves no half repo at root.

        The history arrives in steps - the head commit first, then ``clone_step`` commits deeper
        at a time (``fetch --deepen``), until it is complete - and each step that finished stays
        in the sibling ``.<root>.cloning``: a restart resumes from there instead of starting from
        zero (git cannot resume one interrupted pack, so only the step under way is lost).
        Processes cloning at once take turns on ``.<root>.cloning.flock``.
        """
        parent = self._root.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_clones(parent)
        staging = parent / f".{self._root.name}.cloning"
        lock_fd = os.open(parent / f".{self._root.name}.cloning.flock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if self._root.exists() and (self._root / "HEAD").exists():
                log.info("another process cloned %s first; using its clone", self._root)
                return
            if (staging / "HEAD").exists():
                log.info("resuming the interrupted clone of the ops repo in %s", staging)
                self._run(["remote", "set-url", REMOTE, self._remote], cwd=staging)
            else:
                shutil.rmtree(staging, ignore_errors=True)
                self._run(["init", "--bare", "--quiet", str(staging)], cwd=parent)
                self._run(["symbolic-ref", "HEAD", f"refs/heads/{self._branch}"], cwd=staging)
                self._run(["remote", "add", "-t", self._branch, REMOTE, self._remote], cwd=staging)
            self._fetch_history_in_steps(staging)
            try:
                os.rename(staging, self._root)  # atomic; replaces an empty directory, never a full one
            except OSError:
                if not (self._root / "HEAD").exists():
                    raise
                log.info("another process cloned %s first; using its clone", self._root)
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(lock_fd)

    def _fetch_history_in_steps(self, staging: Path) -> None:
        """Fetch the primary branch into ``staging``: head first, then ``clone_step`` commits per step."""
        has_tip = self._run(["rev-parse", "--verify", "--quiet", self._tracking], cwd=staging, check=False).returncode == 0
        while True:
            shallow = (staging / "shallow").exists()
            if has_tip and not shallow:
                return  # complete
            args = self._fetch_args()
            args.insert(args.index("fetch") + 1, f"--deepen={self.clone_step}" if has_tip else "--depth=1")
            proc = self._run(args, cwd=staging, check=False, transfer=staging)
            if proc.returncode != 0:
                message = self._output(proc)
                if not has_tip:
                    shutil.rmtree(staging, ignore_errors=True)  # nothing arrived: nothing to resume
                raise _error_class(message)(
                    f"cannot clone ops repo from {redact(self._remote)}: {message}{credential_hint(message, write=False)}; "
                    "check OPS_REPO_REMOTE (history steps already fetched are kept: the next attempt resumes)",
                    system=SYSTEM,
                )
            has_tip = True

    def _remove_stale_clones(self, parent: Path) -> None:
        cutoff = time.time() - max(self._stale, self._timeout)
        for leftover in parent.glob(f".{self._root.name}.cloning-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:
                pass

    def _find_git_dir(self) -> Path:
        proc = self._run(["rev-parse", "--absolute-git-dir"], check=False)
        git_dir = Path(proc.stdout.decode("utf-8", "replace").strip()) if proc.returncode == 0 else None
        root = self._root.resolve()
        if git_dir is None or git_dir.resolve() not in (root, root / ".git"):
            raise PermanentError(
                f"OPS_REPO_ROOT {self._root} exists but is not a git repository; "
                "remove it (it is cloned again) or point OPS_REPO_ROOT elsewhere",
                system=SYSTEM,
            )
        return git_dir

    def _take_process_lock(self, git_dir: Path) -> bool:
        """Hold a shared flock for the life of this instance; True if we were alone (exclusive)."""
        if self._lock_fd is None:
            self._lock_fd = os.open(git_dir / _PROCESS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            exclusive = True
        except BlockingIOError:
            exclusive = False
        # Downgrade (or wait for a neighbour's short cleanup to finish, then share).
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        return exclusive

    def _clean_leftovers(self, git_dir: Path, exclusive: bool) -> None:
        """Remove lock files, half-done operations and temporary indexes a killed process left."""
        cutoff = float("inf") if exclusive else time.time() - self._stale
        candidates: list[Path] = list(git_dir.glob("*.lock"))
        candidates += git_dir.joinpath("refs").rglob("*.lock")
        candidates += git_dir.joinpath("objects", "info").rglob("*.lock")
        candidates += list(git_dir.joinpath(_TMP_DIR).glob("*"))
        for path in candidates:
            self._remove_if_older(path, cutoff, "stale lock or temporary file")
        self._abandon_operation(git_dir, cutoff)

    @staticmethod
    def _remove_if_older(path: Path, cutoff: float, what: str) -> bool:
        try:
            if path.lstat().st_mtime > cutoff:
                return False
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return False
        log.warning("removed %s %s", what, path)
        return True

    def _abandon_operation(self, git_dir: Path, cutoff: float) -> None:
        """Drop a half-done rebase/merge/cherry-pick; a rebase's branch is re-attached to HEAD.

        Only state files and HEAD are touched, never the working tree or index of a legacy
        clone: the reconciler does not use them.
        """
        for rebase in ("rebase-merge", "rebase-apply"):
            head_name = git_dir / rebase / "head-name"
            try:
                if head_name.stat().st_mtime > cutoff:
                    continue
                ref = head_name.read_text(encoding="utf-8").strip()
            except (FileNotFoundError, NotADirectoryError):
                continue
            if ref.startswith("refs/heads/"):
                self._run(["symbolic-ref", "HEAD", ref], check=False)
        for name in _OPERATION_STATE:
            self._remove_if_older(git_dir / name, cutoff, "half-done operation state")

    # A shallow clone's boundary commits have no parents, so ``git log -- <path>`` attributes every
    # file to them and ``merge-base`` finds nothing: approvals read from history would be wrong.

    def _shallow_marked(self) -> bool:
        """Cheap test (one stat, no process): git marks a shallow repository with ``<git dir>/shallow``."""
        return self._git_dir is not None and (self._git_dir / "shallow").exists()

    def _is_shallow(self) -> bool:
        proc = self._run(["rev-parse", "--is-shallow-repository"], check=False)
        return proc.returncode == 0 and proc.stdout.strip() == b"true"

    def _require_full_history(self) -> None:
        """Before any answer from history: a clone made shallow behind our back is unshallowed first."""
        if self._shallow_marked():
            with self._writing():
                if self._is_shallow():
                    self._unshallow()

    def _unshallow(self) -> None:
        """Fetch the primary branch's whole history (``git fetch --unshallow``), or refuse with how to fix it."""
        log.warning("ops repo clone %s is shallow; fetching its full history (git fetch --unshallow)", self._root)
        args = self._fetch_args()
        args.insert(args.index("fetch") + 1, "--unshallow")
        proc = self._run(args, check=False, transfer=self._git_dir)
        if proc.returncode == 0 and not self._is_shallow():
            self._head = self._rev_parse(self._tracking)
            return
        message = self._output(proc) if proc.returncode != 0 else "the clone is still shallow afterwards"
        fix = (
            f"OPS_REPO_ROOT {self._root} is a shallow clone, and history-based decisions (approvals) need the "
            f"full history, but `git fetch --unshallow` from {redact(self._remote)} failed: {message}. "
            f"Fix: run `git -C {self._root} fetch --unshallow {REMOTE}`, or remove {self._root} "
            "(the reconciler clones it again, in full), or re-clone it without --depth"
        )
        # Network trouble is worth another try on a later pass; anything else needs a human.
        network = proc.returncode != 0 and any(p in message.lower() for p in _TRANSIENT_PHRASES)
        raise (TransientError if network else PermanentError)(fix, system=SYSTEM)

    def _check_remote(self) -> None:
        proc = self._run(["config", "--get", f"remote.{REMOTE}.url"], check=False)
        current = proc.stdout.decode("utf-8", "replace").strip() if proc.returncode == 0 else None
        if current is None:
            self._run(["remote", "add", "-t", self._branch, REMOTE, self._remote])
        elif current != self._remote:
            log.warning("ops repo remote changed from %s to %s; updating", redact(current), redact(self._remote))
            self._run(["remote", "set-url", REMOTE, self._remote])

    def close(self) -> None:
        """Stop the ``cat-file`` process and release the process lock."""
        if self._cat is not None:
            self._cat.close()
            self._cat = None
        if self._auth is not None:
            self._auth.close()  # its private directory is made again on the next git command
        with self._write_lock:
            for fd in (self._lock_fd, self._writer_fd):
                if fd is not None:
                    os.close(fd)
            self._lock_fd = self._writer_fd = None
        self._ready_done = False

    def __enter__(self) -> OpsRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Serialise ref-changing work: across this instance's threads (an RLock) and across
        processes sharing the clone (an exclusive flock, waited for up to ``timeout``)."""
        with self._write_lock:
            if self._writer_depth == 0:
                self._take_writer_lock()
            self._writer_depth += 1
            try:
                yield
            finally:
                self._writer_depth -= 1
                if self._writer_depth == 0 and self._writer_fd is not None:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def _take_writer_lock(self) -> None:
        assert self._git_dir is not None
        if self._writer_fd is None:
            self._writer_fd = os.open(self._git_dir / _WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(self._writer_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"another process kept the ops repo clone {self._root} busy for {self._timeout:g}s",
                        system=SYSTEM,
                    ) from None
                time.sleep(0.01)

    # ----------------------------------------------------------------- remote

    def _fetch_args(self) -> list[str]:
        return [
            # Every fetched object lands in a pack (never unpacked loose): the incoming pack's growth
            # is how a long transfer shows it is progressing.
            "-c",
            "fetch.unpackLimit=1",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            REMOTE,
            f"+refs/heads/{self._branch}:{self._tracking}",
        ]

    def fetch(self) -> str:
        """Fetch the primary branch; return the remote head sha (one round trip when nothing changed)."""
        self._ready()
        with self._writing():
            if self._shallow_marked() and self._is_shallow():  # made shallow behind our back
                self._unshallow()
            proc = self._run(self._fetch_args(), check=False, transfer=self._git_dir)
            if proc.returncode != 0:
                message = self._output(proc)
                raise _error_class(message)(
                    f"cannot fetch {self._branch} from {redact(self._remote)}: {message}{credential_hint(message, write=False)}",
                    system=SYSTEM,
                )
            self._head = self._rev_parse(self._tracking)
            return self._head

    @property
    def remote_is_local(self) -> bool:
        """True for a ``file://`` URL or a path: polling it costs no network round trip."""
        return "://" not in self._remote or self._remote.startswith("file://")

    def remote_head(self) -> str | None:
        """The remote branch's sha without fetching (``git ls-remote``); None if it does not exist."""
        self._ready()
        ref = f"refs/heads/{self._branch}"
        proc = self._run(["ls-remote", REMOTE, ref], what=f"git ls-remote {redact(self._remote)}")
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            sha, _, name = line.partition("\t")
            if name == ref:
                return sha
        return None

    def head(self) -> str:
        """The last fetched head (survives restarts: it is the remote-tracking ref)."""
        self._ready()
        if self._head is None:
            self._head = self._rev_parse(self._tracking)
        return self._head

    def _rev_parse(self, rev: str) -> str:
        proc = self._run(["rev-parse", "--verify", "--quiet", f"{_check_rev(rev)}^{{commit}}"], check=False)
        if proc.returncode != 0:
            raise NotFoundError(f"no commit {rev} in the ops repo clone", system=SYSTEM)
        return proc.stdout.decode("ascii").strip()

    # ----------------------------------------------------------------- reading

    def list_dir(self, sha: str, dir: str = "vault/actions") -> dict[str, str]:
        """Regular files (modes 100644 and 100755) directly in ``dir`` at ``sha``: repository path →
        blob sha ({} when the dir is absent). Symlinks, submodules and directories are not files:
        ``list_entries`` shows them."""
        return {path: oid for path, (mode, oid) in self.list_entries(sha, dir).items() if mode in _FILE_MODES}

    def list_entries(self, sha: str, dir: str = "vault/actions") -> dict[str, tuple[str, str]]:
        """Every entry directly in ``dir`` at ``sha``: repository path → ``(mode, object id)``, whatever
        it is: a regular file (``100644``, ``100755``), a symlink (``120000``), a submodule (gitlink,
        ``160000``, whose object is another repository's commit) or a directory (``40000``).

        Names are exactly as stored in the tree: they may hold newlines, tabs and any UTF-8; bytes that
        are not UTF-8 come back as surrogate escapes (``'\udcff'``), so callers can tell them apart.
        """
        self._ready()
        prefix = _check_read_path(dir.strip("/"))
        found = self._lookup(sha, prefix, missing_commit=True)
        if found is None or found[0] != _TREE_MODE:
            return {}
        return {f"{prefix}/{name}": (mode, oid) for name, (mode, oid) in self._tree(found[1]).items()}

    def read(self, sha: str, path: str, *, max_bytes: int | None = None) -> bytes | None:
        """Content of ``path`` at commit ``sha``; None if absent, if not a regular file (a symlink, a
        submodule, a directory) or if ``sha`` is unknown here.

        With ``max_bytes``, a larger file comes back as its first ``max_bytes + 1`` bytes:
        ``len(result) > max_bytes`` tells the caller it is too big, and a 10 MB file is never
        held in memory.
        """
        return self.read_many(sha, [path], max_bytes=max_bytes)[path]

    def read_many(self, sha: str, paths: Iterable[str], *, max_bytes: int | None = None) -> dict[str, bytes | None]:
        """``read`` for many paths at one commit: one pipelined ``cat-file`` exchange for the blobs.

        Paths are resolved through parsed tree objects cached by tree id (immutable, so never
        stale), not by ``cat-file <sha>:<path>``, which scans a directory's entries linearly on
        every call and made reading 10,000 files of one directory quadratic.
        """
        self._ready()
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        wanted = list(dict.fromkeys(_check_read_path(p) for p in paths))
        blobs: dict[str, str] = {}
        for path in wanted:
            found = self._lookup(sha, path, missing_commit=False)
            if found is not None and found[0] in _FILE_MODES:
                blobs[path] = found[1]
        content: dict[str, bytes] = {}
        with self._tree_lock:
            for oid in dict.fromkeys(blobs.values()):
                whole = self._blobs.get(oid)
                if whole is not None:
                    self._blobs.move_to_end(oid)
                    # What cat-file answers for a longer blob: its first max_bytes + 1 bytes.
                    content[oid] = whole if max_bytes is None or len(whole) <= max_bytes else whole[: max_bytes + 1]
        oids = [oid for oid in dict.fromkeys(blobs.values()) if oid not in content]
        answers = self._cat_file().objects(oids, max_bytes) if oids else []
        fetched = {oid: a[2] for oid, a in zip(oids, answers) if a is not None and a[1] == "blob"}
        content.update(fetched)
        with self._tree_lock:
            for oid, data in fetched.items():
                if len(data) <= _BLOB_CACHE_MAX and (max_bytes is None or len(data) <= max_bytes):  # known whole
                    self._blobs[oid] = data
            while len(self._blobs) > _BLOB_CACHE_SIZE:
                self._blobs.popitem(last=False)
        return {p: content.get(blobs[p]) if p in blobs else None for p in wanted}

    def _lookup(self, sha: str, path: str, *, missing_commit: bool) -> tuple[str, str] | None:
        """``(mode, object id)`` of ``path`` at commit ``sha``, or None when absent.

        An unknown commit raises ``NotFoundError`` with ``missing_commit``, else reads as absent.
        """
        entries = self._root_tree(_check_rev(sha))
        if entries is None:
            if missing_commit:
                raise NotFoundError(f"no commit {sha} in the ops repo clone", system=SYSTEM)
            return None
        *dirs, name = path.split("/")
        for part in dirs:
            entry = entries.get(part)
            if entry is None or entry[0] != _TREE_MODE:
                return None
            entries = self._tree(entry[1])
        return entries.get(name)

    def _root_tree(self, rev: str) -> dict[str, tuple[str, str]] | None:
        """Entries of the root tree of commit ``rev`` (None if unknown); full shas are memoised."""
        memo = rev if _FULL_SHA.fullmatch(rev) else None
        with self._tree_lock:
            tree_oid = self._commit_trees.get(memo) if memo else None
        if tree_oid is not None:
            return self._tree(tree_oid)
        answer = self._cat_file().objects([f"{rev}^{{tree}}"], None)[0]
        if answer is None or answer[1] != "tree":
            return None
        with self._tree_lock:
            if memo:
                if len(self._commit_trees) >= _COMMIT_MEMO_SIZE:
                    self._commit_trees.clear()
                self._commit_trees[memo] = answer[0]
        return self._tree(answer[0], answer[2])

    def _tree(self, oid: str, raw: bytes | None = None) -> dict[str, tuple[str, str]]:
        """Parsed entries (name → (mode, object id)) of one tree object, LRU-cached by id."""
        with self._tree_lock:
            cached = self._trees.get(oid)
            if cached is not None:
                self._trees.move_to_end(oid)
                return cached
        if raw is None:
            answer = self._cat_file().objects([oid], None)[0]
            if answer is None or answer[1] != "tree":
                raise TransientError(f"tree {oid} vanished from the ops repo clone", system=SYSTEM)
            raw = answer[2]
        entries = _parse_tree(raw, len(oid) // 2)
        with self._tree_lock:
            self._trees[oid] = entries
            while len(self._trees) > _TREE_CACHE_SIZE:
                self._trees.popitem(last=False)
        return entries

    def changed_paths(self, old_sha: str, new_sha: str) -> list[str]:
        """Paths that differ between two commits (``git diff --name-only``, renames as delete + add)."""
        self._ready()
        proc = self._run(
            ["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", _check_rev(old_sha), _check_rev(new_sha), "--"],
            check=False,
        )
        if proc.returncode != 0:
            for rev in (old_sha, new_sha):
                if not self._commit_exists(rev):
                    raise NotFoundError(f"no commit {rev} in the ops repo clone", system=SYSTEM)
            raise self._failure("git diff", proc)
        return [p.decode("utf-8", "surrogateescape") for p in proc.stdout.split(b"\0") if p]

    def last_change(self, sha: str, path: str) -> CommitInfo | None:
        """Newest commit on the first-parent history of ``sha`` whose tree changed ``path``
        relative to its first parent (a ``--no-ff`` merge that brought the file is reported)."""
        found = self._path_commits(sha, path, limit=1)
        return found[0] if found else None

    def last_changes(self, sha: str, directory: str) -> dict[str, CommitInfo]:
        """``last_change`` for every path under ``directory`` at once: one ``git log`` walk.

        The loop approves many actions merged together; one walk instead of one
        ``git log`` per file.
        """
        newest = {path: shas[0] for path, shas in self.path_histories(sha, directory).items() if shas}
        wanted = sorted(set(newest.values()))
        infos = {info.sha: info for info in self._commits(wanted)} if wanted else {}
        return {path: infos[c] for path, c in newest.items()}

    def path_histories(self, sha: str, directory: str) -> dict[str, list[str]]:
        """For every path under ``directory``: the commits of the first-parent history that changed
        it, newest first (``history`` for all of them at once, as commit ids), from one ``git log`` walk.

        History below a commit never changes: the last few answers are kept.
        """
        key = (sha, directory)
        with self._tree_lock:
            kept = self._histories.get(key)
        if kept is not None:
            return kept
        histories = self._walk_histories(sha, directory)
        with self._tree_lock:
            self._histories[key] = histories
            while len(self._histories) > 4:
                self._histories.pop(next(iter(self._histories)))
        return histories

    def _walk_histories(self, sha: str, directory: str) -> dict[str, list[str]]:
        self._ready()
        self._require_full_history()
        directory = _check_read_path(directory.strip("/"))
        proc = self._run(
            ["log", "--first-parent", "--diff-merges=first-parent", "--format=%x01%H", "--name-only", "--no-renames", "-z", _check_rev(sha), "--", directory],
            check=False,
        )
        if proc.returncode != 0:
            raise self._unknown_or_failure(sha, "git log", proc)
        return _parse_name_log(proc.stdout, directory)

    def commits(self, shas: Sequence[str]) -> list[CommitInfo]:
        """Metadata of these commits, in order (one ``cat-file`` exchange)."""
        self._ready()
        return self._commits([_check_rev(s) for s in shas])

    def history(self, sha: str, path: str) -> list[CommitInfo]:
        """Every such commit, newest first."""
        return self._path_commits(sha, path, limit=None)

    def _path_commits(self, sha: str, path: str, limit: int | None) -> list[CommitInfo]:
        self._ready()
        self._require_full_history()
        args = ["log", "--first-parent", "--format=%H"]
        if limit is not None:
            args.append(f"-{limit}")
        proc = self._run([*args, _check_rev(sha), "--", _check_read_path(path)], check=False)
        if proc.returncode != 0:
            raise self._unknown_or_failure(sha, "git log", proc)
        shas = proc.stdout.decode("ascii").split()
        return self._commits(shas)

    def commit(self, sha: str) -> CommitInfo:
        """One commit's metadata; ``NotFoundError`` if unknown here."""
        self._ready()
        return self._commits([_check_rev(sha)])[0]

    def commit_message(self, sha: str) -> str:
        """The commit's full message, exactly as stored."""
        return self.commit(sha).message

    def _commits(self, shas: Sequence[str]) -> list[CommitInfo]:
        answers = self._cat_file().objects([f"{s}^{{commit}}" for s in shas], None) if shas else []
        infos = []
        for sha, answer in zip(shas, answers):
            if answer is None or answer[1] != "commit":
                raise NotFoundError(f"no commit {sha} in the ops repo clone", system=SYSTEM)
            infos.append(self._parse_commit(answer[0], answer[2]))
        return infos

    @staticmethod
    def _parse_commit(sha: str, raw: bytes) -> CommitInfo:
        """A ``CommitInfo`` from a raw commit object (headers, blank line, message as stored)."""
        head, _, message = raw.partition(b"\n\n")
        parents: list[str] = []
        author, committed_at = "", ""
        for line in head.split(b"\n"):
            key, _, value = line.partition(b" ")
            if key == b"parent":
                parents.append(value.decode("ascii"))
            elif key in (b"author", b"committer"):
                ident, _, when = value.rpartition(b">")
                stamp = when.split()
                if key == b"author":
                    author = (ident + b">").decode("utf-8", "replace")
                elif stamp and stamp[0].isdigit():
                    committed_at = _utc(int(stamp[0]))
        return CommitInfo(
            sha=sha,
            message=message.decode("utf-8", "replace"),
            parents=tuple(parents),
            author=author,
            committed_at=committed_at,
        )

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether commit ``a`` is reachable from ``b`` (False when either is unknown)."""
        self._ready()
        self._require_full_history()
        key = ("anc", a, b)
        known = self._graph_get(key)
        if known is not None:
            return bool(known)
        proc = self._run(["merge-base", "--is-ancestor", _check_rev(a), _check_rev(b)], check=False)
        if proc.returncode in (0, 1):  # both commits exist here (an unknown one is an error, 128)
            self._graph_put(key, proc.returncode == 0)
            return proc.returncode == 0
        if not (self._commit_exists(a) and self._commit_exists(b)):
            return False
        raise self._failure("git merge-base", proc)

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of commits ``a`` and ``b`` (``git merge-base``); None when they share
        no history. ``NotFoundError`` when either commit is unknown here (see ``ensure_commit``)."""
        self._ready()
        self._require_full_history()
        key = ("base", a, b)
        known = self._graph_get(key)
        if known is not None:
            return str(known)
        proc = self._run(["merge-base", _check_rev(a), _check_rev(b)], check=False)
        if proc.returncode == 0:
            base = proc.stdout.decode("ascii").split()[0]
            self._graph_put(key, base)
            return base
        for rev in (a, b):
            if not self._commit_exists(rev):
                raise NotFoundError(f"no commit {rev} in the ops repo clone", system=SYSTEM)
        if proc.returncode == 1 and not proc.stderr.strip():
            return None
        raise self._failure("git merge-base", proc)

    def first_parents(self, sha: str, limit: int) -> list[str]:
        """``sha`` and its first-parent ancestors, newest first, at most ``limit`` of them
        (``git rev-list --first-parent -n <limit>``); ``NotFoundError`` for an unknown commit."""
        self._ready()
        self._require_full_history()
        if limit <= 0:
            return []
        proc = self._run(["rev-list", "--first-parent", "-n", str(int(limit)), f"{_check_rev(sha)}^{{commit}}", "--"], check=False)
        if proc.returncode != 0:
            raise self._unknown_or_failure(sha, "git rev-list", proc)
        return proc.stdout.decode("ascii").split()

    def first_parents_after(self, head: str, sha: str, limit: int) -> list[str]:
        """The commits of ``head``'s first-parent history that descend from ``sha``, oldest first, at most
        ``limit`` (``git rev-list --first-parent --ancestry-path --reverse <sha>..<head>``): where ``sha``
        landed on the branch and what came after. A first-parent commit made beside a merged branch (not a
        descendant of ``sha``) is not listed. ``NotFoundError`` when either commit is unknown here."""
        self._ready()
        self._require_full_history()
        if limit <= 0:
            return []
        proc = self._run(
            ["rev-list", "--first-parent", "--ancestry-path", "--reverse", f"{_check_rev(sha)}..{_check_rev(head)}", "--"],
            check=False,
        )
        if proc.returncode != 0:
            for rev in (sha, head):
                if not self._commit_exists(rev):
                    raise NotFoundError(f"no commit {rev} in the ops repo clone", system=SYSTEM)
            raise self._failure("git rev-list", proc)
        return proc.stdout.decode("ascii").split()[: int(limit)]

    def ensure_commit(self, sha: str, pull_number: int | None = None) -> bool:
        """Whether commit ``sha`` is in the clone, fetching it when it is not.

        A pull request's commits are not on the primary branch until merged, so they are not fetched
        with it. With ``pull_number``, ``refs/pull/<n>/head`` is fetched first into the local ref
        ``refs/reconciler/pull/<n>`` (never the branch, never its remote-tracking ref); if the commit is
        still missing and ``sha`` is a full id, it is asked for by id (servers allow that for reachable commits). A commit or pull
        ref the remote does not have answers False; network trouble raises ``TransientError``.
        """
        self._ready()
        rev = _check_rev(sha)
        if self._commit_exists(rev):
            return True
        with self._writing():
            refspecs: list[str] = []
            if pull_number is not None:
                number = int(pull_number)
                if number <= 0:
                    raise ValueError(f"not a pull request number: {pull_number!r}")
                refspecs.append(f"+refs/pull/{number}/head:refs/reconciler/pull/{number}")
            if _FULL_SHA.fullmatch(rev):
                refspecs.append(rev)
            for refspec in refspecs:
                proc = self._run(
                    ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", REMOTE, refspec], check=False
                )
                if proc.returncode != 0:
                    message = self._output(proc)
                    if not _is_missing_on_remote(message):
                        raise _error_class(message)(
                            f"cannot fetch {refspec.split(':')[0].lstrip('+')} from {redact(self._remote)}: {message}",
                            system=SYSTEM,
                        )
                    log.debug("remote has no %s: %s", refspec, message)
                if self._commit_exists(rev):
                    return True
        return False

    def _commit_exists(self, rev: str) -> bool:
        key = ("has", rev)
        if self._graph_get(key):
            return True
        proc = self._run(["rev-parse", "--verify", "--quiet", f"{_check_rev(rev)}^{{commit}}"], check=False)
        if proc.returncode == 0:
            self._graph_put(key, True)  # only presence is kept: an absent commit may be fetched later
        return proc.returncode == 0

    def _graph_get(self, key: tuple[str, ...]) -> Any:
        """A kept commit-graph answer (None: not kept; only full commit ids are ever kept)."""
        with self._tree_lock:
            value = self._graph.get(key)
            if value is not None:
                self._graph.move_to_end(key)
            return value

    def _graph_put(self, key: tuple[str, ...], value: Any) -> None:
        if not all(_FULL_SHA.fullmatch(part) for part in key[1:]):
            return  # a ref or an abbreviated id can come to name another commit
        with self._tree_lock:
            self._graph[key] = value
            while len(self._graph) > _GRAPH_CACHE_SIZE:
                self._graph.popitem(last=False)

    def _unknown_or_failure(self, sha: str, what: str, proc: subprocess.CompletedProcess[bytes]) -> ReconcilerError:
        if not self._commit_exists(sha):
            return NotFoundError(f"no commit {sha} in the ops repo clone", system=SYSTEM)
        return self._failure(what, proc)

    # ----------------------------------------------------------------- writing

    def push_files(self, files: Mapping[str, bytes], message: str, *, max_attempts: int = 8) -> PushOutcome:
        """Commit ``files`` (path → content) as ONE commit on the remote head and push it.

        Files already identical upstream are left out (another writer won); with nothing
        left, no commit is made. A push rejected because the branch moved is rebuilt on the
        freshly fetched head and retried, with backoff and jitter, up to ``max_attempts``
        rounds; then ``TransientError``. Never forces: each push is leased on the commit it was built on
        (``--force-with-lease``), so a branch rewound by a human is rebuilt on, never fast-forwarded over.
        """
        self._ready()
        paths = sorted(_check_path(p) for p in files)
        if not paths:
            return PushOutcome(commit=None)
        with self._writing():
            blobs = self._write_blobs({p: files[p] for p in paths})
            refusal = ""
            # The first commit is built on the head known here (the last fetch or our own last push): the
            # reconciler is usually the only writer, and a fetch per push is a tenth of a second under load.
            # If the branch moved meanwhile the push is refused as not a fast-forward, and the rounds below
            # fetch and rebuild as after any lost race.
            optimistic = self._head
            if optimistic is not None:
                outcome = self._push_on(optimistic, paths, blobs, message, attempt=0)
                if outcome is not None:
                    return outcome
            for attempt in range(1, max_attempts + 1):
                head = self.fetch()
                upstream = self._blob_ids(head, paths)
                todo = [p for p in paths if upstream.get(p) != blobs[p]]
                already = [p for p in paths if p not in todo]
                if not todo:
                    return PushOutcome(commit=None, already_upstream=already, attempts=attempt)
                commit = self._build_commit(head, {p: blobs[p] for p in todo}, message)
                refusal = self._push(commit, head)
                if not refusal:
                    self._head = self.pushed_head = commit
                    return PushOutcome(commit=commit, pushed=todo, already_upstream=already, attempts=attempt)
                log.info("push of %d file(s) lost a race (attempt %d/%d): %s", len(todo), attempt, max_attempts, refusal)
                if attempt < max_attempts:
                    self._sleep(self._backoff(attempt))
            raise TransientError(
                f"push to {self._branch} of {redact(self._remote)} still rejected after {max_attempts} attempts: {refusal}",
                system=SYSTEM,
            )

    def _push_on(self, head: str, paths: Sequence[str], blobs: Mapping[str, str], message: str, *, attempt: int) -> PushOutcome | None:
        """One commit of ``blobs`` on ``head``, pushed: the outcome, or None when the branch moved (not pushed)."""
        try:
            upstream = self._blob_ids(head, paths)
        except ReconcilerError:
            return None  # the known head is not in the clone any more: fetch and rebuild
        todo = [p for p in paths if upstream.get(p) != blobs[p]]
        if not todo:
            return None  # identical already at a head that may be stale: confirm on the fetched one
        commit = self._build_commit(head, {p: blobs[p] for p in todo}, message)
        if self._push(commit, head):
            return None
        self._head = self.pushed_head = commit
        return PushOutcome(commit=commit, pushed=todo, already_upstream=[p for p in paths if p not in todo], attempts=attempt + 1)

    def _backoff(self, attempt: int) -> float:
        base = min(1.0, 0.05 * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.5)

    def _scratch(self) -> Path:
        assert self._git_dir is not None
        return Path(tempfile.mkdtemp(prefix="push-", dir=self._git_dir / _TMP_DIR))

    def _write_blobs(self, files: Mapping[str, bytes]) -> dict[str, str]:
        """Store every content as a blob in ONE ``git fast-import``; path → blob sha.

        ``hash-object -w`` needs a file per content and writes a loose object per file
        (about 1 ms each on a slow disk: 3 s for 3,000 results); fast-import takes them all
        on stdin and writes one pack, or loose objects below ``transfer.unpackLimit``.
        It touches no ref.
        """
        stream = bytearray()
        for mark, content in enumerate(files.values(), start=1):
            stream += b"blob\nmark :%d\ndata %d\n" % (mark, len(content))
            stream += content
            stream += b"\n"
        for mark in range(1, len(files) + 1):
            stream += b"get-mark :%d\n" % mark
        stream += b"done\n"
        proc = self._run(["fast-import", "--quiet", "--done"], input=bytes(stream))
        blobs = proc.stdout.decode("ascii").split()
        if len(blobs) != len(files):
            raise TransientError(f"git fast-import returned {len(blobs)} ids for {len(files)} files", system=SYSTEM)
        return dict(zip(files, blobs))

    def _blob_ids(self, sha: str, paths: Sequence[str]) -> dict[str, str]:
        """Blob sha of each path present at ``sha`` (through the cached trees, no subprocess)."""
        found: dict[str, str] = {}
        for path in paths:
            entry = self._lookup(sha, path, missing_commit=True)
            if entry is not None and entry[0] in _BLOB_MODES:
                found[path] = entry[1]
        return found

    def _build_commit(self, head: str, blobs: Mapping[str, str], message: str) -> str:
        """One commit whose tree is ``head``'s with ``blobs`` added or replaced: one ``git fast-import``
        (instead of read-tree, update-index, write-tree and commit-tree: four processes per push).

        fast-import needs a ref to write; it writes ``refs/reconciler/build`` in the clone (never pushed,
        overwritten by the next build). Author and committer are the configured identity, as for any commit.
        """
        name, email = self._settings.author_name, self._settings.author_email
        when = f"{int(time.time())} +0000"
        text = message.encode("utf-8")
        stream = bytearray()
        stream += b"commit refs/reconciler/build\nmark :1\n"
        stream += f"author {name} <{email}> {when}\ncommitter {name} <{email}> {when}\n".encode("utf-8")
        stream += b"data %d\n" % len(text) + text + b"\n"
        stream += f"from {_check_rev(head)}\n".encode("ascii")
        for path, blob in blobs.items():
            quoted = path.replace("\\", "\\\\").replace('"', '\\"')
            stream += f'M 100644 {blob} "{quoted}"\n'.encode("utf-8")
        stream += b"\nget-mark :1\ndone\n"
        proc = self._run(["fast-import", "--quiet", "--done", "--force"], input=bytes(stream))
        commit = proc.stdout.decode("ascii").strip()
        if len(commit) not in (40, 64):
            raise TransientError(f"git fast-import gave no commit id for the results commit: {commit!r}", system=SYSTEM)
        return commit

    def _push(self, commit: str, base: str) -> str:
        """Push ``commit``, built on ``base``, to the branch: "" on success, git's refusal on a race.

        The push carries ``--force-with-lease=refs/heads/<branch>:<base>``: the remote ref is updated only
        while it still is ``base``. A plain push would also succeed whenever it fast-forwards, so after a
        human force-pushed the branch *backwards* (to an ancestor of ``base``), a commit built on the old
        head would bring back what they removed. Any other remote value - moved on, rewound, rewritten -
        is refused as "stale info", a race like any other: fetch, rebuild on the new head, retry.
        """
        ref = f"refs/heads/{self._branch}"
        proc = self._run(
            ["push", "--porcelain", "--quiet", f"--force-with-lease={ref}:{_check_rev(base)}", REMOTE, f"{commit}:{ref}"],
            check=False,
        )
        if proc.returncode == 0:
            return ""
        raw = ((proc.stdout or b"") + b"\n" + (proc.stderr or b"")).decode("utf-8", "replace")
        lines = [ln.strip() for ln in raw.splitlines() if ln.strip() and ln.strip() not in ("Done", "To")]
        useful = [ln for ln in lines if ln.startswith(("!", "remote:", "error:", "fatal:")) and "hint:" not in ln]
        output = redact(" | ".join(useful or lines)[-2000:]) or f"exit status {proc.returncode}"
        refused_by_server = "[remote rejected]" in output.lower()
        if (_is_push_race(output) and not refused_by_server) or self._remote_ref_race(output):
            return output
        raise _error_class(output)(
            f"git push to {redact(self._remote)} failed: {output}{credential_hint(output, write=True)}", system=SYSTEM
        )

    @staticmethod
    def _remote_ref_race(output: str) -> bool:
        """A ``[remote rejected]`` that only says the ref moved during our push (a race, not a refusal)."""
        low = output.lower()
        return "[remote rejected]" in low and any(
            p in low for p in ("failed to update ref", "cannot lock ref", "incorrect old value", "failed to lock")
        )


__all__ = ["OpsRepo", "PushOutcome", "redact", "credential_hint", "REMOTE"]
