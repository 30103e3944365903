#include "backend.h"

#include <boost/asio/ip/address.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include "iso_time.h"
#include "server.h"

namespace elsa::proxy {

namespace {

// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus those a proxy
// must not pass on. Transfer-Encoding and Content-Length stay: they frame the body we relay.
constexpr http::field kHopByHop[] = {http::field::connection, http::field::keep_alive,
                                     http::field::proxy_connection, http::field::te,
                                     http::field::trailer, http::field::upgrade,
                                     http::field::proxy_authorization};

void DropHopByHop(http::fields& f) {
  // Headers named in Connection are hop-by-hop too.
  std::vector<std::string> named;
  for (auto token : http::token_list(f[http::field::connection])) named.emplace_back(token);
  for (const auto& n : named) {
    if (!beast::iequals(n, "close") && !beast::iequals(n, "keep-alive") && !beast::iequals(n, "upgrade")) {
      f.erase(n);
    }
  }
  for (auto h : kHopByHop) f.erase(h);
}

void AppendForwarded(http::fields& f, std::string_view name, std::string_view value) {
  auto it = f.find(name);
  if (it == f.end()) {
    f.set(name, value);
  } else {
    std::string joined(it->value());
    joined.append(",").append(value);
    f.set(name, joined);
  }
}

// A body in transit: both directions of an exchange go through here.
template <bool IsRequest>
net::awaitable<error_code> Relay(AnyStream& in, beast::flat_buffer& in_buf,
                                 http::parser<IsRequest, http::buffer_body>& p, AnyStream& out,
                                 std::chrono::milliseconds idle) {
  http::serializer<IsRequest, http::buffer_body> sr{p.get()};
  std::array<char, 16384> buf;
  do {
    if (!p.is_done()) {
      p.get().body().data = buf.data();
      p.get().body().size = buf.size();
      in.expires_after(idle);
      auto [ec, n] = co_await http::async_read(in, in_buf, p, kTuple);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) co_return ec;
      p.get().body().size = buf.size() - p.get().body().size;
      p.get().body().data = buf.data();
      p.get().body().more = !p.is_done();
    } else {
      p.get().body().data = nullptr;
      p.get().body().size = 0;
      p.get().body().more = false;
    }
    out.expires_after(idle);
    auto [ec, n] = co_await http::async_write(out, sr, kTuple);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return ec;
  } while (!p.is_done() && !sr.is_done());
  in.expires_never();
  out.expires_never();
  co_return error_code{};
}

}  // namespace

std::optional<AnyStream> BackendPool::Take(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end()) return std::nullopt;
  auto now = std::chrono::steady_clock::now();
  while (!it->second.empty()) {
    Idle idle = std::move(it->second.back());  // the most recently used: least likely closed
    it->second.pop_back();
    if (now - idle.since < idle_timeout_ && idle.stream.LooksAlive()) return std::move(idle.stream);
  }
  idle_.erase(it);
  return std::nullopt;
}

void BackendPool::Give(const std::string& key, AnyStream stream) {
  auto& list = idle_[key];
  auto now = std::chrono::steady_clock::now();
  // Expired connections at the front go first; the oldest goes if the list is full.
  while (!list.empty() && (now - list.front().since >= idle_timeout_ || list.size() >= max_idle_)) {
    list.pop_front();
  }
  if (max_idle_ > 0) list.push_back(Idle{std::move(stream), now});
}

net::awaitable<Result<AnyStream>> ConnectBackend(const Shared& shared, const TargetUrl& target,
                                                 std::chrono::milliseconds timeout) {
  auto ex = co_await net::this_coro::executor;
  beast::tcp_stream s(ex);
  s.expires_after(timeout);
  error_code ec;
  auto address = net::ip::make_address(target.host, ec);
  if (!ec) {
    std::tie(ec) = co_await s.async_connect(tcp::endpoint(address, target.port), kTuple);
  } else {
    tcp::resolver resolver(ex);
    auto [rec, results] = co_await resolver.async_resolve(target.host, std::to_string(target.port), kTuple);
    if (rec) co_return Status::Unavailable("cannot resolve " + target.host + ": " + rec.message());
    tcp::endpoint ignored;
    std::tie(ec, ignored) = co_await s.async_connect(results, kTuple);
  }
  if (ec) {
    co_return Status::Unavailable("connect to " + target.Key() + ": " +
                                  (ec == beast::error::timeout ? "timed out" : ec.message()));
  }
  s.expires_never();
  tcp::socket socket = s.release_socket();
  if (!target.tls()) co_return MakeTcpStream(std::move(socket));
  co_return co_await MakeTlsClientStream(std::move(socket), *shared.client_tls, target.host,
                                         !shared.options.insecure, timeout);
}

Status BackendExchangeError(std::string_view what, const error_code& ec) {
  if (ec == beast::error::timeout) return Status::Timeout(std::string(what) + ": timed out");
  return Status::PeerClosed(std::string(what) + ": " + ec.message());
}

