#include "tunnel.h"

#include <openssl/rand.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/write.hpp>

#include "backend.h"
#include "iso_time.h"
#include "migration.h"
#include "server.h"

namespace elsa::proxy {

using Clock = std::chrono::steady_clock;

struct Tunnel::Peer {
  Peer(AnyStream s, bool browser, size_t max_message)
      : stream(std::move(s)), is_browser(browser), reader(browser, max_message) {}
  AnyStream stream;
  const bool is_browser;
  WsReader reader;
  std::deque<std::string> out;  // whole frames, in order
  size_t out_bytes = 0;
  bool writing = false;
  bool close_after_flush = false;  // our close frame is queued: end the connection once sent
  bool ended = false;
};

namespace {

constexpr size_t kReadChunk = 16384;

std::string_view Describe(const Tunnel::Setup& s) { return LogUrl(s.raw_target); }

}  // namespace

Tunnel::Tunnel(Shared& shared, AnyStream browser, Gauge::Hold connection, Setup setup)
    : shared_(shared),
      executor_(browser.get_executor()),
      setup_(std::move(setup)),
      browser_(std::make_shared<Peer>(std::move(browser), true, shared.options.max_ws_message_bytes)),
      drain_timer_(executor_),
      room_timer_(executor_),
      ping_timer_(executor_),
      last_browser_rx_(Clock::now()),
      connection_(std::move(connection)),
      open_(shared.metrics.websockets_open) {
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&mask_state_), sizeof mask_state_) != 1) {
    mask_state_ = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) | 1;
  }
}

Tunnel::~Tunnel() = default;

void Tunnel::Start(BackendWs backend, std::string browser_leftover) {
  auto self = shared_from_this();
  if (!browser_leftover.empty()) browser_->reader.Feed(browser_leftover);
  net::co_spawn(executor_, ReadLoop(self, browser_, false), net::detached);
  KeepAlive();
  StartBackend(std::move(backend));
  if (RouteControl* control = setup_.route->control()) {
    if (control->Register(self)) Pause(nullptr, PausePlan{});  // paused while we were connecting
  }
}

void Tunnel::StartBackend(BackendWs backend) {
  backend_ = std::make_shared<Peer>(std::move(backend.stream), false, shared_.options.max_ws_message_bytes);
  if (!backend.leftover.empty()) backend_->reader.Feed(backend.leftover);
  state_ = BackendState::kOpen;
  last_backend_rx_ = Clock::now();
  CountIfHeldAcrossPause();
  FlushHeld();
  net::co_spawn(executor_, ReadLoop(shared_from_this(), backend_, false), net::detached);
}

void Tunnel::FlushHeld() {
  // The browser's queued messages go first, in the order they came.
  while (!held_.empty()) {
    Send(backend_, held_.front().text ? WsOpcode::kText : WsOpcode::kBinary, held_.front().payload);
    held_bytes_ -= held_.front().payload.size();
    held_.pop_front();
  }
  room_timer_.cancel();
}

void Tunnel::Send(const std::shared_ptr<Peer>& peer, WsOpcode op, std::string_view payload) {
  if (peer->ended || peer->close_after_flush) return;
  std::string frame;
  frame.reserve(payload.size() + 14);
  if (peer->is_browser) {
    AppendWsFrame(frame, op, true, payload, nullptr);
  } else {
    // xorshift64*: the mask only has to be unpredictable to scripts in the browser, which
    // never see it; seeded from OpenSSL's generator.
    mask_state_ ^= mask_state_ >> 12;
    mask_state_ ^= mask_state_ << 25;
    mask_state_ ^= mask_state_ >> 27;
    uint64_t m = mask_state_ * 0x2545F4914F6CDD1DULL;
    uint8_t mask[4];
    std::memcpy(mask, &m, 4);
    AppendWsFrame(frame, op, true, payload, mask);
  }
  if (op == WsOpcode::kClose) peer->close_after_flush = true;
  peer->out_bytes += frame.size();
  peer->out.push_back(std::move(frame));
  if (!peer->writing) {
    peer->writing = true;
    net::co_spawn(executor_, WriteLoop(shared_from_this(), peer), net::detached);
  }
}

