// A tree CRIU dumped and left stopped (and network-locked), for a migration that may still
// need it: resumed if the migration fails, ended once the destination has committed.
#pragma once

#include <sys/types.h>

#include <string>

#include "elsa/log.h"
#include "elsa/status.h"

namespace elsa {

// Lets a tree CRIU left stopped and network-locked (dump with leave_stopped) run again: takes
// its TCP connections out of repair mode, drops CRIU's nftables table, SIGCONTs every process.
Status ResumeStoppedTree(pid_t root, const std::string& network_lock_table);

// Owns a tree CRIU dumped and left stopped. Until End() (the destination committed: the session
// is there now), leaving scope resumes it here, on every way out, exceptions included: a
// failed migration never leaves the session frozen, nor ended on both hosts.
class StoppedTree {
 public:
  // `record`: the tree's FrozenCopy record, removed once it is settled (resumed or ended), kept
  // if it is left stopped.
  explicit StoppedTree(Logger log, std::string record = "") : log_(std::move(log)), record_(std::move(record)) {}
  StoppedTree(const StoppedTree&) = delete;
  StoppedTree& operator=(const StoppedTree&) = delete;
  ~StoppedTree();

  // CRIU has stopped the tree rooted at `root`, network-locked by `network_lock_table` (may be
  // empty).
  void Take(pid_t root, std::string network_lock_table);
  bool held() const { return root_ > 0; }
  const std::string& network_lock_table() const { return lock_table_; }

  // Lets it run here again now.
  Status Resume();
  // Ends the stopped copy (SIGKILL) and CRIU's lock on its connections: the session lives on
  // the destination.
  void End();
  // Ends the stopped copy and leaves CRIU's lock on its connections in place: the session lives
  // in a checkpoint now, whose restore takes the lock down (its peers never see a reset).
  void EndKeepingNetworkLock();
  // Lets go of it as it is, stopped (its fate cannot be decided here): the caller says so.
  void LeaveStopped() { root_ = 0; }

 private:
  void Settled();

  Logger log_;
  std::string record_;
  pid_t root_ = 0;
  std::string lock_table_;
};

}  // namespace elsa
