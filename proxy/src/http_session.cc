#include "http_session.h"

#include <sys/socket.h>

#include <boost/asio/write.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include "api.h"
#include "backend_ws.h"
#include "error_pages.h"
#include "iso_time.h"
#include "migration.h"
#include "tunnel.h"

namespace elsa::proxy {

namespace {

using Clock = std::chrono::steady_clock;

// What a request that failed to parse gets: Node answers these codes too.
int StatusForReadError(const error_code& ec) {
  if (ec == http::error::header_limit) return 431;
  if (ec == beast::error::timeout) return 408;
  return 400;
}

bool QuietEnd(const error_code& ec, size_t buffered) {
  return buffered == 0 && (ec == http::error::end_of_stream || ec == net::error::eof ||
                           ec == net::error::connection_reset || ec == beast::error::timeout ||
                           ec == net::error::operation_aborted);
}

// A request that could not be read is answered with the status Node gives it, unless the
// client just went away between requests. Returns that status, or 0 if nothing was sent.
net::awaitable<int> AnswerUnreadable(Shared& shared, AnyStream& stream, const error_code& ec, size_t buffered,
                                     std::string_view what) {
  if (QuietEnd(ec, buffered)) co_return 0;
  const int status = ec == http::error::body_limit ? 413 : StatusForReadError(ec);
  shared.log.Warn(status, " ", what, ": ", ec.message());
  co_await SendSimple(stream, status, "text/plain", std::string(StatusText(status)), false, 11);
  co_return status;
}

// Failing backends are told apart for elsa_proxy_errors_total by the code ConnectBackend and
// BackendExchangeError give.
ProxyError BackendFailure(const Status& status) {
  switch (status.code()) {
    case StatusCode::kUnavailable: return ProxyError::kBackendUnreachable;
    case StatusCode::kTimeout: return ProxyError::kBackendTimeout;
    default: return ProxyError::kBackendError;
  }
}

// Requests for a paused route wait here until it resumes (or its pause runs out).
net::awaitable<void> WaitWhilePaused(const Shared& shared, RouteControl& control) {
  if (!control.paused()) co_return;
  net::steady_timer timer(co_await net::this_coro::executor);
  const auto until = Clock::now() + shared.options.max_pause + shared.options.resume_timeout;
  while (control.paused() && Clock::now() < until) {
    timer.expires_after(std::chrono::milliseconds(10));
    co_await timer.async_wait(kTuple);
  }
}

// Closing with unread request bytes would make the kernel send a reset, which can destroy the
// error response before the client reads it: stop sending, discard what still comes for a
// moment, then close (nginx's lingering close).
net::awaitable<void> LingeringClose(AnyStream& stream) {
  if (stream.valid() && !stream.encrypted()) {
    ::shutdown(stream.native_handle(), SHUT_WR);
    std::array<char, 4096> sink;
    size_t total = 0;
    stream.expires_after(std::chrono::seconds(2));
    while (total < (1u << 20)) {
      auto [ec, n] = co_await stream.async_read_some(net::buffer(sink), kTuple);
      if (ec) break;
      total += n;
    }
  }
  stream.close();
}

// Serves requests read whole (small bodies: the API's, scrapes) one after another until the
// client leaves, a request cannot be read, or `handle` answers false (connection unusable).
template <typename Handle>
net::awaitable<void> ServeWholeRequests(Shared& shared, AnyStream& stream, uint64_t body_limit,
                                        std::string_view what, Handle handle) {
  const Options& o = shared.options;
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(o.max_header_bytes));
    parser.body_limit(body_limit);
    stream.expires_after(o.header_timeout);
    auto [ec, n] = co_await http::async_read(stream, buf, parser, kTuple);
    if (ec) {
      co_await AnswerUnreadable(shared, stream, ec, buf.size(), what);
      break;
    }
    stream.expires_never();
    if (!co_await handle(parser.get())) break;
  }
  co_await LingeringClose(stream);
}

std::string RoutingHost(std::string_view host) { return std::string(host.substr(0, host.find(':'))); }

