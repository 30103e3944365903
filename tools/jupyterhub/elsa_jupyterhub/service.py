"""elsa-hub-service: a JupyterHub service (OAuth-protected) with a REST API and an admin page.

Who may do what: every logged-in user (scope access:services!service=NAME) sees and manages their
own sessions and checkpoints; tokens carrying the custom scope `custom:elsa:admin` (granted by a
role, see the README) act on everybody's, drain hosts and apply policies.

    GET    /api/me                         who you are, admin or not
    GET    /api/overview                   hosts, sessions, checkpoints, jobs (+ rightsizing for admins)
    GET    /api/users/USER/sessions        USER's running sessions and checkpoints
    POST   /api/users/USER/migrate         {"to": HOST, "server": ""} -> a job (?wait=1: its result)
    DELETE /api/checkpoints/ID             remove a checkpoint
    GET    /api/jobs/ID                    a job's progress and result
    POST   /api/hosts/HOST/drain           {"deadline_s": 120} -> a job (admin)
    POST   /api/retention/apply            prune checkpoints by the retention policy (admin)
    GET    /api/rightsizing                proposals (admin); POST {"session"} performs one
"""

import argparse
import asyncio
import json
import logging
import os
import secrets
import time

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from . import config as elsa_config
from .agent import AgentError
from .fleet import owner_of, session_port
from .hub import HubClient, HubError
from .operations import OperationError, Operations
from .proxy import ProxyClient

ADMIN_SCOPE = "custom:elsa:admin"
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
log = logging.getLogger("elsa-hub-service")


class Base(HubOAuthenticated, web.RequestHandler):
    @property
    def ops(self):
        return self.settings["ops"]

    def check_xsrf_cookie(self):
        # A token in the Authorization header is not something a browser sends by itself: no
        # cross-site forgery to fear. Cookie-authenticated writes need the page's _xsrf token.
        if self.request.headers.get("Authorization", "").startswith(("token ", "Bearer ")):
            return
        return super().check_xsrf_cookie()

    def write_error(self, status_code, **kwargs):
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": reason, "status": status_code}))

    def user_or_401(self):
        user = self.current_user
        if not user:
            raise web.HTTPError(401, "log in through JupyterHub, or send Authorization: token <API token>")
        return user

    def is_admin(self, user):
        return ADMIN_SCOPE in set(user.get("scopes", []))

    def require_admin(self):
        user = self.user_or_401()
        if not self.is_admin(user):
            raise web.HTTPError(403, f"needs the {ADMIN_SCOPE} scope")
        return user

    def require_self_or_admin(self, username):
        user = self.user_or_401()
        if user.get("name") != username and not self.is_admin(user):
            raise web.HTTPError(403, f"{user.get('name')} may not act on {username}'s sessions")
        return user

    def body(self):
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        return data

    def send(self, obj, status=200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    async def finish_job(self, job):
        if self.get_argument("wait", "") in ("1", "true"):
            await job.done.wait()
            return self.send(job.to_json(), 200 if job.state == "done" else 500)
        self.send({"job": job.id, "url": url_path_join(self.settings["prefix"], "api/jobs", job.id)}, 202)


class AdminPage(Base):
    @web.authenticated
    def get(self):
        self.xsrf_token  # sets the _xsrf cookie the page's scripts send back
        with open(os.path.join(STATIC, "admin.html")) as f:
            page = f.read()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page.replace("{{prefix}}", self.settings["prefix"]))


class Me(Base):
    def get(self):
        user = self.user_or_401()
        self.send({"name": user.get("name"), "admin": self.is_admin(user)})


async def session_rows(ops, only_user=None):
    sessions, errors = await ops.fleet.sessions_by_host()
    rows = []
    for host, ss in sessions.items():
        for s in ss.values():
            user, server = owner_of(s["name"])
            # The agent also lists sessions it checkpointed or saw exit: those are not running
            # anywhere; their checkpoints are listed separately.
            if user is None or (only_user is not None and user != only_user) or s.get("state") != "running":
                continue
            rows.append({"session": s["name"], "user": user, "server": server, "host": host, "state": s["state"],
                         "rss_bytes": s.get("rss_bytes", 0), "uptime_seconds": s.get("uptime_seconds", 0),
                         "port": session_port(s), "restored_from": s.get("restored_from", ""),
                         "migrating": ops.fleet.migrating(s["name"]) is not None})
    return rows, sessions, errors


