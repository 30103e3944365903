#include "elsa/engine/api_auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "test_util.h"

namespace elsa {
namespace {

using testing::TempDir;
using testing::WriteTextFile;

constexpr const char* kHubToken = "hub-token-0123456789abcdef";
constexpr const char* kAdminToken = "admin-token-0123456789abcdef";

std::string TwoClients() {
  return std::string("# scope name token\n\nhub hub1 ") + kHubToken + "\nadmin ops " + kAdminToken + "\n";
}

TEST(ApiTokens, ParsesScopesAndNames) {
  auto tokens = ApiTokens::Parse(TwoClients(), "tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status().message();
  EXPECT_EQ(tokens->size(), 2u);
  auto hub = tokens->Find(kHubToken);
  ASSERT_TRUE(hub.has_value());
  EXPECT_EQ(hub->name, "hub1");
  EXPECT_EQ(hub->scope, ApiScope::kHub);
  auto admin = tokens->Find(kAdminToken);
  ASSERT_TRUE(admin.has_value());
  EXPECT_EQ(admin->name, "ops");
  EXPECT_EQ(admin->scope, ApiScope::kAdmin);
}

TEST(ApiTokens, UnknownOrNearTokensAreRefused) {
  auto tokens = ApiTokens::Parse(TwoClients(), "tokens");
  ASSERT_TRUE(tokens.ok());
  EXPECT_FALSE(tokens->Find("").has_value());
  EXPECT_FALSE(tokens->Find("hub-token-0123456789abcde").has_value());    // a prefix
  EXPECT_FALSE(tokens->Find("hub-token-0123456789abcdeff").has_value());  // longer
  EXPECT_FALSE(tokens->Find("HUB-TOKEN-0123456789ABCDEF").has_value());
}

TEST(ApiTokens, MalformedLinesNameTheirLine) {
  struct Case {
    std::string text, expected;
  };
  for (const Case& c : std::vector<Case>{
           {"hub hub1\n", "line 1"},                                   // no token
           {"hub hub1 0123456789abcdef extra\n", "line 1"},            // too many fields
           {"# ok\nroot hub1 0123456789abcdef\n", "line 2: unknown scope 'root'"},
           {"hub hub1 short\n", "at least 16"},
           {"hub bad/name 0123456789abcdef\n", "name"},
       }) {
    auto tokens = ApiTokens::Parse(c.text, "tokens");
    ASSERT_FALSE(tokens.ok()) << c.text;
    EXPECT_EQ(tokens.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(tokens.status().message().find(c.expected), std::string::npos) << tokens.status().message();
  }
}

TEST(ApiTokens, DuplicateNamesAndTokensAreRefused) {
  auto names = ApiTokens::Parse("hub a 0123456789abcdef\nadmin a fedcba9876543210\n", "tokens");
  ASSERT_FALSE(names.ok());
  EXPECT_NE(names.status().message().find("line 2: name 'a' is used twice"), std::string::npos)
      << names.status().message();
  auto same = ApiTokens::Parse("hub a 0123456789abcdef\nadmin b 0123456789abcdef\n", "tokens");
  ASSERT_FALSE(same.ok());
  EXPECT_NE(same.status().message().find("same token"), std::string::npos) << same.status().message();
}

TEST(ApiTokens, AFileWithoutTokensIsRefused) {
  auto tokens = ApiTokens::Parse("# nobody\n", "tokens");
  ASSERT_FALSE(tokens.ok());
  EXPECT_NE(tokens.status().message().find("no tokens"), std::string::npos);
}

TEST(ApiTokens, AFileOthersCanReadIsRefused) {
  TempDir dir;
  const std::string path = dir / "tokens";
  WriteTextFile(path, TwoClients());
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  auto loose = ApiTokens::Load(path);
  ASSERT_FALSE(loose.ok());
  EXPECT_NE(loose.status().message().find("chmod 600"), std::string::npos) << loose.status().message();
  ASSERT_EQ(::chmod(path.c_str(), 0604), 0);
  EXPECT_FALSE(ApiTokens::Load(path).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto tight = ApiTokens::Load(path);
  ASSERT_TRUE(tight.ok()) << tight.status().message();
  EXPECT_EQ(tight->size(), 2u);
  EXPECT_EQ(ApiTokens::Load(dir / "missing").status().code(), StatusCode::kNotFound);
}

TEST(ApiScopes, HubMayDriveSessionsButNotRunCommands) {
  const ApiClient hub{"hub1", ApiScope::kHub, ApiCredential::kToken};
  for (const char* op : {"version", "ps", "session", "checkpoints", "checkpoint", "restore", "migrate", "stop",
                         "verify", "rm", "gc"})
    EXPECT_TRUE(CheckScope(hub, op).ok()) << op;
  Status run = CheckScope(hub, "run");
  ASSERT_FALSE(run.ok());
  EXPECT_EQ(run.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(run.message(), "token 'hub1' has scope hub; run needs admin");
  // An op nobody listed is not the hub's either.
  EXPECT_FALSE(CheckScope(hub, "launch-missiles").ok());
}

TEST(ApiScopes, AdminMayDoEverything) {
  const ApiClient admin{"ops", ApiScope::kAdmin, ApiCredential::kCertificate};
  for (const char* op : {"version", "ps", "run", "checkpoint", "migrate", "gc"}) EXPECT_TRUE(CheckScope(admin, op).ok()) << op;
}

TEST(ApiScopes, ACertificateClientIsNamedByItsCertificate) {
  const ApiClient hub{"hub.example", ApiScope::kHub, ApiCredential::kCertificate};
  EXPECT_EQ(CheckScope(hub, "run").message(), "certificate 'hub.example' has scope hub; run needs admin");
}

TEST(ApiScopes, ParsesScopeNames) {
  EXPECT_EQ(*ParseApiScope("hub"), ApiScope::kHub);
  EXPECT_EQ(*ParseApiScope("admin"), ApiScope::kAdmin);
  EXPECT_FALSE(ParseApiScope("root").ok());
  EXPECT_EQ(ApiScopeName(ApiScope::kAdmin), "admin");
}

}  // namespace
}  // namespace elsa
