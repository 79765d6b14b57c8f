"""The runner's entry step: ``python -m reconciler.runner`` inside a ``vault-runner`` task.

Run by ``jobspecs/vault-runner.hcl`` once per dispatched attempt of an approved
vault action. In order, each step failing loudly:

1. **payload** - read ``$NOMAD_TASK_DIR/claim.json`` (``{"version": 1,
   "wrapping_token": "..."}``) and delete it at once, before using it.
2. **config** - read the rest of the environment and find the formula
   (``$FACTORY_ROOT/formulas/<formula>.sh``, else ``.toml`` run by
   ``RUNNER_AGENT_COMMAND``), before touching Vault: a runner that cannot
   run anything leaves the claim untaken.
3. **claim** - ``sys/wrapping/lookup``: the wrapping token must have been
   created at ``auth/token/create/<RUNNER_TOKEN_ROLE>`` (default role
   ``vault-runner``); then ``sys/wrapping/unwrap`` exactly once. Unwrapping is
   the claim on the attempt: a copy Nomad started on its own finds the token
   used and exits without running anything. The inner token's accessor must
   equal ``NOMAD_META_wrapped_accessor``.
4. **secrets** / **mounts** - read exactly the declared secrets
   (``kv/data/disinto/runner/<NAME>``, field ``value``) and mounts
   (``kv/data/disinto/runner/mounts/<alias>``, each field a file name), with
   the inner token. Mounts are written read-only (files 0400, directory 0500)
   under ``$NOMAD_SECRETS_DIR/mounts/<alias>/``.
5. **revoke** - the runner revokes its own token (``auth/token/revoke-self``).
   The formula never gets a Vault token. A failed revoke is reported but not
   fatal: the reconciler revokes the claim by accessor when it collects.
6. **formula** - leave ``$NOMAD_TASK_DIR/formula.started`` (the time, the claim's accessor and
   whether the revocation went through: the evidence that the claim died first), then run it in its own process group with ``ACTION_ID``,
   ``RUN_ID``, ``ATTEMPT``, each secret as an environment variable of the same
   name, ``RUNNER_MOUNT_<ALIAS>`` for each mount directory, and the runner's
   environment minus ``VAULT_*`` and ``NOMAD_TOKEN``; stop the group after
   ``NOMAD_META_timeout_seconds`` (SIGTERM, SIGKILL after
   ``RUNNER_KILL_GRACE_SECONDS``, default 10).
7. **output** - the formula's stdout and stderr are streamed, with every
   secret value, mount file and secret-shaped string redacted, to the
   runner's own stdout and stderr: redaction at the source, so Nomad's logs
   never hold a secret.

Exit codes (:class:`RunnerExit`):

====  ===============  ======================================================
code  reason           meaning
====  ===============  ======================================================
n     ok / formula_*   the formula ran; its own exit code (``128 + signal`` if killed)
90    claim_taken      the wrapping token is used (or expired): another copy of
                       this attempt holds the claim; nothing was run
91    secret_missing   a declared secret or mount is denied (403), absent (404)
                       or empty
92    misconfigured    required environment missing or malformed, formula not
                       found, no ``RUNNER_AGENT_COMMAND`` for a ``.toml`` formula
93    payload_missing  no ``claim.json``, or not a version-1 claim
94    claim_invalid    the wrapping token was not minted through the runner
                       role, or its token's accessor is not the dispatched one
95    vault_error      Vault unreachable, sealed or answering unexpectedly
96    internal_error   a bug in the runner (the message names the exception type)
124   timeout          the formula outlived ``timeout_seconds`` and was stopped
====  ===============  ======================================================

A formula may itself exit with one of these numbers; the last line the runner
prints on stderr, ``reconciler-runner: exit=<code> reason=<reason>``, tells
them apart. Every message of the runner is one line on stderr prefixed
``reconciler-runner:`` naming the step; none holds a secret value or a token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO, Mapping

from reconciler.redact import Redactor
from reconciler.runner.process import FormulaOutcome, run_formula
from reconciler.runner.vault_session import VaultCallError, VaultSession
from reconciler.tls import TLSConfig, TLSConfigError

PREFIX = "reconciler-runner:"
PAYLOAD_FILE = "claim.json"
PAYLOAD_VERSION = 1
DEFAULT_ROLE = "vault-runner"
DEFAULT_KV_MOUNT = "kv"
DEFAULT_SECRET_PREFIX = "disinto/runner"
INVALID_WRAPPING_TOKEN = "wrapping token is not valid or does not exist"

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""Action ids and formula names: letters, digits, ``-``, ``_``, ``.``, not starting with ``.``."""
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MOUNT_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_STRIPPED_ENV = re.compile(r"VAULT_.*|NOMAD_TOKEN")
"""Environment variables the formula must not see: Vault's settings and tokens, Nomad's token."""


