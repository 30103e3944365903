// What another agent sends during a migration arrives from the network: decoding a control
// message, a file chunk or page refs must never crash, and what decodes must survive a round trip.
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "migrate/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace elsa::peer;
  auto decoded = DecodeMessage(std::span<const uint8_t>(data, size));
  if (!decoded.ok()) return 0;
  if (auto* chunk = std::get_if<FileChunk>(&*decoded)) {
    auto again = DecodeMessage(EncodeFileChunk(chunk->name, chunk->offset, chunk->last, chunk->data));
    if (!again.ok() || std::get<FileChunk>(*again).data != chunk->data) __builtin_trap();
  } else if (auto* refs = std::get_if<std::vector<PageRef>>(&*decoded)) {
    auto again = DecodeMessage(EncodePageRefs(*refs));
    if (!again.ok() || std::get<std::vector<PageRef>>(*again).size() != refs->size()) __builtin_trap();
  } else {
    // A typed message re-encodes to bytes that decode to the same message, which encodes to the
    // same bytes again: nothing the decoder accepts is lost or changed on the way through.
    const Control& c = std::get<Control>(*decoded);
    const std::vector<uint8_t> bytes = EncodeControl(c);
    auto again = DecodeMessage(bytes);
    if (!again.ok() || !std::holds_alternative<Control>(*again)) __builtin_trap();
    const Control& c2 = std::get<Control>(*again);
    if (OpName(c2) != OpName(c) || EncodeControl(c2) != bytes) __builtin_trap();
  }
  (void)ParseHostPort(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
