"""The command line: parse, build, run, and map errors to exit codes in one place.

Exit codes (INTERFACE.md): 0 success, 1 runtime error (the message says what
failed and what to do), 2 usage error. ``status``, ``show`` and ``validate``
read only the store and local files, so they work while Nomad or Vault is down.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from reconciler import settings as settings_mod
from reconciler.clients.errors import ReconcilerError
from reconciler.settings import Settings, SettingsError, SettingsUsageError
from states.machine import ACTIVE, IllegalTransition, State, Transition
from store.runs import RunStore, StaleState, StoreError, parse_rfc3339

log = logging.getLogger("reconciler")


class RunFailed(Exception):
    """A runtime error for exit code 1; the message says what failed and what to do."""


# --------------------------------------------------------------------------- helpers
class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        run_id = getattr(record, "run_id", None)
        action_id = getattr(record, "action_id", None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        msg = record.getMessage()
        if self.json_lines:
            out: dict[str, Any] = {"at": stamp, "level": record.levelname.lower(), "logger": record.name, "msg": msg}
            if run_id:
                out["run_id"] = run_id
            if action_id:
                out["action_id"] = action_id
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
            return json.dumps(out)
        prefix = f"{stamp} {record.levelname.lower():7s}"
        if run_id:
            prefix += f" [{run_id}]"
        text = f"{prefix} {msg}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _setup_logging(verbose: int, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose > 0 else logging.WARNING)
    logging.getLogger("reconciler").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    for noisy in ("urllib3", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = settings_mod.load(os.environ, obj.get("config"))
        except SettingsUsageError as exc:
            raise click.UsageError(str(exc)) from None
        except SettingsError as exc:
            raise RunFailed(str(exc)) from None
    return obj["settings"]


def _store(ctx: click.Context) -> RunStore:
    s = _settings(ctx)
    try:
        return RunStore(s.store.db, time.time)
    except StoreError as exc:
        raise RunFailed(str(exc)) from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration; use e.g. 90s, 15m, 2h or 1d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _age(since: str, now: float) -> str:
    try:
        secs = max(0, int(now - parse_rfc3339(since)))
    except ValueError:
        return "?"
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    if secs < 86400:
        return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{secs // 86400}d{(secs % 86400) // 3600:02d}h"


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --------------------------------------------------------------------------- root
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="TOML file with the same keys as the environment, in lower case (or RECONCILER_CONFIG). The environment wins.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Log lines as text or JSON lines.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: int, log_format: str) -> None:
    """The reconciler: runs approved vault actions from the ops repo on Nomad, with secrets from Vault.

    Configuration comes from the environment (NOMAD_ADDR, VAULT_ADDR, FORGE_URL,
    OPS_REPO_REMOTE, RECONCILER_DB, ... - see the README) and an optional TOML file.

    \b
    Approval rule (docs/approval.md): an action runs only when its file on main equals,
    byte for byte, the file at the commit an admin's latest decisive APPROVED review
    names, in a pull request the forge confirms merged into PRIMARY_BRANCH (any merge
    style). Admins are site admins or users with admin permission on the ops repo;
    FORGE_ADMIN_USERS grants nothing the forge does not confirm. With
    RECONCILER_MERGER_APPROVES=true (off by default), an admin who merged with a true
    merge commit counts failing a review. `direct` mode: low tier, no secrets, no mounts only.
    """
    ctx.ensure_object(dict)["config"] = config
    _setup_logging(verbose, log_format)


# --------------------------------------------------------------------------- run
@cli.command()
@click.option("--once", is_flag=True, help="Run one reconcile pass, then exit.")
@click.option("--until-idle", is_flag=True, help="Reconcile until no run is in a non-terminal state.")
@click.option("--timeout", type=float, default=None, help="With --until-idle: give up after SECONDS (exit 1).")
@click.pass_context
def run(ctx: click.Context, once: bool, until_idle: bool, timeout: float | None) -> None:
    """Reconcile: the service. Runs until SIGTERM/SIGINT, then finishes the current step and exits 0."""
    if once and until_idle:
        raise click.UsageError("--once and --until-idle exclude each other")
    if timeout is not None and not until_idle:
        raise click.UsageError("--timeout only applies with --until-idle")
    from reconciler.app import build_context
    from reconciler.loop import Reconciler

    settings = _settings(ctx)
    store = _store(ctx)
    try:
        reconciler = Reconciler(build_context(settings, store))
    except SettingsError as exc:
        raise RunFailed(str(exc)) from None
    stop = threading.Event()
    metrics_server = None
    if settings.loop.metrics_addr and reconciler.ctx.metrics is not None:
        try:
            metrics_server = reconciler.ctx.metrics.serve(settings.loop.metrics_addr)
        except OSError as exc:
            raise RunFailed(f"cannot serve metrics on RECONCILER_METRICS_ADDR={settings.loop.metrics_addr}: {exc}") from None
        log.info("metrics on %s/metrics, health on %s/healthz", metrics_server.url, metrics_server.url)

    def _stop(signum: int, frame: object) -> None:
        log.warning("signal %s received: finishing the current step, then exiting", signum)
        stop.set()
        reconciler.wake()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        from reconciler.preflight import failures, wait_until_reachable

        ops = reconciler.ctx.ops
        if once:
            problems = failures(settings, ops=ops)
            if problems:
                raise RunFailed("; ".join(f"{c.system} {c.what} (fix: {c.fix})" for c in problems))
        elif not wait_until_reachable(settings, stop, check=lambda s: failures(s, ops=ops)):
            return
        if once:
            if not reconciler.leads():
                raise RunFailed(reconciler.standby_reason() + "; not acting (another instance: stop it, or wait for its lock to lapse)")
            summary = reconciler.run_pass()
            for err in summary.errors:
                click.echo(f"warning: {err}", err=True)
            counts = store.counts()
            click.echo("pass done: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no runs"))
            return
        finished = reconciler.serve(stop, until_idle=until_idle, timeout=timeout)
        if until_idle and not finished:
            active = store.runs(ACTIVE)
            raise RunFailed(
                f"timed out after {timeout} s with {len(active)} run(s) still active: "
                + ", ".join(f"{r.id} ({State(r.state).value}{': ' + r.waiting if r.waiting else ''})" for r in active[:10])
                + "; see `reconciler status --stuck`"
            )
    finally:
        reconciler.close()
        if metrics_server is not None:
            metrics_server.stop()


# --------------------------------------------------------------------------- doctor
@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check Nomad, Vault, the forge and the ops remote: reachable, tokens valid, jobs and policies as they must be.

    One line per check; each failure names the address and the fix. Exit 1 when anything failed.
    """
    from reconciler.doctor import run_doctor

    code = run_doctor(_settings(ctx), out=sys.stdout)
    if code:
        raise SystemExit(1)