class RunnerExit(IntEnum):
    """The runner's own exit codes (see the module docstring); any other code is the formula's."""

    CLAIM_TAKEN = 90
    SECRET_MISSING = 91
    MISCONFIGURED = 92
    PAYLOAD_MISSING = 93
    CLAIM_INVALID = 94
    VAULT_ERROR = 95
    INTERNAL_ERROR = 96
    TIMEOUT = 124

    @property
    def reason(self) -> str:
        return self.name.lower()


class RunnerError(Exception):
    """A step failed: the runner exits with ``code`` after printing ``step: message``."""

    def __init__(self, code: RunnerExit, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.code = code
        self.step = step
        self.message = message


@dataclass(frozen=True)
class RunnerConfig:
    """What the runner reads from its environment (as Nomad hands it to a dispatched task)."""

    task_dir: Path
    secrets_dir: Path
    run_id: str
    attempt: str
    action_id: str
    formula: str
    timeout_seconds: float
    wrapped_accessor: str
    secrets: tuple[str, ...]
    mounts: tuple[str, ...]
    vault_addr: str
    factory_root: Path
    agent_command: str = ""
    vault_namespace: str | None = None
    token_role: str = DEFAULT_ROLE
    kv_mount: str = DEFAULT_KV_MOUNT
    secret_prefix: str = DEFAULT_SECRET_PREFIX
    kill_grace: float = 10.0
    vault_timeout: float = 10.0
    vault_tls: TLSConfig = field(default_factory=TLSConfig)
    """``VAULT_CACERT`` ... ``VAULT_SKIP_VERIFY``, as the vault CLI reads them (the jobspec passes them in)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RunnerConfig":
        """Parse and check the environment; :class:`RunnerError` (misconfigured) names what is wrong."""
        problems: list[str] = []

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                problems.append(f"{name} is not set")
            return value

        def meta(key: str, required: bool = True) -> str:
            # Nomad exports meta both as written and upper-cased.
            value = (env.get(f"NOMAD_META_{key}") or env.get(f"NOMAD_META_{key.upper()}") or "").strip()
            if required and not value:
                problems.append(f"NOMAD_META_{key} is not set")
            return value

        def seconds(name: str, text: str, default: float | None = None) -> float:
            if not text and default is not None:
                return default
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not value > 0:
                problems.append(f"{name} must be a positive number of seconds, not {text!r}")
                return 1.0
            return value

        task_dir, secrets_dir = need("NOMAD_TASK_DIR"), need("NOMAD_SECRETS_DIR")
        vault_addr, factory_root = need("VAULT_ADDR"), need("FACTORY_ROOT")
        run_id, attempt, accessor = meta("run_id"), meta("attempt"), meta("wrapped_accessor")
        action_id, formula = meta("action_id"), meta("formula")
        timeout_text = meta("timeout_seconds")
        timeout = seconds("NOMAD_META_timeout_seconds", timeout_text) if timeout_text else 1.0
        for what, value in (("NOMAD_META_action_id", action_id), ("NOMAD_META_formula", formula)):
            if value and not _NAME.fullmatch(value):
                problems.append(f"{what} {value!r} is not a valid name (letters, digits, '-', '_', '.')")
        secrets = _name_list(meta("secrets", required=False))
        mounts = _name_list(meta("mounts", required=False))
        problems += [f"secret name {s!r} is not a valid environment variable name" for s in secrets if not _SECRET_NAME.fullmatch(s)]
        problems += [f"mount alias {m!r} is not a valid alias" for m in mounts if not _MOUNT_ALIAS.fullmatch(m)]
        role = env.get("RUNNER_TOKEN_ROLE", "").strip() or DEFAULT_ROLE
        kill_grace = seconds("RUNNER_KILL_GRACE_SECONDS", env.get("RUNNER_KILL_GRACE_SECONDS", "").strip(), 10.0)
        vault_timeout = seconds("RUNNER_VAULT_TIMEOUT", env.get("RUNNER_VAULT_TIMEOUT", "").strip(), 10.0)
        try:
            vault_tls = TLSConfig.from_env(env, "VAULT")
            problems += vault_tls.problems("VAULT")
        except TLSConfigError as exc:
            vault_tls = TLSConfig()
            problems.append(str(exc))
        if problems:
            raise RunnerError(RunnerExit.MISCONFIGURED, "config", "; ".join(problems))
        return cls(
            task_dir=Path(task_dir),
            secrets_dir=Path(secrets_dir),
            run_id=run_id,
            attempt=attempt,
            action_id=action_id,
            formula=formula,
            timeout_seconds=timeout,
            wrapped_accessor=accessor,
            secrets=secrets,
            mounts=mounts,
            vault_addr=vault_addr,
            factory_root=Path(factory_root),
            agent_command=env.get("RUNNER_AGENT_COMMAND", "").strip(),
            vault_namespace=env.get("VAULT_NAMESPACE", "").strip() or None,
            token_role=role,
            kv_mount=env.get("RUNNER_KV_MOUNT", "").strip().strip("/") or DEFAULT_KV_MOUNT,
            secret_prefix=env.get("RUNNER_SECRET_PREFIX", "").strip().strip("/") or DEFAULT_SECRET_PREFIX,
            kill_grace=kill_grace,
            vault_timeout=vault_timeout,
            vault_tls=vault_tls,
        )

    def secret_path(self, name: str) -> str:
        return f"{self.kv_mount}/data/{self.secret_prefix}/{name}"

    def mount_path(self, alias: str) -> str:
        return f"{self.kv_mount}/data/{self.secret_prefix}/mounts/{alias}"


def _name_list(text: str) -> tuple[str, ...]:
    """A comma-separated meta list (empty or absent = none), de-duplicated in order."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Claim:
    """The unwrapped claim: the runner's token, held only until the reads are done."""

    token: str
    accessor: str


# -- step 1: payload -----------------------------------------------------------------


def take_payload(task_dir: Path) -> str:
    """Read ``claim.json`` from ``task_dir``, delete it, and return its wrapping token."""
    path = task_dir / PAYLOAD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RunnerError(RunnerExit.PAYLOAD_MISSING, "payload", f"{path} does not exist") from None
    except OSError as exc:
        raise RunnerError(RunnerExit.PAYLOAD_MISSING, "payload", f"cannot read {path}: {exc.strerror}") from None
    try:
        path.unlink()
    except OSError as exc:
        # Not fatal: the token in it is single-use and about to be used.
        say(f"payload: could not delete {path}: {exc.strerror}")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RunnerError(RunnerExit.PAYLOAD_MISSING, "payload", f"{path} is not JSON") from None
    if not isinstance(payload, dict) or payload.get("version") != PAYLOAD_VERSION:
        raise RunnerError(RunnerExit.PAYLOAD_MISSING, "payload", f"{path} is not a version-{PAYLOAD_VERSION} claim")
    token = payload.get("wrapping_token")
    if not isinstance(token, str) or not token.strip():
        raise RunnerError(RunnerExit.PAYLOAD_MISSING, "payload", f"{path} holds no wrapping_token")
    return token.strip()


# -- step 2: formula -----------------------------------------------------------------


def resolve_formula(factory_root: Path, formula: str, agent_command: str, action_id: str) -> list[str]:
    """The command that runs ``formula``: ``bash <.sh> <id>``, else the agent with ``<.toml> <id>``."""
    if not _NAME.fullmatch(formula):
        raise RunnerError(RunnerExit.MISCONFIGURED, "formula", f"{formula!r} is not a valid formula name")
    directory = factory_root / "formulas"
    script = directory / f"{formula}.sh"
    if script.is_file():
        return ["bash", str(script), action_id]
    toml = directory / f"{formula}.toml"
    if toml.is_file():
        try:
            agent = shlex.split(agent_command)
        except ValueError as exc:
            raise RunnerError(RunnerExit.MISCONFIGURED, "formula", f"RUNNER_AGENT_COMMAND cannot be parsed: {exc}") from None
        if not agent:
            raise RunnerError(
                RunnerExit.MISCONFIGURED, "formula", f"{toml} needs an agent, but RUNNER_AGENT_COMMAND is empty"
            )
        return [*agent, str(toml), action_id]
    raise RunnerError(RunnerExit.MISCONFIGURED, "formula", f"no {formula}.sh or {formula}.toml in {directory}")


# -- step 3: claim -------------------------------------------------------------------


def _claim_error(step: str, err: VaultCallError) -> RunnerError:
    if err.status == 400 and any(INVALID_WRAPPING_TOKEN in e for e in err.errors):
        return RunnerError(
            RunnerExit.CLAIM_TAKEN,
            step,
            "the wrapping token is not valid or does not exist: another copy of this attempt took the claim "
            "(or it expired); not running anything",
        )
    return RunnerError(RunnerExit.VAULT_ERROR, step, str(err))


def _after_failed_unwrap(vault: VaultSession, wrapping_token: str, err: VaultCallError) -> RunnerError:
    """A 500 from unwrap: the loser of two concurrent unwraps may get it (``vault/wrapping.go``).

    The wrapping token tells: no longer valid -> another copy took the claim (``claim_taken``);
    still valid -> nothing was consumed and Vault really failed (``vault_error``).
    """
    try:
        vault.wrapping_lookup(wrapping_token)
    except VaultCallError as lookup_err:
        if lookup_err.status == 400 and any(INVALID_WRAPPING_TOKEN in e for e in lookup_err.errors):
            return RunnerError(
                RunnerExit.CLAIM_TAKEN,
                "claim",
                "unwrap failed (HTTP 500) and the wrapping token is now used: another copy of this attempt took the "
                "claim at the same moment; not running anything",
            )
    return RunnerError(RunnerExit.VAULT_ERROR, "claim", str(err))


def take_claim(vault: VaultSession, wrapping_token: str, role: str, expected_accessor: str) -> Claim:
    """Check where the wrapping token was minted, unwrap it once, and check its token's accessor."""
    expected_path = f"auth/token/create/{role}"
    try:
        info = vault.wrapping_lookup(wrapping_token)
    except VaultCallError as err:
        raise _claim_error("claim", err) from err
    creation_path = str(info.get("creation_path") or "")
    if creation_path != expected_path:
        raise RunnerError(
            RunnerExit.CLAIM_INVALID,
            "claim",
            f"the wrapping token was created at {creation_path or 'an unknown path'!r}, not {expected_path!r}; "
            "refusing to unwrap it",
        )
    try:
        reply = vault.unwrap(wrapping_token)
    except VaultCallError as err:
        if err.status == 500:
            raise _after_failed_unwrap(vault, wrapping_token, err) from err
        raise _claim_error("claim", err) from err
    auth = reply.get("auth") or {}
    token, accessor = str(auth.get("client_token") or ""), str(auth.get("accessor") or "")
    if not token:
        raise RunnerError(RunnerExit.CLAIM_INVALID, "claim", "the unwrapped response holds no token")
    if accessor != expected_accessor:
        release_token(vault, token)
        raise RunnerError(
            RunnerExit.CLAIM_INVALID,
            "claim",
            "the unwrapped token's accessor is not NOMAD_META_wrapped_accessor: this claim was not minted for "
            "this dispatch",
        )
    return Claim(token=token, accessor=accessor)


# -- step 4: secrets and mounts --------------------------------------------------------


def _read(vault: VaultSession, token: str, path: str, what: str, step: str) -> dict[str, object]:
    try:
        return vault.kv_read(token, path)
    except VaultCallError as err:
        if err.status == 403:
            raise RunnerError(RunnerExit.SECRET_MISSING, step, f"{what}: permission denied reading {path}") from err
        if err.status == 404:
            raise RunnerError(RunnerExit.SECRET_MISSING, step, f"{what}: {path} does not exist") from err
        raise RunnerError(RunnerExit.VAULT_ERROR, step, f"{what}: {err}") from err


def read_secrets(vault: VaultSession, token: str, config: RunnerConfig) -> dict[str, str]:
    """Exactly the declared secrets, ``NAME -> value``; any 403, 404 or empty value fails."""
    values: dict[str, str] = {}
    for name in config.secrets:
        data = _read(vault, token, config.secret_path(name), f"secret {name}", "secrets")
        value = data.get("value")
        if not isinstance(value, str) or not value:
            raise RunnerError(
                RunnerExit.SECRET_MISSING, "secrets", f"secret {name}: {config.secret_path(name)} has no 'value'"
            )
        values[name] = value
    return values


def _valid_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def read_mounts(vault: VaultSession, token: str, config: RunnerConfig) -> dict[str, dict[str, str]]:
    """Exactly the declared mounts, ``alias -> {file name: content}``; 403, 404 or no files fails."""
    mounts: dict[str, dict[str, str]] = {}
    for alias in config.mounts:
        path = config.mount_path(alias)
        data = _read(vault, token, path, f"mount {alias}", "mounts")
        if not data:
            raise RunnerError(RunnerExit.SECRET_MISSING, "mounts", f"mount {alias}: {path} holds no files")
        files: dict[str, str] = {}
        for name, content in data.items():
            if not _valid_file_name(name):
                raise RunnerError(RunnerExit.MISCONFIGURED, "mounts", f"mount {alias}: {name!r} is not a file name")
            if not isinstance(content, str):
                raise RunnerError(RunnerExit.MISCONFIGURED, "mounts", f"mount {alias}: {name} is not text")
            files[name] = content
        mounts[alias] = files
    return mounts


def materialise_mounts(mounts: Mapping[str, Mapping[str, str]], secrets_dir: Path) -> dict[str, Path]:
    """Write each mount's files read-only under ``<secrets_dir>/mounts/<alias>/``; returns the directories."""
    root = secrets_dir / "mounts"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    dirs: dict[str, Path] = {}
    for alias, files in mounts.items():
        directory = root / alias
        directory.mkdir(mode=0o700)
        for name, content in files.items():
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(directory / name, 0o400)
        os.chmod(directory, 0o500)
        dirs[alias] = directory
    return dirs


def mount_env_name(alias: str) -> str:
    """``RUNNER_MOUNT_<ALIAS>``: upper-cased, ``-`` as ``_``."""
    return "RUNNER_MOUNT_" + alias.upper().replace("-", "_")


# -- step 5: revoke ----------------------------------------------------------------------


def release_token(vault: VaultSession, token: str) -> bool:
    """Revoke the runner's own token; a failure is reported, not fatal (the reconciler revokes by accessor)."""
    try:
        vault.revoke_self(token)
    except VaultCallError as err:
        say(f"revoke: could not revoke the claim token ({err}); the reconciler revokes it by accessor")
        return False
    return True


# -- step 6: the formula ----------------------------------------------------------------------


def formula_env(
    base: Mapping[str, str], config: RunnerConfig, secrets: Mapping[str, str], mount_dirs: Mapping[str, Path]
) -> dict[str, str]:
    """The formula's environment: ``base`` without Vault/Nomad tokens, plus run ids, secrets and mounts."""
    env = {k: v for k, v in base.items() if not _STRIPPED_ENV.fullmatch(k)}
    env.update({"ACTION_ID": config.action_id, "RUN_ID": config.run_id, "ATTEMPT": config.attempt})
    env.update({mount_env_name(alias): str(path) for alias, path in mount_dirs.items()})
    env.update(secrets)
    return env


def redaction_values(
    secrets: Mapping[str, str], mounts: Mapping[str, Mapping[str, str]], tokens: Mapping[str, str]
) -> dict[str, str]:
    """Every value the runner knows that must never reach a log, by name."""
    values = dict(secrets)
    for alias, files in mounts.items():
        values.update({f"mount:{alias}/{name}": content for name, content in files.items()})
    values.update(tokens)
    return values


# -- messages ---------------------------------------------------------------------------------

_MESSAGE_REDACTOR = Redactor()


def say(message: str, stream: BinaryIO | None = None) -> None:
    """One line on stderr, prefixed ``reconciler-runner:`` (secret-shaped strings redacted anyway)."""
    line = " ".join(_MESSAGE_REDACTOR.redact(message).split())
    sink = stream or sys.stderr.buffer
    sink.write(f"{PREFIX} {line}\n".encode("utf-8", errors="replace"))
    sink.flush()


# -- main -------------------------------------------------------------------------------------


def run(env: Mapping[str, str], stdout: BinaryIO, stderr: BinaryIO) -> tuple[int, str]:
    """All steps; returns ``(exit code, reason)``. Raises :class:`RunnerError` when a step fails."""
    task_dir = env.get("NOMAD_TASK_DIR", "").strip()
    if not task_dir:
        raise RunnerError(RunnerExit.MISCONFIGURED, "config", "NOMAD_TASK_DIR is not set: cannot find the payload")
    wrapping_token = take_payload(Path(task_dir))
    config = RunnerConfig.from_env(env)
    argv = resolve_formula(config.factory_root, config.formula, config.agent_command, config.action_id)

    vault = VaultSession(config.vault_addr, namespace=config.vault_namespace, timeout=config.vault_timeout, tls=config.vault_tls)
    try:
        claim = take_claim(vault, wrapping_token, config.token_role, config.wrapped_accessor)
        try:
            secrets = read_secrets(vault, claim.token, config)
            mounts = read_mounts(vault, claim.token, config)
        finally:
            revoked = release_token(vault, claim.token)
    finally:
        vault.close()
    try:
        mount_dirs = materialise_mounts(mounts, config.secrets_dir)
    except OSError as exc:
        raise RunnerError(RunnerExit.MISCONFIGURED, "mounts", f"cannot write the mounts: {exc.strerror}") from None

    redactor = Redactor(
        redaction_values(secrets, mounts, {"VAULT_CLAIM": claim.token, "VAULT_WRAPPING_TOKEN": wrapping_token})
    )
    say(f"formula: running {config.formula} for action {config.action_id} (run {config.run_id}, attempt {config.attempt})", stderr)
    note_formula_start(Path(task_dir), claim.accessor, revoked)
    try:
        outcome = run_formula(
            argv,
            formula_env(env, config, secrets, mount_dirs),
            timeout=config.timeout_seconds,
            redactor=redactor,
            stdout=stdout,
            stderr=stderr,
            cwd=config.factory_root,
            kill_grace=config.kill_grace,
        )
    except OSError as exc:
        raise RunnerError(RunnerExit.MISCONFIGURED, "formula", f"cannot start {argv[0]}: {exc.strerror}") from None
    return _formula_result(outcome, config.timeout_seconds, stderr)


FORMULA_STARTED = "formula.started"
"""Left in the task directory as the formula starts: when, the claim's accessor (not a secret) and whether
the runner's own revocation went through - the evidence that the claim was dead before the formula ran."""


def note_formula_start(task_dir: Path, accessor: str, revoked: bool) -> None:
    """Write ``FORMULA_STARTED``; a failure to write it never stops the run."""
    try:
        (task_dir / FORMULA_STARTED).write_text(
            json.dumps({"at": time.time(), "accessor": accessor, "revoked": revoked}), encoding="utf-8"
        )
    except OSError:
        pass


def _formula_result(outcome: FormulaOutcome, timeout: float, stderr: BinaryIO) -> tuple[int, str]:
    if outcome.timed_out:
        say(f"formula: timed out after {timeout:g} seconds; its process group was stopped", stderr)
        return RunnerExit.TIMEOUT, RunnerExit.TIMEOUT.reason
    if outcome.stopped:
        return outcome.exit_code, "stopped"
    if outcome.exit_code == 0:
        return 0, "ok"
    return outcome.exit_code, "formula_killed" if outcome.exit_code > 128 else "formula_failed"


def main(env: Mapping[str, str] | None = None) -> int:
    """Run the entry step with ``env`` (default: the process environment); returns the exit code."""
    environ = dict(os.environ if env is None else env)
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    try:
        code, reason = run(environ, stdout, stderr)
    except RunnerError as err:
        say(f"{err.step}: {err.message}", stderr)
        code, reason = err.code, err.code.reason
    except Exception as exc:  # a bug: say what, never with a message that could hold a value
        say(f"internal: unexpected {type(exc).__name__}", stderr)
        code, reason = RunnerExit.INTERNAL_ERROR, RunnerExit.INTERNAL_ERROR.reason
    say(f"exit={int(code)} reason={reason}", stderr)
    return int(code)
