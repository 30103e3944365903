// elsa-page-server-bench: the page server's figures in one run, each beside its CRIU baseline.
//   ingest       the same process dumped (--leave-running) into `criu page-server`, into our
//                receiver writing images, and into our receiver writing the page store
//   restore      time until the restored process runs: CRIU from local images (eager and with
//                its own local lazy-pages) vs ours from the store (materialized, and lazy through
//                our lazy server); then until every page is in, and the lazy GET latencies
//   incremental  a second checkpoint of the same idle process: bytes and time vs the first
// Before each timed run the page cache is written back and dropped: each starts cold and clean.
// Processes are Python holders of N MiB of random bytes, one per size given.
//   elsa-page-server-bench [--sizes 256,1024] [--dir /var/tmp] [--criu PATH]
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "elsa/child_process.h"
#include "elsa/engine/criu_driver.h"
#include "elsa/engine/session_process.h"
#include "elsa/file_util.h"
#include "elsa/page_server/lazy_server.h"
#include "elsa/page_server/loopback.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/receiver.h"
#include "elsa/unique_fd.h"

namespace {

using namespace elsa;
using namespace elsa::page_server;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "elsa-page-server-bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(Result<T> r, const std::string& what) {
  if (!r.ok()) Die(what + ": " + r.status().ToString());
  return std::move(r).value();
}

// Runs a CRIU command to completion; returns its wall time, or dies with its log.
double RunCriu(const std::vector<std::string>& argv, const std::string& log) {
  const auto start = Clock::now();
  ChildProcess child = Must(ChildProcess::Spawn(argv), "start " + argv[0]);
  const int status = child.Wait();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    auto text = ReadFile(log);
    Die("`criu " + argv[1] + "` " + DescribeWaitStatus(status) + "\n" + (text.ok() ? SummarizeCriuLog(*text) : ""));
  }
  return Since(start);
}

void WaitForFile(const std::string& path, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!fs::exists(path)) {
    if (Clock::now() > deadline) Die("timed out waiting for " + path);
    std::this_thread::sleep_for(5ms);
  }
}

uint64_t DirBytes(const std::string& dir, const std::string& suffix = "") {
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && (suffix.empty() || e.path().extension() == suffix)) total += e.file_size();
  return total;
}

struct Timing {
  double dump;     // criu dump's wall time
  double durable;  // until every byte is on disk
};

// Every timed run starts from the same state: nothing dirty waiting for write-back (which would
// throttle whoever writes next) and nothing cached (so every restore reads from the disk).
void Settle() {
  ::sync();
  UniqueFd drop(::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC));
  if (!drop || ::write(drop.get(), "3", 1) != 1) Die("cannot drop the page cache (/proc/sys/vm/drop_caches)");
}

void SyncFiles(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    UniqueFd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd || ::fsync(fd.get()) != 0) Die("fsync " + e.path().string());
  }
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || ::fsync(d.get()) != 0) Die("fsync " + dir);
}

// A Python process holding `mib` MiB of random bytes, in its own PID namespace as sessions are.
class Holder {
 public:
  Holder(const std::string& dir, int mib) {
    const std::string ready = dir + "/holder.ready";
    const std::string script = "import os, time\ndata = bytearray(os.urandom(" + std::to_string(mib) +
                               " << 20))\nopen('" + ready + "', 'w').close()\nwhile True:\n    time.sleep(0.5)\n";
    auto pipe = Must(OutputPipe::Create(), "pipe");
    pid_ = Must(SpawnInPidNamespace({{"/usr/bin/python3", "-c", script}, {"PATH=/usr/bin:/bin"}, dir}, pipe), "holder");
    WaitForFile(ready, 120s);
  }
  ~Holder() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
};

struct Bench {
  std::string criu;
  std::string root;

  std::vector<std::string> Dump(pid_t pid, const std::string& dir, uint16_t port) const {
    return {criu, "dump", "-t", std::to_string(pid), "-D", dir, "--shell-job", "--leave-running", "--page-server",
            "--address", "127.0.0.1", "--port", std::to_string(port), "-o", "dump.log"};
  }