# --------------------------------------------------------------------------- status / show
@cli.command()
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"runs": [...], "counts": {...}}.')
@click.option("--stuck", is_flag=True, help="Only non-terminal runs older than the threshold in their state.")
@click.option("--older-than", "older_than", default="10m", show_default=True, help="Threshold for --stuck (e.g. 90s, 15m, 2h).")
@click.option("--all", "show_all", is_flag=True, help="Include reported runs in the table (JSON always includes them).")
@click.pass_context
def status(ctx: click.Context, as_json: bool, stuck: bool, older_than: str, show_all: bool) -> None:
    """Runs by state; with --stuck, what needs a human and why. Reads only the store."""
    threshold = parse_duration(older_than)
    store = _store(ctx)
    now = time.time()
    runs = store.runs()
    if stuck:
        runs = [r for r in runs if r.state in ACTIVE and now - parse_rfc3339(r.state_since) >= threshold]
    counts = store.counts()
    if as_json:
        leadership = store.get_value("leadership")
        watch = store.get_value("nomad_watch")
        click.echo(
            json.dumps(
                {
                    "runs": [r.public() for r in runs],
                    "counts": counts,
                    "leadership": json.loads(leadership) if leadership else None,
                    "nomad_watch": json.loads(watch) if watch else None,
                },
                indent=2,
            )
        )
        return
    leadership = store.get_value("leadership")
    if leadership:
        info = json.loads(leadership)
        role = info.get("role")
        line = f"leadership: {info.get('identity')} is {role}"
        if role == "leader" and info.get("since"):
            line += f" since {_age(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(info['since'])), now)} ago"
        if info.get("why"):
            line += f" ({info['why']})"
        click.echo(line)
    watch_line = _nomad_watch_line(store.get_value("nomad_watch"), now)
    if watch_line:
        click.echo(watch_line)
    from reconciler.publish import pending_comments

    for run_id, item in sorted(pending_comments(store).items()):
        click.echo(f"comment on pull request #{item.get('pull')} for run {run_id} failing since {item.get('since')}: {item.get('error')} (retried)")
    from reconciler import brakes as brakes_mod

    b = brakes_mod.read(store)
    if b.holds_new_work:
        click.echo(f"brakes: dispatching is {b.describe()}")
    click.echo("counts: " + (", ".join(f"{s.value} {counts.get(s.value, 0)}" for s in State if counts.get(s.value)) or "no runs"))
    shown = runs if (stuck or show_all) else [r for r in runs if r.state in ACTIVE or now - parse_rfc3339(r.state_since) < 3600]
    if not shown:
        click.echo("no stuck runs" if stuck else "no runs to show (use --all for reported ones)")
        return
    rows = [["ID", "KIND", "STATE", "AGE", "ATTEMPT", "JOB", "ALLOC", "EXIT", "WHY"]]
    for r in shown:
        why = r.waiting or r.error or ""
        rows.append(
            [
                r.id,
                r.kind,
                State(r.state).value,
                _age(r.state_since, now),
                str(r.attempt),
                (r.nomad_job_id or "-").split("/")[-1],
                (r.alloc_id or "-")[:8],
                "-" if r.exit_code is None else str(r.exit_code),
                why[:100],
            ]
        )
    click.echo(_table(rows))


