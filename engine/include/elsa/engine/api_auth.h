// Who may call the agent's API over the network, and what they may do.
//
// Two scopes. `hub` drives sessions: version, ps, session, checkpoints, checkpoint, restore,
// migrate (freeze gate included), stop, verify, rm, gc. `admin` may do everything, including
// `run`, which starts any command as root on the host. The Unix socket (root only) is admin.
//
// The token file (elsad --api-tokens FILE): one client a line, `SCOPE NAME TOKEN`, fields
// separated by blanks; '#' starts a comment line; blank lines are skipped. NAME is
// [A-Za-z0-9._-]{1,64}, unique; TOKEN is at least 16 printable characters (tools/elsa-ca token
// makes one), unique. The file must belong to the agent's user and be closed to group and
// others (mode 600 or 400): it holds the tokens themselves.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "elsa/status.h"

namespace elsa {

enum class ApiScope { kHub, kAdmin };
std::string_view ApiScopeName(ApiScope scope);
Result<ApiScope> ParseApiScope(std::string_view name);

// How a network client proved who it is: by a token, or by its TLS certificate (mutual TLS).
enum class ApiCredential { kToken, kCertificate };

struct ApiClient {
  std::string name;  // the token's NAME, or the certificate's common name
  ApiScope scope = ApiScope::kHub;
  ApiCredential credential = ApiCredential::kToken;
};

// PermissionDenied naming the client and what `op` needs ("token 'hub1' has scope hub; run
// needs admin") unless the client's scope allows it.
Status CheckScope(const ApiClient& client, std::string_view op);

// A file holding a secret (token file, private key): refused when group or others may read it,
// or when it is not the agent's user's.
Status CheckSecretFile(const std::string& path, std::string_view what);

class ApiTokens {
 public:
  // Refuses a file others may read or one not owned by this user (see the format above).
  static Result<ApiTokens> Load(const std::string& path);
  // `where` names the source in errors ("FILE: line 3: ...").
  static Result<ApiTokens> Parse(std::string_view text, std::string_view where);

  // The client holding `presented`, if any. Compares against every token, in time that does not
  // depend on how much of any token matches (SHA-256 digests compared with CRYPTO_memcmp).
  std::optional<ApiClient> Find(std::string_view presented) const;
  size_t size() const { return entries_.size(); }

 private:
  using Digest = std::array<unsigned char, 32>;
  struct Entry {
    ApiClient client;
    Digest digest;
  };
  static Digest DigestOf(std::string_view token);

  std::vector<Entry> entries_;
};

}  // namespace elsa
