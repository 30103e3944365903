"""The service's operations on sessions: live migration (with elsa-proxy paused around it and the
hub's view followed), draining a host, checkpoint retention, rightsizing proposals, and jobs that
report their progress while they run."""

import asyncio
import itertools
import time
from datetime import datetime, timezone

from .agent import AgentError, event_bytes, progress_percent
from .config import route_path
from .fleet import Fleet, owner_of, session_port
from .proxy import ProxyError


class OperationError(RuntimeError):
    pass


class Job:
    """A long operation (migration, drain) the admin page and API clients follow."""

    _ids = itertools.count(1)

    def __init__(self, kind, target, requested_by):
        self.id = str(next(self._ids))
        self.kind, self.target, self.requested_by = kind, target, requested_by
        self.state, self.percent, self.events, self.result, self.error = "running", 0, [], None, None
        self.started = time.time()
        self._t0 = time.monotonic()
        self.done = asyncio.Event()

    def say(self, phase, detail, percent=None, **extra):
        if percent is not None:
            self.percent = max(self.percent, int(percent))
        self.events.append(dict(t=round(time.monotonic() - self._t0, 3), phase=phase, detail=detail,
                                percent=self.percent, **extra))

    def finish(self, result=None, error=None):
        self.result, self.error = result, error
        self.state = "failed" if error else "done"
        if not error:
            self.percent = 100
        self.done.set()

    def to_json(self):
        return {"id": self.id, "kind": self.kind, "target": self.target, "requested_by": self.requested_by,
                "state": self.state, "percent": self.percent, "events": self.events, "result": self.result,
                "error": self.error, "started": self.started}


