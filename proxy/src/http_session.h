// One client connection to the public listener (requests proxied, websockets tunnelled), to
// the API listener (configurable-http-proxy's REST API and the migration API), or to the
// metrics listener (GET /metrics and nothing else: never a route, never the API).
#pragma once

#include <boost/asio/awaitable.hpp>

#include "server.h"

namespace elsa::proxy {

class Api;

net::awaitable<void> ServeClient(Shared& shared, Worker& worker, AnyStream stream, ClientInfo client);
net::awaitable<void> ServeApiClient(Shared& shared, Api& api, AnyStream stream);
net::awaitable<void> ServeMetricsClient(Shared& shared, AnyStream stream);

}  // namespace elsa::proxy
