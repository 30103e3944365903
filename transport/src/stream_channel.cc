#include "stream_channel.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "page_codec.h"

namespace elsa::transport {
namespace {

constexpr size_t kMaxBatchFrames = 16;
constexpr size_t kMaxBatchBytes = 8u << 20;
constexpr size_t kReadBufferBytes = 1u << 20;
constexpr size_t kInboxLimitBytes = 256u << 20;
constexpr size_t kZeroCopyMinBytes = 64u << 10;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double Ewma(double old, double sample) { return old == 0 ? sample : 0.8 * old + 0.2 * sample; }

// The bytes of one write: frame headers, payload iovecs, and the buffers they point into.
struct WireBatch {
  std::vector<std::array<uint8_t, kFrameHeaderSize>> headers;
  std::vector<std::vector<uint8_t>> owned;
  std::vector<PagePayloadPlan> plans;
  std::vector<iovec> iov;
  size_t bytes = 0;

  explicit WireBatch(size_t frames) {
    // iovecs point into these; they must not reallocate.
    headers.reserve(frames);
    owned.reserve(frames);
    plans.reserve(frames);
  }
  void Add(const FrameHeader& h, const std::vector<iovec>& payload) {
    headers.emplace_back();
    EncodeFrameHeader(h, headers.back().data());
    iov.push_back({headers.back().data(), kFrameHeaderSize});
    iov.insert(iov.end(), payload.begin(), payload.end());
    bytes += kFrameHeaderSize + h.wire_length;
  }
};

uint64_t ChecksumIov(const std::vector<iovec>& iov) {
  if (iov.size() == 1) return PayloadChecksum(iov[0].iov_base, iov[0].iov_len);
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (const auto& v : iov) XXH3_64bits_update(&state, v.iov_base, v.iov_len);
  return XXH3_64bits_digest(&state);
}

}  // namespace

bool StreamChannel::CompressionPolicy::ShouldTry() {
  if (mode == Compression::kOff) return false;
  if (mode == Compression::kAlways) return true;
  if (skip > 0) {
    --skip;
    return false;
  }
  // Compressing saves (1 - ratio) of the bytes at the cost of the time lz4 takes: it only pays
  // if lz4 turns out saved bytes faster than the link would have sent them.
  if (wire_bps() > 0 && compress_bps > 0 && compress_bps * (1 - ratio) < wire_bps()) {
    skip = 32;  // probe again later: the link or the content may change
    return false;
  }
  return true;
}

void StreamChannel::CompressionPolicy::Record(bool tried, bool shrank, size_t raw, size_t wire, double seconds) {
  if (!tried) return;
  if (seconds > 0) compress_bps = Ewma(compress_bps, static_cast<double>(raw) / seconds);
  if (shrank) {
    backoff = 1;
    ratio = Ewma(ratio, static_cast<double>(wire) / static_cast<double>(raw));
  } else if (mode == Compression::kAdaptive) {
    backoff = std::min(backoff * 2, 64);
    skip = backoff;
  }
}

void StreamChannel::CompressionPolicy::RecordWrite(size_t bytes, double seconds) {
  constexpr double kDecay = 0.95;
  written_bytes = written_bytes * kDecay + static_cast<double>(bytes);
  write_seconds = write_seconds * kDecay + seconds;
}

StreamChannel::StreamChannel(std::vector<std::unique_ptr<Connection>> connections, const ChannelOptions& options,
                             std::string peer_agent)
    : options_(options), peer_agent_(std::move(peer_agent)) {
  for (size_t i = 0; i < connections.size(); ++i) {
    auto s = std::make_unique<Stream>();
    s->index = static_cast<int>(i);
    s->conn = std::move(connections[i]);
    s->compression.mode = options.compression;
    streams_.push_back(std::move(s));
  }
  for (auto& s : streams_) {
    s->writer = std::thread([this, st = s.get()] { WriterLoop(*st); });
    s->reader = std::thread([this, st = s.get()] { ReaderLoop(*st); });
  }
}

StreamChannel::~StreamChannel() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  StopStreams();
  for (auto& s : streams_) {
    s->writer.join();
    s->reader.join();
  }
}