net::awaitable<void> Tunnel::WriteLoop([[maybe_unused]] Self self, std::shared_ptr<Peer> peer) {
  while (!peer->out.empty() && !peer->ended) {
    std::array<net::const_buffer, 8> bufs;
    size_t n = 0, bytes = 0;
    for (auto it = peer->out.begin(); it != peer->out.end() && n < bufs.size(); ++it, ++n) {
      bufs[n] = net::buffer(*it);
      bytes += it->size();
    }
    // A peer that stops reading must not pin our memory forever.
    peer->stream.expires_after(std::chrono::seconds(60));
    auto [ec, written] = co_await net::async_write(peer->stream, std::span(bufs.data(), n), kTuple);
    if (ec) {
      peer->writing = false;
      OnPeerEnded(peer, "write failed: " + ec.message());
      co_return;
    }
    peer->stream.expires_never();
    for (size_t i = 0; i < n; ++i) peer->out.pop_front();
    peer->out_bytes -= bytes;
    room_timer_.cancel();
  }
  peer->writing = false;
  if (peer->close_after_flush && !peer->ended && (peer->is_browser || closed_)) {
    peer->ended = true;
    peer->stream.close();
  }
}

void Tunnel::WaitReadable(const std::shared_ptr<Peer>& peer) {
  // An idle websocket holds no read buffer and no coroutine: just this pending wait, whose
  // callback starts a reader when bytes arrive.
  peer->reader.ReleaseMemory();
  peer->stream.async_wait_readable([self = shared_from_this(), peer](error_code ec) {
    if (peer->ended) return;
    if (ec) {
      self->OnPeerEnded(peer, ec.message());
      return;
    }
    net::co_spawn(self->executor_, self->ReadLoop(self, peer, true), net::detached);
  });
}

net::awaitable<void> Tunnel::ReadLoop([[maybe_unused]] Self self, std::shared_ptr<Peer> peer, bool readable) {
  std::string why = "closed";
  while (!peer->ended) {
    if (!readable && peer->reader.Idle()) {
      WaitReadable(peer);
      co_return;
    }
    readable = false;
    char* at = peer->reader.Prepare(kReadChunk);
    auto [ec, n] = co_await peer->stream.async_read_some(net::buffer(at, kReadChunk), kTuple);
    if (ec) {
      why = ec == net::error::eof ? "connection closed without a close frame" : ec.message();
      break;
    }
    peer->reader.Commit(n);
    (peer->is_browser ? last_browser_rx_ : last_backend_rx_) = Clock::now();
    bool failed = false;
    for (;;) {
      auto ev = peer->reader.Next();
      if (!ev.ok()) {
        why = ev.status().message();
        failed = true;
        break;
      }
      if (!*ev) break;
      if (peer->is_browser) {
        OnBrowserEvent(std::move(**ev));
      } else {
        OnBackendEvent(peer, std::move(**ev));
      }
      if (peer->ended || closed_) co_return;
    }
    if (failed) {
      if (peer->is_browser) {
        shared_.log.Warn("websocket ", Describe(setup_), ": browser broke the protocol: ", why);
        CloseBrowser(peer->reader.close_code(), why);
        Finish("browser protocol error");
      } else {
        OnPeerEnded(peer, "protocol error: " + why);
      }
      co_return;
    }
    co_await WaitForRoom(peer);
  }
  OnPeerEnded(peer, why);
}

size_t Tunnel::BacklogTo(const std::shared_ptr<Peer>& to) const {
  if (to == browser_) return browser_->out_bytes;
  return held_bytes_ + (backend_ ? backend_->out_bytes : 0);
}

net::awaitable<void> Tunnel::WaitForRoom(const std::shared_ptr<Peer>& from) {
  // Backpressure: stop reading one side while the other has too much of it queued.
  for (;;) {
    if (closed_ || from->ended) co_return;
    const bool full = from->is_browser ? BacklogTo(backend_) > shared_.options.ws_queue_bytes
                                       : browser_->out_bytes > shared_.options.ws_queue_bytes;
    if (!full) co_return;
    room_timer_.expires_at(Clock::time_point::max());
    co_await room_timer_.async_wait(kTuple);
  }
}

