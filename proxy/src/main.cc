// elsa-proxy: see docs/proxy.md.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "elsa/proxy/proxy.h"

int main(int argc, char** argv) {
  std::string exit_text;
  auto options = elsa::proxy::ParseCommandLine(std::span<const char* const>(argv, static_cast<size_t>(argc)),
                                               std::getenv("CONFIGPROXY_AUTH_TOKEN"), &exit_text);
  if (!options.ok()) {
    std::fprintf(stderr, "elsa-proxy: %s\n(elsa-proxy --help lists the options)\n", options.status().message().c_str());
    return 2;
  }
  if (!exit_text.empty()) {
    std::fputs(exit_text.c_str(), stdout);
    return 0;
  }
  // Writes to a peer that went away must fail with EPIPE, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  auto proxy = elsa::proxy::Proxy::Start(std::move(options).value());
  if (!proxy.ok()) {
    std::fprintf(stderr, "elsa-proxy: %s\n", proxy.status().message().c_str());
    return 1;
  }
  return (*proxy)->Wait();
}
