#include "criu/criu_options.h"

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
  CriuDumpRequest r;
  r.pid = 4321;
  r.images_dir_fd = 7;
  r.work_dir_fd = 8;
  r.leave_running = true;
  criu_req req = BuildDumpRequest(r);
  EXPECT_EQ(req.type(), DUMP);
  const criu_opts& o = req.opts();
  EXPECT_EQ(o.pid(), 4321);
  EXPECT_EQ(o.images_dir_fd(), 7);
  EXPECT_EQ(o.work_dir_fd(), 8);
  EXPECT_TRUE(o.leave_running());
  EXPECT_EQ(o.log_file(), CriuDriver::kDumpLog);
  EXPECT_FALSE(o.has_ps()) << "no page server unless asked";
  ExpectSessionPolicy(o);
}

TEST(CriuOptions, DumpSendsPagesOnTheSocketItIsHandedAndNamesNoAddress) {
  CriuDumpRequest r;
  r.pid = 1;
  r.page_server_fd = 17;
  criu_req req = BuildDumpRequest(r);
  ASSERT_TRUE(req.opts().has_ps());
  EXPECT_EQ(req.opts().ps().fd(), 17);
  EXPECT_FALSE(req.opts().ps().has_address()) << "nothing listens: CRIU is handed its connection";
}

TEST(CriuOptions, ALazyDumpServesItsPagesOnTheSocketItsConfigFileNames) {
  CriuDumpRequest r;
  r.pid = 1;
  r.lazy_pages_fd = 18;
  r.config_file = "/tmp/x/lazy.conf";
  criu_req req = BuildDumpRequest(r);
  EXPECT_TRUE(req.opts().lazy_pages());
  EXPECT_FALSE(req.opts().has_ps()) << "RPC drops a lazy dump's ps.fd; the config file carries it";
  EXPECT_EQ(req.opts().config_file(), "/tmp/x/lazy.conf");
  EXPECT_EQ(LazyDumpConfig(18), "ps-socket 18\n");
  EXPECT_FALSE(BuildDumpRequest(CriuDumpRequest{}).opts().lazy_pages());
}

TEST(CriuOptions, DumpWithoutLeaveRunningEndsTheTree) {
  CriuDumpRequest r;
  r.pid = 1;
  criu_req req = BuildDumpRequest(r);
  EXPECT_FALSE(req.opts().leave_running());
}

TEST(CriuOptions, RestoreIsASiblingAndInheritsTheOutputPipe) {
  CriuRestoreRequest r{5, 6, {{"pipe:[99]", 11}, {"pipe:[100]", 11}}, false, {}};
  criu_req req = BuildRestoreRequest(r);
  EXPECT_EQ(req.type(), RESTORE);
  const criu_opts& o = req.opts();
  EXPECT_TRUE(o.rst_sibling());
  EXPECT_EQ(o.images_dir_fd(), 5);
  EXPECT_EQ(o.log_file(), CriuDriver::kRestoreLog);
  ASSERT_EQ(o.inherit_fd_size(), 2);
  EXPECT_EQ(o.inherit_fd(0).key(), "pipe:[99]");
  EXPECT_EQ(o.inherit_fd(0).fd(), 11);
  EXPECT_FALSE(o.lazy_pages());
  ExpectSessionPolicy(o);
}

TEST(CriuOptions, ALazyRestoreLeavesLazyPagesToTheDaemon) {
  CriuRestoreRequest r{5, 6, {}, /*lazy_pages=*/true, {}};
  EXPECT_TRUE(BuildRestoreRequest(r).opts().lazy_pages());
}

}  // namespace
}  // namespace elsa
