"""Nomad's ACL policy language and its checks, as the Nomad double enforces them.

Traced to Nomad's source:

* ``acl/policy.go`` ``Parse``: ``namespace "<name>" { policy, capabilities, variables { path "<p>"
  { capabilities } } }`` and ``host_volume "<name>" { policy, capabilities }``; names match
  ``^[a-zA-Z0-9-*]{1,128}$``; unknown capabilities are refused ("Invalid namespace capability
  '<c>'"); ``policy = "read"|"write"|"scale"|"deny"`` expands to capabilities
  (``expandNamespacePolicy``, ``expandHostVolumePolicy``); a variables path with ``read`` also
  gets ``list`` (``expandVariablesCapabilities``); ``deny`` wins over everything.
* ``acl/acl.go``: an exact name wins, else the closest matching glob; the capabilities of
  several policies are merged (union, deny wins).
* The capability each endpoint checks: ``nomad/job_endpoint.go`` (``Register``/``doRegister``
  with host volumes, ``Deregister``, ``Dispatch``, ``GetJob``, ``Allocations``, ``Evaluations``,
  ``Summary``), ``nomad/job_endpoint.go`` ``List`` (``list-jobs``), ``nomad/alloc_endpoint.go``,
  ``nomad/eval_endpoint.go`` (``read-job``), ``client/fs_endpoint.go`` (``read-logs`` or
  ``read-fs``), ``nomad/variables_endpoint.go`` (path rules), ``nomad/acl_endpoint.go``
  (policies: management only).

Only what the reconciler's calls touch is modelled; the other top-level blocks (``agent``,
``node``, ``operator``, ``quota``, ``plugin``, ``node_pool``) are parsed for validity only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from doubles.nomad_hcl import JobspecError, _labelled, _load

NAMESPACE_CAPABILITIES = frozenset(
    """deny list-jobs parse-job read-job submit-job dispatch-job read-logs read-fs alloc-exec alloc-node-exec
    alloc-lifecycle sentinel-override csi-register-plugin csi-write-volume csi-read-volume csi-list-volume
    csi-mount-volume host-volume-create host-volume-register host-volume-read host-volume-write
    host-volume-delete list-scaling-policies read-scaling-policy read-job-scaling scale-job
    submit-recommendation register-job revert-job deregister-job purge-job evaluate-job plan-job
    tag-job-version stable-job fail-deployment pause-deployment promote-deployment unblock-deployment
    cancel-deployment set-alloc-health-deployment gc-allocation pause-allocation force-periodic-job
    delete-service-registration""".split()
)
"""``acl/policy.go`` ``isNamespaceCapabilityValid`` (Nomad HEAD, 2.0)."""

_READ = ["list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume", "read-job-scaling",
         "list-scaling-policies", "read-scaling-policy", "host-volume-read"]
_WRITE = _READ + ["scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs", "alloc-exec", "alloc-lifecycle",
                  "csi-mount-volume", "csi-write-volume", "submit-recommendation", "host-volume-create"]
NAMESPACE_POLICIES: dict[str, list[str]] = {
    "deny": ["deny"],
    "read": _READ,
    "write": _WRITE,
    "scale": ["list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job", "read-job",
              "submit-recommendation"],
}
"""``acl/policy.go`` ``expandNamespacePolicy``."""

HOST_VOLUME_CAPABILITIES = frozenset({"deny", "mount-readonly", "mount-readwrite"})
HOST_VOLUME_POLICIES = {"deny": ["deny"], "read": ["mount-readonly"], "write": ["mount-readonly", "mount-readwrite"]}
VARIABLE_CAPABILITIES = frozenset({"list", "read", "write", "destroy", "deny"})

_VALID_NAME = re.compile(r"^[a-zA-Z0-9-*]{1,128}$")
_KNOWN_BLOCKS = {"namespace", "host_volume", "node_pool", "agent", "node", "operator", "quota", "plugin"}


class PolicyError(ValueError):
    """A policy Nomad refuses to store (``acl/policy.go`` ``Parse``)."""


@dataclass
class Policy:
    namespaces: dict[str, set[str]] = field(default_factory=dict)
    variables: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """namespace glob -> variable path glob -> capabilities."""
    host_volumes: dict[str, set[str]] = field(default_factory=dict)


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"Failed to parse ACL Policy: {where}: capabilities must be a list of strings")
    return list(value)


def parse_policy(rules: str) -> Policy:
    """Parse and validate ``rules`` as Nomad does when a policy is written (strict)."""
    if not rules.strip():
        return Policy()
    try:
        doc = _load(rules, "ACL policy")
    except JobspecError as exc:
        raise PolicyError(f"Failed to parse ACL Policy: {exc}") from None
    extra = sorted(set(doc) - _KNOWN_BLOCKS)
    if extra:
        raise PolicyError(f"Invalid or duplicate policy keys: {', '.join(extra)}")
    if not doc:
        raise PolicyError(f"Invalid policy: {rules}")
    policy = Policy()
    try:
        namespaces = _labelled(doc, "namespace")
        volumes = _labelled(doc, "host_volume")
    except JobspecError as exc:
        raise PolicyError(f"Failed to parse ACL Policy: {exc}") from None
    for name, body in namespaces:
        if not _VALID_NAME.match(name):
            raise PolicyError(f"Invalid namespace name: {name!r}")
        caps = _strings(body.get("capabilities"), f"namespace {name}")
        for cap in caps:
            if cap not in NAMESPACE_CAPABILITIES:
                raise PolicyError(f"Invalid namespace capability '{cap}': namespace {name!r}")
        shorthand = body.get("policy")
        if shorthand is not None:
            if shorthand not in NAMESPACE_POLICIES:
                raise PolicyError(f"Invalid namespace policy: {shorthand!r} in namespace {name!r}")
            caps += NAMESPACE_POLICIES[shorthand]
        policy.namespaces.setdefault(name, set()).update(caps)
        for vars_body in body.get("variables") or []:
            paths = _labelled({k: v for k, v in vars_body.items() if k != "__is_block__"}, "path") if isinstance(vars_body, dict) else []
            if not paths:
                raise PolicyError(f"Invalid variable policy: no variable paths in namespace {name}")
            for spec, path_body in paths:
                if spec.startswith("/"):
                    raise PolicyError(f"Invalid variable path {spec!r} in namespace {name}: cannot start with a leading '/'`")
                pcaps = _strings(path_body.get("capabilities"), f"variable path {spec}")
                for cap in pcaps:
                    if cap not in VARIABLE_CAPABILITIES:
                        raise PolicyError(f"Invalid variable capability '{cap}' in namespace {name}")
                if "deny" in pcaps:
                    pcaps = ["deny"]
                elif "read" in pcaps and "list" not in pcaps:
                    pcaps.append("list")
                policy.variables.setdefault(name, {}).setdefault(spec, set()).update(pcaps)
    for name, body in volumes:
        if not _VALID_NAME.match(name):
            raise PolicyError(f"Invalid host volume name: {name!r}")
        caps = _strings(body.get("capabilities"), f"host_volume {name}")
        for cap in caps:
            if cap not in HOST_VOLUME_CAPABILITIES:
                raise PolicyError(f"Invalid host volume capability '{cap}': host_volume {name!r}")
        shorthand = body.get("policy")
        if shorthand is not None:
            if shorthand not in HOST_VOLUME_POLICIES:
                raise PolicyError(f"Invalid host volume policy: {shorthand!r} for {name!r}")
            caps += HOST_VOLUME_POLICIES[shorthand]
        policy.host_volumes.setdefault(name, set()).update(caps)
    return policy


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$")


def _closest(table: Mapping[str, set[str]], name: str) -> set[str]:
    """``acl/acl.go``: an exact key wins, else the matching glob closest in length to ``name``."""
    if name in table:
        return table[name]
    best: tuple[int, str] | None = None
    for pattern in table:
        if "*" in pattern and _glob(pattern).match(name):
            distance = len(name) - len(pattern.replace("*", ""))
            if best is None or distance < best[0]:
                best = (distance, pattern)
    return table[best[1]] if best else set()


@dataclass
class ACL:
    """The merged policies of one token (``acl/acl.go`` ``NewACL``). ``management``: allows all."""

    management: bool = False
    namespaces: dict[str, set[str]] = field(default_factory=dict)
    variables: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    host_volumes: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, policies: Iterable[Policy]) -> "ACL":
        acl = cls()
        for p in policies:
            for ns, caps in p.namespaces.items():
                acl.namespaces.setdefault(ns, set()).update(caps)
            for ns, paths in p.variables.items():
                for spec, caps in paths.items():
                    acl.variables.setdefault(ns, {}).setdefault(spec, set()).update(caps)
            for hv, caps in p.host_volumes.items():
                acl.host_volumes.setdefault(hv, set()).update(caps)
        return acl

    def allow_ns(self, namespace: str, *capabilities: str) -> bool:
        """True when the namespace grants any one of ``capabilities`` (deny wins)."""
        if self.management:
            return True
        caps = _closest(self.namespaces, namespace)
        return "deny" not in caps and any(c in caps for c in capabilities)

    def allow_variable(self, namespace: str, path: str, capability: str) -> bool:
        if self.management:
            return True
        ns_key = namespace if namespace in self.variables else None
        if ns_key is None:
            candidates = [k for k in self.variables if "*" in k and _glob(k).match(namespace)]
            ns_key = min(candidates, key=lambda k: len(namespace) - len(k.replace("*", ""))) if candidates else None
        if ns_key is None:
            return False
        caps = _closest(self.variables[ns_key], path)
        return "deny" not in caps and capability in caps

    def allow_host_volume(self, name: str, *capabilities: str) -> bool:
        if self.management:
            return True
        caps = _closest(self.host_volumes, name)
        return "deny" not in caps and any(c in caps for c in capabilities)


# -- what each endpoint checks ------------------------------------------------------------------

def host_volume_needs(job: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """``doRegister``: per host volume of the job, the capabilities of which one suffices."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for tg in job.get("TaskGroups") or []:
        for vol in (tg.get("Volumes") or {}).values():
            if (vol or {}).get("Type") != "host":
                continue
            source = str(vol.get("Source") or "")
            out.append((source, ("mount-readonly", "mount-readwrite") if vol.get("ReadOnly") else ("mount-readwrite",)))
    return out


