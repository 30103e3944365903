#include "elsa/engine/api_auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <regex>
#include <set>

#include "elsa/file_util.h"

namespace elsa {

namespace {

constexpr size_t kMinTokenChars = 16;
constexpr size_t kMaxTokenFileBytes = 1 << 20;
constexpr std::string_view kHubOps[] = {"version", "ps",     "session", "checkpoints", "checkpoint", "restore",
                                        "migrate", "stop",   "verify",  "rm",          "gc"};

std::vector<std::string> Fields(std::string_view line) {
  std::vector<std::string> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) fields.emplace_back(line.substr(start, i - start));
  }
  return fields;
}

bool IsPrintable(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c > ' ' && c < 127; });
}

}  // namespace

std::string_view ApiScopeName(ApiScope scope) { return scope == ApiScope::kAdmin ? "admin" : "hub"; }

Result<ApiScope> ParseApiScope(std::string_view name) {
  if (name == "hub") return ApiScope::kHub;
  if (name == "admin") return ApiScope::kAdmin;
  return Status::InvalidArgument("unknown scope '" + std::string(name) + "' (hub or admin)");
}

Status CheckScope(const ApiClient& client, std::string_view op) {
  if (client.scope == ApiScope::kAdmin) return Status::Ok();
  if (std::find(std::begin(kHubOps), std::end(kHubOps), op) != std::end(kHubOps)) return Status::Ok();
  const char* what = client.credential == ApiCredential::kToken ? "token" : "certificate";
  return Status::PermissionDenied(std::string(what) + " '" + client.name + "' has scope " +
                                  std::string(ApiScopeName(client.scope)) + "; " + std::string(op) + " needs admin");
}

ApiTokens::Digest ApiTokens::DigestOf(std::string_view token) {
  Digest digest{};
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest.data());
  return digest;
}

Result<ApiTokens> ApiTokens::Parse(std::string_view text, std::string_view where) {
  static const std::regex kName("[A-Za-z0-9._-]{1,64}");
  ApiTokens tokens;
  std::set<std::string> names;
  std::set<Digest> digests;
  int line_number = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::vector<std::string> fields = Fields(line);
    if (fields.empty() || fields[0][0] == '#') continue;
    const std::string at = std::string(where) + ": line " + std::to_string(line_number) + ": ";
    if (fields.size() != 3)
      return Status::InvalidArgument(at + "expected SCOPE NAME TOKEN, found " + std::to_string(fields.size()) +
                                     " fields");
    auto scope = ParseApiScope(fields[0]);
    if (!scope.ok()) return Status::InvalidArgument(at + scope.status().message());
    if (!std::regex_match(fields[1], kName))
      return Status::InvalidArgument(at + "name '" + fields[1] + "': letters, digits, '.', '_', '-' only (1-64)");
    if (fields[2].size() < kMinTokenChars || !IsPrintable(fields[2]))
      return Status::InvalidArgument(at + "the token of '" + fields[1] + "' needs at least 16 printable characters " +
                                     "(tools/elsa-ca token makes one)");
    if (!names.insert(fields[1]).second)
      return Status::InvalidArgument(at + "name '" + fields[1] + "' is used twice");
    const Digest digest = DigestOf(fields[2]);
    if (!digests.insert(digest).second)
      return Status::InvalidArgument(at + "'" + fields[1] + "' has the same token as an earlier client");
    tokens.entries_.push_back({{fields[1], *scope, ApiCredential::kToken}, digest});
  }
  if (tokens.entries_.empty()) return Status::InvalidArgument(std::string(where) + ": no tokens (lines SCOPE NAME TOKEN)");
  return tokens;
}

Status CheckSecretFile(const std::string& path, std::string_view what) {
  struct stat st {};
  const std::string named = std::string(what) + " " + path;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(named, errno);
  if ((st.st_mode & 077) != 0)
    return Status::FailedPrecondition(named + " is open to group or others; chmod 600 " + path);
  if (st.st_uid != ::geteuid())
    return Status::FailedPrecondition(named + " belongs to uid " + std::to_string(st.st_uid) +
                                      ", not to the agent's user");
  return Status::Ok();
}

Result<ApiTokens> ApiTokens::Load(const std::string& path) {
  ELSA_RETURN_IF_ERROR(CheckSecretFile(path, "token file"));
  ELSA_ASSIGN_OR_RETURN(std::string text, ReadFile(path, kMaxTokenFileBytes));
  return Parse(text, path);
}

std::optional<ApiClient> ApiTokens::Find(std::string_view presented) const {
  const Digest digest = DigestOf(presented);
  std::optional<ApiClient> found;
  for (const Entry& entry : entries_)  // no early exit: every token costs the same
    if (CRYPTO_memcmp(entry.digest.data(), digest.data(), digest.size()) == 0) found = entry.client;
  return found;
}

}  // namespace elsa
