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
