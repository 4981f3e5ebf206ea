// The Hopper prefill kernel (sm_90a: TMA, mbarriers, wgmma): the same
// function as prefill_sm80.cu, for head dims that are multiples of 64, and
// d_qk = 96 (MiniCPM3) run as 128 with TMA's zero fill past the tensor's
// inner dimension (exact, 1.2x the FLOPs of 96/64).
//
// Tile plan (FlashAttention-3 style, warp-specialised):
// - a block owns BM = 128 query rows of one query head and has 3 warpgroups.
//   Warpgroup 0 is the producer: one thread issues TMA loads of the Q tile
//   and of the K and V tiles (BN = 128 keys) that TileKeys visits
//   (representative tiles, then raw tiles), into 2 stages each, completing on
//   "full" mbarriers; it drops to 24 registers. Warpgroups 1 and 2 consume,
//   64 rows each, at 240 registers, and free a stage through "empty" mbarriers.
// - tiles land in the 128-byte-swizzled canonical layout of wgmma: a tile of
//   R rows x D columns is D/64 blocks of R rows of 128 B. Rows the TMA box
//   reads past a tensor's ends arrive as zeros; keys a row must not see are
//   masked (edge tiles only).
// - S = Q K^T: wgmma m64n128k16, A = Q and B = K both K-major from shared
//   memory; O += P V: wgmma m64n{d_v}k16, A = P from registers (the S
//   accumulator layout is the A fragment layout), B = V MN-major.
// - intra-warpgroup pipelining: S of tile i is issued before P V of tile i-1,
//   so the softmax of tile i runs while the tensor cores do P V.
// - the softmax is the consumers' critical path: inner tiles take a mask-free
//   copy of it (edge tiles one with 32-bit per-row key limits), and each
//   probability costs one FFMA and one ex2.approx.ftz (docs/perf-notes.md,
//   prefill v4).
// Shared memory: (BM d_qk + 2 BN d_qk + 2 BN d_v) * 2 B + 2 KB:
// 162 KB for d = 128, 210 KB for d_qk = 192 / d_v = 128, 82 KB for d = 64.
#include <cstdint>

#include "prefill_common.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int BM = 128, BN = 128, kThreads = 384;

template <int DQK, int DV>
struct Sm90Smem {
  static constexpr int q_bytes = BM * DQK * 2, k_bytes = BN * DQK * 2, v_bytes = BN * DV * 2;
  // 1 KB of barriers, then 1 KB of slack to align the tiles on 1 KB (the swizzle is a function of address bits).
  static constexpr size_t bytes = 2048 + size_t(q_bytes) + 2 * size_t(k_bytes) + 2 * size_t(v_bytes);
};

struct Barriers {
  uint64_t q_full, k_full[2], v_full[2], k_empty[2], v_empty[2];
};

struct Maps {
  CUtensorMap q, k, v, rep_k, rep_v;
};

using sm90::make_desc;

template <class T>
__device__ __forceinline__ void mma_qk(float (&s)[64], uint64_t da, uint64_t db, int scale_d) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) sm90::wgmma_ss_m64n128k16_bf16(s, da, db, scale_d);
  else sm90::wgmma_ss_m64n128k16_f16(s, da, db, scale_d);
}
template <class T, int DV>
__device__ __forceinline__ void mma_pv(float (&o)[DV / 2], const uint32_t (&p)[4], uint64_t db) {
  if constexpr (DV == 128) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) sm90::wgmma_rs_m64n128k16_bf16(o, p, db, 1);
    else sm90::wgmma_rs_m64n128k16_f16(o, p, db, 1);
  } else {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) sm90::wgmma_rs_m64n64k16_bf16(o, p, db, 1);
    else sm90::wgmma_rs_m64n64k16_f16(o, p, db, 1);
  }
}

