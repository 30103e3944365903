#include "elsa/proxy/proxy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "api.h"
#include "elsa/file_util.h"
#include "http_session.h"
#include "iso_time.h"
#include "migration.h"

namespace elsa::proxy {

namespace {

using local = net::local::stream_protocol;

enum class Role { kPublic, kApi, kMetrics, kRedirect };

Result<tcp::endpoint> ResolveListen(const std::string& ip, uint16_t port, const char* flag) {
  error_code ec;
  if (ip.empty()) return tcp::endpoint(net::ip::address_v6::any(), port);  // v4 too (v6_only off)
  auto address = net::ip::make_address(ip, ec);
  if (!ec) return tcp::endpoint(address, port);
  net::io_context scratch;
  tcp::resolver resolver(scratch);
  auto results = resolver.resolve(ip, std::to_string(port), ec);
  if (ec || results.empty()) {
    return Status::InvalidArgument(std::string(flag) + " '" + ip + "' is neither an address nor a resolvable name");
  }
  return results.begin()->endpoint();
}

// Answers every request on --redirect-port with a redirect to the HTTPS listener.
net::awaitable<void> ServeRedirect(AnyStream stream, uint16_t to) {
  beast::flat_buffer buf;
  http::request_parser<http::empty_body> p;
  p.header_limit(16 * 1024);
  stream.expires_after(std::chrono::seconds(30));
  auto [ec, n] = co_await http::async_read_header(stream, buf, p, kTuple);
  if (ec) co_return;
  std::string host(p.get()[http::field::host]);
  host = host.substr(0, host.find(':'));
  http::response<http::string_body> res{http::status::moved_permanently, 11};
  res.set(http::field::location, "https://" + host + ":" + std::to_string(to) + std::string(p.get().target()));
  res.keep_alive(false);
  res.prepare_payload();
  co_await http::async_write(stream, res, kTuple);
  stream.close();
}

}  // namespace

struct Proxy::Impl {
  explicit Impl(Options o) : options(std::move(o)) {}

  Options options;
  std::unique_ptr<Shared> shared;
  std::unique_ptr<Migrations> migrations;
  std::unique_ptr<Api> api;
  std::vector<std::unique_ptr<Worker>> workers;  // destroyed after everything bound to them
  std::shared_ptr<net::ssl::context> public_tls, api_tls;
  std::vector<std::unique_ptr<tcp::acceptor>> tcp_acceptors;
  std::vector<std::unique_ptr<local::acceptor>> unix_acceptors;
  std::vector<std::string> unix_paths;
  std::unique_ptr<net::signal_set> signals;
  std::vector<std::thread> threads;
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false;
  uint16_t port = 0, api_port = 0;
  size_t next_worker = 0;

  Worker& NextWorker() { return *workers[next_worker++ % workers.size()]; }

  net::awaitable<void> Serve(AnyStream stream, Role role, Worker& worker, ClientInfo client,
                             std::shared_ptr<net::ssl::context> tls, tcp::socket raw) {
    if (tls) {
      auto secured = co_await MakeTlsServerStream(std::move(raw), *tls, options.header_timeout);
      if (!secured.ok()) {
        shared->log.Debug(secured.status().message());
        co_return;
      }
      stream = std::move(secured).value();
    }
    switch (role) {
      case Role::kPublic:
        co_await ServeClient(*shared, worker, std::move(stream), std::move(client));
        break;
      case Role::kApi:
        co_await ServeApiClient(*shared, *api, std::move(stream));
        break;
      case Role::kMetrics:
        co_await ServeMetricsClient(*shared, std::move(stream));
        break;
      case Role::kRedirect:
        co_await ServeRedirect(std::move(stream), options.redirect_to ? options.redirect_to : port);
        break;
    }
  }

