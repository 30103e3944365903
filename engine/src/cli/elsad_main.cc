// elsad: the per-host Elsa agent. Runs as root, serves the JSON-lines API on a Unix socket.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "elsa/engine/agent.h"
#include "elsa/engine/peer_server.h"
#include "elsa/engine/api.h"
#include "elsa/engine/api_auth.h"
#include "elsa/engine/tls_api_server.h"
#include "elsa/fd_io.h"
#include "elsa/file_util.h"
#include "elsa/log.h"
#include "elsa/metrics_http.h"

#ifndef ELSA_DEFAULT_CRIU_PREFIX
#define ELSA_DEFAULT_CRIU_PREFIX ""
#endif

namespace {

// Detaches into the background; the parent returns only once the child reports that it is
// serving (or why it could not), so `elsad --daemon && elsa ps` is race-free.
int Daemonize(const std::string& log_path, int* ready_fd) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -1;
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid > 0) {
    ::close(p[1]);
    char status = 0;
    ssize_t n = ::read(p[0], &status, 1);
    if (n == 1 && status == 'R') {
      std::printf("elsad started in the background (pid %d); log: %s\n", pid, log_path.c_str());
      std::exit(0);
    }
    std::fprintf(stderr, "elsad failed to start; see %s\n", log_path.c_str());
    std::exit(1);
  }
  ::close(p[0]);
  ::setsid();
  int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log < 0 || devnull < 0) return -1;
  ::dup2(devnull, 0);
  ::dup2(log, 1);
  ::dup2(log, 2);
  ::close(log);
  ::close(devnull);
  *ready_fd = p[1];
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"elsad: the Elsa agent. Runs sessions, checkpoints and restores them with CRIU."};
  std::string socket_path = elsa::kDefaultSocketPath;
  elsa::AgentConfig config;
  const char* env_criu = std::getenv("ELSA_CRIU");
  config.criu.explicit_binary = env_criu ? env_criu : "";
  config.criu.prefix = ELSA_DEFAULT_CRIU_PREFIX;
  bool daemon = false;
  std::string log_format_name = "text";
  app.add_option("--socket", socket_path, "Unix socket of the API")->capture_default_str();
  app.add_option("--state-dir", config.state_dir, "sessions, logs and the checkpoint store")->capture_default_str();
  app.add_option("--criu", config.criu.explicit_binary, "CRIU binary to use (default: $ELSA_CRIU, the bootstrap's build, then PATH)");
  app.add_option("--criu-prefix", config.criu.prefix, "prefix holding sbin/criu, as built by tools/bootstrap")->capture_default_str();
  app.add_flag("--daemon", daemon, "run in the background, logging to STATE_DIR/elsad.log");
  app.add_option("--log-format", log_format_name,
                 "text, or json: one JSON object a line (time, level, message, session, op, ...)")
      ->capture_default_str();
  std::string listen, secret_file;
  app.add_option("--listen", listen, "HOST[:PORT] where other agents reach this one for migrations (port 7077)");
  std::string peer_cert, peer_key, peer_ca, peer_allow;
  app.add_option("--peer-cert", peer_cert,
                 "this agent's certificate for migrations (PEM, URI SAN elsa-agent:NAME: tools/elsa-ca issue DIR NAME "
                 "--peer); with it every channel between agents is mutual TLS 1.3");
  app.add_option("--peer-key", peer_key, "its private key (PEM, mode 600)");
  app.add_option("--peer-ca", peer_ca, "the fleet's CA: other agents must present a certificate it signed");
  app.add_option("--peer-allow", peer_allow,
                 "who may send sessions to whom: lines 'SOURCE -> DEST', agent names or * (default: every agent "
                 "of the fleet CA)");
  app.add_option("--peer-secret-file", secret_file,
                 "a secret shared by every agent, mixed into each stream's proof; alone, without --peer-cert, "
                 "deprecated (plaintext page traffic: for tests)");
  app.add_option("--peer-transport", config.peer_backend, "tcp or uring, between agents")->capture_default_str();
  int peer_timeout_s = config.peer_timeout_ms / 1000;
  app.add_option("--peer-timeout", peer_timeout_s,
                 "seconds a peer or link may stay silent before a migration fails (and is rolled back)")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  // Failures on purpose, at points no outside fault can hit reliably (the test suite's).
  app.add_option("--test-fault", config.test_fault,
                 "for the test suite only: fail on purpose as a source of migrations (lose-committed: "
                 "B's `committed` is lost with the connection; hang-before-commit: wait 120 s before `commit`), "
                 "die (SIGKILL) between a checkpoint's dump and its commit (die-before-checkpoint-commit), "
                 "as a destination on receiving `commit` (die-at-commit), or once `committed` is sent "
                 "(die-after-committed; as a source: once it is received), or as a destination between "
                 "making its copy outlive it and saying `committed` (die-after-standing-alone); as a source once its `restore` "
                 "is delivered (die-after-restore-sent)")
      ->check(CLI::IsMember({"lose-committed", "hang-before-commit", "die-before-checkpoint-commit", "die-at-commit",
                             "die-after-committed", "die-after-standing-alone", "die-after-restore-sent"}))
      ->group("");
  elsa::TlsApiOptions tls_api;  // the API over TLS (README: "Reaching agents over the network")
  app.add_option("--api-listen", tls_api.listen, "HOST:PORT where the API is also served, over TLS 1.3 (off by default)");
  app.add_option("--api-cert", tls_api.cert_file, "the agent's TLS certificate (PEM; tools/elsa-ca issue)");
  app.add_option("--api-key", tls_api.key_file, "its private key (PEM)");
  app.add_option("--api-client-ca", tls_api.client_ca_file, "mutual TLS: clients present a certificate from this CA (scope hub)");
  app.add_option("--api-admin-cn", tls_api.admin_names, "client certificate common names given scope admin (may run commands)");
  app.add_option("--api-tokens", tls_api.tokens_file, "bearer tokens, lines SCOPE NAME TOKEN (mode 600)");
  // Metrics tell how many users a host serves and when their sessions move: loopback unless the
  // operator opens them up (README, "The agent's metrics").
  int metrics_port = 0;
  std::string metrics_ip = "127.0.0.1";
  app.add_option("--metrics-port", metrics_port, "port serving Prometheus metrics at GET /metrics (default: none)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--metrics-ip", metrics_ip, "address of --metrics-port (loopback: the metrics describe users' sessions)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (elsa::Status s = elsa::ValidateTlsApiOptions(tls_api); !s.ok()) {
    std::fprintf(stderr, "elsad: %s\n", s.message().c_str());
    return 2;
  }

  // The agent's own lines, in its log (stderr, or STATE_DIR/elsad.log with --daemon), whole
  // lines in one write each so that threads' lines never interleave.
  auto log_format = elsa::ParseLogFormat(log_format_name);
  if (!log_format.ok()) {
    std::fprintf(stderr, "elsad: %s\n", log_format.status().message().c_str());
    return 2;
  }
  config.log = elsa::Logger(elsa::ProgramLogSink("elsad", *log_format, [](std::string_view line) {
    (void)elsa::WriteFully(STDERR_FILENO, line, "log");  // nowhere to report a failing log
  }));
  const elsa::Logger& log = config.log;
  if (::geteuid() != 0) {
    log.Error(std::string("must run as root (CRIU needs it); try: sudo ") + argv[0]);
    return 1;
  }
  config.peer_timeout_ms = peer_timeout_s * 1000;
  if (!secret_file.empty()) {
    auto secret = elsa::ReadFile(secret_file, 4096);
    if (!secret.ok()) {
      log.Error(secret.status().message());
      return 1;
    }
    config.peer_secret = *secret;
    while (!config.peer_secret.empty() && (config.peer_secret.back() == '\n' || config.peer_secret.back() == '\r'))
      config.peer_secret.pop_back();
    if (config.peer_secret.size() < 16) {
      log.Error("the peer secret in " + secret_file + " is shorter than 16 characters");
      return 1;
    }
  }
  if (!peer_cert.empty() || !peer_key.empty() || !peer_ca.empty()) {
    if (peer_cert.empty() || peer_key.empty() || peer_ca.empty()) {
      log.Error("--peer-cert, --peer-key and --peer-ca go together: the agent's certificate, its key, the fleet's CA");
      return 1;
    }
    if (elsa::Status s = elsa::CheckSecretFile(peer_key, "--peer-key"); !s.ok()) {
      log.Error(s.message());
      return 1;
    }
    elsa::transport::PeerTls tls{peer_cert, peer_key, peer_ca, {}};
    auto agent = elsa::transport::LoadPeerIdentity(tls);
    if (!agent.ok()) {
      log.Error("peer TLS: " + agent.status().message());
      return 1;
    }
    config.peer_tls = std::move(tls);
    log.Info("between agents: mutual TLS 1.3 as agent '" + *agent + "'");
  } else if (!secret_file.empty()) {
    log.Warning("between agents: shared secret only, page traffic in plaintext (deprecated; give --peer-cert, "
                "--peer-key and --peer-ca)");
  }
  if (!peer_allow.empty()) {
    if (!config.peer_tls) {
      log.Error("--peer-allow names agents by their certificates: it needs --peer-cert, --peer-key and --peer-ca");
      return 1;
    }
    auto allow = elsa::PeerAllowlist::Load(peer_allow);
    if (!allow.ok()) {
      log.Error(allow.status().message());
      return 1;
    }
    config.peer_allow = std::make_shared<const elsa::PeerAllowlist>(std::move(*allow));
  }
  int ready_fd = -1;
  if (daemon) {
    if (elsa::Status s = elsa::MakeDirs(config.state_dir, 0700); !s.ok()) {
      log.Error(s.message());
      return 1;
    }
    if (Daemonize(config.state_dir + "/elsad.log", &ready_fd) != 0) {
      std::perror("elsad: daemonize");
      return 1;
    }
  }

  // Signals are taken by one thread with sigwait; every other thread (and every child, which
  // resets its mask) never sees them asynchronously.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  elsa::Agent agent(config);
  if (elsa::Status s = agent.Open(); !s.ok()) {
    log.Error(s.message());
    return 1;
  }
  auto criu = agent.CriuBinary();
  if (criu.ok()) log.Info("using CRIU " + *criu);
  else log.Warning(criu.status().message());

  elsa::ApiServer server(agent, socket_path);
  if (elsa::Status s = server.Listen(); !s.ok()) {
    log.Error(s.message());
    return 1;
  }
  std::unique_ptr<elsa::PeerServer> peers;
  if (!listen.empty()) {
    auto started = elsa::PeerServer::Start(agent, listen);
    if (!started.ok()) {
      log.Error("--listen " + listen + ": " + started.status().message());
      return 1;
    }
    peers = std::move(*started);
    log.Info("other agents reach this one at " + listen + " (port " + std::to_string(peers->port()) + ")");
  }
  std::unique_ptr<elsa::TlsApiServer> tls_server;
  if (tls_api.requested()) {
    auto started = elsa::TlsApiServer::Start(agent, tls_api);
    if (!started.ok()) {
      log.Error("--api-listen " + tls_api.listen + ": " + started.status().message());
      return 1;
    }
    tls_server = std::move(*started);
    log.Info("serving the API over TLS at " + tls_api.listen + " (port " + std::to_string(tls_server->port()) + ")");
  }
  std::unique_ptr<elsa::MetricsHttpServer> metrics;  // stops before the agent it reads goes
  if (metrics_port) {
    auto started = elsa::MetricsHttpServer::Start(metrics_ip, static_cast<uint16_t>(metrics_port),
                                                  [&agent] { return agent.RenderMetrics(); }, log.With("op", "metrics"));
    if (!started.ok()) {
      log.Error("--metrics-ip/--metrics-port: " + started.status().message());
      return 1;
    }
    metrics = std::move(*started);
    log.Info("Prometheus metrics at http://" + metrics_ip + ":" + std::to_string(metrics->port()) + "/metrics");
  }
  log.Info("serving " + socket_path + ", state in " + config.state_dir);
  if (ready_fd >= 0) {
    ssize_t ignored = ::write(ready_fd, "R", 1);
    (void)ignored;
    ::close(ready_fd);
  }

  std::atomic<bool> stop{false};
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    log.Info(std::string(strsignal(sig)) + " received; stopping (sessions keep running)");
    stop = true;
  });
  server.Serve(stop);
  signal_thread.join();
  return 0;
}
