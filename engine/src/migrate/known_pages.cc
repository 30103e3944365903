#include "migrate/known_pages.h"

namespace elsa {

bool KnownPages::Claim(const page_server::PageHash& hash) {
  std::lock_guard lock(mu_);
  return known_.insert(hash).second;
}

size_t KnownPages::size() const {
  std::lock_guard lock(mu_);
  return known_.size();
}

Result<size_t> ForwardingSink::PutBatch(const uint8_t* pages, size_t count, page_server::PageHash* hashes) {
  transport::PageBatch batch;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* page = pages + i * transport::kPageSize;
    hashes[i] = page_server::HashPage(page);
    // The address field carries the page's place in this batch; the destination stores pages
    // by content and does not need it.
    if (known_.Claim(hashes[i])) batch.AddPage(i * transport::kPageSize, page);
  }
  const size_t sent = batch.size();
  if (sent) ELSA_RETURN_IF_ERROR(channel_.SendPages(std::move(batch)).WithContext("sending pages to the destination"));
  return sent;
}

}  // namespace elsa
