#include "elsa/page_server/lazy_server.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>

#include "elsa/file_util.h"
#include "elsa/page_server/protocol.h"
#include "socket_io.h"

namespace elsa::page_server {
namespace {

// One reply carries at most this much; CRIU asks again for the rest of a longer request.
constexpr uint64_t kMaxReplyPages = 1024;  // 4 MiB

double Percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  const size_t k = std::min(values.size() - 1, static_cast<size_t>(p * static_cast<double>(values.size())));
  std::nth_element(values.begin(), values.begin() + static_cast<ptrdiff_t>(k), values.end());
  return values[k];
}

}  // namespace

LazyPageServer::LazyPageServer(UniqueFd listen_fd, uint16_t port, PageLocator locator, const PageStore* store)
    : listen_fd_(std::move(listen_fd)), port_(port), locator_(std::move(locator)), store_(store) {}

Result<std::unique_ptr<LazyPageServer>> LazyPageServer::Listen(const std::string& address, uint16_t port,
                                                               PageLocator locator, const PageStore* store) {
  uint16_t bound = 0;
  ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ListenOn(address, port, &bound));
  return std::make_unique<LazyPageServer>(std::move(fd), bound, std::move(locator), store);
}

Result<LazyServeStats> LazyPageServer::ServeOne(std::chrono::milliseconds accept_timeout,
                                                std::chrono::milliseconds idle_timeout) {
  ELSA_ASSIGN_OR_RETURN(UniqueFd sock, AcceptOne(listen_fd_.get(), Clock::now() + accept_timeout));
  const auto start = Clock::now();
  LazyServeStats stats;
  std::vector<double> latencies;
  std::vector<uint8_t> pages(kMaxReplyPages * kPageSize);
  for (;;) {
    std::array<uint8_t, kRequestSize> raw{};
    bool at_boundary = false;
    Status st = RecvAll(sock.get(), raw.data(), raw.size(), Clock::now() + idle_timeout, &at_boundary);
    if (!st.ok()) {
      if (st.code() == StatusCode::kPeerClosed && at_boundary)
        return Status::PeerClosed("criu lazy-pages closed the connection without CLOSE");
      return st;
    }
    const auto received = Clock::now();
    const Request req = DecodeRequest(raw);
    if (req.command == kClose || req.command == kForceClose) {
      const int32_t done = 0;
      ELSA_RETURN_IF_ERROR(SendAll(sock.get(), &done, sizeof done, Clock::now() + idle_timeout));
      stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
      stats.latency_p50_us = Percentile(latencies, 0.50);
      stats.latency_p99_us = Percentile(latencies, 0.99);
      return stats;
    }
    if (req.command != kGet)
      return Status::ProtocolError("command " + std::to_string(req.command) +
                                   " is not for a lazy-pages server (it answers GET and CLOSE)");
    if (req.nr_pages == 0) return Status::ProtocolError("GET for 0 pages");
    const auto hashes = locator_.Find(req.dst_id, req.vaddr, std::min(req.nr_pages, kMaxReplyPages));
    if (hashes.empty())
      return Status::ProtocolError("GET for pid " + std::to_string(req.dst_id) + " address 0x" + HexU64(req.vaddr) +
                                   ": the checkpoint holds no such page");
    ELSA_RETURN_IF_ERROR(store_->GetBatch(hashes.data(), hashes.size(), pages.data()));
    Request reply;
    reply.command = kAddF;
    reply.flags = kPePresent;
    reply.nr_pages = hashes.size();
    reply.vaddr = req.vaddr;
    reply.dst_id = req.dst_id;
    const auto header = EncodeRequest(reply);
    ELSA_RETURN_IF_ERROR(SendAll(sock.get(), header.data(), header.size(), Clock::now() + idle_timeout));
    ELSA_RETURN_IF_ERROR(SendAll(sock.get(), pages.data(), hashes.size() * kPageSize, Clock::now() + idle_timeout));
    stats.requests++;
    stats.pages_served += hashes.size();
    latencies.push_back(std::chrono::duration<double, std::micro>(Clock::now() - received).count());
  }
}

}  // namespace elsa::page_server