template <class T, int DQK, int DV>
__global__ void __launch_bounds__(kThreads, 1)
    lca_prefill_sm90_kernel(const __grid_constant__ Maps maps, PrefillArgs a, float scale_log2, float bias_log2) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Sm90Smem<DQK, DV>;
  extern __shared__ unsigned char smem_raw[];
  Barriers& bar = *reinterpret_cast<Barriers*>(smem_raw);
  const uint32_t raw_addr = smem_addr(smem_raw) + 1024;
  unsigned char* sQ = smem_raw + 1024 + ((1024 - (raw_addr & 1023)) & 1023);
  unsigned char* sK = sQ + S::q_bytes;
  unsigned char* sV = sK + 2 * S::k_bytes;

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heaviest first
  const int h = blockIdx.y;
  const int kvh = static_cast<int>(h / (a.q_heads / a.kv_heads));
  const Visibility vis = visibility_of(a);
  const int64_t q0 = tile * BM;
  const int64_t rows = min(static_cast<int64_t>(BM), a.q_len - q0);
  const int64_t t_lo = a.q_start + q0, t_hi = t_lo + rows - 1;
  const TileKeys<BN> keys(t_lo, t_hi, vis);

  if (tid == 0) {
    mbar_init(&bar.q_full, 1);
    for (int st = 0; st < 2; ++st) {
      mbar_init(&bar.k_full[st], 1);
      mbar_init(&bar.v_full[st], 1);
      mbar_init(&bar.k_empty[st], 8);  // lane 0 of each consumer warp
      mbar_init(&bar.v_empty[st], 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer ----
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
    if (tid != 0) return;
    mbar_expect_tx(&bar.q_full, S::q_bytes);
    for (int b = 0; b < DQK / 64; ++b)
      tma_load_3d(sQ + b * BM * 128, &maps.q, b * 64, h, static_cast<int>(q0), &bar.q_full);
    for (int i = 0; i < keys.tiles; ++i) {
      const int st = i & 1;
      const bool rep = keys.is_rep(i);
      const int row = static_cast<int>(rep ? keys.base(i) : keys.base(i) - a.raw_start);
      const CUtensorMap* km = rep ? &maps.rep_k : &maps.k;
      const CUtensorMap* vm = rep ? &maps.rep_v : &maps.v;
      if (i >= 2) mbar_wait(&bar.k_empty[st], ((i >> 1) - 1) & 1);
      mbar_expect_tx(&bar.k_full[st], S::k_bytes);
      for (int b = 0; b < DQK / 64; ++b)
        tma_load_3d(sK + st * S::k_bytes + b * BN * 128, km, b * 64, kvh, row, &bar.k_full[st]);
      if (i >= 2) mbar_wait(&bar.v_empty[st], ((i >> 1) - 1) & 1);
      mbar_expect_tx(&bar.v_full[st], S::v_bytes);
      for (int b = 0; b < DV / 64; ++b)
        tma_load_3d(sV + st * S::v_bytes + b * BN * 128, vm, b * 64, kvh, row, &bar.v_full[st]);
    }
    return;
  }

  // ---- consumers: warpgroup cw owns rows [64 cw, 64 cw + 64) ----
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
  const int cw = wg - 1;
  const int row0 = cw * 64 + warp * 16 + lane / 4;  // and row0 + 8; rows past the end mirror the last
  const RowView row_view[2] = {RowView(t_lo + min(static_cast<int64_t>(row0), rows - 1), vis),
                               RowView(t_lo + min(static_cast<int64_t>(row0 + 8), rows - 1), vis)};
  const uint32_t q_base = smem_addr(sQ) + cw * 64 * 128;

  float o[DV / 2];
#pragma unroll
  for (int x = 0; x < DV / 2; ++x) o[x] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  uint32_t p[BN / 16][4], p2[BN / 16][4];  // P of a tile, waiting for its P V product

  auto issue_qk = [&](float (&s)[64], int i) {
    const uint32_t k_base = smem_addr(sK + (i & 1) * S::k_bytes);
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 values = 32 B into the 128-B row
      mma_qk<T>(s, make_desc(q_base + (kk / 4) * BM * 128 + off, 16, 1024),
                make_desc(k_base + (kk / 4) * BN * 128 + off, 16, 1024), kk > 0 ? 1 : 0);
    }
  };
  auto issue_pv = [&](const uint32_t (&pv)[BN / 16][4], int i) {
    const uint32_t v_base = smem_addr(sV + (i & 1) * S::v_bytes);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) mma_pv<T, DV>(o, pv[kk], make_desc(v_base + kk * 2048, BN * 128, 1024));
  };
  // Mask (edge tiles only), online softmax of tile i: new row maxima, P into
  // pn, and the factor by which O must be rescaled. The maxima are taken on
  // the raw scores (scale > 0 keeps their order) and scale, bias and shift
  // are one FFMA per score before a single MUFU.EX2: the softmax's
  // instructions per score, not the tensor cores, bound this kernel (ncu:
  // tensor pipe 40% busy with the masking, scaling and exp2f's range checks
  // in every tile).
  auto softmax = [&]<bool kMask>(float(&s)[64], int i, uint32_t(&pn)[BN / 16][4], float(&corr)[2]) {
    const bool rep = keys.is_rep(i);
    const float bias = rep ? bias_log2 : 0.f;
    if constexpr (kMask) {
      int first[2], last[2];
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) tile_key_limits<BN>(row_view[ri], rep, keys.base(i), first[ri], last[ri]);
#pragma unroll
      for (int x = 0; x < 64; ++x) {
        const int key = (x / 4) * 8 + (lane % 4) * 2 + (x % 2), ri = (x % 4) / 2;
        if (key < first[ri] || key > last[ri]) s[x] = -INFINITY;
      }
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int x = 0; x < 64; ++x) tile_max[(x % 4) / 2] = fmaxf(tile_max[(x % 4) / 2], s[x]);
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) tile_max[ri] = tile_max[ri] * scale_log2 + bias;  // -inf stays -inf
    float safe[2];
    online_softmax_step(tile_max, row_max, row_sum, safe, corr);
    const float shift[2] = {bias - safe[0], bias - safe[1]};
