// Backend selection, connecting, and accepting: everything before a channel exists.
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "connection.h"
#include "elsa/thread_set.h"
#include "elsa/transport/transport.h"
#include "handshake.h"
#include "stream_channel.h"

namespace elsa::transport {
namespace {

Status ValidateOptions(const ChannelOptions& o) {
  if (o.streams < 1 || o.streams > kMaxStreams)
    return Status::InvalidArgument("streams must be between 1 and " + std::to_string(kMaxStreams));
  if (o.secret.empty()) return Status::InvalidArgument("a shared secret is required on both ends of a transport");
  if (o.max_frame_bytes < 4096 || o.max_frame_bytes > (1u << 30))
    return Status::InvalidArgument("max_frame_bytes must be between 4 KiB and 1 GiB");
  if (o.send_queue_frames < 1) return Status::InvalidArgument("send_queue_frames must be at least 1");
  return Status::Ok();
}

Result<std::unique_ptr<Connection>> Wrap(Backend backend, UniqueFd fd, Deadline deadline) {
  switch (backend) {
    case Backend::kUring: return MakeUringConnection(std::move(fd));
    case Backend::kRdma: return MakeRdmaConnection(std::move(fd), deadline);
    case Backend::kTcp: break;
  }
  return MakeTcpConnection(std::move(fd));
}

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  char host[128] = "?";
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    ::getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
  return host;
}

// Handshakes run off the accept loop, one thread each, with their own deadline: a connection
// that never says HELLO (a stranger, a port scanner, a peer that died mid-connect) costs its own
// thread until handshake_timeout, never the accepting of anyone else. At most
// kMaxHandshakes are in flight; connections beyond that are closed at once.
class StreamListener final : public Listener {
 public:
  static constexpr size_t kMaxHandshakes = 64;

  StreamListener(Backend backend, UniqueFd fd, uint16_t port, ChannelOptions options, UniqueFd wake)
      : backend_(backend), fd_(std::move(fd)), port_(port), options_(std::move(options)), wake_(std::move(wake)) {}

  ~StreamListener() override {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
      for (int fd : handshaking_) ::shutdown(fd, SHUT_RDWR);
    }
    handshakes_.JoinAll();
  }