void Tunnel::OnBrowserEvent(WsEvent ev) {
  switch (ev.kind) {
    case WsEvent::Kind::kMessage:
      setup_.route->Touch(NowMillis());
      if (state_ == BackendState::kOpen && backend_) {
        Send(backend_, ev.text ? WsOpcode::kText : WsOpcode::kBinary, ev.payload);
      } else {
        shared_.metrics.websocket_messages_buffered.Increment();
        held_bytes_ += ev.payload.size();
        held_.push_back(Held{ev.text, std::move(ev.payload)});
      }
      break;
    case WsEvent::Kind::kPing:
      Send(browser_, WsOpcode::kPong, ev.payload);  // answered here, also while paused
      break;
    case WsEvent::Kind::kPong:
      break;
    case WsEvent::Kind::kClose: {
      // The browser is leaving: echo its close, and tell the backend the same.
      uint16_t code = ev.close_code == kCloseNoStatus ? kCloseNormal : ev.close_code;
      Send(browser_, WsOpcode::kClose, WsClosePayload(ev.close_code, ""));
      if (backend_ && state_ == BackendState::kOpen) Send(backend_, WsOpcode::kClose, WsClosePayload(code, ""));
      Finish("browser closed");
      break;
    }
  }
}

void Tunnel::OnBackendEvent(const std::shared_ptr<Peer>& peer, WsEvent ev) {
  if (peer != backend_) return;  // a connection already replaced
  switch (ev.kind) {
    case WsEvent::Kind::kMessage:
      setup_.route->Touch(NowMillis());
      Send(browser_, ev.text ? WsOpcode::kText : WsOpcode::kBinary, ev.payload);
      break;
    case WsEvent::Kind::kPing:
      Send(peer, WsOpcode::kPong, ev.payload);
      break;
    case WsEvent::Kind::kPong:
      break;
    case WsEvent::Kind::kClose:
      if (state_ == BackendState::kDraining || state_ == BackendState::kQuiescing) {
        Drained(false);
        return;
      }
      // The server ended the websocket itself. The browser must be able to reconnect, so
      // 1000/1001 become 1012 (service restart).
      Send(peer, WsOpcode::kClose, WsClosePayload(ev.close_code, ""));
      peer->ended = true;
      peer->stream.close();
      {
        uint16_t code = ev.close_code;
        if (code == kCloseNormal || code == kCloseGoingAway || code == kCloseNoStatus) code = kCloseServiceRestart;
        shared_.log.Info("websocket ", Describe(setup_), ": backend closed it (", ev.close_code, ")");
        CloseBrowser(code, ev.payload);
      }
      Finish("backend closed");
      break;
  }
}

void Tunnel::OnPeerEnded(const std::shared_ptr<Peer>& peer, const std::string& why) {
  if (peer->ended && peer != backend_) return;
  peer->ended = true;
  peer->stream.close();
  if (closed_) return;
  if (peer == browser_) {
    shared_.log.Debug("websocket ", Describe(setup_), ": browser gone: ", why);
    Finish("browser gone");
    return;
  }
  if (peer != backend_) return;
  if (state_ == BackendState::kDraining || state_ == BackendState::kQuiescing) {
    Drained(false);
    return;
  }
  if (state_ != BackendState::kOpen) return;
  shared_.log.Warn("websocket ", Describe(setup_), ": backend connection lost: ", why);
  shared_.metrics.Failed(ProxyError::kWebsocketBackendLost);
  CloseBrowser(kCloseInternalError, "backend connection lost");
  Finish("backend lost");
}

