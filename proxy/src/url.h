// URL handling with the semantics configurable-http-proxy (Node's legacy url.parse,
// decodeURIComponent, querystring, http-proxy's urlJoin) gives JupyterHub, so routing decisions
// match CHP's; plus the checks CHP lacks (dot segments). All pure; all fed untrusted bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "elsa/status.h"

namespace elsa::proxy {

// JavaScript's decodeURIComponent: every %XX is decoded (including %2F); the decoded bytes must
// be well-formed UTF-8 and every '%' must start a valid escape, else an error (JS: URIError).
Result<std::string> DecodeUriComponent(std::string_view s);

// JavaScript's encodeURIComponent over bytes: all but A-Z a-z 0-9 - _ . ! ~ * ' ( ) escaped.
std::string EncodeUriComponent(std::string_view s);

// True if s is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool IsValidUtf8(std::string_view s);
// Replaces every ill-formed sequence with U+FFFD, as Node does when it decodes a request body.
std::string SanitizeUtf8(std::string_view s);

// A request-target split as Node's url.parse splits it: path (backslashes turned into slashes,
// as url.parse does before the query) and query (without '?'); any fragment dropped.
// Origin-form ("/a?b") and absolute-form ("http://host/a?b": the authority is ignored, as CHP
// ignores it, routing on the Host header) are accepted; authority-form and asterisk-form not.
struct RequestTarget {
  std::string path;
  std::string query;
  bool has_query = false;  // "/a?" keeps its '?' when forwarded, as url.parse keeps it
  std::string PathAndQuery() const { return has_query ? path + "?" + query : path; }
};
Result<RequestTarget> ParseRequestTarget(std::string_view target);

// True if a decoded path has a "." or ".." segment. Browsers never send those (they resolve
// them first), and a backend may resolve them differently from the route that matched, so a
// request carrying one is refused.
bool HasDotSegment(std::string_view decoded_path);

// querystring.parse's value for `key` ('+' is a space, %XX decoded leniently); nullopt if
// absent. A key given twice yields the values joined with ',' (what String(array) gives).
std::optional<std::string> QueryValue(std::string_view query, std::string_view key);

// A route's target, "http://host:port/path" (http, https, ws, wss). Userinfo is ignored, as
// http-proxy ignores it.
struct TargetUrl {
  std::string scheme;  // "http" or "https" (ws/wss are mapped)
  std::string host;    // without brackets for IPv6
  uint16_t port = 0;
  std::string path;    // "/" at least; query kept, as url.parse's .path
  bool tls() const { return scheme == "https"; }
  // host[:port] as a Host header spells it (brackets for IPv6, port omitted if default).
  std::string HostHeader() const;
  std::string Key() const;  // scheme://host:port, for connection pools
};
Result<TargetUrl> ParseTargetUrl(std::string_view url);

// http-proxy's urlJoin(targetPath, requestPath): joined with '/', runs of '/' collapsed (also
// inside the request's path), the first "http:/"/"https:/" given back its second slash; the
// query (everything after the first '?') untouched.
std::string JoinForwardPath(std::string_view target_path, std::string_view path_and_query);

// CHP's trimPrefix: a leading '/' ensured, one trailing '/' removed (except for "/").
std::string CleanRoutePath(std::string_view path);

// CHP's trie path split: leading and trailing slashes stripped, then split on '/' (empty
// segments inside are kept: "/a//b" is ["a", "", "b"]).
std::vector<std::string_view> SplitRoutePath(std::string_view path);

}  // namespace elsa::proxy
