// A half of a migration runs as its timeline's steps, in order: the first error ends it, and
// what a step throws is an error like any other (a Status for the caller's rollback, never an
// exception escaping the agent's thread).
#pragma once

#include <exception>
#include <initializer_list>
#include <string>

#include "elsa/status.h"

namespace elsa {

template <typename Half>
Status RunSteps(Half* half, std::initializer_list<Status (Half::*)()> steps) {
  try {
    for (auto step : steps) ELSA_RETURN_IF_ERROR((half->*step)());
    return Status::Ok();
  } catch (const std::exception& e) {
    return Status::Internal(std::string("unexpected error: ") + e.what());
  }
}

}  // namespace elsa
