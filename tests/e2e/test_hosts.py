"""Simulated hosts (tools/pylib/elsa_hosts.py): network namespaces joined by a switch, an elsad
on each. The migration tests stand on this: sessions on one host reachable from another at that
host's private address, checkpoint and restore working inside a host, and nothing left after."""

import os
import subprocess

from elsa_agent import ElsaAgent, start_jupyter
from test_checkpoint_restore import CHECK_ARRAY, set_state


def test_a_session_on_one_host_serves_the_other_and_restores_in_place(hosts, bin_dir, workdir):
    with ElsaAgent(bin_dir, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), netns=hosts.netns("h1")) as a1, \
            ElsaAgent(bin_dir, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), netns=hosts.netns("h2")):
        with hosts.inside("h1"):
            server = start_jupyter(a1, "alice", workdir, host="0.0.0.0")
        # From the other host, at h1's address.
        from elsa_jupyter import JupyterServer
        remote = JupyterServer(hosts.address("h1"), server.port, server.token)
        with hosts.inside("h2"):
            kernel = set_state(remote)
            conn = remote.connect(kernel, session_id="e2e-session")
        assert conn.eval("x + 1") == "42"
        conn.close()
        # The machine's own network does not see it.
        own = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert hosts.address("h1") not in own

        cp = a1.json("checkpoint", "alice")["checkpoint"]
        a1.json("restore", cp["id"])
        with hosts.inside("h2"):
            remote.wait_ready(timeout=30)
            conn = remote.connect(kernel, session_id="e2e-session")
        assert conn.eval(CHECK_ARRAY) == "True"
        assert conn.eval("x") == "41"
        conn.close()


def test_tools_hosts_acts_on_the_hosts_up_made_without_being_told_how_many():
    """`tools/hosts up --hosts 3`, then exec/status/shape/down find h1..h3 by themselves."""
    from elsa_hosts import SimulatedHosts

    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "hosts")
    prefix = f"t{os.getpid() % 100000}"

    def run(*args):
        return subprocess.run([tool, "--prefix", prefix, *args], capture_output=True, text=True, timeout=60)
    try:
        assert run("up", "--hosts", "3", "--rate", "1gbit").returncode == 0
        r = run("exec", "h3", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        assert r.returncode == 0 and "inet 10.213.0.3/24" in r.stdout, r.stderr
        status = run("status").stdout.splitlines()
        assert [line.split()[0] for line in status] == ["h1", "h2", "h3"], status
        assert all(line.split()[-2:] == ["link", "1gbit"] for line in status), status
        assert run("shape", "--rate", "none").returncode == 0
        assert "link" not in run("status").stdout
        r = run("exec", "h4", "--", "true")
        assert r.returncode != 0 and "one of h1, h2, h3" in r.stderr
        assert run("down").returncode == 0
        assert SimulatedHosts.discover(prefix) is None
        r = run("exec", "h1", "--", "true")
        assert r.returncode != 0 and "tools/hosts up" in r.stderr
    finally:
        left = SimulatedHosts.discover(prefix)
        if left is not None:
            left.remove()