  // Connections are spread over the workers round-robin; API connections stay on worker 0,
  // where the migration controller runs.
  net::awaitable<void> AcceptTcp(tcp::acceptor& acceptor, Role role, std::shared_ptr<net::ssl::context> tls) {
    net::steady_timer backoff(acceptor.get_executor());
    for (;;) {
      Worker& w = role == Role::kApi ? *workers[0] : NextWorker();
      tcp::socket socket(w.ctx);
      auto [ec] = co_await acceptor.async_accept(socket, kTuple);
      if (ec == net::error::operation_aborted) co_return;
      if (ec) {
        // Out of descriptors, typically: keep serving those we have.
        shared->log.Error("accept: ", ec.message());
        backoff.expires_after(std::chrono::milliseconds(100));
        co_await backoff.async_wait(kTuple);
        continue;
      }
      ClientInfo client;
      error_code rec;
      auto remote = socket.remote_endpoint(rec);
      if (!rec) {
        auto a = remote.address();
        client.address = a.is_v6() && a.to_v6().is_v4_mapped()
                             ? net::ip::make_address_v4(net::ip::v4_mapped, a.to_v6()).to_string()
                             : a.to_string();
      }
      client.tls = tls != nullptr;
      AnyStream plain = tls ? AnyStream() : MakeTcpStream(std::move(socket));
      net::co_spawn(w.ctx, Serve(std::move(plain), role, w, std::move(client), tls, std::move(socket)),
                    net::detached);
    }
  }

  net::awaitable<void> AcceptUnix(local::acceptor& acceptor, Role role) {
    for (;;) {
      Worker& w = role == Role::kApi ? *workers[0] : NextWorker();
      local::socket socket(w.ctx);
      auto [ec] = co_await acceptor.async_accept(socket, kTuple);
      if (ec == net::error::operation_aborted) co_return;
      if (ec) {
        shared->log.Error("accept: ", ec.message());
        continue;
      }
      net::co_spawn(w.ctx, Serve(MakeUnixStream(std::move(socket)), role, w, ClientInfo{}, nullptr, tcp::socket(w.ctx)),
                    net::detached);
    }
  }

  Result<uint16_t> ListenTcp(const std::string& ip, uint16_t port_number, Role role,
                             std::shared_ptr<net::ssl::context> tls, const char* flag) {
    ELSA_ASSIGN_OR_RETURN(tcp::endpoint ep, ResolveListen(ip, port_number, flag));
    auto acceptor = std::make_unique<tcp::acceptor>(workers[0]->ctx);
    error_code ec;
    acceptor->open(ep.protocol(), ec);
    if (ec && ip.empty()) {  // no IPv6 here: every IPv4 interface
      ep = tcp::endpoint(net::ip::address_v4::any(), port_number);
      acceptor->open(ep.protocol(), ec);
    }
    if (ec) return Status::FromErrno("socket for " + std::string(flag), ec.value());
    acceptor->set_option(net::socket_base::reuse_address(true), ec);
    if (ep.protocol() == tcp::v6() && ip.empty()) acceptor->set_option(net::ip::v6_only(false), ec);
    acceptor->bind(ep, ec);
    if (ec) {
      return Status::Unavailable(std::string(flag) + ": cannot listen on " + (ip.empty() ? "*" : ip) + ":" +
                                 std::to_string(port_number) + ": " + ec.message());
    }
    acceptor->listen(net::socket_base::max_listen_connections, ec);
    if (ec) return Status::Unavailable(std::string(flag) + ": listen: " + ec.message());
    uint16_t bound = acceptor->local_endpoint().port();
    net::co_spawn(workers[0]->ctx, AcceptTcp(*acceptor, role, std::move(tls)), net::detached);
    tcp_acceptors.push_back(std::move(acceptor));
    return bound;
  }

  Status ListenUnix(const std::string& path, Role role) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());  // stale
    auto acceptor = std::make_unique<local::acceptor>(workers[0]->ctx);
    error_code ec;
    acceptor->open(local(), ec);
    if (!ec) acceptor->bind(local::endpoint(path), ec);
    if (!ec) acceptor->listen(net::socket_base::max_listen_connections, ec);
    if (ec) return Status::Unavailable("cannot listen on Unix socket " + path + ": " + ec.message());
    net::co_spawn(workers[0]->ctx, AcceptUnix(*acceptor, role), net::detached);
    unix_acceptors.push_back(std::move(acceptor));
    unix_paths.push_back(path);
    return Status::Ok();
  }

  void Stop() {
    {
      std::lock_guard lock(mu);
      if (stopped) return;
      stopped = true;
    }
    for (auto& w : workers) w->ctx.stop();
    cv.notify_all();
  }
};

Proxy::Proxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Proxy::~Proxy() {
  Stop();
  for (auto& t : impl_->threads) t.join();
  for (const auto& p : impl_->unix_paths) ::unlink(p.c_str());
  if (!impl_->options.pid_file.empty()) ::unlink(impl_->options.pid_file.c_str());
}

