// What framing costs the sender and receiver per byte, without any I/O: planning a page batch
// (zero-page scan + address table), checksumming the payload, encoding and decoding headers,
// decoding page payloads. "Share of a core at 10 Gbit/s" = 1.25 GB/s / bytes_per_second.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>

#include "frame.h"
#include "page_codec.h"

namespace {

using namespace elsa::transport;

PageBatch MakeBatch(size_t pages, int zero_every) {
  PageBatch b(pages);
  std::mt19937_64 rng(11);
  for (size_t i = 0; i < pages; ++i) {
    uint8_t* p = b.AddPage(0x7f0000000000ULL + i * kPageSize);
    if (zero_every && i % static_cast<size_t>(zero_every) == 0) {
      std::memset(p, 0, kPageSize);
      continue;
    }
    for (size_t k = 0; k < kPageSize; k += 8) {
      uint64_t v = rng();
      std::memcpy(p + k, &v, 8);
    }
  }
  return b;
}

// The sender's per-frame work for an uncompressed page frame: plan, checksum over the iovecs,
// header. This is the "hashing + framing" cost of the transport.
void BM_EncodePageFrame(benchmark::State& state) {
  PageBatch batch = MakeBatch(static_cast<size_t>(state.range(0)), 0);
  for (auto _ : state) {
    PagePayloadPlan plan = PlanPagePayload(batch);
    std::vector<iovec> iov;
    AppendPagePayloadIov(batch, plan, &iov);
    uint64_t sum = 0;
    for (const auto& v : iov) sum ^= PayloadChecksum(v.iov_base, v.iov_len);
    FrameHeader h;
    h.type = FrameType::kPages;
    h.payload_xxh3 = sum;
    uint8_t header[kFrameHeaderSize];
    EncodeFrameHeader(h, header);
    benchmark::DoNotOptimize(header);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * batch.bytes()));
}
BENCHMARK(BM_EncodePageFrame)->Arg(256);

// The receiver's work: header decode, checksum verify, page payload decode (which copies pages
// out of the receive buffer into the batch it delivers).
void BM_DecodePageFrame(benchmark::State& state) {
  PageBatch batch = MakeBatch(static_cast<size_t>(state.range(0)), 8);
  std::vector<uint8_t> payload = FlattenPagePayload(batch, PlanPagePayload(batch));
  FrameHeader h;
  h.type = FrameType::kPages;
  h.wire_length = h.raw_length = static_cast<uint32_t>(payload.size());
  h.payload_xxh3 = PayloadChecksum(payload.data(), payload.size());
  uint8_t header[kFrameHeaderSize];
  EncodeFrameHeader(h, header);
  for (auto _ : state) {
    auto decoded = DecodeFrameHeader(header, 16u << 20);
    bool ok = PayloadChecksum(payload.data(), payload.size()) == decoded->payload_xxh3;
    auto pages = DecodePagePayload(payload, MaxPagesPerFrame(16u << 20));
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(pages);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * batch.bytes()));
}
BENCHMARK(BM_DecodePageFrame)->Arg(256);

void BM_ZeroPageScan(benchmark::State& state) {
  std::vector<uint8_t> zero(kPageSize, 0);
  for (auto _ : state) benchmark::DoNotOptimize(IsZeroPage(zero.data()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kPageSize));
}
BENCHMARK(BM_ZeroPageScan);

void BM_FrameHeaderRoundTrip(benchmark::State& state) {
  FrameHeader h;
  h.type = FrameType::kData;
  h.sequence = 42;
  uint8_t header[kFrameHeaderSize];
  for (auto _ : state) {
    EncodeFrameHeader(h, header);
    benchmark::DoNotOptimize(DecodeFrameHeader(header, 1u << 20));
  }
}
BENCHMARK(BM_FrameHeaderRoundTrip);

}  // namespace


namespace {
// Building a batch the way a sender does: one AddPage per page, copying from memory.
void BM_BuildBatch(benchmark::State& state) {
  PageBatch source = MakeBatch(256, 0);
  for (auto _ : state) {
    PageBatch b(256);
    for (size_t i = 0; i < source.size(); ++i) b.AddPage(source.address(i), source.page(i));
    benchmark::DoNotOptimize(b.page(255));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * source.bytes()));
}
BENCHMARK(BM_BuildBatch);

void BM_CopyBatch(benchmark::State& state) {
  PageBatch source = MakeBatch(256, 0);
  for (auto _ : state) {
    PageBatch copy = source;
    benchmark::DoNotOptimize(copy.page(255));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * source.bytes()));
}
BENCHMARK(BM_CopyBatch);
}  // namespace

BENCHMARK_MAIN();
