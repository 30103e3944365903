// A live agent's PeerServer facing a hostile peer, over a real TCP channel on loopback: for every
// control message, each field missing and each of the wrong type, sent first (and `restore`
// after a valid `begin`), the agent answers an `error` naming the field, ends the conversation,
// and keeps serving: a valid `begin` afterwards still gets `ready`. No CRIU is needed: nothing
// gets as far as a restore.
#include "elsa/engine/peer_server.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>

#include "migrate/protocol.h"
#include "protocol_cases.h"
#include "test_util.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using peer::testing::AllFields;
using peer::testing::Body;
using peer::testing::NamedAs;
using peer::testing::Sample;
using peer::testing::Wire;
using peer::testing::WrongValues;

class LivePeerServer : public ::testing::Test {
 protected:
  void SetUp() override {
    AgentConfig config;
    config.state_dir = dir_ / "state";
    config.peer_secret = "peer-server-test-secret";
    config.peer_streams = 2;
    config.peer_timeout_ms = 5000;
    config.criu.explicit_binary = dir_ / "no-criu-here";
    config.log = Logger([this](const LogLine& line) {
      std::lock_guard lock(log_mu_);
      if (line.level == LogLevel::kError) errors_logged_++;
    });
    agent_ = std::make_unique<Agent>(config);
    ASSERT_TRUE(agent_->Open().ok());
    auto transport = transport::MakeTransport(transport::Backend::kTcp);
    ASSERT_TRUE(transport.ok()) << transport.status().message();
    // Port 0 (any free one): PeerServer::Start takes an address of the command line, which names one.
    auto listener = (*transport)->Listen({"127.0.0.1", 0}, config.PeerChannelOptions());
    ASSERT_TRUE(listener.ok()) << listener.status().message();
    server_ = std::make_unique<PeerServer>(*agent_, std::move(*transport), std::move(*listener));
    auto client = transport::MakeTransport(transport::Backend::kTcp);
    ASSERT_TRUE(client.ok());
    client_ = std::move(*client);
  }
  void TearDown() override {
    server_.reset();  // waits for the conversations in progress
    agent_.reset();
  }

  std::unique_ptr<transport::Channel> Connect() {
    auto channel = client_->Connect({"127.0.0.1", server_->port()}, agent_->config().PeerChannelOptions());
    EXPECT_TRUE(channel.ok()) << channel.status().message();
    return channel.ok() ? std::move(*channel) : nullptr;
  }

  // The agent's next message on `channel`, as a control.
  static Result<peer::Control> Answer(transport::Channel& channel) {
    ELSA_ASSIGN_OR_RETURN(transport::Message message, channel.Receive(10s));
    if (message.kind != transport::Message::Kind::kData) return Status::Internal("page data from the agent");
    ELSA_ASSIGN_OR_RETURN(peer::Message decoded, peer::DecodeMessage(message.data));
    if (!std::holds_alternative<peer::Control>(decoded)) return Status::Internal("not a control message");
    return std::get<peer::Control>(std::move(decoded));
  }

  // After `prelude` (answered by `ready` each), sends `bytes`: the agent must answer `error`
  // (whose message contains `names`) and end the conversation.
  void ExpectRefused(const std::vector<std::vector<uint8_t>>& prelude, std::vector<uint8_t> bytes,
                     const std::string& names, const std::string& what) {
    SCOPED_TRACE(what);
    auto channel = Connect();
    ASSERT_TRUE(channel);
    for (const auto& message : prelude) {
      ASSERT_TRUE(channel->Send(message, 0).ok());
      auto ready = Answer(*channel);
      ASSERT_TRUE(ready.ok()) << ready.status().ToString();
      ASSERT_TRUE(std::holds_alternative<peer::Ready>(*ready)) << peer::OpName(*ready);
    }
    ASSERT_TRUE(channel->Send(std::move(bytes), 0).ok());
    auto answer = Answer(*channel);
    ASSERT_TRUE(answer.ok()) << "no answer: " << answer.status().ToString();
    const auto* error = std::get_if<peer::Error>(&*answer);
    ASSERT_TRUE(error) << "answered '" << peer::OpName(*answer) << "', not 'error'";
    EXPECT_NE(error->message.find(names), std::string::npos)
        << "the error does not name " << names << ": " << error->message;
    // Nothing more: the agent ends the conversation.
    auto after = channel->Receive(10s);
    EXPECT_FALSE(after.ok());
    EXPECT_EQ(after.status().code(), StatusCode::kEndOfStream) << after.status().ToString();
    (void)channel->Close(2s);
    answered_++;
  }

