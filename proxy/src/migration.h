// The migration API's machinery: per-route pause state and the tunnels to pause and resume,
// and the execution of /api/migration commands (parsed by Api). A pause waits until every
// backend websocket of the route has closed cleanly (or was cut after the drain timeout), so
// when it returns the Jupyter server is buffering; a resume waits until every tunnel has
// reconnected (or given up and closed its browser with 1011).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "api.h"
#include "metrics.h"
#include "stream.h"

namespace elsa::proxy {

struct Shared;
class Tunnel;

class RouteControl {
 public:
  // Requests arriving while paused wait for this.
  bool paused() const { return paused_.load(std::memory_order_acquire); }
  // Adds a live tunnel; true if the route is paused (the tunnel must pause itself).
  bool Register(const std::shared_ptr<Tunnel>& tunnel);
  std::vector<std::shared_ptr<Tunnel>> Tunnels();

 private:
  friend class Migrations;
  std::mutex mu_;
  std::atomic<bool> paused_{false};
  uint64_t epoch_ = 0;  // counts pauses: an automatic resume only ends its own pause
  int64_t paused_at_ms_ = 0;
  std::chrono::steady_clock::time_point paused_since_;  // for elsa_proxy_route_pause_seconds
  std::vector<std::weak_ptr<Tunnel>> tunnels_;
};

// elsa_proxy_routes and elsa_proxy_routes_paused, read from the table when scraped: a route
// removed while paused cannot leave a count behind.
void AddRouteGauges(MetricsRegistry& registry, const RouteTable& routes);

class Migrations {
 public:
  explicit Migrations(Shared& shared) : shared_(shared) {}
  // Runs on the API's executor.
  net::awaitable<ApiResponse> Execute(const MigrationCommand& cmd);

 private:
  net::awaitable<ApiResponse> Pause(const MigrationCommand& cmd);
  net::awaitable<ApiResponse> Resume(const std::string& path, std::chrono::milliseconds timeout,
                                     uint64_t only_epoch);
  net::awaitable<void> AutoResume(std::string path, uint64_t epoch, std::chrono::milliseconds after);
  nlohmann::ordered_json StateOf(const std::string& path);

  Shared& shared_;
};

}  // namespace elsa::proxy
