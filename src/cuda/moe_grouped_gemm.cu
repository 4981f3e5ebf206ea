// moe_grouped_gemm: the routed experts' products over the expert-ordered rows
// of moe_dispatch, out = a W_e^T per expert e (bf16 in and out, fp32
// accumulation); gate and up with SwiGLU fused in the epilogue, or down.
//
// Tile plan (mma.sync m16n8k16, bf16 -> fp32):
// - a CTA owns TM = 64 rows of one expert and TN = 128 output columns (of the
//   weight's N rows); 4 warps in 2 x 2, each 32 rows x 64 columns (2 x 8
//   accumulator tiles of m16n8).
// - blockIdx.x is a row tile counted over all experts: the CTA finds its
//   expert by a binary search of the device tile offsets, so the grid is
//   sized on the host from the row count alone (an upper bound; CTAs past the
//   last tile exit) and nothing waits for the host.
// - A and B tiles of TK = 64 (k) go through a kStages = 4 deep cp.async ring in
//   shared memory. A decode step, with a row or two per expert, is a stream
//   of weight tiles: per CTA three 16 KB B tiles are in flight while one is
//   multiplied, 48 KB per SM at one CTA per SM (DeepSeek-V2-Lite at batch 1:
//   8 experts x 16 or 22 column tiles = 128 or 176 CTAs on 132 SMs), about
//   twice what HBM's ~3.3 TB/s x ~1 us latency / 132 SMs asks; and each
//   weight row is read 128 contiguous bytes (a whole L2 line) per tile, not
//   the 64 of TK = 32, which left every line fetched in two halves far apart
//   in time. Expected: the products near 2.7 TB/s at batch 1 (from 1.4-1.7).
//   Rows past the expert's rows or N, and k past K, are zero-filled (K a
//   multiple of 8). Rows padded by 16 B so that ldmatrix hits distinct banks.
//   The gate/up A rows are gathered from h through token_of (no gathered copy
//   of h).
// - A warp skips the ldmatrix and mma of its 16-row blocks that hold no row
//   of the tile (warp-uniform): at decode most of the 64 rows are padding,
//   and the tensor work would otherwise be 64 times the useful work.
// - SwiGLU: the gate and up weights are interleaved in blocks of 8 rows, so a
//   thread's accumulators of n8 tile 2j (gate) and 2j + 1 (up) hold the same
//   columns: silu(gate) * up in fp32, one bf16 store per pair.
// Shared memory: kStages (TM + TN) (TK + 8) * 2 B = 108 KB (dynamic): two CTAs
// per SM.
#include <algorithm>

#include "common.cuh"
#include "mma_sm80.cuh"
#include "moe.hpp"
#include "prefill_common.cuh"

