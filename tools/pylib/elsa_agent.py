"""Start a private elsad and drive it with the elsa CLI, for the demo and the tests.

Everything it starts it also ends: sessions, the agent, and CRIU network-lock tables left by
checkpoints that were never restored.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

# Sessions get a plain system PATH so they run Debian's python3 and jupyter, whatever the caller's
# PATH holds (e.g. a pyenv shim without Debian's packages).
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ElsaError(RuntimeError):
    def __init__(self, args, result):
        self.result = result
        super().__init__(f"elsa {' '.join(args)} failed ({result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")


def _nft_tables():
    try:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10)
        return set(line.strip() for line in out.stdout.splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError):
        return set()


class ElsaAgent:
    """A private elsad (own socket and state directory) and a CLI bound to it."""

    def __init__(self, bin_dir, criu_prefix=None, env=None, keep_state=False, netns=None, extra_args=()):
        """`netns`: run the agent (and so its sessions) inside that network namespace, as on one of
        SimulatedHosts' hosts; `extra_args` go to elsad."""
        self.bin_dir = bin_dir
        self.netns = netns
        self.extra_args = list(extra_args)
        self.root = tempfile.mkdtemp(prefix="elsa-")
        self.socket = os.path.join(self.root, "elsad.sock")
        self.state_dir = os.path.join(self.root, "state")
        self.criu_prefix = criu_prefix
        self.env = dict(env if env is not None else os.environ)
        # Sessions get a HOME of their own: IPython keeps its history in $HOME/.ipython as a
        # SQLite file every kernel appends to, and CRIU refuses to restore a kernel whose open
        # regular file changed size since the dump (another agent's kernels, or tests in
        # parallel, would change a shared one).
        self.env["HOME"] = os.path.join(self.root, "home")
        os.makedirs(self.env["HOME"], exist_ok=True)
        self.keep_state = keep_state
        self.proc = None
        self.pids_seen = set()

    def start(self):
        cmd = [os.path.join(self.bin_dir, "elsad"), "--socket", self.socket, "--state-dir", self.state_dir]
        if self.criu_prefix is not None:
            cmd += ["--criu-prefix", self.criu_prefix]
        cmd += self.extra_args
        if self.netns:
            # Only the network namespace: `ip netns exec` would also remount /sys, hiding the
            # cgroup filesystems the agent reads its memory limits from. nsenter execs: same pid.
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}"] + cmd
        os.makedirs(self.state_dir, exist_ok=True)
        self.log_path = os.path.join(self.root, "elsad.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"elsad exited at start: {self.agent_log()}")
            if os.path.exists(self.socket) and self.cli("agent", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"elsad did not start serving {self.socket}: {self.agent_log()}")

    def agent_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def cli(self, *args, check=True, timeout=300):
        cmd = [os.path.join(self.bin_dir, "elsa"), "--socket", self.socket, *args]
        env = dict(self.env, PATH=SESSION_PATH)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise ElsaError(args, result)
        return result

    def json(self, *args, timeout=300):
        out = json.loads(self.cli("--json", *args, timeout=timeout).stdout)
        if isinstance(out, dict) and out.get("pid"):
            self.pids_seen.add(out["pid"])
        if isinstance(out, dict) and isinstance(out.get("session"), dict):
            self.pids_seen.add(out["session"]["pid"])
        return out

    def sessions(self):
        return {s["name"]: s for s in self.json("ps")}

    def api(self, request, on_event=None, timeout=300):
        """One request over the agent's API socket (JSON lines, engine/include/elsa/engine/api.h):
        `on_event(event, answer)` sees each event line, `answer(obj)` writes a line back (the
        freeze gate's go). Returns the final reply: {"ok": true, "result": ...} or an error."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.socket)
            f = s.makefile("rwb")

            def answer(obj):
                f.write((json.dumps(obj) + "\n").encode())
                f.flush()
            answer(request)
            for line in f:
                msg = json.loads(line)
                if "event" not in msg:
                    return msg
                if on_event:
                    on_event(msg, answer)
        raise RuntimeError(f"the agent closed the connection without a reply to {request.get('op')}")

    def run_session(self, name, *command, workdir=None):
        args = ["run", "--name", name]
        if workdir:
            args += ["--workdir", workdir]
        return self.json(*args, "--", *command)

    def checkpoint_dir(self, checkpoint_id):
        return os.path.join(self.state_dir, "checkpoints", checkpoint_id)

    def close(self):
        """Ends every session, the agent, and leftover CRIU lock tables. Never raises."""
        try:
            if self.proc and self.proc.poll() is None:
                for name in list(self.sessions()):
                    self.cli("stop", name, "--timeout", "5", check=False)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids_seen:  # anything the agent could not stop
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        # A checkpoint that was never restored leaves CRIU's nftables connection lock behind. Only
        # this agent's own (named in its manifests): another agent's dump may be locking right now.
        for table in self._own_lock_tables() & _nft_tables():
            subprocess.run(["nft", "delete"] + table.split(), capture_output=True)
        if not self.keep_state:
            shutil.rmtree(self.root, ignore_errors=True)

    def _own_lock_tables(self):
        tables = set()
        for manifest in glob.glob(os.path.join(self.state_dir, "checkpoints", "*", "manifest.json")):
            try:
                with open(manifest) as f:
                    table = json.load(f).get("network_lock_table", "")
            except (OSError, ValueError):
                continue
            if table:
                tables.add(f"table {table}")  # as `nft list tables` prints it
        return tables

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def start_jupyter(agent, name, workdir, host="127.0.0.1", port=None, token="elsa-demo-token", prefix=""):
    """Runs a real jupyter-server as session `name`; returns a ready JupyterServer. `prefix`
    ("/user/NAME") sets its base_url, as JupyterHub's single-user servers have."""
    from elsa_jupyter import JupyterServer, free_port  # same folder

    port = port or free_port(host)
    extra = [f"--ServerApp.base_url={prefix}/"] if prefix else []
    agent.run_session(name, "jupyter-server", f"--ip={host}", f"--port={port}",
                      f"--ServerApp.token={token}", "--no-browser", "--allow-root",
                      "--ServerApp.port_retries=0", *extra, workdir=workdir)
    server = JupyterServer(host, port, token, prefix)
    server.wait_ready(timeout=60)
    return server


def tree_pids(root_pid):
    """Pids of the process tree rooted at root_pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def describe_tree(root_pid):
    """What each thread of a process tree is doing (state, wait channel, syscall and its
    arguments): for a test's error message when a session stops answering."""
    lines = []
    for pid in tree_pids(root_pid):
        try:
            for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
                def read(name, tid=tid):
                    with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                        return f.read().strip()
                state = next((l.split(None, 1)[1] for l in read("status").splitlines() if l.startswith("State:")), "?")
                lines.append(f"{pid}/{tid} {read('comm')}: {state}, wchan {read('wchan') or '-'}, "
                             f"syscall {read('syscall')}")
        except OSError as e:
            lines.append(f"{pid}: {e}")
    return "\n".join(lines)


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
