// What the checkpoint store costs per byte: checksumming a checkpoint's images (done on commit
// and again before every restore) and parsing manifests.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <fstream>
#include <random>
#include <string>

#include "elsa/engine/manifest.h"
#include "elsa/file_util.h"

namespace {

void BM_DigestFile(benchmark::State& state) {
  std::string tmpl = "/tmp/elsa-bench-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl.data());
  const std::string path = dir + "/pages.img";
  std::string data(static_cast<size_t>(state.range(0)), '\0');
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= data.size(); i += 8) {
    uint64_t v = rng();
    data.replace(i, 8, reinterpret_cast<const char*>(&v), 8);
  }
  std::ofstream(path, std::ios::binary) << data;
  for (auto _ : state) {
    auto d = elsa::DigestFile(path);
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
  (void)elsa::RemoveTree(dir);
}
BENCHMARK(BM_DigestFile)->Arg(64 << 20)->Unit(benchmark::kMillisecond);

void BM_ManifestParse(benchmark::State& state) {
  elsa::Manifest m;
  m.id = "alice-20261124-090000-001";
  m.session_name = "alice";
  for (int i = 0; i < state.range(0); ++i) m.files.push_back({"pages-" + std::to_string(i) + ".img", 4096, 42});
  const std::string text = elsa::ManifestToJson(m);
  for (auto _ : state) {
    auto parsed = elsa::ManifestFromJson(text);
    benchmark::DoNotOptimize(parsed);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_ManifestParse)->Arg(64)->Arg(1024);

}  // namespace

BENCHMARK_MAIN();
