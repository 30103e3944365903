// elsa-transport-bench: the two ends of a transport throughput run, through the public API only.
//
//   elsa-transport-bench serve --backend uring --host 127.0.0.1 --port 0 --streams 4 --once
//   elsa-transport-bench send  --backend uring --host 127.0.0.1 --port P --streams 4
//                              --seconds 5 --pages heap --pages-file F --compression adaptive
//
// The secret comes from --secret or $ELSA_BENCH_SECRET (so a driver can keep it off `ps`).
// `serve` prints `listening PORT` first, then one JSON line per channel; `send` prints one JSON
// line. bench/transport/run drives both and tabulates the lines.
#include <malloc.h>
#include <sys/resource.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "elsa/status.h"
#include "elsa/transport/transport.h"

namespace {

namespace et = elsa::transport;
using elsa::Result;
using elsa::Status;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kPageBase = 0x7f0000000000;  // where the sender pretends its pages live

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// CPU time of the calling thread: what copying a batch costs, without the time the thread
// spends descheduled while the channel's threads and the receiver share the cores.
double ThreadCpuSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

struct CpuTimes {
  double user = 0;
  double sys = 0;
};

// The whole process, every thread: the channel's own threads do the hashing, framing and I/O.
CpuTimes ProcessCpu() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return {tv(ru.ru_utime), tv(ru.ru_stime)};
}

// One flat JSON object, built field by field; the values are numbers and plain identifiers.
class JsonLine {
 public:
  JsonLine& Add(const char* key, const std::string& value) {
    Key(key);
    out_ += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') out_ += '\\';
      out_ += c;
    }
    out_ += '"';
    return *this;
  }
  JsonLine& Add(const char* key, const char* value) { return Add(key, std::string(value)); }
  JsonLine& Add(const char* key, std::string_view value) { return Add(key, std::string(value)); }
  JsonLine& Add(const char* key, uint64_t value) {
    Key(key);
    out_ += std::to_string(value);
    return *this;
  }
  JsonLine& Add(const char* key, int value) {
    Key(key);
    out_ += std::to_string(value);
    return *this;
  }
  JsonLine& Add(const char* key, bool value) {
    Key(key);
    out_ += value ? "true" : "false";
    return *this;
  }
  JsonLine& Add(const char* key, double value) {
    Key(key);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", value);
    out_ += buf;
    return *this;
  }
  void Print() const {
    std::printf("{%s}\n", out_.c_str());
    std::fflush(stdout);
  }

 private:
  void Key(const char* key) {
    if (!out_.empty()) out_ += ", ";
    out_ += '"';
    out_ += key;
    out_ += "\": ";
  }
  std::string out_;
};

struct CommonArgs {
  std::string backend = "uring";
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string secret;
  std::string tls_cert, tls_key, tls_ca;  // all three: every stream inside mutual TLS 1.3
  int streams = 4;
  int io_timeout_ms = 30000;
};

struct ServeArgs {
  CommonArgs common;
  bool once = false;
  int accept_timeout_s = 120;
};

struct SendArgs {
  CommonArgs common;
  double seconds = 5;
  std::string pages = "random";
  std::string pages_file;
  size_t batch_pages = 256;
  size_t pool_mib = 256;
  std::string compression = "adaptive";
  bool zero_copy = false;
  int flush_timeout_s = 120;
};

void AddCommonOptions(CLI::App& app, CommonArgs& args) {
  app.add_option("--backend", args.backend, "tcp or uring")->check(CLI::IsMember({"tcp", "uring"}));
  app.add_option("--host", args.host, "address to listen on / connect to");
  app.add_option("--port", args.port, "port (serve: 0 picks one and prints it)");
  app.add_option("--secret", args.secret, "shared secret")->envname("ELSA_BENCH_SECRET")->required();
  app.add_option("--streams", args.streams, "parallel TCP streams")->check(CLI::Range(1, 64));
  app.add_option("--tls-cert", args.tls_cert, "this end's certificate (tools/elsa-ca issue DIR NAME --peer): TLS 1.3");
  app.add_option("--tls-key", args.tls_key, "its key");
  app.add_option("--tls-ca", args.tls_ca, "the CA both ends' certificates come from");
  app.add_option("--io-timeout-ms", args.io_timeout_ms, "channel I/O timeout")->check(CLI::PositiveNumber);
}