namespace lca::cuda::detail {
namespace {

using bf16 = __nv_bfloat16;

constexpr int TM = kMoeTileRows, TN = 128, TK = 64, kThreads = 128, AS = TK + 8, kStages = 4;
constexpr int kSmemBytes = kStages * (TM + TN) * AS * 2;
constexpr int kAChunks = TM * TK / 8 / kThreads, kBChunks = TN * TK / 8 / kThreads;  // 16-byte copies per thread
static_assert(kAChunks * kThreads * 8 == TM * TK && kBChunks * kThreads * 8 == TN * TK);

struct GemmArgs {
  const bf16* a;            // rows of k values
  const int32_t* token_of;  // expert-ordered row -> row of a (null: the same row)
  const bf16* w;            // [experts, n, k]
  const int32_t* offsets;   // [experts + 1]
  const int32_t* tile_offsets;
  bf16* out;  // [rows, n] (down) or [rows, n / 2] (SwiGLU)
  int64_t n, k;
  int experts;
};

template <bool kSwiglu>
__global__ void __launch_bounds__(kThreads) moe_grouped_gemm_kernel(GemmArgs g) {
  extern __shared__ __align__(16) bf16 smem[];
  bf16* const sA = smem;                  // [kStages][TM * AS]
  bf16* const sB = smem + kStages * TM * AS;  // [kStages][TN * AS]

  pdl_wait();  // launched with programmatic dependent launch: only the launch overlaps the kernel before
  pdl_launch_dependents();
  const int tile = blockIdx.x;
  if (tile >= g.tile_offsets[g.experts]) return;
  int lo = 0, hi = g.experts - 1;  // the last expert whose first tile is <= tile: one with rows
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (g.tile_offsets[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int e = lo;
  const int64_t row0 = g.offsets[e] + int64_t(tile - g.tile_offsets[e]) * TM;
  const int rows = static_cast<int>(min(static_cast<int64_t>(TM), g.offsets[e + 1] - row0));
  const int64_t n0 = int64_t(blockIdx.y) * TN;
  const bf16* w = g.w + int64_t(e) * g.n * g.k;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  // The warp's 16-row blocks that hold rows of the tile (block 1 only if block 0 does).
  const bool live0 = warp_m * 32 < rows, live1 = warp_m * 32 + 16 < rows;

  // Each thread copies the same rows and columns of every stage: source rows once.
  const bf16* a_src[kAChunks];
  const bf16* b_src[kBChunks];
  bool a_ok[kAChunks], b_ok[kBChunks];
#pragma unroll
  for (int i = 0; i < kAChunks; ++i) {
    const int r = (threadIdx.x + i * kThreads) / (TK / 8);
    a_ok[i] = r < rows;
    const int64_t src_row = !a_ok[i] ? 0 : g.token_of != nullptr ? g.token_of[row0 + r] : row0 + r;
    a_src[i] = g.a + src_row * g.k;
  }
#pragma unroll
  for (int i = 0; i < kBChunks; ++i) {
    const int r = (threadIdx.x + i * kThreads) / (TK / 8);
    b_ok[i] = n0 + r < g.n;
    b_src[i] = w + (b_ok[i] ? n0 + r : 0) * g.k;
  }
  auto load_stage = [&](int64_t k0, int stage) {
#pragma unroll
    for (int i = 0; i < kAChunks; ++i) {
      const int c = threadIdx.x + i * kThreads, r = c / (TK / 8), col = (c % (TK / 8)) * 8;
      const bool ok = a_ok[i] && k0 + col < g.k;
      cp_async16(&sA[stage * TM * AS + r * AS + col], ok ? a_src[i] + k0 + col : g.a, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < kBChunks; ++i) {
      const int c = threadIdx.x + i * kThreads, r = c / (TK / 8), col = (c % (TK / 8)) * 8;
      const bool ok = b_ok[i] && k0 + col < g.k;
      cp_async16(&sB[stage * TN * AS + r * AS + col], ok ? b_src[i] + k0 + col : g.w, ok ? 16 : 0);
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni) acc[mi][ni][0] = acc[mi][ni][1] = acc[mi][ni][2] = acc[mi][ni][3] = 0.f;

  // The ring: tiles 0 .. kStages - 2 in flight before the loop; iteration kt
  // waits for tile kt, then refills the stage iteration kt - 1 read (every
  // thread is past it: the barrier) with tile kt + kStages - 1. One commit
  // group per tile, empty past the end, so wait<kStages - 2> counts right.
  const int64_t k_tiles = (g.k + TK - 1) / TK;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < k_tiles) load_stage(int64_t(st) * TK, st);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int64_t next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next * TK, static_cast<int>(next % kStages));
    cp_async_commit();
    const bf16* tA = sA + (kt % kStages) * TM * AS;
    const bf16* tB = sB + (kt % kStages) * TN * AS;
    if (!live0) continue;  // the warp's rows are all padding: loads and barriers only
#pragma unroll
    for (int kk = 0; kk < TK / 16; ++kk) {
      uint32_t af[2][4];
      ldmatrix_x4(af[0], tA + (warp_m * 32 + lane % 16) * AS + kk * 16 + (lane / 16) * 8);
      if (live1) ldmatrix_x4(af[1], tA + (warp_m * 32 + 16 + lane % 16) * AS + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, tB + (warp_n * 64 + np * 16 + (lane / 16) * 8 + lane % 8) * AS + kk * 16 + ((lane / 8) % 2) * 8);
        mma16816<bf16>(acc[0][2 * np], af[0], b[0], b[1]);
        mma16816<bf16>(acc[0][2 * np + 1], af[0], b[2], b[3]);
        if (live1) {
          mma16816<bf16>(acc[1][2 * np], af[1], b[0], b[1]);
          mma16816<bf16>(acc[1][2 * np + 1], af[1], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy outlives the CTA (the ring's last groups are empty)

  // Thread's accumulators: rows lane / 4 (+ 8), columns (lane % 4) * 2 + {0, 1} of each m16n8 tile.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp_m * 32 + mi * 16 + lane / 4 + half * 8;
      if (r >= rows) continue;
      const int64_t out_row = row0 + r;
      if constexpr (kSwiglu) {
        const int64_t f = g.n / 2;
#pragma unroll
        for (int ni = 0; ni < 8; ni += 2) {
          const int64_t col = (n0 + warp_n * 64 + ni * 8) / 2 + (lane % 4) * 2;
          if (col >= f) continue;
          const float* gate = &acc[mi][ni][half * 2];
          const float* up = &acc[mi][ni + 1][half * 2];
          const float v0 = gate[0] / (1.f + expf(-gate[0])) * up[0];
          const float v1 = gate[1] / (1.f + expf(-gate[1])) * up[1];
          *reinterpret_cast<__nv_bfloat162*>(g.out + out_row * f + col) = __floats2bfloat162_rn(v0, v1);
        }
      } else {
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          const int64_t col = n0 + warp_n * 64 + ni * 8 + (lane % 4) * 2;
          if (col >= g.n) continue;
          *reinterpret_cast<__nv_bfloat162*>(g.out + out_row * g.n + col) =
              __floats2bfloat162_rn(acc[mi][ni][half * 2], acc[mi][ni][half * 2 + 1]);
        }
      }
    }
}

template <bool kSwiglu>
void launch(const GemmArgs& g, int64_t pairs, const char* what, cudaStream_t stream) {
  if (pairs == 0) return;
  LCA_CHECK(g.k % 8 == 0 && g.n % (kSwiglu ? 16 : 8) == 0, what, ": n ", g.n, " and k ", g.k,
            " must be multiples of 8 (n of 16 for gate and up)");
  // sum_e ceil(count_e / TM) <= pairs / TM + (experts with rows), and every tile holds a row.
  const int64_t bound = std::min<int64_t>(pairs, (pairs + TM - 1) / TM + std::min<int64_t>(g.experts, pairs));
  const dim3 grid(static_cast<unsigned>(bound), static_cast<unsigned>((g.n + TN - 1) / TN));
  static const bool sized = [] {  // opt in to more than 48 KB of dynamic shared memory, once per instantiation
    cudaFuncSetAttribute(moe_grouped_gemm_kernel<kSwiglu>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    return true;
  }();
  (void)sized;
  launch_with_pdl(moe_grouped_gemm_kernel<kSwiglu>, grid, kThreads, kSmemBytes, stream, g);
  LCA_CUDA_CHECK_LAUNCH(what);
}

}  // namespace

void moe_gemm_gate_up(const void* h, const int32_t* token_of, const void* w_gate_up, const int32_t* offsets,
                      const int32_t* tile_offsets, int64_t pairs, int experts, int64_t d, int64_t f, void* act,
                      cudaStream_t stream) {
  const GemmArgs g{static_cast<const bf16*>(h), token_of, static_cast<const bf16*>(w_gate_up), offsets, tile_offsets,
                   static_cast<bf16*>(act), 2 * f, d, experts};
  launch<true>(g, pairs, "moe_gemm_gate_up", stream);
}

void moe_gemm_down(const void* act, const void* w_down, const int32_t* offsets, const int32_t* tile_offsets,
                   int64_t pairs, int experts, int64_t d, int64_t f, void* y, cudaStream_t stream) {
  const GemmArgs g{static_cast<const bf16*>(act), nullptr, static_cast<const bf16*>(w_down), offsets, tile_offsets,
                   static_cast<bf16*>(y), d, f, experts};
  launch<false>(g, pairs, "moe_gemm_down", stream);
}

}  // namespace lca::cuda::detail
