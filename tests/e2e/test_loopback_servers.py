"""Only CRIU's own process may talk to the page servers a checkpoint, a lazy restore and a lazy
(post-copy) dump run on loopback. A local process connecting first used to be taken for CRIU:
a silent one stalled the dump, and a lazy server would have answered it with the session's
pages. An intruder here watches every loopback listener the agent or a CRIU it started owns,
and connects to each the moment it appears; every operation must still succeed as usual."""

import os
import socket
import threading
import time

from elsa_agent import start_jupyter
from test_checkpoint_restore import assert_state, set_state
from test_migrate import host_agent, run_on_h1, secret_file  # noqa: F401 (fixture)
from elsa_jupyter import JupyterServer

LISTEN = "0A"
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def descendants(root):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def may_run_a_page_server(pid, root):
    """The agent itself, or a CRIU dumping or serving lazy pages. Not a restoring CRIU: the
    session's own sockets (its kernels' listeners) come back to life in those processes, named
    "criu" until they are the session again."""
    if pid == root:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return cmdline.startswith("criu: dump") or " lazy-pages " in f" {cmdline} "


class Intruder:
    """Connects to every loopback TCP listener of `agent_pid` or of a CRIU under it, in that
    agent's network, holding each connection open and silent (the stall), and reading whatever
    it is sent (pages)."""

    def __init__(self, agent_pid, enter=None):
        self.agent_pid, self.enter = agent_pid, enter
        self.seen, self.received, self.owners = set(), 0, []
        self.stop, self.conns = threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _listeners(self):
        # CRIU holds the session's own sockets while it dumps them (the kernel's listeners among
        # them): those are the session's, not a page server.
        inodes, sessions = {}, set()
        for pid in descendants(self.agent_pid):
            ours = may_run_a_page_server(pid, self.agent_pid)
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        if ours:
                            inodes[link[8:-1]] = pid
                        else:
                            sessions.add(link[8:-1])
            except OSError:
                continue
        for inode in sessions:
            inodes.pop(inode, None)
        ports = {}
        try:
            with open(f"/proc/{self.agent_pid}/net/tcp") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    address, port = fields[1].split(":")
                    if fields[3] == LISTEN and address == LOOPBACK and fields[9] in inodes:
                        ports[int(port, 16)] = inodes[fields[9]]
        except OSError:
            pass
        return ports

    def _run(self):
        if self.enter:
            self.enter()
        while not self.stop.is_set():
            listeners = self._listeners()
            for port in listeners.keys() - self.seen:
                self.seen.add(port)
                self.owners.append((port, listeners[port]))
                try:
                    self.conns.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                except OSError:
                    pass
            for conn in self.conns:
                try:
                    conn.setblocking(False)
                    while data := conn.recv(65536):
                        self.received += len(data)
                except (BlockingIOError, OSError):
                    pass
            time.sleep(0.001)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        for conn in self.conns:
            conn.close()
        print(f"intruder: saw listeners {self.owners}, received {self.received} bytes")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_a_local_process_cannot_stall_a_checkpoint_or_read_a_lazy_restores_pages(agent, workdir):
    server = start_jupyter(agent, "nb", workdir)
    kernel = set_state(server)
    with Intruder(agent.proc.pid) as intruder:
        checkpoint = agent.json("checkpoint", "nb", timeout=90)["checkpoint"]
        agent.json("restore", checkpoint["id"], "--lazy", timeout=90)
        assert_state(server, kernel)
        deadline = time.monotonic() + 60
        while agent.sessions()["nb"].get("lazy", {}).get("paging_in") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert intruder.received == 0, "a stranger read from a page server"
    assert agent.json("verify", checkpoint["id"])["files"] == checkpoint["files"]


def test_a_local_process_cannot_stall_a_lazy_dump_or_read_its_pages(hosts, bin_dir, workdir, secret_file):
    with host_agent(bin_dir, hosts, "h1", secret_file) as a1, host_agent(bin_dir, hosts, "h2", secret_file) as a2:
        server, kernel = run_on_h1(a1, hosts, workdir, mib=128)

        def enter_h1():
            hosts.inside("h1").__enter__()  # this thread only, for as long as it lives

        with Intruder(a1.proc.pid, enter_h1) as intruder:
            a1.json("migrate", "alice", "--to", hosts.address("h2"), "--mode", "postcopy", timeout=120)
            assert intruder.received == 0, "a stranger read the session's pages from the lazy dump"
        assert a2.sessions()["alice"]["state"] == "running"
        with hosts.inside("h1"):
            at_h2 = JupyterServer(hosts.address("h2"), server.port, server.token)
            at_h2.wait_ready(timeout=30)
            conn = at_h2.connect(kernel, session_id="e2e-session")
        assert conn.eval("x + 1") == "42"
        conn.close()
