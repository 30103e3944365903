// What the public port does with a request before any backend sees it: Beast's HTTP parser
// with our header limit, then the request-target split, decoded, checked for dot segments and
// routed. Whatever the bytes, no crash, and a routed request never carries "." or "..".
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "route_table.h"
#include "url.h"

namespace http = boost::beast::http;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  http::request_parser<http::empty_body> parser;
  parser.header_limit(16 * 1024);
  parser.eager(false);
  boost::beast::error_code ec;
  size_t used = 0;
  while (used < size && !parser.is_header_done()) {
    size_t n = parser.put(boost::asio::buffer(data + used, size - used), ec);
    if (ec || n == 0) return 0;
    used += n;
  }
  if (!parser.is_header_done()) return 0;
  auto target = elsa::proxy::ParseRequestTarget(parser.get().target());
  if (!target.ok()) return 0;
  auto path = elsa::proxy::DecodeUriComponent(target->path);
  if (!path.ok() || elsa::proxy::HasDotSegment(*path)) return 0;
  elsa::proxy::RouteTable routes(false);
  nlohmann::ordered_json d;
  d["target"] = "http://127.0.0.1:1/base";
  routes.Add("/user/alice", d, 0);
  auto match = routes.Find(*path);
  if (match) {
    std::string forwarded = elsa::proxy::JoinForwardPath(match->target->url->path, target->PathAndQuery());
    if (forwarded.empty() || forwarded[0] != '/') __builtin_trap();
  }
  return 0;
}
