// What one core pays per byte for the two things the transport does to every page: an xxh3
// checksum (every frame) and lz4 (when compression is on). Page-sized calls show the per-call
// overhead the channel really sees; 1 MiB buffers show the codec's streaming speed.
//
// Content matters for lz4, so every benchmark runs on several kinds of pages:
//   random  incompressible, the worst case for lz4 and what the adaptive mode must back off on
//   heap    a real Python heap dump when $ELSA_HEAP_PAGES names one (bench/transport/run sets it;
//           made by make_heap_pages.py), otherwise synthetic CPython-like objects
//   text    log lines, the best realistic case
// Each pool is 256 pages (1 MiB): it stays in cache, so this measures the code, not DRAM.
#include <benchmark/benchmark.h>
#include <lz4.h>
#include <xxhash.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kPoolPages = 256;
constexpr size_t kPoolBytes = kPoolPages * kPage;

struct Pool {
  std::string kind;
  std::vector<uint8_t> bytes;  // kPoolBytes
  const uint8_t* page(size_t i) const { return bytes.data() + (i % kPoolPages) * kPage; }
};

Pool RandomPool() {
  Pool pool{"random", std::vector<uint8_t>(kPoolBytes)};
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < kPoolBytes; i += sizeof(uint64_t)) {
    const uint64_t v = rng();
    std::memcpy(pool.bytes.data() + i, &v, sizeof v);
  }
  return pool;
}

// CPython objects as they sit in pymalloc arenas: a refcount, a type pointer from a handful of
// types, then pointers into nearby memory, small ints, doubles and short ASCII strings.
Pool SyntheticHeapPool() {
  Pool pool{"heap-synthetic", std::vector<uint8_t>(kPoolBytes)};
  std::mt19937_64 rng(2);
  constexpr std::array<uint64_t, 6> kTypes = {0x55d0c3a1e2a0, 0x55d0c3a1f340, 0x55d0c3a20b60,
                                              0x55d0c3a1c9e0, 0x55d0c3a22d80, 0x55d0c3a18700};
  constexpr std::string_view kWords[] = {"alice", "bob", "carol", "price", "volume", "2024-03-01",
                                         "GET /api/v1/items", "status=200", "user-000123", "NaN"};
  uint8_t* p = pool.bytes.data();
  size_t at = 0;
  auto put64 = [&](uint64_t v) {
    if (at + 8 <= kPoolBytes) std::memcpy(p + at, &v, 8);
    at += 8;
  };
  while (at + 64 <= kPoolBytes) {
    put64(1 + rng() % 4);                  // ob_refcnt
    put64(kTypes[rng() % kTypes.size()]);  // ob_type
    switch (rng() % 4) {
      case 0:  // a container: pointers to neighbours
        for (int i = 0; i < 4; ++i) put64(0x7f3a10000000 + (rng() % (1u << 20)) * 16);
        break;
      case 1: {  // a float and an int
        const double d = static_cast<double>(rng() % 100000) / 100.0;
        uint64_t bits = 0;
        std::memcpy(&bits, &d, 8);
        put64(bits);
        put64(rng() % 1000);
        put64(0);
        put64(0);
        break;
      }
      case 2: {  // a str: length, hash, then ASCII
        const std::string_view w = kWords[rng() % std::size(kWords)];
        put64(w.size());
        put64(rng());
        std::memcpy(p + at, w.data(), w.size());
        at += 32;
        break;
      }
      default:  // a freed block: zeros
        at += 32;
        break;
    }
  }
  return pool;
}

Pool TextPool() {
  Pool pool{"text", std::vector<uint8_t>(kPoolBytes)};
  std::mt19937_64 rng(3);
  std::string text;
  char line[160];
  while (text.size() < kPoolBytes) {
    const int n = std::snprintf(line, sizeof line,
                                "2024-03-%02d %02d:%02d:%02d INFO worker-%u handled GET /api/v1/items/%u "
                                "status=200 latency_ms=%u.%02u\n",
                                static_cast<int>(1 + rng() % 28), static_cast<int>(rng() % 24),
                                static_cast<int>(rng() % 60), static_cast<int>(rng() % 60),
                                static_cast<unsigned>(rng() % 16), static_cast<unsigned>(rng() % 100000),
                                static_cast<unsigned>(rng() % 50), static_cast<unsigned>(rng() % 100));
    text.append(line, static_cast<size_t>(n));
  }
  std::memcpy(pool.bytes.data(), text.data(), kPoolBytes);
  return pool;
}

// kPoolPages pages spread evenly over a heap dump, so the pool has the dump's mix rather than
// its first megabyte. Empty if the file is missing or too small.
Pool HeapFilePool(const char* path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return {};
  const auto size = static_cast<size_t>(in.tellg());
  const size_t pages = size / kPage;
  if (pages < kPoolPages) return {};
  Pool pool{"heap", std::vector<uint8_t>(kPoolBytes)};
  for (size_t i = 0; i < kPoolPages; ++i) {
    in.seekg(static_cast<std::streamoff>((i * pages / kPoolPages) * kPage));
    in.read(reinterpret_cast<char*>(pool.bytes.data() + i * kPage), static_cast<std::streamsize>(kPage));
    if (!in) return {};
  }
  return pool;
}

