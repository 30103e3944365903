// What the agent keeps on disk of each session it runs, so that a new agent on the same state
// directory adopts the sessions the old one left running (STATE_DIR/sessions/NAME.json, written
// atomically whenever it changes, removed when the session is forgotten).
#pragma once

#include <string>
#include <vector>

#include "elsa/engine/session.h"
#include "elsa/log.h"
#include "elsa/status.h"
#include "session/session_monitor.h"

namespace elsa {

struct SessionRecord {
  SessionInfo info;  // name, command, workdir, started_at, restored_from, last_checkpoint
  ProcessIdentity root;
  ProcessIdentity monitor;
};

std::string SessionRecordPath(const std::string& state_dir, const std::string& name);
std::string SessionExitPath(const std::string& state_dir, const std::string& name);
Status WriteSessionRecord(const std::string& state_dir, const SessionRecord& record);
void RemoveSessionRecord(const std::string& state_dir, const std::string& name);
// Every record in the state directory; unreadable ones are reported to `log` and skipped.
std::vector<SessionRecord> ReadSessionRecords(const std::string& state_dir, const Logger& log);

}  // namespace elsa
