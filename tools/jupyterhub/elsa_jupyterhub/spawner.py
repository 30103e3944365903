"""ElsaSpawner: each user's single-user server is an elsad session on one of the configured hosts.

- start(): restores the user's newest checkpoint (or the one picked), else starts fresh (the
  classic notebook UI by default, see singleuser_app); on the host asked for (by name or size)
  or the least loaded one. A checkpoint lives in its host's store, so it is restored there,
  then moved live to the host asked for.
- stop(): checkpoints the session (which ends it and frees the host); will_resume then tells the
  hub to keep the server's API token and OAuth client, which the restored process still holds.
- poll(): running while any agent runs the session, or while a migration of it is in flight; a
  session found on another host (moved by elsa-hub-service) updates the hub's record of the
  server's address, so the hub's route checks point the proxy at the new place.
"""

import asyncio
import html
import os

from jupyterhub.spawner import Spawner
from jupyterhub import orm
from traitlets import Bool, Integer, Unicode, default

from . import config as elsa_config
from .agent import AgentError, event_bytes, progress_percent
from .fleet import Fleet


class ElsaSpawner(Spawner):
    config_file = Unicode(
        "", help="Elsa's hub config (JSON: hosts, ports, policies); default $ELSA_HUB_CONFIG or /etc/elsa/hub.json"
    ).tag(config=True)
    lazy_restore = Bool(False, help="Restore lazily: the server runs before its memory is all in").tag(config=True)
    poll_interval = Integer(10, help="Seconds between polls (the base Spawner's 30 s is slow to notice a move)").tag(
        config=True)
    singleuser_app = Unicode(
        "notebook.notebookapp.NotebookApp",
        help="JUPYTERHUB_SINGLEUSER_APP for users' servers: the application jupyterhub-singleuser wraps. "
             "The default is the classic notebook UI (Debian's python3-notebook): without it, Debian's "
             "jupyterhub-singleuser 3.0 starts a bare jupyter-server, which has no UI (/user/NAME/tree is a 404). "
             "'' leaves it to the hub's environment. Spawner.environment['JUPYTERHUB_SINGLEUSER_APP'] wins over it."
    ).tag(config=True)

    # Where the server runs (or its checkpoint lives), kept across hub restarts by get_state().
    host = Unicode("")
    checkpoint_id = Unicode("")
    checkpoint_host = Unicode("")
    resume_token = Unicode("")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._cfg = None
        # progress() may be called before start() (the hub's progress stream opens at once).
        self._events, self._events_changed, self._events_done = [], asyncio.Event(), asyncio.Event()
        self._percent = 0

    # Configuration --------------------------------------------------------------------------
    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = elsa_config.load(self.config_file or None)
        return self._cfg

    @property
    def fleet(self):
        return Fleet(self.cfg)

    @property
    def session(self):
        return elsa_config.session_name(self.user.name, self.name or "")

    def _port(self):
        # Unique across the hub (the spawner's database id) and kept across restores and moves:
        # a restored or migrated server listens on the port it had.
        return self.cfg.port_base + self.orm_spawner.id

    # State ------------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        for key in ("host", "checkpoint_id", "checkpoint_host", "resume_token"):
            if getattr(self, key):
                state[key] = getattr(self, key)
        return state

    def load_state(self, state):
        super().load_state(state)
        for key in ("host", "checkpoint_id", "checkpoint_host", "resume_token"):
            setattr(self, key, state.get(key, ""))

    def clear_state(self):
        # Called when a server stops and before each start: what locates the checkpoint and the
        # token its process holds must survive both.
        super().clear_state()
        self.host = ""

    # Options ---------------------------------------------------------------------------------
    async def _options_form(self):
        fleet = self.fleet
        try:
            checkpoints = await fleet.checkpoints_of(self.session)
        except Exception:  # noqa: BLE001 - the form still offers a fresh start
            checkpoints = []
        hosts = "".join(f'<option value="{html.escape(h.name)}">{html.escape(h.name)}'
                        f'{" (" + html.escape(h.size) + ")" if h.size else ""}</option>' for h in self.cfg.hosts)
        cps = "".join(f'<option value="{html.escape(c["id"])}">{html.escape(c["created_at"])} on {html.escape(c["host"])}, '
                      f'{c["size_bytes"] / 2**20:.0f} MiB</option>' for c in checkpoints)
        return (f'<label>Checkpoint <select name="checkpoint"><option value="">newest</option>{cps}</select></label>'
                f'<label><input type="checkbox" name="fresh" value="1"> start fresh (ignore checkpoints)</label>'
                f'<label>Host <select name="host"><option value="">any</option>{hosts}</select></label>')

    offer_options = Bool(True, help="Show the options form (checkpoint, fresh, host) at /hub/spawn").tag(config=True)

    @default("options_form")
    def _default_options_form(self):
        # JupyterHub calls a callable options_form with the spawner; the form lists this user's
        # checkpoints, so it is made per spawn.
        return (lambda spawner: spawner._options_form()) if self.offer_options else ""

    def options_from_form(self, formdata):
        get = lambda k: (formdata.get(k) or [""])[0]  # noqa: E731
        return {"checkpoint": get("checkpoint"), "fresh": get("fresh") == "1", "host": get("host")}

    # Progress --------------------------------------------------------------------------------
    def _progress(self, operation, message, event=None, percent=None):
        if percent is None:
            percent = progress_percent(operation, event or {}, self._percent)
        self._percent = max(self._percent, percent)
        item = {"progress": self._percent, "message": message}
        if event:
            item.update(phase=event.get("phase"), detail=event.get("detail"))
            if event_bytes(event) is not None:
                item["bytes"] = event_bytes(event)
        self._events.append(item)
        self._events_changed.set()

    async def progress(self):
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._events_done.is_set():
                return
            self._events_changed.clear()
            await asyncio.wait([asyncio.ensure_future(self._events_changed.wait()),
                                asyncio.ensure_future(self._events_done.wait())], timeout=1,
                               return_when=asyncio.FIRST_COMPLETED)

    def _agent_events(self, operation, scale=(0, 100)):
        lo, hi = scale

        def on_event(event):
            pct = progress_percent(operation, event, 0)
            self._progress(operation, f"{operation}: {event.get('phase')}: {event.get('detail')}", event,
                           percent=int(lo + (hi - lo) * pct / 100))
        return on_event

    # Start -----------------------------------------------------------------------------------
    async def start(self):
        self._events, self._percent = [], 0
        self._events_done.clear()
        try:
            return await self._start()
        finally:
            self._events_done.set()

    async def _start(self):
        fleet, opts = self.fleet, dict(self.user_options or {})
        self.port = self._port()
        self.ip = "0.0.0.0"  # a migrated server keeps its listening socket: bound to any address
        running_on, _, unreachable = await fleet.locate_or_unreachable(self.session, prefer=self.host)
        if running_on:  # e.g. the hub lost track (a stop whose checkpoint failed): take it over
            self.log.warning("%s: session %s already runs on %s; adopting it", self._log_name, self.session, running_on)
            if self.resume_token:
                self.api_token = self.resume_token  # the token the running process holds, as on a restore
            return self._serve_from(running_on)

        sessions, errors = await fleet.sessions_by_host()
        errors = {**unreachable, **errors}
        want_host = opts.get("host") or ""
        if want_host:
            self.cfg.host(want_host)  # a clear error for an unknown host
            if want_host in errors:
                raise RuntimeError(f"host {want_host} is unreachable: {errors[want_host]}")

        checkpoint = None
        if not opts.get("fresh"):
            cps = await fleet.checkpoints_of(self.session)
            if opts.get("checkpoint"):
                checkpoint = next((c for c in cps if c["id"] == opts["checkpoint"]), None)
                if checkpoint is None:
                    raise RuntimeError(f"no checkpoint {opts['checkpoint']!r} of {self.user.name}'s server on any "
                                       "reachable host")
            elif cps:
                checkpoint = cps[0]
            # A server saved before (its checkpoint, the token its process holds) may run on a
            # host that does not answer, or have its newest checkpoint there. Starting fresh
            # would revoke that token and put a second copy in the same home: refuse instead.
            saved = self.resume_token or self.checkpoint_id
            if saved and errors and (checkpoint is None or self.checkpoint_host in errors):
                down = ", ".join(f"{h} ({e})" for h, e in sorted(errors.items()))
                raise RuntimeError(f"{self.user.name}'s server may be running on, or saved on, a host that does not "
                                   f"answer: {down}. Starting a fresh one now would discard it; try again once the "
                                   "host is back, or choose 'start fresh' to discard it on purpose")

        if checkpoint:
            host = checkpoint["host"]
            self._progress("restore", f"restoring checkpoint {checkpoint['id']} "
                                      f"({checkpoint['size_bytes'] / 2**20:.0f} MiB) on {host}", percent=2)
            if self.resume_token:
                # The restored process authenticates with the token it was started with; the hub
                # kept it (will_resume) and takes it back from here.
                self.api_token = self.resume_token
            scale = (0, 60) if want_host and want_host != host else (0, 95)
            await fleet.client(host).call("restore", checkpoint=checkpoint["id"], name=self.session,
                                          lazy=self.lazy_restore, on_event=self._agent_events("restore", scale))
            self.checkpoint_id, self.checkpoint_host = checkpoint["id"], host
            if want_host and want_host != host:
                self._progress("migrate", f"moving to {want_host}", percent=scale[1])
                await self._move(host, want_host, scale=(scale[1], 95))
                host = want_host
        else:
            if self.resume_token and not opts.get("fresh"):
                self.log.info("%s: no checkpoint found; starting fresh", self._log_name)
            size = opts.get("size") or None
            chosen = self.cfg.host(want_host) if want_host else fleet.pick_host(sessions, size=size)
            if chosen is None:
                raise RuntimeError("no reachable host has room" + (f" (size {size})" if size else "") +
                                   (f"; unreachable: {errors}" if errors else ""))
            host = chosen.name
            self._forget_resume_token()
            self._progress("start", f"starting a fresh server on {host}", percent=10)
            home = self.cfg.home_for(self.user.name)
            os.makedirs(home, mode=0o700, exist_ok=True)
            env = self.get_env()
            if self.singleuser_app and "JUPYTERHUB_SINGLEUSER_APP" not in self.environment:
                env["JUPYTERHUB_SINGLEUSER_APP"] = self.singleuser_app
            # Its own HOME: IPython appends to $HOME/.ipython/.../history.sqlite, and CRIU will not
            # restore a kernel whose open file changed size since the dump.
            env.update(HOME=home, PATH=env.get("PATH") or "/usr/local/bin:/usr/bin:/bin")
            argv = self.cmd + self.get_args()
            if "--allow-root" not in argv:
                argv.append("--allow-root")  # elsad runs sessions as root (no user switching yet)
            if not any(a.startswith("--port=") for a in argv):
                argv.append(f"--port={self.port}")
            await fleet.client(host).call("run", name=self.session, argv=argv, workdir=home,
                                          env=[f"{k}={v}" for k, v in env.items()], timeout=60)
            self._progress("start", f"server process started on {host}; waiting for it to answer", percent=60)
        return self._serve_from(host)

    def _forget_resume_token(self):
        """A fresh start does not use the token kept for a resume: revoke it, or it would stay
        valid with nothing holding it."""
        if self.resume_token and self.resume_token != self.api_token:
            token = orm.APIToken.find(self.db, self.resume_token)
            if token is not None:
                self.db.delete(token)
                self.db.commit()
        self.resume_token = ""

    def _serve_from(self, host_name):
        self.host = host_name
        self.resume_token = self.resume_token or self.api_token
        return (self.cfg.host(host_name).address, self.port or self._port())

    async def _move(self, source, dest, scale=(0, 100)):
        mig = self.cfg.migration
        self.fleet.mark_migrating(self.session, source, dest)
        try:
            await self.fleet.client(source).call(
                "migrate", name=self.session, to=self.cfg.host(dest).peer, mode=mig.get("mode", "hybrid"),
                max_downtime_ms=mig.get("max_downtime_ms", 150), on_event=self._agent_events("migrate", scale))
        finally:
            self.fleet.unmark_migrating(self.session)

    # Poll ------------------------------------------------------------------------------------
    async def poll(self):
        fleet = self.fleet
        for attempt in range(3):
            host, info, unreachable = await fleet.locate_or_unreachable(self.session, prefer=self.host)
            if host:
                if host != self.host:
                    self._moved_to(host)
                return None
            if fleet.migrating(self.session):
                return None  # in flight: the source still has it, or the destination soon will
            if self.host in unreachable:
                # Unknown is not stopped: told "stopped", JupyterHub would clean the server up and
                # revoke the token of a process that may well run on. None keeps it as it is.
                self.log.warning("%s: cannot tell whether %s still runs: its host %s does not answer (%s)",
                                 self._log_name, self.session, self.host, unreachable[self.host])
                return None
            await asyncio.sleep(0.5 * (attempt + 1))  # the hand-off between two agents' lists
        return 0

    def _moved_to(self, host):
        """The session runs elsewhere now (elsa-hub-service moved it): record the new address so
        the hub shows it and its route checks send the proxy there, never back."""
        old = self.host
        self.host = host
        if self.server is not None:
            self.server.ip = self.cfg.host(host).address
        self.orm_spawner.state = self.get_state()
        self.db.commit()
        self.log.info("%s: session %s moved %s -> %s; server now at %s", self._log_name, self.session, old, host,
                      self.server.host if self.server else "?")

    # Stop ------------------------------------------------------------------------------------
    async def stop(self, now=False):
        fleet = self.fleet
        host, info, unreachable = await fleet.locate_or_unreachable(self.session, prefer=self.host)
        if host is None and unreachable:
            # It may run on a host that does not answer: a stop that "succeeds" would let the hub
            # forget a running server (and, without a checkpoint to resume, revoke its token).
            down = ", ".join(f"{h} ({e})" for h, e in sorted(unreachable.items()))
            raise RuntimeError(f"cannot stop {self.user.name}'s server: it may run on a host that does not answer: "
                               f"{down}")
        if host is None:
            self.log.info("%s: session %s is not running; nothing to checkpoint", self._log_name, self.session)
            self.will_resume = bool(self.checkpoint_id and self.resume_token)
            return
        try:
            report = await fleet.client(host).call("checkpoint", name=self.session, timeout=600)
        except AgentError as e:
            # Stopping it anyway would lose everything since the last checkpoint. It runs on, and
            # the stop fails: JupyterHub keeps the API token (it deletes it only after a stop that
            # returns), and the next start finds the session running and adopts it.
            self.log.error("%s: checkpoint of %s on %s failed; it keeps running there: %s", self._log_name,
                           self.session, host, e)
            raise RuntimeError(f"could not save {self.user.name}'s server, so it was not stopped (it runs on "
                               f"{host}, nothing lost): {e}") from e
        manifest = report["checkpoint"]
        self.checkpoint_id, self.checkpoint_host = manifest["id"], host
        self.will_resume = True
        self.log.info("%s: checkpointed %s on %s as %s (%.0f MiB, dump %.2f s)", self._log_name, self.session, host,
                      manifest["id"], manifest["size_bytes"] / 2**20, report["timings"]["dump_seconds"])
