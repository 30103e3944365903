#include "migrate/peer_reader.h"

#include <exception>

namespace elsa {

Result<peer::Control> ReceiveControl(transport::Channel& channel, std::chrono::milliseconds timeout) {
  ELSA_ASSIGN_OR_RETURN(transport::Message message, channel.Receive(timeout));
  if (message.kind != transport::Message::Kind::kData)
    return Status::ProtocolError("page data where a control message was expected");
  ELSA_ASSIGN_OR_RETURN(auto decoded, peer::DecodeMessage(message.data));
  auto* control = std::get_if<peer::Control>(&decoded);
  if (!control)
    return Status::ProtocolError(std::holds_alternative<peer::FileChunk>(decoded)
                                     ? "a file chunk where a control message was expected"
                                     : "page refs where a control message was expected");
  if (const auto* error = std::get_if<peer::Error>(control))
    return Status::ExternalFailure("the other agent: " + error->message);
  return std::move(*control);
}

PeerReader::PeerReader(transport::Channel& channel, Handlers handlers)
    : channel_(channel), handlers_(std::move(handlers)) {
  thread_ = std::thread([this] { Read(); });
}

PeerReader::~PeerReader() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  thread_.join();
}

Status PeerReader::Dispatch(transport::Message message) {
  if (message.kind == transport::Message::Kind::kPages) {
    if (!handlers_.pages) return Status::ProtocolError("page data where none was expected");
    return handlers_.pages(message.pages);
  }
  ELSA_ASSIGN_OR_RETURN(auto decoded, peer::DecodeMessage(message.data));
  if (auto* refs = std::get_if<std::vector<peer::PageRef>>(&decoded)) {
    if (!handlers_.refs) return Status::ProtocolError("page refs where none were expected");
    return handlers_.refs(*refs);
  }
  auto* control = std::get_if<peer::Control>(&decoded);
  if (!control) return Status::ProtocolError("a file chunk where none was expected");
  if (handlers_.intercept && handlers_.intercept(*control)) {
    std::lock_guard lock(mu_);
    intercepted_ = true;
    changed_.notify_all();
    return Status::Ok();
  }
  std::lock_guard lock(mu_);
  controls_.push_back(std::move(*control));
  changed_.notify_all();
  return Status::Ok();
}

// This thread is nobody's caller: whatever a handler throws ends the conversation as a Status.
Status PeerReader::DispatchCaught(transport::Message message) {
  try {
    return Dispatch(std::move(message));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("handling the other agent's message: ") + e.what());
  }
}

void PeerReader::Read() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    Result<transport::Message> message = channel_.Receive(std::chrono::milliseconds(100));
    if (message.ok()) {
      std::lock_guard lock(mu_);
      last_message_ = std::chrono::steady_clock::now();
    }
    Status st = message.ok() ? DispatchCaught(std::move(*message)) : message.status();
    if (!st.ok() && st.code() == StatusCode::kTimeout && !message.ok()) continue;
    if (!st.ok()) {
      std::lock_guard lock(mu_);
      failed_ = st;
      changed_.notify_all();
      return;
    }
  }
}

Result<peer::Control> PeerReader::NextControl(std::chrono::milliseconds idle) {
  for (;;) {
    ELSA_ASSIGN_OR_RETURN(std::optional<peer::Control> control, Wait(idle, /*wake_on_intercept=*/false));
    if (control) return std::move(*control);
  }
}

Result<std::optional<peer::Control>> PeerReader::NextControlOrIntercepted(std::chrono::milliseconds idle) {
  return Wait(idle, /*wake_on_intercept=*/true);
}

Result<std::optional<peer::Control>> PeerReader::Wait(std::chrono::milliseconds idle, bool wake_on_intercept) {
  std::unique_lock lock(mu_);
  const auto called = std::chrono::steady_clock::now();
  auto ready = [&] { return !controls_.empty() || !failed_.ok() || (wake_on_intercept && intercepted_); };
  for (;;) {
    const auto since = std::max(called, last_message_);
    if (changed_.wait_until(lock, since + idle, ready)) break;
    if (std::max(called, last_message_) + idle <= std::chrono::steady_clock::now())
      return Status::Timeout("no word from the other agent in " + std::to_string(idle.count() / 1000.0).substr(0, 4) +
                             " s");
  }
  if (controls_.empty()) {
    if (!failed_.ok()) return failed_;
    intercepted_ = false;
    return std::optional<peer::Control>();
  }
  if (wake_on_intercept) intercepted_ = false;
  peer::Control control = std::move(controls_.front());
  controls_.pop_front();
  if (const auto* error = std::get_if<peer::Error>(&control))
    return Status::ExternalFailure("the other agent: " + error->message);
  return std::optional<peer::Control>(std::move(control));
}

}  // namespace elsa