Result<std::unique_ptr<et::Transport>> OpenTransport(const CommonArgs& args, et::ChannelOptions& options) {
  Result<et::Backend> backend = et::ParseBackend(args.backend);
  if (!backend.ok()) return backend.status();
  options.streams = args.streams;
  options.secret = args.secret;
  if (!args.tls_cert.empty() || !args.tls_key.empty() || !args.tls_ca.empty())
    options.tls = et::PeerTls{args.tls_cert, args.tls_key, args.tls_ca, {}};
  options.io_timeout = std::chrono::milliseconds(args.io_timeout_ms);
  return et::MakeTransport(*backend);
}

// Receives one channel's messages until the peer closes it, then closes our side.
Status ReceiveAll(et::Channel& channel, const ServeArgs& args) {
  const auto accepted = Clock::now();
  const CpuTimes cpu0 = ProcessCpu();
  Clock::time_point first{};
  uint64_t messages = 0;
  uint64_t pages = 0;
  uint64_t payload = 0;
  for (;;) {
    Result<et::Message> message = channel.Receive(std::chrono::milliseconds(args.common.io_timeout_ms));
    if (!message.ok()) {
      if (message.status().code() == elsa::StatusCode::kEndOfStream) break;
      return message.status().WithContext("receive");
    }
    if (messages++ == 0) first = Clock::now();
    pages += message->pages.size();
    payload += message->pages.bytes() + message->data.size();
  }
  const auto ended = Clock::now();
  ELSA_RETURN_IF_ERROR(channel.Close(std::chrono::milliseconds(args.common.io_timeout_ms)).WithContext("close"));
  const CpuTimes cpu1 = ProcessCpu();
  const et::ChannelStats stats = channel.Stats();

  const double seconds = Seconds(ended - accepted);
  const double cpu = (cpu1.user - cpu0.user) + (cpu1.sys - cpu0.sys);
  const double gb = static_cast<double>(payload) / 1e9;
  JsonLine()
      .Add("role", "serve")
      .Add("backend", args.common.backend)
      .Add("streams", channel.streams())
      .Add("messages", messages)
      .Add("pages", pages)
      .Add("payload_bytes", payload)
      .Add("wire_bytes", stats.wire_bytes_received)
      .Add("frames_received", stats.frames_received)
      .Add("seconds", seconds)
      .Add("seconds_from_first", messages > 0 ? Seconds(ended - first) : 0.0)
      .Add("payload_gbps", seconds > 0 ? gb / seconds : 0.0)
      .Add("cpu_user_s", cpu1.user - cpu0.user)
      .Add("cpu_sys_s", cpu1.sys - cpu0.sys)
      .Add("cpu_s_per_gb", gb > 0 ? cpu / gb : 0.0)
      .Print();
  return Status::Ok();
}

Status Serve(const ServeArgs& args) {
  et::ChannelOptions options;
  ELSA_ASSIGN_OR_RETURN(auto transport, OpenTransport(args.common, options));
  ELSA_ASSIGN_OR_RETURN(auto listener, transport->Listen({args.common.host, args.common.port}, options));
  std::printf("listening %u\n", static_cast<unsigned>(listener->port()));
  std::fflush(stdout);
  do {
    ELSA_ASSIGN_OR_RETURN(auto channel, listener->Accept(std::chrono::seconds(args.accept_timeout_s)));
    ELSA_RETURN_IF_ERROR(ReceiveAll(*channel, args));
  } while (!args.once);
  return Status::Ok();
}

// splitmix64: fast enough that making a 256 MiB pool of random pages takes a fraction of a second.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

