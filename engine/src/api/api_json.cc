#include <map>

#include "elsa/engine/api.h"
#include "elsa/file_util.h"

namespace elsa {

using nlohmann::json;

namespace {
json EventsJson(const std::vector<std::pair<std::string, double>>& events) {
  json out = json::array();
  for (const auto& [name, t] : events) out.push_back({{"event", name}, {"at_seconds", t}});
  return out;
}
}  // namespace

json ToJson(const SessionInfo& s) {
  json j = {{"name", s.name},       {"pid", s.pid},
            {"state", SessionStateName(s.state)}, {"command", s.command},
            {"workdir", s.workdir}, {"started_at", s.started_at},
            {"uptime_seconds", s.uptime_seconds}, {"processes", s.processes},
            {"rss_bytes", s.rss_bytes}, {"log", s.log_path},
            {"restored_from", s.restored_from}, {"last_checkpoint", s.last_checkpoint}};
  if (!s.restored_from.empty())
    j["lazy"] = {{"paging_in", s.paging_in}, {"pages_served", s.lazy_pages_served},
                 {"seconds", s.lazy_seconds}, {"error", s.lazy_error}};
  if (s.state == SessionState::kExited) {
    j["exit_code"] = s.exit_code;
    j["exit_signal"] = s.exit_signal;
    if (!s.exit_note.empty()) j["exit_note"] = s.exit_note;
  }
  return j;
}

json ToJson(const Manifest& m, bool with_files) {
  json j = {{"id", m.id},
            {"session", m.session_name},
            {"created_at", m.created_at},
            {"host", m.host},
            {"kernel", m.kernel},
            {"criu_version", m.criu_version},
            {"command", m.command},
            {"leave_running", m.leave_running},
            {"dump_seconds", m.dump_seconds},
            {"network_lock_table", m.network_lock_table},
            {"pages", {{"in_store", m.pages_in_store}, {"count", m.pages}, {"new", m.pages_new}}},
            {"files", m.files.size()},
            {"size_bytes", m.TotalBytes()}};
  if (with_files) {
    json files = json::array();
    for (const auto& f : m.files) files.push_back({{"name", f.name}, {"size", f.size}, {"xxh3", HexU64(f.xxh3)}});
    j["file_list"] = files;
  }
  return j;
}

json ToJson(const CheckpointReport& r) {
  return {{"checkpoint", ToJson(r.manifest, false)},
          {"timings", {{"dump_seconds", r.dump_seconds}, {"commit_seconds", r.commit_seconds},
                       {"total_seconds", r.total_seconds}}},
          {"criu_events", EventsJson(r.criu_events)}};
}

json ToJson(const RestoreReport& r) {
  return {{"session", ToJson(r.session)},
          {"checkpoint_id", r.checkpoint_id},
          {"lazy", r.lazy},
          {"pages", {{"materialized", r.pages_materialized}, {"lazy", r.pages_lazy}}},
          {"timings", {{"verify_seconds", r.verify_seconds}, {"materialize_seconds", r.materialize_seconds},
                       {"restore_seconds", r.restore_seconds}, {"total_seconds", r.total_seconds}}},
          {"criu_events", EventsJson(r.criu_events)}};
}

json ToJson(const CollectReport& r) {
  return {{"checkpoints_scanned", r.checkpoints}, {"live_pages", r.live_pages},
          {"pages_before", r.pages_before},       {"pages_after", r.pages_after},
          {"bytes_reclaimed", r.bytes_reclaimed}, {"seconds", r.seconds}};
}

json ErrorJson(const Status& status) {
  return {{"ok", false}, {"error", {{"code", StatusCodeName(status.code())}, {"message", status.message()}}}};
}

Status StatusFromErrorJson(const json& error) {
  static const std::map<std::string, StatusCode> kCodes = [] {
    std::map<std::string, StatusCode> m;
    for (int c = 0; c <= static_cast<int>(StatusCode::kInternal); ++c)
      m[std::string(StatusCodeName(static_cast<StatusCode>(c)))] = static_cast<StatusCode>(c);
    return m;
  }();
  std::string code = error.value("code", "internal");
  std::string message = error.value("message", "the agent gave no reason");
  auto it = kCodes.find(code);
  StatusCode c = it == kCodes.end() || it->second == StatusCode::kOk ? StatusCode::kInternal : it->second;
  return Status(c, message);
}

json ToJson(const MigrateReport& r) {
  json rounds = json::array();
  for (const auto& round : r.rounds)
    rounds.push_back({{"pages_scanned", round.pages_scanned}, {"pages_sent", round.pages_sent}, {"seconds", round.seconds}});
  return {{"session", r.session},
          {"destination", r.destination},
          {"address", r.address},
          {"mode", MigrationModeName(r.mode)},
          {"checkpoint", r.checkpoint_id},
          {"pid", r.pid},
          {"downtime_seconds", r.downtime_seconds},
          {"total_seconds", r.total_seconds},
          {"phases", {{"precopy_seconds", r.precopy_seconds},
                      {"freeze_seconds", r.freeze_seconds},
                      {"dump_seconds", r.dump_seconds},
                      {"transfer_seconds", r.transfer_seconds},
                      {"restore_seconds", r.restore_seconds},
                      {"resume_seconds", r.resume_seconds},
                      {"postcopy_seconds", r.postcopy_seconds}}},
          {"precopy_rounds", rounds},
          {"bytes",
           {{"precopy", r.bytes_precopy}, {"stop", r.bytes_stop}, {"postcopy", r.bytes_postcopy}, {"wire", r.wire_bytes}}},
          {"pages",
           {{"dumped", r.pages_dumped},
            {"deduplicated", r.pages_deduplicated},
            {"lazy", r.pages_lazy},
            {"in_images", r.pages_in_images},
            {"postcopy", r.pages_postcopy},
            {"faulted", r.pages_faulted}}}};
}

json ToJson(const ProgressEvent& e) {
  json j = {{"event", "progress"}, {"phase", e.phase}, {"detail", e.detail}};
  if (e.round) j["round"] = *e.round;
  if (e.bytes_done) j["bytes_done"] = *e.bytes_done;
  if (e.bytes_total) j["bytes_total"] = *e.bytes_total;
  if (e.pages) j["pages"] = *e.pages;
  if (e.rate_bytes_per_s) j["rate_bytes_per_s"] = *e.rate_bytes_per_s;
  if (e.eta_seconds) j["eta_seconds"] = *e.eta_seconds;
  if (e.seconds) j["seconds"] = *e.seconds;
  return j;
}

}  // namespace elsa
