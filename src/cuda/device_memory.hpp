// Host-side helpers for device memory (plain C++ over the CUDA runtime API):
// a checked call that names its caller, and an owning allocation whose
// out-of-memory error names what it was for and how much the device has free.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "lca/error.hpp"

#define LCA_CUDA_OK(where, expr)                                                                          \
  do {                                                                                                    \
    const cudaError_t lca_err_ = (expr);                                                                  \
    if (lca_err_ != cudaSuccess) ::lca::detail::fail(where, ": ", #expr, " failed: ", cudaGetErrorString(lca_err_)); \
  } while (0)

namespace lca::cuda::detail {

class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const char* what, int64_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, static_cast<size_t>(std::max<int64_t>(bytes, 16))) != cudaSuccess) {
      cudaGetLastError();  // clear the error the failed allocation left
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      ptr_ = nullptr;
      ::lca::detail::fail("out of device memory allocating ", what, " (", bytes, " bytes; ",
                          static_cast<int64_t>(free_b), " of ", static_cast<int64_t>(total_b), " bytes free)");
    }
  }
  DeviceArray(DeviceArray&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr_); }

  template <class T = void>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  int64_t bytes() const { return bytes_; }
  explicit operator bool() const { return ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace lca::cuda::detail
