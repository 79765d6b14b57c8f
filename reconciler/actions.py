"""Vault actions: the file format, its validation, tiers and run ids.

A vault action is ``vault/actions/<id>.toml`` in the ops repo (schema in
``shared/docs/MISSION.md``). This module turns the bytes of such a file into a
frozen :class:`Action` or an :class:`ActionInvalid` listing *every* problem it
could find, one actionable line each, so that ``reconciler validate`` and a
rejected action's result tell the author everything to fix in one go.

Everything here is pure: the only I/O is an existence check of the formula
under ``FACTORY_ROOT``. Settings arrive as an :class:`ActionSettings`.

Error tree::

    Exception
     ├── ActionInvalid   the action file is unusable; ``problems`` lists why
     └── TiersInvalid    vault/policy.toml is unusable; the message says why
"""

from __future__ import annotations

import hashlib
import re
import reprlib
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reconciler.settings import ActionSettings

ACTIONS_DIR = "vault/actions"
"""Folder of the ops repo that holds action files and their results."""

POLICY_PATH = "vault/policy.toml"
"""The tiers file of the ops repo."""

TIERS = ("low", "medium", "high")
"""Tiers, weakest first: a higher index is a bigger blast radius."""

DEFAULT_TIMEOUT_MINUTES = 60

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""Action ids and formula names: ASCII letters, digits, ``-``, ``_``, ``.``; no leading ``.``."""

_RESULT_SUFFIX = ".result.json"
_ACTION_SUFFIX = ".toml"

_ID_RULE = "only letters, digits, '-', '_' and '.' are allowed, and it must not start with '.'"


class ActionInvalid(Exception):
    """An action file cannot be run; ``problems`` has one specific line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class TiersInvalid(Exception):
    """``vault/policy.toml`` cannot be read as a tiers table; the message says why."""


def is_safe_id(value: str) -> bool:
    """Whether ``value`` is a valid action id / formula name (no path characters)."""
    return _SAFE_ID.fullmatch(value) is not None


# --------------------------------------------------------------------------- model


def _settings_of(info: ValidationInfo) -> ActionSettings:
    """The settings passed as validation context, or the defaults."""
    ctx = info.context
    if isinstance(ctx, dict) and isinstance(ctx.get("settings"), ActionSettings):
        return ctx["settings"]
    return ActionSettings()


def _array_to_tuple(value: Any) -> Any:
    """Accept a TOML array (a list) for a tuple field; leave anything else to fail strictly."""
    return tuple(value) if isinstance(value, list) else value


_StrTuple = Annotated[tuple[str, ...], BeforeValidator(_array_to_tuple)]


def _check_safe_id(field: str, value: str) -> str:
    if not is_safe_id(value):
        raise ValueError(f"{field} {_short(value)} is not a safe name: {_ID_RULE}")
    return value


def _check_non_blank(field: str, value: str) -> str:
    if not value.strip():
        raise ValueError(f"{field} must be a non-empty string")
    return value


def _secret_allowed(name: str, info: ValidationInfo) -> str:
    """One secret name must be in the configured allow-list."""
    allowed = _settings_of(info).allowed_secrets
    if name not in allowed:
        raise ValueError(
            f"secret {_short(name)} is not in the allow-list ({', '.join(allowed)}); "
            "add it with RECONCILER_ALLOWED_SECRETS"
        )
    return name


def _mount_allowed(name: str, info: ValidationInfo) -> str:
    """One mount name must be in the configured allow-list."""
    allowed = _settings_of(info).allowed_mounts
    if name not in allowed:
        raise ValueError(
            f"mount {_short(name)} is not in the allow-list ({', '.join(allowed)}); "
            "add it with RECONCILER_ALLOWED_MOUNTS"
        )
    return name