async def checkpoint_rows(ops, only_user=None):
    rows = []
    for c in await ops.fleet.checkpoints():
        user, server = owner_of(c.get("session", ""))
        if user is None or (only_user is not None and user != only_user):
            continue
        rows.append({"id": c["id"], "user": user, "server": server, "session": c["session"], "host": c["host"],
                     "created_at": c.get("created_at"), "size_bytes": c.get("size_bytes", 0),
                     "pages": c.get("pages", {})})
    return rows


class Overview(Base):
    async def get(self):
        user = self.user_or_401()
        admin = self.is_admin(user)
        only = None if admin else user["name"]
        rows, sessions, errors = await session_rows(self.ops, only)
        load = self.ops.fleet.load(sessions)
        hosts = [{"name": h.name, "address": h.address, "size": h.size, "capacity_bytes": h.capacity_bytes,
                  "used_bytes": load.get(h.name), "sessions": len([s for s in sessions.get(h.name, {}).values()
                                                                   if s.get("state") == "running"]),
                  "reachable": h.name not in errors, "error": errors.get(h.name)} for h in self.ops.cfg.hosts]
        out = {"me": {"name": user["name"], "admin": admin}, "hosts": hosts, "sessions": rows,
               "checkpoints": await checkpoint_rows(self.ops, only),
               "jobs": [j.to_json() for j in self.ops.jobs.values() if admin or j.requested_by == user["name"]]}
        if admin:
            out["rightsizing"] = await self.ops.rightsizing_proposals()
        self.send(out)


class UserSessions(Base):
    async def get(self, username):
        self.require_self_or_admin(username)
        rows, _, _ = await session_rows(self.ops, username)
        self.send({"user": username, "sessions": rows, "checkpoints": await checkpoint_rows(self.ops, username)})


class Migrate(Base):
    async def post(self, username):
        user = self.require_self_or_admin(username)
        body = self.body()
        dest = body.get("to")
        if not isinstance(dest, str) or not dest:
            raise web.HTTPError(400, "'to': the destination host's name")
        try:
            self.ops.cfg.host(dest)
        except elsa_config.ConfigError as e:
            raise web.HTTPError(400, str(e)) from None
        session = elsa_config.session_name(username, body.get("server", "") or "")
        job = self.ops.new_job("migrate", f"{session} -> {dest}", user["name"])
        asyncio.ensure_future(self.ops.run_migration(session, dest, job))
        await self.finish_job(job)


class Checkpoint(Base):
    async def delete(self, checkpoint_id):
        user = self.user_or_401()
        found = next((c for c in await self.ops.fleet.checkpoints() if c["id"] == checkpoint_id), None)
        owner = owner_of(found["session"])[0] if found else None
        if found is None:
            raise web.HTTPError(404, f"no checkpoint {checkpoint_id} on any reachable host")
        if owner != user["name"] and not self.is_admin(user):
            raise web.HTTPError(403, f"checkpoint {checkpoint_id} is not {user['name']}'s")
        try:
            result = await self.ops.fleet.client(found["host"]).call("rm", checkpoint=checkpoint_id, timeout=300)
        except AgentError as e:
            raise web.HTTPError(500, str(e)) from None
        self.send(result)


class Jobs(Base):
    def get(self, job_id):
        user = self.user_or_401()
        job = self.ops.jobs.get(job_id)
        if job is None or (job.requested_by != user["name"] and not self.is_admin(user)):
            raise web.HTTPError(404, f"no job {job_id}")
        self.send(job.to_json())


class Drain(Base):
    async def post(self, host):
        user = self.require_admin()
        body = self.body()
        deadline = body.get("deadline_s", 120)
        if not isinstance(deadline, (int, float)) or not 0 < deadline <= 86400:
            raise web.HTTPError(400, "'deadline_s': seconds, between 0 and 86400")
        try:
            self.ops.cfg.host(host)
        except elsa_config.ConfigError as e:
            raise web.HTTPError(404, str(e)) from None
        job = self.ops.new_job("drain", host, user["name"])
        asyncio.ensure_future(self.ops.run_drain(host, deadline, job))
        await self.finish_job(job)


class Retention(Base):
    async def post(self):
        self.require_admin()
        self.send({"removed": await self.ops.apply_retention(), "policy": self.ops.cfg.retention})


