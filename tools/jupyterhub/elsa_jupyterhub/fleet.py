"""What the spawner and the service both need to know about the hosts: where a session runs, the
checkpoints of a session, which host has room, and the markers of migrations in flight."""

import asyncio
import json
import os
import re
import time

from .agent import AgentClient, AgentError
from .config import parse_session_name

MARKER_MAX_AGE_S = 900  # a migration marker older than this is stale (its writer died)


class Fleet:
    def __init__(self, cfg):
        self.cfg = cfg
        self.clients = {h.name: AgentClient(h) for h in cfg.hosts}

    def client(self, host_name):
        return self.clients[self.cfg.host(host_name).name]

    async def sessions_by_host(self):
        """{host: {session: info}} and {host: error} for hosts whose agent did not answer."""
        names = [h.name for h in self.cfg.hosts]
        results = await asyncio.gather(*(self.clients[n].sessions() for n in names), return_exceptions=True)
        ok, errors = {}, {}
        for n, r in zip(names, results):
            if isinstance(r, Exception):
                errors[n] = str(r)
            else:
                ok[n] = r
        return ok, errors

    async def locate(self, name, prefer=None):
        """(host_name, info) of the running session `name`, asking `prefer`'s agent first;
        (None, None) if no agent that answered runs it."""
        host, info, _ = await self.locate_or_unreachable(name, prefer)
        return host, info

    async def locate_or_unreachable(self, name, prefer=None):
        """locate(), and {host: error} of the agents that did not answer: "not found" is only
        "not running" when that is empty."""
        order = [prefer] if prefer in self.clients else []
        order += [n for n in self.clients if n != prefer]
        unreachable = {}
        for host in order:
            try:
                info = (await self.clients[host].sessions()).get(name)
            except AgentError as e:
                unreachable[host] = str(e)
                continue
            if info and info.get("state") == "running":
                return host, info, unreachable
        return None, None, unreachable

    async def checkpoints(self):
        """Every checkpoint on every reachable host, each with 'host' set to the host's name
        (the manifest's own 'host' is the machine's hostname), newest first."""
        names = [h.name for h in self.cfg.hosts]
        results = await asyncio.gather(*(self.clients[n].checkpoints() for n in names), return_exceptions=True)
        out = []
        for n, r in zip(names, results):
            if isinstance(r, Exception):
                continue
            for c in r:
                out.append(dict(c, machine=c.get("host", ""), host=n))
        out.sort(key=lambda c: c.get("created_at", ""), reverse=True)
        return out

    async def checkpoints_of(self, session):
        return [c for c in await self.checkpoints() if c.get("session") == session]

    def load(self, sessions_by_host):
        """{host: bytes of RSS of its running sessions}."""
        return {h: sum(s.get("rss_bytes", 0) for s in ss.values() if s.get("state") == "running")
                for h, ss in sessions_by_host.items()}

    def pick_host(self, sessions_by_host, size=None, exclude=(), need_bytes=0):
        """The reachable host with the most free capacity (hosts without a capacity: the one with
        the fewest sessions), optionally of a `size` label; None if none fits."""
        load = self.load(sessions_by_host)
        best, best_key = None, None
        for h in self.cfg.hosts:
            if h.name in exclude or h.name not in sessions_by_host or (size and h.size != size):
                continue
            running = sum(1 for s in sessions_by_host[h.name].values() if s.get("state") == "running")
            free = h.capacity_bytes - load[h.name] if h.capacity_mib else None
            if free is not None and free < need_bytes:
                continue
            key = (1, free, -running) if free is not None else (0, -running, 0)
            if best_key is None or key > best_key:
                best, best_key = h, key
        return best

    # Migration markers: written by whoever migrates (the service), read by the spawner's poll, so
    # the hub never takes a session in flight for dead.
    def _marker(self, session):
        return os.path.join(self.cfg.migrations_dir, session + ".json")

    def mark_migrating(self, session, source, dest):
        os.makedirs(self.cfg.migrations_dir, mode=0o700, exist_ok=True)
        tmp = self._marker(session) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"session": session, "from": source, "to": dest, "started": time.time()}, f)
        os.replace(tmp, self._marker(session))

    def unmark_migrating(self, session):
        try:
            os.unlink(self._marker(session))
        except FileNotFoundError:
            pass

    def migrating(self, session):
        """The marker of a migration of `session` in flight, or None."""
        try:
            with open(self._marker(session)) as f:
                marker = json.load(f)
        except (OSError, ValueError):
            return None
        return marker if time.time() - marker.get("started", 0) < MARKER_MAX_AGE_S else None


def session_port(info):
    """The single-user server's port, from the session's command line (ElsaSpawner passes
    --port=N), which is what the agent itself knows about the session."""
    for arg in info.get("command", []):
        m = re.fullmatch(r"--port=(\d+)", arg)
        if m:
            return int(m.group(1))
    return None


def owner_of(session):
    parsed = parse_session_name(session)
    return parsed if parsed else (None, None)
