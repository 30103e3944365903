// Where other agents reach this one: an authenticated transport listener (shared secret) that
// takes incoming migrations, each on its own thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "elsa/engine/agent.h"
#include "elsa/status.h"
#include "elsa/thread_set.h"
#include "elsa/transport/transport.h"

namespace elsa {

class PeerServer {
 public:
  // Listens on `address` ("HOST[:PORT]") with the agent's peer secret and backend.
  static Result<std::unique_ptr<PeerServer>> Start(Agent& agent, const std::string& address);
  ~PeerServer();  // stops accepting and waits for migrations in progress
  PeerServer(const PeerServer&) = delete;
  PeerServer& operator=(const PeerServer&) = delete;

  uint16_t port() const { return listener_->port(); }

  PeerServer(Agent& agent, std::unique_ptr<transport::Transport> transport,
             std::unique_ptr<transport::Listener> listener);

 private:
  void AcceptLoop();

  Agent& agent_;
  std::unique_ptr<transport::Transport> transport_;
  std::unique_ptr<transport::Listener> listener_;
  std::atomic<bool> stop_{false};
  ThreadSet migrations_;  // one thread per incoming migration
  std::thread accept_thread_;
};

}  // namespace elsa
