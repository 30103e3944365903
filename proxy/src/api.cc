#include "api.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <span>

#include "iso_time.h"

namespace elsa::proxy {

using nlohmann::ordered_json;

namespace {

ApiResponse Fail(int status, std::string message = {}) {
  if (message.empty()) message = std::string(StatusText(status));
  return {status, "", std::move(message)};
}

ApiResponse Json(int status, const ordered_json& body) {
  return {status, "application/json", body.dump(-1, ' ', false, ordered_json::error_handler_t::replace)};
}

// JavaScript's \s over the Latin-1 characters Node decodes header bytes to.
bool IsJsSpace(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0xA0; }

// Deeply nested JSON would exhaust the stack when the table is printed; JupyterHub's route
// data is flat. Counts brackets outside strings.
bool NestedTooDeeply(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// JSON.parse(body) || {}, with Node's decoding of the body (invalid UTF-8 becomes U+FFFD).
Result<ordered_json> ParseBodyLikeChp(std::string_view body) {
  if (body.substr(0, 3) == "\xEF\xBB\xBF") {
    return Status::InvalidArgument("SyntaxError: Unexpected token \xEF\xBB\xBF in JSON at position 0");
  }
  if (NestedTooDeeply(body, 128)) return Status::InvalidArgument("nested more than 128 levels deep");
  ordered_json data;
  try {
    data = ordered_json::parse(SanitizeUtf8(body));
  } catch (const ordered_json::exception& e) {
    return Status::InvalidArgument(std::string("SyntaxError: ") + e.what());
  }
  bool falsy = data.is_null() || (data.is_boolean() && !data.get<bool>()) ||
               (data.is_number() && data.get<double>() == 0) ||
               (data.is_string() && data.get_ref<const std::string&>().empty());
  if (falsy) data = ordered_json::object();
  return data;
}

// Splits "/api/<name>(/.*)?" into the part after /api/<name>; nullopt inside when absent.
bool MatchApiPath(std::string_view pathname, std::string_view prefix,
                  std::optional<std::string_view>* rest) {
  if (pathname.substr(0, prefix.size()) != prefix) return false;
  std::string_view after = pathname.substr(prefix.size());
  if (after.empty()) {
    rest->reset();
    return true;
  }
  if (after[0] != '/') return false;
  *rest = after;
  return true;
}

Result<std::optional<std::chrono::milliseconds>> Millis(const ordered_json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::optional<std::chrono::milliseconds>();
  if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > 86400000) {
    return Status::InvalidArgument(std::string("'") + key +
                                   "' must be a whole number of milliseconds between 1 and 86400000");
  }
  return std::optional<std::chrono::milliseconds>(std::chrono::milliseconds(it->get<int64_t>()));
}

}  // namespace

bool TokenMatches(std::optional<std::string_view> authorization, std::string_view token) {
  if (token.empty()) return true;
  std::string_view h = authorization.value_or("");
  for (size_t at = h.find("token"); at != std::string_view::npos; at = h.find("token", at + 1)) {
    size_t i = at + 5;
    size_t spaces = i;
    while (spaces < h.size() && IsJsSpace(static_cast<unsigned char>(h[spaces]))) ++spaces;
    if (spaces == i || spaces == h.size()) continue;  // \s+ then \S+ needed
    size_t end = spaces;
    while (end < h.size() && !IsJsSpace(static_cast<unsigned char>(h[end]))) ++end;
    std::string_view given = h.substr(spaces, end - spaces);
    return given.size() == token.size() && CRYPTO_memcmp(given.data(), token.data(), token.size()) == 0;
  }
  return false;
}

std::variant<ApiResponse, MigrationCommand> Api::Handle(const ApiRequest& req, int64_t now_ms) {
  auto target = ParseRequestTarget(req.target);
  if (!target.ok()) return Fail(404);
  std::optional<std::string_view> rest;
  if (MatchApiPath(target->path, "/api/routes", &rest)) {
    return Routes(req, rest, target->query, now_ms);
  }
  if (MatchApiPath(target->path, "/api/migration", &rest)) return Migration(req, rest);
  return Fail(404);
}

ApiResponse Api::Routes(const ApiRequest& req, std::optional<std::string_view> rest,
                        std::string_view query, int64_t now_ms) {
  const std::string_view m = req.method;
  if (m != "GET" && m != "POST" && m != "DELETE") return Fail(405, "Method not supported");
  std::optional<std::string> path;
  if (rest) {
    auto decoded = DecodeUriComponent(*rest);
    // CHP never answers here (its decodeURIComponent throws); a 400 says what is wrong.
    if (!decoded.ok()) return Fail(400, "Invalid route path: " + decoded.status().message());
    path = std::move(decoded).value();
  }
  if (m == "POST") {
    auto data = ParseBodyLikeChp(req.body);  // before the token check, as CHP
    if (!data.ok()) return Fail(400, "Body not valid JSON: " + data.status().message());
    if (!TokenMatches(req.authorization, token_)) return ApiResponse{403, "", ""};
    if (!data->is_object() || !data->contains("target") || !(*data)["target"].is_string()) {
      log_.Warn("Bad POST data: ", data->dump(-1, ' ', false, ordered_json::error_handler_t::replace));
      return Fail(400, "Must specify 'target' as string");
    }
    std::string route_path = path && !path->empty() ? *path : "/";
    if (HasDotSegment(route_path)) {
      return Fail(400, "Route path must not contain '.' or '..' segments: requests with them are "
                       "refused, so such a route could never match");
    }
    std::string target = (*data)["target"].get<std::string>();
    log_.Info("Adding route ", CleanRoutePath(route_path), " -> ", target);
    auto added = routes_.Add(route_path, std::move(data).value(), now_ms);
    if (added.dropped_internal_target) {
      log_.Warn("Route ", added.route->path(), ": the hub set a new target ", target,
                "; dropping the internal target ", *added.dropped_internal_target);
    }
    log_.Info("Route added ", added.route->path(), " -> ", target);
    return {201, "", ""};
  }
  if (!TokenMatches(req.authorization, token_)) return ApiResponse{403, "", ""};
  if (m == "GET") {
    if (path && !path->empty() && *path != "/") {
      auto route = routes_.Get(*path);
      if (!route) return {404, "", ""};
      return Json(200, *route);
    }
    std::optional<int64_t> inactive_since;
    auto since = QueryValue(query, "inactive_since");
    if (!since) since = QueryValue(query, "inactiveSince");
    if (since) {
      inactive_since = ParseIsoMillis(*since);
      if (!inactive_since) return Fail(400, "Invalid datestamp '" + *since + "' must be ISO8601.");
    }
    return Json(200, routes_.GetAll(inactive_since));
  }
  // DELETE
  if (!path) return Fail(400, "DELETE needs a route: DELETE /api/routes/<path>");
  if (!routes_.Remove(*path)) return {404, "", ""};
  log_.Info("Removing route ", CleanRoutePath(*path));
  return {204, "", ""};
}

std::variant<ApiResponse, MigrationCommand> Api::Migration(const ApiRequest& req,
                                                           std::optional<std::string_view> rest) {
  if (!TokenMatches(req.authorization, token_)) return ApiResponse{403, "", ""};
  MigrationCommand cmd;
  std::string_view r = rest.value_or("");
  if (r.empty() || r == "/") {
    if (req.method != "GET") return Fail(405, "Method not supported");
    cmd.kind = MigrationCommand::Kind::kList;
    return cmd;
  }
  size_t slash = r.find('/', 1);
  std::string_view verb = r.substr(1, slash == std::string_view::npos ? r.npos : slash - 1);
  if (slash == std::string_view::npos) {
    return Fail(400, "Missing route: use /api/migration/" + std::string(verb) + "/<route path>");
  }
  auto decoded = DecodeUriComponent(r.substr(slash));
  if (!decoded.ok()) return Fail(400, "Invalid route path: " + decoded.status().message());
  cmd.path = CleanRoutePath(*decoded);
  bool is_get = verb == "state";
  if (verb == "state") {
    cmd.kind = MigrationCommand::Kind::kGet;
  } else if (verb == "pause") {
    cmd.kind = MigrationCommand::Kind::kPause;
  } else if (verb == "retarget") {
    cmd.kind = MigrationCommand::Kind::kRetarget;
  } else if (verb == "resume") {
    cmd.kind = MigrationCommand::Kind::kResume;
  } else {
    return Fail(404);
  }
  if (req.method != (is_get ? "GET" : "POST")) return Fail(405, "Method not supported");
  if (is_get) return cmd;

  ordered_json body = ordered_json::object();
  if (req.body.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    try {
      body = ordered_json::parse(req.body);
    } catch (const ordered_json::exception& e) {
      return Fail(400, std::string("Body not valid JSON: ") + e.what());
    }
    if (!body.is_object()) return Fail(400, "Body must be a JSON object");
  }
  using Kind = MigrationCommand::Kind;
  static constexpr std::string_view kPauseFields[] = {"timeout_ms", "drain_timeout_ms", "quiet_ms",
                                                     "quiet_max_ms"};
  static constexpr std::string_view kRetargetFields[] = {"target"};
  static constexpr std::string_view kResumeFields[] = {"target", "timeout_ms"};
  std::span<const std::string_view> allowed = kResumeFields;
  if (cmd.kind == Kind::kPause) allowed = kPauseFields;
  if (cmd.kind == Kind::kRetarget) allowed = kRetargetFields;
  for (const auto& item : body.items()) {
    if (std::find(allowed.begin(), allowed.end(), item.key()) == allowed.end()) {
      return Fail(400, "Unknown field '" + item.key() + "' for " + std::string(verb));
    }
  }
  auto read = [&](const char* key, std::optional<std::chrono::milliseconds>* out) -> Status {
    auto v = Millis(body, key);
    if (!v.ok()) return v.status();
    *out = *v;
    return Status::Ok();
  };
  for (auto [key, out] : {std::pair{"timeout_ms", &cmd.timeout}, std::pair{"drain_timeout_ms", &cmd.drain_timeout},
                          std::pair{"quiet_ms", &cmd.quiet}, std::pair{"quiet_max_ms", &cmd.quiet_max}}) {
    if (Status s = read(key, out); !s.ok()) return Fail(400, s.message());
  }
  if (auto it = body.find("target"); it != body.end()) {
    if (it->is_null()) {
      cmd.set_target = true;
    } else if (it->is_string()) {
      auto url = ParseTargetUrl(it->get<std::string>());
      if (!url.ok()) return Fail(400, url.status().message());
      cmd.set_target = true;
      cmd.target = it->get<std::string>();
    } else {
      return Fail(400, "'target' must be a URL string, or null to go back to the hub's target");
    }
  }
  if (cmd.kind == Kind::kRetarget && !cmd.set_target) {
    return Fail(400, "retarget needs {\"target\": \"http://host:port\"} (or null)");
  }
  return cmd;
}

std::string_view StatusText(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

}  // namespace elsa::proxy
