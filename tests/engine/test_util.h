// Helpers shared by the engine tests.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "elsa/file_util.h"

namespace elsa::testing {

// A fresh directory, removed with everything in it when the test ends, pass or fail.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/elsa-test-XXXXXX";
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
  }
  ~TempDir() { (void)RemoveTree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

}  // namespace elsa::testing

// Tests that need root fail loudly instead of passing vacuously.
#define ELSA_REQUIRE_ROOT()                                                              \
  do {                                                                                   \
    if (::geteuid() != 0) FAIL() << "this test needs root (PID namespaces, CRIU); run it as root"; \
  } while (0)
