#include "url.h"

#include <charconv>

namespace elsa::proxy {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads "%XX" at s[i]; -1 if there is none.
int EscapeAt(std::string_view s, size_t i) {
  if (i + 2 >= s.size() || s[i] != '%') return -1;
  int hi = HexValue(s[i + 1]);
  int lo = HexValue(s[i + 2]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Length of the UTF-8 sequence a lead byte announces; 0 if it cannot lead one.
int Utf8Length(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// True if bytes[0..n) is one well-formed UTF-8 sequence of length n (n from Utf8Length).
bool ValidSequence(const unsigned char* b, int n) {
  for (int k = 1; k < n; ++k) {
    if ((b[k] & 0xC0) != 0x80) return false;
  }
  if (n == 3) {
    if (b[0] == 0xE0 && b[1] < 0xA0) return false;   // overlong
    if (b[0] == 0xED && b[1] >= 0xA0) return false;  // surrogates
  }
  if (n == 4) {
    if (b[0] == 0xF0 && b[1] < 0x90) return false;   // overlong
    if (b[0] == 0xF4 && b[1] >= 0x90) return false;  // > U+10FFFF
  }
  return true;
}

bool IsUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '!' || c == '~' || c == '*' || c == '\'' || c == '(' ||
         c == ')';
}

// querystring.unescape: decodeURIComponent, or, where that fails, each valid %XX decoded and
// everything else kept (Node's unescapeBuffer).
std::string QueryUnescape(std::string_view s) {
  std::string plus(s);
  for (char& c : plus) {
    if (c == '+') c = ' ';
  }
  auto strict = DecodeUriComponent(plus);
  if (strict.ok()) return std::move(strict).value();
  std::string out;
  for (size_t i = 0; i < plus.size(); ++i) {
    int v = plus[i] == '%' ? EscapeAt(plus, i) : -1;
    if (v >= 0) {
      out.push_back(static_cast<char>(v));
      i += 2;
    } else {
      out.push_back(plus[i]);
    }
  }
  return out;
}

}  // namespace

Result<std::string> DecodeUriComponent(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    int first = EscapeAt(s, i);
    if (first < 0) return Status::InvalidArgument("malformed percent-escape in URI");
    int n = Utf8Length(static_cast<unsigned char>(first));
    if (n == 0) return Status::InvalidArgument("percent-escape is not UTF-8 in URI");
    unsigned char bytes[4] = {static_cast<unsigned char>(first), 0, 0, 0};
    size_t j = i + 3;
    for (int k = 1; k < n; ++k, j += 3) {
      int v = j < s.size() ? EscapeAt(s, j) : -1;
      if (v < 0) return Status::InvalidArgument("truncated UTF-8 percent-escape in URI");
      bytes[k] = static_cast<unsigned char>(v);
    }
    if (!ValidSequence(bytes, n)) return Status::InvalidArgument("invalid UTF-8 percent-escape in URI");
    out.append(reinterpret_cast<const char*>(bytes), static_cast<size_t>(n));
    i = j - 1;
  }
  return out;
}

std::string EncodeUriComponent(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (IsUnreserved(c)) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

bool IsValidUtf8(std::string_view s) {
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    int n = Utf8Length(b[i]);
    if (n == 0 || i + static_cast<size_t>(n) > s.size() || !ValidSequence(b + i, n)) return false;
    i += static_cast<size_t>(n);
  }
  return true;
}

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    int n = Utf8Length(b[i]);
    if (n > 0 && i + static_cast<size_t>(n) <= s.size() && ValidSequence(b + i, n)) {
      out.append(s.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

Result<RequestTarget> ParseRequestTarget(std::string_view target) {
  if (target.empty()) return Status::InvalidArgument("empty request target");
  std::string_view rest = target;
  if (rest[0] != '/') {
    // absolute-form: scheme "://" authority [path]
    size_t colon = rest.find("://");
    if (colon == std::string_view::npos || colon == 0) {
      return Status::InvalidArgument("request target must be a path or an absolute URL");
    }
    for (char c : rest.substr(0, colon)) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '+' || c == '-' || c == '.';
      if (!ok) return Status::InvalidArgument("request target has an invalid scheme");
    }
    rest = rest.substr(colon + 3);
    size_t path_start = rest.find_first_of("/?#");
    rest = path_start == std::string_view::npos ? std::string_view() : rest.substr(path_start);
  }
  RequestTarget out;
  size_t hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);
  size_t q = rest.find('?');
  std::string_view path = rest.substr(0, q);
  if (q != std::string_view::npos) {
    out.has_query = true;
    out.query = std::string(rest.substr(q + 1));
  }
  out.path.reserve(path.size() + 1);
  if (path.empty() || path[0] != '/') out.path.push_back('/');
  for (char c : path) out.path.push_back(c == '\\' ? '/' : c);
  return out;
}

bool HasDotSegment(std::string_view path) {
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view seg = path.substr(start, end - start);
    if (seg == "." || seg == "..") return true;
    start = end + 1;
  }
  return false;
}