// The upgrade: the backend is asked first, with the browser's request, so the browser gets the
// backend's answer (its subprotocol, cookies, or its refusal).
net::awaitable<void> ServeWebsocket(Shared& shared, AnyStream stream, Gauge::Hold connection,
                                    beast::flat_buffer& buf, http::request_header<> request,
                                    const ClientInfo& client, const RouteTable::Match& match) {
  const unsigned version = request.version();
  const std::string raw_url(request.target());
  if (Status s = CheckBrowserUpgrade(request); !s.ok()) {
    shared.metrics.Refused(400, ProxyError::kBadRequest);
    co_await SendSimple(stream, 400, "text/plain", s.message(), false, version);
    co_return;
  }
  const TargetUrl& url = *match.target->url;
  Tunnel::Setup setup;
  setup.raw_target = raw_url;
  setup.prefix = match.prefix;
  setup.route = match.route;
  PrepareForwardHeaders(shared, request, client, url, true);
  setup.request = request;
  request.target(ForwardTarget(shared, url, raw_url, match.prefix));
  shared.log.Debug("PROXY WS ", LogUrl(raw_url), " to ", match.target->text);
  auto answer = co_await ConnectBackendWs(shared, url, std::move(request), std::chrono::seconds(10));
  if (!answer.ok()) {
    shared.log.Error("503 GET ", LogUrl(raw_url), " ", answer.status().message());
    shared.metrics.Refused(503, BackendFailure(answer.status()));
    co_await SendErrorPage(shared, stream, 503, raw_url, false, version);
    co_return;
  }
  if (auto* refused = std::get_if<BackendRefused>(&*answer)) {
    shared.metrics.Answered(refused->response.result_int());
    refused->response.keep_alive(false);
    refused->response.prepare_payload();
    co_await http::async_write(stream, refused->response, kTuple);
    co_return;
  }
  auto& ws = std::get<BackendWs>(*answer);
  setup.protocol = ws.protocol;
  std::string head = BrowserSwitchingProtocols(setup.request, ws);
  shared.metrics.Answered(101);
  stream.expires_after(shared.options.header_timeout);
  auto [ec, n] = co_await net::async_write(stream, net::buffer(head), kTuple);
  if (ec) co_return;
  stream.expires_never();
  match.route->Touch(NowMillis());
  auto data = buf.data();
  std::string leftover(static_cast<const char*>(data.data()), data.size());
  auto tunnel = std::make_shared<Tunnel>(shared, std::move(stream), std::move(connection), std::move(setup));
  tunnel->Start(std::move(ws), std::move(leftover));
}

}  // namespace

net::awaitable<void> ServeClient(Shared& shared, Worker& worker, AnyStream stream, ClientInfo client) {
  const Options& o = shared.options;
  Gauge::Hold connection(shared.metrics.client_connections);  // moves into the tunnel on an upgrade
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::buffer_body> parser;
    parser.header_limit(static_cast<uint32_t>(o.max_header_bytes));
    parser.body_limit(boost::none);
    // The whole header must arrive within the limit: a slowloris cannot hold us.
    stream.expires_after(o.timeout.count() && o.timeout < o.header_timeout ? o.timeout : o.header_timeout);
    auto [ec, n] = co_await http::async_read_header(stream, buf, parser, kTuple);
    if (ec) {
      const std::string what =
          "bad request from " + (client.address.empty() ? std::string("a local client") : client.address);
      if (int status = co_await AnswerUnreadable(shared, stream, ec, buf.size(), what)) {
        shared.metrics.Refused(status, ProxyError::kBadRequest);
      }
      break;
    }
    stream.expires_never();
    auto& req = parser.get();
    const unsigned version = req.version();
    const std::string raw_url(req.target());
    // A request whose body we do not read leaves the connection unusable.
    bool keep_alive = req.keep_alive();
    auto bad_request = [&](std::string body) -> net::awaitable<bool> {
      shared.metrics.Refused(400, ProxyError::kBadRequest);
      co_return co_await SendSimple(stream, 400, "text/plain", std::move(body), keep_alive && parser.is_done(),
                                    version);
    };
    auto refuse = [&](int status, ProxyError why) -> net::awaitable<bool> {
      shared.metrics.Refused(status, why);
      co_return co_await SendErrorPage(shared, stream, status, raw_url, keep_alive && parser.is_done(), version);
    };

    if (raw_url == "/_chp_healthz") {
      shared.metrics.Answered(200);
      if (!co_await SendSimple(stream, 200, "application/json", R"({"status": "OK"})",
                               keep_alive && parser.is_done(), version)) {
        break;
      }
      continue;
    }
    auto target = ParseRequestTarget(raw_url);
    if (!target.ok()) {
      co_await bad_request(target.status().message());
      break;
    }
    auto path = DecodeUriComponent(target->path);
    if (!path.ok()) {
      co_await bad_request("Bad request path: " + path.status().message());
      break;
    }
    if (HasDotSegment(*path)) {
      shared.log.Warn("400 ", req.method_string(), " ", LogUrl(raw_url), " refused: '.' or '..' in the path");
      if (!co_await bad_request("Paths with '.' or '..' segments are refused")) break;
      continue;
    }
    std::string routing = o.host_routing ? "/" + RoutingHost(req[http::field::host]) + *path : *path;
    auto match = shared.routes.Find(routing);
    if (match && match->route->control() && match->route->control()->paused()) {
      co_await WaitWhilePaused(shared, *match->route->control());
      match = shared.routes.Find(routing);  // it may have moved
    }
    if (!match) {
      shared.log.Error("404 ", req.method_string(), " ", LogUrl(raw_url), " ");
      if (!co_await refuse(404, ProxyError::kNoRoute)) break;
      continue;
    }
    if (!match->target->url) {
      shared.log.Error("503 ", req.method_string(), " ", LogUrl(raw_url), " ", match->target->error);
      if (!co_await refuse(503, ProxyError::kBadTarget)) break;
      continue;
    }
    if (beast::websocket::is_upgrade(req)) {
      co_await ServeWebsocket(shared, std::move(stream), std::move(connection), buf, req.base(), client, *match);
      co_return;
    }
    shared.log.Debug("PROXY WEB ", LogUrl(raw_url), " to ", match->target->text);
    auto outcome = co_await ForwardHttp(shared, worker.pool, stream, buf, parser, client,
                                        *match->target->url, match->prefix);
    if (!outcome.ok()) {
      shared.log.Error("503 ", req.method_string(), " ", LogUrl(raw_url), " ", outcome.status().message());
      if (!co_await refuse(503, BackendFailure(outcome.status()))) break;
      continue;
    }
    shared.metrics.Answered(outcome->status);
    if (outcome->status < 300) match->route->Touch(NowMillis());
    if (!outcome->keep_alive) break;
  }
  co_await LingeringClose(stream);
}

