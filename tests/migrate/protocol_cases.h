// The peer protocol's messages as test cases: one valid message of each op, and every field of
// every op with the values of the wrong type it must be refused with. Shared by migrate_tests
// (the decoder) and peer_server_tests (a live agent answering them).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "migrate/protocol.h"

namespace elsa::peer::testing {

using nlohmann::json;

inline Manifest SampleManifest() {
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
inline std::vector<Control> OneOfEach() {
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
          Error{"no room"},
          Resolve{"alice"},
          Resolution{Outcome::kKept}};
}

inline std::vector<uint8_t> Wire(const json& body) {
  const std::string text = body.dump();
  // Reserved, then appended: GCC 12 at -O3 reports a false -Warray-bounds on inserting after
  // a one-element initializer list.
  std::vector<uint8_t> out;
  out.reserve(1 + text.size());
  out.push_back('J');
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

inline json Body(const Control& control) {
  const std::vector<uint8_t> bytes = EncodeControl(control);
  EXPECT_EQ(bytes.at(0), 'J');
  return json::parse(bytes.begin() + 1, bytes.end());
}

enum class Kind { kString, kU64, kU32, kI32, kI64, kDouble, kBool, kStrings, kObject, kObjects };

struct Field {
  std::string op;       // which op's sample
  std::string pointer;  // where in its body (a JSON pointer)
  Kind kind;
  bool required = true;
};

inline std::vector<Field> AllFields() {
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
      {"format", Kind::kString},
      {"id", Kind::kString},
      {"created_at", Kind::kString},
      {"host", Kind::kString},
      {"kernel", Kind::kString},
      {"criu_version", Kind::kString},
      {"leave_running", Kind::kBool},
      {"dump_seconds", Kind::kDouble},
      {"network_lock_table", Kind::kString},
      {"session", Kind::kObject},
      {"session/name", Kind::kString},
      {"session/command", Kind::kStrings},
      {"session/workdir", Kind::kString},
      {"session/started_at", Kind::kString},
      {"session/source_pid", Kind::kI64},
      {"session/output_pipes", Kind::kStrings},
      {"pages/in_store", Kind::kBool},
      {"pages/count", Kind::kU64},
      {"pages/new", Kind::kU64},
      {"files", Kind::kObjects},
      {"files/0/name", Kind::kString},
      {"files/0/size", Kind::kU64},
      {"files/0/xxh3", Kind::kString},
  };
  for (const auto& [path, kind] : manifest) f.push_back({"restore", "/manifest/" + path, kind});
  f.push_back({"restore", "/manifest/pages", Kind::kObject, false});
  return f;
}

// Values of every other type (and numbers out of range) for a field of `kind`.
inline std::vector<json> WrongValues(Kind kind) {
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

inline json Sample(const std::string& op) {
  for (const Control& c : OneOfEach())
    if (OpName(c) == op) return Body(c);
  ADD_FAILURE() << "no sample for " << op;
  return {};
}

// The name the error must mention: the field's key; for an array of objects given a bad
// element, the element's kind.
inline std::string NamedAs(const json::json_pointer& pointer, const json* wrong = nullptr) {
  if (pointer.to_string() == "/manifest/files" && wrong && wrong->is_array()) return "file entry";
  return "'" + pointer.back() + "'";
}

}  // namespace elsa::peer::testing