  // A valid `begin` still gets `ready` (the agent serves on, the name is free again).
  void ExpectReady(const std::string& name) {
    json begin = Sample("begin");
    begin["session"]["name"] = name;
    begin["memory_bytes"] = 4096;
    auto channel = Connect();
    ASSERT_TRUE(channel);
    ASSERT_TRUE(channel->Send(Wire(begin), 0).ok());
    auto answer = Answer(*channel);
    ASSERT_TRUE(answer.ok()) << answer.status().ToString();
    EXPECT_TRUE(std::holds_alternative<peer::Ready>(*answer))
        << peer::OpName(*answer) << ": "
        << (std::holds_alternative<peer::Error>(*answer) ? std::get<peer::Error>(*answer).message : "");
    ASSERT_TRUE(channel->Send(peer::EncodeControl(peer::Abort{"only checking"}), 0).ok());
    auto end = Answer(*channel);
    EXPECT_FALSE(end.ok() && !std::holds_alternative<peer::Error>(*end)) << "an abort ends it";
    (void)channel->Close(2s);
  }

  // A valid `begin` for `name` that the agent can take (precopy: a pending checkpoint).
  static std::vector<uint8_t> ValidBegin(const std::string& name) {
    json begin = Sample("begin");
    begin["session"]["name"] = name;
    begin["mode"] = "precopy";
    begin["memory_bytes"] = 4096;
    return Wire(begin);
  }

  testing::TempDir dir_;
  std::mutex log_mu_;
  int errors_logged_ = 0;
  std::unique_ptr<Agent> agent_;
  std::unique_ptr<PeerServer> server_;
  std::unique_ptr<transport::Transport> client_;
  int answered_ = 0;
};

TEST_F(LivePeerServer, EveryMalformedFirstMessageIsAnsweredWithAnErrorNamingTheFieldAndTheAgentServesOn) {
  for (const auto& field : AllFields()) {
    const json valid = Sample(field.op);
    const json::json_pointer pointer(field.pointer);
    const std::string named = NamedAs(pointer);
    if (field.required) {
      json missing = valid;
      missing[pointer.parent_pointer()].erase(pointer.back());
      ExpectRefused({}, Wire(missing), named, field.op + ": missing " + field.pointer);
      if (HasFatalFailure()) return;
    }
    for (const json& wrong : WrongValues(field.kind)) {
      json body = valid;
      body[pointer] = wrong;
      ExpectRefused({}, Wire(body), NamedAs(pointer, &wrong), field.op + ": " + field.pointer + " = " + wrong.dump());
      if (HasFatalFailure()) return;
    }
  }
  EXPECT_GT(answered_, 250);
  ExpectReady("fresh");
  ExpectReady("alice");  // the name of the begin samples: never reserved by a refused one
}

TEST_F(LivePeerServer, AResolveIsAnsweredWithWhereTheSessionRuns) {
  // No session of that name here, and none arriving: a source that lost its conversation may
  // resume its own copy.
  auto channel = Connect();
  ASSERT_TRUE(channel);
  ASSERT_TRUE(channel->Send(peer::EncodeControl(peer::Resolve{"nobody"}), 0).ok());
  auto answer = Answer(*channel);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  const auto* resolution = std::get_if<peer::Resolution>(&*answer);
  ASSERT_TRUE(resolution) << "answered '" << peer::OpName(*answer) << "'";
  EXPECT_EQ(resolution->outcome, peer::Outcome::kAbsent);
  ExpectRefused({}, Wire(json{{"op", "resolve"}, {"session", "../etc"}}), "session name", "a resolve for a path");
}

TEST_F(LivePeerServer, EveryOtherFirstMessageIsAnsweredWithAnError) {
  // Well-formed, but not `begin` (nor `resolve`, a question of its own): the migration cannot
  // start with them.
  for (const peer::Control& control : peer::testing::OneOfEach()) {
    if (std::holds_alternative<peer::Begin>(control) || std::holds_alternative<peer::Resolve>(control)) continue;
    const std::string op(peer::OpName(control));
    const bool gives_up = std::holds_alternative<peer::Error>(control) || std::holds_alternative<peer::Abort>(control);
    ExpectRefused({}, peer::EncodeControl(control), gives_up ? "" : "unexpected '" + op + "'", op + " first");
    if (HasFatalFailure()) return;
  }
  // Not control messages at all.
  ExpectRefused({}, {}, "empty peer message", "an empty message");
  ExpectRefused({}, {'Z', 1, 2}, "unknown peer message kind", "an unknown kind");
  ExpectRefused({}, {'J', '{'}, "not a JSON object", "broken JSON");
  ExpectRefused({}, Wire(json{{"op", "takeover"}}), "unknown control op", "an unknown op");
  ExpectRefused({}, peer::EncodeFileChunk("core-1.img", 0, true, {}), "file chunk", "a file chunk");
  ExpectRefused({}, peer::EncodePageRefs(std::vector<peer::PageRef>(1)), "where a control message was expected",
                "page refs");
  std::string huge(peer::kMaxControlBytes, 'x');
  ExpectRefused({}, Wire(json{{"op", "begin"}, {"pad", huge}}), "over 1 MiB", "a control over 1 MiB");
  {  // page data
    auto channel = Connect();
    ASSERT_TRUE(channel);
    transport::PageBatch batch;
    batch.AddPage(0, std::vector<uint8_t>(4096, 1).data());
    ASSERT_TRUE(channel->SendPages(std::move(batch), 0).ok());
    auto answer = Answer(*channel);
    ASSERT_TRUE(answer.ok()) << answer.status().ToString();
    ASSERT_TRUE(std::holds_alternative<peer::Error>(*answer)) << peer::OpName(*answer);
    EXPECT_NE(std::get<peer::Error>(*answer).message.find("page data"), std::string::npos);
    (void)channel->Close(2s);
  }
  // `begin`s whose values are refused.
  json bad_name = Sample("begin");
  bad_name["session"]["name"] = "../../etc";
  ExpectRefused({}, Wire(bad_name), "session name", "a session name that is a path");
  json too_big = Sample("begin");
  too_big["memory_bytes"] = 1ull << 62;
  ExpectRefused({}, Wire(too_big), "not enough memory", "more memory than the host has");
  json mode = Sample("begin");
  mode["mode"] = "teleport";
  ExpectRefused({}, Wire(mode), "mode", "an unknown mode");
  ExpectReady("alice");
}