class Rightsizing(Base):
    async def get(self):
        self.require_admin()
        self.send({"proposals": await self.ops.rightsizing_proposals(), "policy": self.ops.cfg.rightsizing})

    async def post(self):
        user = self.require_admin()
        session = self.body().get("session")
        proposal = next((p for p in await self.ops.rightsizing_proposals() if p["session"] == session), None)
        if proposal is None or not proposal["propose"]:
            raise web.HTTPError(409, f"no rightsizing proposal with a destination for {session!r}")
        job = self.ops.new_job("rightsize", f"{session} -> {proposal['propose']}", user["name"])
        asyncio.ensure_future(self.ops.run_migration(session, proposal["propose"], job))
        await self.finish_job(job)


# Background policies -------------------------------------------------------------------------
async def every(seconds, what, fn):
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except Exception:  # noqa: BLE001 - a policy round failing must not end the service
            log.exception("%s failed", what)


async def rightsize_round(ops):
    for p in await ops.rightsizing_proposals():
        if p["propose"] and not ops.fleet.migrating(p["session"]):
            log.info("rightsizing: moving %s (%s) to %s", p["session"], p["reason"], p["propose"])
            job = ops.new_job("rightsize", f"{p['session']} -> {p['propose']}", "policy")
            await ops.run_migration(p["session"], p["propose"], job)


async def checkpoint_idle_round(ops, idle_s):
    """What jupyterhub-idle-culler does (Debian does not package it): stop servers idle longer
    than idle_s through the hub's API; ElsaSpawner turns that stop into a checkpoint."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    for user in await ops.hub.users():
        for name, srv in (user.get("servers") or {}).items():
            last = srv.get("last_activity")
            if not last or not srv.get("ready"):
                continue
            idle = (now - datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds()
            if idle > idle_s:
                log.info("checkpointing %s's server %r: idle %.0f s", user["name"], name, idle)
                await ops.hub.stop_server(user["name"], name)


def make_app(cfg, prefix, ops):
    routes = [
        (r"", web.RedirectHandler, {"url": prefix}),
        (r"/?", AdminPage),
        (r"/oauth_callback", HubOAuthCallbackHandler),
        (r"/api/me", Me),
        (r"/api/overview", Overview),
        (r"/api/users/([^/]+)/sessions", UserSessions),
        (r"/api/users/([^/]+)/migrate", Migrate),
        (r"/api/checkpoints/([A-Za-z0-9._-]+)", Checkpoint),
        (r"/api/jobs/(\d+)", Jobs),
        (r"/api/hosts/([^/]+)/drain", Drain),
        (r"/api/retention/apply", Retention),
        (r"/api/rightsizing", Rightsizing),
    ]
    return web.Application([(url_path_join(prefix, p) if p else prefix.rstrip("/"), *rest) for p, *rest in routes],
                           ops=ops, prefix=prefix, cookie_secret=secrets.token_bytes(32), xsrf_cookies=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="elsa-hub-service", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="Elsa's hub config (default $ELSA_HUB_CONFIG or /etc/elsa/hub.json)")
    parser.add_argument("--checkpoint-after", type=int, default=None, metavar="SECONDS",
                        help="checkpoint servers idle longer than this (0: never; default from the config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s elsa-hub-service] %(message)s")
    cfg = elsa_config.load(args.config)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/elsa/")
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
    try:
        hub = HubClient()
    except HubError as e:
        raise SystemExit(f"elsa-hub-service: {e}")
    ops = Operations(cfg, ProxyClient(cfg.proxy_api_url), hub)
    app = make_app(cfg, prefix, ops)
    from urllib.parse import urlparse

    u = urlparse(url)
    HTTPServer(app, xheaders=True).listen(u.port or 80, u.hostname or "")
    log.info("serving %s at %s (hosts: %s)", prefix, url, ", ".join(h.name for h in cfg.hosts))
    idle = cfg.checkpoint_after_s if args.checkpoint_after is None else args.checkpoint_after
    loop = IOLoop.current()
    if cfg.retention.get("interval_s"):
        loop.spawn_callback(every, float(cfg.retention["interval_s"]), "retention", ops.apply_retention)
    if cfg.rightsizing.get("act"):
        loop.spawn_callback(every, float(cfg.rightsizing.get("interval_s", 60)), "rightsizing",
                            lambda: rightsize_round(ops))
    if idle:
        loop.spawn_callback(every, max(1.0, idle / 4), "idle checkpointing", lambda: checkpoint_idle_round(ops, idle))
    try:
        loop.start()
    except KeyboardInterrupt:  # the hub ends its services with SIGINT
        log.info("stopped")


if __name__ == "__main__":
    main()