def _nomad_watch_line(raw: str | None, now: float) -> str | None:
    """``nomad watch: live since 3m ago`` / ``failing since ... (why); fallback: ...`` from the service's record."""
    if not raw:
        return None
    try:
        info = json.loads(raw)
        since = _age(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(info["since"]))), now)
        line = f"nomad watch: {info['state']} since {since} ago"
    except (ValueError, KeyError, TypeError):
        return "nomad watch: unreadable record in the store"
    if info.get("why"):
        line += f" ({info['why']})"
    if info.get("fallback"):
        line += f"; fallback: {info['fallback']}"
    return line


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="The run and its journal as JSON.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """One run (by run id, action id or issue:<n>:<kind>) and its full transition journal."""
    store = _store(ctx)
    run = store.find(ref)
    if run is None:
        raise RunFailed(f"no run matches {ref!r}: give a run id, an action id or issue:<n>:<kind> (see `reconciler status --all`)")
    events = store.journal(run.id)
    if as_json:
        out = run.public()
        out["events"] = [e.public() for e in events]
        click.echo(json.dumps(out, indent=2))
        return
    pub = run.public()
    for key, value in pub.items():
        if value not in (None, [], ""):
            click.echo(f"{key:14s} {value}")
    if run.log_tail:
        click.echo("logs (tail, redacted):")
        for line in run.log_tail.splitlines()[-20:]:
            click.echo(f"  | {line}")
    click.echo("journal:")
    for e in events:
        arrow = f"{e.from_state or '(new)'} -> {e.to_state}"
        click.echo(f"  {e.at}  {e.transition:9s} {arrow:30s} {e.reason}")


# --------------------------------------------------------------------------- validate
@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def validate(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Check action TOML files as the reconciler would; exit 1 with one line per problem."""
    from reconciler import actions

    settings = _settings(ctx)
    problems = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            click.echo(f"{path}: cannot read: {exc.strerror}")
            problems += 1
            continue
        try:
            action = actions.parse_action(path.name, data, settings.actions)
        except actions.ActionInvalid as exc:
            for p in exc.problems:
                click.echo(f"{path}: {p}")
            problems += len(exc.problems)
            continue
        click.echo(f"{path}: ok (id {action.id}, formula {action.formula}, secrets {', '.join(action.secrets) or 'none'})")
    if problems:
        raise SystemExit(1)


