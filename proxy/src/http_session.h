// One client connection to the public listener (requests proxied, websockets tunnelled) or to
// the API listener (configurable-http-proxy's REST API and the migration API).
#pragma once

#include <boost/asio/awaitable.hpp>

#include "server.h"

namespace elsa::proxy {

class Api;

net::awaitable<void> ServeClient(Shared& shared, Worker& worker, AnyStream stream, ClientInfo client);
net::awaitable<void> ServeApiClient(Shared& shared, Api& api, AnyStream stream);

}  // namespace elsa::proxy
