// elsa-proxy: an HTTP and websocket reverse proxy that JupyterHub drives exactly as it drives
// configurable-http-proxy (same flags, same REST API), and that keeps browsers' websockets open
// while a route's backend is paused, moved and retargeted (the migration API; docs/proxy.md).
#pragma once

#include <cstdint>
#include <memory>

#include "elsa/proxy/options.h"
#include "elsa/status.h"

namespace elsa::proxy {

class Proxy {
 public:
  // Binds every listener (so a taken port is an error here, not later), then serves on
  // options.threads threads. SIGTERM and SIGINT stop it.
  static Result<std::unique_ptr<Proxy>> Start(Options options);
  ~Proxy();  // stops and joins
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Thread-safe, idempotent: stop accepting, drop every connection, let Wait() return.
  void Stop();
  // Blocks until stopped; returns the exit code for main (0 after a signal or Stop()).
  int Wait();

  // The bound ports (useful with port 0); 0 for Unix sockets.
  uint16_t port() const;
  uint16_t api_port() const;

  struct Impl;

 private:
  explicit Proxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace elsa::proxy
