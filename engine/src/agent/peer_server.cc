#include "elsa/engine/peer_server.h"

#include <chrono>

#include "migrate/protocol.h"

namespace elsa {

Result<std::unique_ptr<PeerServer>> PeerServer::Start(Agent& agent, const std::string& address) {
  if (!agent.config().PeerAuthConfigured())
    return Status::InvalidArgument(
        "--listen needs the agents' certificates (--peer-cert, --peer-key, --peer-ca) or at least a shared secret "
        "(--peer-secret-file): agents authenticate each other");
  ELSA_ASSIGN_OR_RETURN(auto where, peer::ParseHostPort(address));
  ELSA_ASSIGN_OR_RETURN(transport::Backend backend, transport::ParseBackend(agent.config().peer_backend));
  ELSA_ASSIGN_OR_RETURN(auto transport, transport::MakeTransport(backend));
  const transport::ChannelOptions options = agent.config().PeerChannelOptions();
  ELSA_ASSIGN_OR_RETURN(auto listener, transport->Listen({where.first, where.second}, options));
  return std::make_unique<PeerServer>(agent, std::move(transport), std::move(listener));
}

PeerServer::PeerServer(Agent& agent, std::unique_ptr<transport::Transport> transport,
                       std::unique_ptr<transport::Listener> listener)
    : agent_(agent), transport_(std::move(transport)), listener_(std::move(listener)) {
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

PeerServer::~PeerServer() {
  stop_ = true;
  accept_thread_.join();
  migrations_.JoinAll();
}

void PeerServer::AcceptLoop() {
  while (!stop_) {
    // Short waits, so a stop is noticed; a failed handshake is reported by the listener.
    auto channel = listener_->Accept(std::chrono::milliseconds(300));
    if (!channel.ok()) {
      if (channel.status().code() != StatusCode::kTimeout)
        agent_.config().log.Warning("peer listener: " + channel.status().ToString());
      continue;
    }
    migrations_.Start([this, c = std::shared_ptr<transport::Channel>(std::move(*channel))] {
      const std::string from = c->peer_agent();
      Status st = agent_.AcceptMigration(*c);
      if (!st.ok())
        agent_.config().log.With("op", "incoming-migration").With("from", from.empty() ? "?" : from).Error(st.ToString());
      (void)c->Close(std::chrono::seconds(5));
    });
  }
}

}  // namespace elsa
