"""HCL2 jobspec -> Nomad job JSON, for the Nomad double's ``/v1/jobs/parse``.

Nomad parses jobspecs with its own HCL2 dialect. The double needs only the
subset the project's jobspecs use: ``variable`` blocks (defaults overridden by
the request's ``Variables``), ``job`` with ``parameterized``, ``meta``,
``constraint``, ``group`` with ``count``, ``restart``, ``reschedule``,
``volume``, ``disconnect``, and ``task`` with ``driver``, ``config``, ``env``,
``meta``, ``resources``, ``dispatch_payload``, ``volume_mount``,
``kill_timeout``. Anything else is carried over with its name turned into
Nomad's CamelCase, which is what the real parser does for most blocks.

Expressions: only ``var.<name>`` is evaluated (whole-value or inside a string
template). Runtime interpolations Nomad leaves for the client -
``${NOMAD_META_x}``, ``${attr.kernel.name}``, ``${node.unique.id}`` - are kept
verbatim, and the HCL escape ``$${`` becomes a literal ``${``.

python-hcl2 (v8) keeps the quotes in string values unless asked not to; this
module asks (``strip_string_quotes``) and works on plain values.

:func:`canonicalize_job` fills Nomad's defaults (``Canonicalize: true``, and
what the server does to every registered job).
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable, Mapping

import hcl2
from hcl2 import SerializationOptions

__all__ = [
    "JobspecError",
    "parse_jobspec",
    "parse_variables",
    "canonicalize_job",
    "validate_job",
    "parse_duration",
    "format_duration",
]

NS_PER_SECOND = 1_000_000_000


class JobspecError(ValueError):
    """The jobspec cannot be turned into a job; the message says where and why."""


# -- durations --------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: Any) -> int:
    """A Go duration (``"30s"``, ``"1h30m"``, ``"250ms"``) or a number of nanoseconds -> nanoseconds."""
    if isinstance(value, bool):
        raise JobspecError(f"expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    if text in ("0", ""):
        return 0
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise JobspecError(f"time: invalid duration {value!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(total)


def format_duration(ns: int) -> str:
    """Nanoseconds -> Go's ``Duration.String()`` (``15s``, ``1m30s``, ``24h0m0s``, ``250ms``)."""
    if ns < NS_PER_SECOND:
        return f"{ns // 1_000_000}ms" if ns else "0s"
    seconds = ns / NS_PER_SECOND
    hours, rest = divmod(int(seconds), 3600)
    minutes = rest // 60
    secs = seconds - hours * 3600 - minutes * 60
    sec_text = f"{secs:g}s"
    if hours:
        return f"{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{minutes}m{sec_text}"
    return sec_text


# -- reading python-hcl2's output ------------------------------------------------

_OPTIONS = SerializationOptions(with_comments=False, strip_string_quotes=True, preserve_heredocs=False)


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        return hcl2.loads(text, serialization_options=_OPTIONS)
    except Exception as exc:  # python-hcl2 raises lark errors of many kinds
        raise JobspecError(f"{what} is not valid HCL: {exc}") from exc