void StreamChannel::Fail(Status status) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || !error_.ok()) return;
    error_ = std::move(status);
  }
  StopStreams();
}

void StreamChannel::StopStreams() {
  for (auto& s : streams_) {
    {
      std::lock_guard lock(s->mu);
      s->stop = true;
    }
    s->cv.notify_all();
    s->conn->Abort();
  }
  cv_.notify_all();
}

Status StreamChannel::Enqueue(OutFrame frame, int stream) {
  if (stream >= static_cast<int>(streams_.size()) || stream < -1)
    return Status::InvalidArgument("stream " + std::to_string(stream) + " does not exist");
  if (stream < 0) stream = static_cast<int>(round_robin_.fetch_add(1) % streams_.size());
  Stream& s = *streams_[static_cast<size_t>(stream)];
  {
    std::lock_guard lock(mu_);
    if (!error_.ok()) return error_;
    if (closing_ && frame.type != FrameType::kClose) return Status::FailedPrecondition("the channel is closed for sending");
  }
  std::unique_lock lock(s.mu);
  s.cv.wait(lock, [&] { return s.stop || s.queue.size() < options_.send_queue_frames; });
  if (s.stop) {
    std::lock_guard channel_lock(mu_);
    return error_.ok() ? Status::FailedPrecondition("the channel is shut down") : error_;
  }
  frame.sequence = s.next_sequence++;
  {
    std::lock_guard channel_lock(mu_);
    s.queued = frame.sequence;
    if (frame.type == FrameType::kClose) s.close_sequence = frame.sequence;
  }
  s.queue.push_back(std::move(frame));
  s.cv.notify_all();
  return Status::Ok();
}

Status StreamChannel::Send(std::vector<uint8_t> data, int stream) {
  if (data.size() > options_.max_frame_bytes)
    return Status::InvalidArgument("message of " + std::to_string(data.size()) + " bytes exceeds the frame limit");
  OutFrame f;
  f.type = FrameType::kData;
  f.data = std::move(data);
  return Enqueue(std::move(f), stream);
}

Status StreamChannel::SendPages(PageBatch pages, int stream) {
  if (8 + pages.size() * (8 + kPageSize) > options_.max_frame_bytes)
    return Status::InvalidArgument("a batch of " + std::to_string(pages.size()) + " pages exceeds the frame limit");
  OutFrame f;
  f.type = FrameType::kPages;
  f.pages = std::move(pages);
  return Enqueue(std::move(f), stream);
}

