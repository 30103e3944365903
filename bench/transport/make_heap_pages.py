#!/usr/bin/python3
"""Dump the memory of a Python process doing analysis work, as raw 4 KiB pages.

    make_heap_pages.py OUT [--max-mib 256] [--scale 1.0]

The transport's compression is only worth what it does on the pages a migration really ships, and
for Elsa those are Jupyter kernels' heaps. So this starts a child /usr/bin/python3 that builds a
typical analysis heap (dicts of records, log lines, boxed floats and ints, a table as a list of
tuples, grouped aggregates and, if numpy is importable, structured and numeric arrays), then reads
the child's present anonymous pages through /proc/PID/pagemap and /proc/PID/mem, the way CRIU
sees them, and writes up to --max-mib of them to OUT (pages sampled evenly over all mappings so
the mix is kept). Needs root or ptrace rights over the child. Standard library only.
"""

import argparse
import os
import select
import struct
import subprocess
import sys
import time
import zlib

PAGE = 4096
ZERO_PAGE = bytes(PAGE)
PYTHON = "/usr/bin/python3"

# The child's workload. It prints "ready" when its heap is built and then blocks on stdin, so its
# memory does not change while the parent reads it.
WORKLOAD = r"""
import datetime, random, sys
scale = float(sys.argv[1])
random.seed(1234)
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter"]
LAST = ["smith", "jones", "garcia", "miller", "davis", "martinez", "lopez", "wilson", "anderson",
        "thomas", "moore", "jackson", "martin", "lee", "thompson", "white", "harris", "clark"]
CITIES = ["Berlin", "Paris", "Lisbon", "Oslo", "Vienna", "Prague", "Madrid", "Rome", "Dublin"]
TAGS = ["premium", "trial", "churned", "beta", "staff", "partner", "edu", "nonprofit"]
SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "ORCL", "IBM", "INTC", "AMD"]
START = datetime.date(2015, 1, 1)

n = int(200_000 * scale)
records = {}
for i in range(n):
    first, last = random.choice(FIRST), random.choice(LAST)
    records[f"user-{i:07d}"] = {
        "id": i, "name": f"{first.title()} {last.title()}", "email": f"{first}.{last}.{i}@example.org",
        "age": random.randint(18, 90), "city": random.choice(CITIES),
        "score": round(random.gauss(50, 15), 3), "active": random.random() < 0.8,
        "tags": random.sample(TAGS, k=random.randint(0, 3)),
        "signup": (START + datetime.timedelta(days=random.randint(0, 3000))).isoformat(),
    }
log_lines = [
    f"2024-03-{random.randint(1, 28):02d}T{random.randint(0, 23):02d}:{random.randint(0, 59):02d}:"
    f"{random.randint(0, 59):02d}Z INFO worker-{random.randint(0, 15)} GET /api/v1/items/"
    f"{random.randint(0, 99999)} status={random.choice((200, 200, 200, 304, 404, 500))} "
    f"latency_ms={random.expovariate(0.05):.2f}"
    for _ in range(int(300_000 * scale))]
floats = [random.random() * 1000 for _ in range(int(1_000_000 * scale))]
counts = [random.randint(0, 10**6) for _ in range(int(800_000 * scale))]
table = [(i, random.choice(SYMBOLS), round(random.uniform(10, 500), 2), random.randint(1, 1000),
          random.random() < 0.5) for i in range(int(500_000 * scale))]
groups = {}
for row in table:
    groups.setdefault(row[1], []).append(row[2])
summary = {sym: (len(v), sum(v) / len(v), min(v), max(v)) for sym, v in groups.items()}
by_city = {}
for r in records.values():
    by_city.setdefault(r["city"], []).append(r["score"])

arrays = []
try:
    import numpy as np
    rng = np.random.default_rng(1234)
    m = int(2_000_000 * scale)
    trades = np.zeros(m, dtype=[("ts", "i8"), ("sym", "S6"), ("price", "f8"), ("qty", "i4"), ("side", "u1")])
    trades["ts"] = 1_700_000_000_000 + np.arange(m, dtype=np.int64) * 1000
    trades["sym"] = np.array(SYMBOLS, dtype="S6")[rng.integers(0, len(SYMBOLS), m)]
    trades["price"] = np.round(100 + np.cumsum(rng.normal(0, 0.01, m)), 2)
    trades["qty"] = rng.integers(1, 100, m) * 10
    trades["side"] = rng.integers(0, 2, m)
    noise = rng.normal(size=m // 2)                    # measurements: close to incompressible
    codes = rng.integers(0, 16, m // 2).astype(np.int64)  # categorical codes: very compressible
    mask = np.zeros((2048, 2048), dtype=np.uint8)
    mask[300:900, 400:1600] = 1
    arrays = [trades, noise, codes, mask]
except ImportError:
    pass

print("ready", flush=True)
sys.stdin.read()
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="file to write the raw concatenated pages to")
    parser.add_argument("--max-mib", type=int, default=256, help="at most this much (default 256)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the child's workload (default 1.0)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the child to build its heap")
    return parser.parse_args()


def wait_ready(child, timeout):
    """Waits for the child's "ready" line; fails on timeout or if the child dies."""
    deadline = time.monotonic() + timeout
    seen = b""
    while b"\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"the workload did not get ready within {timeout:.0f} s")
        ready, _, _ = select.select([child.stdout], [], [], left)
        if ready:
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the workload exited (status {child.wait(5)}) before it was ready")
            seen += chunk
    if not seen.startswith(b"ready"):
        raise RuntimeError(f"the workload said {seen!r} instead of ready")