# --------------------------------------------------------------------------- retry / cancel
@cli.command()
@click.argument("ref")
@click.pass_context
def retry(ctx: click.Context, ref: str) -> None:
    """Run a reported run again (next attempt; the approval gate is checked again)."""
    store = _store(ctx)
    run = store.find(ref)
    if run is None:
        raise RunFailed(f"no run matches {ref!r}")
    if State(run.state) != State.REPORTED:
        raise RunFailed(f"run {run.id} is {State(run.state).value}; only a reported run can be retried (cancel it first if it is stuck)")
    try:
        store.transition(
            run.id,
            Transition.RETRY,
            expect=State.REPORTED,
            reason="operator retry",
            changes={
                "outcome": None, "exit_code": None, "error": None, "nomad_job_id": None, "alloc_id": None,
                "dispatched_at": None, "dispatch_started_at": None, "started_at": None, "finished_at": None,
                "token_accessor": None, "wrapping_accessor": None, "claim_expires_at": None, "log_tail": None,
                "next_try_at": None, "waiting": None, "failures": 0, "reported_commit": None, "idempotency_token": None,
                "result_path": run.result_path or (f"vault/actions/{run.action_id}.result.json" if run.action_id else None),
            },
        )
    except (StaleState, IllegalTransition) as exc:
        raise RunFailed(str(exc)) from None
    click.echo(f"{run.id}: retry journaled; the running service picks it up on its next pass (attempt {run.attempt + 1})")


@cli.command()
@click.argument("ref")
@click.option("--reason", default="cancelled by operator", show_default=True, help="Why, for the journal and the result.")
@click.pass_context
def cancel(ctx: click.Context, ref: str, reason: str) -> None:
    """Cancel a run: the service stops its child, revokes its claim and writes a result."""
    store = _store(ctx)
    run = store.find(ref)
    if run is None:
        raise RunFailed(f"no run matches {ref!r}")
    if run.state not in ACTIVE or State(run.state) in (State.COLLECTED, State.REJECTED, State.CANCELLED):
        raise RunFailed(f"run {run.id} is {State(run.state).value}; there is nothing to cancel")
    try:
        store.transition(
            run.id, Transition.CANCEL, expect=run.state, reason=reason,
            changes={"outcome": "cancelled", "exit_code": 1, "error": reason, "waiting": "cancelled: stopping the child, revoking the claim, writing the result"},
        )
    except (StaleState, IllegalTransition) as exc:
        raise RunFailed(str(exc)) from None
    click.echo(f"{run.id}: cancel journaled; the service stops its child, revokes its claim and writes the result on its next pass")


# --------------------------------------------------------------------------- brakes
@cli.command()
@click.option("--reason", default="", help="Why, for the journal and `status`.")
@click.pass_context
def pause(ctx: click.Context, reason: str) -> None:
    """Dispatch nothing new; running work is watched to its end and reported. Persisted until `resume`."""
    from reconciler import brakes

    b = brakes.set_brakes(_store(ctx), paused=True, reason=reason)
    click.echo(f"dispatching is {b.describe()}")


@cli.command()
@click.option("--reason", default="", help="Why, for the journal.")
@click.pass_context
def resume(ctx: click.Context, reason: str) -> None:
    """Lift `pause` or `drain`: dispatching starts again on the next pass."""
    from reconciler import brakes

    b = brakes.set_brakes(_store(ctx), paused=False, reason=reason)
    click.echo(f"dispatching is {b.describe()}")


@cli.command()
@click.option("--reason", default="", help="Why, for the journal and `status`.")
@click.pass_context
def drain(ctx: click.Context, reason: str) -> None:
    """Like pause, and `reconciler run` exits 0 once nothing is in flight (before an upgrade or a move)."""
    from reconciler import brakes

    b = brakes.set_brakes(_store(ctx), paused=True, draining=True, reason=reason)
    click.echo(f"dispatching is {b.describe()}; the service exits once nothing is in flight")


