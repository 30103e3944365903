// The REST API's decisions without sockets: CHP's status codes, bodies and order of checks,
// and the migration API's parsing.
#include "api.h"

#include <gtest/gtest.h>

namespace elsa::proxy {
namespace {

class ApiTest : public ::testing::Test {
 protected:
  ApiResponse Call(std::string_view method, std::string_view target, std::string_view body = "",
                   std::optional<std::string_view> auth = "token secret") {
    ApiRequest r;
    r.method = method;
    r.target = target;
    r.body = body;
    r.authorization = auth;
    auto out = api.Handle(r, 1700000000000);
    EXPECT_TRUE(std::holds_alternative<ApiResponse>(out));
    return std::holds_alternative<ApiResponse>(out) ? std::get<ApiResponse>(out) : ApiResponse{};
  }
  std::variant<ApiResponse, MigrationCommand> Raw(std::string_view method, std::string_view target,
                                                  std::string_view body = "") {
    ApiRequest r;
    r.method = method;
    r.target = target;
    r.body = body;
    r.authorization = "token secret";
    return api.Handle(r, 0);
  }
  Logger log{LogLevel::kError, -1};
  RouteTable routes{false};
  Api api{routes, "secret", log};
};

TEST_F(ApiTest, RoutesLifecycleAsChp) {
  EXPECT_EQ(Call("POST", "/api/routes/user/alice", R"({"target":"http://127.0.0.1:9","jupyterhub":true})").status, 201);
  auto got = Call("GET", "/api/routes/user/alice");
  EXPECT_EQ(got.status, 200);
  EXPECT_EQ(got.content_type, "application/json");
  auto j = nlohmann::json::parse(got.body);
  EXPECT_EQ(j["jupyterhub"], true);
  EXPECT_EQ(j["last_activity"], "2023-11-14T22:13:20.000Z");
  EXPECT_EQ(Call("GET", "/api/routes").body.find("/user/alice") != std::string::npos, true);
  EXPECT_EQ(Call("DELETE", "/api/routes/user/alice").status, 204);
  EXPECT_EQ(Call("DELETE", "/api/routes/user/alice").status, 404);
  EXPECT_EQ(Call("GET", "/api/routes/user/alice").status, 404);
}

TEST_F(ApiTest, TokenChecks) {
  EXPECT_EQ(Call("GET", "/api/routes", "", std::nullopt).status, 403);
  EXPECT_EQ(Call("GET", "/api/routes", "", "token wrong").status, 403);
  EXPECT_EQ(Call("GET", "/api/routes", "", "Bearer secret").status, 403);
  EXPECT_EQ(Call("GET", "/api/routes", "", "token   secret").status, 200);
  EXPECT_EQ(Call("GET", "/api/routes", "", "token secretX").status, 403);
  // CHP parses a POST's body before looking at the token.
  EXPECT_EQ(Call("POST", "/api/routes/x", "{bad", std::nullopt).status, 400);
  EXPECT_EQ(Call("POST", "/api/routes/x", "{}", std::nullopt).status, 403);
}

TEST_F(ApiTest, BadRequests) {
  EXPECT_EQ(Call("POST", "/api/routes/x", R"({"target": 5})").status, 400);
  EXPECT_EQ(Call("POST", "/api/routes/x", "[1]").status, 400);
  EXPECT_EQ(Call("PUT", "/api/routes/x").status, 405);
  EXPECT_EQ(Call("GET", "/api/nothing").status, 404);
  EXPECT_EQ(Call("GET", "/api/routes?inactive_since=yesterday").status, 400);
  EXPECT_EQ(Call("GET", "/api/routes?inactive_since=2020-01-01T00:00:00Z").status, 200);
  EXPECT_EQ(Call("GET", "/api/routes/%E0%A4%A").status, 400);
  EXPECT_EQ(Call("POST", "/api/routes/a/../b", R"({"target":"http://h:1"})").status, 400);
  std::string deep(100000, '[');
  EXPECT_EQ(Call("POST", "/api/routes/x", deep).status, 400);
}

TEST_F(ApiTest, MigrationCommandsParse) {
  auto pause = Raw("POST", "/api/migration/pause/user/alice/", R"({"timeout_ms": 5000})");
  ASSERT_TRUE(std::holds_alternative<MigrationCommand>(pause));
  EXPECT_EQ(std::get<MigrationCommand>(pause).kind, MigrationCommand::Kind::kPause);
  EXPECT_EQ(std::get<MigrationCommand>(pause).path, "/user/alice");
  EXPECT_EQ(std::get<MigrationCommand>(pause).timeout, std::chrono::milliseconds(5000));
  auto resume = Raw("POST", "/api/migration/resume/user/alice", R"({"target":"http://10.0.0.2:1"})");
  ASSERT_TRUE(std::holds_alternative<MigrationCommand>(resume));
  EXPECT_EQ(*std::get<MigrationCommand>(resume).target, "http://10.0.0.2:1");
  auto bad = [&](std::string_view m, std::string_view t, std::string_view b) {
    auto r = Raw(m, t, b);
    return std::holds_alternative<ApiResponse>(r) ? std::get<ApiResponse>(r).status : 0;
  };
  EXPECT_EQ(bad("POST", "/api/migration/retarget/x", "{}"), 400);
  EXPECT_EQ(bad("POST", "/api/migration/retarget/x", R"({"target":"gopher://x"})"), 400);
  EXPECT_EQ(bad("POST", "/api/migration/pause/x", R"({"timeout_ms":-1})"), 400);
  EXPECT_EQ(bad("POST", "/api/migration/pause/x", R"({"bogus":1})"), 400);
  EXPECT_EQ(bad("GET", "/api/migration/pause/x", ""), 405);
  EXPECT_EQ(bad("POST", "/api/migration/explode/x", ""), 404);
  EXPECT_EQ(bad("POST", "/api/migration/pause", ""), 400);
  ApiRequest r;
  r.method = "POST";
  r.target = "/api/migration/pause/x";
  EXPECT_EQ(std::get<ApiResponse>(api.Handle(r, 0)).status, 403);  // no token
}

}  // namespace
}  // namespace elsa::proxy
