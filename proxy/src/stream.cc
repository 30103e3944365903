#include "stream.h"

#include <sys/socket.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/websocket/teardown.hpp>

namespace elsa::proxy {

namespace ssl = net::ssl;

namespace {

// Asio 1.81's any_completion_executor (what an erased handler reports as its executor) lacks
// blocking.never, which composed operations require; every stream lives on one single-threaded
// io_context, so erased handlers are bound to the stream's executor instead.
template <typename Handler>
auto Bound(const net::any_io_executor& ex, Handler&& h) {
  return net::bind_executor(ex, std::forward<Handler>(h));
}

// Completes `handler` soon (never inside the initiating call).
template <typename Handler>
void CompleteSoon(const net::any_io_executor& ex, Handler handler, error_code ec) {
  net::post(ex, [h = std::move(handler), ec]() mutable { std::move(h)(ec); });
}

template <typename Protocol>
class PlainImpl final : public StreamImpl {
 public:
  explicit PlainImpl(typename Protocol::socket socket) : s_(std::move(socket)) {}
  net::any_io_executor executor() override { return s_.get_executor(); }
  void AsyncReadSome(net::mutable_buffer b, IoHandler h) override {
    s_.async_read_some(b, Bound(executor(), std::move(h)));
  }
  void AsyncWriteSome(ConstBuffers b, IoHandler h) override {
    s_.async_write_some(b, Bound(executor(), std::move(h)));
  }
  void AsyncWaitReadable(Handler h) override {
    s_.socket().async_wait(Protocol::socket::wait_read, Bound(executor(), std::move(h)));
  }
  void AsyncTeardown(beast::role_type role, Handler h) override {
    beast::websocket::async_teardown(role, s_.socket(), Bound(executor(), std::move(h)));
  }
  void ExpiresAfter(std::chrono::steady_clock::duration d) override { s_.expires_after(d); }
  void ExpiresNever() override { s_.expires_never(); }
  void Close() override { s_.close(); }
  int NativeHandle() override { return s_.socket().native_handle(); }
  bool Encrypted() const override { return false; }

 private:
  beast::basic_stream<Protocol> s_;
};

class TlsImpl final : public StreamImpl {
 public:
  TlsImpl(tcp::socket socket, ssl::context& ctx) : s_(beast::tcp_stream(std::move(socket)), ctx) {}
  net::any_io_executor executor() override { return s_.get_executor(); }
  void AsyncReadSome(net::mutable_buffer b, IoHandler h) override {
    s_.async_read_some(b, Bound(executor(), std::move(h)));
  }
  void AsyncWriteSome(ConstBuffers b, IoHandler h) override {
    s_.async_write_some(b, Bound(executor(), std::move(h)));
  }
  // Decrypted or still-encrypted bytes may sit in the TLS layer's buffers where the socket's
  // readiness cannot see them: report "readable" at once and let the read wait.
  void AsyncWaitReadable(Handler h) override { CompleteSoon(executor(), std::move(h), {}); }
  void AsyncTeardown(beast::role_type role, Handler h) override {
    beast::async_teardown(role, s_, Bound(executor(), std::move(h)));
  }
  void ExpiresAfter(std::chrono::steady_clock::duration d) override {
    beast::get_lowest_layer(s_).expires_after(d);
  }
  void ExpiresNever() override { beast::get_lowest_layer(s_).expires_never(); }
  void Close() override { beast::get_lowest_layer(s_).close(); }
  int NativeHandle() override { return beast::get_lowest_layer(s_).socket().native_handle(); }
  bool Encrypted() const override { return true; }
  beast::ssl_stream<beast::tcp_stream>& stream() { return s_; }