Result<std::vector<uint8_t>> ReadPagesFile(const std::string& path, size_t max_pages) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return Status::NotFound("cannot open pages file " + path + " (make it with make_heap_pages.py)");
  const auto size = static_cast<size_t>(in.tellg());
  const size_t pages = std::min(size / et::kPageSize, max_pages);
  if (pages == 0) return Status::InvalidArgument(path + " holds no whole 4 KiB page");
  std::vector<uint8_t> bytes(pages * et::kPageSize);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!in) return Status::IoError("short read from " + path);
  return bytes;
}

// The content the sender cycles through, already in PageBatches: the run then only copies whole
// batches (two vector copies each) instead of assembling pages, and the copy is timed apart.
Result<std::vector<et::PageBatch>> PrepareBatches(const SendArgs& args) {
  const size_t pool_pages = std::max(args.batch_pages, args.pool_mib * (1u << 20) / et::kPageSize);
  std::vector<uint8_t> file;
  if (args.pages == "heap") {
    if (args.pages_file.empty()) return Status::InvalidArgument("--pages heap needs --pages-file");
    ELSA_ASSIGN_OR_RETURN(file, ReadPagesFile(args.pages_file, pool_pages));
  }
  const size_t source_pages = args.pages == "heap" ? file.size() / et::kPageSize : pool_pages;
  const size_t batches = std::max<size_t>(1, source_pages / args.batch_pages);

  std::vector<et::PageBatch> out;
  out.reserve(batches);
  Random random(42);
  size_t n = 0;
  for (size_t b = 0; b < batches; ++b) {
    et::PageBatch batch(args.batch_pages);
    for (size_t i = 0; i < args.batch_pages; ++i, ++n) {
      const uint64_t address = kPageBase + n * et::kPageSize;
      if (args.pages == "heap") {
        batch.AddPage(address, file.data() + (n % source_pages) * et::kPageSize);
        continue;
      }
      uint8_t* page = batch.AddPage(address);
      if (args.pages == "zero") {
        std::memset(page, 0, et::kPageSize);
        continue;
      }
      for (size_t off = 0; off < et::kPageSize; off += sizeof(uint64_t)) {
        const uint64_t v = random.Next();
        std::memcpy(page + off, &v, sizeof v);
      }
    }
    out.push_back(std::move(batch));
  }
  return out;
}

