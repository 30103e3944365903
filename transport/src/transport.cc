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

#include "connection.h"
#include "elsa/thread_set.h"
#include "elsa/transport/transport.h"
#include "handshake.h"
#include "stream_channel.h"
#include "tls_connection.h"

namespace elsa::transport {
namespace {

Status ValidateOptions(const ChannelOptions& o) {
  if (o.streams < 1 || o.streams > kMaxStreams)
    return Status::InvalidArgument("streams must be between 1 and " + std::to_string(kMaxStreams));
  // Never a channel nobody authenticated: certificates, or at least the shared secret.
  if (o.secret.empty() && !o.tls)
    return Status::InvalidArgument("a transport needs TLS certificates or a shared secret on both ends");
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

// A stream that passed its handshakes: the connection (inside TLS if configured), the client's
// HELLO, and with TLS the connecting agent's name from its certificate.
struct AdmittedStream {
  std::unique_ptr<Connection> conn;
  Hello hello;
  std::string agent;
};

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  char host[128] = "?";
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    ::getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
  return host;
}

// Handshakes run on threads of their own, so a peer that connects and stays silent holds only
// its own slot for `handshake_timeout`, never the accept of everyone else. Slots are bounded, in
// all and per peer address, so silent connections cannot pile up either.
class StreamListener final : public Listener {
 public:
  static constexpr size_t kMaxPendingHandshakes = 64;
  static constexpr size_t kMaxPendingPerPeer = 8;

  StreamListener(Backend backend, UniqueFd fd, uint16_t port, ChannelOptions options,
                 std::shared_ptr<const TlsIdentity> identity, UniqueFd wake)
      : backend_(backend),
        fd_(std::move(fd)),
        port_(port),
        options_(std::move(options)),
        identity_(std::move(identity)),
        wake_(std::move(wake)) {}

  ~StreamListener() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      for (const auto& [fd, peer] : pending_) ::shutdown(fd, SHUT_RDWR);  // ends their handshakes now
    }
    handshakes_.JoinAll();
  }

