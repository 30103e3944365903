// The proxy's client side of a backend websocket: the opening handshake, replayed with the
// browser's own request (URL, session_id, cookies, Host, Origin, subprotocol offer) every time
// the tunnel (re)connects. permessage-deflate is never offered: frames are relayed one by one.
#pragma once

#include <chrono>
#include <string>
#include <variant>

#include <boost/asio/awaitable.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/string_body.hpp>

#include "stream.h"
#include "url.h"

namespace elsa::proxy {

namespace http = beast::http;
struct Shared;

struct BackendWs {
  AnyStream stream;
  std::string leftover;  // frames that arrived with the 101
  std::string protocol;  // the subprotocol the backend chose, if any
  http::fields headers;  // the 101's other end-to-end headers (Set-Cookie, ...)
};

// What the backend answered instead of 101; relayed to the browser on a first connect.
struct BackendRefused {
  http::response<http::string_body> response;
};

// `request` is the browser's upgrade request, already passed through PrepareForwardHeaders
// and given the forwarded target; the key and the upgrade headers are set here.
net::awaitable<Result<std::variant<BackendWs, BackendRefused>>> ConnectBackendWs(
    Shared& shared, const TargetUrl& target, http::request_header<> request,
    std::chrono::milliseconds timeout);

// Checks a browser's upgrade request: Sec-WebSocket-Key and -Version 13. The error message is
// what the 400 says.
Status CheckBrowserUpgrade(const http::request_header<>& request);

// The 101 for the browser, from what the backend answered.
std::string BrowserSwitchingProtocols(const http::request_header<>& browser, const BackendWs& backend);

}  // namespace elsa::proxy
