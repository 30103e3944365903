// A half's steps after the freeze: whatever a step does to fail (an error, an exception), the
// rollback runs, and a frozen tree left to a StoppedTree runs again on every way out.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "migrate/steps.h"
#include "migrate/stopped_tree.h"
#include "migrate_test_util.h"

namespace elsa::testing {
namespace {

struct Half {
  std::vector<std::string> ran;
  Status Connect() {
    ran.push_back("connect");
    return Status::Ok();
  }
  Status Freeze() {
    ran.push_back("freeze");
    throw std::runtime_error("vector::_M_realloc_insert");
  }
  Status Fails() {
    ran.push_back("fails");
    return Status::Timeout("no answer");
  }
  Status Commit() {
    ran.push_back("commit");
    return Status::Ok();
  }
};

TEST(RunSteps, AnExceptionInAStepIsAnErrorAndEndsTheSteps) {
  Half half;
  Status st = RunSteps(&half, {&Half::Connect, &Half::Freeze, &Half::Commit});
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("vector::_M_realloc_insert"), std::string::npos) << st.message();
  EXPECT_EQ(half.ran, (std::vector<std::string>{"connect", "freeze"}));
}

TEST(RunSteps, TheFirstErrorEndsTheSteps) {
  Half half;
  Status st = RunSteps(&half, {&Half::Connect, &Half::Fails, &Half::Commit});
  EXPECT_EQ(st.code(), StatusCode::kTimeout);
  EXPECT_EQ(half.ran, (std::vector<std::string>{"connect", "fails"}));
}

char StateOf(pid_t pid) {
  Result<std::string> stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (!stat.ok()) return '?';
  return stat->substr(stat->rfind(')') + 2, 1)[0];
}

void WaitForState(pid_t pid, const std::string& states) {
  for (int i = 0; i < 200 && states.find(StateOf(pid)) == std::string::npos; ++i) ::usleep(10000);
}

TEST(StoppedTree, ATreeItHoldsRunsAgainWhenAnExceptionUnwindsPastIt) {
  MemoryHolder tree;
  MemoryHolder::Start({1}, {}, &tree);
  if (HasFatalFailure()) return;
  tree.Stop();
  WaitForState(tree.holder().pid, "Tt");
  ASSERT_NE(std::string("Tt").find(StateOf(tree.holder().pid)), std::string::npos);
  try {
    StoppedTree stopped{Logger()};
    stopped.Take(tree.holder().pid, "");
    throw std::runtime_error("between the freeze and the commit");
  } catch (const std::runtime_error&) {
  }
  WaitForState(tree.holder().pid, "SR");
  EXPECT_NE(std::string("SR").find(StateOf(tree.holder().pid)), std::string::npos) << StateOf(tree.holder().pid);
}

TEST(StoppedTree, LeaveStoppedLetsGoWithoutResuming) {
  MemoryHolder tree;
  MemoryHolder::Start({1}, {}, &tree);
  if (HasFatalFailure()) return;
  tree.Stop();
  WaitForState(tree.holder().pid, "Tt");
  {
    StoppedTree stopped{Logger()};
    stopped.Take(tree.holder().pid, "");
    stopped.LeaveStopped();
  }
  ::usleep(100000);
  EXPECT_NE(std::string("Tt").find(StateOf(tree.holder().pid)), std::string::npos) << StateOf(tree.holder().pid);
}

}  // namespace
}  // namespace elsa::testing
