// CRIU's image files between the agents: sent as file chunks, written on arrival each in
// order, with no holes and no rewrites.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_set>

#include "elsa/status.h"
#include "elsa/transport/transport.h"
#include "elsa/unique_fd.h"
#include "migrate/protocol.h"

namespace elsa {

// Sends every regular file of `dir` as file chunks. Returns the bytes sent.
Result<uint64_t> SendDirectoryFiles(transport::Channel& channel, const std::string& dir);

// Writes arriving file chunks into a directory: each file in order, no holes, no rewrites.
class FileReceiver {
 public:
  static constexpr size_t kMaxOpenFiles = 8;
  explicit FileReceiver(std::string dir) : dir_(std::move(dir)) {}
  Status Take(const peer::FileChunk& chunk);
  // Every file was completed (its last chunk arrived).
  Status CheckComplete() const;
  uint64_t bytes() const { return bytes_; }

 private:
  struct Open {
    UniqueFd fd;
    uint64_t size = 0;
  };
  std::string dir_;
  std::map<std::string, Open> open_;
  std::unordered_set<std::string> done_;
  uint64_t bytes_ = 0;
};

}  // namespace elsa
