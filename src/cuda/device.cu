// Device presence and name: what GPU tests and tools ask before they run.
#include <cuda_runtime.h>

#include "lca/cuda.hpp"

namespace lca::cuda {

bool device_present() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

std::string device_name() {
  if (!device_present()) return "no CUDA device";
  cudaDeviceProp p{};
  int dev = 0;
  cudaGetDevice(&dev);
  if (cudaGetDeviceProperties(&p, dev) != cudaSuccess) return "unknown CUDA device";
  return p.name;
}

}  // namespace lca::cuda