void StreamChannel::WriterLoop(Stream& s) {
  for (;;) {
    std::vector<OutFrame> frames;
    uint64_t ack = 0;
    {
      std::unique_lock lock(s.mu);
      s.cv.wait(lock, [&] { return s.stop || !s.queue.empty() || s.ack_to_send > s.ack_sent; });
      if (s.stop) return;
      size_t bytes = 0;
      while (!s.queue.empty() && frames.size() < kMaxBatchFrames && bytes < kMaxBatchBytes) {
        bytes += s.queue.front().data.size() + s.queue.front().pages.bytes();
        frames.push_back(std::move(s.queue.front()));
        s.queue.pop_front();
      }
      if (s.ack_to_send > s.ack_sent) ack = s.ack_sent = s.ack_to_send;
    }
    s.cv.notify_all();  // room in the queue

    WireBatch batch(frames.size() + 1);
    if (ack) {
      FrameHeader h;
      h.type = FrameType::kAck;
      h.stream = static_cast<uint16_t>(s.index);
      h.sequence = ack;
      h.payload_xxh3 = PayloadChecksum(nullptr, 0);
      batch.Add(h, {});
    }
    ChannelStats delta;
    for (OutFrame& f : frames) {
      FrameHeader h;
      h.type = f.type;
      h.stream = static_cast<uint16_t>(s.index);
      h.sequence = f.sequence;
      std::vector<iovec> payload;
      size_t raw_size = f.data.size();
      if (f.type == FrameType::kPages) {
        batch.plans.push_back(PlanPagePayload(f.pages));
        raw_size = batch.plans.back().payload_bytes();
        delta.pages_sent += f.pages.size();
        delta.zero_pages_sent += f.pages.size() - batch.plans.back().nonzero.size();
      }
      const bool tried = raw_size >= 512 && s.compression.ShouldTry();
      std::vector<uint8_t> compressed;
      if (tried) {
        const auto t0 = Clock::now();
        if (f.type == FrameType::kPages) {
          std::vector<uint8_t> flat = FlattenPagePayload(f.pages, batch.plans.back());
          compressed = CompressIfSmaller(flat);
          if (compressed.empty()) batch.owned.push_back(std::move(flat));  // already contiguous
        } else {
          compressed = CompressIfSmaller(f.data);
        }
        s.compression.Record(true, !compressed.empty(), raw_size, compressed.size(), Seconds(Clock::now() - t0));
      }
      if (!compressed.empty()) {
        h.flags = kFlagCompressed;
        batch.owned.push_back(std::move(compressed));
        payload.push_back({batch.owned.back().data(), batch.owned.back().size()});
        delta.frames_compressed++;
      } else {
        if (f.type == FrameType::kPages && tried) {
          payload.push_back({batch.owned.back().data(), batch.owned.back().size()});
        } else if (f.type == FrameType::kPages) {
          AppendPagePayloadIov(f.pages, batch.plans.back(), &payload);  // straight from the batch
        } else if (!f.data.empty()) {
          payload.push_back({f.data.data(), f.data.size()});
        }
        if (f.type != FrameType::kClose) delta.frames_raw++;
      }
      size_t wire = 0;
      for (const auto& v : payload) wire += v.iov_len;
      h.wire_length = static_cast<uint32_t>(wire);
      h.raw_length = static_cast<uint32_t>(raw_size);
      h.payload_xxh3 = ChecksumIov(payload);
      batch.Add(h, payload);
      delta.frames_sent++;
      delta.payload_bytes_sent += f.type == FrameType::kPages ? f.pages.bytes() : f.data.size();
    }
    {
      // Counted before the write: the peer's ack for these frames may arrive before it returns.
      std::lock_guard lock(mu_);
      stats_.frames_sent += delta.frames_sent;
      stats_.payload_bytes_sent += delta.payload_bytes_sent;
      stats_.wire_bytes_sent += batch.bytes;
      stats_.pages_sent += delta.pages_sent;
      stats_.zero_pages_sent += delta.zero_pages_sent;
      stats_.frames_compressed += delta.frames_compressed;
      stats_.frames_raw += delta.frames_raw;
    }
    const auto t0 = Clock::now();
    const bool zero_copy = options_.zero_copy && batch.bytes >= kZeroCopyMinBytes;
    Status st = s.conn->WriteAll(batch.iov, Clock::now() + options_.io_timeout, zero_copy);
    if (!st.ok()) {
      Fail(st.WithContext("stream " + std::to_string(s.index)));
      return;
    }
    s.compression.RecordWrite(batch.bytes, Seconds(Clock::now() - t0));
    if (ack) {
      std::lock_guard lock(s.mu);
      s.ack_written = ack;
      s.cv.notify_all();
    }
  }
}

void StreamChannel::ReaderLoop(Stream& s) {
  Status st = ReadFrames(s);
  bool clean;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    clean = s.peer_closed;
  }
  if (st.ok() && !clean)
    st = Status::PeerClosed("the peer closed the connection without closing the channel");
  if (!st.ok()) Fail(st.WithContext("stream " + std::to_string(s.index)));
  cv_.notify_all();
}

