// The RDMA backend: one reliable-connected queue pair per stream, bootstrapped over the stream's
// TCP connection (each side sends its QP number, PSN, LID and GID, then both move their QP to
// ready-to-send). Frames then travel as RDMA SENDs between buffers registered once per
// connection; the TCP socket stays open only to notice a peer that dies.
//
// Byte-stream semantics on top of messages keep the channel, framing, handshake and acks shared
// with the other backends: WriteAll cuts its bytes into registered send slots, ReadSome hands out
// received messages piecewise, and a zero-length SEND means the peer shut down its side.
#include <infiniband/verbs.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "connection.h"
#include "elsa/fd_io.h"
#include "handshake.h"

namespace elsa::transport {
namespace {

constexpr size_t kSlotBytes = 256u << 10;
constexpr int kSendSlots = 32;
constexpr int kRecvSlots = 32;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

struct DeviceList {
  ibv_device** list = nullptr;
  int count = 0;
  DeviceList() { list = ibv_get_device_list(&count); }
  ~DeviceList() {
    if (list) ibv_free_device_list(list);
  }
};

template <typename T, int (*Destroy)(T*)>
struct VerbsDeleter {
  void operator()(T* p) const {
    if (p) Destroy(p);
  }
};
using Context = std::unique_ptr<ibv_context, VerbsDeleter<ibv_context, ibv_close_device>>;
using ProtectionDomain = std::unique_ptr<ibv_pd, VerbsDeleter<ibv_pd, ibv_dealloc_pd>>;
using CompletionChannel = std::unique_ptr<ibv_comp_channel, VerbsDeleter<ibv_comp_channel, ibv_destroy_comp_channel>>;
using CompletionQueue = std::unique_ptr<ibv_cq, VerbsDeleter<ibv_cq, ibv_destroy_cq>>;
using QueuePair = std::unique_ptr<ibv_qp, VerbsDeleter<ibv_qp, ibv_destroy_qp>>;
using MemoryRegion = std::unique_ptr<ibv_mr, VerbsDeleter<ibv_mr, ibv_dereg_mr>>;

// What each side tells the other to connect its queue pair.
struct QpInfo {
  uint32_t qpn = 0;
  uint32_t psn = 0;
  uint16_t lid = 0;
  uint8_t gid[16] = {};
  uint8_t reserved[6] = {};
};
static_assert(sizeof(QpInfo) == 32);

Status VerbsError(const char* what, int err) {
  return Status::IoError(std::string(what) + ": " + std::strerror(err ? err : errno));
}

class RdmaConnection final : public Connection {
 public:
  explicit RdmaConnection(UniqueFd fd) : Connection(std::move(fd)) {}

  ~RdmaConnection() override {
    // Queue pair first (it references the CQs), then the memory, CQs, channels and PD; the
    // member order below destroys them in that order.
  }