net::awaitable<void> ServeApiClient(Shared& shared, Api& api, AnyStream stream) {
  co_await ServeWholeRequests(
      shared, stream, shared.options.max_api_body_bytes, "bad API request",
      [&](const http::request<http::string_body>& req) -> net::awaitable<bool> {
        ApiRequest call;
        call.method = req.method_string();
        call.target = req.target();
        if (auto it = req.find(http::field::authorization); it != req.end()) call.authorization = it->value();
        call.body = req.body();
        auto result = api.Handle(call, NowMillis());
        ApiResponse response;
        if (auto* direct = std::get_if<ApiResponse>(&result)) {
          response = std::move(*direct);
        } else {
          response = co_await shared.migrations->Execute(std::get<MigrationCommand>(result));
        }
        const int code = response.status;
        const std::string line = std::to_string(code) + " " + std::string(req.method_string()) + " " +
                                 std::string(LogUrl(req.target())) +
                                 (code >= 400 && response.body.size() < 200 ? " " + response.body : "");
        shared.log.Log(code < 400 ? LogLevel::kInfo : code < 500 ? LogLevel::kWarn : LogLevel::kError, line);
        co_return co_await SendSimple(stream, code, response.content_type, std::move(response.body),
                                      req.keep_alive(), req.version());
      });
}

net::awaitable<void> ServeMetricsClient(Shared& shared, AnyStream stream) {
  // Scrapers send no body; anything larger than this is not a scrape.
  constexpr uint64_t kMaxBody = 4096;
  co_await ServeWholeRequests(
      shared, stream, kMaxBody, "bad metrics request",
      [&](const http::request<http::string_body>& req) -> net::awaitable<bool> {
        const bool keep_alive = req.keep_alive();
        auto target = ParseRequestTarget(req.target());
        if (!target.ok() || target->path != "/metrics") {
          co_return co_await SendSimple(stream, 404, "text/plain", "Not Found: this port serves only /metrics",
                                        keep_alive, req.version());
        }
        if (req.method() != http::verb::get) {
          http::fields allow;
          allow.set(http::field::allow, "GET");
          co_return co_await SendSimple(stream, 405, "text/plain", "Method Not Allowed: GET /metrics", keep_alive,
                                        req.version(), std::move(allow));
        }
        co_return co_await SendSimple(stream, 200, "text/plain; version=0.0.4; charset=utf-8",
                                      shared.metrics_registry.Render(), keep_alive, req.version());
      });
}

}  // namespace elsa::proxy
