#include "elsa/engine/checkpoint_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace elsa {
namespace {

using testing::TempDir;
using testing::WriteTextFile;

Manifest BaseManifest(const std::string& session) {
  Manifest m;
  m.created_at = NowIso8601();
  m.session_name = session;
  m.command = {"true"};
  return m;
}

// Commits a checkpoint with two image files and returns its manifest.
Manifest CommitSample(CheckpointStore& store, const std::string& id) {
  auto pending = store.Begin(id);
  EXPECT_TRUE(pending.ok()) << pending.status().ToString();
  WriteTextFile(pending->dir() + "/pages-1.img", std::string(8192, 'p'));
  WriteTextFile(pending->dir() + "/core-1.img", "core");
  auto m = pending->Commit(BaseManifest("alice"), false);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return *m;
}

void FlipByte(const std::string& path, long offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c;
  f.get(c);
  f.seekp(offset);
  f.put(static_cast<char>(c ^ 0x01));
}

TEST(CheckpointStore, CommitMakesAVerifiableCheckpoint) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  Manifest m = CommitSample(store, "cp1");
  EXPECT_EQ(m.id, "cp1");
  ASSERT_EQ(m.files.size(), 2u);
  EXPECT_EQ(m.TotalBytes(), 8196u);

  auto loaded = store.Load("cp1");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(store.Verify(*loaded).ok());
  auto list = store.List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, "cp1");
}

TEST(CheckpointStore, AnUncommittedCheckpointNeverAppears) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  std::string pending_dir;
  {
    auto pending = store.Begin("cp1");
    ASSERT_TRUE(pending.ok());
    pending_dir = pending->dir();
    WriteTextFile(pending_dir + "/pages-1.img", "half");
    EXPECT_TRUE(store.List()->empty());
    EXPECT_EQ(store.Load("cp1").status().code(), StatusCode::kNotFound);
  }  // abandoned, e.g. CRIU failed
  EXPECT_FALSE(std::filesystem::exists(pending_dir));
  EXPECT_TRUE(store.List()->empty());
}

TEST(CheckpointStore, OpenRemovesWhatACrashLeftBehind) {
  TempDir dir;
  ASSERT_TRUE(MakeDirs(dir / "store/.pending-cp9").ok());
  WriteTextFile(dir / "store/.pending-cp9/pages-1.img", "torn");
  ASSERT_TRUE(MakeDirs(dir / "store/.trash-cp8").ok());
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "store/.pending-cp9"));
  EXPECT_FALSE(std::filesystem::exists(dir / "store/.trash-cp8"));
}

TEST(CheckpointStore, AFailedCommitKeepsTheImagesWhenAsked) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  auto pending = store.Begin("cp1");
  ASSERT_TRUE(pending.ok());
  const std::string pending_dir = pending->dir();
  ASSERT_EQ(::mkdir((pending_dir + "/subdir").c_str(), 0700), 0);  // not a plain file: commit fails
  auto m = pending->Commit(BaseManifest("alice"), /*keep_on_failure=*/true);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(pending_dir), std::string::npos) << m.status().message();
  EXPECT_TRUE(std::filesystem::exists(pending_dir));
}

TEST(CheckpointStore, ImagesKeptAfterAFailedCommitSurviveTheNextOpen) {
  TempDir dir;
  std::string pending_dir;
  {
    CheckpointStore store(dir / "store");
    ASSERT_TRUE(store.Open().ok());
    auto pending = store.Begin("cp1");
    ASSERT_TRUE(pending.ok());
    pending_dir = pending->dir();
    ASSERT_EQ(::mkdir((pending_dir + "/subdir").c_str(), 0700), 0);  // not a plain file: commit fails
    auto failed = pending->Commit(BaseManifest("alice"), /*keep_on_failure=*/true);
    ASSERT_FALSE(failed.ok());
    EXPECT_NE(failed.status().message().find("also across agent restarts"), std::string::npos)
        << failed.status().message();
    // What a crashed checkpoint leaves, by contrast, is cleaned up.
    ASSERT_EQ(::mkdir((dir / "store/.pending-cp3").c_str(), 0700), 0);
  }
  CheckpointStore reopened(dir / "store");  // the agent starts again
  ASSERT_TRUE(reopened.Open().ok());
  EXPECT_TRUE(std::filesystem::exists(pending_dir)) << "the kept images were deleted at the next start";
  EXPECT_FALSE(std::filesystem::exists(dir / "store/.pending-cp3"));
  // Once the user removes them, the marker goes at the next start too.
  ASSERT_TRUE(RemoveTree(pending_dir).ok());
  CheckpointStore again(dir / "store");
  ASSERT_TRUE(again.Open().ok());
  EXPECT_FALSE(std::filesystem::exists(pending_dir + ".kept"));
}

TEST(CheckpointStore, VerifyNamesTheDamagedFile) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  Manifest m = CommitSample(store, "cp1");
  FlipByte(store.PathOf("cp1") + "/pages-1.img", 4000);
  Status s = store.Verify(m);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("pages-1.img"), std::string::npos) << s.message();
}

TEST(CheckpointStore, VerifyCatchesTruncatedMissingAndExtraFiles) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  Manifest m = CommitSample(store, "cp1");
  const std::string cp = store.PathOf("cp1");

  ASSERT_EQ(::truncate((cp + "/pages-1.img").c_str(), 100), 0);
  EXPECT_NE(store.Verify(m).message().find("pages-1.img has 100 bytes"), std::string::npos);

  Manifest m2 = CommitSample(store, "cp2");
  std::filesystem::remove(store.PathOf("cp2") + "/core-1.img");
  EXPECT_NE(store.Verify(m2).message().find("core-1.img is missing"), std::string::npos);

  Manifest m3 = CommitSample(store, "cp3");
  WriteTextFile(store.PathOf("cp3") + "/extra.img", "x");
  EXPECT_NE(store.Verify(m3).message().find("extra.img"), std::string::npos);
}

TEST(CheckpointStore, ADamagedManifestIsCorruptionNotACrash) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  CommitSample(store, "cp1");
  WriteTextFile(store.PathOf("cp1") + "/manifest.json", "{\"format\": \"elsa-checkpoint/1\", \"id\": 3");
  auto m = store.Load("cp1");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kCorruption);
}

TEST(CheckpointStore, RejectsIdsThatArePaths) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  for (const char* bad : {"../x", "a/b", "..", "/etc"}) {
    EXPECT_EQ(store.Load(bad).status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Remove(bad).code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Begin(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(CheckpointStore, RemoveAndDuplicateIds) {
  TempDir dir;
  CheckpointStore store(dir / "store");
  ASSERT_TRUE(store.Open().ok());
  CommitSample(store, "cp1");
  EXPECT_EQ(store.Begin("cp1").status().code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(store.Remove("cp1").ok());
  EXPECT_EQ(store.Remove("cp1").code(), StatusCode::kNotFound);
  EXPECT_TRUE(store.List()->empty());
}

}  // namespace
}  // namespace elsa
