// Buffers that are always overwritten right after they grow need not be zeroed first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace elsa {

// An allocator that leaves bytes uninitialised on resize: page buffers are always overwritten
// right after they grow, and zero-filling them first cost the transport's receiver a sixth of its
// CPU and the page store's appends a tenth of theirs. `Alignment` above the default serves
// O_DIRECT, whose buffers must be block-aligned.
template <typename T, size_t Alignment = alignof(T)>
struct UninitializedAllocator : std::allocator<T> {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U, Alignment>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U, Alignment>&) noexcept {}
  T* allocate(size_t n) {
    if constexpr (Alignment > __STDCPP_DEFAULT_NEW_ALIGNMENT__)
      return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{Alignment}));
    else
      return std::allocator<T>::allocate(n);
  }
  void deallocate(T* p, size_t n) noexcept {
    if constexpr (Alignment > __STDCPP_DEFAULT_NEW_ALIGNMENT__)
      ::operator delete(p, std::align_val_t{Alignment});  // unsized: clang needs -fsized-deallocation otherwise
    else
      std::allocator<T>::deallocate(p, n);
  }
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialise: no zeroing
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <typename U>
  bool operator==(const UninitializedAllocator<U, Alignment>&) const noexcept {
    return true;
  }
};

// A byte buffer whose resize leaves new bytes uninitialised.
using RawBytes = std::vector<uint8_t, UninitializedAllocator<uint8_t>>;
// The same, 4096-aligned, for O_DIRECT writes.
using DirectIoBytes = std::vector<uint8_t, UninitializedAllocator<uint8_t, 4096>>;

}  // namespace elsa
