#include "migration.h"

#include <algorithm>
#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include "iso_time.h"
#include "server.h"
#include "tunnel.h"

namespace elsa::proxy {

using nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

// Long enough for a kernel to answer what it was asked just before the pause; short enough
// not to hold a migration up behind a chatty backend.
constexpr std::chrono::milliseconds kDefaultQuiet{250};
constexpr std::chrono::milliseconds kDefaultQuietMax{5000};

ApiResponse JsonResponse(int status, const ordered_json& body) {
  return {status, "application/json", body.dump(-1, ' ', false, ordered_json::error_handler_t::replace)};
}

ApiResponse Error(int status, const std::string& message) {
  ordered_json body;
  body["error"] = message;
  return JsonResponse(status, body);
}

// Waits (polling: the tunnels report from other threads) until every tunnel has answered.
net::awaitable<void> WaitFor(const Ticket& ticket, Clock::time_point deadline) {
  net::steady_timer timer(co_await net::this_coro::executor);
  while (ticket.pending.load() > 0 && Clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(5));
    co_await timer.async_wait(kTuple);
  }
}

}  // namespace

bool RouteControl::Register(const std::shared_ptr<Tunnel>& tunnel) {
  std::lock_guard lock(mu_);
  std::erase_if(tunnels_, [](const auto& w) { return w.expired(); });
  tunnels_.push_back(tunnel);
  return paused_.load();
}

std::vector<std::shared_ptr<Tunnel>> RouteControl::Tunnels() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Tunnel>> out;
  std::erase_if(tunnels_, [&](const auto& w) {
    auto t = w.lock();
    const bool gone = !t;
    if (t) out.push_back(std::move(t));
    return gone;
  });
  return out;
}

void AddRouteGauges(MetricsRegistry& registry, const RouteTable& routes) {
  registry.AddGaugeFunction("elsa_proxy_routes", "Routes in the table.",
                            [&routes] { return static_cast<double>(routes.size()); });
  registry.AddGaugeFunction("elsa_proxy_routes_paused", "Routes paused for a migration.", [&routes] {
    const auto all = routes.All();
    return static_cast<double>(std::count_if(all.begin(), all.end(), [](const std::shared_ptr<Route>& r) {
      return r->control() && r->control()->paused();
    }));
  });
}

ordered_json Migrations::StateOf(const std::string& path) {
  auto route = shared_.routes.Lookup(path);
  if (!route || !route->control()) return nullptr;
  RouteControl& c = *route->control();
  auto targets = shared_.routes.TargetsOf(*route);
  ordered_json out;
  out["path"] = route->path();
  out["state"] = c.paused() ? "paused" : "running";
  out["hub_target"] = targets.hub;
  out["target"] = targets.internal.value_or(targets.hub);
  out["websockets"] = c.Tunnels().size();
  if (c.paused()) {
    std::lock_guard lock(c.mu_);
    out["paused_since"] = FormatIsoMillis(c.paused_at_ms_);
  }
  return out;
}

net::awaitable<ApiResponse> Migrations::Execute(const MigrationCommand& cmd) {
  using Kind = MigrationCommand::Kind;
  if (cmd.kind == Kind::kList) {
    ordered_json routes = ordered_json::object();
    for (const auto& r : shared_.routes.All()) routes[r->path()] = StateOf(r->path());
    ordered_json body;
    body["routes"] = std::move(routes);
    co_return JsonResponse(200, body);
  }
  auto route = shared_.routes.Lookup(cmd.path);
  if (!route || !route->control()) co_return Error(404, "no route " + cmd.path);
  switch (cmd.kind) {
    case Kind::kGet:
      co_return JsonResponse(200, StateOf(cmd.path));
    case Kind::kPause:
      co_return co_await Pause(cmd);
    case Kind::kRetarget: {
      Status s = shared_.routes.SetInternalTarget(cmd.path, cmd.target);
      if (!s.ok()) co_return Error(s.code() == StatusCode::kNotFound ? 404 : 400, s.message());
      shared_.log.Info("Route ", route->path(), " retargeted to ",
                       cmd.target.value_or("the hub's target"));
      co_return JsonResponse(200, StateOf(cmd.path));
    }
    case Kind::kResume: {
      if (cmd.set_target) {
        Status s = shared_.routes.SetInternalTarget(cmd.path, cmd.target);
        if (!s.ok()) co_return Error(s.code() == StatusCode::kNotFound ? 404 : 400, s.message());
      }
      co_return co_await Resume(cmd.path, cmd.timeout.value_or(shared_.options.resume_timeout), 0);
    }
    case Kind::kList:
      break;
  }
  co_return Error(500, "unhandled migration command");
}