#pragma unroll
    for (int x = 0; x < 64; x += 2) {
      const int ri = (x % 4) / 2;
      const float e0 = exp2_ftz(fmaf(s[x], scale_log2, shift[ri])), e1 = exp2_ftz(fmaf(s[x + 1], scale_log2, shift[ri]));
      row_sum[ri] += e0 + e1;
      // n8 block x / 4 -> k-step (x / 4) / 2; register (x % 4) / 2 + 2 * ((x / 4) % 2).
      pn[x / 8][(x % 4) / 2 + 2 * ((x / 4) % 2)] = pack2<T>(e0, e1);
    }
  };
  auto softmax_tile = [&](float(&s)[64], int i, uint32_t(&pn)[BN / 16][4], float(&corr)[2]) {
    if (keys.full(i)) softmax.template operator()<false>(s, i, pn, corr);
    else softmax.template operator()<true>(s, i, pn, corr);
  };
  auto release = [&](uint64_t* b) {
    __syncwarp();
    if (lane == 0) mbar_arrive(b);
  };

  mbar_wait(&bar.q_full, 0);
  {  // tile 0: S, softmax; its P V waits for the next iteration
    float s[64];
    float corr[2];
    mbar_wait(&bar.k_full[0], 0);
    sm90::fence_regs(s);
    sm90::wgmma_fence();
    issue_qk(s, 0);
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(s);
    release(&bar.k_empty[0]);
    softmax_tile(s, 0, p, corr);
  }
  // Tile i: S = Q K_i^T is issued before P_{i-1} V_{i-1}, and the softmax of
  // tile i (into pn) runs while that product is on the tensor cores. The two P
  // arrays alternate by name (two steps per loop turn), so no register that an
  // in-flight wgmma reads is ever written.
  auto step = [&](int i, uint32_t (&pp)[BN / 16][4], uint32_t (&pn)[BN / 16][4]) {
    const int st = i & 1, prev = (i - 1) & 1;
    float s[64];
    float corr[2];
    mbar_wait(&bar.k_full[st], (i >> 1) & 1);
    mbar_wait(&bar.v_full[prev], ((i - 1) >> 1) & 1);
    sm90::fence_regs(s);
    sm90::fence_regs(o);
    sm90::wgmma_fence();
    issue_qk(s, i);
    sm90::wgmma_commit();
    issue_pv(pp, i - 1);
    sm90::wgmma_commit();
    sm90::wgmma_wait<1>();  // S of tile i is done; P V of tile i - 1 may still run
    sm90::fence_regs(s);
    release(&bar.k_empty[st]);
    softmax_tile(s, i, pn, corr);
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o);
    release(&bar.v_empty[prev]);
