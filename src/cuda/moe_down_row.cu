// moe_down_row: the one-row MoE's down products and its combine in one kernel
// (a batch-1 decode step): x [D] += sum_c weight[c] W_down[expert[c]] act[c],
// over the token's C pairs (routed and shared), in fp32, x rounded once.
//
// Tile plan: a block of two warps per output column d of x; warp w takes the
// pairs c = w, w + 2, ...: row d of W_down[expert[c]] (F values, 16-byte
// pieces lane-strided, all of a pair's in flight at once) against act[c], from
// L1. The first pair's weights load before the wait of programmatic dependent
// launch: the choice (expert, weight) comes from moe_route, three launches
// earlier (gate/up and SwiGLU between), so it is complete when this kernel
// starts; only act is the kernel before's. The two warps' sums meet in shared
// memory. Saves the combine's launch and the bf16 rounding of each pair's y.
#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kWarps = 2, kMaxLoads = 8;  // pieces a lane holds per pair: F <= 32 * 8 * 8 = 2048

__global__ void __launch_bounds__(32 * kWarps)
    moe_down_row_kernel(const uint4* act, const uint4* down, const int32_t* expert, const float* weight, int pairs,
                        int d_out, int pieces, __nv_bfloat16* x) {
  __shared__ float partial[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, d = blockIdx.x;
  auto row_of = [&](int c) { return down + (static_cast<int64_t>(expert[c]) * d_out + d) * pieces; };
  uint4 wv[kMaxLoads];
  auto load = [&](int c) {
    const uint4* w = row_of(c);
#pragma unroll
    for (int u = 0; u < kMaxLoads; ++u)
      if (lane + 32 * u < pieces) wv[u] = load_stream(w + lane + 32 * u);
  };
  if (warp < pairs) load(warp);
  pdl_wait();  // act comes from the kernel before
  pdl_launch_dependents();
  float acc = 0.f;
  for (int c = warp; c < pairs; c += kWarps) {
    if (c != warp) load(c);
    const uint4* a = act + static_cast<int64_t>(c) * pieces;
    float part = 0.f;
#pragma unroll
    for (int u = 0; u < kMaxLoads; ++u)
      if (lane + 32 * u < pieces) part += dot8(wv[u], a[lane + 32 * u]);
    acc += weight[c] * warp_sum(part);
  }
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float sum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += partial[w];
  x[d] = __float2bfloat16(__bfloat162float(x[d]) + sum);
}

}  // namespace

bool moe_down_row_fits(int64_t f, const void* act, const void* w_down) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return f >= 8 && f % 8 == 0 && f / 8 <= 32 * kMaxLoads && aligned(act) && aligned(w_down);
}

void moe_down_row(const void* act, const void* w_down, const int32_t* expert, const float* weight, int pairs,
                  int64_t d, int64_t f, void* x, cudaStream_t stream) {
  LCA_CHECK(moe_down_row_fits(f, act, w_down) && pairs >= 1 && d >= 1 && d < (int64_t(1) << 31),
            "moe_down_row: f = ", f, " (a multiple of 8, at most ", 8 * 32 * kMaxLoads, "), pairs = ", pairs,
            ", d = ", d, ", and 16-byte aligned act and w_down are required");
  launch_with_pdl(moe_down_row_kernel, dim3(static_cast<unsigned>(d)), 32 * kWarps, 0, stream,
                  static_cast<const uint4*>(act), static_cast<const uint4*>(w_down), expert, weight, pairs,
                  static_cast<int>(d), static_cast<int>(f / 8), static_cast<__nv_bfloat16*>(x));
  LCA_CUDA_CHECK_LAUNCH("moe_down_row");
}

}  // namespace lca::cuda::detail
