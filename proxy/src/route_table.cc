#include "route_table.h"

#include <algorithm>
#include <mutex>

#include "iso_time.h"

namespace elsa::proxy {

using nlohmann::ordered_json;

std::shared_ptr<const ParsedTarget> MakeParsedTarget(std::string text) {
  auto t = std::make_shared<ParsedTarget>();
  auto url = ParseTargetUrl(text);
  if (url.ok()) {
    t->url = std::move(url).value();
  } else {
    t->error = url.status().message();
  }
  t->text = std::move(text);
  return t;
}

Route::Route(std::string path, std::shared_ptr<RouteControl> control)
    : path_(std::move(path)), control_(std::move(control)) {}

RouteTable::RouteTable(bool host_routing, ControlFactory control_factory)
    : host_routing_(host_routing), control_factory_(std::move(control_factory)) {}

RouteTable::~RouteTable() = default;

void RouteTable::Refresh(Route& r) {
  const auto& target = r.data_["target"];
  r.effective_ = MakeParsedTarget(r.internal_target_ ? *r.internal_target_
                                                     : target.get<std::string>());
}

RouteTable::Added RouteTable::Add(std::string_view raw_path, ordered_json data, int64_t now_ms) {
  std::string path = CleanRoutePath(raw_path);
  if (host_routing_ && path != "/") {
    // CHP: data.host = path.split("/")[1]
    size_t end = path.find('/', 1);
    data["host"] = path.substr(1, end == std::string::npos ? std::string::npos : end - 1);
  }
  std::unique_lock lock(mu_);
  Added out;
  auto it = routes_.find(path);
  if (it == routes_.end()) {
    auto control = control_factory_ ? control_factory_(path) : nullptr;
    auto route = std::make_shared<Route>(path, std::move(control));
    route->seq_ = next_seq_++;
    it = routes_.emplace(path, std::move(route)).first;
    out.created = true;
  }
  Route& r = *it->second;
  if (!out.created && r.internal_target_ &&
      r.data_["target"].get<std::string>() != data["target"].get<std::string>()) {
    out.dropped_internal_target = std::move(r.internal_target_);
    r.internal_target_.reset();
  }
  r.data_ = std::move(data);
  Refresh(r);
  r.Touch(now_ms);
  TrieAdd(path, it->second);
  out.route = it->second;
  return out;
}

std::shared_ptr<Route> RouteTable::Remove(std::string_view raw_path) {
  std::string path = CleanRoutePath(raw_path);
  std::unique_lock lock(mu_);
  auto it = routes_.find(path);
  if (it == routes_.end()) return nullptr;
  auto route = std::move(it->second);
  routes_.erase(it);
  TrieRemove(path);
  return route;
}

ordered_json RouteTable::WithActivity(const Route& r) const {
  ordered_json out = r.data_;
  out["last_activity"] = FormatIsoMillis(r.last_activity_ms());
  return out;
}

std::optional<ordered_json> RouteTable::Get(std::string_view raw_path) const {
  std::string path = CleanRoutePath(raw_path);
  std::shared_lock lock(mu_);
  auto it = routes_.find(path);
  if (it == routes_.end()) return std::nullopt;
  return WithActivity(*it->second);
}

ordered_json RouteTable::GetAll(std::optional<int64_t> inactive_since_ms) const {
  std::vector<std::shared_ptr<Route>> all = All();
  std::shared_lock lock(mu_);
  ordered_json out = ordered_json::object();
  for (const auto& r : all) {
    if (inactive_since_ms && !(r->last_activity_ms() < *inactive_since_ms)) continue;
    out[r->path()] = WithActivity(*r);
  }
  return out;
}

std::optional<RouteTable::Match> RouteTable::Find(std::string_view routing_path) const {
  auto parts = SplitRoutePath(routing_path);
  std::shared_lock lock(mu_);
  const Node* node = &root_;
  const Node* best = root_.route ? &root_ : nullptr;
  size_t best_depth = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto it = node->children.find(std::string(parts[i]));
    if (it == node->children.end()) break;
    node = it->second.get();
    if (node->route) {
      best = node;
      best_depth = i + 1;
    }
  }
  if (!best) return std::nullopt;
  Match m;
  m.route = best->route;
  m.target = best->route->effective_;
  // Joined by hand: GCC 12's -Wrestrict misfires on string += string_view here.
  m.prefix.assign(1, '/');
  for (size_t i = 0; i < best_depth; ++i) {
    if (i) m.prefix.push_back('/');
    m.prefix.append(parts[i].data(), parts[i].size());
  }
  return m;
}

std::shared_ptr<const ParsedTarget> RouteTable::TargetOf(const Route& route) const {
  std::shared_lock lock(mu_);
  return route.effective_;
}

std::shared_ptr<Route> RouteTable::Lookup(std::string_view raw_path) const {
  std::string path = CleanRoutePath(raw_path);
  std::shared_lock lock(mu_);
  auto it = routes_.find(path);
  return it == routes_.end() ? nullptr : it->second;
}

Status RouteTable::SetInternalTarget(std::string_view raw_path, std::optional<std::string> target) {
  if (target) {
    auto url = ParseTargetUrl(*target);
    if (!url.ok()) return url.status();
  }
  std::string path = CleanRoutePath(raw_path);
  std::unique_lock lock(mu_);
  auto it = routes_.find(path);
  if (it == routes_.end()) return Status::NotFound("no route " + path);
  Route& r = *it->second;
  // Retargeting to the hub's own target is the same as clearing the mapping.
  if (target && *target == r.data_["target"].get<std::string>()) target.reset();
  r.internal_target_ = std::move(target);
  Refresh(r);
  return Status::Ok();
}

RouteTable::Targets RouteTable::TargetsOf(const Route& route) const {
  std::shared_lock lock(mu_);
  return {route.data_.contains("target") ? route.data_["target"].get<std::string>() : "",
          route.internal_target_};
}

std::vector<std::shared_ptr<Route>> RouteTable::All() const {
  std::vector<std::shared_ptr<Route>> out;
  {
    std::shared_lock lock(mu_);
    out.reserve(routes_.size());
    for (const auto& [path, route] : routes_) out.push_back(route);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->seq_ < b->seq_; });
  return out;
}

size_t RouteTable::size() const {
  std::shared_lock lock(mu_);
  return routes_.size();
}

void RouteTable::TrieAdd(std::string_view path, std::shared_ptr<Route> route) {
  Node* node = &root_;
  for (std::string_view part : SplitRoutePath(path)) {
    auto& child = node->children[std::string(part)];
    if (!child) child = std::make_unique<Node>();
    node = child.get();
  }
  node->route = std::move(route);
}

void RouteTable::TrieRemove(std::string_view path) {
  // CHP's URLTrie.remove: clear the node's data, prune nodes left with neither data nor
  // children on the way back up.
  auto parts = SplitRoutePath(path);
  std::vector<Node*> chain{&root_};
  for (std::string_view part : parts) {
    auto it = chain.back()->children.find(std::string(part));
    if (it == chain.back()->children.end()) return;  // already gone
    chain.push_back(it->second.get());
  }
  chain.back()->route.reset();
  for (size_t i = parts.size(); i > 0; --i) {
    Node* child = chain[i];
    if (!child->children.empty() || child->route) break;
    chain[i - 1]->children.erase(std::string(parts[i - 1]));
  }
}

}  // namespace elsa::proxy
