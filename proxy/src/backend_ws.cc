#include "backend_ws.h"

#include <openssl/rand.h>

#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include "backend.h"
#include "server.h"
#include "ws_codec.h"

namespace elsa::proxy {

namespace {

std::string NewKey() {
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof raw) != 1) {
    for (size_t i = 0; i < sizeof raw; ++i) raw[i] = static_cast<unsigned char>(i * 37 + 11);
  }
  return Base64Encode(std::string_view(reinterpret_cast<const char*>(raw), sizeof raw));
}

bool PassToBrowser(const http::fields::value_type& f) {
  switch (f.name()) {
    case http::field::connection:
    case http::field::upgrade:
    case http::field::keep_alive:
    case http::field::content_length:
    case http::field::transfer_encoding:
    case http::field::sec_websocket_accept:
    case http::field::sec_websocket_extensions:
    case http::field::sec_websocket_protocol:
      return false;
    default:
      return true;
  }
}

}  // namespace

Status CheckBrowserUpgrade(const http::request_header<>& request) {
  auto key = request[http::field::sec_websocket_key];
  if (key.size() != 24 || key[22] != '=' || key[23] != '=') {
    return Status::InvalidArgument("Sec-WebSocket-Key must be 16 bytes in base64");
  }
  if (request[http::field::sec_websocket_version] != "13") {
    return Status::InvalidArgument("only Sec-WebSocket-Version 13 is supported");
  }
  if (request.method() != http::verb::get) return Status::InvalidArgument("a websocket upgrade must be a GET");
  return Status::Ok();
}

net::awaitable<Result<std::variant<BackendWs, BackendRefused>>> ConnectBackendWs(
    Shared& shared, const TargetUrl& target, http::request_header<> request,
    std::chrono::milliseconds timeout) {
  auto stream = co_await ConnectBackend(shared, target, timeout);
  if (!stream.ok()) co_return stream.status();
  const std::string key = NewKey();
  request.version(11);
  request.set(http::field::connection, "Upgrade");
  request.set(http::field::upgrade, "websocket");
  request.set(http::field::sec_websocket_key, key);
  request.set(http::field::sec_websocket_version, "13");
  request.erase(http::field::sec_websocket_extensions);
  request.erase(http::field::content_length);
  request.erase(http::field::transfer_encoding);
  http::request<http::empty_body> message(std::move(request));
  stream->expires_after(timeout);
  auto [wec, w] = co_await http::async_write(*stream, message, kTuple);
  if (wec) co_return BackendExchangeError("websocket handshake with " + target.Key(), wec);

  beast::flat_buffer buf;
  http::response_parser<http::empty_body> header_parser;
  header_parser.header_limit(64 * 1024);
  auto [rec, r] = co_await http::async_read_header(*stream, buf, header_parser, kTuple);
  if (rec) co_return BackendExchangeError("websocket handshake with " + target.Key(), rec);
  if (header_parser.get().result() != http::status::switching_protocols) {
    http::response_parser<http::string_body> p(std::move(header_parser));
    p.body_limit(1024 * 1024);
    auto [bec, b] = co_await http::async_read(*stream, buf, p, kTuple);
    if (bec && bec != http::error::end_of_stream) {
      co_return BackendExchangeError("reading the refusal of " + target.Key(), bec);
    }
    BackendRefused refused{p.release()};
    co_return std::variant<BackendWs, BackendRefused>(std::move(refused));
  }
  const auto& res = header_parser.get();
  if (res[http::field::sec_websocket_accept] != WsAcceptFor(key)) {
    co_return Status::ProtocolError(target.Key() + " answered the websocket handshake with a wrong "
                                    "Sec-WebSocket-Accept");
  }
  if (!res[http::field::sec_websocket_extensions].empty()) {
    co_return Status::ProtocolError(target.Key() + " negotiated an extension that was not offered");
  }
  stream->expires_never();
  BackendWs ws;
  ws.protocol = std::string(res[http::field::sec_websocket_protocol]);
  for (const auto& f : res) {
    if (PassToBrowser(f)) ws.headers.insert(f.name_string(), f.value());
  }
  auto data = buf.data();
  ws.leftover.assign(static_cast<const char*>(data.data()), data.size());
  ws.stream = std::move(stream).value();
  co_return std::variant<BackendWs, BackendRefused>(std::move(ws));
}

std::string BrowserSwitchingProtocols(const http::request_header<>& browser, const BackendWs& backend) {
  std::string out = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
  out += "Sec-WebSocket-Accept: " + WsAcceptFor(browser[http::field::sec_websocket_key]) + "\r\n";
  if (!backend.protocol.empty()) out += "Sec-WebSocket-Protocol: " + backend.protocol + "\r\n";
  for (const auto& f : backend.headers) {
    out.append(f.name_string()).append(": ").append(f.value()).append("\r\n");
  }
  out += "\r\n";
  return out;
}

}  // namespace elsa::proxy