class Operations:
    def __init__(self, cfg, proxy, hub):
        self.cfg, self.proxy, self.hub = cfg, proxy, hub
        self.fleet = Fleet(cfg)
        self.jobs = {}
        self._busy = set()  # sessions being migrated by this service

    def new_job(self, kind, target, requested_by):
        job = Job(kind, target, requested_by)
        self.jobs[job.id] = job
        for old in sorted(self.jobs.values(), key=lambda j: j.started)[:-50]:  # keep the last 50
            self.jobs.pop(old.id, None)
        return job

    # Migration -------------------------------------------------------------------------------
    async def migrate(self, session, dest, job, scale=(0, 100), hub_wait_s=60):
        """Moves a running session to host `dest` while elsa-proxy holds its browsers' websockets:
        migrate (elsad, live), pausing the route at the agent's freeze gate and resuming it to the
        new address once the session runs there; then wait until the
        hub records the server at its new place (ElsaSpawner.poll), so its route checks keep the
        proxy there. Returns the timeline; raises OperationError with what went wrong."""
        lo, hi = scale
        pct = lambda p: lo + (hi - lo) * p / 100  # noqa: E731
        dest_host = self.cfg.host(dest)
        source, info = await self.fleet.locate(session)
        if source is None:
            raise OperationError(f"session {session} is not running on any reachable host")
        if source == dest:
            raise OperationError(f"session {session} already runs on {dest}")
        if session in self._busy:
            raise OperationError(f"session {session} is already being migrated")
        port = session_port(info)
        user, server = owner_of(session)
        route = route_path(user, server) if user is not None else None
        timeline = {"session": session, "from": source, "to": dest, "rss_bytes": info.get("rss_bytes", 0)}
        t0 = time.monotonic()
        mark = lambda key: timeline.__setitem__(key, round(time.monotonic() - t0, 3))  # noqa: E731
        self._busy.add(session)
        self.fleet.mark_migrating(session, source, dest)
        paused = False
        try:
            async def pause_route():
                # At the agent's freeze gate: the browsers wait for the freeze only, not for the
                # pre-copy rounds before it. An error here cancels with the session running.
                nonlocal paused
                try:
                    state = await self.proxy.pause(route)
                except ProxyError as e:
                    raise OperationError(f"cannot pause the proxy route {route}: {e}") from None
                paused = state is not None
                mark("paused_at")
                job.say("pause", f"proxy route {route} paused"
                        + (f" ({state.get('drained', 0)} backend websockets closed)" if state else " (no route)"),
                        pct(54))

            new_target = f"http://{dest_host.address}:{port}"
            early_resume = None

            async def resume_to_destination():
                resumed = await self.proxy.resume(route, new_target)
                mark("resumed_at")
                job.say("resume", f"proxy route {route} -> {new_target}: {resumed.get('reconnected', 0)} websockets "
                        f"reconnected, {resumed.get('failed', 0)} failed", pct(88))
                timeline["proxy"] = {"target": new_target, "reconnected": resumed.get("reconnected", 0),
                                     "failed": resumed.get("failed", 0)}

            def on_event(event):
                nonlocal early_resume, paused
                p = progress_percent("migrate", event, 0)
                job.say(event.get("phase", ""), event.get("detail", ""), pct(5 + 0.85 * p), bytes=event_bytes(event))
                # The session runs on the destination from "running" on, while post-copy still
                # brings its memory: the browsers' websockets go there now, not when the source
                # has handed over its last page.
                if event.get("phase") == "running" and paused and early_resume is None:
                    early_resume = asyncio.get_running_loop().create_task(resume_to_destination())
                    paused = False
            mig = self.cfg.migration
            try:
                report = await self.fleet.client(source).call(
                    "migrate", name=session, to=dest_host.peer, mode=mig.get("mode", "hybrid"),
                    max_downtime_ms=int(mig.get("max_downtime_ms", 150)), on_event=on_event,
                    on_freeze_gate=pause_route if route else None)
            except AgentError as e:
                if early_resume is not None:
                    # Post-copy failed after the hand-over: the agent resumed the session on the
                    # source, so the route goes back there.
                    await asyncio.gather(early_resume, return_exceptions=True)
                    back = f"http://{self.cfg.host(source).address}:{port}"
                    try:
                        await self.proxy.pause(route)
                        await self.proxy.resume(route, back)
                    except ProxyError as pe:
                        raise OperationError(f"{e}; and the proxy route {route} could not go back to {back}: {pe}") \
                            from None
                elif paused:  # the agent rolled the session back on the source: resume it there
                    await self.proxy.resume(route)
                    paused = False
                raise OperationError(str(e)) from None
            mark("migrated_at")
            timeline["agent"] = report
            if early_resume is not None:
                await early_resume
            elif paused:
                paused = False
                await resume_to_destination()
        finally:
            if paused:  # an unexpected error: never leave a route paused
                try:
                    await self.proxy.resume(route)
                except ProxyError:
                    pass
            self.fleet.unmark_migrating(session)
            self._busy.discard(session)
        if user is not None and self.hub is not None:
            job.say("hub", "waiting for the hub to record the server on " + dest, pct(94))
            deadline = time.monotonic() + hub_wait_s
            while time.monotonic() < deadline:
                state = await self.hub.server_state(user, server)
                if state and state.get("host") == dest:
                    mark("hub_updated_at")
                    job.say("hub", f"the hub shows {user}'s server on {dest}", pct(100))
                    break
                await asyncio.sleep(0.5)
            else:
                timeline["hub_updated_at"] = None
                job.say("hub", f"the hub has not recorded the move within {hub_wait_s} s (its spawner polls "
                        "every poll_interval)", pct(100))
        timeline["total_seconds"] = round(time.monotonic() - t0, 3)
        return timeline

    async def run_migration(self, session, dest, job):
        try:
            job.finish(await self.migrate(session, dest, job))
        except Exception as e:  # noqa: BLE001 - the job carries the reason to the caller
            job.finish(error=str(e))

    # Drain -----------------------------------------------------------------------------------
    async def run_drain(self, host, deadline_s, job):
        """Migrates every session off `host`, smallest first, starting none after the deadline;
        reports per session whether it made it and in how long."""
        t0 = time.monotonic()
        try:
            self.cfg.host(host)
            sessions, errors = await self.fleet.sessions_by_host()
            if host in errors:
                raise OperationError(f"host {host} is unreachable: {errors[host]}")
            todo = sorted((s for s in sessions[host].values() if s.get("state") == "running"),
                          key=lambda s: s.get("rss_bytes", 0))
            results = []
            job.say("drain", f"{len(todo)} sessions to move off {host} within {deadline_s} s", 1)
            for i, s in enumerate(todo):
                left = deadline_s - (time.monotonic() - t0)
                entry = {"session": s["name"], "user": owner_of(s["name"])[0], "rss_bytes": s.get("rss_bytes", 0)}
                if left <= 0:
                    results.append(dict(entry, ok=False, error="not started: the deadline had passed"))
                    continue
                sessions, _ = await self.fleet.sessions_by_host()
                dest = self.fleet.pick_host(sessions, exclude={host}, need_bytes=s.get("rss_bytes", 0))
                if dest is None:
                    results.append(dict(entry, ok=False, error="no other host has room"))
                    continue
                started = time.monotonic()
                scale = (100 * i / len(todo), 100 * (i + 1) / len(todo))
                try:
                    timeline = await self.migrate(s["name"], dest.name, job, scale=scale, hub_wait_s=0)
                    seconds = time.monotonic() - started
                    results.append(dict(entry, ok=True, to=dest.name, seconds=round(seconds, 3),
                                        within_deadline=time.monotonic() - t0 <= deadline_s,
                                        downtime_seconds=timeline.get("agent", {}).get("downtime_seconds")))
                except Exception as e:  # noqa: BLE001 - reported per session; the drain goes on
                    results.append(dict(entry, ok=False, error=str(e)))
            made = [r for r in results if r.get("ok") and r.get("within_deadline")]
            job.finish({"host": host, "deadline_s": deadline_s, "seconds": round(time.monotonic() - t0, 3),
                        "moved": len(made), "total": len(todo), "sessions": results})
        except Exception as e:  # noqa: BLE001
            job.finish(error=str(e))

    # Retention -------------------------------------------------------------------------------
    async def apply_retention(self):
        """Per session: keeps the newest `keep` checkpoints (never fewer than one) and drops any
        older than `max_age_days` but the newest. Returns what was removed."""
        keep = max(1, int(self.cfg.retention.get("keep", 3)))
        max_age = float(self.cfg.retention.get("max_age_days", 0)) * 86400
        now = datetime.now(timezone.utc)
        by_session = {}
        for c in await self.fleet.checkpoints():  # newest first
            by_session.setdefault(c["session"], []).append(c)
        removed = []
        for session, cps in by_session.items():
            if owner_of(session)[0] is None:
                continue  # not a hub session: not ours to prune
            for i, c in enumerate(cps):
                age = (now - _parse_time(c.get("created_at", ""))).total_seconds()
                if i >= keep or (i > 0 and max_age and age > max_age):
                    try:
                        await self.fleet.client(c["host"]).call("rm", checkpoint=c["id"], timeout=300)
                        removed.append({"id": c["id"], "host": c["host"], "size_bytes": c.get("size_bytes", 0)})
                    except AgentError as e:
                        removed.append({"id": c["id"], "host": c["host"], "error": str(e)})
        return removed

    # Rightsizing -----------------------------------------------------------------------------
    async def rightsizing_proposals(self):
        """Sessions whose memory crosses `threshold` of their host's capacity, each with the host
        it would fit on (below the threshold there, with room left), if any."""
        threshold = float(self.cfg.rightsizing.get("threshold", 0.8))
        sessions, _ = await self.fleet.sessions_by_host()
        load = self.fleet.load(sessions)
        out = []
        for host_name, ss in sessions.items():
            host = self.cfg.host(host_name)
            if not host.capacity_mib:
                continue
            for s in ss.values():
                rss = s.get("rss_bytes", 0)
                if s.get("state") != "running" or rss < threshold * host.capacity_bytes:
                    continue
                fits = [h for h in self.cfg.hosts if h.name != host_name and h.name in sessions and h.capacity_mib
                        and rss < threshold * h.capacity_bytes and load[h.name] + rss <= h.capacity_bytes]
                dest = max(fits, key=lambda h: h.capacity_bytes - load[h.name], default=None)
                out.append({"session": s["name"], "user": owner_of(s["name"])[0], "host": host_name,
                            "rss_bytes": rss, "capacity_bytes": host.capacity_bytes,
                            "ratio": round(rss / host.capacity_bytes, 3), "threshold": threshold,
                            "propose": dest.name if dest else None,
                            "reason": (f"uses {rss / host.capacity_bytes:.0%} of {host_name}'s "
                                       f"{host.capacity_mib} MiB (threshold {threshold:.0%})"
                                       + ("" if dest else "; no host has room for it"))})
        return out


def _parse_time(text):
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime.now(timezone.utc)
