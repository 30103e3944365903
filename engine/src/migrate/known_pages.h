// Which pages the destination holds, and the page sink that sends it only the others: what
// makes a page cross the link once per content (pre-copy rounds, the dump's pages, post-copy).
#pragma once

#include <mutex>
#include <unordered_set>

#include "elsa/page_server/page_store.h"
#include "elsa/status.h"
#include "elsa/transport/transport.h"

namespace elsa {

// Hashes of the pages the destination holds (or has been sent: the channel delivers in order).
class KnownPages {
 public:
  // True if `hash` was not known before (the caller now owes the destination that page).
  bool Claim(const page_server::PageHash& hash);
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::unordered_set<page_server::PageHash, page_server::PageStore::HashOf> known_;
};

// A page sink that sends the destination each page it does not hold yet, as page batches on
// `channel`; pages it holds cost a hash. Counts what it sent.
class ForwardingSink : public page_server::PageSink {
 public:
  ForwardingSink(transport::Channel& channel, KnownPages& known) : channel_(channel), known_(known) {}
  Result<size_t> PutBatch(const uint8_t* pages, size_t count, page_server::PageHash* hashes) override;

 private:
  transport::Channel& channel_;
  KnownPages& known_;
};

}  // namespace elsa
