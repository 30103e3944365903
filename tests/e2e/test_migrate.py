"""Live migration between two simulated hosts (network namespaces, an elsad on each, agents
authenticated by a shared secret): a real Jupyter session moves from h1 to h2 with its kernel
state, and every failure before h2 runs it leaves it running on h1."""

import os
import secrets
import sys
import time

import pytest
from elsa_agent import ElsaAgent, alive, start_jupyter, tree_pids
from elsa_jupyter import JupyterServer
from test_checkpoint_restore import CHECK_ARRAY, set_state

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools"))

PEER_PORT = 7077
SESSION_MIB = 512  # the kernel's array in the migration tests


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "peer-secret"
    path.write_text(secrets.token_hex(24) + "\n")
    path.chmod(0o600)
    return str(path)


def host_agent(bin_dir, hosts, host, secret_file):
    return ElsaAgent(bin_dir, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), netns=hosts.netns(host),
                     extra_args=["--listen", f"{hosts.address(host)}:{PEER_PORT}", "--peer-secret-file", secret_file])


def run_on_h1(a1, hosts, workdir, mib=SESSION_MIB):
    with hosts.inside("h1"):
        server = start_jupyter(a1, "alice", workdir, host="0.0.0.0")
    at_h1 = JupyterServer(hosts.address("h1"), server.port, server.token)
    with hosts.inside("h2"):
        kernel = set_state(at_h1, mib)  # closes its websocket: no connection from outside at the freeze
    return server, kernel


# A thread in the kernel keeps writing to part of the array while it migrates.
START_WRITER = """
import threading, time
n, stop_writer = 0, threading.Event()
def _writer():
    global n
    while not stop_writer.is_set():
        arr[:4096] += 1.0
        n += 1
        time.sleep(0.005)
writer = threading.Thread(target=_writer, daemon=True)
writer.start()
"""


@pytest.mark.parametrize("mode", ["precopy", "postcopy", "hybrid"])
def test_a_session_moves_with_its_kernel_state(hosts, bin_dir, workdir, secret_file, mode):
    with host_agent(bin_dir, hosts, "h1", secret_file) as a1, host_agent(bin_dir, hosts, "h2", secret_file) as a2:
        server, kernel = run_on_h1(a1, hosts, workdir)
        at_h1 = JupyterServer(hosts.address("h1"), server.port, server.token)
        with hosts.inside("h2"):
            conn = at_h1.connect(kernel, session_id="e2e-session")
        assert conn.execute(START_WRITER)["status"] == "ok"
        conn.close()
        pids = tree_pids(a1.sessions()["alice"]["pid"])
        report = a1.json("migrate", "alice", "--to", hosts.address("h2"), "--mode", mode)
        print(report)
        assert report["address"] == hosts.address("h2")
        phases = report["phases"]
        if mode == "precopy":  # CRIU's own freeze time (a lazy dump's statistics are reset)
            assert 0 < phases["freeze_seconds"] <= phases["dump_seconds"]
        assert report["downtime_seconds"] >= phases["dump_seconds"] + phases["restore_seconds"]
        pages = report["pages"]
        session_pages = SESSION_MIB * 256
        if mode == "postcopy":
            assert not report["precopy_rounds"]
            assert pages["lazy"] >= session_pages, "the array's memory followed the session"
            assert pages["postcopy"] >= session_pages * 0.9, "post-copy sent it"
        elif mode == "precopy":
            assert report["precopy_rounds"], "pre-copy ran"
            assert pages["dumped"] >= session_pages
            assert pages["deduplicated"] >= session_pages * 0.9, "pre-copy delivered most pages"
        else:
            assert report["precopy_rounds"], "pre-copy ran"
            # Once in CI, CRIU's lazy dump wrote the array into the images instead of leaving it
            # lazy (in_images ~146k pages, 3.2 s of downtime; not reproduced since): the memory
            # still followed, and what stayed lazy had mostly been pre-copied.
            assert pages["lazy"] + pages["in_images"] >= session_pages, "the array's memory followed the session"
            assert pages["deduplicated"] >= pages["lazy"] * 0.9, "pre-copy delivered most lazy pages"
            assert pages["postcopy"] < pages["lazy"] * 0.1, "after pre-copy, post-copy sent only what changed"
        assert "alice" not in a1.sessions(), "h1 let it go"
        assert not [p for p in pids if alive(p)], "nothing left running on h1"
        assert a2.sessions()["alice"]["state"] == "running"

        at_h2 = JupyterServer(hosts.address("h2"), server.port, server.token)
        with hosts.inside("h1"):
            at_h2.wait_ready(timeout=30)
            conn = at_h2.connect(kernel, session_id="e2e-session")
        assert conn.eval("x + 1") == "42"
        # The writer carries on on h2, and every write it made, here or there, is in the array.
        n1 = int(conn.eval("n"))
        time.sleep(0.5)
        assert int(conn.eval("n")) > n1, "the kernel's writer thread runs on h2"
        assert conn.execute("stop_writer.set(); writer.join()")["status"] == "ok"
        assert conn.eval("int(round(arr[0] - np.random.default_rng(7).random(1)[0])) == n") == "True"
        assert conn.eval("hashlib.sha256(arr[4096:].tobytes()).hexdigest() == "
                         "hashlib.sha256(np.random.default_rng(7).random(arr.size)[4096:].tobytes()).hexdigest()") == "True"
        conn.close()


def test_a_client_behind_elsa_proxy_keeps_executing_cells_across_a_migration(bin_dir):
    """The README demo's migration: a client on a third host runs a cell every 100 ms through
    elsa-proxy while the session moves; every cell is answered, in order, with the right value."""
    import demo_migration
    proxy_bin = os.path.join(os.path.dirname(bin_dir), "proxy", "elsa-proxy")
    if not os.access(proxy_bin, os.X_OK):
        pytest.fail(f"no elsa-proxy at {proxy_bin}: build it (ELSA_BUILD_PROXY=ON)")

    class Steps:
        def __call__(self, title):
            return self

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

    summary = demo_migration.run(Steps(), lambda text: None, bin_dir, proxy_bin, 64)
    assert "client connected throughout" in summary