#pragma unroll
    for (int x = 0; x < DV / 2; ++x) o[x] *= corr[(x % 4) / 2];
  };
  int i = 1;
  for (; i + 1 < keys.tiles; i += 2) {
    step(i, p, p2);
    step(i + 1, p2, p);
  }
  if (i < keys.tiles) step(i, p, p2);
  {  // P V of the last tile
    const int last = keys.tiles - 1;
    mbar_wait(&bar.v_full[last & 1], (last >> 1) & 1);
    sm90::fence_regs(o);
    sm90::wgmma_fence();
    if (keys.tiles % 2 == 0) issue_pv(p2, last);  // the array the last step wrote
    else issue_pv(p, last);
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o);
  }

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const float inv = 1.f / quad_sum(row_sum[ri]);
    const int64_t r = row0 + ri * 8;
    if (r >= rows) continue;
    T* dst = out + ((q0 + r) * a.q_heads + h) * DV;
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) {
      const uint32_t pair = pack2<T>(o[n * 4 + ri * 2] * inv, o[n * 4 + ri * 2 + 1] * inv);
      *reinterpret_cast<uint32_t*>(dst + n * 8 + (lane % 4) * 2) = pair;
    }
  }
#else
  __trap();  // built without sm_90a: the host never launches this (prefill_sm90_supports)
#endif
}

template <class T, int DQK, int DV>
void launch(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  using S = Sm90Smem<DQK, DV>;
  auto kernel = lca_prefill_sm90_kernel<T, DQK, DV>;
  LCA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S::bytes)));
  LCA_CHECK(a.q_len < (int64_t(1) << 31) && a.raw_start + a.raw_len < (int64_t(1) << 31), "cuda::lca_prefill",
            ": TMA coordinates are 32-bit; sequences must stay under 2^31 positions");
  Maps maps;
  // Maps over the tensors' own head dims: where the kernel's DQK is wider
  // (d_qk = 96 runs as 128), the columns past d_qk arrive from TMA as zeros.
  maps.q = make_tensor_map(a.q, a.dtype, a.q_len, a.q_heads, a.d_qk, BM);
  maps.k = make_tensor_map(a.k, a.dtype, a.raw_len, a.kv_heads, a.d_qk, BN);
  maps.v = make_tensor_map(a.v, a.dtype, a.raw_len, a.kv_heads, a.d_v, BN);
  // With no representatives (full attention) no rep tile is visited: point at k/v.
  const bool reps = a.reps > 0;
  maps.rep_k = make_tensor_map(reps ? a.rep_k : a.k, a.dtype, reps ? a.reps : a.raw_len, a.kv_heads, a.d_qk, BN);
  maps.rep_v = make_tensor_map(reps ? a.rep_v : a.v, a.dtype, reps ? a.reps : a.raw_len, a.kv_heads, a.d_v, BN);
  const dim3 grid(static_cast<unsigned>((a.q_len + BM - 1) / BM), static_cast<unsigned>(a.q_heads));
  kernel<<<grid, kThreads, S::bytes, stream>>>(maps, a, scale_log2, bias_log2);
  LCA_CUDA_CHECK_LAUNCH("lca_prefill (sm90)");
}

template <class T>
void dispatch_dims(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  if (a.d_qk == 64 && a.d_v == 64) return launch<T, 64, 64>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 96 && a.d_v == 64) return launch<T, 128, 64>(a, scale_log2, bias_log2, stream);  // zero-padded
  if (a.d_qk == 128 && a.d_v == 128) return launch<T, 128, 128>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 192 && a.d_v == 128) return launch<T, 192, 128>(a, scale_log2, bias_log2, stream);
}

}  // namespace

bool prefill_sm90_supports(int64_t d_qk, int64_t d_v) {
  static const bool built = built_for_sm90a(lca_prefill_sm90_kernel<__nv_bfloat16, 128, 128>);
  return built && ((d_qk == 64 && d_v == 64) || (d_qk == 96 && d_v == 64) || (d_qk == 128 && d_v == 128) ||
                    (d_qk == 192 && d_v == 128));
}

void prefill_sm90(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "cuda::lca_prefill",
                 [&](auto tag) { dispatch_dims<decltype(tag)>(a, scale_log2, bias_log2, stream); });
}

}  // namespace lca::cuda::detail