  uint16_t port() const override { return port_; }

  Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout) override {
    const Deadline deadline = Clock::now() + timeout;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (!fatal_.ok()) return fatal_;
        if (!ready_.empty()) {
          std::unique_ptr<Channel> channel = std::move(ready_.front());
          ready_.pop_front();
          return channel;
        }
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Status::Timeout("no channel connected within " + std::to_string(timeout.count()) + " ms");
      pollfd p[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      int r = ::poll(p, 2, static_cast<int>(left));
      if (r < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
      if (p[1].revents & POLLIN) {
        uint64_t count;
        (void)!::read(wake_.get(), &count, sizeof count);
      }
      if (!(p[0].revents & POLLIN)) continue;
      UniqueFd conn_fd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn_fd) continue;
      TuneSocket(conn_fd.get());
      const std::string peer = PeerName(conn_fd.get());
      {
        std::lock_guard lock(mu_);
        size_t from_peer = 0;
        for (const auto& [fd, from] : pending_) from_peer += from == peer;
        if (pending_.size() >= kMaxPendingHandshakes || from_peer >= kMaxPendingPerPeer) {
          options_.log.Warning("transport: dropped a connection from " + peer + ": " + std::to_string(from_peer) +
                               " of its connections (" + std::to_string(pending_.size()) +
                               " in all) are still in their handshake");
          continue;
        }
        pending_.emplace(conn_fd.get(), peer);
      }
      handshakes_.Start([this, fd = std::move(conn_fd), peer]() mutable { Handshake(std::move(fd), peer); });
    }
  }

 private:
  struct Group {
    std::vector<std::unique_ptr<Connection>> connections;
    size_t ready = 0;
    Clock::time_point started;
    std::string agent;  // with TLS: the connecting agent, from its certificate
  };

  void Handshake(UniqueFd conn_fd, const std::string& peer) {
    const int raw = conn_fd.get();
    const Deadline deadline = Clock::now() + options_.handshake_timeout;
    Result<std::unique_ptr<Connection>> conn = Wrap(backend_, std::move(conn_fd), deadline);
    Result<AdmittedStream> admitted = conn.ok() ? Admit(std::move(*conn), deadline) : conn.status();
    std::lock_guard lock(mu_);
    pending_.erase(raw);
    if (!conn.ok()) {
      if (conn.status().code() == StatusCode::kFailedPrecondition) fatal_ = conn.status();
      else options_.log.Warning("transport: dropped a connection from " + peer + ": " + conn.status().message());
    } else if (!admitted.ok()) {
      if (!stopping_)
        options_.log.Warning("transport: refused a connection from " + peer + ": " + admitted.status().message());
    } else {
      Join(std::move(*admitted), peer);
    }
    const uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }

  // TLS (if configured), then the stream's proof, keyed to the TLS session.
  Result<AdmittedStream> Admit(std::unique_ptr<Connection> conn, Deadline deadline) {
    AdmittedStream out;
    std::string key = options_.secret;
    std::function<Status()> admit;
    if (identity_) {
      ELSA_ASSIGN_OR_RETURN(std::unique_ptr<TlsConnection> tls,
                            TlsConnection::Handshake(std::move(conn), identity_, /*server=*/true, "", deadline));
      out.agent = tls->peer_agent();
      ELSA_ASSIGN_OR_RETURN(ExportedKey exported, tls->ExportBindingKey());
      key = TlsBoundKey(exported, options_.secret);
      conn = std::move(tls);
      if (options_.tls->authorize) {
        admit = [this, &out] {
          Status allowed = options_.tls->authorize(out.agent, identity_->agent());
          if (allowed.ok()) return allowed;
          return Status::PermissionDenied("agent '" + out.agent + "' may not connect to '" + identity_->agent() +
                                          "': " + allowed.message());
        };
      }
    }
    ELSA_ASSIGN_OR_RETURN(out.hello, ServerHandshake(*conn, key, deadline, admit));
    out.conn = std::move(conn);
    return out;
  }

  // A stream joins its channel's group; the channel is ready once every stream has. mu_ held.
  void Join(AdmittedStream stream, const std::string& peer) {
    DropStaleGroups();
    const Hello& hello = stream.hello;
    Group& g = groups_[hello.channel_id];
    if (g.connections.empty()) {
      g.connections.resize(hello.stream_count);
      g.started = Clock::now();
      g.agent = stream.agent;
    }
    if (g.connections.size() != hello.stream_count || g.connections[hello.stream_index]) {
      options_.log.Warning("transport: dropped a stream from " + peer + ": inconsistent stream numbering");
      return;
    }
    // Every stream of a channel comes from the same agent: no one joins another's channel.
    if (g.agent != stream.agent) {
      options_.log.Warning("transport: dropped a stream from " + peer + ": agent '" + stream.agent +
                           "' tried to join a channel of agent '" + g.agent + "'");
      return;
    }
    g.connections[hello.stream_index] = std::move(stream.conn);
    if (++g.ready == g.connections.size()) {
      std::vector<std::unique_ptr<Connection>> connections = std::move(g.connections);
      std::string agent = std::move(g.agent);
      groups_.erase(hello.channel_id);
      ready_.push_back(std::make_unique<StreamChannel>(std::move(connections), options_, std::move(agent)));
    }
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
  std::shared_ptr<const TlsIdentity> identity_;  // null without TLS
  UniqueFd wake_;  // an eventfd: a handshake finished

  std::mutex mu_;
  bool stopping_ = false;
  Status fatal_ = Status::Ok();
  std::map<int, std::string> pending_;  // fds in their handshake -> peer address
  std::map<ChannelId, Group> groups_;
  std::deque<std::unique_ptr<Channel>> ready_;
  ThreadSet handshakes_;
};

class StreamTransport final : public Transport {
 public:
  explicit StreamTransport(Backend backend) : backend_(backend) {}
  Backend backend() const override { return backend_; }