std::optional<std::string> QueryValue(std::string_view query, std::string_view key) {
  std::optional<std::string> value;
  size_t start = 0;
  while (start <= query.size()) {
    size_t end = query.find('&', start);
    if (end == std::string_view::npos) end = query.size();
    std::string_view pair = query.substr(start, end - start);
    start = end + 1;
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string k = QueryUnescape(pair.substr(0, eq));
    if (k != key) continue;
    std::string v = eq == std::string_view::npos ? "" : QueryUnescape(pair.substr(eq + 1));
    value = value ? *value + "," + v : v;
  }
  return value;
}

std::string TargetUrl::HostHeader() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  bool default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
  if (!default_port) {  // two appends: `":" + std::to_string()` trips GCC 12's false -Wrestrict
    h += ':';
    h += std::to_string(port);
  }
  return h;
}

std::string TargetUrl::Key() const { return scheme + "://" + HostHeader(); }

Result<TargetUrl> ParseTargetUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("target '" + std::string(url) + "': " + std::string(why));
  };
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) return bad("expected scheme://host[:port][/path]");
  std::string scheme(url.substr(0, sep));
  for (char& c : scheme) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  TargetUrl t;
  if (scheme == "http" || scheme == "ws") {
    t.scheme = "http";
  } else if (scheme == "https" || scheme == "wss") {
    t.scheme = "https";
  } else {
    return bad("scheme must be http, https, ws or wss");
  }
  std::string_view rest = url.substr(sep + 3);
  size_t auth_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, auth_end);
  std::string_view path = auth_end == std::string_view::npos ? "" : rest.substr(auth_end);
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) authority = authority.substr(at + 1);
  std::string_view port_text;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    t.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("junk after IPv6 address");
      port_text = after.substr(1);
    }
  } else {
    size_t colon = authority.rfind(':');
    t.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (t.host.empty()) return bad("no host");
  for (char c : t.host) {
    if (static_cast<unsigned char>(c) <= ' ' || c == '/' || c == '\\' || c == '[' || c == ']') {
      return bad("invalid character in host");
    }
  }
  t.port = t.tls() ? 443 : 80;
  if (!port_text.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || value == 0 || value > 65535) {
      return bad("invalid port");
    }
    t.port = static_cast<uint16_t>(value);
  }
  size_t hash = path.find('#');
  if (hash != std::string_view::npos) path = path.substr(0, hash);
  t.path.clear();
  if (path.empty() || path[0] != '/') t.path += '/';
  t.path += path;
  return t;
}

std::string JoinForwardPath(std::string_view target_path, std::string_view path_and_query) {
  size_t q = path_and_query.find('?');
  std::string_view req_path = path_and_query.substr(0, q);
  std::string joined;
  joined.reserve(target_path.size() + path_and_query.size() + 1);
  joined.append(target_path);
  if (!target_path.empty() && !req_path.empty()) joined.push_back('/');
  joined.append(req_path);
  std::string collapsed;
  collapsed.reserve(joined.size() + 2);
  for (char c : joined) {
    if (c == '/' && !collapsed.empty() && collapsed.back() == '/') continue;
    collapsed.push_back(c);
  }
  for (std::string_view scheme : {std::string_view("http:/"), std::string_view("https:/")}) {
    size_t at = collapsed.find(scheme);
    if (at != std::string::npos) collapsed.insert(at + scheme.size(), 1, '/');
  }
  if (collapsed.empty() || collapsed[0] != '/') collapsed.insert(collapsed.begin(), '/');
  if (q != std::string_view::npos) collapsed.append(path_and_query.substr(q));
  return collapsed;
}

std::string CleanRoutePath(std::string_view path) {
  std::string out;
  if (path.empty() || path[0] != '/') out.push_back('/');
  out.append(path);
  if (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

std::vector<std::string_view> SplitRoutePath(std::string_view path) {
  size_t b = path.find_first_not_of('/');
  if (b == std::string_view::npos) return {};
  size_t e = path.find_last_not_of('/');
  path = path.substr(b, e - b + 1);
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t slash = path.find('/', start);
    parts.push_back(path.substr(start, slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return parts;
}

}  // namespace elsa::proxy
