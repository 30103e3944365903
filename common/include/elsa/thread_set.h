// Threads for work that outlives the call that started it (a lazy restore's page supply, an
// incoming migration): each finished thread is joined at the next Start, so they do not pile up
// over an agent's life, and the rest are joined on destruction.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

namespace elsa {

class ThreadSet {
 public:
  ThreadSet() = default;
  ThreadSet(const ThreadSet&) = delete;
  ThreadSet& operator=(const ThreadSet&) = delete;
  ~ThreadSet() { JoinAll(); }

  // `work` may be move-only (it may own what the thread works on).
  template <typename Work>
  void Start(Work work) {
    std::lock_guard lock(mu_);
    for (auto it = threads_.begin(); it != threads_.end();) {
      if ((*it)->done) {
        (*it)->thread.join();
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
    auto entry = std::make_unique<Entry>();
    Entry* self = entry.get();
    entry->thread = std::thread([self, work = std::move(work)]() mutable {
      work();
      self->done = true;
    });
    threads_.push_back(std::move(entry));
  }

  // Waits for every thread (new ones may not be started meanwhile).
  void JoinAll() {
    std::lock_guard lock(mu_);
    for (auto& t : threads_) t->thread.join();
    threads_.clear();
  }

  size_t running() const {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const auto& t : threads_) n += t->done ? 0 : 1;
    return n;
  }

 private:
  struct Entry {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  mutable std::mutex mu_;
  std::list<std::unique_ptr<Entry>> threads_;
};

}  // namespace elsa
