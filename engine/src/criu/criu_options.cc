#include "criu/criu_options.h"

namespace elsa {

void ApplySessionPolicy(criu_opts* opts) {
  opts->set_tcp_established(true);
  opts->set_ext_unix_sk(true);
  opts->set_shell_job(true);
  opts->set_file_locks(true);
  opts->set_network_lock(NFTABLES);
  // Notifications give us phase timing (network lock, post-dump, post-restore).
  opts->set_notify_scripts(true);
  opts->set_log_level(4);
}

criu_req BuildDumpRequest(const CriuDumpRequest& request) {
  criu_req req;
  req.set_type(DUMP);
  criu_opts* opts = req.mutable_opts();
  opts->set_images_dir_fd(request.images_dir_fd);
  opts->set_work_dir_fd(request.work_dir_fd);
  opts->set_pid(request.pid);
  opts->set_leave_running(request.leave_running);
  if (request.leave_stopped) opts->set_leave_stopped(true);
  if (request.page_server_fd >= 0) {
    criu_page_server_info* ps = opts->mutable_ps();
    ps->set_fd(request.page_server_fd);
    ps->set_port(0);  // unused with a socket; CRIU's RPC reads it anyway
  }
  if (request.lazy_pages_fd >= 0) opts->set_lazy_pages(true);
  if (!request.config_file.empty()) opts->set_config_file(request.config_file);
  opts->set_log_file(CriuDriver::kDumpLog);
  ApplySessionPolicy(opts);
  return req;
}

std::string LazyDumpConfig(int lazy_pages_fd) { return "ps-socket " + std::to_string(lazy_pages_fd) + "\n"; }

criu_req BuildRestoreRequest(const CriuRestoreRequest& request) {
  criu_req req;
  req.set_type(RESTORE);
  criu_opts* opts = req.mutable_opts();
  opts->set_images_dir_fd(request.images_dir_fd);
  opts->set_work_dir_fd(request.work_dir_fd);
  opts->set_log_file(CriuDriver::kRestoreLog);
  // The restored root becomes our child (CLONE_PARENT from `criu swrk`), so the agent can reap
  // and supervise it exactly like a session it started itself.
  opts->set_rst_sibling(true);
  if (request.lazy_pages) opts->set_lazy_pages(true);
  for (const auto& [key, fd] : request.inherit_fds) {
    inherit_fd* in = opts->add_inherit_fd();
    in->set_key(key);
    in->set_fd(fd);
  }
  ApplySessionPolicy(opts);
  return req;
}

}  // namespace elsa