TEST_F(LivePeerServer, EveryMalformedRestoreAfterAValidBeginIsAnsweredWithAnError) {
  int cases = 0;
  for (const auto& field : AllFields()) {
    if (field.op != "restore") continue;
    json valid = Sample("restore");
    valid["manifest"]["session"]["name"] = "probe";
    const json::json_pointer pointer(field.pointer);
    if (field.required) {
      json missing = valid;
      missing[pointer.parent_pointer()].erase(pointer.back());
      ExpectRefused({ValidBegin("probe")}, Wire(missing), NamedAs(pointer), "missing " + field.pointer);
      if (HasFatalFailure()) return;
      cases++;
    }
    for (const json& wrong : WrongValues(field.kind)) {
      json body = valid;
      body[pointer] = wrong;
      ExpectRefused({ValidBegin("probe")}, Wire(body), NamedAs(pointer, &wrong), field.pointer + " = " + wrong.dump());
      if (HasFatalFailure()) return;
      cases++;
    }
  }
  EXPECT_GT(cases, 100);
  // A well-formed restore is refused too when it does not fit the conversation.
  ExpectRefused({ValidBegin("probe")}, Wire(Sample("restore")), "no image files", "a restore before any image");
  ExpectRefused({ValidBegin("probe")}, peer::EncodeControl(peer::Commit{}), "unexpected 'commit'",
                "commit before restore");
  ExpectRefused({ValidBegin("probe")}, ValidBegin("probe"), "unexpected 'begin'", "begin twice");
  ExpectRefused({ValidBegin("probe")}, peer::EncodeFileChunk("../core-1.img", 0, true, {}), "image file name",
                "a file chunk that names a path");
  // Nothing was left behind: the name is free, no pending checkpoint or incoming images remain.
  ExpectReady("probe");
  auto checkpoints = agent_->Checkpoints();
  ASSERT_TRUE(checkpoints.ok());
  EXPECT_TRUE(checkpoints->empty());
  server_.reset();  // every conversation over
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_ / "state")) {
    const std::string name = entry.path().filename();
    EXPECT_EQ(name.rfind(".pending-", 0), std::string::npos) << entry.path();
    EXPECT_EQ(name.rfind("incoming-", 0), std::string::npos) << entry.path();
  }
}

TEST_F(LivePeerServer, ASecondBeginForANameInMigrationIsRefused) {
  auto first = Connect();
  ASSERT_TRUE(first);
  ASSERT_TRUE(first->Send(ValidBegin("busy"), 0).ok());
  auto ready = Answer(*first);
  ASSERT_TRUE(ready.ok() && std::holds_alternative<peer::Ready>(*ready));
  ExpectRefused({}, ValidBegin("busy"), "busy", "the name is reserved by the first");
  (void)first->Close(2s);
  first.reset();
  // Once the first conversation is over, the name is free.
  for (int i = 0; i < 50; ++i) {
    auto channel = Connect();
    ASSERT_TRUE(channel);
    ASSERT_TRUE(channel->Send(ValidBegin("busy"), 0).ok());
    auto answer = Answer(*channel);
    ASSERT_TRUE(answer.ok());
    (void)channel->Close(2s);
    if (std::holds_alternative<peer::Ready>(*answer)) return;
    std::this_thread::sleep_for(50ms);
  }
  FAIL() << "the name stayed reserved after its conversation ended";
}

}  // namespace
}  // namespace elsa
