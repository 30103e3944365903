// One byte stream of any kind the proxy speaks: TCP, TLS over TCP, or a Unix socket, behind a
// single type, so the HTTP and websocket code is written once and is not a template. It is an
// Asio AsyncStream (Beast's HTTP and websocket layers run on it) with expiry-based timeouts.
//
// Threading: a stream lives on one worker's single-threaded io_context.
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <string>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/role.hpp>

#include "elsa/proxy/options.h"
#include "elsa/status.h"

namespace elsa::proxy {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

// Up to 8 buffers of a write, copied by value (an erased write may send fewer: that is what
// write_some means).
struct ConstBuffers {
  std::array<net::const_buffer, 8> items;
  size_t count = 0;
  const net::const_buffer* begin() const { return items.data(); }
  const net::const_buffer* end() const { return items.data() + count; }
};

class StreamImpl {
 public:
  using IoHandler = net::any_completion_handler<void(error_code, size_t)>;
  using Handler = net::any_completion_handler<void(error_code)>;
  virtual ~StreamImpl() = default;
  virtual net::any_io_executor executor() = 0;
  virtual void AsyncReadSome(net::mutable_buffer buffer, IoHandler handler) = 0;
  virtual void AsyncWriteSome(ConstBuffers buffers, IoHandler handler) = 0;
  // Completes when a read would not block (at once for TLS with decrypted bytes pending), so
  // idle connections need no read buffer.
  virtual void AsyncWaitReadable(Handler handler) = 0;
  // TLS close_notify where there is TLS, then shutdown and close: a websocket's teardown.
  virtual void AsyncTeardown(beast::role_type role, Handler handler) = 0;
  virtual void ExpiresAfter(std::chrono::steady_clock::duration d) = 0;
  virtual void ExpiresNever() = 0;
  virtual void Close() = 0;
  virtual int NativeHandle() = 0;
  virtual bool Encrypted() const = 0;
};

class AnyStream {
 public:
  using executor_type = net::any_io_executor;

  AnyStream() = default;
  explicit AnyStream(std::unique_ptr<StreamImpl> impl) : impl_(std::move(impl)) {}
  AnyStream(AnyStream&&) noexcept = default;
  AnyStream& operator=(AnyStream&&) noexcept = default;

  bool valid() const { return impl_ != nullptr; }
  executor_type get_executor() const { return impl_->executor(); }

  template <typename MutableBufferSequence, typename Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    net::mutable_buffer first;
    for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers); ++it) {
      first = *it;
      if (first.size() > 0) break;
    }
    return net::async_initiate<Token, void(error_code, size_t)>(
        [impl = impl_.get()](auto handler, net::mutable_buffer b) {
          impl->AsyncReadSome(b, std::move(handler));
        },
        token, first);
  }

  template <typename ConstBufferSequence, typename Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    ConstBuffers list;
    for (auto it = net::buffer_sequence_begin(buffers);
         it != net::buffer_sequence_end(buffers) && list.count < list.items.size(); ++it) {
      net::const_buffer b = *it;
      if (b.size() > 0) list.items[list.count++] = b;
    }
    return net::async_initiate<Token, void(error_code, size_t)>(
        [impl = impl_.get()](auto handler, ConstBuffers l) {
          impl->AsyncWriteSome(l, std::move(handler));
        },
        token, list);
  }

  template <typename Token>
  auto async_wait_readable(Token&& token) {
    return net::async_initiate<Token, void(error_code)>(
        [impl = impl_.get()](auto handler) { impl->AsyncWaitReadable(std::move(handler)); }, token);
  }

  template <typename Token>
  auto async_teardown(beast::role_type role, Token&& token) {
    return net::async_initiate<Token, void(error_code)>(
        [impl = impl_.get()](auto handler, beast::role_type r) { impl->AsyncTeardown(r, std::move(handler)); },
        token, role);
  }

  void expires_after(std::chrono::steady_clock::duration d) { impl_->ExpiresAfter(d); }
  void expires_never() { impl_->ExpiresNever(); }
  void close() {
    if (impl_) impl_->Close();
  }
  int native_handle() { return impl_->NativeHandle(); }
  bool encrypted() const { return impl_ && impl_->Encrypted(); }
  // False if the peer closed or sent something while the connection sat in a pool.
  bool LooksAlive();

 private:
  std::unique_ptr<StreamImpl> impl_;
};

// Beast's hooks (found by argument-dependent lookup) for websocket::stream<AnyStream>.
void beast_close_socket(AnyStream& stream);
template <typename Handler>
void async_teardown(beast::role_type role, AnyStream& stream, Handler&& handler) {
  stream.async_teardown(role, std::forward<Handler>(handler));
}
void teardown(beast::role_type role, AnyStream& stream, error_code& ec);

// Plain streams, from connected sockets.
AnyStream MakeTcpStream(tcp::socket socket);
AnyStream MakeUnixStream(net::local::stream_protocol::socket socket);
// TLS streams: the handshake is done here, within `timeout`.
net::awaitable<Result<AnyStream>> MakeTlsServerStream(tcp::socket socket, net::ssl::context& ctx,
                                                      std::chrono::milliseconds timeout);
net::awaitable<Result<AnyStream>> MakeTlsClientStream(tcp::socket socket, net::ssl::context& ctx,
                                                      const std::string& host, bool verify,
                                                      std::chrono::milliseconds timeout);

// TLS contexts from CHP's flag sets (same defaults: its cipher list, no SSLv2/3, TLS 1.0/1.1).
Result<std::shared_ptr<net::ssl::context>> MakeServerTlsContext(const TlsFiles& files,
                                                                const Options& options);
Result<std::shared_ptr<net::ssl::context>> MakeClientTlsContext(const Options& options);

}  // namespace elsa::proxy
