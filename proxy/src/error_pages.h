// The pages a client gets when elsa-proxy answers itself: 404 (no route), 503 (backend down),
// fetched from --error-target as configurable-http-proxy does (GET <target>/<code>?url=<url>,
// which is how JupyterHub renders them), or read from --error-path, or the reason phrase.
#pragma once

#include <string_view>

#include <boost/asio/awaitable.hpp>
#include <boost/beast/http/fields.hpp>

#include "stream.h"

namespace elsa::proxy {

struct Shared;

// Writes the page; false if the client connection is no longer usable.
net::awaitable<bool> SendErrorPage(Shared& shared, AnyStream& client, int code,
                                   std::string_view raw_url, bool keep_alive, unsigned version);

// A small response of our own (health check, 400s, API answers, metrics), with `extra`
// headers if any (a 405's Allow).
net::awaitable<bool> SendSimple(AnyStream& client, int code, std::string_view content_type,
                                std::string body, bool keep_alive, unsigned version,
                                beast::http::fields extra = {});

}  // namespace elsa::proxy
