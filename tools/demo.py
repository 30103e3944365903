"""The Elsa demo: a real Jupyter session, checkpointed to disk and restored, state intact; then
a live migration between two simulated hosts with a client connected through elsa-proxy.

Run through tools/demo (which prepares the machine and builds). Every step prints what it does
and how long it took; everything started is cleaned up at the end, even on failure.
"""

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools", "pylib"))

from elsa_agent import ElsaAgent, alive, start_jupyter, tree_pids  # noqa: E402

BOLD, DIM, GREEN, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


class Steps:
    def __init__(self):
        self.n = 0
        self.timeline = []

    def __call__(self, title):
        self.n += 1
        self.title = title
        print(f"\n{BOLD}[{self.n}] {title}{RESET}")
        self.start = time.monotonic()
        return self

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        took = time.monotonic() - self.start
        self.timeline.append((self.title, took))
        if exc_type is None:
            print(f"{GREEN}    done in {took:.2f} s{RESET}")


def show(text):
    for line in text.rstrip().splitlines():
        print(f"    {DIM}{line}{RESET}")


def check_state(server, kernel, want_x1, digest, what):
    """Reconnects to the kernel and checks x + 1 and the array's checksum; exits if either is off."""
    server.wait_ready(timeout=30)
    conn = server.connect(kernel, session_id="demo")
    x1 = conn.eval("x + 1")
    same = conn.eval("hashlib.sha256(arr.tobytes()).hexdigest()") == digest
    conn.close()
    print(f"    x + 1 = {x1}; {what}'s checksum matches: {same}")
    if x1 != want_x1 or not same:
        raise SystemExit("    state was not restored")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--array-mib", type=int, default=256, help="size of the kernel's numpy array")
    parser.add_argument("--keep", action="store_true", help="keep the agent's state directory")
    parser.add_argument("--skip-migration", action="store_true", help="only checkpoint and restore")
    args = parser.parse_args()

    step = Steps()
    bin_dir = os.path.join(REPO, "build", "engine")
    criu_prefix = None  # the agent finds the bootstrap's CRIU by itself
    with ElsaAgent(bin_dir, criu_prefix=criu_prefix, keep_state=args.keep) as agent, \
            tempfile.TemporaryDirectory(prefix="elsa-demo-nb-") as workdir:
        print(f"agent: {agent.socket} (state in {agent.state_dir})")
        show(agent.cli("agent").stdout)

        with step("start a Jupyter server as an Elsa session (its own PID namespace)"):
            server = start_jupyter(agent, "alice", workdir)
            print(f"    jupyter-server {server.base} answers /api/status")

        with step(f"start a kernel and set state over its websocket (x = 41, {args.array_mib} MiB numpy array)"):
            kernel = server.start_kernel()
            conn = server.connect(kernel, session_id="demo")
            out = conn.execute(
                "import hashlib, numpy as np\n"
                "x = 41\n"
                f"arr = np.random.default_rng(7).random({args.array_mib} * 1024 * 1024 // 8)\n"
                "digest = hashlib.sha256(arr.tobytes()).hexdigest()\n"
                "print('array', arr.nbytes >> 20, 'MiB, sha256', digest[:16])", timeout=120)
            print(f"    kernel {kernel[:8]}: {out['stdout'].strip()}")
            digest = conn.eval("digest")
            conn.close()
            show(agent.cli("ps").stdout)

        pids = tree_pids(agent.sessions()["alice"]["pid"])
        with step("checkpoint the session (CRIU dump through Elsa's RPC driver and page server, into the store)"):
            report = agent.json("checkpoint", "alice")
            cp, t = report["checkpoint"], report["timings"]
            pages = cp["pages"]
            print(f"    checkpoint {cp['id']}: {pages['count']} pages ({pages['count'] * 4096 / 2**20:.1f} MiB, "
                  f"{pages['new']} new) into the page store, and {cp['size_bytes'] / 2**20:.1f} MiB of CRIU "
                  f"images in {cp['files']} files")
            print(f"    dump {t['dump_seconds']:.3f} s + commit (xxh3, fsync, rename) {t['commit_seconds']:.3f} s")

        with step("the session's processes are gone"):
            left = [p for p in pids if alive(p)]
            print(f"    {len(pids)} processes before, {len(left)} alive now; the server does not answer:")
            try:
                server.status(timeout=1)
                raise SystemExit("    the server still answers: the checkpoint did not end the session")
            except Exception as e:  # noqa: BLE001 - any failure to connect is the point
                print(f"    {type(e).__name__}: {str(e)[:80]}")
            show(agent.cli("checkpoints").stdout)

        with step("restore it (checksums verified first)"):
            r = agent.json("restore", cp["id"])
            t = r["timings"]
            print(f"    pid {r['session']['pid']}: verify {t['verify_seconds']:.3f} s, "
                  f"CRIU restore {t['restore_seconds']:.3f} s")

        with step("reconnect to the same kernel: the state is back"):
            check_state(server, kernel, "42", digest, "array")
            show(agent.cli("ps").stdout)

        with step("change 1% of the array, checkpoint again (--leave-running): only changed pages are written"):
            conn = server.connect(kernel, session_id="demo")
            conn.execute("arr[: arr.size // 100] += 1.0\nx = 43\n"
                         "digest = hashlib.sha256(arr.tobytes()).hexdigest()", timeout=60)
            digest = conn.eval("digest")
            conn.close()
            second = agent.json("checkpoint", "alice", "--leave-running")
            pages = second["checkpoint"]["pages"]
            print(f"    checkpoint {second['checkpoint']['id']}: {pages['count']} pages, {pages['new']} new to the "
                  f"page store ({pages['new'] / max(pages['count'], 1):.1%}); "
                  f"dump {second['timings']['dump_seconds']:.3f} s")

        with step("stop the session, restore the second checkpoint lazily (it runs before its memory is in)"):
            agent.cli("stop", "alice")
            lazy = agent.json("restore", second["checkpoint"]["id"], "--lazy")
            print(f"    running after {lazy['timings']['total_seconds']:.3f} s with {lazy['pages']['materialized']} "
                  f"pages written; {lazy['pages']['lazy']} pages left to fault in from the store")
            check_state(server, kernel, "44", digest, "changed array")
            deadline = time.time() + 120
            while agent.sessions()["alice"]["lazy"]["paging_in"] and time.time() < deadline:
                time.sleep(0.1)
            info = agent.sessions()["alice"]["lazy"]
            print(f"    all pages in after {info['seconds']:.3f} s ({info['pages_served']} served by Elsa's lazy "
                  f"server){'; error: ' + info['error'] if info['error'] else ''}")
            show(agent.cli("agent").stdout)

        if not args.skip_migration:
            print(f"\n{BOLD}Live migration between two hosts, a client connected through elsa-proxy{RESET}")
            import demo_migration  # same folder as this file
            migrated = demo_migration.run(step, show, bin_dir, os.path.join(REPO, "build", "proxy", "elsa-proxy"),
                                          args.array_mib)

        print(f"\n{BOLD}timeline{RESET}")
        for title, took in step.timeline:
            print(f"    {took:7.2f} s  {title}")
        print(f"\n{GREEN}demo complete: checkpoint {cp['pages']['count'] * 4096 / 2**20:.0f} MiB in "
              f"{report['timings']['total_seconds']:.2f} s, restore in {r['timings']['total_seconds']:.2f} s{RESET}")
        if not args.skip_migration:
            print(f"{GREEN}{migrated}{RESET}")
        print("cleaning up: stopping the sessions, the agents and the proxy; removing the hosts")


if __name__ == "__main__":
    main()