// Parses frames out of a buffered byte stream until the peer closes (OK) or something fails.
Status StreamChannel::ReadFrames(Stream& s) {
  std::vector<uint8_t> buf(kReadBufferBytes);
  s.conn->UseReadBuffer(buf.data(), buf.size());
  size_t begin = 0, end = 0;
  uint64_t expected = 1, unacked = 0;
  const Deadline kNever = Deadline::max();

  // Makes at least `need` bytes available from `begin`; false on a clean EOF at a frame boundary.
  auto fill = [&](size_t need, bool mid_frame) -> Result<bool> {
    while (end - begin < need) {
      if (begin > 0 && buf.size() - begin < need) {
        std::memmove(buf.data(), buf.data() + begin, end - begin);
        end -= begin;
        begin = 0;
      }
      if (!mid_frame && end == begin && unacked) {  // about to wait: acknowledge what we have
        {
          std::lock_guard lock(s.mu);
          s.ack_to_send = unacked;
        }
        s.cv.notify_all();
        unacked = 0;
      }
      Deadline deadline = mid_frame || end > begin ? Clock::now() + options_.io_timeout : kNever;
      ELSA_ASSIGN_OR_RETURN(size_t n, s.conn->ReadSome(buf.data() + end, buf.size() - end, deadline));
      if (n == 0) {
        if (end == begin && !mid_frame) return false;
        return Status::PeerClosed("the peer closed the connection in the middle of a frame");
      }
      end += n;
      std::lock_guard lock(mu_);
      stats_.wire_bytes_received += n;
    }
    return true;
  };

  for (;;) {
    ELSA_ASSIGN_OR_RETURN(bool more, fill(kFrameHeaderSize, false));
    if (!more) return Status::Ok();
    ELSA_ASSIGN_OR_RETURN(FrameHeader h, DecodeFrameHeader(buf.data() + begin, options_.max_frame_bytes));
    begin += kFrameHeaderSize;
    if (h.stream != s.index)
      return Status::ProtocolError("frame for stream " + std::to_string(h.stream) + " arrived on stream " + std::to_string(s.index));

    // The payload is verified and decoded where it lies: in the read buffer when it fits,
    // else in a buffer of its own.
    std::vector<uint8_t> large;
    std::span<const uint8_t> payload;
    if (h.wire_length <= buf.size()) {
      ELSA_ASSIGN_OR_RETURN(bool ok, fill(h.wire_length, true));
      (void)ok;
      payload = {buf.data() + begin, h.wire_length};
      begin += h.wire_length;
    } else {
      large.resize(h.wire_length);
      size_t have = end - begin;
      std::memcpy(large.data(), buf.data() + begin, have);
      begin = end = 0;
      Status read = s.conn->ReadExact(large.data() + have, large.size() - have, Clock::now() + options_.io_timeout);
      if (!read.ok())
        return read.code() == StatusCode::kPeerClosed
                   ? Status::PeerClosed("the peer closed the connection in the middle of a frame")
                   : read;
      std::lock_guard lock(mu_);
      stats_.wire_bytes_received += large.size() - have;
      payload = large;
    }
    if (PayloadChecksum(payload.data(), payload.size()) != h.payload_xxh3)
      return Status::Corruption("checksum mismatch in frame " + std::to_string(h.sequence) + " on stream " +
                                std::to_string(s.index) + ": the data was damaged in transit");

    if (h.type == FrameType::kAck) {
      std::lock_guard lock(mu_);
      if (h.sequence > s.queued) return Status::ProtocolError("the peer acknowledged frames we never sent");
      s.acked = std::max(s.acked, h.sequence);
      cv_.notify_all();
      continue;
    }
    if (h.sequence != expected)
      return Status::ProtocolError("frame " + std::to_string(h.sequence) + " on stream " + std::to_string(s.index) +
                                   " arrived where " + std::to_string(expected) + " was due");
    ++expected;
    unacked = h.sequence;
    std::vector<uint8_t> decompressed;
    if (h.flags & kFlagCompressed) {
      ELSA_ASSIGN_OR_RETURN(decompressed, Decompress(payload, h.raw_length));
      payload = decompressed;
    }
    Message m;
    m.stream = static_cast<uint16_t>(s.index);
    if (h.type == FrameType::kPages) {
      m.kind = Message::Kind::kPages;
      ELSA_ASSIGN_OR_RETURN(m.pages, DecodePagePayload(payload, MaxPagesPerFrame(options_.max_frame_bytes)));
    } else if (h.type == FrameType::kData) {
      m.data = !decompressed.empty() ? std::move(decompressed)
               : !large.empty()      ? std::move(large)
                                     : std::vector<uint8_t>(payload.begin(), payload.end());
    }
    ELSA_RETURN_IF_ERROR(Deliver(s, h, std::move(m)));
  }
}

