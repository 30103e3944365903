// The REST API's inputs (method, request-target, Authorization, body) come from anyone who can
// reach the API port: the route table must stay consistent whatever they send.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Input: method \n target \n authorization \n body
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view parts[3];
  for (auto& p : parts) {
    size_t nl = in.find('\n');
    if (nl == std::string_view::npos) return 0;
    p = in.substr(0, nl);
    in.remove_prefix(nl + 1);
  }
  elsa::proxy::Logger log(elsa::proxy::LogLevel::kError, -1);
  elsa::proxy::RouteTable routes(parts[1].size() % 2 == 1);
  elsa::proxy::Api api(routes, "fuzz", log);
  elsa::proxy::ApiRequest req;
  req.method = parts[0];
  req.target = parts[1];
  req.authorization = parts[2];
  req.body = in;
  for (int round = 0; round < 2; ++round) {  // twice: adding over an existing route too
    auto out = api.Handle(req, 1700000000000);
    if (auto* r = std::get_if<elsa::proxy::ApiResponse>(&out); r && (r->status < 200 || r->status > 599)) {
      __builtin_trap();
    }
  }
  (void)routes.GetAll(std::nullopt);
  (void)routes.Find(parts[1]);
  return 0;
}