void Tunnel::Pause(std::shared_ptr<Ticket> ticket, PausePlan plan) {
  if (closed_) {
    if (ticket) ticket->Done(true);
    return;
  }
  resume_requested_ = false;
  plan_ = plan;
  switch (state_) {
    case BackendState::kOpen:
      if (ticket) pause_tickets_.push_back(std::move(ticket));
      state_ = BackendState::kQuiescing;  // from now on the browser's messages are held
      holding_browser_ = true;
      quiet_deadline_ = Clock::now() + plan_.quiet_max;
      QuietCheck();
      break;
    case BackendState::kQuiescing:
    case BackendState::kDraining:
      if (ticket) pause_tickets_.push_back(std::move(ticket));
      break;
    case BackendState::kGone:
      if (ticket) ticket->Done(true);
      break;
    case BackendState::kConnecting:
      pause_requested_ = true;
      if (ticket) pause_tickets_.push_back(std::move(ticket));
      break;
  }
}

void Tunnel::QuietCheck() {
  if (state_ != BackendState::kQuiescing || closed_) return;
  const auto now = Clock::now();
  const auto quiet_at = last_backend_rx_ + plan_.quiet;
  if (now >= quiet_at || now >= quiet_deadline_) {
    StartDrain();
    return;
  }
  drain_timer_.expires_at(std::min(quiet_at, quiet_deadline_));
  drain_timer_.async_wait([self = shared_from_this()](error_code ec) {
    if (!ec) self->QuietCheck();
  });
}

void Tunnel::StartDrain() {
  // A clean close: jupyter-server sees its last websocket for the session go and buffers the
  // kernel's messages for the reconnect. Frames it sends before its close reply still reach
  // the browser.
  state_ = BackendState::kDraining;
  holding_browser_ = true;
  Send(backend_, WsOpcode::kClose, WsClosePayload(kCloseGoingAway, "elsa-proxy: pausing"));
  drain_timer_.expires_after(plan_.drain);
  drain_timer_.async_wait([self = shared_from_this(), peer = backend_](error_code ec) {
    if (ec || self->backend_ != peer || self->state_ != BackendState::kDraining) return;
    self->shared_.log.Warn("websocket ", Describe(self->setup_), ": backend did not close within ",
                           self->plan_.drain.count(), " ms; cut");
    self->Drained(true);
  });
}

void Tunnel::Drained(bool cut) {
  drain_timer_.cancel();
  if (backend_) {
    backend_->ended = true;
    backend_->stream.close();
  }
  backend_.reset();
  state_ = BackendState::kGone;
  FinishTickets(pause_tickets_, !cut);
  if (resume_requested_) {
    resume_requested_ = false;
    state_ = BackendState::kConnecting;
    net::co_spawn(executor_, Reconnect(shared_from_this(), resume_deadline_), net::detached);
  }
}

void Tunnel::Resume(std::shared_ptr<Ticket> ticket, Clock::time_point deadline) {
  if (closed_) {
    if (ticket) ticket->Done(false);
    return;
  }
  pause_requested_ = false;
  if (state_ == BackendState::kQuiescing) {  // resumed before the backend was closed: carry on
    drain_timer_.cancel();
    FinishTickets(pause_tickets_, true);
    state_ = BackendState::kOpen;
    CountIfHeldAcrossPause();
    FlushHeld();
  }
  if (state_ == BackendState::kOpen) {
    if (ticket) ticket->Done(true);
    return;
  }
  if (ticket) resume_tickets_.push_back(std::move(ticket));
  resume_deadline_ = deadline;
  if (state_ == BackendState::kDraining) {
    resume_requested_ = true;
  } else if (state_ == BackendState::kGone) {
    state_ = BackendState::kConnecting;
    net::co_spawn(executor_, Reconnect(shared_from_this(), deadline), net::detached);
  }
}

