// What every connection handler of one elsa-proxy shares: the options, the log, the routes,
// the migration controller, the metrics, TLS contexts; and each worker thread's own io_context
// and pool of idle backend connections. Owned by Proxy::Impl (proxy.cc); handlers hold references.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "backend.h"
#include "log.h"
#include "metrics.h"
#include "route_table.h"
#include "stream.h"

namespace elsa::proxy {

class Migrations;

// Completion token for coroutines that look at error codes instead of catching exceptions.
inline constexpr auto kTuple = net::as_tuple(net::use_awaitable);

struct Worker {
  Worker(size_t idle_per_host, std::chrono::milliseconds idle_timeout)
      : ctx(1), keep_running(ctx.get_executor()), pool(idle_per_host, idle_timeout) {}
  net::io_context ctx;  // single-threaded: nothing a worker owns needs a lock
  net::executor_work_guard<net::io_context::executor_type> keep_running;  // run() even when idle
  BackendPool pool;
};

struct Shared {
  Shared(const Options& o, RouteTable::ControlFactory factory)
      : options(o),
        log(o.log_level, 2, o.log_format),
        routes(o.host_routing, std::move(factory)),
        metrics(metrics_registry, std::chrono::system_clock::now()) {}
  const Options& options;
  Logger log;
  RouteTable routes;
  MetricsRegistry metrics_registry;  // what the metrics listener renders
  ProxyMetrics metrics;              // counted whether or not --metrics-port serves them
  std::shared_ptr<net::ssl::context> client_tls;  // for https/wss targets
  Migrations* migrations = nullptr;
  std::vector<Worker*> workers;  // for work that must reach every worker's pool
};

// How a client reached us, for X-Forwarded-* headers.
struct ClientInfo {
  std::string address;  // empty for Unix sockets
  bool tls = false;
};

}  // namespace elsa::proxy
