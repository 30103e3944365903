// One browser websocket, terminated here, and the backend websocket behind it. The browser's
// connection lives as long as the browser wants; backend connections come and go: a pause
// closes the backend's cleanly (so jupyter-server starts buffering the session's messages),
// queues what the browser sends, and a resume reconnects with the browser's original request
// (URL with session_id, cookies, Host, Origin, subprotocol), replays the queue in order, and
// lets the server's replayed output flow. The browser never sees a close with 1000/1001.
//
// Threading: a tunnel lives on one worker's io_context; Pause/Resume must be posted there.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http/message.hpp>

#include "backend_ws.h"
#include "metrics.h"
#include "route_table.h"
#include "stream.h"
#include "ws_codec.h"

namespace elsa::proxy {

struct Shared;

// One pause or resume across many tunnels (on many threads): each tunnel reports once.
struct Ticket {
  explicit Ticket(int n) : pending(n) {}
  std::atomic<int> pending;
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  void Done(bool success) {
    (success ? ok : failed).fetch_add(1);
    pending.fetch_sub(1);
  }
};

// How a tunnel pauses: first hold the browser's new messages and wait until the backend has
// been silent for `quiet` (at most `quiet_max`), so replies to requests already sent arrive
// (jupyter-server buffers only for a kernel's last connection); then close the backend and
// give it `drain` to answer the close.
struct PausePlan {
  std::chrono::milliseconds quiet{0};
  std::chrono::milliseconds quiet_max{0};
  std::chrono::milliseconds drain{10000};
};

class Tunnel : public std::enable_shared_from_this<Tunnel> {
 public:
  struct Setup {
    http::request_header<> request;  // the browser's upgrade, headers already prepared
    std::string raw_target;          // as the browser sent it
    std::string prefix;              // the route prefix it matched
    std::shared_ptr<Route> route;
    std::string protocol;            // the subprotocol agreed at the first connect
  };
  // `connection` counts the browser's connection (elsa_proxy_client_connections) until the
  // tunnel is gone.
  Tunnel(Shared& shared, AnyStream browser, Gauge::Hold connection, Setup setup);
  ~Tunnel();

  // Starts relaying between the browser and its first backend connection.
  void Start(BackendWs backend, std::string browser_leftover);

  void Pause(std::shared_ptr<Ticket> ticket, PausePlan plan);
  void Resume(std::shared_ptr<Ticket> ticket, std::chrono::steady_clock::time_point deadline);
  net::any_io_executor executor() const { return executor_; }

  enum class BackendState { kOpen, kQuiescing, kDraining, kGone, kConnecting };
  BackendState state() const { return state_; }
  size_t held_messages() const { return held_.size(); }

 private:
  struct Peer;
  struct Held {
    bool text = false;
    std::string payload;
  };

  // Each coroutine takes `self`: its frame must keep the tunnel alive from the moment it is
  // created (co_spawn only starts it later).
  using Self = std::shared_ptr<Tunnel>;
  net::awaitable<void> ReadLoop(Self self, std::shared_ptr<Peer> peer, bool readable);
  void WaitReadable(const std::shared_ptr<Peer>& peer);
  net::awaitable<void> WriteLoop(Self self, std::shared_ptr<Peer> peer);
  void KeepAlive();
  net::awaitable<void> Reconnect(Self self, std::chrono::steady_clock::time_point deadline);
  net::awaitable<void> WaitForRoom(const std::shared_ptr<Peer>& from);

  void OnBrowserEvent(WsEvent ev);
  void OnBackendEvent(const std::shared_ptr<Peer>& peer, WsEvent ev);
  void OnPeerEnded(const std::shared_ptr<Peer>& peer, const std::string& why);
  void StartBackend(BackendWs backend);
  void FlushHeld();
  void StartDrain();
  void QuietCheck();
  void Drained(bool cut);
  void Send(const std::shared_ptr<Peer>& peer, WsOpcode op, std::string_view payload);
  void CloseBrowser(uint16_t code, std::string_view reason);
  void Finish(std::string_view why);
  void CountIfHeldAcrossPause();
  void FinishTickets(std::vector<std::shared_ptr<Ticket>>& tickets, bool ok);
  size_t BacklogTo(const std::shared_ptr<Peer>& to) const;

  Shared& shared_;
  const net::any_io_executor executor_;
  Setup setup_;
  std::shared_ptr<Peer> browser_;
  std::shared_ptr<Peer> backend_;
  BackendState state_ = BackendState::kGone;
  bool closed_ = false;
  bool pause_requested_ = false;  // while reconnecting
  bool resume_requested_ = false;  // while draining
  bool holding_browser_ = false;   // paused since the backend was last open
  std::chrono::steady_clock::time_point resume_deadline_;
  std::deque<Held> held_;  // browser messages waiting for a backend
  size_t held_bytes_ = 0;
  std::vector<std::shared_ptr<Ticket>> pause_tickets_;
  std::vector<std::shared_ptr<Ticket>> resume_tickets_;
  net::steady_timer drain_timer_;
  net::steady_timer room_timer_;  // woken whenever queued bytes go down
  net::steady_timer ping_timer_;
  std::chrono::steady_clock::time_point last_browser_rx_;
  std::chrono::steady_clock::time_point last_backend_rx_;
  std::chrono::steady_clock::time_point quiet_deadline_;
  PausePlan plan_;
  uint64_t mask_state_;
  Gauge::Hold connection_;
  Gauge::Hold open_;  // until Finish
};

}  // namespace elsa::proxy
