// CRIU's image files between the agents: FileReceiver's rules (in order, no holes, no rewrites,
// each file once and to its end), and a directory sent with SendDirectoryFiles arriving whole.
#include "migrate/image_files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <map>

#include "channel_test_util.h"
#include "migrate_test_util.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;

peer::FileChunk Chunk(const std::string& name, uint64_t offset, bool last, const std::string& data) {
  return {name, offset, last, std::vector<uint8_t>(data.begin(), data.end())};
}

std::string Contents(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status().message();
  return text.ok() ? *text : "";
}

void ExpectProtocolError(const Status& st, const std::string& says) {
  EXPECT_EQ(st.code(), StatusCode::kProtocolError) << st.ToString();
  EXPECT_NE(st.message().find(says), std::string::npos) << st.message();
}

TEST(FileReceiver, ChunksInOrderMakeTheFile) {
  TempDir dir;
  FileReceiver files(dir.path());
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 0, false, "hello ")).ok());
  ASSERT_TRUE(files.Take(Chunk("pstree.img", 0, true, "tree")).ok());  // files may interleave
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 6, false, "")).ok());     // an empty chunk is no hole
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 6, true, "world")).ok());
  ASSERT_TRUE(files.Take(Chunk("empty.img", 0, true, "")).ok());
  EXPECT_TRUE(files.CheckComplete().ok());
  EXPECT_EQ(files.bytes(), 15u);
  EXPECT_EQ(Contents(dir / "core-1.img"), "hello world");
  EXPECT_EQ(Contents(dir / "pstree.img"), "tree");
  EXPECT_EQ(Contents(dir / "empty.img"), "");
}

TEST(FileReceiver, AHoleIsRefused) {
  TempDir dir;
  FileReceiver files(dir.path());
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 0, false, "abc")).ok());
  ExpectProtocolError(files.Take(Chunk("core-1.img", 4, true, "e")), "chunk at 4, expected 3");
}

TEST(FileReceiver, ARewriteIsRefused) {
  TempDir dir;
  FileReceiver files(dir.path());
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 0, false, "abc")).ok());
  ExpectProtocolError(files.Take(Chunk("core-1.img", 1, false, "X")), "chunk at 1, expected 3");
  ExpectProtocolError(files.Take(Chunk("core-1.img", 0, true, "abc")), "chunk at 0, expected 3");
  EXPECT_EQ(Contents(dir / "core-1.img"), "abc") << "what was written stays as it was";
}

TEST(FileReceiver, AFileThatDoesNotStartAtZeroIsRefused) {
  TempDir dir;
  FileReceiver files(dir.path());
  ExpectProtocolError(files.Take(Chunk("core-1.img", 10, true, "abc")), "does not start at offset 0");
  EXPECT_FALSE(std::filesystem::exists(dir / "core-1.img")) << "nothing was created";
}

TEST(FileReceiver, AFileSentTwiceIsRefused) {
  TempDir dir;
  FileReceiver files(dir.path());
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 0, true, "abc")).ok());
  ExpectProtocolError(files.Take(Chunk("core-1.img", 0, true, "abc")), "sent twice");
  ExpectProtocolError(files.Take(Chunk("core-1.img", 3, true, "d")), "sent twice");
  EXPECT_EQ(Contents(dir / "core-1.img"), "abc");
}

TEST(FileReceiver, AFileNotSentToItsEndIsIncomplete) {
  TempDir dir;
  FileReceiver files(dir.path());
  ASSERT_TRUE(files.Take(Chunk("core-1.img", 0, true, "abc")).ok());
  ASSERT_TRUE(files.Take(Chunk("mm-1.img", 0, false, "abc")).ok());
  ExpectProtocolError(files.CheckComplete(), "mm-1.img was not sent to its end");
}

TEST(FileReceiver, NoFilesAtAllIsIncomplete) {
  TempDir dir;
  FileReceiver files(dir.path());
  ExpectProtocolError(files.CheckComplete(), "no image files");
}

TEST(FileReceiver, AFileThatIsAlreadyThereIsNotOverwritten) {
  TempDir dir;
  testing::WriteTextFile(dir / "core-1.img", "mine");
  FileReceiver files(dir.path());
  Status st = files.Take(Chunk("core-1.img", 0, true, "theirs"));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(Contents(dir / "core-1.img"), "mine");
}

