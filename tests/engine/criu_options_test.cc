#include "criu_options.h"

#include <gtest/gtest.h>

namespace elsa {
namespace {

void ExpectSessionPolicy(const criu_opts& o) {
  EXPECT_TRUE(o.tcp_established());
  EXPECT_TRUE(o.ext_unix_sk());
  EXPECT_TRUE(o.shell_job());
  EXPECT_TRUE(o.file_locks());
  EXPECT_EQ(o.network_lock(), NFTABLES);
  EXPECT_TRUE(o.notify_scripts());
}

TEST(CriuOptions, DumpCarriesTheRequestAndThePolicy) {
  criu_req req = BuildDumpRequest({/*pid=*/4321, /*images=*/7, /*work=*/8, /*leave_running=*/true});
  EXPECT_EQ(req.type(), DUMP);
  const criu_opts& o = req.opts();
  EXPECT_EQ(o.pid(), 4321);
  EXPECT_EQ(o.images_dir_fd(), 7);
  EXPECT_EQ(o.work_dir_fd(), 8);
  EXPECT_TRUE(o.leave_running());
  EXPECT_EQ(o.log_file(), CriuDriver::kDumpLog);
  ExpectSessionPolicy(o);
}

TEST(CriuOptions, DumpWithoutLeaveRunningEndsTheTree) {
  criu_req req = BuildDumpRequest({1, 3, 3, false});
  EXPECT_FALSE(req.opts().leave_running());
}

TEST(CriuOptions, RestoreIsASiblingAndInheritsTheOutputPipe) {
  CriuRestoreRequest r{5, 6, {{"pipe:[99]", 11}, {"pipe:[100]", 11}}};
  criu_req req = BuildRestoreRequest(r);
  EXPECT_EQ(req.type(), RESTORE);
  const criu_opts& o = req.opts();
  EXPECT_TRUE(o.rst_sibling());
  EXPECT_EQ(o.images_dir_fd(), 5);
  EXPECT_EQ(o.log_file(), CriuDriver::kRestoreLog);
  ASSERT_EQ(o.inherit_fd_size(), 2);
  EXPECT_EQ(o.inherit_fd(0).key(), "pipe:[99]");
  EXPECT_EQ(o.inherit_fd(0).fd(), 11);
  ExpectSessionPolicy(o);
}

}  // namespace
}  // namespace elsa
