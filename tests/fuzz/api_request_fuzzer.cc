// Request lines arrive on the agent's socket: decoding must never crash or throw.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "elsa/engine/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  auto request = elsa::ParseApiRequest(line);
  if (request.ok() && request->op.empty()) __builtin_trap();
  return 0;
}