// The lz4 frames of one pool, compressed either page by page or as one buffer.
struct Compressed {
  std::vector<std::vector<char>> frames;
  size_t total = 0;
};

Compressed Compress(const Pool& pool, size_t chunk) {
  Compressed c;
  for (size_t off = 0; off < kPoolBytes; off += chunk) {
    std::vector<char> out(static_cast<size_t>(LZ4_compressBound(static_cast<int>(chunk))));
    const int n = LZ4_compress_default(reinterpret_cast<const char*>(pool.bytes.data() + off), out.data(),
                                       static_cast<int>(chunk), static_cast<int>(out.size()));
    out.resize(static_cast<size_t>(n));
    c.total += out.size();
    c.frames.push_back(std::move(out));
  }
  return c;
}

void Xxh3(benchmark::State& state, const Pool& pool, size_t chunk) {
  size_t i = 0;
  for (auto _ : state) {
    const uint8_t* src = chunk == kPage ? pool.page(i++) : pool.bytes.data();
    benchmark::DoNotOptimize(XXH3_64bits(src, chunk));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * chunk));
}

void Lz4Compress(benchmark::State& state, const Pool& pool, size_t chunk) {
  std::vector<char> out(static_cast<size_t>(LZ4_compressBound(static_cast<int>(chunk))));
  size_t i = 0;
  uint64_t in_bytes = 0;
  uint64_t out_bytes = 0;
  for (auto _ : state) {
    const uint8_t* src = chunk == kPage ? pool.page(i++) : pool.bytes.data();
    const int n = LZ4_compress_default(reinterpret_cast<const char*>(src), out.data(), static_cast<int>(chunk),
                                       static_cast<int>(out.size()));
    benchmark::DoNotOptimize(n);
    in_bytes += chunk;
    out_bytes += static_cast<uint64_t>(n);
  }
  state.SetBytesProcessed(static_cast<int64_t>(in_bytes));
  if (out_bytes > 0) state.counters["ratio"] = static_cast<double>(in_bytes) / static_cast<double>(out_bytes);
}

void Lz4Decompress(benchmark::State& state, const Pool& pool, size_t chunk) {
  const Compressed c = Compress(pool, chunk);
  std::vector<char> out(chunk);
  size_t i = 0;
  for (auto _ : state) {
    const std::vector<char>& frame = c.frames[i++ % c.frames.size()];
    const int n = LZ4_decompress_safe(frame.data(), out.data(), static_cast<int>(frame.size()),
                                      static_cast<int>(chunk));
    if (n != static_cast<int>(chunk)) {
      state.SkipWithError("lz4 round trip failed");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * chunk));
  state.counters["ratio"] = static_cast<double>(kPoolBytes) / static_cast<double>(c.total);
}

// The check a sender makes before shipping a page as "zero", at its worst: a zero page, where
// the compare must read all of it (any other page stops at its first non-zero byte).
void ZeroScan(benchmark::State& state) {
  const std::vector<uint8_t> zero(kPoolBytes, 0);
  const std::vector<uint8_t> reference(kPage, 0);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(std::memcmp(zero.data() + (i++ % kPoolPages) * kPage, reference.data(), kPage));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kPage));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Pool> pools;
  pools.push_back(RandomPool());
  const char* heap_path = std::getenv("ELSA_HEAP_PAGES");
  Pool heap = heap_path != nullptr ? HeapFilePool(heap_path) : Pool{};
  if (heap_path != nullptr && heap.bytes.empty()) {
    std::fprintf(stderr, "bench_transport_micro: cannot read %zu pages from ELSA_HEAP_PAGES=%s; using synthetic heap pages\n",
                 kPoolPages, heap_path);
  }
  pools.push_back(heap.bytes.empty() ? SyntheticHeapPool() : std::move(heap));
  pools.push_back(TextPool());

  // Benchmarks capture their pool by reference: `pools` outlives RunSpecifiedBenchmarks.
  for (const Pool& pool : pools) {
    for (const auto& [unit, chunk] : {std::pair<const char*, size_t>{"page", kPage}, {"1MiB", kPoolBytes}}) {
      const std::string suffix = std::string("/") + unit + "/" + pool.kind;
      benchmark::RegisterBenchmark(("xxh3" + suffix).c_str(), [&pool, chunk = chunk](benchmark::State& s) {
        Xxh3(s, pool, chunk);
      });
      benchmark::RegisterBenchmark(("lz4_compress" + suffix).c_str(), [&pool, chunk = chunk](benchmark::State& s) {
        Lz4Compress(s, pool, chunk);
      });
      benchmark::RegisterBenchmark(("lz4_decompress" + suffix).c_str(), [&pool, chunk = chunk](benchmark::State& s) {
        Lz4Decompress(s, pool, chunk);
      });
    }
  }
  benchmark::RegisterBenchmark("zero_scan/page/zero", ZeroScan);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
