// Durations for reports, from the monotonic clock.
#pragma once

#include <chrono>

namespace elsa {

inline double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace elsa
