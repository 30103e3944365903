#include "error_pages.h"

#include <boost/beast/http/read.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "api.h"
#include "elsa/file_util.h"
#include "server.h"

namespace elsa::proxy {

namespace {

namespace http = beast::http;

struct Page {
  std::string content_type;
  std::string content_encoding;
  std::string body;
  http::fields extra;
};

net::awaitable<Result<Page>> FetchErrorTarget(Shared& shared, int code, std::string_view raw_url) {
  std::string base = shared.options.error_target;
  if (base.back() != '/') base.push_back('/');
  auto target = ParseTargetUrl(base);
  if (!target.ok()) co_return target.status();
  auto stream = co_await ConnectBackend(shared, *target, std::chrono::milliseconds(5000));
  if (!stream.ok()) co_return stream.status();
  http::request<http::empty_body> req{http::verb::get,
                                      target->path + std::to_string(code) + "?url=" + EncodeUriComponent(raw_url), 11};
  req.set(http::field::host, target->HostHeader());
  req.keep_alive(false);
  stream->expires_after(std::chrono::seconds(10));
  auto [wec, w] = co_await http::async_write(*stream, req, kTuple);
  if (wec) co_return Status::Unavailable("sending to " + shared.options.error_target + ": " + wec.message());
  beast::flat_buffer buf;
  http::response_parser<http::string_body> p;
  p.body_limit(1024 * 1024);
  auto [rec, r] = co_await http::async_read(*stream, buf, p, kTuple);
  if (rec) co_return Status::Unavailable("reading from " + shared.options.error_target + ": " + rec.message());
  stream->close();
  Page page;
  page.content_type = std::string(p.get()[http::field::content_type]);
  page.content_encoding = std::string(p.get()[http::field::content_encoding]);
  page.body = std::move(p.get().body());
  co_return page;
}

Result<Page> ReadErrorPath(const std::string& dir, int code) {
  for (std::string name : {std::to_string(code) + ".html", std::string("error.html")}) {
    auto text = ReadFile(dir + "/" + name, 4 * 1024 * 1024);
    if (text.ok()) {
      Page page;
      page.content_type = "text/html";
      page.body = std::move(text).value();
      return page;
    }
  }
  return Status::NotFound("no " + std::to_string(code) + ".html or error.html in " + dir);
}

net::awaitable<bool> WritePage(AnyStream& client, int code, Page page, bool keep_alive,
                               unsigned version) {
  http::response<http::string_body> res{static_cast<http::status>(code), version == 10 ? 10u : 11u,
                                        std::string(), std::move(page.extra)};
  if (!page.content_type.empty()) res.set(http::field::content_type, page.content_type);
  if (!page.content_encoding.empty()) res.set(http::field::content_encoding, page.content_encoding);
  res.body() = std::move(page.body);
  res.keep_alive(keep_alive);
  res.prepare_payload();
  client.expires_after(std::chrono::seconds(30));
  auto [ec, n] = co_await http::async_write(client, res, kTuple);
  client.expires_never();
  co_return !ec && keep_alive;
}

}  // namespace

net::awaitable<bool> SendSimple(AnyStream& client, int code, std::string_view content_type,
                                std::string body, bool keep_alive, unsigned version,
                                http::fields extra) {
  Page page;
  page.content_type = std::string(content_type);
  page.body = std::move(body);
  page.extra = std::move(extra);
  co_return co_await WritePage(client, code, std::move(page), keep_alive, version);
}

net::awaitable<bool> SendErrorPage(Shared& shared, AnyStream& client, int code,
                                   std::string_view raw_url, bool keep_alive, unsigned version) {
  Result<Page> page = Status::NotFound("");
  if (!shared.options.error_target.empty()) {
    page = co_await FetchErrorTarget(shared, code, raw_url);
    if (!page.ok()) shared.log.Error("Failed to get custom error page: ", page.status().message());
  } else if (!shared.options.error_path.empty()) {
    page = ReadErrorPath(shared.options.error_path, code);
    if (!page.ok()) shared.log.Error(page.status().message());
  }
  if (!page.ok()) {
    Page plain;
    plain.body = std::string(StatusText(code));
    page = std::move(plain);
  }
  co_return co_await WritePage(client, code, std::move(page).value(), keep_alive, version);
}

}  // namespace elsa::proxy