def _no_duplicates(field: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """Raise one ValueError whose lines name every repeated value."""
    seen: set[str] = set()
    repeated = []
    for value in values:
        if value in seen:
            repeated.append(value)
        seen.add(value)
    if repeated:
        raise ValueError("\n".join(f"{field} lists {_short(v)} more than once" for v in dict.fromkeys(repeated)))
    return values


_SecretNames = Annotated[
    tuple[Annotated[str, AfterValidator(_secret_allowed)], ...], BeforeValidator(_array_to_tuple)
]
_MountNames = Annotated[
    tuple[Annotated[str, AfterValidator(_mount_allowed)], ...], BeforeValidator(_array_to_tuple)
]


class Action(BaseModel):
    """One vault action, validated. Frozen: a run pins exactly this.

    Validate with ``Action.model_validate(data, context={"settings": ActionSettings(...)})``
    so that the configured allow-lists and timeout maximum apply (defaults otherwise).
    Array fields are tuples so the model is immutable and hashable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str
    """Equals the file name's stem; a safe name (no path characters)."""
    formula: str
    """Name of ``formulas/<formula>.toml`` or ``.sh`` under ``FACTORY_ROOT``; a safe name."""
    context: str
    """Why this action exists, for the approving human."""
    secrets: _SecretNames
    """Secret names from the allow-list; each maps to Vault policy ``runner-<NAME>``."""
    mounts: _MountNames = ()
    """Credential mounts from the allow-list (``ssh``, ``gpg``, ``sops`` by default)."""
    model: str | None = None
    """Model the formula should use, if it cares."""
    tools: _StrTuple = ()
    """Tools the formula may enable."""
    timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES
    """Minutes the formula may run, counted from the task's start."""
    blast_radius: Literal["low", "medium", "high"] | None = None
    """Raises the formula's tier (never lowers it)."""
    dispatch_mode: Literal["pr", "direct"] = "pr"
    """``pr``: needs an approved pull request. ``direct``: low tier, no secrets, no mounts."""

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any, info: ValidationInfo) -> Any:
        """An omitted timeout is 60 minutes, or the configured maximum when that is lower."""
        if isinstance(data, dict) and "timeout_minutes" not in data:
            limit = _settings_of(info).max_timeout_minutes
            if limit < DEFAULT_TIMEOUT_MINUTES:
                data = {**data, "timeout_minutes": max(limit, 1)}
        return data

    @field_validator("id", "formula")
    @classmethod
    def _safe_name(cls, value: str, info: ValidationInfo) -> str:
        return _check_safe_id(str(info.field_name), value)

    @field_validator("context", "model")
    @classmethod
    def _non_blank(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _check_non_blank(str(info.field_name), value)

    @field_validator("secrets", "mounts")
    @classmethod
    def _unique(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return _no_duplicates(str(info.field_name), value)

    @field_validator("tools")
    @classmethod
    def _tools_non_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not tool.strip() for tool in value):
            raise ValueError("tools must not contain empty names")
        return value

    @field_validator("timeout_minutes")
    @classmethod
    def _timeout_in_range(cls, value: int, info: ValidationInfo) -> int:
        limit = _settings_of(info).max_timeout_minutes
        if not 1 <= value <= limit:
            raise ValueError(
                f"timeout_minutes must be between 1 and {limit}, got {value}"
                + ("; raise the limit with RECONCILER_MAX_TIMEOUT_MINUTES" if value > limit else "")
            )
        return value


ALLOWED_KEYS = tuple(Action.model_fields)
REQUIRED_KEYS = tuple(name for name, f in Action.model_fields.items() if f.is_required())


# --------------------------------------------------------------------------- parsing


def parse_action(file_name: str, data: bytes, settings: ActionSettings) -> Action:
    """Validate the bytes of ``vault/actions/<file_name>`` and return the action.

    ``file_name`` is the base name (``release-v120.toml``). Checks, in order: size
    (before decoding anything), UTF-8, TOML, the schema (every field problem at
    once), then the cross checks (id equals the file name's stem, formula exists
    under ``FACTORY_ROOT``). Raises :class:`ActionInvalid` with all problems found;
    never raises anything else.
    """
    if len(data) > settings.max_file_bytes:
        raise ActionInvalid([f"file is {len(data)} bytes; the limit is {settings.max_file_bytes}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ActionInvalid(
            [f"file is not UTF-8 (invalid byte 0x{data[exc.start]:02x} at offset {exc.start})"]
        ) from None
    try:
        raw = tomllib.loads(text)
    except RecursionError:
        raise ActionInvalid(["not valid TOML: values are nested too deeply"]) from None
    except ValueError as exc:  # tomllib.TOMLDecodeError, or int() over its digit limit
        raise ActionInvalid([f"not valid TOML: {exc}"]) from None

    problems: list[str] = []
    action: Action | None = None
    try:
        action = Action.model_validate(raw, context={"settings": settings})
    except ValidationError as exc:
        problems.extend(_describe_errors(exc))
    except RecursionError:  # defensive: pathological nesting inside a field
        problems.append("values are nested too deeply")
    problems.extend(_cross_checks(file_name, raw, settings))
    if problems or action is None:
        raise ActionInvalid(problems or ["action is invalid"])
    return action


def _cross_checks(file_name: str, raw: dict[str, Any], settings: ActionSettings) -> list[str]:
    """Checks that need more than the file: its name and the factory's formulas."""
    problems: list[str] = []
    expected = action_id_from_file_name(file_name)
    if expected is None:
        problems.append(
            f"file name {_short(file_name)} is not <id>.toml with a safe id ({_ID_RULE})"
        )
    action_id = raw.get("id")
    if isinstance(action_id, str) and is_safe_id(action_id) and expected is not None and action_id != expected:
        problems.append(f"id {_short(action_id)} does not match the file name {_short(file_name)}")
    formula = raw.get("formula")
    if isinstance(formula, str) and is_safe_id(formula):
        problem = formula_problem(formula, settings.factory_root)
        if problem:
            problems.append(problem)
    return problems


def formula_problem(formula: str, factory_root: Path | None) -> str | None:
    """Why ``formula`` cannot be used, or None when ``formulas/<formula>.toml|.sh`` exists.

    Fails closed: without ``FACTORY_ROOT`` no formula can be checked, so none passes.
    """
    if not is_safe_id(formula):
        return f"formula {_short(formula)} is not a safe name: {_ID_RULE}"
    if factory_root is None:
        return (
            f"formula {_short(formula)} cannot be checked: FACTORY_ROOT is not set; "
            "set FACTORY_ROOT to the checkout that holds formulas/"
        )
    candidates = [Path(factory_root) / "formulas" / f"{formula}{ext}" for ext in (".toml", ".sh")]
    try:
        if any(path.is_file() for path in candidates):
            return None
    except OSError as exc:
        return f"formula {_short(formula)} cannot be checked under FACTORY_ROOT={factory_root}: {exc.strerror}"
    return (
        f"formula {_short(formula)} not found: neither formulas/{formula}.toml nor "
        f"formulas/{formula}.sh exists under FACTORY_ROOT={factory_root}"
    )


# --------------------------------------------------------------------------- error text

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlevel = 2
_repr.maxlist = 4


def _short(value: Any) -> str:
    """A bounded ``repr`` for messages (file content may be long or deeply nested)."""
    return _repr.repr(value)


def _toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, (date, time)):
        return "date/time"
    return type(value).__name__


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "file"


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "tuple_type": "an array",
    "list_type": "an array",
    "model_type": "a table",
    "dict_type": "a table",
}


