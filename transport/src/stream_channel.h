// The Channel over N authenticated connections, shared by the TCP and io_uring backends.
//
// Per stream, a writer thread drains a bounded queue (several frames per write, so one system
// call or one io_uring submission carries a batch) and a reader thread parses, verifies and
// delivers frames. Receivers acknowledge cumulatively per stream; Flush waits for those acks.
// The first error on any stream breaks the whole channel: every connection is shut down and
// every caller sees that error.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "connection.h"
#include "elsa/transport/transport.h"
#include "frame.h"

namespace elsa::transport {

class StreamChannel final : public Channel {
 public:
  // `peer_agent`: the other end's name from its TLS certificate (empty without TLS).
  StreamChannel(std::vector<std::unique_ptr<Connection>> connections, const ChannelOptions& options,
                std::string peer_agent = {});
  ~StreamChannel() override;

  int streams() const override { return static_cast<int>(streams_.size()); }
  std::string peer_agent() const override { return peer_agent_; }
  Status Send(std::vector<uint8_t> data, int stream) override;
  Status SendPages(PageBatch pages, int stream) override;
  Result<Message> Receive(std::chrono::milliseconds timeout) override;
  Status Flush(std::chrono::milliseconds timeout) override;
  Status Close(std::chrono::milliseconds timeout) override;
  ChannelStats Stats() const override;

 private:
  struct OutFrame {
    FrameType type = FrameType::kData;
    uint64_t sequence = 0;
    std::vector<uint8_t> data;
    PageBatch pages;
  };

  // Decides per frame whether lz4 pays: only if it shrinks the payload, and only if compressing
  // is faster than the link would have been for the bytes it saves (measured, per stream).
  struct CompressionPolicy {
    Compression mode = Compression::kAdaptive;
    int skip = 0;
    int backoff = 1;
    double ratio = 0.5;         // EWMA of wire/raw for compressed frames
    double compress_bps = 0;    // EWMA of lz4 input bytes per second
    // Bytes written and seconds spent writing them, both decaying. Weighted by time, not by
    // sample: writes into a socket buffer with room are instant and would make any link look as
    // fast as memory; the writes that block are the ones that say how fast the link is.
    double written_bytes = 0;
    double write_seconds = 0;
    double wire_bps() const { return write_seconds > 0 ? written_bytes / write_seconds : 0; }
    bool ShouldTry();
    void Record(bool tried, bool shrank, size_t raw, size_t wire, double seconds);
    void RecordWrite(size_t bytes, double seconds);
  };

  struct Stream {
    int index = 0;
    std::unique_ptr<Connection> conn;
    std::mutex mu;  // queue, ack_to_send, ack_sent, stop
    std::condition_variable cv;
    std::deque<OutFrame> queue;
    uint64_t next_sequence = 1;
    uint64_t ack_to_send = 0;
    uint64_t ack_sent = 0;     // taken by the writer
    uint64_t ack_written = 0;  // on the wire
    bool stop = false;
    // Guarded by the channel's mu_.
    uint64_t queued = 0;       // highest sequence queued
    uint64_t acked = 0;        // highest sequence the peer acknowledged
    uint64_t received = 0;     // highest sequence received from the peer
    bool peer_closed = false;  // the peer's CLOSE arrived
    uint64_t close_sequence = 0;
    CompressionPolicy compression;
    std::thread writer;
    std::thread reader;
  };

  Status Enqueue(OutFrame frame, int stream);
  void WriterLoop(Stream& s);
  void ReaderLoop(Stream& s);
  Status ReadFrames(Stream& s);
  Status Deliver(Stream& s, const FrameHeader& header, Message message);
  void Fail(Status status);
  // Wakes and stops every writer and shuts every connection down (readers then end too).
  void StopStreams();

  ChannelOptions options_;
  const std::string peer_agent_;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::atomic<uint64_t> round_robin_{0};

  mutable std::mutex mu_;  // inbox, error, per-stream ack state
  std::condition_variable cv_;
  std::deque<Message> inbox_;
  size_t inbox_bytes_ = 0;
  Status error_;
  bool closing_ = false;
  bool stopping_ = false;
  ChannelStats stats_;
};

}  // namespace elsa::transport