  // Restores `dir` detached; returns the wall time to a running process, which it then ends.
  double Restore(const std::string& dir, std::vector<std::string> extra = {}) const {
    std::vector<std::string> argv = {criu, "restore", "-D", dir, "--shell-job", "--restore-detached", "--pidfile",
                                     dir + "/restored.pid", "-o", "restore.log"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    const double seconds = RunCriu(argv, dir + "/restore.log");
    restored_.push_back(std::stoi(Must(ReadFile(dir + "/restored.pid"), "pidfile")));
    return seconds;
  }
  void EndRestored() const {
    for (pid_t p : restored_) ::kill(p, SIGKILL);
    restored_.clear();
  }
  mutable std::vector<pid_t> restored_;
};

std::string Fresh(const std::string& path) {
  fs::remove_all(path);
  fs::create_directories(path);
  return path;
}

void RunSize(const Bench& b, int mib) {
  const std::string base = Fresh(b.root + "/" + std::to_string(mib));
  const double gb = static_cast<double>(mib) * (1 << 20) / 1e9;
  std::printf("\n== %d MiB process ==\n", mib);
  auto store = Must(PageStore::Open(base + "/store"), "page store");
  Holder holder(base, mib);

  // --- ingest -------------------------------------------------------------------------------
  const std::string theirs = Fresh(base + "/criu-ps"), files = Fresh(base + "/ours-files"),
                    stored = Fresh(base + "/ours-store"), second = Fresh(base + "/ours-store-2");
  uint16_t port = 0;
  {
    auto probe = Must(PageReceiver::Listen("127.0.0.1", 0, theirs), "probe port");
    port = probe->port();
  }
  ChildProcess server = Must(ChildProcess::Spawn({b.criu, "page-server", "-D", theirs, "--address", "127.0.0.1",
                                                  "--port", std::to_string(port), "-o", "ps.log"}),
                             "criu page-server");
  std::this_thread::sleep_for(300ms);  // it takes exactly one connection: no probing it
  // Two times per row: the dump (criu's wall time: how long a session stays frozen) and until
  // the checkpoint is durable. `criu page-server` never fsyncs; its row adds an fsync of its
  // images, which a checkpoint that must survive a crash needs.
  Settle();
  Clock::time_point start = Clock::now();
  Timing criu_ingest{RunCriu(b.Dump(holder.pid(), theirs, port), theirs + "/dump.log"), 0};
  server.Wait();
  SyncFiles(theirs);
  criu_ingest.durable = Since(start);

  auto timed_dump = [&](const std::string& dir, PageStore* into, ReceiverStats* stats) {
    auto receiver = Must(PageReceiver::Listen("127.0.0.1", 0, dir, into), "receiver");
    auto serving = std::async(std::launch::async, [&] { return receiver->ServeOne(60s); });
    Settle();
    const auto begin = Clock::now();
    const double dump = RunCriu(b.Dump(holder.pid(), dir, receiver->port()), dir + "/dump.log");
    *stats = Must(serving.get(), "receiver");
    if (into && !into->Sync().ok()) Die("sync store");
    return Timing{dump, Since(begin)};
  };
  ReceiverStats files_stats, store_stats, second_stats;
  const Timing files_ingest = timed_dump(files, nullptr, &files_stats);
  const Timing store_ingest = timed_dump(stored, store.get(), &store_stats);
  const uint64_t store_bytes_first = store->Stats().stored_bytes;
  const Timing second_ingest = timed_dump(second, store.get(), &second_stats);
  const uint64_t store_bytes_second = store->Stats().stored_bytes - store_bytes_first;

  std::printf("ingest (criu dump --leave-running --page-server; %.2f GB of memory)\n", gb);
  std::printf("                              dump (frozen)             until durable\n");
  auto row = [&](const char* name, const Timing& t) {
    std::printf("  %-26s %7.3f s %5.2f GB/s %5.2fx   %7.3f s %5.2f GB/s %5.2fx\n", name, t.dump, gb / t.dump,
                criu_ingest.dump / t.dump, t.durable, gb / t.durable, criu_ingest.durable / t.durable);
  };
  row("criu page-server", criu_ingest);
  row("elsa receiver, images", files_ingest);
  row("elsa receiver, page store", store_ingest);

  // --- incremental ---------------------------------------------------------------------------
  const uint64_t first_bytes = store_bytes_first + DirBytes(stored);
  const uint64_t second_bytes = store_bytes_second + DirBytes(second);
  std::printf("incremental (second checkpoint of the idle process into the same store)\n");
  std::printf("  first   %9.1f MiB written  %7.3f s  (%llu pages, %llu new)\n", first_bytes / 1048576.0, store_ingest.durable,
              static_cast<unsigned long long>(store_stats.pages_present),
              static_cast<unsigned long long>(store_stats.pages_new));
  std::printf("  second  %9.1f MiB written  %7.3f s  (%llu pages, %llu new)  bytes ratio %.4f\n",
              second_bytes / 1048576.0, second_ingest.durable, static_cast<unsigned long long>(second_stats.pages_present),
              static_cast<unsigned long long>(second_stats.pages_new),
              static_cast<double>(second_bytes) / static_cast<double>(first_bytes));

  // --- restore ---------------------------------------------------------------------------------
  // Baselines: CRIU from local images, eagerly and with its own local lazy-pages daemon.
  const std::string local = Fresh(base + "/restore-criu");
  Must(MaterializeImages(*store, stored, local, RestoreImages::kEager), "materialize");
  Settle();
  const double criu_eager = b.Restore(local);
  b.EndRestored();
  const std::string local_lazy = Fresh(base + "/restore-criu-lazy");
  Must(MaterializeImages(*store, stored, local_lazy, RestoreImages::kLazyLocal), "materialize lazy-local");
  Settle();
  start = Clock::now();
  ChildProcess criu_daemon = Must(
      ChildProcess::Spawn({b.criu, "lazy-pages", "-D", local_lazy, "-W", local_lazy, "-o", "lazy-pages.log"}),
      "criu lazy-pages");
  WaitForFile(local_lazy + "/lazy-pages.socket", 30s);
  b.Restore(local_lazy, {"--lazy-pages", "-W", local_lazy});
  const double criu_lazy = Since(start);
  criu_daemon.Wait();
  const double criu_lazy_all = Since(start);
  b.EndRestored();

  // Ours: materialize from the store, then CRIU.
  const std::string eager = Fresh(base + "/restore-elsa");
  Settle();
  start = Clock::now();
  Must(MaterializeImages(*store, stored, eager, RestoreImages::kEager), "materialize");
  const double materialize = Since(start);
  b.Restore(eager);
  const double ours_eager = Since(start);
  b.EndRestored();

  const std::string lazy = Fresh(base + "/restore-elsa-lazy");
  Settle();
  start = Clock::now();
  MaterializeStats lazy_made = Must(MaterializeImages(*store, stored, lazy, RestoreImages::kLazy), "lazy images");
  auto images = Must(LoadPagedImages(stored), "load images");
  // As the agent runs it: the daemon handed its end of a private connection to our server.
  LoopbackPair pair = Must(ConnectedLoopbackPair(), "loopback pair");
  auto lazy_server = LazyPageServer::OnConnection(std::move(pair.ours), PageLocator::FromImages(images), store.get());
  auto serving = std::async(std::launch::async, [&] { return lazy_server->ServeOne(60s); });
  ChildProcess daemon = Must(CriuDriver(b.criu).StartLazyPages(lazy, pair.theirs.get()), "lazy-pages");
  pair.theirs.Reset();
  b.Restore(lazy, {"--lazy-pages", "-W", lazy});
  const double ours_lazy = Since(start);
  LazyServeStats served = Must(serving.get(), "lazy server");
  daemon.Wait();
  const double ours_lazy_all = Since(start);
  b.EndRestored();

  std::printf("restore: time until the process runs (and until every page is in)\n");
  std::printf("  criu restore, local images          %7.3f s\n", criu_eager);
  std::printf("  criu lazy-pages, local images       %7.3f s  (all pages in %.3f s)\n", criu_lazy, criu_lazy_all);
  std::printf("  elsa eager (materialize %.3f s)     %7.3f s  ratio %.2fx vs criu restore\n", materialize, ours_eager,
              criu_eager / ours_eager);
  std::printf("  elsa lazy (lazy server, store)      %7.3f s  (all pages in %.3f s)  ratio %.2fx vs criu lazy\n",
              ours_lazy, ours_lazy_all, criu_lazy / ours_lazy);
  std::printf("lazy page service: %llu GETs, %llu pages (%llu lazy), %.0f pages/s; GET latency p50 %.0f us, p99 %.0f us\n",
              static_cast<unsigned long long>(served.requests), static_cast<unsigned long long>(served.pages_served),
              static_cast<unsigned long long>(lazy_made.pages_lazy),
              static_cast<double>(served.pages_served) / served.seconds, served.latency_p50_us, served.latency_p99_us);
  std::fflush(stdout);
  fs::remove_all(base);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"elsa-page-server-bench: the page server against CRIU's own, in one run"};
  std::vector<int> sizes = {256, 1024};
  std::string dir = "/var/tmp/elsa-page-server-bench";
  std::string criu;
  app.add_option("--sizes", sizes, "holder sizes in MiB")->delimiter(',')->capture_default_str();
  app.add_option("--dir", dir, "scratch directory (removed afterwards)")->capture_default_str();
  app.add_option("--criu", criu, "CRIU binary (default: the bootstrap's)");
  CLI11_PARSE(app, argc, argv);
  if (::geteuid() != 0) Die("needs root (CRIU)");
  Bench b;
  b.criu = criu.empty() ? Must(CriuDriver::Locate({"", ELSA_DEFAULT_CRIU_PREFIX}), "CRIU") : criu;
  b.root = dir;
  for (int mib : sizes) RunSize(b, mib);
  fs::remove_all(dir);
  return 0;
}
