// Errors as values. A Status is either OK or carries a code and a message written for the
// person who will read it; Result<T> is a value or a non-OK Status.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace elsa {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,   // the caller's input is wrong (bad name, bad id, bad flag)
  kNotFound,          // no such session / checkpoint / file
  kAlreadyExists,     // a name or id is taken
  kFailedPrecondition,// the system is not in a state that allows this (e.g. CRIU missing)
  kCorruption,        // data on disk or on the wire failed verification
  kIoError,           // a system call failed
  kExternalFailure,   // a program we drive (CRIU, the session's command) failed
  kUnavailable,       // a peer or agent cannot be reached
  kTimeout,
  kPeerClosed,        // the other end went away without closing cleanly
  kEndOfStream,       // the other end closed cleanly; nothing more will come
  kProtocolError,     // the peer sent something the protocol does not allow
  kUnauthenticated,   // the peer could not prove it holds the shared secret
  kCancelled,         // the caller called it off (e.g. no go at a migration's freeze gate)
  kPermissionDenied,  // the caller is known, but its scope does not allow this
  kInternal,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status ExternalFailure(std::string m) { return {StatusCode::kExternalFailure, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status Timeout(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
  static Status PeerClosed(std::string m) { return {StatusCode::kPeerClosed, std::move(m)}; }
  static Status EndOfStream(std::string m) { return {StatusCode::kEndOfStream, std::move(m)}; }
  static Status ProtocolError(std::string m) { return {StatusCode::kProtocolError, std::move(m)}; }
  static Status Unauthenticated(std::string m) { return {StatusCode::kUnauthenticated, std::move(m)}; }
  static Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
  static Status PermissionDenied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
  // "what: strerror(err)", for a failed system call.
  static Status FromErrno(std::string_view what, int err);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

  // Prefixes context, keeping the code: "checkpoint alice: " + message.
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}               // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {          // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "a Result holding a Status must hold an error");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  // Prefixes context to the error, if there is one.
  Result<T> WithContext(std::string_view context) && {
    if (ok()) return std::move(*this);
    return std::get<Status>(v_).WithContext(context);
  }

 private:
  std::variant<T, Status> v_;
};

}  // namespace elsa

// Early return of a non-OK Status from an expression yielding a Status.
#define ELSA_RETURN_IF_ERROR(expr)              \
  do {                                          \
    ::elsa::Status elsa_status_ = (expr);       \
    if (!elsa_status_.ok()) return elsa_status_; \
  } while (0)

#define ELSA_CONCAT_INNER_(a, b) a##b
#define ELSA_CONCAT_(a, b) ELSA_CONCAT_INNER_(a, b)
// Declares `lhs` from a Result's value, or returns its Status.
#define ELSA_ASSIGN_OR_RETURN(lhs, expr) \
  ELSA_ASSIGN_OR_RETURN_IMPL_(ELSA_CONCAT_(elsa_result_, __LINE__), lhs, expr)
#define ELSA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