net::awaitable<ApiResponse> Migrations::Pause(const MigrationCommand& cmd) {
  auto route = shared_.routes.Lookup(cmd.path);
  RouteControl& c = *route->control();
  uint64_t epoch;
  {
    std::lock_guard lock(c.mu_);
    if (!c.paused_.load()) {
      c.paused_at_ms_ = NowMillis();
      c.paused_since_ = Clock::now();
    }
    c.paused_.store(true, std::memory_order_release);
    epoch = ++c.epoch_;
  }
  PausePlan plan;
  plan.quiet = cmd.quiet.value_or(kDefaultQuiet);
  plan.quiet_max = cmd.quiet_max.value_or(kDefaultQuietMax);
  plan.drain = cmd.drain_timeout.value_or(shared_.options.drain_timeout);
  auto tunnels = c.Tunnels();
  auto ticket = std::make_shared<Ticket>(static_cast<int>(tunnels.size()));
  for (auto& t : tunnels) {
    net::post(t->executor(), [t, ticket, plan] { t->Pause(ticket, plan); });
  }
  co_await WaitFor(*ticket, Clock::now() + plan.quiet_max + plan.drain + std::chrono::seconds(2));
  // Idle keep-alive connections to the backend would be frozen with it, and a checkpoint holding
  // a connection from outside cannot be restored where the backend's address is not (CRIU
  // fails the restore): every worker closes its idle ones to this target now.
  if (auto target = shared_.routes.TargetOf(*route); target && target->url) {
    auto dropped = std::make_shared<Ticket>(static_cast<int>(shared_.workers.size()));
    for (Worker* w : shared_.workers)
      net::post(w->ctx, [w, key = target->url->Key(), dropped] {
        w->pool.Drop(key);
        dropped->Done(true);
      });
    co_await WaitFor(*dropped, Clock::now() + std::chrono::seconds(2));
  }
  const auto timeout = cmd.timeout.value_or(shared_.options.max_pause);
  net::co_spawn(co_await net::this_coro::executor, AutoResume(route->path(), epoch, timeout), net::detached);
  shared_.log.Info("Route ", route->path(), " paused: ", tunnels.size(), " websockets, ", ticket->failed.load(),
                   " cut after the drain timeout");
  ordered_json body = StateOf(cmd.path);
  body["drained"] = ticket->ok.load();
  body["cut"] = ticket->failed.load();
  body["resumes_in_ms"] = timeout.count();
  co_return JsonResponse(200, body);
}

net::awaitable<void> Migrations::AutoResume(std::string path, uint64_t epoch,
                                            std::chrono::milliseconds after) {
  auto route = shared_.routes.Lookup(path);
  if (!route) co_return;
  net::steady_timer timer(co_await net::this_coro::executor);
  timer.expires_after(after);
  co_await timer.async_wait(kTuple);
  {
    std::lock_guard lock(route->control()->mu_);
    if (!route->control()->paused_.load() || route->control()->epoch_ != epoch) co_return;
  }
  shared_.log.Warn("Route ", path, " paused longer than ", after.count(),
                   " ms: resuming it");
  co_await Resume(path, shared_.options.resume_timeout, epoch);
}

net::awaitable<ApiResponse> Migrations::Resume(const std::string& path, std::chrono::milliseconds timeout,
                                               uint64_t only_epoch) {
  auto route = shared_.routes.Lookup(path);
  if (!route) co_return Error(404, "no route " + path);
  RouteControl& c = *route->control();
  std::optional<Clock::duration> paused_for;  // none when resuming a route that was not paused
  {
    std::lock_guard lock(c.mu_);
    if (only_epoch && c.epoch_ != only_epoch) co_return Error(409, "paused again since");
    ++c.epoch_;  // a pending automatic resume is void now
    if (c.paused_.load()) paused_for = Clock::now() - c.paused_since_;
    c.paused_.store(false, std::memory_order_release);
  }
  if (paused_for) {
    shared_.metrics.route_pause_seconds.Observe(std::chrono::duration<double>(*paused_for).count());
  }
  auto tunnels = c.Tunnels();
  auto ticket = std::make_shared<Ticket>(static_cast<int>(tunnels.size()));
  const auto deadline = Clock::now() + timeout;
  for (auto& t : tunnels) {
    net::post(t->executor(), [t, ticket, deadline] { t->Resume(ticket, deadline); });
  }
  co_await WaitFor(*ticket, deadline + std::chrono::seconds(2));
  auto targets = shared_.routes.TargetsOf(*route);
  shared_.log.Info("Route ", route->path(), " resumed on ", targets.internal.value_or(targets.hub), ": ",
                   ticket->ok.load(), " websockets reconnected, ", ticket->failed.load(), " failed");
  ordered_json body = StateOf(path);
  body["reconnected"] = ticket->ok.load();
  body["failed"] = ticket->failed.load();
  co_return JsonResponse(200, body);
}

}  // namespace elsa::proxy
