// A process tree for page-server tests against the real CRIU: a Python process holding 48 MiB
// of known bytes, started the way the engine starts sessions, and the CLI calls around it.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "elsa/engine/criu_driver.h"
#include "elsa/engine/session_process.h"
#include "test_util.h"

namespace elsa::page_server {

using namespace std::chrono_literals;
using elsa::testing::TempDir;

// A Python process holding 48 MiB of known bytes; on SIGUSR1 it writes the sha256 of those bytes
// now, and as they were at start, to `report`.
constexpr const char* kHolder = R"(
import hashlib, os, signal, sys, time
data = bytearray(os.urandom(4096)) * (12 * 1024)
for i in range(0, len(data), 4096 * 3):
    data[i] = (i // 4096) % 251
start = hashlib.sha256(data).hexdigest()
def report(*_):
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(hashlib.sha256(data).hexdigest() + " " + start)
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.signal(signal.SIGUSR1, report)
open(sys.argv[1] + ".ready", "w").write(start)
while True:
    time.sleep(0.1)
)";

inline int RunCommand(const std::vector<std::string>& argv, std::chrono::seconds timeout = 120s) {
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(20ms);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline bool WaitForFile(const std::string& path, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// What a failed CRIU run's log says: its error lines with context, and its last lines.
inline std::string CriuLogSummary(const std::string& path) {
  const std::string log = Slurp(path);
  const size_t tail = log.size() > 1500 ? log.size() - 1500 : 0;
  return path + ":\n" + SummarizeCriuLog(log, 30) + "\n...\n" + log.substr(tail);
}

class ReceiverWithCriu : public ::testing::Test {
 protected:
  void SetUp() override {
    ELSA_REQUIRE_ROOT();
    auto bin = CriuDriver::Locate({"", ELSA_DEFAULT_CRIU_PREFIX});
    ASSERT_TRUE(bin.ok()) << bin.status().message();
    criu_ = *bin;
    // The holder writes nothing to its output; /dev/null keeps the agent's pipe out of the tree.
    auto pipe = OutputPipe::Create();
    ASSERT_TRUE(pipe.ok());
    const std::string script = "exec /usr/bin/python3 -c '" + std::string(kHolder) + "' " + (dir_ / "report") +
                               " >/dev/null 2>&1";
    // Its own working directory: CRIU's parasite makes `proc.crtools` in the dumped task's cwd,
    // so two dumps of tasks sharing one (tests run in parallel) would collide.
    auto pid = SpawnInPidNamespace({{"/bin/sh", "-c", script}, {"PATH=/usr/bin:/bin"}, dir_.path()}, *pipe);
    ASSERT_TRUE(pid.ok()) << pid.status().message();
    holder_ = *pid;
    ASSERT_TRUE(WaitForFile(dir_ / "report.ready", 30s)) << "the holder did not start";
    ASSERT_TRUE(std::filesystem::create_directories(dir_ / "images"));
  }
  void TearDown() override {
    if (holder_ > 0) {
      ::kill(holder_, SIGKILL);
      ::waitpid(holder_, nullptr, 0);
    }
    if (restored_ > 0) ::kill(restored_, SIGKILL);
  }

  // criu dump of the holder into a page server at `port`; images other than memory go to `dir`.
  int DumpTo(uint16_t port, const std::string& dir, bool leave_running) {
    std::vector<std::string> argv = {criu_, "dump", "-t", std::to_string(holder_), "-D", dir, "--shell-job",
                                     "--page-server", "--address", "127.0.0.1", "--port", std::to_string(port),
                                     "-v4", "-o", "dump.log"};
    if (leave_running) argv.push_back("--leave-running");
    return RunCommand(argv);
  }

  // `criu restore` of `dir` (plus `extra` options), detached; returns the restored pid or -1.
  pid_t RestoreFrom(const std::string& dir, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {criu_, "restore", "-D", dir, "--shell-job", "--restore-detached", "--pidfile",
                                     dir + "/restored.pid", "-v4", "-o", "restore.log"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    if (RunCommand(argv) != 0) return -1;
    restored_ = std::stoi(Slurp(dir + "/restored.pid"));
    return restored_;
  }

  // The holder's bytes, asked for by signal after a restore, are what they were at its start.
  void ExpectMemoryIntact(pid_t pid) {
    std::filesystem::remove(dir_ / "report");
    ASSERT_EQ(::kill(pid, SIGUSR1), 0);
    ASSERT_TRUE(WaitForFile(dir_ / "report", 60s)) << "the restored holder did not answer";
    const std::string report = Slurp(dir_ / "report");
    const auto space = report.find(' ');
    ASSERT_NE(space, std::string::npos);
    EXPECT_EQ(report.substr(0, space), report.substr(space + 1)) << "memory changed across dump and restore";
  }

  void HolderGone() {  // after a dump without --leave-running, CRIU has ended it
    ::waitpid(holder_, nullptr, 0);
    holder_ = -1;
  }

  std::string criu_;
  TempDir dir_;
  pid_t holder_ = -1;
  pid_t restored_ = -1;
};


}  // namespace elsa::page_server