def _describe_errors(exc: ValidationError) -> list[str]:
    """One actionable line per pydantic error, in the file's own terms."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        loc = tuple(err["loc"])
        where = _loc(loc)
        value = err.get("input")
        if kind == "missing":
            lines.append(f"missing required key {_short(where)}")
        elif kind == "extra_forbidden":
            lines.append(f"unknown key {_short(where)} (allowed: {', '.join(ALLOWED_KEYS)})")
        elif kind in _EXPECTED:
            lines.append(f"{where} must be {_EXPECTED[kind]}, got {_toml_type(value)} {_short(value)}")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            lines.append(f"{where} must be one of {expected}, got {_short(value)}")
        elif kind == "value_error":
            lines.extend(str(err.get("ctx", {}).get("error", err["msg"])).split("\n"))
        else:
            lines.append(f"{where}: {err['msg']}")
    return list(dict.fromkeys(lines))


# --------------------------------------------------------------------------- paths


def action_id_from_file_name(file_name: str) -> str | None:
    """The action id of ``<id>.toml``, or None if the name is not that with a safe id."""
    if not file_name.endswith(_ACTION_SUFFIX):
        return None
    stem = file_name[: -len(_ACTION_SUFFIX)]
    return stem if is_safe_id(stem) else None


def action_path(action_id: str) -> str:
    """``vault/actions/<id>.toml``."""
    return f"{ACTIONS_DIR}/{action_id}{_ACTION_SUFFIX}"


def result_path(action_id: str) -> str:
    """``vault/actions/<id>.result.json``: where the action's result is pushed."""
    return f"{ACTIONS_DIR}/{action_id}{_RESULT_SUFFIX}"


def _split(path: str) -> str | None:
    """The base name of a path directly inside ``vault/actions``, else None."""
    prefix = ACTIONS_DIR + "/"
    if not path.startswith(prefix):
        return None
    name = path[len(prefix):]
    return name if name and "/" not in name else None


def is_action_path(path: str) -> bool:
    """Whether ``path`` (repo-relative, ``/``-separated) is an action file."""
    name = _split(path)
    return name is not None and action_id_from_file_name(name) is not None


def is_result_path(path: str) -> bool:
    """Whether ``path`` is an action's result file ``vault/actions/<id>.result.json``."""
    name = _split(path)
    if name is None or not name.endswith(_RESULT_SUFFIX):
        return False
    return is_safe_id(name[: -len(_RESULT_SUFFIX)])


