// Websocket frames from browsers (masked) and backends (unmasked) reach WsReader as they come
// off the wire, in pieces of any size: it must never crash, over-read or grow past its limit.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ws_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const bool from_browser = data[0] & 1;
  const size_t chunk = 1 + data[1] % 64;  // how the bytes are split across reads
  std::string_view bytes(reinterpret_cast<const char*>(data) + 2, size - 2);
  elsa::proxy::WsReader reader(from_browser, 4096);
  for (size_t at = 0; at < bytes.size(); at += chunk) {
    reader.Feed(bytes.substr(at, chunk));
    for (;;) {
      auto ev = reader.Next();
      if (!ev.ok()) return 0;  // the connection would be closed with reader.close_code()
      if (!*ev) break;
      if ((*ev)->payload.size() > 4096) __builtin_trap();
    }
    if (reader.Idle()) reader.ReleaseMemory();
  }
  return 0;
}