  uint16_t port() const override { return port_; }

  Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout) override {
    const Deadline deadline = Clock::now() + timeout;
    for (;;) {
      while (std::optional<Handshaken> h = TakeHandshaken()) {
        if (!h->conn) return h->fatal;
        if (auto channel = Join(std::move(*h))) return channel;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Status::Timeout("no channel connected within " + std::to_string(timeout.count()) + " ms");
      pollfd p[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      int r = ::poll(p, 2, static_cast<int>(left));
      if (r < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
      if (r <= 0) continue;
      if (p[1].revents) {
        uint64_t count;
        ssize_t ignored = ::read(wake_.get(), &count, sizeof count);
        (void)ignored;
      }
      if (p[0].revents) StartHandshake();
    }
  }

 private:
  struct Handshaken {
    Hello hello;
    std::unique_ptr<Connection> conn;  // null: `fatal` is for Accept's caller
    std::string peer;
    Status fatal;
  };
  struct Group {
    std::vector<std::unique_ptr<Connection>> connections;
    size_t ready = 0;
    Clock::time_point started;
  };

  void StartHandshake() {
    UniqueFd conn_fd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn_fd) return;
    const std::string peer = PeerName(conn_fd.get());
    {
      std::lock_guard lock(mu_);
      if (handshaking_.size() >= kMaxHandshakes) {
        options_.log.Warning("transport: dropped a connection from " + peer + ": " +
                             std::to_string(kMaxHandshakes) + " handshakes already in progress");
        return;
      }
      handshaking_.insert(conn_fd.get());
    }
    handshakes_.Start([this, conn_fd = std::move(conn_fd), peer]() mutable { Handshake(std::move(conn_fd), peer); });
  }

  // On its own thread; the result goes to the next Accept.
  void Handshake(UniqueFd conn_fd, const std::string& peer) {
    const int raw = conn_fd.get();
    TuneSocket(raw);
    const Deadline deadline = Clock::now() + options_.handshake_timeout;
    Handshaken done;
    done.peer = peer;
    auto conn = Wrap(backend_, std::move(conn_fd), deadline);
    if (!conn.ok()) {
      if (conn.status().code() == StatusCode::kFailedPrecondition) done.fatal = conn.status();
      else options_.log.Warning("transport: dropped a connection from " + peer + ": " + conn.status().message());
    } else if (auto hello = ServerHandshake(**conn, options_.secret, deadline); !hello.ok()) {
      options_.log.Warning("transport: refused a connection from " + peer + ": " + hello.status().message());
    } else {
      done.hello = *hello;
      done.conn = std::move(*conn);
    }
    std::unique_ptr<Connection> dropped;  // closed outside the lock, after `raw` left the set
    {
      std::lock_guard lock(mu_);
      handshaking_.erase(raw);
      if (closing_) dropped = std::move(done.conn);
      else if (done.conn || !done.fatal.ok()) handshaken_.push_back(std::move(done));
    }
    uint64_t one = 1;
    ssize_t ignored = ::write(wake_.get(), &one, sizeof one);
    (void)ignored;
  }

  std::optional<Handshaken> TakeHandshaken() {
    std::lock_guard lock(mu_);
    if (handshaken_.empty()) return std::nullopt;
    Handshaken h = std::move(handshaken_.front());
    handshaken_.pop_front();
    return h;
  }

  // Files an authenticated stream under its channel; the channel once all its streams are in.
  std::unique_ptr<Channel> Join(Handshaken h) {
    DropStaleGroups();
    Group& g = groups_[h.hello.channel_id];
    if (g.connections.empty()) {
      g.connections.resize(h.hello.stream_count);
      g.started = Clock::now();
    }
    if (g.connections.size() != h.hello.stream_count || g.connections[h.hello.stream_index]) {
      options_.log.Warning("transport: dropped a stream from " + h.peer + ": inconsistent stream numbering");
      return nullptr;
    }
    g.connections[h.hello.stream_index] = std::move(h.conn);
    if (++g.ready < g.connections.size()) return nullptr;
    std::vector<std::unique_ptr<Connection>> connections = std::move(g.connections);
    groups_.erase(h.hello.channel_id);
    return std::make_unique<StreamChannel>(std::move(connections), options_);
  }

  // A channel whose streams never all arrive must not hold its connections forever.
  void DropStaleGroups() {
    for (auto it = groups_.begin(); it != groups_.end();) {
      if (Clock::now() - it->second.started > options_.handshake_timeout) it = groups_.erase(it);
      else ++it;
    }
  }

  Backend backend_;
  UniqueFd fd_;
  uint16_t port_;
  ChannelOptions options_;
  UniqueFd wake_;  // eventfd: a handshake finished
  std::map<ChannelId, Group> groups_;  // Accept's caller only

  std::mutex mu_;
  std::set<int> handshaking_;  // their sockets, shut down to end them early when closing
  std::deque<Handshaken> handshaken_;
  bool closing_ = false;
  ThreadSet handshakes_;
};

class StreamTransport final : public Transport {
 public:
  explicit StreamTransport(Backend backend) : backend_(backend) {}
  Backend backend() const override { return backend_; }

  Result<std::unique_ptr<Listener>> Listen(const Endpoint& where, const ChannelOptions& options) override {
    ELSA_RETURN_IF_ERROR(ValidateOptions(options));
    uint16_t port = 0;
    ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(where, &port));
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake) return Status::FromErrno("eventfd", errno);
    return std::unique_ptr<Listener>(
        std::make_unique<StreamListener>(backend_, std::move(fd), port, options, std::move(wake)));
  }

  Result<std::unique_ptr<Channel>> Connect(const Endpoint& peer, const ChannelOptions& options) override {
    ELSA_RETURN_IF_ERROR(ValidateOptions(options));
    const Deadline deadline = Clock::now() + options.handshake_timeout;
    Hello hello;
    hello.stream_count = static_cast<uint16_t>(options.streams);
    ELSA_RETURN_IF_ERROR(FillRandom(hello.channel_id));
    std::vector<std::unique_ptr<Connection>> connections;
    for (int i = 0; i < options.streams; ++i) {
      ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp(peer, deadline));
      ELSA_ASSIGN_OR_RETURN(std::unique_ptr<Connection> conn, Wrap(backend_, std::move(fd), deadline));
      hello.stream_index = static_cast<uint16_t>(i);
      ELSA_RETURN_IF_ERROR(FillRandom(hello.nonce));
      Status s = ClientHandshake(*conn, options.secret, hello, deadline);
      if (!s.ok()) return s.WithContext("connecting to " + peer.host + ":" + std::to_string(peer.port));
      connections.push_back(std::move(conn));
    }
    return std::unique_ptr<Channel>(std::make_unique<StreamChannel>(std::move(connections), options));
  }

 private:
  Backend backend_;
};

}  // namespace

std::string_view BackendName(Backend backend) {
  switch (backend) {
    case Backend::kTcp: return "tcp";
    case Backend::kUring: return "uring";
    case Backend::kRdma: return "rdma";
  }
  return "?";
}

Result<Backend> ParseBackend(std::string_view name) {
  if (name == "tcp") return Backend::kTcp;
  if (name == "uring" || name == "io_uring") return Backend::kUring;
  if (name == "rdma") return Backend::kRdma;
  return Status::InvalidArgument("unknown transport backend '" + std::string(name) + "' (tcp, uring, rdma)");
}

std::string_view CompressionName(Compression c) {
  switch (c) {
    case Compression::kOff: return "off";
    case Compression::kAlways: return "always";
    case Compression::kAdaptive: return "adaptive";
  }
  return "?";
}

Result<Compression> ParseCompression(std::string_view name) {
  if (name == "off") return Compression::kOff;
  if (name == "always") return Compression::kAlways;
  if (name == "adaptive") return Compression::kAdaptive;
  return Status::InvalidArgument("unknown compression '" + std::string(name) + "' (off, always, adaptive)");
}

Result<std::unique_ptr<Transport>> MakeTransport(Backend backend) {
  if (backend == Backend::kUring) ELSA_RETURN_IF_ERROR(UringAvailable());
  if (backend == Backend::kRdma) ELSA_RETURN_IF_ERROR(RdmaAvailable());
  return std::unique_ptr<Transport>(std::make_unique<StreamTransport>(backend));
}

}  // namespace elsa::transport
