// Who may send sessions to whom, by agent name (the URI SAN elsa-agent:NAME of each agent's
// certificate): elsad --peer-allow FILE, lines "SOURCE -> DEST", either side a name or "*".
//
//   # h1 and h2 drain into each other; every host may send to the spare
//   h1 -> h2
//   h2 -> h1
//   * -> spare
//
// A destination refuses a channel from a source no rule allows; a source, one to a destination
// no rule allows. No file: every agent with a certificate from the fleet's CA is allowed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "elsa/status.h"

namespace elsa {

class PeerAllowlist {
 public:
  static Result<PeerAllowlist> Parse(std::string_view text, std::string_view where);
  static Result<PeerAllowlist> Load(const std::string& path);

  // OK if a rule lets `source` send to `destination`; else PermissionDenied saying what is missing.
  Status Check(std::string_view source, std::string_view destination) const;
  size_t size() const { return rules_.size(); }

 private:
  struct Rule {
    std::string source;       // a name, or "*"
    std::string destination;  // a name, or "*"
  };
  std::vector<Rule> rules_;
  std::string where_;
};

}  // namespace elsa
