"""Git smart HTTP for the Forgejo double: ``${FORGE_URL}/<owner>/<repo>.git``, served by real ``git http-backend``.

Traced to Forgejo's ``routers/web/repo/githttp.go`` (``httpBase``, ``serviceRPC``,
``GetInfoRefs``) and ``services/context/permission.go`` (``CheckRepoScopedToken``):

* Routes: ``GET .../info/refs?service=git-upload-pack|git-receive-pack``, ``POST
  .../git-upload-pack``, ``POST .../git-receive-pack``; the ``.git`` suffix is optional and the
  owner/name are matched case-insensitively. The dumb protocol (``HEAD``, ``objects/...``,
  ``info/refs`` without ``service``) is not implemented here: 501 naming it.
* A pull (upload-pack) of a public repository needs no credentials. Anything else asks for
  them: no (or an unknown) credential is 401 with ``WWW-Authenticate: Basic realm="Gitea"``.
* Credentials are HTTP Basic with an API token as the password under any user name (or the
  token as the user name with an empty or ``x-oauth-basic`` password, ``services/auth/basic.go``).
* ``CheckRepoScopedToken``: a scoped token needs ``read:repository`` to pull and
  ``write:repository`` to push (``write:`` implies ``read:``; ``all`` grants both);
  ``public-only`` on a private repository, or a missing scope, is a bare 403 whose body is
  Go's ``http.StatusText`` - ``Forbidden`` - so git's message does not name the scope (the
  client has to).
* Then ``GetUserRepoPermission``: a user who may not read the repository, or may not write it
  for a push, gets 404 ``Repository not found`` (the ``CanAccess`` branch; on a Forgejo whose
  git supports ``proc-receive`` the write check moves to the pre-receive hook - not
  modelled: the 404 comes before the pack is sent).
* A missing repository is 404 ``Repository not found`` (push-to-create is off by default).
* ``serviceRPC``: a POST whose ``Content-Type`` is not ``application/x-git-<service>-request``
  is 401; a gzip request body (``Content-Encoding: gzip``) is accepted.

The pack exchange itself is ``git http-backend`` (CGI), one process per request, with
``GIT_PROJECT_ROOT`` set to the bare repository's parent. ``throttle_bytes_per_second`` slows
replies to simulate a slow link (a clone that takes minutes). A push runs the double's own
"post-receive" step (``_sync_heads`` with the token's user as pusher).
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from typing import IO, TYPE_CHECKING, Callable, Iterator

from doubles.http import Request, Response, StreamingResponse

if TYPE_CHECKING:  # pragma: no cover
    from doubles.forge import ForgeDouble, _Repo, _User

__all__ = ["install_git_http", "GIT_SERVICES"]

GIT_SERVICES = ("git-upload-pack", "git-receive-pack")
_REPO_PATH = r"/(?P<owner>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?"
_CHUNK = 16 * 1024
_REALM = 'Basic realm="Gitea"'


def install_git_http(forge: "ForgeDouble") -> None:
    """Register the smart HTTP routes on ``forge``."""
    handler = _GitHTTP(forge)
    forge.add_route("GET", _REPO_PATH + r"/info/refs", handler.info_refs)
    for service in GIT_SERVICES:
        forge.add_route("POST", _REPO_PATH + "/" + service, lambda req, s=service: handler.rpc(req, s))
    for dumb in (r"/HEAD", r"/objects/.+", r"/info/.+"):
        forge.add_route("GET", _REPO_PATH + dumb, handler.dumb)


def _credential(req: Request) -> str | None:
    """The token of a Basic ``Authorization`` header (password, or user name when the password is
    empty / ``x-oauth-basic``); ``""`` for a header that is not usable; None without one."""
    header = req.header("authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return ""  # Bearer/OAuth2 is accepted by Forgejo too, but the double models Basic only
    try:
        user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return ""
    return user if password in ("", "x-oauth-basic") else password


class _GitHTTP:
    def __init__(self, forge: "ForgeDouble") -> None:
        self.forge = forge

    # -- routes ---------------------------------------------------------------------------------
    def info_refs(self, req: Request) -> Response:
        service = req.arg("service") or ""
        if service not in GIT_SERVICES:
            return Response.text("the Forgejo double serves the smart HTTP protocol only (dumb HTTP info/refs is not implemented)", 501)
        repo, login, denied = self._authorize(req, push=service == "git-receive-pack")
        if denied is not None:
            return denied
        assert repo is not None
        return self._backend(req, repo, login, "/info/refs", b"")

    def rpc(self, req: Request, service: str) -> Response:
        repo, login, denied = self._authorize(req, push=service == "git-receive-pack")
        if denied is not None:
            return denied
        assert repo is not None
        if req.header("content-type") != f"application/x-{service}-request":
            return Response.text("Unauthorized", 401)  # serviceRPC: wrong Content-Type
        return self._backend(req, repo, login, f"/{service}", req.body)

    def dumb(self, req: Request) -> Response:
        return Response.text("the Forgejo double does not implement git's dumb HTTP protocol", 501)

    # -- httpBase -------------------------------------------------------------------------------
    def _authorize(self, req: Request, *, push: bool) -> tuple["_Repo | None", str | None, Response | None]:
        forge = self.forge
        token = _credential(req)
        with forge._lock:
            repo = forge._repos.get(f"{req.params['owner']}/{req.params['repo']}".lower())
            viewer: _User | None = None
            scopes = None
            if token:
                login = forge._tokens.get(token)
                if login is not None:
                    viewer = forge._users[login.lower()]
                    scopes = forge._token_scopes.get(token)
            public_pull = repo is not None and not repo.private and not push
            if token is not None and viewer is None:
                return None, None, _unauthorized()  # a credential Forgejo does not accept
            if not public_pull:
                if viewer is None:
                    return None, None, _unauthorized()
                if repo is not None and scopes is not None:
                    if "public-only" in scopes and repo.private:
                        return None, None, Response.text("Forbidden\n", 403)
                    level = "write" if push else "read"
                    if not _has_repo_scope(scopes, level):
                        return None, None, Response.text("Forbidden\n", 403)
                if repo is not None:
                    access = forge._access(repo, viewer)
                    needed = 2 if push else 1
                    if _ACCESS[access] < needed:
                        return None, None, Response.text("Repository not found", 404)
            if repo is None:
                return None, None, Response.text("Repository not found", 404)
            return repo, (viewer.login if viewer else None), None

    # -- git http-backend -----------------------------------------------------------------------
    def _backend(self, req: Request, repo: "_Repo", login: str | None, path: str, data: bytes) -> Response:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(repo.git_dir.parent),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{repo.git_dir.name}{path}",
            "REQUEST_METHOD": req.method,
            "QUERY_STRING": "&".join(f"{k}={v}" for k, vs in req.query.items() for v in vs),
            "CONTENT_TYPE": req.header("content-type") or "",
            "CONTENT_LENGTH": str(len(data)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if login:
            env["REMOTE_USER"] = login  # http-backend serves receive-pack only to an authenticated user
        if req.header("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = req.header("content-encoding") or ""
        protocol = req.header("git-protocol")
        if protocol:
            env["GIT_PROTOCOL"] = protocol
        proc = subprocess.Popen(
            ["git", "http-backend"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a repository hook that signals its session never reaches the test process
        )
        feeder = threading.Thread(target=_feed, args=(proc, data), daemon=True)
        feeder.start()
        assert proc.stdout is not None
        status, headers = _cgi_headers(proc.stdout)
        headers.setdefault("Content-Type", "application/octet-stream")
        for name, value in (("Expires", "Fri, 01 Jan 1980 00:00:00 GMT"), ("Pragma", "no-cache"),
                            ("Cache-Control", "no-cache, max-age=0, must-revalidate")):
            headers.setdefault(name, value)
        after = (lambda: self.forge._sync_heads(repo, pusher=login)) if path == "/git-receive-pack" else None
        return StreamingResponse(self._chunks(proc, feeder, after), status=status, headers=headers)

    def _chunks(
        self, proc: subprocess.Popen[bytes], feeder: threading.Thread, after: Callable[[], None] | None
    ) -> Iterator[bytes]:
        assert proc.stdout is not None
        rate = self.forge.git_throttle_bytes_per_second
        try:
            while True:
                chunk = proc.stdout.read1(_CHUNK) if rate is None else proc.stdout.read(min(_CHUNK, max(1, int(rate))))
                if not chunk:
                    break
                if rate:
                    time.sleep(len(chunk) / rate)
                yield chunk
        finally:
            proc.stdout.close()
            proc.wait()
            feeder.join()
            if after is not None and proc.returncode == 0:
                after()


_ACCESS = {"none": 0, "read": 1, "write": 2, "admin": 3, "owner": 4}


def _has_repo_scope(scopes: frozenset[str], level: str) -> bool:
    """``AccessTokenScope.HasScope`` for the repository category."""
    if "all" in scopes or "write:repository" in scopes:
        return True
    return level == "read" and "read:repository" in scopes


def _unauthorized() -> Response:
    return Response.text("Unauthorized\n", 401, headers={"WWW-Authenticate": _REALM})


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        if data:
            proc.stdin.write(data)
    except BrokenPipeError:
        pass
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


def _cgi_headers(out: IO[bytes]) -> tuple[int, dict[str, str]]:
    """Read the CGI header block: ``Status:`` and the rest, up to the blank line."""
    status = 200
    headers: dict[str, str] = {}
    while True:
        line = out.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        value = value.strip()
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[name] = value
    return status, headers
