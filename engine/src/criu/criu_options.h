// Builds CRIU RPC requests. Kept apart from the process plumbing so the policy can be tested.
#pragma once

#include "elsa/engine/criu_driver.h"
#include "rpc.pb.h"

namespace elsa {

// What every Jupyter session needs from CRIU, whatever the caller asked for: a notebook server
// holds established TCP connections (browser, kernel ZMQ sockets), may hold unix sockets to
// the outside, is a session leader, and its network must be locked with nftables (iptables is
// not installed on our hosts).
void ApplySessionPolicy(criu_opts* opts);

criu_req BuildDumpRequest(const CriuDumpRequest& request);
criu_req BuildRestoreRequest(const CriuRestoreRequest& request);

}  // namespace elsa
