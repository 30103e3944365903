"""jupyter-server with room for hundreds of kernel websockets.

Each kernel websocket costs jupyter-server four ZMQ sockets, and a ZMQ context allows 1023 by
default: 200 websockets (and their reconnects) exceed it ("Too many open files"). This raises
the limit on every context before starting the real server, unchanged otherwise."""

import sys

import zmq

_init = zmq.Context.__init__


def _init_with_room(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.set(zmq.MAX_SOCKETS, 16384)


zmq.Context.__init__ = _init_with_room

from jupyter_server.serverapp import main  # noqa: E402

sys.exit(main())
