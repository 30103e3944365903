// A private connection to a CRIU we start. The page-server roles used to listen on a loopback
// port and take the first connection: any local process could connect first and stall a dump,
// or read a session's pages from a lazy server; and a lazy dump's port was found free, released
// and then bound by CRIU, a race. Instead we connect a pair of sockets ourselves and hand CRIU
// its end (RPC `ps.fd`, `--ps-socket`): no port stays open for anyone else to reach.
#pragma once

#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa::page_server {

struct LoopbackPair {
  UniqueFd ours;    // this process's end
  UniqueFd theirs;  // for CRIU: close-on-exec like every fd of ours; ChildProcess keep_fds passes it
                    // to CRIU alone, never to a session started meanwhile
};

// Two connected TCP sockets on 127.0.0.1. TCP rather than a Unix socketpair because CRIU's page
// transfer is written for TCP (corking, splice into the socket). The listener lives only until
// our own connection arrives; a connection from anyone else in that moment is refused.
Result<LoopbackPair> ConnectedLoopbackPair();

// Ends whatever blocks on `fd` in another thread (a read, an accept): shuts the socket down.
void Hangup(int fd);

}  // namespace elsa::page_server
