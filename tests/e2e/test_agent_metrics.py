"""elsad --metrics-port: Prometheus text format at GET /metrics, scraped with a strict parser of
the format (written here) while a session is checkpointed, restored lazily and migrated between
two simulated hosts; each value is checked against the operation's own report."""

import http.client
import math
import re
import threading

from elsa_agent import ElsaAgent  # noqa: F401 (host_agent's)
from test_migrate import PEER_PORT, host_agent, secret_file  # noqa: F401 (fixture)

METRICS_PORT = 9464  # loopback inside each simulated host's own network namespace
PAGE = 4096

# ~8 MiB of non-zero memory, so pre-copy and post-copy both have pages to move; it keeps writing.
SESSION = ["python3", "-c",
           "import time\nb = bytearray(range(256)) * 32768\ni = 0\n"
           "while True:\n    b[i % len(b)] = (b[i % len(b)] + 1) % 256\n    i += 4096\n    time.sleep(0.005)\n"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse(text):
    """The text format 0.0.4, strictly: every line a HELP, a TYPE or a sample; HELP and TYPE once
    per family, before its samples; a family's samples together; histograms' buckets ascending and
    cumulative, ending at +Inf == _count. Returns {(name, frozenset(labels)): value}, {family: type}."""
    assert text.endswith("\n"), "the last line ends with a newline"
    types, helps, samples, done, current = {}, {}, {}, set(), None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, kind, name, rest = line.split(" ", 3)
            assert re.fullmatch(_NAME, name), line
            assert name not in done and name != current, f"{kind} of {name} after its samples"
            table = helps if kind == "HELP" else types
            assert name not in table, f"second {kind} of {name}"
            table[name] = rest
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram"), line
            continue
        assert not line.startswith("#") and line, f"unexpected line {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(4)
        labels, at = {}, 0
        while at < len(labels_text):
            lm = _LABEL.match(labels_text, at)
            assert lm, f"bad labels in {line!r}"
            assert lm.group(1) not in labels, line
            labels[lm.group(1)] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), lm.group(2))
            at = lm.end()
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                family = name[:-len(suffix)]
        assert family in types and family in helps, f"{name}: no HELP/TYPE before it"
        if family != current:
            assert family not in done, f"{family}: samples not together"
            if current:
                done.add(current)
            current = family
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)  # float() takes +Inf, -Inf and NaN as the format writes them
    for family, kind in types.items():
        if kind != "histogram":
            continue
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items() if k[0] == family + "_bucket")
        assert buckets and math.isinf(buckets[-1][0]), f"{family}: no +Inf bucket"
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{family}: buckets not cumulative"
        assert counts[-1] == samples[(family + "_count", frozenset())], f"{family}: +Inf != _count"
        assert (family + "_sum", frozenset()) in samples
    return samples, types


def request(hosts, host, method="GET", path="/metrics"):
    with hosts.inside(host):
        conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type"), r.read().decode()
        finally:
            conn.close()