def namespace_need(method: str, path: str, query: Mapping[str, list[str]]) -> tuple[str, ...] | None:
    """The namespace capabilities (any one suffices) a request needs; None when it needs none of them
    (variables, ACL endpoints and status are checked elsewhere)."""
    if path == "/v1/jobs/parse":
        return ("parse-job", "submit-job")
    if path == "/v1/jobs":
        return ("list-jobs",) if method == "GET" else ("submit-job",)
    if path.startswith("/v1/job/"):
        if path.endswith("/dispatch"):
            return ("dispatch-job",)
        if method == "DELETE":
            purge = (query.get("purge") or [""])[0] == "true"
            # Deregister (HEAD): submit-job or purge-job, and without purge also deregister-job.
            return ("submit-job", "purge-job") if purge else ("submit-job", "purge-job", "deregister-job")
        if method in ("POST", "PUT"):
            return ("submit-job",)
        return ("read-job",)
    if path == "/v1/allocations" or path.startswith("/v1/allocation/") or path.startswith("/v1/evaluation/"):
        return ("read-job",)
    if path.startswith("/v1/client/fs/logs/"):
        return ("read-logs", "read-fs")
    if path == "/v1/event/stream":
        return ("read-job",)
    return None


def variable_need(method: str, query: Mapping[str, list[str]]) -> str:
    """``nomad/variables_endpoint.go``: read for GET, destroy for DELETE, write for every PUT (locks too)."""
    if method == "GET":
        return "read"
    if method == "DELETE":
        return "destroy"
    return "write"
