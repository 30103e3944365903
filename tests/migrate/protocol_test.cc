// The peer protocol's messages: each op round-trips; every field of every op, missing or of the
// wrong type, is a ProtocolError that names it; Expect<T> sorts what arrives.
#include "migrate/protocol.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol_cases.h"

namespace elsa::peer {
namespace {

using nlohmann::json;
using namespace testing;

Result<Control> DecodeControlBytes(const std::vector<uint8_t>& bytes) {
  ELSA_ASSIGN_OR_RETURN(Message message, DecodeMessage(bytes));
  if (auto* control = std::get_if<Control>(&message)) return std::move(*control);
  return Status::Internal("not a control message");
}

TEST(Protocol, EveryOpRoundTrips) {
  const std::vector<Control> all = OneOfEach();
  std::set<size_t> ops;
  std::set<std::string> names;
  for (const Control& sent : all) {
    SCOPED_TRACE(std::string(OpName(sent)));
    ops.insert(sent.index());
    names.insert(std::string(OpName(sent)));
    const std::vector<uint8_t> bytes = EncodeControl(sent);
    auto received = DecodeControlBytes(bytes);
    ASSERT_TRUE(received.ok()) << received.status().message();
    EXPECT_EQ(received->index(), sent.index());
    EXPECT_EQ(OpName(*received), OpName(sent));
    EXPECT_EQ(Body(sent)["op"], OpName(sent));
    EXPECT_EQ(EncodeControl(*received), bytes) << "what was decoded encodes the same";
  }
  EXPECT_EQ(ops.size(), std::variant_size_v<Control>) << "every op is covered";
  EXPECT_EQ(names.size(), std::variant_size_v<Control>) << "every op has its own name";

  // The fields themselves, not only their encoding.
  auto begin = std::get<Begin>(*DecodeControlBytes(EncodeControl(all[0])));
  EXPECT_EQ(begin.session.name, "alice");
  EXPECT_EQ(begin.session.command, (std::vector<std::string>{"python3", "-m", "ipykernel"}));
  EXPECT_EQ(begin.session.workdir, "/home/alice");
  EXPECT_EQ(begin.session.started_at, "2025-12-31T23:00:00.000Z");
  EXPECT_EQ(begin.mode, MigrationMode::kPostcopy);
  EXPECT_EQ(begin.memory_bytes, 123456789u);
  auto restore = std::get<Restore>(*DecodeControlBytes(EncodeControl(all[2])));
  EXPECT_FALSE(restore.lazy);
  EXPECT_EQ(ManifestToJson(restore.manifest), ManifestToJson(SampleManifest()));
  EXPECT_EQ(restore.manifest.files.at(0).xxh3, 0x0123456789abcdefull);
  auto restored = std::get<Restored>(*DecodeControlBytes(EncodeControl(all[3])));
  EXPECT_EQ(restored.pid, 77);
  EXPECT_EQ(restored.checkpoint, "alice-20260101-000001");
  EXPECT_EQ(restored.pages_lazy, 5u);
  EXPECT_DOUBLE_EQ(restored.restore_seconds, 1.5);
  EXPECT_DOUBLE_EQ(restored.resume_seconds, 0.125);
  auto want = std::get<Want>(*DecodeControlBytes(EncodeControl(all[4])));
  EXPECT_EQ(want.task, 3u);
  EXPECT_EQ(want.vaddr, 0x7f0000001000u);
  EXPECT_EQ(want.pages, 17u);
  EXPECT_EQ(std::get<Pushed>(*DecodeControlBytes(EncodeControl(all[5]))).pages, 99u);
  EXPECT_EQ(std::get<Abort>(*DecodeControlBytes(EncodeControl(all[9]))).message, "the user gave up");
  EXPECT_EQ(std::get<Error>(*DecodeControlBytes(EncodeControl(all[10]))).message, "no room");
}

TEST(Protocol, EveryModeRoundTrips) {
  for (MigrationMode mode : {MigrationMode::kPrecopy, MigrationMode::kPostcopy, MigrationMode::kHybrid}) {
    Begin b;
    b.session.name = "s";
    b.mode = mode;
    auto decoded = DecodeControlBytes(EncodeControl(b));
    ASSERT_TRUE(decoded.ok()) << decoded.status().message();
    EXPECT_EQ(std::get<Begin>(*decoded).mode, mode);
  }
}

TEST(Protocol, OptionalFieldsMayBeAbsent) {
  Restored precopy_less;
  precopy_less.pid = 1;
  EXPECT_FALSE(Body(precopy_less).contains("checkpoint")) << "an empty checkpoint is not sent";
  auto restored = DecodeControlBytes(EncodeControl(precopy_less));
  ASSERT_TRUE(restored.ok()) << restored.status().message();
  EXPECT_EQ(std::get<Restored>(*restored).checkpoint, "");
  for (const char* op : {"abort", "error"}) {
    auto decoded = DecodeControlBytes(Wire({{"op", op}}));
    ASSERT_TRUE(decoded.ok()) << op << ": " << decoded.status().message();
    const std::string message =
        std::string(op) == "abort" ? std::get<Abort>(*decoded).message : std::get<Error>(*decoded).message;
    EXPECT_EQ(message, "(no message)");
  }
  // A manifest from before the page store has no "pages".
  json restore = Body(Restore{SampleManifest(), true});
  restore["manifest"].erase("pages");
  auto decoded = DecodeControlBytes(Wire(restore));
  ASSERT_TRUE(decoded.ok()) << decoded.status().message();
  EXPECT_FALSE(std::get<Restore>(*decoded).manifest.pages_in_store);
}

TEST(Protocol, MessagesThatAreNotUtf8AreStillSentAndDecoded) {
  auto decoded = DecodeControlBytes(EncodeControl(Error{"criu said \xff\xfe here"}));
  ASSERT_TRUE(decoded.ok()) << decoded.status().message();
  const std::string& message = std::get<Error>(*decoded).message;
  EXPECT_NE(message.find("criu said "), std::string::npos);
  EXPECT_NE(message.find(" here"), std::string::npos);
  EXPECT_EQ(message.find('\xff'), std::string::npos) << "replaced, not passed on";
}

// ---- every field of every op, missing or of the wrong type ----

void ExpectRefused(const json& body, const std::string& named, const std::string& what) {
  SCOPED_TRACE(what + ": " + body.dump());
  auto decoded = DecodeMessage(Wire(body));
  ASSERT_FALSE(decoded.ok()) << "accepted";
  EXPECT_EQ(decoded.status().code(), StatusCode::kProtocolError) << decoded.status().ToString();
  EXPECT_NE(decoded.status().message().find(named), std::string::npos)
      << "the error does not name " << named << ": " << decoded.status().message();
}

TEST(Protocol, EveryFieldMissingOrOfTheWrongTypeIsAProtocolErrorNamingIt) {
  int cases = 0;
  for (const Field& field : AllFields()) {
    const json valid = Sample(field.op);
    const json::json_pointer pointer(field.pointer);
    ASSERT_TRUE(valid.contains(pointer)) << field.op << field.pointer << " is not in the sample";
    ASSERT_TRUE(DecodeMessage(Wire(valid)).ok()) << field.op;
    const std::string named = NamedAs(pointer);
    json missing = valid;
    missing[pointer.parent_pointer()].erase(pointer.back());
    json null = valid;
    null[pointer] = nullptr;
    if (field.required) {
      ExpectRefused(missing, named, "missing " + field.pointer);
      ExpectRefused(null, named, "null " + field.pointer);
      cases += 2;
    } else {
      EXPECT_TRUE(DecodeMessage(Wire(missing)).ok()) << "optional " << field.pointer << " may be absent";
      EXPECT_TRUE(DecodeMessage(Wire(null)).ok()) << "optional " << field.pointer << " may be null";
    }
    for (const json& wrong : WrongValues(field.kind)) {
      json body = valid;
      body[pointer] = wrong;
      ExpectRefused(body, NamedAs(pointer, &wrong), field.pointer + " = " + wrong.dump());
      cases++;
    }
  }
  EXPECT_GT(cases, 250);
}

TEST(Protocol, FieldValuesOutOfTheirDomainAreProtocolErrors) {
  struct Case {
    std::string op, pointer;
    json value;
    std::string named;
  };
  const std::vector<Case> cases = {
      {"begin", "/mode", "sideways", "mode"},
      {"begin", "/mode", "", "mode"},
      {"restored", "/pid", 0, "pid"},
      {"restored", "/pid", -5, "pid"},
      {"restored", "/checkpoint", "../etc", "checkpoint id"},
      {"want", "/pages", 0, "0 pages"},
      {"restore", "/manifest/format", "elsa-checkpoint/0", "format"},
      {"restore", "/manifest/id", "../../x", "checkpoint id"},
      {"restore", "/manifest/id", "", "checkpoint id"},
      {"restore", "/manifest/session/name", "a/b", "session name"},
      {"restore", "/manifest/files/0/name", "../core-1.img", "../core-1.img"},
      {"restore", "/manifest/files/0/name", "", "plain file name"},
      {"restore", "/manifest/files/0/xxh3", "xyz", "checksum of core-1.img"},
  };
  for (const Case& c : cases) {
    json body = Sample(c.op);
    body[json::json_pointer(c.pointer)] = c.value;
    ExpectRefused(body, c.named, c.pointer);
  }
}

TEST(Protocol, MalformedControlMessagesAreProtocolErrors) {
  auto refused = [](const std::vector<uint8_t>& bytes, const std::string& says) {
    auto decoded = DecodeMessage(bytes);
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(decoded.status().message().find(says), std::string::npos) << decoded.status().message();
  };
  auto text = [](const std::string& s) {
    std::vector<uint8_t> out;
    out.reserve(1 + s.size());
    out.push_back('J');
    out.insert(out.end(), s.begin(), s.end());
    return out;
  };
  refused({}, "empty");
  refused({'X', '{', '}'}, "unknown peer message kind");
  refused(text(""), "not a JSON object");
  refused(text("{\"op\":\"ready\""), "not a JSON object");
  refused(text("[\"ready\"]"), "not a JSON object");
  refused(text("\"ready\""), "not a JSON object");
  refused(text("{}"), "without an \"op\"");
  refused(text("{\"op\":5}"), "without an \"op\"");
  refused(text("{\"op\":null}"), "without an \"op\"");
  refused(text("{\"op\":\"launch\"}"), "unknown control op \"launch\"");
  refused(text("{\"op\":\"Ready\"}"), "unknown control op");
  std::string huge = "{\"op\":\"error\",\"message\":\"" + std::string(kMaxControlBytes, 'x') + "\"}";
  refused(text(huge), "over 1 MiB");
}

// ---- file chunks and page refs ----

TEST(Protocol, FileChunksRoundTrip) {
  const std::vector<uint8_t> data = {1, 2, 3, 0, 255};
  for (bool last : {false, true}) {
    auto decoded = DecodeMessage(EncodeFileChunk("pages-1.img", 1ull << 40, last, data));
    ASSERT_TRUE(decoded.ok()) << decoded.status().message();
    const auto& chunk = std::get<FileChunk>(*decoded);
    EXPECT_EQ(chunk.name, "pages-1.img");
    EXPECT_EQ(chunk.offset, 1ull << 40);
    EXPECT_EQ(chunk.last, last);
    EXPECT_EQ(chunk.data, data);
  }
  auto empty = DecodeMessage(EncodeFileChunk("x", 0, true, {}));
  ASSERT_TRUE(empty.ok()) << empty.status().message();
  EXPECT_TRUE(std::get<FileChunk>(*empty).data.empty());
  std::vector<uint8_t> biggest(kMaxChunkBytes, 7);
  auto big = DecodeMessage(EncodeFileChunk("x", 0, false, biggest));
  ASSERT_TRUE(big.ok()) << big.status().message();
  EXPECT_EQ(std::get<FileChunk>(*big).data.size(), kMaxChunkBytes);
}

TEST(Protocol, MalformedFileChunksAreProtocolErrors) {
  auto refused = [](const std::vector<uint8_t>& bytes, const std::string& says) {
    auto decoded = DecodeMessage(bytes);
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(decoded.status().message().find(says), std::string::npos) << decoded.status().message();
  };
  const std::vector<uint8_t> good = EncodeFileChunk("core-1.img", 0, true, {{1, 2, 3}});
  refused({'F'}, "truncated");
  refused({'F', 10, 0, 'a'}, "truncated");
  refused(std::vector<uint8_t>(good.begin(), good.begin() + 1 + 2 + 10 + 8), "truncated");  // no end flag
  for (const std::string& name : {std::string(""), std::string("../x"), std::string("a/b"), std::string(".hidden"),
                                  std::string("-x"), std::string(200, 'a')})
    refused(EncodeFileChunk(name, 0, true, {}), "image file name");
  std::vector<uint8_t> flag = good;
  flag[1 + 2 + 10 + 8] = 2;
  refused(flag, "end flag");
  refused(EncodeFileChunk("x", (1ull << 40) + 1, true, {}), "beyond 1 TiB");
  refused(EncodeFileChunk("x", 0, false, std::vector<uint8_t>(kMaxChunkBytes + 1)), "over 4 MiB");
}

TEST(Protocol, PageRefsRoundTrip) {
  std::vector<PageRef> refs(kMaxRefsPerMessage);
  for (size_t i = 0; i < refs.size(); ++i) refs[i] = {i << 12, ~i, i * 31};
  auto decoded = DecodeMessage(EncodePageRefs(refs));
  ASSERT_TRUE(decoded.ok()) << decoded.status().message();
  const auto& got = std::get<std::vector<PageRef>>(*decoded);
  ASSERT_EQ(got.size(), refs.size());
  for (size_t i = 0; i < refs.size(); i += 97) {
    EXPECT_EQ(got[i].address, refs[i].address);
    EXPECT_EQ(got[i].hash_low, refs[i].hash_low);
    EXPECT_EQ(got[i].hash_high, refs[i].hash_high);
  }
}

TEST(Protocol, MalformedPageRefsAreProtocolErrors) {
  auto refused = [](const std::vector<uint8_t>& bytes, const std::string& says) {
    auto decoded = DecodeMessage(bytes);
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(decoded.status().message().find(says), std::string::npos) << decoded.status().message();
  };
  refused({'R', 1, 0}, "truncated");
  refused({'R', 0, 0, 0, 0}, "with 0 refs");
  std::vector<uint8_t> too_many = EncodePageRefs(std::vector<PageRef>(1));
  const uint32_t count = kMaxRefsPerMessage + 1;
  std::memcpy(too_many.data() + 1, &count, 4);
  refused(too_many, "refs (1-8192)");
  std::vector<uint8_t> short_by_one = EncodePageRefs(std::vector<PageRef>(3));
  short_by_one.pop_back();
  refused(short_by_one, "for 3 refs");
  std::vector<uint8_t> long_by_one = EncodePageRefs(std::vector<PageRef>(3));
  long_by_one.push_back(0);
  refused(long_by_one, "for 3 refs");
}

// ---- Expect<T> ----

TEST(Protocol, ExpectGivesTheWantedOp) {
  auto ready = Expect<Ready>(Control(Ready{}), "after begin");
  EXPECT_TRUE(ready.ok());
  auto pushed = Expect<Pushed>(Control(Pushed{12}), "during post-copy");
  ASSERT_TRUE(pushed.ok());
  EXPECT_EQ(pushed->pages, 12u);
}

TEST(Protocol, ExpectTurnsErrorAndAbortIntoExternalFailure) {
  auto error = Expect<Restored>(Control(Error{"CRIU failed: no space"}), "after restore");
  ASSERT_FALSE(error.ok());
  EXPECT_EQ(error.status().code(), StatusCode::kExternalFailure);
  EXPECT_EQ(error.status().message(), "the other agent: CRIU failed: no space");
  auto abort = Expect<Commit>(Control(Abort{"the user called it off"}), "after restored");
  ASSERT_FALSE(abort.ok());
  EXPECT_EQ(abort.status().code(), StatusCode::kExternalFailure);
  EXPECT_EQ(abort.status().message(), "the source gave up: the user called it off");
}

TEST(Protocol, ExpectTurnsAnyOtherOpIntoAProtocolErrorNamingBoth) {
  for (const Control& other : OneOfEach()) {
    if (std::holds_alternative<Error>(other) || std::holds_alternative<Abort>(other) ||
        std::holds_alternative<Delivered>(other))
      continue;
    auto got = Expect<Delivered>(other, "after the pushed pages");
    ASSERT_FALSE(got.ok()) << OpName(other);
    EXPECT_EQ(got.status().code(), StatusCode::kProtocolError);
    EXPECT_EQ(got.status().message(),
              "unexpected '" + std::string(OpName(other)) + "' after the pushed pages (expected 'delivered')");
  }
}

TEST(Protocol, ExpectPassesAFailureOnUnchanged) {
  auto got = Expect<Ready>(Status::Timeout("no word in 3 s"), "after begin");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(got.status().message(), "no word in 3 s");
}

TEST(Protocol, ParseHostPort) {
  auto plain = ParseHostPort("10.0.0.2");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->first, "10.0.0.2");
  EXPECT_EQ(plain->second, kDefaultPort);
  auto port = ParseHostPort("h2:9000");
  ASSERT_TRUE(port.ok());
  EXPECT_EQ(port->first, "h2");
  EXPECT_EQ(port->second, 9000);
  auto v6 = ParseHostPort("[::1]:81");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->first, "::1");
  EXPECT_EQ(v6->second, 81);
  for (const char* bad : {"", ":80", "h:0", "h:65536", "h:x", "[::1", "[::1]x", "h:80x"})
    EXPECT_FALSE(ParseHostPort(bad).ok()) << bad;
}

}  // namespace
}  // namespace elsa::peer