def anonymous_mappings(pid):
    """(start, end, name) of the readable, writable, private mappings backed by no file."""
    result = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            span, perms = fields[0], fields[1]
            name = fields[5].strip() if len(fields) > 5 else ""
            if not perms.startswith("rw") or perms[3] != "p":
                continue
            if name not in ("", "[heap]", "[stack]"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            result.append((start, end, name or "anon"))
    return result


def present_pages(pid, mappings):
    """Addresses (and the mapping's name) of pages that are in memory or swap: what CRIU dumps."""
    pages = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
        for start, end, name in mappings:
            count = (end - start) // PAGE
            raw = os.pread(pagemap.fileno(), count * 8, (start // PAGE) * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
                if entry & (0b11 << 62):  # bit 63: present, bit 62: swapped
                    pages.append((start + i * PAGE, name))
    return pages


def main():
    args = parse_args()
    max_pages = args.max_mib * 1024 * 1024 // PAGE
    child = subprocess.Popen([PYTHON, "-c", WORKLOAD, str(args.scale)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    tmp = args.out + ".tmp"
    try:
        started = time.monotonic()
        wait_ready(child, args.timeout)
        built = time.monotonic() - started
        pages = present_pages(child.pid, anonymous_mappings(child.pid))
        if not pages:
            raise RuntimeError("the workload has no present anonymous pages (no ptrace rights?)")
        present = len(pages)
        if len(pages) > max_pages:
            pages = [pages[i * len(pages) // max_pages] for i in range(max_pages)]
        written = zeros = unreadable = 0
        by_name = {}
        sample = bytearray()
        with open(f"/proc/{child.pid}/mem", "rb", buffering=0) as mem, open(tmp, "wb") as out:
            for i, (address, name) in enumerate(pages):
                try:
                    page = os.pread(mem.fileno(), PAGE, address)
                except OSError:
                    unreadable += 1
                    continue
                if len(page) != PAGE:
                    unreadable += 1
                    continue
                out.write(page)
                written += 1
                zeros += page == ZERO_PAGE
                by_name[name] = by_name.get(name, 0) + 1
                if i % 64 == 0:
                    sample += page
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, args.out)
    finally:
        child.kill()
        child.wait(10)
        if os.path.exists(tmp):
            os.unlink(tmp)

    ratio = len(sample) / max(1, len(zlib.compress(bytes(sample), 1)))
    mix = ", ".join(f"{name} {count}" for name, count in sorted(by_name.items()))
    print(f"wrote {written} of {present} present pages ({written * PAGE / 2**20:.1f} MiB) to {args.out}: "
          f"{zeros} all-zero, "
          f"{unreadable} unreadable skipped; from {mix}; workload built in {built:.1f} s; "
          f"zlib-1 ratio of a 1/64 sample {ratio:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"make_heap_pages: {e}", file=sys.stderr)
        sys.exit(1)