Status StreamChannel::Deliver(Stream& s, const FrameHeader& h, Message m) {
  std::unique_lock lock(mu_);
  s.received = h.sequence;
  if (h.type == FrameType::kClose) {
    s.peer_closed = true;
    cv_.notify_all();
    return Status::Ok();
  }
  if (s.peer_closed) return Status::ProtocolError("data after the peer closed the stream");
  const size_t size = m.data.size() + m.pages.bytes();
  // Backpressure: a slow consumer stops our reads, and TCP stops the sender.
  cv_.wait(lock, [&] { return stopping_ || !error_.ok() || inbox_bytes_ + size <= kInboxLimitBytes || inbox_.empty(); });
  if (stopping_) return Status::Ok();
  stats_.frames_received++;
  stats_.payload_bytes_received += size;
  inbox_bytes_ += size;
  inbox_.push_back(std::move(m));
  cv_.notify_all();
  return Status::Ok();
}

Result<Message> StreamChannel::Receive(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  auto all_closed = [&] {
    return std::all_of(streams_.begin(), streams_.end(), [](const auto& s) { return s->peer_closed; });
  };
  bool ready = cv_.wait_for(lock, timeout, [&] { return !inbox_.empty() || !error_.ok() || all_closed(); });
  if (!inbox_.empty()) {  // verified messages that arrived before any failure are still good
    Message m = std::move(inbox_.front());
    inbox_.pop_front();
    inbox_bytes_ -= m.data.size() + m.pages.bytes();
    cv_.notify_all();
    return m;
  }
  if (!error_.ok()) return error_;
  if (ready) return Status::EndOfStream("the peer closed the channel");
  return Status::Timeout("nothing received within " + std::to_string(timeout.count()) + " ms");
}

Status StreamChannel::Flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  std::vector<uint64_t> target;
  for (const auto& s : streams_) target.push_back(s->queued);
  bool done = cv_.wait_for(lock, timeout, [&] {
    if (!error_.ok()) return true;
    for (size_t i = 0; i < streams_.size(); ++i)
      if (streams_[i]->acked < target[i]) return false;
    return true;
  });
  if (!error_.ok()) return error_;
  if (!done) return Status::Timeout("the peer did not acknowledge everything within " + std::to_string(timeout.count()) + " ms");
  return Status::Ok();
}

Status StreamChannel::Close(std::chrono::milliseconds timeout) {
  const Deadline deadline = Clock::now() + timeout;
  bool send_close = false;
  {
    std::lock_guard lock(mu_);
    if (!error_.ok()) return error_;
    send_close = !closing_;
    closing_ = true;
  }
  if (send_close) {
    for (size_t i = 0; i < streams_.size(); ++i) {
      OutFrame f;
      f.type = FrameType::kClose;
      ELSA_RETURN_IF_ERROR(Enqueue(std::move(f), static_cast<int>(i)));
    }
  }
  // Our CLOSE acknowledged and the peer's CLOSE received...
  std::unique_lock lock(mu_);
  bool done = cv_.wait_until(lock, deadline, [&] {
    if (!error_.ok()) return true;
    for (const auto& s : streams_)
      if (s->acked < s->close_sequence || !s->peer_closed) return false;
    return true;
  });
  if (!error_.ok()) return error_;
  if (!done) return Status::Timeout("the peer did not close the channel in time");
  std::vector<uint64_t> received;
  for (const auto& s : streams_) received.push_back(s->received);
  lock.unlock();
  // ...and our acknowledgement of the peer's CLOSE written, so it can finish closing too.
  for (size_t i = 0; i < streams_.size(); ++i) {
    Stream& s = *streams_[i];
    std::unique_lock slock(s.mu);
    if (!s.cv.wait_until(slock, deadline, [&] { return s.stop || s.ack_written >= received[i]; }))
      return Status::Timeout("could not acknowledge the peer's close in time");
  }
  return Status::Ok();
}

ChannelStats StreamChannel::Stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace elsa::transport
