"""Read a Nomad ACL policy's grants, enough to tell an operator what their token lacks.

``jobspecs apply`` reads its own token (``/v1/acl/token/self``) and the policies it holds, and
checks them before writing anything. Only what apply needs is read: namespace capabilities
(with the ``policy = "read"|"write"|...`` shorthand) and ``host_volume`` rules, matched as Nomad
matches them (``acl/policy.go`` ``expandNamespacePolicy``/``expandHostVolumePolicy``,
``acl/acl.go``: exact name, else the closest glob; ``deny`` wins). The server stays the judge:
this check only turns a 403 half way through into a list of what is missing up front.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import hcl2
from hcl2 import SerializationOptions

_OPTIONS = SerializationOptions(with_comments=False, strip_string_quotes=True, preserve_heredocs=False)

_READ = {"list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume", "read-job-scaling",
         "list-scaling-policies", "read-scaling-policy", "host-volume-read"}
_WRITE = _READ | {"scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs", "alloc-exec", "alloc-lifecycle",
                  "csi-mount-volume", "csi-write-volume", "submit-recommendation", "host-volume-create"}
_NS_SHORTHAND = {"deny": {"deny"}, "read": _READ, "write": _WRITE,
                 "scale": {"list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job", "read-job", "submit-recommendation"}}
_HV_SHORTHAND = {"deny": {"deny"}, "read": {"mount-readonly"}, "write": {"mount-readonly", "mount-readwrite"}}


def _labelled(doc: Mapping[str, Any], name: str) -> list[tuple[str, Mapping[str, Any]]]:
    raw = doc.get(name) or []
    out = []
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, dict):
            out += [(label, body) for label, body in item.items() if label != "__is_block__" and isinstance(body, dict)]
    return out


def _closest(table: Mapping[str, set[str]], name: str) -> set[str]:
    if name in table:
        return table[name]
    best: tuple[int, str] | None = None
    for pattern in table:
        if "*" in pattern and re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), name):
            distance = len(name) - len(pattern.replace("*", ""))
            if best is None or distance < best[0]:
                best = (distance, pattern)
    return table[best[1]] if best else set()


@dataclass
class Grants:
    namespaces: dict[str, set[str]] = field(default_factory=dict)
    host_volumes: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: Iterable[str]) -> "Grants":
        """The union of the policies' grants. Raises ValueError for a text that is not HCL."""
        grants = cls()
        for text in rules:
            if not text.strip():
                continue
            try:
                doc = hcl2.loads(text, serialization_options=_OPTIONS)
            except Exception as exc:  # python-hcl2 raises lark errors of many kinds
                raise ValueError(f"not an HCL policy: {exc}") from None
            for name, body in _labelled(doc, "namespace"):
                caps = set(body.get("capabilities") or []) | _NS_SHORTHAND.get(str(body.get("policy") or ""), set())
                grants.namespaces.setdefault(name, set()).update(caps)
            for name, body in _labelled(doc, "host_volume"):
                caps = set(body.get("capabilities") or []) | _HV_SHORTHAND.get(str(body.get("policy") or ""), set())
                grants.host_volumes.setdefault(name, set()).update(caps)
        return grants

    def allow_ns(self, namespace: str, *any_of: str) -> bool:
        caps = _closest(self.namespaces, namespace)
        return "deny" not in caps and any(c in caps for c in any_of)

    def allow_host_volume(self, source: str, *any_of: str) -> bool:
        caps = _closest(self.host_volumes, source)
        return "deny" not in caps and any(c in caps for c in any_of)