# --------------------------------------------------------------------------- tiers


def parse_tiers(data: bytes) -> dict[str, str]:
    """The ``[tiers]`` table of ``vault/policy.toml``: formula → ``low|medium|high``.

    A file without a ``[tiers]`` table maps nothing (every formula is then ``high``).
    Raises :class:`TiersInvalid` naming every bad entry.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TiersInvalid(
            f"{POLICY_PATH} is not UTF-8 (invalid byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    except RecursionError:
        raise TiersInvalid(f"{POLICY_PATH} is not valid TOML: values are nested too deeply") from None
    except ValueError as exc:
        raise TiersInvalid(f"{POLICY_PATH} is not valid TOML: {exc}") from None
    table = doc.get("tiers", {})
    if not isinstance(table, dict):
        raise TiersInvalid(f"{POLICY_PATH}: 'tiers' must be a table, got {_toml_type(table)}")
    bad = [
        f"{_short(formula)} = {_short(tier)}" for formula, tier in table.items() if tier not in TIERS
    ]
    if bad:
        raise TiersInvalid(
            f"{POLICY_PATH}: tiers must be one of {', '.join(TIERS)}; bad entries: {', '.join(bad)}"
        )
    return dict(table)


def effective_tier(formula: str, blast_radius: str | None, tiers: dict[str, str]) -> str:
    """The tier an action runs at: the formula's tier (unknown → ``high``), raised by ``blast_radius``."""
    base = tiers.get(formula, "high")
    if base not in TIERS:
        base = "high"
    if blast_radius in TIERS and TIERS.index(blast_radius) > TIERS.index(base):
        return blast_radius
    return base


def dispatch_problem(action: Action, tier: str) -> str | None:
    """Why ``dispatch_mode = "direct"`` is not allowed for this action, or None.

    Direct dispatch skips the approval gate, so it is only for ``low`` tier and only
    without secrets or mounts. Actions in ``pr`` mode always return None here.
    """
    if action.dispatch_mode != "direct":
        return None
    reasons = []
    if tier != "low":
        reasons.append(f"its tier is {tier!r} (formula {action.formula!r}), only 'low' may run directly")
    if action.secrets:
        reasons.append(f"it declares secrets ({', '.join(action.secrets)})")
    if action.mounts:
        reasons.append(f"it declares mounts ({', '.join(action.mounts)})")
    if not reasons:
        return None
    return 'dispatch_mode = "direct" is not allowed: ' + "; ".join(reasons) + '; use dispatch_mode = "pr"'


# --------------------------------------------------------------------------- run ids


def content_hash(data: bytes) -> str:
    """sha256 hex of the action file's bytes: what a run pins."""
    return hashlib.sha256(data).hexdigest()


_RUN_ID_STEM_MAX = 64
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def run_id_for(action_id: str, content_hash: str) -> str:
    """The deterministic run id of one action file content: ``<stem>-<first 12 hex of hash>``.

    ``stem`` is the action id with every ``.`` (or any other character outside
    ``[A-Za-z0-9_-]``, which a valid id never has) turned into ``_``, cut to 64 characters.
    The result uses only ``[A-Za-z0-9_-]`` and is at most 77 characters, so it is valid
    unchanged as:

    - a Nomad idempotency token and ``IdPrefixTemplate`` part, and inside dispatch meta;
    - a Nomad Variable path segment (Nomad allows only ``[a-zA-Z0-9-_~/]``, 128 characters
      for the whole path: no ``.``, no ``@``);
    - a Vault token ``display_name`` (Vault keeps ``[a-zA-Z0-9-]`` and turns others into ``-``);
    - a git ref component and commit message text.

    Uniqueness rests on the hash: the file's content includes its ``id``, so two
    different actions cannot share a content hash, and rewriting ``.`` or cutting the
    stem never merges two runs. The same content always gives the same id, which is
    what makes "did I already dispatch this?" a lookup.
    """
    stem = _RUN_ID_UNSAFE.sub("_", action_id)[:_RUN_ID_STEM_MAX]
    return f"{stem}-{content_hash[:12]}"


__all__ = [
    "ACTIONS_DIR",
    "ALLOWED_KEYS",
    "POLICY_PATH",
    "TIERS",
    "Action",
    "ActionInvalid",
    "TiersInvalid",
    "action_id_from_file_name",
    "action_path",
    "content_hash",
    "dispatch_problem",
    "effective_tier",
    "formula_problem",
    "is_action_path",
    "is_result_path",
    "is_safe_id",
    "parse_action",
    "parse_tiers",
    "result_path",
    "run_id_for",
]