Status Send(const SendArgs& args) {
  et::ChannelOptions options;
  ELSA_ASSIGN_OR_RETURN(auto transport, OpenTransport(args.common, options));
  ELSA_ASSIGN_OR_RETURN(options.compression, et::ParseCompression(args.compression));
  options.zero_copy = args.zero_copy;
  ELSA_ASSIGN_OR_RETURN(const std::vector<et::PageBatch> batches, PrepareBatches(args));
  // Every batch sent is a fresh 1 MiB copy, freed by the channel once written. By default glibc
  // serves such blocks with mmap and unmaps them on free, so each copy would also page-fault
  // 256 times: keep them in the heap, where freed batches are reused warm.
  ::mallopt(M_MMAP_THRESHOLD, 256 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);

  const auto connect_start = Clock::now();
  ELSA_ASSIGN_OR_RETURN(auto channel, transport->Connect({args.common.host, args.common.port}, options));
  const auto start = Clock::now();
  const CpuTimes cpu0 = ProcessCpu();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(args.seconds));

  uint64_t pages = 0;
  double build_cpu = 0;
  for (size_t i = 0; Clock::now() < deadline; ++i) {
    const double b0 = ThreadCpuSeconds();
    et::PageBatch batch = batches[i % batches.size()];
    build_cpu += ThreadCpuSeconds() - b0;
    pages += batch.size();
    ELSA_RETURN_IF_ERROR(channel->SendPages(std::move(batch)).WithContext("send pages"));
  }
  const auto sent = Clock::now();
  ELSA_RETURN_IF_ERROR(channel->Flush(std::chrono::seconds(args.flush_timeout_s)).WithContext("flush"));
  const auto flushed = Clock::now();
  ELSA_RETURN_IF_ERROR(channel->Close(std::chrono::seconds(args.flush_timeout_s)).WithContext("close"));
  const auto closed = Clock::now();
  const CpuTimes cpu1 = ProcessCpu();
  const et::ChannelStats stats = channel->Stats();

  // Everything counts once the peer acknowledged it (Flush), not when it left our queues.
  const double seconds = Seconds(flushed - start);
  const double payload = static_cast<double>(pages * et::kPageSize);
  const double gb = payload / 1e9;
  const double cpu = (cpu1.user - cpu0.user) + (cpu1.sys - cpu0.sys);
  JsonLine()
      .Add("role", "send")
      .Add("backend", args.common.backend)
      .Add("streams", channel->streams())
      .Add("pages_kind", args.pages)
      .Add("compression", args.compression)
      .Add("zero_copy", args.zero_copy)
      .Add("batch_pages", static_cast<uint64_t>(args.batch_pages))
      .Add("pool_pages", static_cast<uint64_t>(batches.size() * args.batch_pages))
      .Add("seconds", seconds)
      .Add("pages", pages)
      .Add("payload_bytes", static_cast<uint64_t>(payload))
      .Add("payload_gbps", gb / seconds)
      .Add("wire_bytes", stats.wire_bytes_sent)
      .Add("wire_gbps", static_cast<double>(stats.wire_bytes_sent) / 1e9 / seconds)
      .Add("stats_payload_bytes", stats.payload_bytes_sent)
      .Add("stats_pages", stats.pages_sent)
      .Add("zero_pages", stats.zero_pages_sent)
      .Add("frames_sent", stats.frames_sent)
      .Add("frames_compressed", stats.frames_compressed)
      .Add("frames_raw", stats.frames_raw)
      .Add("cpu_user_s", cpu1.user - cpu0.user)
      .Add("cpu_sys_s", cpu1.sys - cpu0.sys)
      .Add("cpu_s_per_gb", gb > 0 ? cpu / gb : 0.0)
      .Add("build_cpu_s", build_cpu)
      .Add("connect_s", Seconds(start - connect_start))
      .Add("send_s", Seconds(sent - start))
      .Add("flush_s", Seconds(flushed - sent))
      .Add("close_s", Seconds(closed - flushed))
      .Print();
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Measures Elsa's transport: run `serve` on one end and `send` on the other"};
  app.require_subcommand(1);

  ServeArgs serve;
  CLI::App* serve_cmd = app.add_subcommand("serve", "accept a channel and receive until the peer closes it");
  AddCommonOptions(*serve_cmd, serve.common);
  serve_cmd->add_flag("--once", serve.once, "exit after one channel (default: keep accepting)");
  serve_cmd->add_option("--accept-timeout", serve.accept_timeout_s, "seconds to wait for a channel")
      ->check(CLI::PositiveNumber);

  SendArgs send;
  CLI::App* send_cmd = app.add_subcommand("send", "connect and send page batches for a while");
  AddCommonOptions(*send_cmd, send.common);
  send_cmd->add_option("--seconds", send.seconds, "how long to send")->check(CLI::PositiveNumber);
  send_cmd->add_option("--pages", send.pages, "page content")->check(CLI::IsMember({"random", "heap", "zero"}));
  send_cmd->add_option("--pages-file", send.pages_file, "raw 4 KiB pages for --pages heap");
  send_cmd->add_option("--batch-pages", send.batch_pages, "pages per PageBatch")->check(CLI::Range(1, 4096));
  send_cmd->add_option("--pool-mib", send.pool_mib, "size of the page pool cycled through")->check(CLI::Range(1, 4096));
  send_cmd->add_option("--compression", send.compression, "off, always or adaptive")
      ->check(CLI::IsMember({"off", "always", "adaptive"}));
  send_cmd->add_flag("--zero-copy", send.zero_copy, "io_uring zero-copy send");
  send_cmd->add_option("--flush-timeout", send.flush_timeout_s, "seconds for the final flush and close")
      ->check(CLI::PositiveNumber);

  CLI11_PARSE(app, argc, argv);

  const Status status = serve_cmd->parsed() ? Serve(serve) : Send(send);
  if (!status.ok()) {
    std::fprintf(stderr, "elsa-transport-bench %s: %s\n", serve_cmd->parsed() ? "serve" : "send",
                 status.ToString().c_str());
    return 1;
  }
  return 0;
}
