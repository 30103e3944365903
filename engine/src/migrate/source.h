// The source's half of a live migration (A), as the timeline's steps in order. Run() reads as
// the timeline; each step is a function returning its error. Any failure, at any step and by
// any means (an error, an exception), resumes the session here and says so: the session's
// stopped copy ends only after the destination has committed (StoppedTree).
//
//   connect -> precopy -> prepare the dump -> freeze gate -> freeze -> ship images
//           -> await restored -> push memory (post-copy) -> commit
//
// protocol.h has the conversation; destination.h the other half.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "elsa/engine/migration.h"
#include "elsa/engine/progress.h"
#include "elsa/file_util.h"
#include "elsa/log.h"
#include "elsa/page_server/loopback.h"
#include "elsa/transport/transport.h"
#include "elsa/unique_fd.h"
#include "migrate/frozen_copy.h"
#include "migrate/host.h"
#include "migrate/known_pages.h"
#include "migrate/lazy_plan.h"
#include "migrate/stopped_tree.h"

namespace elsa {

class MigrationSource {
 public:
  MigrationSource(MigrationHost& host, std::string name, MigrateOptions options, ProgressFn progress);
  ~MigrationSource();

  Result<MigrateReport> Run();

  // After Run(), for the agent's metrics: what was measured, also of a migration that failed (its
  // `session` is empty if it never took the session), and whether a failure resumed the session
  // here (otherwise it was left frozen until the destination answers).
  const MigrateReport& report() const { return out_; }
  bool rolled_back() const { return rolled_back_; }

 private:
  using Clock = std::chrono::steady_clock;

  Status Steps();
  Status Connect();       // the channel to B; `begin` -> `ready`
  Status Precopy();       // rounds over the running tree's memory: each page once per content
  Status PrepareDump();   // CRIU located and asked its version, the dump's directory, the manifest
  Status FreezeGate();    // the caller's go (elsa-hub-service pauses its browsers here)
  Status Freeze();        // CRIU stops and dumps the tree (pre-copy: B's missing pages forwarded)
  Status FreezeWithPages();
  Status FreezeLazily();
  Status ShipImages();    // the image files to B
  Status AwaitRestored(); // `restore` -> `restored`: B runs the session
  Status PushMemory();    // post-copy: every page B lacks, while the session runs there
  Status Commit();        // `commit` -> `committed`: B's copy is the session now
  void Finish();          // the stopped copy here ends; the session is forgotten here
  Status RollBack(const Status& why);
  // After `restore` went out, B may run the session with every page (and then keeps it): a
  // failure there is settled by asking B. Ok(true): B runs it; Ok(false): B has none; an error:
  // B cannot be asked before `deadline`.
  Result<bool> AskWhereItRuns(const Status& why, std::chrono::steady_clock::time_point deadline);
  // B could not be asked: the stopped copy stays stopped (two copies running would be worse)
  // and a thread of the agent's keeps asking, then ends or resumes it.
  Status LeaveInDoubt(const Status& why, const Status& asking);

  MigrationHost& host_;
  const std::string name_;
  const MigrateOptions options_;
  const ProgressFn progress_;
  Logger log_;
  const Clock::time_point start_ = Clock::now();

  std::optional<SessionClaim> claim_;
  std::pair<std::string, uint16_t> destination_;
  std::unique_ptr<transport::Channel> channel_;
  KnownPages known_;
  std::unique_ptr<ForwardingSink> forward_;
  std::optional<CriuDriver> criu_;
  ScopedPath dump_dir_;
  UniqueFd dump_dir_fd_;  // opened before the gate: nothing but CRIU's work after the freeze
  ScopedPath criu_conf_;
  page_server::LoopbackPair lazy_dump_;  // post-copy: our end and CRIU's of the lazy dump's connection
  Manifest manifest_;
  std::unique_ptr<StoppedTree> stopped_;  // a pointer: an in-doubt migration hands it to a thread
  bool restore_sent_ = false;
  FrozenCopy frozen_record_;  // on disk from the freeze until settled (frozen_copy.h)
  Clock::time_point frozen_at_;
  uint64_t wire_before_stop_ = 0;
  std::optional<LazyPlan> plan_;
  std::unique_ptr<class PostcopyPusher> pusher_;
  MigrateReport out_;
  bool rolled_back_ = false;
};

}  // namespace elsa