  Status Init(Deadline deadline) {
    DeviceList devices;
    if (!devices.list || devices.count == 0) return Status::FailedPrecondition("no RDMA device");
    const char* wanted = std::getenv("ELSA_RDMA_DEVICE");
    ibv_device* device = devices.list[0];
    for (int i = 0; wanted && i < devices.count; ++i)
      if (std::strcmp(ibv_get_device_name(devices.list[i]), wanted) == 0) device = devices.list[i];
    context_.reset(ibv_open_device(device));
    if (!context_) return VerbsError("ibv_open_device", 0);
    port_ = static_cast<uint8_t>(EnvInt("ELSA_RDMA_PORT", 1));
    gid_index_ = EnvInt("ELSA_RDMA_GID_INDEX", 0);
    ibv_port_attr port_attr{};
    if (int rc = ibv_query_port(context_.get(), port_, &port_attr); rc) return VerbsError("ibv_query_port", rc);
    pd_.reset(ibv_alloc_pd(context_.get()));
    if (!pd_) return VerbsError("ibv_alloc_pd", 0);
    send_channel_.reset(ibv_create_comp_channel(context_.get()));
    recv_channel_.reset(ibv_create_comp_channel(context_.get()));
    if (!send_channel_ || !recv_channel_) return VerbsError("ibv_create_comp_channel", 0);
    send_cq_.reset(ibv_create_cq(context_.get(), kSendSlots + 1, nullptr, send_channel_.get(), 0));
    recv_cq_.reset(ibv_create_cq(context_.get(), kRecvSlots + 1, nullptr, recv_channel_.get(), 0));
    if (!send_cq_ || !recv_cq_) return VerbsError("ibv_create_cq", 0);

    buffer_.resize(static_cast<size_t>(kSendSlots + kRecvSlots) * kSlotBytes);
    mr_.reset(ibv_reg_mr(pd_.get(), buffer_.data(), buffer_.size(), IBV_ACCESS_LOCAL_WRITE));
    if (!mr_) return VerbsError("ibv_reg_mr", 0);

    ibv_qp_init_attr qp_attr{};
    qp_attr.send_cq = send_cq_.get();
    qp_attr.recv_cq = recv_cq_.get();
    qp_attr.qp_type = IBV_QPT_RC;
    qp_attr.cap.max_send_wr = kSendSlots + 1;
    qp_attr.cap.max_recv_wr = kRecvSlots;
    qp_attr.cap.max_send_sge = 1;
    qp_attr.cap.max_recv_sge = 1;
    qp_.reset(ibv_create_qp(pd_.get(), &qp_attr));
    if (!qp_) return VerbsError("ibv_create_qp", 0);

    QpInfo local;
    local.qpn = qp_->qp_num;
    ELSA_RETURN_IF_ERROR(FillRandom({reinterpret_cast<uint8_t*>(&local.psn), sizeof local.psn}));
    local.psn &= 0xffffff;
    local.lid = port_attr.lid;
    ibv_gid gid{};
    if (ibv_query_gid(context_.get(), port_, gid_index_, &gid) == 0) std::memcpy(local.gid, gid.raw, 16);
    ELSA_ASSIGN_OR_RETURN(QpInfo remote, Exchange(local, deadline));
    ELSA_RETURN_IF_ERROR(Connect(local, remote, port_attr.active_mtu));

    for (int i = 0; i < kSendSlots; ++i) free_send_.push_back(i);
    for (int i = 0; i < kRecvSlots; ++i) ELSA_RETURN_IF_ERROR(PostRecv(i));
    return Status::Ok();
  }

  Status WriteAll(std::span<const iovec> iov, Deadline deadline, bool) override {
    size_t vi = 0, voff = 0;
    while (vi < iov.size()) {
      ELSA_ASSIGN_OR_RETURN(int slot, AcquireSendSlot(deadline));
      uint8_t* dst = SendSlot(slot);
      size_t filled = 0;
      while (vi < iov.size() && filled < kSlotBytes) {
        size_t take = std::min(kSlotBytes - filled, iov[vi].iov_len - voff);
        std::memcpy(dst + filled, static_cast<const uint8_t*>(iov[vi].iov_base) + voff, take);
        filled += take;
        voff += take;
        if (voff == iov[vi].iov_len) ++vi, voff = 0;
      }
      if (filled == 0) {
        free_send_.push_back(slot);
        continue;
      }
      ELSA_RETURN_IF_ERROR(PostSend(slot, filled));
    }
    return Status::Ok();
  }

  Result<size_t> ReadSome(uint8_t* buf, size_t size, Deadline deadline) override {
    if (eof_) return size_t{0};
    if (current_slot_ < 0) {
      ELSA_ASSIGN_OR_RETURN(ibv_wc wc, WaitCompletion(recv_cq_.get(), recv_channel_.get(), deadline, "receiving"));
      if (wc.status != IBV_WC_SUCCESS) return CompletionError(wc);
      current_slot_ = static_cast<int>(wc.wr_id);
      current_len_ = wc.byte_len;
      current_off_ = 0;
      if (current_len_ == 0) {  // the peer shut down its side
        eof_ = true;
        ELSA_RETURN_IF_ERROR(PostRecv(current_slot_));
        current_slot_ = -1;
        return size_t{0};
      }
    }
    size_t n = std::min(size, current_len_ - current_off_);
    std::memcpy(buf, RecvSlot(current_slot_) + current_off_, n);
    current_off_ += n;
    if (current_off_ == current_len_) {
      ELSA_RETURN_IF_ERROR(PostRecv(current_slot_));
      current_slot_ = -1;
    }
    return n;
  }