def _is_block(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__is_block__") is True


def _body(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != "__is_block__"}


def _blocks(body: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The bodies of unlabelled blocks ``name { ... }``."""
    raw = body.get(name)
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [_body(b) for b in items if _is_block(b)]


def _labelled(body: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(label, body)`` of labelled blocks ``name "label" { ... }``."""
    raw = body.get(name)
    if raw is None:
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not isinstance(item, dict):
            raise JobspecError(f"{name} must be a block")
        for label, inner in item.items():
            if label == "__is_block__" or not _is_block(inner):
                raise JobspecError(f"{name} block needs exactly one label")
            out.append((label, _body(inner)))
    return out


def _mapping(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """A map given either as a block (``meta { k = "v" }``) or an attribute (``meta = { ... }``)."""
    raw = body.get(name)
    if raw is None:
        return None
    if isinstance(raw, list):
        merged: dict[str, Any] = {}
        for b in raw:
            if not isinstance(b, dict):
                raise JobspecError(f"{name} must be a map")
            merged.update(_body(b))
        return merged
    if isinstance(raw, dict):
        return _body(raw)
    raise JobspecError(f"{name} must be a map, got {raw!r}")


def _string_map(body: Mapping[str, Any], name: str) -> dict[str, str] | None:
    """A ``map(string)`` field (``meta``, ``env``): scalars become strings as HCL converts them."""
    raw = _mapping(body, name)
    if raw is None:
        return None
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, (list, dict)):
            raise JobspecError(f"{name}.{key}: expected a string, got {value!r}")
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


# -- variables and expressions ---------------------------------------------------

_INTERP = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_VAR_REF = re.compile(r"^\s*var\.([A-Za-z_][A-Za-z0-9_-]*)\s*$")


def parse_variables(text_or_map: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The request's ``Variables``: HCL ``name = "value"`` lines (as ``nomad job run -var-file``) or a map."""
    if text_or_map is None:
        return {}
    if isinstance(text_or_map, Mapping):
        return dict(text_or_map)
    if not str(text_or_map).strip():
        return {}
    return {k: _unescape(v) for k, v in _load(str(text_or_map), "Variables").items()}


def _unescape(value: Any) -> Any:
    """An HCL literal's value: ``$${`` and ``%%{`` stand for a literal ``${`` and ``%{``."""
    if isinstance(value, str):
        return value.replace("$${", "${").replace("%%{", "%{")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


def _declared_variables(doc: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    declared: dict[str, dict[str, Any]] = {label: body for label, body in _labelled(doc, "variable")}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise JobspecError(
            f"Value for undeclared variable: a variable named {unknown[0]!r} was assigned, "
            "but the jobspec declares no variable of that name"
        )
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in overrides:
            values[name] = _convert(overrides[name], str(spec.get("type", "")), name)
        elif "default" in spec:
            values[name] = _unescape(spec["default"])
        else:
            raise JobspecError(f'Required variable not set: the variable "{name}" is required, but it is not set')
    return values


def _convert(value: Any, type_name: str, name: str) -> Any:
    """Coerce an override to the variable's declared type, as HCL would."""
    kind = type_name.strip("${}").strip()
    try:
        if kind == "number" and isinstance(value, str):
            return int(value) if re.fullmatch(r"-?\d+", value) else float(value)
        if kind == "bool" and isinstance(value, str):
            if value not in ("true", "false"):
                raise ValueError(value)
            return value == "true"
        if kind == "string" and not isinstance(value, str):
            if isinstance(value, (list, dict)):
                raise ValueError(value)
            return str(value).lower() if isinstance(value, bool) else str(value)
    except ValueError:
        raise JobspecError(f"Invalid value for variable {name!r}: expected {kind}, got {value!r}") from None
    return value


def _evaluate(value: Any, variables: Mapping[str, Any]) -> Any:
    """Resolve ``var.x`` references in ``value`` (recursively); leave runtime interpolations alone."""
    if isinstance(value, dict):
        return {k: _evaluate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_evaluate(v, variables) for v in value]
    if not isinstance(value, str):
        return value
    whole = _INTERP.fullmatch(value)
    if whole:
        ref = _VAR_REF.match(whole.group(1))
        if ref:
            return copy.deepcopy(_lookup(ref.group(1), variables))

    def substitute(m: re.Match[str]) -> str:
        expr = m.group(1)
        ref = _VAR_REF.match(expr)
        if ref:
            found = _lookup(ref.group(1), variables)
            if isinstance(found, (list, dict)):
                raise JobspecError(f"Invalid template interpolation value: var.{ref.group(1)} is not a string")
            return str(found).lower() if isinstance(found, bool) else str(found)
        if expr.strip().startswith(("var.", "local.")) or "(" in expr:
            raise JobspecError(f"unsupported expression ${{{expr}}} in jobspec (the double evaluates only var.<name>)")
        return m.group(0)

    return _INTERP.sub(substitute, value).replace("$${", "${").replace("%%{", "%{")


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    if name not in variables:
        raise JobspecError(
            f'Reference to undeclared input variable: an input variable with the name "{name}" has not been declared'
        )
    return variables[name]


# -- HCL body -> job JSON ----------------------------------------------------------

_ACRONYMS = {"id": "ID", "cpu": "CPU", "mb": "MB", "ttl": "TTL", "tls": "TLS", "url": "URL", "dns": "DNS", "ip": "IP"}


def camel(name: str) -> str:
    """``max_file_size`` -> ``MaxFileSize`` (Nomad's JSON field names)."""
    return "".join(_ACRONYMS.get(part, part[:1].upper() + part[1:]) for part in name.split("_") if part)


def _generic(value: Any) -> Any:
    """Carry an unknown attribute or block over with CamelCase field names."""
    if isinstance(value, list) and value and all(_is_block(v) for v in value):
        converted = [{camel(k): _generic(v) for k, v in _body(b).items()} for b in value]
        return converted
    if _is_block(value):
        return {camel(k): _generic(v) for k, v in _body(value).items()}
    return value


Converter = Callable[[Any], Any]

_DURATION = parse_duration


def _fields(body: Mapping[str, Any], table: Mapping[str, tuple[str, Converter | None]], where: str) -> dict[str, Any]:
    """Convert the attributes of ``body`` named in ``table``; the rest generically."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in table:
            field, conv = table[key]
            out[field] = conv(value) if conv is not None else value
        else:
            out[camel(key)] = _generic(value)
    return out


_PARAMETERIZED = {
    "payload": ("Payload", None),
    "meta_required": ("MetaRequired", None),
    "meta_optional": ("MetaOptional", None),
}
_RESTART = {
    "attempts": ("Attempts", int),
    "interval": ("Interval", _DURATION),
    "delay": ("Delay", _DURATION),
    "mode": ("Mode", None),
    "render_templates": ("RenderTemplates", None),
}
_RESCHEDULE = {
    "attempts": ("Attempts", int),
    "interval": ("Interval", _DURATION),
    "delay": ("Delay", _DURATION),
    "delay_function": ("DelayFunction", None),
    "max_delay": ("MaxDelay", _DURATION),
    "unlimited": ("Unlimited", None),
}
_DISCONNECT = {
    "lost_after": ("LostAfter", _DURATION),
    "stop_on_client_after": ("StopOnClientAfter", _DURATION),
    "replace": ("Replace", None),
    "reconcile": ("Reconcile", None),
}
_RESOURCES = {
    "cpu": ("CPU", int),
    "cores": ("Cores", int),
    "memory": ("MemoryMB", int),
    "memory_max": ("MemoryMaxMB", int),
}
_VOLUME = {
    "type": ("Type", None),
    "source": ("Source", None),
    "read_only": ("ReadOnly", None),
    "access_mode": ("AccessMode", None),
    "attachment_mode": ("AttachmentMode", None),
    "per_alloc": ("PerAlloc", None),
}
_VOLUME_MOUNT = {
    "volume": ("Volume", None),
    "destination": ("Destination", None),
    "read_only": ("ReadOnly", None),
    "propagation_mode": ("PropagationMode", None),
}
_CONSTRAINT = {
    "attribute": ("LTarget", None),
    "value": ("RTarget", None),
    "operator": ("Operand", None),
}
_LOGS = {"max_files": ("MaxFiles", int), "max_file_size": ("MaxFileSizeMB", int), "disabled": ("Disabled", None)}
_TEMPLATE = {
    "data": ("EmbeddedTmpl", None),
    "destination": ("DestPath", None),
    "source": ("SourcePath", None),
    "change_mode": ("ChangeMode", None),
    "env": ("Envvars", None),
    "perms": ("Perms", None),
}


def _single(
    body: Mapping[str, Any], name: str, table: Mapping[str, tuple[str, Converter | None]], where: str
) -> dict[str, Any] | None:
    blocks = _blocks(body, name)
    if not blocks:
        return None
    if len(blocks) > 1:
        raise JobspecError(f"{where}: only one {name} block is allowed")
    return _fields(blocks[0], table, f"{where} {name}")


def _many(
    body: Mapping[str, Any], name: str, table: Mapping[str, tuple[str, Converter | None]], where: str
) -> list[dict[str, Any]] | None:
    blocks = _blocks(body, name)
    return [_fields(b, table, f"{where} {name}") for b in blocks] or None


def _constraints(body: Mapping[str, Any], where: str) -> list[dict[str, Any]] | None:
    found = _many(body, "constraint", _CONSTRAINT, where)
    for c in found or []:
        c.setdefault("Operand", "=")
    return found


_TASK_SKIP = {
    "driver",
    "user",
    "config",
    "env",
    "meta",
    "resources",
    "dispatch_payload",
    "volume_mount",
    "kill_timeout",
    "kill_signal",
    "template",
    "logs",
    "restart",
    "constraint",
    "leader",
    "lifecycle",
}


def _task(name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    where = f"task {name!r}"
    task: dict[str, Any] = {"Name": name}
    if "driver" in body:
        task["Driver"] = body["driver"]
    if "user" in body:
        task["User"] = body["user"]
    configs = _blocks(body, "config")
    if len(configs) > 1:
        raise JobspecError(f"{where}: only one config block is allowed")
    task["Config"] = configs[0] if configs else None
    task["Env"] = _string_map(body, "env")
    task["Meta"] = _string_map(body, "meta")
    task["Resources"] = _single(body, "resources", _RESOURCES, where)
    payload = _single(body, "dispatch_payload", {"file": ("File", None)}, where)
    task["DispatchPayload"] = payload
    task["VolumeMounts"] = _many(body, "volume_mount", _VOLUME_MOUNT, where)
    if "kill_timeout" in body:
        task["KillTimeout"] = parse_duration(body["kill_timeout"])
    if "kill_signal" in body:
        task["KillSignal"] = body["kill_signal"]
    if "leader" in body:
        task["Leader"] = body["leader"]
    task["Templates"] = _many(body, "template", _TEMPLATE, where)
    task["LogConfig"] = _single(body, "logs", _LOGS, where)
    task["RestartPolicy"] = _single(body, "restart", _RESTART, where)
    task["Constraints"] = _constraints(body, where)
    task["Lifecycle"] = _single(body, "lifecycle", {"hook": ("Hook", None), "sidecar": ("Sidecar", None)}, where)
    for key, value in body.items():
        if key not in _TASK_SKIP:
            task[camel(key)] = _generic(value)
    return {k: v for k, v in task.items() if v is not None or k in ("Config", "Env", "Meta")}


_GROUP_SKIP = {"count", "meta", "restart", "reschedule", "volume", "task", "disconnect", "constraint", "ephemeral_disk"}


def _group(name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    where = f"group {name!r}"
    group: dict[str, Any] = {"Name": name}
    if "count" in body:
        group["Count"] = int(body["count"])
    group["Meta"] = _string_map(body, "meta")
    group["RestartPolicy"] = _single(body, "restart", _RESTART, where)
    group["ReschedulePolicy"] = _single(body, "reschedule", _RESCHEDULE, where)
    group["Disconnect"] = _single(body, "disconnect", _DISCONNECT, where)
    group["Constraints"] = _constraints(body, where)
    disk = _single(
        body,
        "ephemeral_disk",
        {"size": ("SizeMB", int), "migrate": ("Migrate", None), "sticky": ("Sticky", None)},
        where,
    )
    group["EphemeralDisk"] = disk
    volumes = {}
    for vname, vbody in _labelled(body, "volume"):
        vol = _fields(vbody, _VOLUME, f"{where} volume {vname!r}")
        vol["Name"] = vname
        volumes[vname] = vol
    group["Volumes"] = volumes or None
    tasks = [_task(tname, tbody) for tname, tbody in _labelled(body, "task")]
    if not tasks:
        raise JobspecError(f"{where}: a group needs at least one task")
    names = [t["Name"] for t in tasks]
    if len(set(names)) != len(names):
        raise JobspecError(f"{where}: duplicate task names {names}")
    group["Tasks"] = tasks
    for key, value in body.items():
        if key not in _GROUP_SKIP:
            group[camel(key)] = _generic(value)
    return {k: v for k, v in group.items() if v is not None}


_JOB_ATTRS: dict[str, tuple[str, Converter | None]] = {
    "namespace": ("Namespace", None),
    "region": ("Region", None),
    "type": ("Type", None),
    "priority": ("Priority", int),
    "datacenters": ("Datacenters", None),
    "node_pool": ("NodePool", None),
    "all_at_once": ("AllAtOnce", None),
}


def _job(job_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    where = f"job {job_id!r}"
    job: dict[str, Any] = {"ID": job_id, "Name": job_id}
    for key, (field, conv) in _JOB_ATTRS.items():
        if key in body:
            job[field] = conv(body[key]) if conv else body[key]
    job["Meta"] = _string_map(body, "meta")
    job["ParameterizedJob"] = _single(body, "parameterized", _PARAMETERIZED, where)
    job["Constraints"] = _constraints(body, where)
    job["Periodic"] = _single(
        body,
        "periodic",
        {
            "cron": ("Spec", None),
            "crons": ("Specs", None),
            "prohibit_overlap": ("ProhibitOverlap", None),
            "time_zone": ("TimeZone", None),
        },
        where,
    )
    groups = [_group(gname, gbody) for gname, gbody in _labelled(body, "group")]
    if not groups:
        raise JobspecError(f"{where}: a job needs at least one group")
    job["TaskGroups"] = groups
    handled = set(_JOB_ATTRS) | {"meta", "parameterized", "constraint", "periodic", "group"}
    for key, value in body.items():
        if key not in handled:
            job[camel(key)] = _generic(value)
    return job


def parse_jobspec(
    hcl_text: str,
    variables: str | Mapping[str, Any] | None = None,
    *,
    canonicalize: bool = True,
) -> dict[str, Any]:
    """Turn a jobspec into Nomad's job JSON, as ``POST /v1/jobs/parse`` does.

    ``variables`` overrides ``variable`` defaults: HCL ``name = "value"`` text or a map.
    Raises :class:`JobspecError` with a message in the spirit of Nomad's.
    """
    doc = _load(hcl_text, "jobspec")
    values = _declared_variables(doc, parse_variables(variables))
    jobs = _labelled(doc, "job")
    if len(jobs) != 1:
        raise JobspecError(f"jobspec must contain exactly one job block, found {len(jobs)}")
    job_id, body = jobs[0]
    job = _job(job_id, _evaluate(body, values))
    return canonicalize_job(job) if canonicalize else job


# -- defaults ---------------------------------------------------------------------------

_HOUR = 3600 * NS_PER_SECOND
_RESTART_DEFAULTS = {
    "batch": {
        "Attempts": 3,
        "Interval": 24 * _HOUR,
        "Delay": 15 * NS_PER_SECOND,
        "Mode": "fail",
        "RenderTemplates": False,
    },
    "service": {
        "Attempts": 2,
        "Interval": 30 * 60 * NS_PER_SECOND,
        "Delay": 15 * NS_PER_SECOND,
        "Mode": "fail",
        "RenderTemplates": False,
    },
}
_RESCHEDULE_DEFAULTS = {
    "batch": {
        "Attempts": 1,
        "Interval": 24 * _HOUR,
        "Delay": 5 * NS_PER_SECOND,
        "DelayFunction": "constant",
        "MaxDelay": 0,
        "Unlimited": False,
    },
    "service": {
        "Attempts": 0,
        "Interval": 0,
        "Delay": 30 * NS_PER_SECOND,
        "DelayFunction": "exponential",
        "MaxDelay": _HOUR,
        "Unlimited": True,
    },
}


def _merged(defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(defaults)
    out.update({k: v for k, v in (given or {}).items() if v is not None})
    return out


def canonicalize_job(job: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
    """Fill the defaults Nomad fills (``Canonicalize: true``; every registered job). Returns a copy."""
    out = copy.deepcopy(dict(job))
    out.setdefault("Name", out.get("ID"))
    if not out.get("Namespace"):
        out["Namespace"] = namespace or "default"
    out.setdefault("Region", "global")
    out.setdefault("Type", "service")
    out.setdefault("Priority", 50)
    out.setdefault("AllAtOnce", False)
    out.setdefault("Datacenters", ["*"])
    out.setdefault("NodePool", "default")
    out.setdefault("Meta", None)
    out.setdefault("Stop", False)
    out.setdefault("ParentID", "")
    out.setdefault("Dispatched", False)
    out.setdefault("DispatchIdempotencyToken", "")
    out.setdefault("Payload", None)
    out.setdefault("Periodic", None)
    out.setdefault("Constraints", None)
    param = out.get("ParameterizedJob")
    if param is not None:
        param.setdefault("Payload", "optional")
        if not param.get("Payload"):
            param["Payload"] = "optional"
        param.setdefault("MetaRequired", None)
        param.setdefault("MetaOptional", None)
    else:
        out["ParameterizedJob"] = None
    kind = "batch" if out["Type"] in ("batch", "sysbatch") else "service"
    for group in out.get("TaskGroups") or []:
        group.setdefault("Count", 1)
        group.setdefault("Meta", None)
        group["RestartPolicy"] = _merged(_RESTART_DEFAULTS[kind], group.get("RestartPolicy"))
        group["ReschedulePolicy"] = _merged(_RESCHEDULE_DEFAULTS[kind], group.get("ReschedulePolicy"))
        group["EphemeralDisk"] = _merged({"SizeMB": 300, "Migrate": False, "Sticky": False}, group.get("EphemeralDisk"))
        group.setdefault("Volumes", None)
        for task in group.get("Tasks") or []:
            task.setdefault("Config", None)
            task.setdefault("Env", None)
            task.setdefault("Meta", None)
            task.setdefault("KillTimeout", 5 * NS_PER_SECOND)
            task["Resources"] = _merged({"CPU": 100, "MemoryMB": 300}, task.get("Resources"))
            task["LogConfig"] = _merged({"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False}, task.get("LogConfig"))
            task["RestartPolicy"] = _merged(group["RestartPolicy"], task.get("RestartPolicy"))
            task.setdefault("DispatchPayload", None)
            task.setdefault("VolumeMounts", None)
            for vm in task.get("VolumeMounts") or []:
                vm.setdefault("ReadOnly", False)
                vm.setdefault("PropagationMode", "private")
    return out


def validate_job(job: Mapping[str, Any]) -> list[str]:
    """The problems Nomad's job validation would report for ``job`` (empty when none)."""
    problems: list[str] = []
    if not job.get("ID"):
        problems.append("Missing job ID")
    elif " " in str(job["ID"]):
        problems.append("Job ID contains a space")
    if job.get("Type") not in ("service", "batch", "system", "sysbatch"):
        problems.append(f"Invalid job type: {job.get('Type')!r}")
    param = job.get("ParameterizedJob")
    if param and param.get("Payload") not in ("optional", "required", "forbidden"):
        problems.append(f"Unknown payload requirement: {param.get('Payload')!r}")
    if param:
        overlap = set(param.get("MetaRequired") or []) & set(param.get("MetaOptional") or [])
        if overlap:
            problems.append(
                f"Required and optional meta keys should be disjoint. Following keys exist in both: {sorted(overlap)}"
            )
    groups = job.get("TaskGroups") or []
    if not groups:
        problems.append("Missing job task groups")
    for group in groups:
        volumes = group.get("Volumes") or {}
        if not group.get("Tasks"):
            problems.append(f"Task group {group.get('Name')} has no tasks")
        for task in group.get("Tasks") or []:
            if not task.get("Driver"):
                problems.append(f"Task {task.get('Name')} is missing a driver")
            for i, vm in enumerate(task.get("VolumeMounts") or []):
                if vm.get("Volume") not in volumes:
                    problems.append(
                        f"Task {task.get('Name')} has a volume mount ({i}) "
                        f"referencing undefined volume {vm.get('Volume')}"
                    )
    return problems
