// elsad --peer-allow: who may send sessions to whom.
#include "elsa/engine/peer_allowlist.h"

#include <gtest/gtest.h>

namespace elsa {
namespace {

TEST(PeerAllowlist, NamesAndWildcardsDecideBothDirections) {
  auto list = PeerAllowlist::Parse("# drain pairs\nh1 -> h2\n  h2->h1  # back\n\n* -> spare\n", "allow");
  ASSERT_TRUE(list.ok()) << list.status().message();
  EXPECT_EQ(list->size(), 3u);
  EXPECT_TRUE(list->Check("h1", "h2").ok());
  EXPECT_TRUE(list->Check("h2", "h1").ok());
  EXPECT_TRUE(list->Check("h7", "spare").ok());
  Status refused = list->Check("h1", "h3");
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.message().find("no rule in allow lets 'h1' send sessions to 'h3'"), std::string::npos)
      << refused.message();
  EXPECT_FALSE(list->Check("spare", "h1").ok()) << "a rule is one direction";
}

TEST(PeerAllowlist, AnyToAnyAllowsEveryone) {
  auto list = PeerAllowlist::Parse("* -> *", "allow");
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->Check("a", "b").ok());
}

TEST(PeerAllowlist, MalformedFilesAreRefusedWithTheirLine) {
  auto no_arrow = PeerAllowlist::Parse("h1 -> h2\nh1 h2\n", "allow");
  ASSERT_FALSE(no_arrow.ok());
  EXPECT_NE(no_arrow.status().message().find("allow:2:"), std::string::npos) << no_arrow.status().message();
  EXPECT_FALSE(PeerAllowlist::Parse("h1 -> h/2", "allow").ok());
  EXPECT_FALSE(PeerAllowlist::Parse(" -> h2", "allow").ok());
  EXPECT_FALSE(PeerAllowlist::Parse("h1 -> h2 -> h3", "allow").ok());
  auto empty = PeerAllowlist::Parse("# nothing\n", "allow");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("no rules"), std::string::npos);
}

}  // namespace
}  // namespace elsa
