// The route table: CHP's cleaning, longest-prefix matching on whole segments, host routing,
// listing order and inactivity, and Elsa's internal targets that the hub cannot undo.
#include "route_table.h"

#include <gtest/gtest.h>

namespace elsa::proxy {
namespace {

using nlohmann::ordered_json;

ordered_json Data(const std::string& target) {
  ordered_json d;
  d["target"] = target;
  return d;
}

TEST(RouteTable, LongestPrefixOnWholeSegments) {
  RouteTable t(false);
  t.Add("/", Data("http://127.0.0.1:1"), 0);
  t.Add("/user/alice", Data("http://127.0.0.1:2"), 0);
  t.Add("/user/alice/sub/", Data("http://127.0.0.1:3"), 0);
  EXPECT_EQ(t.Find("/user/alice/api/kernels")->target->text, "http://127.0.0.1:2");
  EXPECT_EQ(t.Find("/user/alice/api/kernels")->prefix, "/user/alice");
  EXPECT_EQ(t.Find("/user/alice/sub/x")->target->text, "http://127.0.0.1:3");
  EXPECT_EQ(t.Find("/user/aliceX/x")->target->text, "http://127.0.0.1:1");  // not a segment match
  EXPECT_EQ(t.Find("/hub/login")->prefix, "/");
  ASSERT_TRUE(t.Remove("/user/alice/sub"));  // trailing slash cleaned as CHP cleans it
  EXPECT_EQ(t.Find("/user/alice/sub/x")->target->text, "http://127.0.0.1:2");
  ASSERT_TRUE(t.Remove("/"));
  EXPECT_FALSE(t.Find("/hub/login"));
  EXPECT_FALSE(t.Remove("/nothing"));
}

TEST(RouteTable, HostRoutingUsesTheHostAsFirstSegment) {
  RouteTable t(true);
  t.Add("/alice.example.org/", Data("http://127.0.0.1:2"), 0);
  EXPECT_EQ((*t.Get("/alice.example.org"))["host"], "alice.example.org");
  EXPECT_TRUE(t.Find("/alice.example.org/anything"));
  EXPECT_FALSE(t.Find("/bob.example.org/anything"));
}

TEST(RouteTable, ListsInInsertionOrderWithActivityAndFiltersInactive) {
  RouteTable t(false);
  t.Add("/b", Data("http://h:1"), 1000);
  t.Add("/a", Data("http://h:2"), 5000);
  auto all = t.GetAll(std::nullopt);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all.begin().key(), "/b");
  EXPECT_EQ(all["/b"]["last_activity"], "1970-01-01T00:00:01.000Z");
  auto inactive = t.GetAll(2000);
  ASSERT_EQ(inactive.size(), 1u);
  EXPECT_TRUE(inactive.contains("/b"));
  t.Lookup("/b")->Touch(9000);
  EXPECT_TRUE(t.GetAll(2000).empty() || !t.GetAll(2000).contains("/b"));
}

TEST(RouteTable, KeepsArbitraryRouteData) {
  RouteTable t(false);
  ordered_json d = Data("http://h:1");
  d["jupyterhub"] = true;
  d["user"] = "alice";
  d["nested"] = {{"x", 1}};
  t.Add("/user/alice", d, 0);
  auto got = *t.Get("/user/alice");
  EXPECT_EQ(got["jupyterhub"], true);
  EXPECT_EQ(got["nested"]["x"], 1);
}

TEST(RouteTable, InternalTargetSurvivesTheHubRepostingItsOwnTarget) {
  RouteTable t(false);
  t.Add("/user/alice", Data("http://10.0.0.1:8888"), 0);
  ASSERT_TRUE(t.SetInternalTarget("/user/alice", "http://10.0.0.2:8888").ok());
  EXPECT_EQ(t.Find("/user/alice/x")->target->text, "http://10.0.0.2:8888");
  // JupyterHub's periodic check re-POSTs the target it knows: the hub sees its own target...
  EXPECT_EQ((*t.Get("/user/alice"))["target"], "http://10.0.0.1:8888");
  auto again = t.Add("/user/alice", Data("http://10.0.0.1:8888"), 0);
  EXPECT_FALSE(again.dropped_internal_target);
  EXPECT_EQ(t.Find("/user/alice/x")->target->text, "http://10.0.0.2:8888");
  // ...while a different target means the hub moved the server itself.
  auto moved = t.Add("/user/alice", Data("http://10.0.0.3:8888"), 0);
  ASSERT_TRUE(moved.dropped_internal_target);
  EXPECT_EQ(t.Find("/user/alice/x")->target->text, "http://10.0.0.3:8888");
}

TEST(RouteTable, RefusesUnusableInternalTargetsAndUnknownRoutes) {
  RouteTable t(false);
  t.Add("/r", Data("http://h:1"), 0);
  EXPECT_EQ(t.SetInternalTarget("/r", "ftp://x").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.SetInternalTarget("/nope", "http://h:2").code(), StatusCode::kNotFound);
  // An unusable hub target is kept (CHP accepts any string) and reported when used.
  t.Add("/bad", Data("not a url"), 0);
  auto m = t.Find("/bad/x");
  ASSERT_TRUE(m);
  EXPECT_FALSE(m->target->url);
  EXPECT_FALSE(m->target->error.empty());
}

}  // namespace
}  // namespace elsa::proxy