net::awaitable<void> Tunnel::Reconnect([[maybe_unused]] Self self, Clock::time_point deadline) {
  auto backoff = std::chrono::milliseconds(50);
  net::steady_timer sleep(executor_);
  std::string last_error;
  for (;;) {
    if (closed_) co_return;
    auto target = shared_.routes.TargetOf(*setup_.route);
    if (!target->url) {
      last_error = target->error;
    } else {
      http::request_header<> request = setup_.request;
      request.target(ForwardTarget(shared_, *target->url, setup_.raw_target, setup_.prefix));
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      auto attempt = co_await ConnectBackendWs(shared_, *target->url, std::move(request),
                                               std::clamp(left, std::chrono::milliseconds(100),
                                                          std::chrono::milliseconds(5000)));
      if (closed_) co_return;
      if (attempt.ok() && std::holds_alternative<BackendWs>(*attempt)) {
        BackendWs ws = std::get<BackendWs>(std::move(*attempt));
        if (ws.protocol != setup_.protocol) {
          shared_.log.Warn("websocket ", Describe(setup_), ": backend chose subprotocol '", ws.protocol,
                           "' on reconnect, not '", setup_.protocol, "'");
        }
        size_t replayed = held_.size();
        StartBackend(std::move(ws));
        shared_.log.Debug("websocket ", Describe(setup_), ": reconnected to ", target->text, ", replayed ",
                          replayed, " messages");
        FinishTickets(resume_tickets_, true);
        if (pause_requested_) {
          pause_requested_ = false;
          StartDrain();
        }
        co_return;
      }
      last_error = attempt.ok() ? "backend answered " + std::to_string(std::get<BackendRefused>(*attempt).response.result_int())
                                : attempt.status().message();
    }
    if (pause_requested_) {  // paused again before we got through: wait for the next resume
      pause_requested_ = false;
      state_ = BackendState::kGone;
      FinishTickets(pause_tickets_, true);
      co_return;
    }
    if (Clock::now() + backoff >= deadline) break;
    sleep.expires_after(backoff);
    co_await sleep.async_wait(kTuple);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
  shared_.log.Error("websocket ", Describe(setup_), ": could not reconnect to the backend before the "
                    "resume deadline (", last_error, "); closing the browser's websocket with 1011");
  FinishTickets(resume_tickets_, false);
  shared_.metrics.Failed(ProxyError::kWebsocketResumeFailed);
  CloseBrowser(kCloseInternalError, "elsa-proxy: backend did not come back");
  Finish("resume failed");
}

void Tunnel::KeepAlive() {
  // We ping the browser ourselves (the backend's pings are answered here, and while paused
  // there is no backend); a browser silent for ws_idle_timeout is gone and is dropped, so
  // dead connections do not pile up. A plain timer callback, not a coroutine: an idle
  // websocket should cost as little memory as possible.
  const auto idle = shared_.options.ws_idle_timeout;
  ping_timer_.expires_after(idle / 3);
  ping_timer_.async_wait([self = shared_from_this(), idle](error_code ec) {
    if (ec || self->closed_) return;
    if (Clock::now() - self->last_browser_rx_ > idle) {
      self->shared_.log.Info("websocket ", Describe(self->setup_), ": browser silent for ", idle.count(),
                             " ms; dropped");
      self->OnPeerEnded(self->browser_, "idle");
      return;
    }
    self->Send(self->browser_, WsOpcode::kPing, "");
    self->KeepAlive();
  });
}

void Tunnel::CloseBrowser(uint16_t code, std::string_view reason) {
  Send(browser_, WsOpcode::kClose, WsClosePayload(code, reason));
}

void Tunnel::FinishTickets(std::vector<std::shared_ptr<Ticket>>& tickets, bool ok) {
  for (auto& t : tickets) t->Done(ok);
  tickets.clear();
}

void Tunnel::CountIfHeldAcrossPause() {
  if (std::exchange(holding_browser_, false)) shared_.metrics.websockets_held.Increment();
}

void Tunnel::Finish(std::string_view why) {
  if (closed_) return;
  closed_ = true;
  open_.Release();
  shared_.log.Debug("websocket ", Describe(setup_), " ended: ", why);
  drain_timer_.cancel();
  room_timer_.cancel();
  ping_timer_.cancel();
  FinishTickets(pause_tickets_, true);
  FinishTickets(resume_tickets_, false);
  if (backend_ && !backend_->writing) {
    backend_->ended = true;
    backend_->stream.close();
  } else if (backend_) {
    backend_->close_after_flush = true;
  }
  if (!browser_->writing) {
    browser_->ended = true;
    browser_->stream.close();
  } else {
    browser_->close_after_flush = true;
  }
}

}  // namespace elsa::proxy
