// The agent's operations on the checkpoints it keeps: list, remove, verify, collect.
#include "elsa/engine/agent.h"
#include "store/checkpoint_pages.h"

namespace elsa {

Result<std::vector<Manifest>> Agent::Checkpoints() const { return store_.List(); }

Result<CollectReport> Agent::RemoveCheckpoint(const std::string& checkpoint_id) {
  auto manifest = store_.Load(checkpoint_id);  // a damaged checkpoint can still be removed
  ELSA_RETURN_IF_ERROR(store_.Remove(checkpoint_id));
  // Never restored here, CRIU's lock on the dead connections would outlive the checkpoint.
  if (manifest.ok() && !manifest->network_lock_table.empty())
    (void)DropCriuNetworkLock(manifest->network_lock_table);
  return CollectGarbage().WithContext("removed " + checkpoint_id + ", but reclaiming its pages failed");
}

Result<Manifest> Agent::VerifyCheckpoint(const std::string& checkpoint_id) const {
  ELSA_ASSIGN_OR_RETURN(Manifest manifest, store_.Load(checkpoint_id));
  ELSA_RETURN_IF_ERROR(store_.Verify(manifest));
  if (manifest.pages_in_store) ELSA_RETURN_IF_ERROR(pages_->VerifyPages(store_.PathOf(checkpoint_id), true));
  return manifest;
}

Result<std::vector<Agent::CheckpointVerdict>> Agent::VerifyAllCheckpoints(const ProgressFn& progress) const {
  ELSA_ASSIGN_OR_RETURN(std::vector<Manifest> all, store_.List());
  std::vector<CheckpointVerdict> verdicts;
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string& id = all[i].id;
    Report(progress, "verify", "checkpoint " + std::to_string(i + 1) + " of " + std::to_string(all.size()) + ": " + id);
    auto verified = VerifyCheckpoint(id);
    // Removed while the others were checked: it is not lost, it is gone on purpose.
    if (!verified.ok() && store_.Load(id).status().code() == StatusCode::kNotFound) continue;
    verdicts.push_back({id, all[i].session_name, verified.ok() ? Status::Ok() : verified.status()});
  }
  return verdicts;
}

Result<CollectReport> Agent::CollectGarbage() {
  // Listed once collection has its gate: a checkpoint that committed while it waited counts.
  return pages_->Collect([this]() -> Result<std::vector<std::string>> {
    ELSA_ASSIGN_OR_RETURN(std::vector<Manifest> all, store_.List());
    std::vector<std::string> dirs;
    for (const Manifest& m : all)
      if (m.pages_in_store) dirs.push_back(store_.PathOf(m.id));
    return dirs;
  });
}

Agent::PageStoreReport Agent::PageStoreStats() const {
  const auto stats = pages_->Stats();
  return {stats.unique_pages, stats.stored_bytes};
}

}  // namespace elsa
