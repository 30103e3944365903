// Typed fields out of an untrusted JSON object. A missing required field, a field of the wrong
// type, or a number out of range for its C++ type becomes a Status naming the field; nothing
// throws and nothing is silently read as 0 (nlohmann's `.value()` does both). Shared by every
// decoder of JSON from outside: manifests, the agent's API requests, the peer protocol.
//
//   JsonReader r(body, "peer message 'restored'", StatusCode::kProtocolError);
//   r.Required("pid", &m.pid).Optional("checkpoint", &m.checkpoint);
//   ELSA_RETURN_IF_ERROR(r.status());
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "elsa/status.h"

namespace elsa {

// JSON text that never throws: a string holding bytes that are not UTF-8 (a file name in a CRIU
// log, a user's argument) has them replaced (U+FFFD) instead of making dump() throw. Every JSON
// Elsa writes goes through here.
inline std::string DumpJson(const nlohmann::json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}
// The same for an object whose keys keep the order they were set in (a log line's time first).
inline std::string DumpJson(const nlohmann::ordered_json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

class JsonReader {
 public:
  // `what` names the object in error messages; errors carry `code`. A non-object is an error.
  JsonReader(const nlohmann::json& object, std::string what, StatusCode code)
      : object_(object), what_(std::move(what)), code_(code) {
    if (!object_.is_object()) Fail("is not a JSON object");
  }

  // Absent or null: an error.
  template <typename T>
  JsonReader& Required(const char* key, T* out) {
    Read(key, out, /*required=*/true);
    return *this;
  }
  // Absent or null: `*out` keeps its value.
  template <typename T>
  JsonReader& Optional(const char* key, T* out) {
    Read(key, out, /*required=*/false);
    return *this;
  }
  // A nested object, read with its own reader ("what.key" in its errors).
  const nlohmann::json* Object(const char* key, bool required) {
    const nlohmann::json* v = Find(key);
    if (!v) {
      if (required) Fail(std::string("lacks object '") + key + "'");
      return nullptr;
    }
    if (!v->is_object()) {
      Fail(std::string("field '") + key + "' must be an object");
      return nullptr;
    }
    return v;
  }

  // The first error met, or OK.
  const Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }
  const std::string& what() const { return what_; }
  void Fail(const std::string& why) {
    if (status_.ok()) status_ = Status(code_, what_ + ": " + why);
  }

 private:
  const nlohmann::json* Find(const char* key) const {
    if (!object_.is_object()) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  template <typename T>
  void Read(const char* key, T* out, bool required) {
    if (!status_.ok()) return;
    const nlohmann::json* v = Find(key);
    if (!v) {
      if (required && object_.is_object()) Fail(std::string("lacks field '") + key + "'");
      return;
    }
    T value{};
    if (const char* expected = Convert(*v, &value)) {
      Fail(std::string("field '") + key + "' must be " + expected);
      return;
    }
    *out = std::move(value);
  }

  // nullptr on success, else what the value should have been.
  template <typename T>
  static const char* Convert(const nlohmann::json& v, T* out) {
    if constexpr (std::is_same_v<T, std::string>) {
      if (!v.is_string()) return "a string";
      *out = v.get<std::string>();
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) return "true or false";
      *out = v.get<bool>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number()) return "a number";
      *out = v.get<T>();
    } else if constexpr (std::is_integral_v<T>) {
      if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) return "an integer in range";
        *out = static_cast<T>(u);
      } else if (v.is_number_integer()) {
        const int64_t i = v.get<int64_t>();
        if constexpr (std::is_unsigned_v<T>) {
          if (i < 0) return "a non-negative integer";
          if (static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
            return "an integer in range";
        } else {
          if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
              i > static_cast<int64_t>(std::numeric_limits<T>::max()))
            return "an integer in range";
        }
        *out = static_cast<T>(i);
      } else {
        return "an integer";
      }
    } else if constexpr (std::is_same_v<T, nlohmann::json>) {
      *out = v;
    } else {
      static_assert(std::is_same_v<T, std::vector<typename T::value_type>>, "JsonReader: unsupported field type");
      if (!v.is_array()) return "an array";
      T items;
      items.reserve(v.size());
      for (const auto& e : v) {
        typename T::value_type item{};
        if (Convert(e, &item)) return "an array of values of one type (an element has the wrong type)";
        items.push_back(std::move(item));
      }
      *out = std::move(items);
    }
    return nullptr;
  }

  const nlohmann::json& object_;
  std::string what_;
  StatusCode code_;
  Status status_;
};

}  // namespace elsa