 private:
  beast::ssl_stream<beast::tcp_stream> s_;
};

void TuneTcp(tcp::socket& socket) {
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  socket.set_option(net::socket_base::keep_alive(true), ignored);
}

Status TlsError(const std::string& what, const error_code& ec) {
  return Status::InvalidArgument(what + ": " + ec.message());
}

// CHP's default cipher list (RC4 always excluded).
constexpr const char* kDefaultCiphers =
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:"
    "DHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:DHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA256:"
    "DHE-RSA-AES256-SHA256:HIGH:!RC4:!aNULL:!eNULL:!EXPORT:!DES:!MD5:!PSK:!SRP:!CAMELLIA";

Status ConfigureCommon(ssl::context& ctx, const Options& o) {
  auto opts = ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
              ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use;
  if (o.ssl_protocol == "tlsv1_2") opts |= ssl::context::no_tlsv1_3;
  if (o.ssl_protocol == "tlsv1_3") opts |= ssl::context::no_tlsv1_2;
  ctx.set_options(opts);
  std::string ciphers = o.ssl_ciphers.empty() ? kDefaultCiphers : o.ssl_ciphers + ":!RC4";
  if (SSL_CTX_set_cipher_list(ctx.native_handle(), ciphers.c_str()) != 1) {
    return Status::InvalidArgument("--ssl-ciphers: OpenSSL accepts none of '" + o.ssl_ciphers + "'");
  }
  if (!o.ssl_dhparam.empty()) {
    error_code ec;
    ctx.use_tmp_dh_file(o.ssl_dhparam, ec);
    if (ec) return TlsError("--ssl-dhparam " + o.ssl_dhparam, ec);
  }
  return Status::Ok();
}

Status LoadKeyPair(ssl::context& ctx, const TlsFiles& f) {
  error_code ec;
  if (!f.key_passphrase.empty()) {
    std::string pass = f.key_passphrase;
    ctx.set_password_callback([pass](size_t, ssl::context::password_purpose) { return pass; });
  }
  ctx.use_certificate_chain_file(f.cert, ec);
  if (ec) return TlsError("certificate " + f.cert, ec);
  ctx.use_private_key_file(f.key, ssl::context::pem, ec);
  if (ec) return TlsError("key " + f.key, ec);
  return Status::Ok();
}

}  // namespace

bool AnyStream::LooksAlive() {
  if (!impl_) return false;
  char c = 0;
  ssize_t n = ::recv(impl_->NativeHandle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void beast_close_socket(AnyStream& stream) { stream.close(); }

void teardown(beast::role_type, AnyStream& stream, error_code& ec) {
  stream.close();
  ec = {};
}

AnyStream MakeTcpStream(tcp::socket socket) {
  TuneTcp(socket);
  return AnyStream(std::make_unique<PlainImpl<tcp>>(std::move(socket)));
}

AnyStream MakeUnixStream(net::local::stream_protocol::socket socket) {
  return AnyStream(std::make_unique<PlainImpl<net::local::stream_protocol>>(std::move(socket)));
}

net::awaitable<Result<AnyStream>> MakeTlsServerStream(tcp::socket socket, ssl::context& ctx,
                                                      std::chrono::milliseconds timeout) {
  TuneTcp(socket);
  auto impl = std::make_unique<TlsImpl>(std::move(socket), ctx);
  impl->ExpiresAfter(timeout);
  auto [ec] = co_await impl->stream().async_handshake(ssl::stream_base::server,
                                                      net::as_tuple(net::use_awaitable));
  if (ec) co_return Status::Unavailable("TLS handshake with a client: " + ec.message());
  impl->ExpiresNever();
  co_return AnyStream(std::move(impl));
}

net::awaitable<Result<AnyStream>> MakeTlsClientStream(tcp::socket socket, ssl::context& ctx,
                                                      const std::string& host, bool verify,
                                                      std::chrono::milliseconds timeout) {
  TuneTcp(socket);
  auto impl = std::make_unique<TlsImpl>(std::move(socket), ctx);
  SSL* ssl_handle = impl->stream().native_handle();
  // SNI (SSL_set_tlsext_host_name, spelled out: the macro casts away const C-style).
  SSL_ctrl(ssl_handle, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
           const_cast<char*>(host.c_str()));
  if (verify) {
    impl->stream().set_verify_mode(ssl::verify_peer);
    impl->stream().set_verify_callback(ssl::host_name_verification(host));
  } else {
    impl->stream().set_verify_mode(ssl::verify_none);
  }
  impl->ExpiresAfter(timeout);
  auto [ec] = co_await impl->stream().async_handshake(ssl::stream_base::client,
                                                      net::as_tuple(net::use_awaitable));
  if (ec) co_return Status::Unavailable("TLS handshake with " + host + ": " + ec.message());
  impl->ExpiresNever();
  co_return AnyStream(std::move(impl));
}

Result<std::shared_ptr<ssl::context>> MakeServerTlsContext(const TlsFiles& f, const Options& o) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ELSA_RETURN_IF_ERROR(ConfigureCommon(*ctx, o));
  ELSA_RETURN_IF_ERROR(LoadKeyPair(*ctx, f));
  if (!f.ca.empty()) {
    error_code ec;
    ctx->load_verify_file(f.ca, ec);
    if (ec) return TlsError("CA " + f.ca, ec);
  }
  if (f.request_cert) {
    ctx->set_verify_mode(ssl::verify_peer |
                         (f.reject_unauthorized ? ssl::verify_fail_if_no_peer_cert : 0));
    // Node's requestCert without rejectUnauthorized asks for a certificate but admits anyone.
    if (!f.reject_unauthorized) ctx->set_verify_callback([](bool, ssl::verify_context&) { return true; });
  }
  return ctx;
}

Result<std::shared_ptr<ssl::context>> MakeClientTlsContext(const Options& o) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  ELSA_RETURN_IF_ERROR(ConfigureCommon(*ctx, o));
  error_code ec;
  if (!o.client_ssl.ca.empty()) {
    ctx->load_verify_file(o.client_ssl.ca, ec);
    if (ec) return TlsError("--client-ssl-ca " + o.client_ssl.ca, ec);
  } else {
    ctx->set_default_verify_paths(ec);
    if (ec) return TlsError("the system's CA certificates", ec);
  }
  if (!o.client_ssl.cert.empty()) ELSA_RETURN_IF_ERROR(LoadKeyPair(*ctx, o.client_ssl));
  return ctx;
}

}  // namespace elsa::proxy
