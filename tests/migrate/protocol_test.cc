// The peer protocol's messages: each op round-trips; every field of every op, missing or of the
// wrong type, is a ProtocolError that names it; Expect<T> sorts what arrives.
#include "migrate/protocol.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace elsa::peer {
namespace {

using nlohmann::json;

Manifest SampleManifest() {
  Manifest m;
  m.id = "alice-20260101-000000";
  m.created_at = "2026-01-01T00:00:00.000Z";
  m.host = "h1";
  m.kernel = "6.1.0";
  m.criu_version = "4.2.1";
  m.session_name = "alice";
  m.command = {"python3", "-m", "ipykernel"};
  m.workdir = "/home/alice";
  m.session_started_at = "2025-12-31T23:00:00.000Z";
  m.source_pid = 4242;
  m.output_pipes = {"pipe:[123]"};
  m.leave_running = true;
  m.dump_seconds = 0.25;
  m.network_lock_table = "elsa-lock";
  m.pages_in_store = true;
  m.pages = 100;
  m.pages_new = 40;
  m.files = {{"core-1.img", 512, 0x0123456789abcdefull}, {"pagemap-1.img", 64, 42}};
  return m;
}

// One of each op, every field set to something other than its default.
std::vector<Control> OneOfEach() {
  Begin begin;
  begin.session = {"alice", {"python3", "-m", "ipykernel"}, "/home/alice", "2025-12-31T23:00:00.000Z"};
  begin.mode = MigrationMode::kPostcopy;
  begin.memory_bytes = 123456789;
  Restored restored;
  restored.pid = 77;
  restored.checkpoint = "alice-20260101-000001";
  restored.pages_lazy = 5;
  restored.restore_seconds = 1.5;
  restored.resume_seconds = 0.125;
  return {begin,
          Ready{},
          Restore{SampleManifest(), false},
          restored,
          Want{3, 0x7f0000001000, 17},
          Pushed{99},
          Delivered{},
          Commit{},
          Committed{},
          Abort{"the user gave up"},
          Error{"no room"}};
}

std::vector<uint8_t> Wire(const json& body) {
  const std::string text = body.dump();
  std::vector<uint8_t> out{'J'};
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

json Body(const Control& control) {
  const std::vector<uint8_t> bytes = EncodeControl(control);
  EXPECT_EQ(bytes.at(0), 'J');
  return json::parse(bytes.begin() + 1, bytes.end());
}

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
    const std::string message = std::string(op) == "abort" ? std::get<Abort>(*decoded).message
                                                           : std::get<Error>(*decoded).message;
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

enum class Kind { kString, kU64, kU32, kI32, kI64, kDouble, kBool, kStrings, kObject, kObjects };

struct Field {
  std::string op;       // which op's sample
  std::string pointer;  // where in its body (a JSON pointer)
  Kind kind;
  bool required = true;
};

std::vector<Field> AllFields() {
  std::vector<Field> f = {
      {"begin", "/session", Kind::kObject},
      {"begin", "/session/name", Kind::kString},
      {"begin", "/session/command", Kind::kStrings},
      {"begin", "/session/workdir", Kind::kString},
      {"begin", "/session/started_at", Kind::kString},
      {"begin", "/mode", Kind::kString},
      {"begin", "/memory_bytes", Kind::kU64},
      {"restore", "/manifest", Kind::kObject},
      {"restore", "/lazy", Kind::kBool},
      {"restored", "/pid", Kind::kI32},
      {"restored", "/checkpoint", Kind::kString, false},
      {"restored", "/pages_lazy", Kind::kU64},
      {"restored", "/restore_seconds", Kind::kDouble},
      {"restored", "/resume_seconds", Kind::kDouble},
      {"want", "/task", Kind::kU32},
      {"want", "/vaddr", Kind::kU64},
      {"want", "/pages", Kind::kU64},
      {"pushed", "/pages", Kind::kU64},
      {"abort", "/message", Kind::kString, false},
      {"error", "/message", Kind::kString, false},
  };
  // The manifest inside `restore`: checked as strictly as one read from disk.
  const std::vector<std::pair<std::string, Kind>> manifest = {
      {"format", Kind::kString},          {"id", Kind::kString},
      {"created_at", Kind::kString},      {"host", Kind::kString},
      {"kernel", Kind::kString},          {"criu_version", Kind::kString},
      {"leave_running", Kind::kBool},     {"dump_seconds", Kind::kDouble},
      {"network_lock_table", Kind::kString}, {"session", Kind::kObject},
      {"session/name", Kind::kString},    {"session/command", Kind::kStrings},
      {"session/workdir", Kind::kString}, {"session/started_at", Kind::kString},
      {"session/source_pid", Kind::kI64}, {"session/output_pipes", Kind::kStrings},
      {"pages/in_store", Kind::kBool},    {"pages/count", Kind::kU64},
      {"pages/new", Kind::kU64},          {"files", Kind::kObjects},
      {"files/0/name", Kind::kString},    {"files/0/size", Kind::kU64},
      {"files/0/xxh3", Kind::kString},
  };
  for (const auto& [path, kind] : manifest) f.push_back({"restore", "/manifest/" + path, kind});
  f.push_back({"restore", "/manifest/pages", Kind::kObject, false});
  return f;
}

// Values of every other type (and numbers out of range) for a field of `kind`.
std::vector<json> WrongValues(Kind kind) {
  const json object = json::object({{"x", 1}});
  const json array = json::array({1});
  switch (kind) {
    case Kind::kString: return {5, -1, 1.5, true, object, array};
    case Kind::kU64: return {"5", -1, 1.5, true, object, array, ""};
    case Kind::kU32: return {"5", -1, 1.5, true, object, array, 4294967296ull};
    case Kind::kI32: return {"5", 1.5, true, object, array, 2147483648ll, -2147483649ll};
    case Kind::kI64: return {"5", 1.5, true, object, array, 18446744073709551615ull};
    case Kind::kDouble: return {"1.5", true, object, array};
    case Kind::kBool: return {1, 0, "true", object, array};
    case Kind::kStrings: return {"x", 5, object, json::array({1}), json::array({"a", 2}), json::array({json::array()})};
    case Kind::kObject: return {"x", 5, true, array};
    case Kind::kObjects: return {"x", 5, object, json::array({5}), json::array({"x"})};
  }
  return {};
}

json Sample(const std::string& op) {
  for (const Control& c : OneOfEach())
    if (OpName(c) == op) return Body(c);
  ADD_FAILURE() << "no sample for " << op;
  return {};
}

// The name the error must mention: the field's key; for an array of objects given a bad
// element, the element's kind.
std::string NamedAs(const json::json_pointer& pointer, const json* wrong = nullptr) {
  if (pointer.to_string() == "/manifest/files" && wrong && wrong->is_array()) return "file entry";
  return "'" + pointer.back() + "'";
}

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
    std::vector<uint8_t> out{'J'};
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
  refused(std::vector<uint8_t>(good.begin(), good.begin() + 1 + 2 + 10 + 8), "truncated") ;  // no end flag
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