@cli.command("revoke-all")
@click.option("--yes", is_flag=True, help="Do it (without --yes, only list what would be revoked).")
@click.pass_context
def revoke_all(ctx: click.Context, yes: bool) -> None:
    """Emergency brake: revoke every claim token the store knows for runs not yet reported.

    Running formulas keep what they already read; their runners' tokens die. Journaled per run.
    """
    from reconciler.clients.vault import VaultClient

    settings = _settings(ctx)
    store = _store(ctx)
    runs = [r for r in store.runs(ACTIVE) if r.token_accessor or r.wrapping_accessor]
    if not runs:
        click.echo("no live claim tokens recorded")
        return
    if not yes:
        for r in runs:
            click.echo(f"would revoke the claim of {r.id} ({State(r.state).value}, accessor {r.token_accessor})")
        click.echo("run again with --yes to revoke")
        return
    vault = VaultClient(settings.vault)
    for r in runs:
        for accessor in (r.token_accessor, r.wrapping_accessor):
            if accessor:
                vault.revoke_accessor(accessor)
        store.update(r.id, {}, note="claim token revoked by operator (revoke-all)")
        click.echo(f"revoked the claim of {r.id}")
    store.control_event("revoke-all", reason=f"{len(runs)} claim(s) revoked")


@cli.command()
@click.pass_context
def plan(ctx: click.Context) -> None:
    """What the next pass would do, changing nothing (store, Nomad, Vault and the ops remote stay as they are)."""
    from reconciler.app import build_context
    from reconciler.plan import plan as make_plan

    settings = _settings(ctx)
    store = _store(ctx)
    try:
        context = build_context(settings, store)
    except SettingsError as exc:
        raise RunFailed(str(exc)) from None
    lines = list(make_plan(context))
    for line in lines or ["nothing to do"]:
        click.echo(line)


# --------------------------------------------------------------------------- jobspecs
@cli.group()
def jobspecs() -> None:
    """Print or register the project's Nomad jobspecs, Vault policies and role, and Nomad ACL policies."""


@jobspecs.command("render")
@click.option("--only", "only", default=None, help="Print only the file with this name (e.g. vault-runner.hcl).")
@click.pass_context
def jobspecs_render(ctx: click.Context, only: str | None) -> None:
    """Print every file with the values this configuration would register."""
    from reconciler import jobspecs as js

    files = js.render(_settings(ctx))
    if only is not None:
        if only not in files:
            raise RunFailed(f"no file {only!r}; choose one of: {', '.join(sorted(files))}")
        click.echo(files[only], nl=False)
        return
    for name in sorted(files):
        click.echo(f"# ==> {name} <==")
        click.echo(files[name].rstrip("\n"))
        click.echo("")


@jobspecs.command("apply")
@click.option("--skip-vault", is_flag=True, help="Register the Nomad jobs only.")
@click.pass_context
def jobspecs_apply(ctx: click.Context, skip_vault: bool) -> None:
    """Register the jobs (via /v1/jobs/parse then /v1/jobs), write Vault policies and the token role, and Nomad ACL policies.

    Idempotent: each item says created, updated or unchanged. Run it with an operator's
    NOMAD_TOKEN and VAULT_TOKEN (registering jobspecs takes a separate token from the
    reconciler's own). Records what it registered, so the reconciler refuses to dispatch
    a parent job changed behind its back.
    """
    from reconciler import jobspecs as js
    from reconciler.clients.nomad import NomadClient

    settings = _settings(ctx)
    nomad = NomadClient(settings.nomad)
    vault = None if skip_vault else js.VaultHTTP(settings.vault.addr, settings.vault.token or "", namespace=settings.vault.namespace, tls=settings.vault.tls)
    acl = js.NomadACLHTTP(settings.nomad.addr, settings.nomad.token or "")
    report = js.apply(settings, nomad, vault, out=click.echo, nomad_acl=acl)
    click.echo("changed" if report.changed else "nothing changed")


# --------------------------------------------------------------------------- demo
@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where to put the demo's repos, store and logs (default: a new temporary folder).")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Give up after SECONDS.")
def demo(workdir: Path | None, timeout: float) -> None:
    """Run the whole system locally: Nomad, Vault and Forgejo doubles, a real git ops repo, the sample actions.

    Needs nothing but Python and git. Each sample action is merged through a pull
    request an admin approved; the reconciler dispatches it to the Nomad double,
    whose allocations run the real runner entry step, and pushes the results.
    """
    from reconciler.demo import run_demo

    code = run_demo(workdir, click.echo, timeout=timeout)
    if code:
        raise RunFailed("the demo did not finish; see the lines above")


# --------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> NoReturn:
    try:
        rv = cli.main(args=argv, prog_name="reconciler", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 1
    except click.UsageError as exc:
        exc.show()
        code = 2
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (RunFailed, ReconcilerError, SettingsError, StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.exit(code)