class Scrape:
    def __init__(self, hosts, host):
        status, content_type, text = request(hosts, host)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
        self.samples, self.types = parse(text)
        self.text = text

    def __call__(self, name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no {name}{labels} in:\n{self.text}"
        return self.samples[key]


def metrics_agent(bin_dir, hosts, host, secret_file):
    a = host_agent(bin_dir, hosts, host, secret_file)
    a.extra_args += ["--metrics-port", str(METRICS_PORT)]
    return a


def wait_for(what, check, seconds=20):
    import time
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_metrics_follow_a_checkpoint_a_lazy_restore_and_a_migration(hosts, bin_dir, secret_file):
    with metrics_agent(bin_dir, hosts, "h1", secret_file) as a1, metrics_agent(bin_dir, hosts, "h2", secret_file) as a2:
        # Only /metrics, only GET (and HEAD); on loopback by default.
        assert request(hosts, "h1", path="/")[0] == 404
        assert request(hosts, "h1", method="POST")[0] == 405
        assert "127.0.0.1:9464/metrics" in a1.agent_log()

        s = Scrape(hosts, "h1")
        for family, kind in s.types.items():
            assert family.startswith("elsa_") and (kind == "counter") == family.endswith("_total"), family
        assert s("elsa_sessions", state="running") == 0
        assert s("elsa_migrations_total", mode="hybrid", result="ok") == 0
        assert s("elsa_migration_downtime_seconds_count") == 0

        a1.run_session("meter", *SESSION)
        assert Scrape(hosts, "h1")("elsa_sessions", state="running") == 1

        # A checkpoint: written bytes are its files plus the pages new to the store.
        checkpoint = a1.json("checkpoint", "meter")["checkpoint"]
        s = Scrape(hosts, "h1")
        assert s("elsa_checkpoints_total", result="ok") == 1
        assert s("elsa_checkpoints_total", result="error") == 0
        assert s("elsa_checkpoint_written_bytes_total") == checkpoint["size_bytes"] + checkpoint["pages"]["new"] * PAGE
        assert s("elsa_checkpoints_stored") == 1
        assert s("elsa_sessions", state="running") == 0 and s("elsa_sessions", state="checkpointed") == 1
        store = a1.json("agent")["page_store"]
        assert s("elsa_page_store_unique_pages") == store["unique_pages"] > 0
        assert s("elsa_page_store_bytes") == store["stored_bytes"] > 0
        assert s("elsa_page_store_dedup_ratio") == checkpoint["pages"]["count"] / store["unique_pages"]

        # A lazy restore, then every page in before the migration takes it.
        a1.json("restore", checkpoint["id"], "--lazy")
        wait_for("the lazy restore's pages", lambda: not a1.sessions()["meter"]["lazy"]["paging_in"])
        s = Scrape(hosts, "h1")
        assert s("elsa_restores_total", mode="lazy", result="ok") == 1
        assert s("elsa_restores_total", mode="eager", result="ok") == 0
        assert s("elsa_sessions", state="running") == 1

        # The migration, scraped all along: every scrape parses, whatever is half-way.
        scrapes, stop, failures = [], threading.Event(), []

        def scrape_all_along():
            while not stop.is_set():
                try:
                    scrapes.append(Scrape(hosts, "h1"))
                except Exception as e:  # noqa: BLE001 - reported by the test's thread
                    failures.append(e)
                    return

        scraper = threading.Thread(target=scrape_all_along)
        scraper.start()
        try:
            report = a1.json("migrate", "meter", "--to", hosts.address("h2"), "--mode", "hybrid")
        finally:
            stop.set()
            scraper.join()
        assert not failures, failures
        assert len(scrapes) >= 2, "scraped during the migration"
        print(report)

        s = Scrape(hosts, "h1")
        assert s("elsa_migrations_total", mode="hybrid", result="ok") == 1
        assert sum(v for (name, _), v in s.samples.items() if name == "elsa_migrations_total") == 1
        assert s("elsa_migration_downtime_seconds_count") == 1
        assert math.isclose(s("elsa_migration_downtime_seconds_sum"), report["downtime_seconds"], abs_tol=1e-6)
        bucket = min(le for le in (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.inf) if le >= report["downtime_seconds"])
        le = "+Inf" if math.isinf(bucket) else repr(bucket).removesuffix(".0")
        assert s("elsa_migration_downtime_seconds_bucket", le=le) == 1
        assert s("elsa_migration_duration_seconds_count") == 1
        assert math.isclose(s("elsa_migration_duration_seconds_sum"), report["total_seconds"], abs_tol=1e-6)
        for phase in ("precopy", "stop", "postcopy"):
            assert s("elsa_migration_sent_bytes_total", phase=phase) == report["bytes"][phase], phase
        assert report["bytes"]["precopy"] > 0 and report["bytes"]["stop"] > 0
        assert s("elsa_migration_postcopy_pages_total") == report["pages"]["postcopy"]
        assert s("elsa_migration_postcopy_faulted_pages_total") == report["pages"]["faulted"]
        wait_for("h1 to forget the session", lambda: Scrape(hosts, "h1")("elsa_sessions", state="running") == 0)

        s2 = Scrape(hosts, "h2")
        assert s2("elsa_incoming_migrations_total", result="ok") == 1
        assert s2("elsa_incoming_migrations_total", result="refused") == 0
        assert s2("elsa_sessions", state="running") == 1
        assert s2("elsa_restores_total", mode="lazy", result="ok") == 0, "a migration's restore is not a restore"
        assert s2("elsa_migrations_total", mode="hybrid", result="ok") == 0
        assert a2.sessions()["meter"]["state"] == "running"
