// The per-session monitor (elsa-monitor) as the agent drives it: it runs the session, records
// its exit on disk, and ends a session that still depends on an agent that died.
#include "session/session_monitor.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "elsa/file_util.h"
#include "test_util.h"

namespace elsa {
namespace {

using testing::TempDir;

const std::vector<std::string> kEnv = {"PATH=/usr/bin:/bin", "ELSA_TEST_SECRET=kept-off-the-command-line"};

// Waits for the exit file the monitor writes when its session ends.
std::optional<SessionExit> AwaitExit(const std::string& path, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    auto exit = ReadSessionExit(path);
    if (exit.ok() && exit->has_value()) return **exit;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return std::nullopt;
}

TEST(SessionMonitor, RunsTheSessionAndRecordsItsExitStatus) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  const MonitorFiles files{dir / "s.log", dir / "s.exit"};
  auto started = StartMonitoredSession(ELSA_MONITOR_BINARY,
                                       {{"sh", "-c", "echo pid=$$ secret=$ELSA_TEST_SECRET; exit 3"}, kEnv, dir.path()},
                                       files);
  ASSERT_TRUE(started.ok()) << started.status().message();
  EXPECT_NE(started->session.pid, started->monitor.pid);
  auto exit = AwaitExit(files.exit_path, std::chrono::seconds(10));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code, 3);
  EXPECT_EQ(exit->signal, 0);
  auto log = ReadFile(files.log_path);
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("pid=1 secret=kept-off-the-command-line"), std::string::npos) << *log;
}

TEST(SessionMonitor, AStartThatFailsIsAnErrorAndLeavesNothingRunning) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  auto started = StartMonitoredSession(ELSA_MONITOR_BINARY, {{"no-such-command-anywhere"}, kEnv, dir.path()},
                                       {dir / "s.log", dir / "s.exit"});
  ASSERT_FALSE(started.ok());
  EXPECT_NE(started.status().message().find("not found"), std::string::npos) << started.status().message();
}

TEST(SessionMonitor, ASettledSessionOutlivesItsAgentAndAnUnsettledOneDoesNot) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  const MonitorFiles settled_files{dir / "a.log", dir / "a.exit"};
  const MonitorFiles provisional_files{dir / "b.log", dir / "b.exit"};
  auto settled = StartMonitoredSession(ELSA_MONITOR_BINARY, {{"sleep", "1000"}, kEnv, dir.path()}, settled_files);
  auto provisional = StartMonitoredSession(ELSA_MONITOR_BINARY, {{"sleep", "1000"}, kEnv, dir.path()}, provisional_files);
  ASSERT_TRUE(settled.ok() && provisional.ok());
  SettleLease(settled->lease);
  provisional->lease.Reset();  // what the agent's death does to it

  auto ended = AwaitExit(provisional_files.exit_path, std::chrono::seconds(10));
  ASSERT_TRUE(ended.has_value()) << "a provisional session must end with its agent";
  EXPECT_EQ(ended->signal, SIGKILL);
  EXPECT_NE(ended->note.find("the agent died"), std::string::npos) << ended->note;

  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(settled->session.Alive()) << "a settled session runs on without its agent";
  EXPECT_FALSE(ReadSessionExit(settled_files.exit_path)->has_value());
  ::kill(settled->session.pid, SIGKILL);
  auto killed = AwaitExit(settled_files.exit_path, std::chrono::seconds(10));
  ASSERT_TRUE(killed.has_value());
  EXPECT_EQ(killed->signal, SIGKILL);
  EXPECT_TRUE(killed->note.empty());
}

TEST(SessionMonitor, AWatchReportsTheRecordedExitOnce) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  const MonitorFiles files{dir / "s.log", dir / "s.exit"};
  auto started = StartMonitoredSession(ELSA_MONITOR_BINARY, {{"sh", "-c", "sleep 0.2; exit 7"}, kEnv, dir.path()}, files);
  ASSERT_TRUE(started.ok()) << started.status().message();
  SettleLease(started->lease);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<SessionExit> seen;
  auto watch = MonitorWatch::Start(started->monitor, started->session, files.exit_path, [&](const SessionExit& e) {
    std::lock_guard lock(mu);
    seen.push_back(e);
    cv.notify_all();
  });
  ASSERT_TRUE(watch.ok());
  std::unique_lock lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return !seen.empty(); }));
  EXPECT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].exit_code, 7);
  EXPECT_FALSE(started->monitor.Alive()) << "the monitor ends (and is reaped) after recording the exit";
}

TEST(ProcessIdentity, AReusedPidIsNotTheSameProcess) {
  auto self = IdentifyProcess(::getpid());
  ASSERT_TRUE(self.ok());
  EXPECT_TRUE(self->Alive());
  ProcessIdentity other = *self;
  other.start_ticks += 1;
  EXPECT_FALSE(other.Alive());
  EXPECT_FALSE(IdentifyProcess(0x3fffffff).ok());
}

}  // namespace
}  // namespace elsa
