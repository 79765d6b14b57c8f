"""A whole factory on one laptop: the three doubles, a real bare ops repo, a factory root.

Used by ``reconciler demo``, by the end-to-end tests and by the benchmark, so
all three exercise the same setup:

* a Vault double configured as the factory configures Vault (runner policies,
  the ``vault-runner`` token role, secrets, a dispatcher token for the reconciler);
* a Forgejo double serving ``factory/ops`` from a real bare repository (``bare``): a
  private repository reached over git smart HTTP at ``${FORGE_URL}/factory/ops.git``
  with the reconciler's forge token (``OPS_REPO_REMOTE`` unset, as an operator would
  run it), or with ``ops_transport="file"`` a public one reached by ``file://``; users
  ``admin`` (site admin), ``alice`` (author), ``bob`` (not an admin) and ``reconciler``
  (the reconciler's own user, a collaborator with write access);
* a Nomad double whose ``vault-runner`` parent job is registered from
  ``jobspecs/vault-runner.hcl`` itself; in ``exec`` mode it runs the real
  runner entry step as a local process for each allocation;
* a factory root with the sample formulas (the project's
  own copy under ``reconciler/demo``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doubles.forge import ForgeDouble
from doubles.nomad import NomadDouble
from doubles.tls_material import make_tls_material
from doubles.vault import VaultDouble
from reconciler.settings import (
    ActionSettings,
    ForgeSettings,
    LoopSettings,
    NomadSettings,
    OpsRepoSettings,
    Settings,
    StoreSettings,
    VaultSettings,
)
from reconciler.tls import TLSConfig

PACKAGE_ROOT = Path(__file__).resolve().parent
JOBSPECS = Path(__file__).resolve().parent.parent / "jobspecs"
DEMO_DATA = PACKAGE_ROOT / "demo"
OPS_REPO = "factory/ops"
PROJECT_REPO = "factory/demo"
NAMESPACE = "runners"

DEMO_SECRETS = {
    "GITHUB_TOKEN": "ghp_demoDEMOdemoDEMOdemoDEMOdemoDEMOdemo1",
    "CODEBERG_TOKEN": "codeberg-demo-token-7c1f0a",
    "DEPLOY_KEY": "deploy-key-demo-5e2b9d41",
    "DOCKER_HUB_TOKEN": "dckr_pat_demoDemoDemoDemo123",
    "NPM_TOKEN": "npm_demoDEMOdemoDEMOdemoDEMOdemoDEMOdemo",
    "CLAWHUB_TOKEN": "clawhub-demo-token-19af",
}
DEMO_MOUNTS = {
    "ssh": {"id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\ndemo-key-material-not-real\n-----END OPENSSH PRIVATE KEY-----\n"},
    "gpg": {"private.asc": "-----BEGIN PGP PRIVATE KEY BLOCK-----\ndemo\n-----END PGP PRIVATE KEY BLOCK-----\n"},
    "sops": {"age.key": "AGE-SECRET-KEY-1DEMODEMODEMODEMO"},
}


def jobspec_path(name: str = "vault-runner.hcl") -> Path:
    here = JOBSPECS / name
    if here.exists():
        return here
    import jobspecs

    return Path(jobspecs.__file__).resolve().parent / name


# --- the factory's Vault layout --------------------------------------------------------------

# One source, ``reconciler.jobspecs`` (what `reconciler jobspecs apply` writes to a real Vault):
# the cluster configures the Vault double from it as an operator configures Vault.
from reconciler.jobspecs import (  # noqa: E402
    DISPATCHER_POLICY,
    RUNNER_CLAIM_POLICY,
    dispatcher_policy_text,
    mount_policy_name,
    mount_policy_text,
    runner_claim_policy_text,
    runner_policy_name,
    runner_policy_text,
    runner_role_fields,
)

FACTORY_ROLE = "vault-runner"
FACTORY_PREFIX = "disinto/runner"
RUNNER_CLAIM_POLICY_TEXT = runner_claim_policy_text()
RUNNER_ROLE_FIELDS: dict[str, Any] = runner_role_fields()
"""The ``vault-runner`` token role: runner-* policies only, orphan, service, not renewable, no default policy."""


def configure_factory(
    double: VaultDouble,
    secrets: dict[str, str],
    mounts: dict[str, dict[str, str]] | None = None,
    *,
    role: str = FACTORY_ROLE,
    prefix: str = FACTORY_PREFIX,
    dispatcher_ttl: int | None = None,
) -> str:
    """Write what the factory needs into ``double`` and return a dispatcher token.

    For each secret ``NAME``: policy ``runner-NAME`` (read exactly
    ``kv/data/<prefix>/NAME``) and the secret itself (field ``value``). For each
    mount alias: policy ``runner-mount-<alias>`` and ``kv/data/<prefix>/mounts/<alias>``
    whose fields are file names. Also the ``runner-claim`` policy (revoke-self only, on every claim),
    the ``vault-runner`` token role and the reconciler's dispatcher policy; the
    returned token holds that policy (plus ``default``).
    """
    for name, value in secrets.items():
        double.put_policy(runner_policy_name(name), runner_policy_text(name, prefix=prefix))
        double.put_secret(f"{prefix}/{name}", {"value": value})
    for alias, files in (mounts or {}).items():
        double.put_policy(mount_policy_name(alias), mount_policy_text(alias, prefix=prefix))
        double.put_secret(f"{prefix}/mounts/{alias}", dict(files))
    double.put_policy(RUNNER_CLAIM_POLICY, RUNNER_CLAIM_POLICY_TEXT)
    double.put_role(role, **RUNNER_ROLE_FIELDS)
    double.put_policy(DISPATCHER_POLICY, dispatcher_policy_text(role=role, prefix=prefix))
    return double.create_token([DISPATCHER_POLICY], ttl=dispatcher_ttl, display_name="reconciler")


def fixtures_dir() -> Path:
    """The sample ops repo, formulas and projects shipped with the package (``reconciler/demo``)."""
    if (DEMO_DATA / "formulas").is_dir():
        return DEMO_DATA
    raise FileNotFoundError(f"no sample data: {DEMO_DATA} holds no formulas/ (is the package installed completely?)")


def _git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class LocalCluster:
    """Doubles, repos and folders for one local factory; ``start()`` then ``settings()``."""

    workdir: Path
    nomad_mode: str = "exec"
    capacity: int | None = None
    secrets: dict[str, str] = field(default_factory=lambda: dict(DEMO_SECRETS))
    mounts: dict[str, dict[str, str]] = field(default_factory=lambda: dict(DEMO_MOUNTS))
    gc_after: float | None = None
    ops_transport: str = "http"
    """``http``: the reconciler reaches the ops repo through the forge (smart HTTP, token auth);
    ``file``: through ``file://`` on ``bare`` (``OPS_REPO_REMOTE``)."""
    tls: bool = False
    """Serve Vault and Nomad over HTTPS with a private CA made for this cluster (``tls_material``)."""
    acl: bool = True
    """Nomad with ACLs enforced: a management token, the shipped policies (``jobspecs/nomad-acl/``),
    and the reconciler's token carrying only ``reconciler.hcl`` (False: ACLs off, as a dev agent)."""
    vault: VaultDouble = field(init=False)
    forge: ForgeDouble = field(init=False)
    nomad: NomadDouble = field(init=False)
    dispatcher_token: str = field(init=False, default="")
    forge_token: str = field(init=False, default="")
    admin_token: str = field(init=False, default="")
    nomad_management_token: str | None = field(init=False, default=None)
    nomad_token: str | None = field(init=False, default=None)
    """The reconciler's Nomad token (the shipped ``reconciler`` policy); None with ACLs off."""
    nomad_operator_token: str | None = field(init=False, default=None)
    """A token of the shipped ``operator-register`` policy (``jobspecs apply``)."""

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "LocalCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.factory_root = self.workdir / "factory"
        self._prepare_factory_root()
        self.tls_material = make_tls_material(self.workdir / "tls") if self.tls else None
        self.vault = VaultDouble()
        if self.tls_material is not None:
            self.vault.serve_tls(str(self.tls_material.server_cert), str(self.tls_material.server_key))
        self.vault.start()
        self.dispatcher_token = configure_factory(self.vault, self.secrets, self.mounts)
        self.forge = ForgeDouble().start()
        self.admin_token = self.forge.add_user("admin", is_admin=True)
        self.forge.add_user("alice")
        self.forge.add_user("bob")
        self.forge_token = self.forge.add_user("reconciler")
        self.bare = self.workdir / "ops.git"
        if self.ops_transport not in ("http", "file"):
            raise ValueError(f"ops_transport must be 'http' or 'file', got {self.ops_transport!r}")
        self.forge.add_repo(OPS_REPO, self.bare, private=self.ops_transport == "http")
        self.forge.add_collaborator(OPS_REPO, "reconciler", "write")
        fixtures = fixtures_dir()
        policy = (fixtures / "ops-repo" / "vault" / "policy.toml").read_bytes()
        self.merge_files({"vault/policy.toml": policy, "README.md": b"# ops repo (demo)\n"}, title="tiers")
        self.nomad_management_token = "nomad-management-token" if self.acl else None
        self.nomad = NomadDouble(token=self.nomad_management_token, mode=self.nomad_mode, capacity=self.capacity, gc_after=self.gc_after,
                                 workdir=self.workdir / "nomad", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if self.tls_material is not None:
            self.nomad.serve_tls(str(self.tls_material.server_cert), str(self.tls_material.server_key))
        self.nomad.start()
        if self.acl:
            for name in ("reconciler", "operator-register"):
                self.nomad.set_policy(name, jobspec_path(f"nomad-acl/{name}.hcl").read_text(encoding="utf-8"))
            self.nomad_token = self.nomad.add_token(["reconciler"])
            self.nomad_operator_token = self.nomad.add_token(["operator-register"])
        self.nomad.register_jobspec(
            jobspec_path(),
            variables={
                "vault_addr": self.vault.address,
                "vault_cacert": str(self.tls_material.ca_cert) if self.tls_material else "",
                "factory_root": str(self.factory_root),
                "agent_command": f"{sys.executable} -m doubles.demo_agent",
                "namespace": NAMESPACE,
            },
        )
        self.sidecar_script = self._write_sidecar_script()
        self.nomad.register_jobspec(
            jobspec_path("sidecar.hcl"),
            variables={"namespace": NAMESPACE, "command": str(self.sidecar_script), "forge_url": self.forge.address, "forge_repo": PROJECT_REPO},
        )
        self.forge.add_repo(PROJECT_REPO, self.workdir / "project.git")
        for label in ("bug-report", "in-progress", "in-triage", "rejected", "blocked"):
            self.forge.add_label(PROJECT_REPO, label)
        return self

    def _write_sidecar_script(self) -> Path:
        """The demo's sidecar command: prints what it would do; exits with the code a test left for it."""
        codes = self.workdir / "sidecar-exit-codes"
        codes.mkdir(parents=True, exist_ok=True)
        script = self.workdir / "bin" / "demo-sidecar"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(
            "#!/usr/bin/env bash\n"
            'echo "demo sidecar: formula ${NOMAD_META_formula} for issue #${NOMAD_META_issue_number} of project ${NOMAD_META_project}"\n'
            f'code_file="{codes}/${{NOMAD_META_issue_number}}-${{NOMAD_META_formula}}"\n'
            'if [ -f "$code_file" ]; then exit "$(cat "$code_file")"; fi\n'
            "exit 0\n"
        )
        script.chmod(0o755)
        return script

    def sidecar_exit(self, issue: int, formula: str, code: int) -> None:
        """Make the demo sidecar for (issue, formula) exit with ``code``."""
        (self.workdir / "sidecar-exit-codes" / f"{issue}-{formula}").write_text(str(code))

    def stop(self) -> None:
        for double in ("nomad", "forge", "vault"):
            d = getattr(self, double, None)
            if d is not None:
                try:
                    d.stop()
                except Exception:
                    pass

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare_factory_root(self) -> None:
        src = fixtures_dir() / "formulas"
        dest = self.factory_root / "formulas"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)

    # -- the reconciler's view --------------------------------------------------
    def settings(self, *, db: Path | None = None, ops_root: Path | None = None, sidecars: bool = False, **loop: Any) -> Settings:
        loop_defaults = {"interval": 0.5, "placement_deadline": 600, "max_in_flight": 50}
        loop_defaults.update(loop)
        tls = TLSConfig(cacert=str(self.tls_material.ca_cert)) if self.tls_material else TLSConfig()
        return Settings(
            nomad=NomadSettings(addr=self.nomad.address, namespace=NAMESPACE, token=self.nomad_token, tls=tls),
            vault=VaultSettings(addr=self.vault.address, token=self.dispatcher_token, tls=tls),
            forge=ForgeSettings(
                url=self.forge.address, token=self.forge_token, admin_token=self.admin_token,
                ops_repo=OPS_REPO, admin_users=("admin",), repo=PROJECT_REPO if sidecars else None,
            ),
            ops=OpsRepoSettings(root=ops_root or self.workdir / "ops-clone", remote=self.file_remote if self.ops_transport == "file" else None),
            store=StoreSettings(db=db or self.workdir / "state" / "reconciler.db"),
            actions=ActionSettings(factory_root=self.factory_root),
            loop=LoopSettings(**loop_defaults),
        )

    @property
    def file_remote(self) -> str:
        """``file://`` URL of the bare ops repository (git plumbing in tests, ``ops_transport="file"``)."""
        return self.bare.resolve().as_uri()

    @property
    def http_remote(self) -> str:
        """The ops repo's smart HTTP URL on the forge: what the reconciler derives from FORGE_URL + FORGE_OPS_REPO."""
        return f"{self.forge.address}/{OPS_REPO}.git"

    def environment(self) -> dict[str, str]:
        """The same settings as environment variables, for running the CLI (``OPS_REPO_REMOTE`` only for ``file``)."""
        s = self.settings()
        env = {
            "NOMAD_ADDR": s.nomad.addr,
            "NOMAD_NAMESPACE": s.nomad.namespace,
            "NOMAD_TOKEN": s.nomad.token or "",
            "VAULT_ADDR": s.vault.addr,
            "VAULT_TOKEN": s.vault.token or "",
            "FORGE_URL": s.forge.url or "",
            "FORGE_TOKEN": s.forge.token or "",
            "FORGE_ADMIN_TOKEN": s.forge.admin_token or "",
            "FORGE_OPS_REPO": OPS_REPO,
            "FORGE_ADMIN_USERS": ",".join(s.forge.admin_users),
            "OPS_REPO_ROOT": str(s.ops.root),
            "FACTORY_ROOT": str(self.factory_root),
            "RECONCILER_DB": str(s.store.db),
            "RECONCILER_INTERVAL": "0.5",
            **(
                {"VAULT_CACERT": str(self.tls_material.ca_cert), "NOMAD_CACERT": str(self.tls_material.ca_cert)}
                if self.tls_material
                else {}
            ),
        }
        if s.ops.remote:
            env["OPS_REPO_REMOTE"] = s.ops.remote
        return env

    # -- desired state through the forge ----------------------------------------
    def merge_files(
        self,
        files: dict[str, bytes | None],
        *,
        title: str = "change",
        author: str = "alice",
        approver: str | None = "admin",
        merger: str = "admin",
        review_state: str = "APPROVED",
    ) -> tuple[int, str]:
        """Open a pull request with ``files``, review it, merge it: ``(number, merge sha)``."""
        number = self.forge.open_pull(OPS_REPO, author=author, title=title, files=files)
        if approver:
            self.forge.review(OPS_REPO, number, user=approver, state=review_state)
        sha = self.forge.merge(OPS_REPO, number, merger=merger)
        return number, sha

    def merge_action(self, action_id: str, toml: bytes | str, **kw: Any) -> tuple[int, str]:
        data = toml.encode() if isinstance(toml, str) else toml
        return self.merge_files({f"vault/actions/{action_id}.toml": data}, title=f"vault action {action_id}", **kw)

    def sample_actions(self) -> dict[str, bytes]:
        folder = fixtures_dir() / "ops-repo" / "vault" / "actions"
        return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.toml"))}

    def remote_file(self, path: str) -> bytes | None:
        try:
            out = subprocess.run(
                ["git", "--git-dir", str(self.bare), "show", f"main:{path}"], capture_output=True, check=True
            ).stdout
        except subprocess.CalledProcessError:
            return None
        return out

    def remote_log(self, path: str | None = None) -> list[str]:
        args = ["--git-dir", str(self.bare), "log", "--format=%H %s", "main"]
        if path:
            args += ["--", path]
        return [line for line in _git(*args).splitlines() if line]
