// decode_linear: y = alpha W x + beta y for the one row of a batch-1 decode
// step (bf16 W and x, fp32 sums, y bf16 or fp32), or a batch of such products
// with element strides (MLA's per-head products).
//
// At batch 1 a step is a chain of short kernels, and a product's time is
// mostly its launch and its first DRAM round trips, not its bytes (cuBLAS
// reaches 0.9-1.8 TB/s on a layer's small matrices, docs/perf-notes.md). So
// these kernels are launched with programmatic dependent launch, and each
// thread issues its first weight loads *before* griddepcontrol.wait: the
// weights do not depend on the kernel before, only x does. Their blocks load
// while that kernel (a norm, the attention's combine, swiglu) still runs.
//
// Tile plans (no shared memory but the kn reduction's 8 KB):
// - W [N, K] (nn.Linear's layout): a warp per output row, 2 warps a block;
//   lane l takes the row's 16-byte pieces l, l + 32, ..., kWu of them in
//   flight, x's matching pieces from L1; a shuffle reduction; lane 0 writes.
// - W [K, N] (MLA's W_UK^T applied to q): a block per 256 output columns of a
//   product; warp s takes rows s, s + 8, ... of K (at most 16 each, all loaded
//   before the wait), lane c columns [8c, 8c + 8) of them; the 8 warps' sums
//   meet in shared memory.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

// nk: two warps a block, so that a few hundred rows spread evenly over the
// SMs (blocks of eight left 2560 rows on 2-3 blocks an SM). kn: eight warps.
constexpr int kNkWarps = 2, kWarps = 8, kThreads = 32 * kWarps, kWu = 8, kKnRows = 16;

template <bool kYf32>
__device__ __forceinline__ void store(void* y, int64_t i, float v, float alpha, float beta) {
  if constexpr (kYf32) {
    float* out = static_cast<float*>(y) + i;
    *out = alpha * v + (beta != 0.f ? beta * *out : 0.f);
  } else {
    __nv_bfloat16* out = static_cast<__nv_bfloat16*>(y) + i;
    *out = __float2bfloat16(alpha * v + (beta != 0.f ? beta * __bfloat162float(*out) : 0.f));
  }
}

// Pointers and strides of a (batch of) product(s); strides in elements.
struct Args {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  void* y;
  int n, k;
  int64_t x_stride, w_stride, y_stride;
  const int32_t* w_index;
  float alpha, beta;
};

template <bool kYf32>
__global__ void __launch_bounds__(32 * kNkWarps) decode_linear_nk_kernel(Args a) {
  const int lane = threadIdx.x % 32, row = blockIdx.x * kNkWarps + threadIdx.x / 32, pieces = a.k / 8;
  const auto* x = reinterpret_cast<const uint4*>(a.x + blockIdx.y * a.x_stride);
  if (a.w_index != nullptr) pdl_wait();  // the kernel before chose the weights
  const int64_t wb = a.w_index != nullptr ? a.w_index[blockIdx.y] : blockIdx.y;
  const auto* wrow =
      reinterpret_cast<const uint4*>(a.w + wb * a.w_stride) + static_cast<int64_t>(min(row, a.n - 1)) * pieces;
  uint4 wv[kWu];
#pragma unroll
  for (int u = 0; u < kWu; ++u)
    if (lane + 32 * u < pieces) wv[u] = load_stream(wrow + lane + 32 * u);
  if (a.w_index == nullptr) pdl_wait();  // x (and y, when beta != 0) come from the kernels before
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
  if (lane == 0 && row < a.n) store<kYf32>(a.y, blockIdx.y * a.y_stride + row, acc, a.alpha, a.beta);
}

template <bool kYf32>
__global__ void __launch_bounds__(kThreads) decode_linear_kn_kernel(Args a) {
  __shared__ float part[kWarps][32 * 8];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, col = blockIdx.x * 256 + lane * 8;
  const __nv_bfloat16* x = a.x + blockIdx.y * a.x_stride;
  const __nv_bfloat16* w = a.w + blockIdx.y * a.w_stride;
  const bool live = col < a.n;
  uint4 wv[kKnRows];
#pragma unroll
  for (int i = 0; i < kKnRows; ++i) {
    const int r = warp + kWarps * i;
    if (live && r < a.k) wv[i] = load_stream(reinterpret_cast<const uint4*>(w + static_cast<int64_t>(r) * a.n + col));
  }
  pdl_wait();
  pdl_launch_dependents();
  float acc[8] = {};
#pragma unroll
  for (int i = 0; i < kKnRows; ++i) {
    const int r = warp + kWarps * i;
    if (!live || r >= a.k) continue;
    const float xr = __bfloat162float(x[r]);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&wv[i]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      acc[2 * j] = fmaf(xr, f.x, acc[2 * j]);
      acc[2 * j + 1] = fmaf(xr, f.y, acc[2 * j + 1]);
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) part[warp][lane * 8 + j] = acc[j];
  __syncthreads();
  const int c = blockIdx.x * 256 + threadIdx.x;  // one column per thread for the sum over warps
  if (c >= a.n) return;
  float sum = 0.f;
#pragma unroll
  for (int s = 0; s < kWarps; ++s) sum += part[s][threadIdx.x];
  store<kYf32>(a.y, blockIdx.y * a.y_stride + c, sum, a.alpha, a.beta);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool decode_linear_fits(WeightLayout layout, int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                        const LinearBatch& batch) {
  const int64_t big = int64_t(1) << 31;
  const bool common = M == 1 && N >= 1 && N < big && K >= 1 && K < big && batch.count >= 1 &&
                      batch.count <= 65535 && aligned16(w) && batch.w_stride % 8 == 0;
  if (layout == WeightLayout::nk) return common && K % 8 == 0 && aligned16(x) && batch.x_stride % 8 == 0;
  return common && N % 8 == 0 && K <= kWarps * kKnRows && batch.w_index == nullptr;
}

void decode_linear(WeightLayout layout, int64_t N, int64_t K, const void* x, const void* w, void* y, float alpha,
                   float beta, bool y_f32, cudaStream_t stream, const LinearBatch& batch) {
  LCA_CHECK(decode_linear_fits(layout, 1, N, K, x, w, batch), "cuda::decode_linear: N = ", N, ", K = ", K,
            " does not fit (nk: K a multiple of 8, x and W 16-byte aligned; kn: N a multiple of 8, K <= ",
            kWarps * kKnRows, ", W 16-byte aligned; strides multiples of 8)");
  const Args a{static_cast<const __nv_bfloat16*>(x),
               static_cast<const __nv_bfloat16*>(w),
               y,
               static_cast<int>(N),
               static_cast<int>(K),
               batch.x_stride,
               batch.w_stride,
               batch.y_stride,
               batch.w_index,
               alpha,
               beta};
  const unsigned count = static_cast<unsigned>(batch.count);
  if (layout == WeightLayout::nk) {
    const dim3 grid(static_cast<unsigned>((N + kNkWarps - 1) / kNkWarps), count);
    launch_with_pdl(y_f32 ? decode_linear_nk_kernel<true> : decode_linear_nk_kernel<false>, grid, 32 * kNkWarps, 0,
                    stream, a);
  } else {
    const dim3 grid(static_cast<unsigned>((N + 255) / 256), count);
    launch_with_pdl(y_f32 ? decode_linear_kn_kernel<true> : decode_linear_kn_kernel<false>, grid, kThreads, 0, stream,
                    a);
  }
  LCA_CUDA_CHECK_LAUNCH("decode_linear");
}

}  // namespace lca::cuda::detail
