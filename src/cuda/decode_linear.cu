// decode_linear: y [N] = alpha W [N, K] x [K] + beta y, the products of a
// batch-1 decode step (bf16 W and x, fp32 sums, y bf16 or fp32).
//
// At batch 1 a step is a chain of short kernels, and a product's time is
// mostly its launch and its first DRAM round trips, not its bytes (cuBLAS
// reaches 0.9-1.8 TB/s on a layer's small matrices, docs/perf-notes.md). So
// this kernel is launched with programmatic dependent launch, and each warp
// issues its first kWu weight loads *before* griddepcontrol.wait: the weights
// do not depend on the kernel before it, only x does. Its blocks then load
// while that kernel (a norm, the attention's combine, swiglu) still runs.
//
// Tile plan: a warp per output row, 8 warps (256 threads) a block; lane l
// takes the row's 16-byte pieces l, l + 32, ..., kWu of them in flight
// (registers), x's matching pieces from L1; a shuffle reduction; lane 0
// writes. No shared memory.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps, kWu = 8;

__device__ __forceinline__ uint4 load_stream(const uint4* p) {  // read once: do not keep in L1
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

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

template <bool kYf32>
__global__ void __launch_bounds__(kThreads) decode_linear_kernel(const uint4* x, const uint4* w, int n, int pieces,
                                                                 void* y, float alpha, float beta) {
  const int lane = threadIdx.x % 32, row = blockIdx.x * kWarps + threadIdx.x / 32;
  const uint4* wrow = w + static_cast<int64_t>(min(row, n - 1)) * pieces;
  uint4 wv[kWu];
#pragma unroll
  for (int u = 0; u < kWu; ++u)
    if (lane + 32 * u < pieces) wv[u] = load_stream(wrow + lane + 32 * u);
  pdl_wait();  // x (and y, when beta != 0) come from the kernels before
  pdl_launch_dependents();
  float acc = 0.f;
  for (int j = 0; 32 * j < pieces; j += kWu) {
#pragma unroll
    for (int u = 0; u < kWu; ++u) {
      const int p = lane + 32 * (j + u);
      if (p < pieces) acc += dot8(wv[u], x[p]);
    }
#pragma unroll
    for (int u = 0; u < kWu; ++u) {
      const int p = lane + 32 * (j + kWu + u);
      if (p < pieces) wv[u] = load_stream(wrow + p);
    }
  }
  acc = warp_sum(acc);
  if (lane != 0 || row >= n) return;
  if constexpr (kYf32) {
    float* out = static_cast<float*>(y) + row;
    *out = alpha * acc + (beta != 0.f ? beta * *out : 0.f);
  } else {
    __nv_bfloat16* out = static_cast<__nv_bfloat16*>(y) + row;
    *out = __float2bfloat16(alpha * acc + (beta != 0.f ? beta * __bfloat162float(*out) : 0.f));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool decode_linear_fits(int64_t M, int64_t N, int64_t K, const void* x, const void* w) {
  return M == 1 && N >= 1 && N < (int64_t(1) << 31) && K >= 8 && K % 8 == 0 && K / 8 < (int64_t(1) << 31) &&
         aligned16(x) && aligned16(w);
}

void decode_linear(int64_t N, int64_t K, const void* x, const void* w, void* y, float alpha, float beta, bool y_f32,
                   cudaStream_t stream) {
  LCA_CHECK(decode_linear_fits(1, N, K, x, w), "cuda::decode_linear: N = ", N, ", K = ", K,
            " (K a multiple of 8) and 16-byte aligned x and W are required");
  const dim3 grid(static_cast<unsigned>((N + kWarps - 1) / kWarps));
  const int n = static_cast<int>(N), pieces = static_cast<int>(K / 8);
  const auto* xv = static_cast<const uint4*>(x);
  const auto* wv = static_cast<const uint4*>(w);
  if (y_f32)
    launch_with_pdl(decode_linear_kernel<true>, grid, kThreads, 0, stream, xv, wv, n, pieces, y, alpha, beta);
  else
    launch_with_pdl(decode_linear_kernel<false>, grid, kThreads, 0, stream, xv, wv, n, pieces, y, alpha, beta);
  LCA_CUDA_CHECK_LAUNCH("decode_linear");
}

}  // namespace lca::cuda::detail