Result<std::unique_ptr<Proxy>> Proxy::Start(Options options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  Impl& m = *impl;
  const Options& o = m.options;
  m.shared = std::make_unique<Shared>(o, [](const std::string&) { return std::make_shared<RouteControl>(); });
  m.migrations = std::make_unique<Migrations>(*m.shared);
  m.shared->migrations = m.migrations.get();
  AddRouteGauges(m.shared->metrics_registry, m.shared->routes);
  m.api = std::make_unique<Api>(m.shared->routes, o.auth_token, m.shared->log);
  ELSA_ASSIGN_OR_RETURN(m.shared->client_tls, MakeClientTlsContext(o));
  if (o.ssl.enabled()) {
    ELSA_ASSIGN_OR_RETURN(m.public_tls, MakeServerTlsContext(o.ssl, o));
  }
  if (o.api_ssl.enabled()) {
    ELSA_ASSIGN_OR_RETURN(m.api_tls, MakeServerTlsContext(o.api_ssl, o));
  }
  for (int i = 0; i < o.threads; ++i) {
    m.workers.push_back(std::make_unique<Worker>(o.backend_idle_per_host, o.backend_idle_timeout));
    m.shared->workers.push_back(m.workers.back().get());
  }
  if (!o.default_target.empty()) {
    nlohmann::ordered_json data;
    data["target"] = o.default_target;
    m.shared->routes.Add("/", std::move(data), NowMillis());
  }
  if (o.socket.empty()) {
    ELSA_ASSIGN_OR_RETURN(m.port, m.ListenTcp(o.ip, o.port, Role::kPublic, m.public_tls, "--ip/--port"));
  } else {
    ELSA_RETURN_IF_ERROR(m.ListenUnix(o.socket, Role::kPublic));
  }
  if (o.api_socket.empty()) {
    ELSA_ASSIGN_OR_RETURN(m.api_port, m.ListenTcp(o.api_ip, o.api_port, Role::kApi, m.api_tls, "--api-ip/--api-port"));
  } else {
    ELSA_RETURN_IF_ERROR(m.ListenUnix(o.api_socket, Role::kApi));
  }
  if (o.redirect_port) {
    ELSA_RETURN_IF_ERROR(m.ListenTcp(o.ip, o.redirect_port, Role::kRedirect, nullptr, "--redirect-port").status());
  }
  uint16_t metrics_port = 0;
  if (o.metrics_port) {
    ELSA_ASSIGN_OR_RETURN(metrics_port,
                          m.ListenTcp(o.metrics_ip, o.metrics_port, Role::kMetrics, nullptr, "--metrics-ip/--metrics-port"));
  }
  if (!o.pid_file.empty()) {
    ELSA_RETURN_IF_ERROR(WriteFileAtomic(o.pid_file, std::to_string(::getpid()) + "\n"));
  }
  std::unique_ptr<Proxy> proxy(new Proxy(std::move(impl)));
  Impl* raw = proxy->impl_.get();
  raw->signals = std::make_unique<net::signal_set>(raw->workers[0]->ctx, SIGTERM, SIGINT);
  raw->signals->async_wait([raw](error_code ec, int signo) {
    if (ec) return;
    raw->shared->log.Info("Exiting on signal ", signo);
    raw->Stop();
  });
  std::string where = o.socket.empty() ? (o.ip.empty() ? "*" : o.ip) + ":" + std::to_string(raw->port) : o.socket;
  std::string api_where = o.api_socket.empty() ? o.api_ip + ":" + std::to_string(raw->api_port) : o.api_socket;
  raw->shared->log.Info("Proxying ", o.ssl.enabled() ? "https" : "http", "://", where, " with ", o.threads,
                        " threads");
  raw->shared->log.Info("Proxy API at ", o.api_ssl.enabled() ? "https" : "http", "://", api_where, "/api/routes");
  if (metrics_port) {
    raw->shared->log.Info("Prometheus metrics at http://", o.metrics_ip.empty() ? "*" : o.metrics_ip, ":",
                          metrics_port, "/metrics");
  }
  if (o.auth_token.empty()) {
    raw->shared->log.Warn("REST API is not authenticated: set CONFIGPROXY_AUTH_TOKEN");
  }
  for (auto& w : raw->workers) {
    raw->threads.emplace_back([ctx = &w->ctx] { ctx->run(); });
  }
  return proxy;
}

void Proxy::Stop() { impl_->Stop(); }

int Proxy::Wait() {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [&] { return impl_->stopped; });
  return 0;
}

uint16_t Proxy::port() const { return impl_->port; }
uint16_t Proxy::api_port() const { return impl_->api_port; }

}  // namespace elsa::proxy