  void ShutdownWrite() override {
    ibv_send_wr wr{};
    ibv_send_wr* bad = nullptr;
    wr.opcode = IBV_WR_SEND;
    wr.wr_id = UINT64_MAX;
    wr.num_sge = 0;  // a zero-length SEND: our EOF
    ibv_post_send(qp_.get(), &wr, &bad);
  }

  void Abort() override {
    // The QP in error flushes every posted request, waking anyone waiting for a completion.
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_ERR;
    if (qp_) ibv_modify_qp(qp_.get(), &attr, IBV_QP_STATE);
    ::shutdown(fd_.get(), SHUT_RDWR);
  }

 private:
  uint8_t* SendSlot(int i) { return buffer_.data() + static_cast<size_t>(i) * kSlotBytes; }
  uint8_t* RecvSlot(int i) { return buffer_.data() + static_cast<size_t>(kSendSlots + i) * kSlotBytes; }

  Result<QpInfo> Exchange(const QpInfo& local, Deadline deadline) {
    if (::send(fd_.get(), &local, sizeof local, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof local))
      return Status::FromErrno("sending RDMA connection details", errno);
    QpInfo remote;
    size_t got = 0;
    while (got < sizeof remote) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, MillisUntil(deadline)) <= 0) return Status::Timeout("peer sent no RDMA connection details");
      ssize_t n = ::recv(fd_.get(), reinterpret_cast<uint8_t*>(&remote) + got, sizeof remote - got, 0);
      if (n <= 0) return Status::PeerClosed("peer closed before sending RDMA connection details");
      got += static_cast<size_t>(n);
    }
    return remote;
  }

  Status Connect(const QpInfo& local, const QpInfo& remote, ibv_mtu mtu) {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = port_;
    a.qp_access_flags = 0;
    if (int rc = ibv_modify_qp(qp_.get(), &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
      return VerbsError("queue pair to INIT", rc);
    a = {};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = mtu;
    a.dest_qp_num = remote.qpn;
    a.rq_psn = remote.psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = remote.lid;
    a.ah_attr.port_num = port_;
    static const uint8_t kNoGid[16] = {};
    if (std::memcmp(remote.gid, kNoGid, 16) != 0) {  // RoCE and routed IB need the global header
      a.ah_attr.is_global = 1;
      std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid, 16);
      a.ah_attr.grh.sgid_index = static_cast<uint8_t>(gid_index_);
      a.ah_attr.grh.hop_limit = 64;
    }
    if (int rc = ibv_modify_qp(qp_.get(), &a,
                               IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                   IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
      return VerbsError("queue pair to RTR", rc);
    a = {};
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;  // receiver not ready: retry forever; the channel's own timeouts bound waits
    a.sq_psn = local.psn;
    a.max_rd_atomic = 1;
    if (int rc = ibv_modify_qp(qp_.get(), &a,
                               IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                   IBV_QP_MAX_QP_RD_ATOMIC))
      return VerbsError("queue pair to RTS", rc);
    return Status::Ok();
  }

  Status PostRecv(int slot) {
    ibv_sge sge{reinterpret_cast<uintptr_t>(RecvSlot(slot)), static_cast<uint32_t>(kSlotBytes), mr_->lkey};
    ibv_recv_wr wr{};
    ibv_recv_wr* bad = nullptr;
    wr.wr_id = static_cast<uint64_t>(slot);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    if (int rc = ibv_post_recv(qp_.get(), &wr, &bad)) return VerbsError("ibv_post_recv", rc);
    return Status::Ok();
  }

  Status PostSend(int slot, size_t length) {
    ibv_sge sge{reinterpret_cast<uintptr_t>(SendSlot(slot)), static_cast<uint32_t>(length), mr_->lkey};
    ibv_send_wr wr{};
    ibv_send_wr* bad = nullptr;
    wr.wr_id = static_cast<uint64_t>(slot);
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    if (int rc = ibv_post_send(qp_.get(), &wr, &bad)) return VerbsError("ibv_post_send", rc);
    return Status::Ok();
  }

  Result<int> AcquireSendSlot(Deadline deadline) {
    while (free_send_.empty()) {
      ELSA_ASSIGN_OR_RETURN(ibv_wc wc, WaitCompletion(send_cq_.get(), send_channel_.get(), deadline, "sending"));
      if (wc.status != IBV_WC_SUCCESS) return CompletionError(wc);
      if (wc.wr_id != UINT64_MAX) free_send_.push_back(static_cast<int>(wc.wr_id));
    }
    int slot = free_send_.front();
    free_send_.pop_front();
    return slot;
  }

  // Next completion on `cq`, sleeping on its channel; a peer whose TCP side closes is gone.
  Result<ibv_wc> WaitCompletion(ibv_cq* cq, ibv_comp_channel* channel, Deadline deadline, const char* what) {
    for (;;) {
      ibv_wc wc{};
      int n = ibv_poll_cq(cq, 1, &wc);
      if (n > 0) return wc;
      if (n < 0) return Status::IoError("ibv_poll_cq failed");
      ibv_req_notify_cq(cq, 0);
      n = ibv_poll_cq(cq, 1, &wc);  // a completion that raced the re-arm
      if (n > 0) return wc;
      pollfd p[2] = {{channel->fd, POLLIN, 0}, {fd_.get(), POLLIN, 0}};
      int r = ::poll(p, 2, MillisUntil(deadline));
      if (r == 0) return Status::Timeout(std::string("peer stalled: no progress ") + what + " before the deadline");
      if (r < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
      if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
        char probe;
        if (::recv(fd_.get(), &probe, 1, MSG_DONTWAIT | MSG_PEEK) == 0)
          return Status::PeerClosed("the peer's bootstrap connection closed: the peer is gone");
      }
      if (p[0].revents & POLLIN) {
        ibv_cq* ev_cq = nullptr;
        void* ev_ctx = nullptr;
        if (ibv_get_cq_event(channel, &ev_cq, &ev_ctx) == 0) ibv_ack_cq_events(ev_cq, 1);
      }
    }
  }

  static Status CompletionError(const ibv_wc& wc) {
    if (wc.status == IBV_WC_RETRY_EXC_ERR || wc.status == IBV_WC_RNR_RETRY_EXC_ERR)
      return Status::PeerClosed(std::string("the peer stopped answering: ") + ibv_wc_status_str(wc.status));
    if (wc.status == IBV_WC_WR_FLUSH_ERR) return Status::PeerClosed("the connection was shut down");
    return Status::IoError(std::string("RDMA completion failed: ") + ibv_wc_status_str(wc.status));
  }

  // Declared in construction order; destroyed in reverse (QP before CQs before PD...).
  Context context_;
  ProtectionDomain pd_;
  CompletionChannel send_channel_;
  CompletionChannel recv_channel_;
  CompletionQueue send_cq_;
  CompletionQueue recv_cq_;
  std::vector<uint8_t> buffer_;
  MemoryRegion mr_;
  QueuePair qp_;
  uint8_t port_ = 1;
  int gid_index_ = 0;
  std::deque<int> free_send_;
  int current_slot_ = -1;
  size_t current_len_ = 0;
  size_t current_off_ = 0;
  bool eof_ = false;
};

}  // namespace

Status RdmaAvailable() {
  DeviceList devices;
  if (!devices.list || devices.count == 0)
    return Status::FailedPrecondition(
        "no RDMA device: ibv_get_device_list found none (no InfiniBand, RoCE, rxe or siw driver is loaded)");
  return Status::Ok();
}

Result<std::unique_ptr<Connection>> MakeRdmaConnection(UniqueFd fd, Deadline deadline) {
  auto conn = std::make_unique<RdmaConnection>(std::move(fd));
  ELSA_RETURN_IF_ERROR(conn->Init(deadline));
  return std::unique_ptr<Connection>(std::move(conn));
}

}  // namespace elsa::transport
