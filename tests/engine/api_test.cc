#include "elsa/engine/api.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "test_util.h"

namespace elsa {
namespace {

AgentConfig ConfigFor(const std::string& state_dir) {
  AgentConfig config;
  config.state_dir = state_dir;
  config.monitor_binary = ELSA_MONITOR_BINARY;
  return config;
}

using nlohmann::json;
using testing::TempDir;

json Handle(Agent& agent, const std::string& line) {
  return HandleRequest(agent, line, [](const json&) {});
}

std::string ErrorCode(const json& reply) { return reply["error"]["code"].get<std::string>(); }

TEST(Api, HostileRequestsGetErrorsNotCrashes) {
  TempDir dir;
  Agent agent(ConfigFor(dir / "state"));
  ASSERT_TRUE(agent.Open().ok());
  EXPECT_EQ(ErrorCode(Handle(agent, "")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, "{not json")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, "[1,2]")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":42})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"launch-missiles"})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"checkpoint"})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"checkpoint","name":["x"]})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"restore","checkpoint":"../../etc"})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"rm","checkpoint":"a/b"})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"verify","checkpoint":"nope"})")), "not_found");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"verify","checkpoint":""})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"verify","checkpoint":7})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"checkpoint","name":"nobody"})")), "not_found");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"run","name":"x","argv":[]})")), "invalid_argument");
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"migrate","name":"x","to":"10.0.0.2","freeze_gate":"yes"})")),
            "invalid_argument");
  // A gate needs a connection that can carry the client's answer.
  EXPECT_EQ(ErrorCode(Handle(agent, R"({"op":"migrate","name":"x","to":"10.0.0.2","freeze_gate":true})")),
            "invalid_argument");
}

TEST(Api, VerifyWithoutACheckpointVerifiesEveryOne) {
  TempDir dir;
  Agent agent(ConfigFor(dir / "state"));
  ASSERT_TRUE(agent.Open().ok());
  json reply = Handle(agent, R"({"op":"verify"})");
  ASSERT_TRUE(reply["ok"].get<bool>()) << reply.dump();
  EXPECT_EQ(reply["result"]["checkpoints"], json::array());
  EXPECT_EQ(reply["result"]["damaged"], json::array());
}

TEST(Api, ServesRunPsAndStopOverTheSocket) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  Agent agent(ConfigFor(dir / "state"));
  ASSERT_TRUE(agent.Open().ok());
  ApiServer server(agent, dir / "run/elsad.sock");
  ASSERT_TRUE(server.Listen().ok());
  std::atomic<bool> stop{false};
  std::thread serving([&] { server.Serve(stop); });
  const std::string sock = dir / "run/elsad.sock";

  auto run = CallAgent(sock, {{"op", "run"}, {"name", "s1"}, {"argv", {"sleep", "1000"}},
                              {"env", {"PATH=/usr/bin:/bin"}}, {"workdir", "/"}});
  ASSERT_TRUE(run.ok()) << run.status().message();
  EXPECT_EQ((*run)["state"], "running");

  auto dup = CallAgent(sock, {{"op", "run"}, {"name", "s1"}, {"argv", {"sleep", "1"}}});
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.status().code(), StatusCode::kAlreadyExists);

  auto ps = CallAgent(sock, {{"op", "ps"}});
  ASSERT_TRUE(ps.ok());
  ASSERT_EQ(ps->size(), 1u);
  EXPECT_EQ((*ps)[0]["name"], "s1");
  EXPECT_GE((*ps)[0]["processes"].get<int>(), 1);

  auto stopped = CallAgent(sock, {{"op", "stop"}, {"name", "s1"}, {"timeout_seconds", 2}});
  ASSERT_TRUE(stopped.ok()) << stopped.status().message();
  EXPECT_TRUE(CallAgent(sock, {{"op", "ps"}})->empty());

  // A second agent refuses to take over a live socket.
  Agent other(ConfigFor(dir / "state2"));
  ASSERT_TRUE(other.Open().ok());
  ApiServer second(other, sock);
  EXPECT_EQ(second.Listen().code(), StatusCode::kAlreadyExists);

  stop = true;
  serving.join();
}

TEST(Api, NoAgentMeansClearInstructions) {
  TempDir dir;
  auto r = CallAgent(dir / "none.sock", {{"op", "ps"}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("elsad --daemon"), std::string::npos);
}

}  // namespace
}  // namespace elsa
