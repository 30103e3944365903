#include "elsa/engine/peer_allowlist.h"

#include <algorithm>
#include <cctype>

#include "elsa/file_util.h"

namespace elsa {
namespace {

constexpr size_t kMaxAllowlistBytes = 1 << 20;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool IsAgentPattern(std::string_view name) {
  if (name == "*") return true;
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

bool Matches(const std::string& pattern, std::string_view name) { return pattern == "*" || pattern == name; }

}  // namespace

Result<PeerAllowlist> PeerAllowlist::Parse(std::string_view text, std::string_view where) {
  PeerAllowlist list;
  list.where_ = where;
  size_t line_number = 0;
  while (!text.empty()) {
    const size_t end = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    ++line_number;
    if (const size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = Trim(line);
    if (line.empty()) continue;
    const std::string at = std::string(where) + ":" + std::to_string(line_number) + ": ";
    const size_t arrow = line.find("->");
    if (arrow == std::string_view::npos)
      return Status::InvalidArgument(at + "expected 'SOURCE -> DEST' (agent names or *), got '" + std::string(line) + "'");
    const std::string_view source = Trim(line.substr(0, arrow));
    const std::string_view destination = Trim(line.substr(arrow + 2));
    for (std::string_view side : {source, destination})
      if (!IsAgentPattern(side))
        return Status::InvalidArgument(at + "'" + std::string(side) +
                                       "' is not an agent name (letters, digits, '.', '_', '-') or *");
    list.rules_.push_back({std::string(source), std::string(destination)});
  }
  if (list.rules_.empty())
    return Status::InvalidArgument(std::string(where) + ": no rules (lines 'SOURCE -> DEST'); an empty allowlist "
                                   "would refuse every migration");
  return list;
}

Result<PeerAllowlist> PeerAllowlist::Load(const std::string& path) {
  ELSA_ASSIGN_OR_RETURN(std::string text, ReadFile(path, kMaxAllowlistBytes));
  return Parse(text, path);
}

Status PeerAllowlist::Check(std::string_view source, std::string_view destination) const {
  for (const Rule& rule : rules_)
    if (Matches(rule.source, source) && Matches(rule.destination, destination)) return Status::Ok();
  return Status::PermissionDenied("no rule in " + where_ + " lets '" + std::string(source) + "' send sessions to '" +
                                  std::string(destination) + "' (add '" + std::string(source) + " -> " +
                                  std::string(destination) + "')");
}

}  // namespace elsa
