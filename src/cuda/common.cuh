// Shared by the CUDA kernels: error checks, storage types, warp reductions,
// programmatic dependent launch.
#pragma once

#include <cstdint>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "lca/dtype.hpp"
#include "lca/error.hpp"

#define LCA_CUDA_CHECK(expr)                                                             \
  do {                                                                                   \
    const cudaError_t lca_err_ = (expr);                                                 \
    if (lca_err_ != cudaSuccess) ::lca::detail::fail(#expr, " failed: ", cudaGetErrorString(lca_err_)); \
  } while (0)

// After a launch: a bad configuration shows here (naming the kernel), a fault at the next sync.
#define LCA_CUDA_CHECK_LAUNCH(what)                                                           \
  do {                                                                                        \
    const cudaError_t lca_err_ = cudaGetLastError();                                          \
    if (lca_err_ != cudaSuccess) ::lca::detail::fail(what, ": launch failed: ", cudaGetErrorString(lca_err_)); \
  } while (0)

namespace lca::cuda::detail {

// A generic pointer into shared memory as the 32-bit address PTX takes.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Softmax weights and argmax (smallest index on ties) of scores[0..g) held in
// shared memory by one warp; weights overwrite the scores. Returns the argmax.
__device__ __forceinline__ int warp_softmax_argmax(float* scores, int g) {
  const int lane = threadIdx.x & 31;
  float best = -INFINITY;
  int best_i = 0x7fffffff;
  for (int i = lane; i < g; i += 32)
    if (scores[i] > best) best = scores[i], best_i = i;  // first (smallest) i on ties within a lane
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
  }
  float sum = 0.f;
  for (int i = lane; i < g; i += 32) sum += scores[i] = __expf(scores[i] - best);
  sum = warp_sum(sum);
  __syncwarp();
  for (int i = lane; i < g; i += 32) scores[i] /= sum;
  __syncwarp();
  return best_i;
}

// A 16-byte load of data read once (a one-row product's weights): not kept in L1.
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The dot product of 8 bf16 pairs, in fp32.
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(x[i]), q = __bfloat1622float2(y[i]);
    s = fmaf(p.x, q.x, s);
    s = fmaf(p.y, q.y, s);
  }
  return s;
}

// Programmatic dependent launch (sm_90): a kernel launched with
// launch_with_pdl may start while the kernel before it still runs, once every
// block of that one has called pdl_launch_dependents (or exited); it must call
// pdl_wait before it reads anything the earlier kernel writes, and calls it
// before it exits, so that it completes after that kernel.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether the current device takes programmatic dependent launch (sm_90 on);
// elsewhere launch_with_pdl launches plainly and pdl_wait compiles to nothing.
inline bool device_has_pdl() {
  int dev = 0, major = 0;
  LCA_CUDA_CHECK(cudaGetDevice(&dev));
  LCA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return major >= 9;
}

template <class... KernelArgs, class... Args>
void launch_with_pdl(void (*kernel)(KernelArgs...), dim3 grid, int threads, size_t smem, cudaStream_t stream,
                     Args&&... args) {
  static const bool pdl = device_has_pdl();
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  LCA_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// Whether `kernel` was compiled for sm_90a in this build and loads on this
// device (builds for several architectures hold an sm_80 body that traps).
template <class... Args>
bool built_for_sm90a(void (*kernel)(Args...)) {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.binaryVersion == 90;
}

// Blocks of `kernel` one multiprocessor holds with `smem` bytes of dynamic
// shared memory (set as the kernel's maximum first); at least 1.
template <class... Args>
int blocks_per_sm(void (*kernel)(Args...), int threads, size_t smem) {
  int blocks = 0;
  LCA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  LCA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  return blocks < 1 ? 1 : blocks;
}

template <class F>
void dispatch_dtype(DType t, const char* where, F&& f) {
  if (t == DType::bf16) f(__nv_bfloat16{});
  else if (t == DType::f16) f(__half{});
  else ::lca::detail::fail(where, ": the CUDA kernels take bf16 or f16 storage, got ", dtype_name(t));
}

}  // namespace lca::cuda::detail
