#include "elsa/page_server/lazy_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>

#include "elsa/file_util.h"
#include "elsa/page_server/protocol.h"
#include "elsa/page_server/loopback.h"
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

Result<size_t> StorePageSource::Read(uint64_t pid, uint64_t vaddr, size_t max_pages, uint8_t* out) {
  const auto hashes = locator_.Find(pid, vaddr, max_pages);
  if (hashes.empty())
    return Status::ProtocolError("GET for pid " + std::to_string(pid) + " address 0x" + HexU64(vaddr) +
                                 ": the checkpoint holds no such page");
  ELSA_RETURN_IF_ERROR(store_->GetBatch(hashes.data(), hashes.size(), out));
  return hashes.size();
}

LazyPageServer::LazyPageServer(UniqueFd listen_fd, uint16_t port, UniqueFd connection, LazyPageSource* source,
                               std::unique_ptr<LazyPageSource> owned)
    : listen_fd_(std::move(listen_fd)),
      port_(port),
      connection_(std::move(connection)),
      owned_(std::move(owned)),
      source_(source) {}

Result<std::unique_ptr<LazyPageServer>> LazyPageServer::Listen(const std::string& address, uint16_t port,
                                                               PageLocator locator, const PageStore* store) {
  uint16_t bound = 0;
  ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ListenOn(address, port, &bound));
  auto owned = std::make_unique<StorePageSource>(std::move(locator), store);
  LazyPageSource* source = owned.get();
  return std::make_unique<LazyPageServer>(std::move(fd), bound, UniqueFd(), source, std::move(owned));
}

std::unique_ptr<LazyPageServer> LazyPageServer::OnConnection(UniqueFd connection, PageLocator locator,
                                                             const PageStore* store) {
  auto owned = std::make_unique<StorePageSource>(std::move(locator), store);
  LazyPageSource* source = owned.get();
  return std::make_unique<LazyPageServer>(UniqueFd(), 0, std::move(connection), source, std::move(owned));
}

std::unique_ptr<LazyPageServer> LazyPageServer::OnConnection(UniqueFd connection, LazyPageSource* source) {
  return std::make_unique<LazyPageServer>(UniqueFd(), 0, std::move(connection), source, nullptr);
}

void LazyPageServer::Hangup() { page_server::Hangup(connection_ ? connection_.get() : listen_fd_.get()); }

Result<std::unique_ptr<LazyPageServer>> LazyPageServer::Listen(const std::string& address, uint16_t port,
                                                               LazyPageSource* source) {
  uint16_t bound = 0;
  ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ListenOn(address, port, &bound));
  return std::make_unique<LazyPageServer>(std::move(fd), bound, UniqueFd(), source, nullptr);
}

Result<LazyServeStats> LazyPageServer::ServeOne(std::chrono::milliseconds accept_timeout,
                                                std::chrono::milliseconds idle_timeout) {
  ELSA_ASSIGN_OR_RETURN(ServedSocket sock, ServedSocket::Take(connection_, listen_fd_.get(), accept_timeout));
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
    ELSA_ASSIGN_OR_RETURN(const size_t count,
                          source_->Read(req.dst_id, req.vaddr, std::min(req.nr_pages, kMaxReplyPages), pages.data()));
    Request reply;
    reply.command = kAddF;
    reply.flags = kPePresent;
    reply.nr_pages = count;
    reply.vaddr = req.vaddr;
    reply.dst_id = req.dst_id;
    const auto header = EncodeRequest(reply);
    ELSA_RETURN_IF_ERROR(SendAll(sock.get(), header.data(), header.size(), Clock::now() + idle_timeout));
    ELSA_RETURN_IF_ERROR(SendAll(sock.get(), pages.data(), count * kPageSize, Clock::now() + idle_timeout));
    stats.requests++;
    stats.pages_served += count;
    latencies.push_back(std::chrono::duration<double, std::micro>(Clock::now() - received).count());
  }
}

Status CloseLazyDump(int connection, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  Request close;
  close.command = kClose;
  const auto raw = EncodeRequest(close);
  ELSA_RETURN_IF_ERROR(SendAll(connection, raw.data(), raw.size(), deadline).WithContext("the lazy dump's CLOSE"));
  int32_t status = -1;
  ELSA_RETURN_IF_ERROR(RecvAll(connection, &status, sizeof status, deadline).WithContext("the lazy dump's CLOSE reply"));
  if (status != 0) return Status::ExternalFailure("CRIU's lazy page server answered CLOSE with " + std::to_string(status));
  return Status::Ok();
}

}  // namespace elsa::page_server
