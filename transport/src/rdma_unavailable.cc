// Built instead of rdma_connection.cc when libibverbs is not installed.
#include "connection.h"

namespace elsa::transport {

Status RdmaAvailable() {
  return Status::FailedPrecondition("this build has no RDMA backend: libibverbs-dev was not installed (tools/bootstrap installs it)");
}

Result<std::unique_ptr<Connection>> MakeRdmaConnection(UniqueFd, Deadline) { return RdmaAvailable(); }

}  // namespace elsa::transport
