#include "elsa/page_server/criu_stats.h"

#include "elsa/file_util.h"
#include "protobuf_wire.h"

namespace elsa::page_server {

namespace {
// CRIU's magic.h: service images (stats, irmap cache) open with IMG_SERVICE_MAGIC.
constexpr uint32_t kImgServiceMagic = 0x55105940;
constexpr uint32_t kStatsMagic = 0x57093306;
constexpr double kMicro = 1e-6;
}  // namespace

Result<CriuDumpStats> ParseCriuDumpStats(std::span<const uint8_t> bytes) {
  ELSA_ASSIGN_OR_RETURN(auto records, wire::ImageRecords(bytes, kStatsMagic, kCriuDumpStatsFile, kImgServiceMagic));
  if (records.size() != 1) return Status::Corruption("stats-dump should hold one record, not " + std::to_string(records.size()));
  // stats.proto: stats_entry { optional dump_stats_entry dump = 1; ... }
  std::span<const uint8_t> dump;
  bool found = false;
  if (!wire::ForEachField(records[0], [&](const wire::Field& f) {
        if (f.number == 1 && f.wire_type == 2) {
          dump = f.bytes;
          found = true;
        }
      }))
    return Status::Corruption("stats-dump: malformed stats_entry");
  if (!found) return Status::Corruption("stats-dump has no dump statistics (a restore's stats?)");
  CriuDumpStats stats;
  if (!wire::ForEachField(dump, [&](const wire::Field& f) {
        if (f.wire_type != 0) return;
        switch (f.number) {
          case 1: stats.freezing_seconds = static_cast<double>(f.varint) * kMicro; break;
          case 2: stats.frozen_seconds = static_cast<double>(f.varint) * kMicro; break;
          case 3: stats.memdump_seconds = static_cast<double>(f.varint) * kMicro; break;
          case 4: stats.memwrite_seconds = static_cast<double>(f.varint) * kMicro; break;
          case 5: stats.pages_scanned = f.varint; break;
          case 7: stats.pages_written = f.varint; break;
          case 9: stats.pages_lazy = f.varint; break;
          default: break;
        }
      }))
    return Status::Corruption("stats-dump: malformed dump_stats_entry");
  return stats;
}

Result<CriuDumpStats> ReadCriuDumpStats(const std::string& dir) {
  ELSA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(dir + "/" + kCriuDumpStatsFile));
  return ParseCriuDumpStats(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

}  // namespace elsa::page_server
