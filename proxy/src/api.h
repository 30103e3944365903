// The REST API. /api/routes behaves as configurable-http-proxy 4.5's (same paths, status codes,
// JSON shapes and even the order of checks: a POST's body is parsed before its token is
// checked). /api/migration is Elsa's: the requests are parsed and authorized here, and carried
// out by the server, because pausing and resuming wait on live connections.
//
// Pure: no I/O, so it can be fuzzed and tested without sockets.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "log.h"
#include "route_table.h"

namespace elsa::proxy {

struct ApiRequest {
  std::string_view method;                       // "GET", "POST", ...
  std::string_view target;                       // request-target, e.g. /api/routes/user/a?x=1
  std::optional<std::string_view> authorization; // the first Authorization header, if any
  std::string_view body;
};

struct ApiResponse {
  int status = 200;
  std::string content_type;  // empty: no Content-Type header (as CHP's plain failures)
  std::string body;
};

// A migration request, parsed and authorized; see docs/proxy.md.
struct MigrationCommand {
  enum class Kind { kList, kGet, kPause, kRetarget, kResume };
  Kind kind = Kind::kList;
  std::string path;                       // cleaned route path (all but kList)
  bool set_target = false;                // retarget/resume: change the internal target
  std::optional<std::string> target;      // the new one; nullopt clears it (back to the hub's)
  std::optional<std::chrono::milliseconds> timeout;        // pause: until it resumes itself;
                                                           // resume: for reconnecting
  std::optional<std::chrono::milliseconds> drain_timeout;  // pause: cut backends after this
  std::optional<std::chrono::milliseconds> quiet;          // pause: wait for backends to go
  std::optional<std::chrono::milliseconds> quiet_max;      //   this quiet, at most this long
};

// CHP's token check: the first "token <value>" anywhere in the header (its regex is
// /token\s+(\S+)/), compared in constant time. An empty `token` means no authentication.
bool TokenMatches(std::optional<std::string_view> authorization, std::string_view token);

class Api {
 public:
  Api(RouteTable& routes, std::string token, const Logger& log)
      : routes_(routes), token_(std::move(token)), log_(log) {}

  std::variant<ApiResponse, MigrationCommand> Handle(const ApiRequest& req, int64_t now_ms);

 private:
  ApiResponse Routes(const ApiRequest& req, std::optional<std::string_view> rest,
                     std::string_view query, int64_t now_ms);
  std::variant<ApiResponse, MigrationCommand> Migration(const ApiRequest& req,
                                                        std::optional<std::string_view> rest);

  RouteTable& routes_;
  const std::string token_;
  const Logger& log_;
};

// Node's reason phrase for a status code (http.STATUS_CODES), "Unknown" if none.
std::string_view StatusText(int status);

}  // namespace elsa::proxy
