"""`kill -9` of an agent on either side of a live migration at each of its phases (#17). Each
time, the migration ends as the surviving side decides, a new agent starts on the killed side's
state directory, and once it has settled the session runs in exactly one place: one agent's
`elsa ps` lists it as running, nothing of it is left on the other host, the kernel answers with
its state, and a checkpoint of it works. Each case prints where the session ended and what the
new agent logged (`-s` shows the table)."""

import os
import subprocess
import threading
import time

import pytest
from elsa_agent import describe_tree
from elsa_jupyter import JupyterServer
from test_checkpoint_restore import CHECK_ARRAY
from test_migrate import host_agent, run_on_h1, secret_file  # noqa: F401 (fixture)
from test_migrate_faults import api_migrate, kill_stray_processes

MIB = 128  # the kernel's array: small enough for a case to take seconds

# phase -> (mode, the source's progress event at which the kill happens, link rate from the start)
# - precopy: hybrid's first round of 128 MiB takes seconds on a 200 Mbit/s link; the kill comes
#   once the destination is ready (its log), before the round's own event.
# - images: hybrid's images (no memory) cross in milliseconds; the link slows at the freeze.
# - postcopy: hybrid's post-copy is refs only (milliseconds): `postcopy` mode pushes the memory.
# - commit: no outside event lands between `delivered` and `commit`: the source is started with
#   --test-fault hang-before-commit (it reports `commit`, then waits), the destination with
#   die-at-commit (SIGKILL on receiving `commit`, before it answers).
# - committed: the commit's other half, each side SIGKILLed by --test-fault die-after-committed
#   (the destination once its `committed` is flushed, the source once it received it).
# - restore-sent (source only): SIGKILLed once its `restore` is delivered, so the destination's
#   restore runs while the pages it faults on have no source any more (an outside kill at the
#   `restore` event lands on either side of that message).
# - standing-alone (destination only): SIGKILLed once its copy outlives it, before `committed`.
#   The source, refused by the dead agent, used to take that for "no copy there" and resume: two
#   copies ran. It stays frozen until the new agent answers that it runs the session.
PHASES = {
    "precopy": ("hybrid", None, "200mbit"),
    "freeze": ("hybrid", "freeze", None),
    "images": ("hybrid", "transfer", None),
    "restore": ("hybrid", "restore", None),
    "postcopy": ("postcopy", "postcopy", "200mbit"),
    "commit": ("hybrid", "commit", None),
    "committed": ("hybrid", None, None),
    "standing-alone": ("hybrid", None, None),
    "restore-sent": ("hybrid", None, None),
}
FAULTS = {("source", "commit"): "hang-before-commit", ("destination", "commit"): "die-at-commit",
          ("source", "committed"): "die-after-committed", ("destination", "committed"): "die-after-committed",
          ("destination", "standing-alone"): "die-after-standing-alone",
          ("source", "restore-sent"): "die-after-restore-sent"}
SETTLE_SECONDS = 90  # the new agent's question to the other side, and the other side's answer


def wait_for(what, condition, seconds, explain=lambda: ""):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s\n{explain()}")
        time.sleep(0.2)