// ---- SendDirectoryFiles -> FileReceiver ----

TEST(FileReceiver, TooManyUnfinishedFilesAreRefused) {
  // The sender ends each file before the next; a peer that only ever starts files would hold a
  // descriptor for each.
  TempDir dir;
  FileReceiver files(dir.path());
  for (size_t i = 0; i < FileReceiver::kMaxOpenFiles; ++i)
    ASSERT_TRUE(files.Take(Chunk("open-" + std::to_string(i) + ".img", 0, false, "x")).ok()) << i;
  ExpectProtocolError(files.Take(Chunk("one-more.img", 0, false, "x")), "unfinished at once");
  ASSERT_TRUE(files.Take(Chunk("open-0.img", 1, true, "y")).ok());  // ending one makes room
  EXPECT_TRUE(files.Take(Chunk("one-more.img", 0, true, "x")).ok());
}

TEST(ImageFiles, ADirectorySentArrivesWhole) {
  TempDir from, to;
  std::map<std::string, std::string> sent;
  auto make = [&](const std::string& name, size_t size, char seed) {
    std::string bytes(size, '\0');
    for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(seed + i * 7 + i / 4096);
    testing::WriteTextFile(from / name, bytes);
    sent[name] = bytes;
  };
  make("empty.img", 0, 'a');
  make("small.img", 100, 'b');
  make("exactly-one-chunk.img", peer::kMaxChunkBytes, 'c');  // its end is an empty last chunk
  make("two-chunks.img", peer::kMaxChunkBytes + 1, 'd');
  make("three-chunks.img", 2 * peer::kMaxChunkBytes + 12345, 'e');
  ASSERT_TRUE(std::filesystem::create_directory(from / "subdir"));  // not a file: not sent
  testing::WriteTextFile(from / "subdir/inner.img", "x");

  transport::testing::ChannelPair pair;
  transport::testing::MakePair(transport::Backend::kTcp, transport::testing::TestOptions(2), &pair);
  FileReceiver files(to.path());
  Status received = Status::Ok();
  std::map<std::string, int> chunks;
  std::thread receiver([&] {
    size_t complete = 0;
    while (complete < sent.size() && received.ok()) {
      auto message = pair.server->Receive(10s);
      if (!message.ok()) {
        received = message.status();
        break;
      }
      auto decoded = peer::DecodeMessage(message->data);
      if (!decoded.ok()) {
        received = decoded.status();
        break;
      }
      const auto& chunk = std::get<peer::FileChunk>(*decoded);
      chunks[chunk.name]++;
      received = files.Take(chunk);
      if (chunk.last) complete++;
    }
  });
  auto total = SendDirectoryFiles(*pair.client, from.path());
  receiver.join();
  ASSERT_TRUE(total.ok()) << total.status().message();
  ASSERT_TRUE(received.ok()) << received.message();
  EXPECT_TRUE(files.CheckComplete().ok());
  uint64_t bytes = 0;
  for (const auto& [name, content] : sent) {
    bytes += content.size();
    EXPECT_TRUE(Contents(to / name) == content) << name << " differs";
  }
  EXPECT_EQ(*total, bytes);
  EXPECT_EQ(files.bytes(), bytes);
  EXPECT_FALSE(std::filesystem::exists(to / "subdir"));
  EXPECT_EQ(chunks["empty.img"], 1);
  EXPECT_EQ(chunks["exactly-one-chunk.img"], 2);
  EXPECT_EQ(chunks["two-chunks.img"], 2);
  EXPECT_EQ(chunks["three-chunks.img"], 3);
}

TEST(ImageFiles, SendingAMissingDirectoryIsAnError) {
  transport::testing::ChannelPair pair;
  transport::testing::MakePair(transport::Backend::kTcp, transport::testing::TestOptions(1), &pair);
  TempDir dir;
  auto total = SendDirectoryFiles(*pair.client, dir / "nowhere");
  ASSERT_FALSE(total.ok());
  EXPECT_EQ(total.status().code(), StatusCode::kIoError);
}

}  // namespace
}  // namespace elsa