std::string ForwardTarget(const Shared& shared, const TargetUrl& target, std::string_view raw_target,
                          std::string_view prefix) {
  std::string url(raw_target);
  if (!shared.options.include_prefix && prefix != "/") url = url.substr(std::min(prefix.size(), url.size()));
  auto parsed = ParseRequestTarget(url);
  std::string path = parsed.ok() ? parsed->PathAndQuery() : "/";
  return shared.options.prepend_path ? JoinForwardPath(target.path, path) : path;
}

void PrepareForwardHeaders(const Shared& shared, http::fields& f, const ClientInfo& client,
                           const TargetUrl& target, bool websocket) {
  const Options& o = shared.options;
  std::string host(f[http::field::host]);
  DropHopByHop(f);
  if (o.x_forward) {
    // http-proxy's xfwd: appended to what earlier proxies set.
    std::string port = client.tls ? "443" : "80";
    if (size_t colon = host.rfind(':'); colon != std::string::npos && host.find(']', colon) == std::string::npos) {
      port = host.substr(colon + 1);
    }
    AppendForwarded(f, "X-Forwarded-For", client.address);
    AppendForwarded(f, "X-Forwarded-Port", port);
    AppendForwarded(f, "X-Forwarded-Proto",
                    websocket ? (client.tls ? "wss" : "ws") : (client.tls ? "https" : "http"));
    if (f.find("X-Forwarded-Host") == f.end()) f.set("X-Forwarded-Host", host);
  }
  if (o.change_origin || host.empty()) f.set(http::field::host, target.HostHeader());
  for (const auto& [name, value] : o.custom_headers) f.set(name, value);
}

net::awaitable<Result<ForwardOutcome>> ForwardHttp(Shared& shared, BackendPool& pool,
                                                   AnyStream& client, beast::flat_buffer& client_buf,
                                                   http::request_parser<http::buffer_body>& parser,
                                                   const ClientInfo& info, const TargetUrl& target,
                                                   std::string_view prefix) {
  const Options& o = shared.options;
  auto& req = parser.get();
  const bool client_keep_alive = req.keep_alive();
  const unsigned client_version = req.version();
  const bool head = req.method() == http::verb::head;
  req.target(ForwardTarget(shared, target, req.target(), prefix));
  PrepareForwardHeaders(shared, req, info, target, false);
  req.version(11);
  req.keep_alive(true);
  const bool has_body = !parser.is_done();
  const std::chrono::milliseconds idle = o.timeout.count() ? o.timeout : std::chrono::milliseconds(300000);
  const std::string key = target.Key();

  ForwardOutcome out;
  // A pooled connection may have been closed by the backend while we sent: retried once on a
  // fresh one, when no body has been consumed (so the request can be sent again as it was).
  for (int attempt = 0;; ++attempt) {
    std::optional<AnyStream> pooled = attempt == 0 ? pool.Take(key) : std::nullopt;
    const bool reused = pooled.has_value();
    AnyStream backend;
    if (reused) {
      backend = std::move(*pooled);
    } else {
      auto fresh = co_await ConnectBackend(shared, target, std::chrono::milliseconds(10000));
      if (!fresh.ok()) co_return fresh.status();
      backend = std::move(fresh).value();
    }
    error_code ec = co_await Relay<true>(client, client_buf, parser, backend, idle);
    if (ec && reused && !has_body) continue;
    if (ec) co_return BackendExchangeError("sending the request to " + key, ec);

    http::response_parser<http::buffer_body> rp;
    rp.body_limit(boost::none);
    rp.header_limit(64 * 1024);
    rp.skip(head);
    beast::flat_buffer backend_buf;
    if (o.proxy_timeout.count()) {
      backend.expires_after(o.proxy_timeout);
    } else {
      backend.expires_never();
    }
    auto [rec, n] = co_await http::async_read_header(backend, backend_buf, rp, kTuple);
    if (rec && reused && !has_body && backend_buf.size() == 0 && rec != beast::error::timeout) continue;
    if (rec) co_return BackendExchangeError("reading the answer of " + key, rec);
    auto& res = rp.get();
    out.status = res.result_int();
    const bool backend_keep_alive = res.keep_alive() && !rp.need_eof();
    DropHopByHop(res);
    out.keep_alive = client_keep_alive && !rp.need_eof();
    res.version(client_version == 10 ? 10 : 11);
    res.keep_alive(out.keep_alive);
    out.responded = true;
    ec = co_await Relay<false>(backend, backend_buf, rp, client, idle);
    if (ec) {
      out.keep_alive = false;
      shared.metrics.Failed(ProxyError::kResponseInterrupted);
      shared.log.Debug("relaying the answer of ", key, " failed: ", ec.message());
      co_return out;
    }
    if (backend_keep_alive) pool.Give(key, std::move(backend));
    co_return out;
  }
}

}  // namespace elsa::proxy