def netns_pids(hosts, host):
    out = subprocess.run(["ip", "netns", "pids", hosts.netns(host)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def describe(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return f"{pid} [{state}] {cmd[:120]}"
    except OSError:
        return f"{pid} (gone)"


def leftovers(hosts, host, agent):
    """What runs on `host` besides its agent: of a host not holding the session, nothing should."""
    return [describe(p) for p in netns_pids(hosts, host) if p != agent.proc.pid and os.path.exists(f"/proc/{p}")]


def frozen_record(agent):
    return os.path.join(agent.state_dir, "run", "frozen-alice.json")


def log_lines(text):
    """What the agent said, without its start-up lines."""
    chatter = ("using CRIU", "other agents reach", "serving ")
    return [line.strip() for line in text.splitlines() if line.strip() and not any(c in line for c in chatter)]


class Killer:
    """Kills `victim`'s agent (SIGKILL) at the source's progress event `event`, or for the
    precopy case once the destination is ready and pre-copy under way; remembers the phases the
    source had reported by then."""

    def __init__(self, hosts, phase, event, victim, a2):
        self.hosts, self.phase, self.event, self.victim, self.a2 = hosts, phase, event, victim, a2
        self.phases_at_kill = None
        self.lock = threading.Lock()
        self.seen = []
        self.timeline = []  # (seconds, phase): where a slow case spent its time
        self.start = time.monotonic()

    def kill(self):
        with self.lock:
            if self.phases_at_kill is None and self.victim.proc.poll() is None:
                self.victim.proc.kill()
                self.phases_at_kill = list(self.seen)

    def _during_precopy(self):
        deadline = time.monotonic() + 30
        while "incoming migration (" not in self.a2.agent_log() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1)  # a round of 128+ MiB at 200 Mbit/s takes 5 s or more
        self.kill()

    def on_event(self, msg, answer):
        phase = msg.get("phase") or msg["event"]
        with self.lock:
            self.seen.append(phase)
            self.timeline.append(f"{phase} {time.monotonic() - self.start:.1f}")
        if self.phase == "precopy" and phase == "connect":
            threading.Thread(target=self._during_precopy, daemon=True).start()
        elif self.phase == "images" and phase == "freeze":
            self.hosts.shape("10mbit")  # the images (a few MiB) now take seconds
        elif phase == self.event:
            self.kill()


def run_case(hosts, workdir, side, phase, a1, a2):
    mode, event, rate = PHASES[phase]
    victim, survivor = (a1, a2) if side == "source" else (a2, a1)
    a1.start()
    a2.start()
    server, kernel = run_on_h1(a1, hosts, workdir, mib=MIB)
    if rate:
        hosts.shape(rate)
    killer = Killer(hosts, phase, event, victim, a2)
    started = time.monotonic()
    try:
        _, reply = api_migrate(a1, hosts.address("h2"), killer.on_event, mode=mode)
    except (RuntimeError, OSError, ValueError) as e:  # the source's agent died: no reply
        reply = {"ok": None, "error": {"message": f"no reply: {e}"}}
    # The kill happened at the phase asked for (by the test, or by the agent's --test-fault).
    victim.proc.wait(timeout=180)
    times = {"migration": time.monotonic() - started}
    if killer.phases_at_kill is not None:
        if phase == "precopy":  # the destination was ready, round 1 not yet over
            assert killer.phases_at_kill == ["connect"], killer.phases_at_kill
        else:
            assert killer.phases_at_kill[-1] == event, killer.phases_at_kill
    else:
        assert FAULTS.get((side, phase)), "the agent was killed"
        assert victim.proc.returncode == -9, victim.proc.returncode
    hosts.shape(None)
    # The surviving side's outcome: the source's reply, or the destination's end of it.
    if survivor is a2:
        wait_for("the destination ends its half of the migration", lambda: "incoming migration over" in a2.agent_log(),
                 60, lambda: a2.agent_log()[-3000:])
    times["survivor"] = time.monotonic() - started
    outcome = (reply.get("error") or {}).get("message", "migrated") if survivor is a1 else \
        [line for line in a2.agent_log().splitlines() if "incoming migration over" in line][-1]

    # A new agent, without the fault, on the killed side's state directory.
    offset = len(victim.agent_log())
    victim.extra_args = [a for a in victim.extra_args if a not in ("--test-fault", FAULTS.get((side, phase)))]
    victim.start()
    times["restart"] = time.monotonic() - started
    wait_for("every frozen copy settled", lambda: not any(os.path.exists(frozen_record(a)) for a in (a1, a2)),
             SETTLE_SECONDS, lambda: a1.agent_log()[-3000:] + "\n" + a2.agent_log()[-3000:])
    times["settled"] = time.monotonic() - started
    time.sleep(0.5)  # a copy ended is reaped by its monitor, whose exit the agent then reads
    new_agent_said = log_lines(victim.agent_log()[offset:])

    listed = {h: a.sessions().get("alice") for h, a in (("h1", a1), ("h2", a2))}
    running = [h for h, s in listed.items() if s and s["state"] == "running"]
    killed_at = ("in pre-copy round 1" if phase == "precopy" else f"at `{killer.phases_at_kill[-1]}`") \
        if killer.phases_at_kill else "by its --test-fault"
    events = ", ".join(e for e in killer.timeline if not e.startswith("criu"))
    print(f"\nKILL-MATRIX | {side} | {phase} | {mode} | killed {killed_at} | survivor's outcome: {outcome} "
          f"| ended on {running} | new agent: {' / '.join(new_agent_said) or '-'} "
          f"| events (s): {events}; " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    assert len(running) == 1, f"running in exactly one place: {listed}"
    holder = running[0]
    other = "h2" if holder == "h1" else "h1"
    holding, not_holding = (a1, a2) if holder == "h1" else (a2, a1)
    assert not (listed[other] and listed[other]["state"] == "running")
    # Nothing of the session is left on the other host (a monitor reaping, at most, for a moment).
    left = []
    deadline = time.monotonic() + 10
    while (left := leftovers(hosts, other, not_holding)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left on {other}: {left}"
    assert holding.proc.poll() is None
    with hosts.inside(other):
        at = JupyterServer(hosts.address(holder), server.port, server.token)
        try:
            at.wait_ready(timeout=30)
        except Exception as e:
            raise AssertionError(f"{e}\n{describe_tree(listed[holder]['pid'])}") from None
        conn = at.connect(kernel, session_id="e2e-session")
    try:
        assert conn.eval("x + 1") == "42"
        assert conn.eval(CHECK_ARRAY) == "True"
    finally:
        conn.close()
    made = holding.json("checkpoint", "alice", "--leave-running")["checkpoint"]
    assert holding.json("verify", made["id"])["id"] == made["id"]
    assert holding.sessions()["alice"]["state"] == "running"
    return holder


ONE_SIDED = {"standing-alone": "destination", "restore-sent": "source"}
CASES = [(side, phase) for side in ("source", "destination") for phase in PHASES if ONE_SIDED.get(phase, side) == side]


@pytest.mark.parametrize("side,phase", CASES)
def test_an_agent_killed_mid_migration_leaves_the_session_in_exactly_one_place(hosts, bin_dir, workdir, secret_file,
                                                                               side, phase):
    a1 = host_agent(bin_dir, hosts, "h1", secret_file)
    a2 = host_agent(bin_dir, hosts, "h2", secret_file)
    fault = FAULTS.get((side, phase))
    if fault:
        (a1 if side == "source" else a2).extra_args += ["--test-fault", fault]
    if phase == "standing-alone":  # the source asks 3 x --peer-timeout before it leaves the copy in doubt
        a1.extra_args += ["--peer-timeout", "5"]
    try:
        run_case(hosts, workdir, side, phase, a1, a2)
    finally:
        for a in (a1, a2):
            a.close()
        for h in ("h1", "h2"):
            kill_stray_processes(hosts, h)