  Result<std::unique_ptr<Listener>> Listen(const Endpoint& where, const ChannelOptions& options) override {
    ELSA_RETURN_IF_ERROR(ValidateOptions(options));
    uint16_t port = 0;
    std::shared_ptr<const TlsIdentity> identity;
    if (options.tls) {
      ELSA_ASSIGN_OR_RETURN(identity, TlsIdentity::Load(*options.tls, /*server=*/true));
    }
    ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ListenTcp(where, &port));
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake) return Status::FromErrno("eventfd", errno);
    return std::unique_ptr<Listener>(std::make_unique<StreamListener>(backend_, std::move(fd), port, options,
                                                                      std::move(identity), std::move(wake)));
  }

  Result<std::unique_ptr<Channel>> Connect(const Endpoint& peer, const ChannelOptions& options) override {
    ELSA_RETURN_IF_ERROR(ValidateOptions(options));
    const Deadline deadline = Clock::now() + options.handshake_timeout;
    Hello hello;
    hello.stream_count = static_cast<uint16_t>(options.streams);
    ELSA_RETURN_IF_ERROR(FillRandom(hello.channel_id));
    std::shared_ptr<const TlsIdentity> identity;
    if (options.tls) {
      ELSA_ASSIGN_OR_RETURN(identity, TlsIdentity::Load(*options.tls, /*server=*/false));
    }
    const std::string where = "connecting to " + peer.host + ":" + std::to_string(peer.port);
    std::string peer_agent;
    std::vector<std::unique_ptr<Connection>> connections;
    for (int i = 0; i < options.streams; ++i) {
      ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ConnectTcp(peer, deadline));
      ELSA_ASSIGN_OR_RETURN(std::unique_ptr<Connection> conn, Wrap(backend_, std::move(fd), deadline));
      std::string key = options.secret;
      if (identity) {
        auto tls = TlsConnection::Handshake(std::move(conn), identity, /*server=*/false, peer.host, deadline);
        if (!tls.ok()) return tls.status().WithContext(where);
        if (i == 0) {
          peer_agent = (*tls)->peer_agent();
          if (options.tls->authorize) {
            if (Status allowed = options.tls->authorize(identity->agent(), peer_agent); !allowed.ok())
              return Status::PermissionDenied(where + ": agent '" + identity->agent() + "' may not connect to '" +
                                              peer_agent + "': " + allowed.message());
          }
        } else if ((*tls)->peer_agent() != peer_agent) {
          return Status::Unauthenticated(where + ": stream " + std::to_string(i) + " reached agent '" +
                                         (*tls)->peer_agent() + "', the first reached '" + peer_agent + "'");
        }
        ELSA_ASSIGN_OR_RETURN(ExportedKey exported, (*tls)->ExportBindingKey());
        key = TlsBoundKey(exported, options.secret);
        conn = std::move(*tls);
      }
      hello.stream_index = static_cast<uint16_t>(i);
      ELSA_RETURN_IF_ERROR(FillRandom(hello.nonce));
      Status s = ClientHandshake(*conn, key, hello, deadline);
      if (s.code() == StatusCode::kPermissionDenied && identity)
        return Status::PermissionDenied(where + ": agent '" + peer_agent + "' refuses channels from agent '" +
                                        identity->agent() + "' (its allowlist, elsad --peer-allow, has no rule '" +
                                        identity->agent() + " -> " + peer_agent + "')");
      if (!s.ok()) return s.WithContext(where);
      connections.push_back(std::move(conn));
    }
    return std::unique_ptr<Channel>(std::make_unique<StreamChannel>(std::move(connections), options, peer_agent));
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

Result<std::string> LoadPeerIdentity(const PeerTls& tls) {
  ELSA_RETURN_IF_ERROR(TlsIdentity::Load(tls, /*server=*/false).status());
  ELSA_ASSIGN_OR_RETURN(std::shared_ptr<const TlsIdentity> identity, TlsIdentity::Load(tls, /*server=*/true));
  return identity->agent();
}

Result<std::unique_ptr<Transport>> MakeTransport(Backend backend) {
  if (backend == Backend::kUring) ELSA_RETURN_IF_ERROR(UringAvailable());
  if (backend == Backend::kRdma) ELSA_RETURN_IF_ERROR(RdmaAvailable());
  return std::unique_ptr<Transport>(std::make_unique<StreamTransport>(backend));
}

}  // namespace elsa::transport
