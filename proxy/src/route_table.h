// The routing table, with configurable-http-proxy's semantics: routes keyed by CHP's cleaned
// path, arbitrary JSON data kept as posted, longest-prefix matching on whole path segments,
// host routing (the Host is the first segment), last_activity per route.
//
// Elsa adds one thing: a route's *internal* target. The hub sees and re-POSTs the target it
// set (its "hub target"); a migration retargets the route internally, so the hub's periodic
// check finds nothing to correct and cannot undo the move. A POST with a *different* target
// means the hub moved the server itself, and drops the internal target.
//
// Thread-safe: a shared mutex guards structure and data; activity is a lock-free atomic.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "url.h"

namespace elsa::proxy {

class RouteControl;  // the migration machinery's per-route state (migration.h)

// A target string and what parsing it gave. Routes keep unusable targets (CHP accepts any
// string); requests to them get a 503 and a log line that says why.
struct ParsedTarget {
  std::string text;
  std::optional<TargetUrl> url;
  std::string error;  // when !url
};
std::shared_ptr<const ParsedTarget> MakeParsedTarget(std::string text);

class Route {
 public:
  Route(std::string path, std::shared_ptr<RouteControl> control);
  const std::string& path() const { return path_; }
  // Traffic in either direction; CHP's last_activity.
  void Touch(int64_t now_ms) { last_activity_ms_.store(now_ms, std::memory_order_relaxed); }
  int64_t last_activity_ms() const { return last_activity_ms_.load(std::memory_order_relaxed); }
  // Null when the table was built without a control factory (unit tests, fuzzing).
  RouteControl* control() const { return control_.get(); }

 private:
  friend class RouteTable;
  const std::string path_;
  const std::shared_ptr<RouteControl> control_;
  uint64_t seq_ = 0;                    // insertion order, for listing like a JS object
  nlohmann::ordered_json data_;         // as posted, "target" included
  std::optional<std::string> internal_target_;
  std::shared_ptr<const ParsedTarget> effective_;
  std::atomic<int64_t> last_activity_ms_{0};
};

class RouteTable {
 public:
  using ControlFactory = std::function<std::shared_ptr<RouteControl>(const std::string& path)>;
  explicit RouteTable(bool host_routing, ControlFactory control_factory = nullptr);
  RouteTable(const RouteTable&) = delete;
  RouteTable& operator=(const RouteTable&) = delete;
  ~RouteTable();

  // --- CHP's API. Paths are cleaned here (CleanRoutePath). ------------------------------
  struct Added {
    std::shared_ptr<Route> route;
    bool created = false;
    std::optional<std::string> dropped_internal_target;  // the hub changed the target
  };
  // `data` must be an object whose "target" is a string (the API checks that first).
  Added Add(std::string_view path, nlohmann::ordered_json data, int64_t now_ms);
  std::shared_ptr<Route> Remove(std::string_view path);  // null if there was no such route
  // The route's data plus "last_activity" (ISO), as CHP's GET shows it.
  std::optional<nlohmann::ordered_json> Get(std::string_view path) const;
  // Every route (in insertion order), or those with last_activity < inactive_since_ms.
  nlohmann::ordered_json GetAll(std::optional<int64_t> inactive_since_ms) const;

  // --- proxying -------------------------------------------------------------------------
  struct Match {
    std::shared_ptr<Route> route;
    std::string prefix;  // the matched trie prefix, e.g. "/user/alice"
    std::shared_ptr<const ParsedTarget> target;
  };
  // `routing_path` is the decoded request path, behind "/<host>" under host routing.
  std::optional<Match> Find(std::string_view routing_path) const;
  std::shared_ptr<const ParsedTarget> TargetOf(const Route& route) const;

  // --- migration ------------------------------------------------------------------------
  std::shared_ptr<Route> Lookup(std::string_view path) const;
  // Sets (or, with nullopt, clears) the internal target. InvalidArgument if unparsable,
  // NotFound if there is no such route.
  Status SetInternalTarget(std::string_view path, std::optional<std::string> target);
  struct Targets {
    std::string hub;
    std::optional<std::string> internal;
  };
  Targets TargetsOf(const Route& route) const;
  std::vector<std::shared_ptr<Route>> All() const;  // insertion order
  size_t size() const;

 private:
  struct Node {
    std::unordered_map<std::string, std::unique_ptr<Node>> children;
    std::shared_ptr<Route> route;
  };
  nlohmann::ordered_json WithActivity(const Route& r) const;
  void TrieAdd(std::string_view path, std::shared_ptr<Route> route);
  void TrieRemove(std::string_view path);
  static void Refresh(Route& r);

  const bool host_routing_;
  const ControlFactory control_factory_;
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Route>> routes_;  // by cleaned path
  Node root_;
  uint64_t next_seq_ = 0;
};

}  // namespace elsa::proxy
