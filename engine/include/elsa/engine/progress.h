// Progress of a long operation (checkpoint, restore, migration), as events with named fields:
// what the CLI prints as `detail`, and what a program (the hub's progress bar) reads from the
// numbers, without parsing sentences. The agent's API sends each as
// {"event":"progress","phase":...,"detail":...,<the fields that are set>}.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace elsa {

struct ProgressEvent {
  // verify, pages, lazy, restore, dump, commit, criu; a migration's connect, precopy, gate,
  // freeze, transfer, restore, running, postcopy (in timeline order).
  std::string phase;
  std::string detail;  // one sentence for a person
  std::optional<int> round;                 // precopy: the round number (1, 2, ...)
  std::optional<uint64_t> bytes_done;       // bytes of this phase done so far (sent, scanned, written)
  std::optional<uint64_t> bytes_total;      // what the phase will have done at its end, when known
  std::optional<uint64_t> pages;            // pages involved (sent, changed, lazy)
  std::optional<double> rate_bytes_per_s;   // of this phase
  std::optional<double> eta_seconds;        // of this phase
  std::optional<double> seconds;            // how long the phase (or the round) took, once it ended

  static ProgressEvent Of(std::string phase, std::string detail) {
    ProgressEvent event;
    event.phase = std::move(phase);
    event.detail = std::move(detail);
    return event;
  }
};

using ProgressFn = std::function<void(const ProgressEvent& event)>;

// A plain event: a phase and a sentence.
inline void Report(const ProgressFn& progress, std::string phase, std::string detail) {
  if (progress) progress(ProgressEvent::Of(std::move(phase), std::move(detail)));
}
inline void Report(const ProgressFn& progress, ProgressEvent event) {
  if (progress) progress(event);
}

}  // namespace elsa
