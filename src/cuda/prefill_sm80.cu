// The prefill kernel for sm_80 and for head dims the Hopper kernel does not
// take: a chunk of queries over [representatives ; raw rows] with the
// per-query staircase of lca-spec.md section 4 (full causal attention: the
// same kernel with LcaParams::full()).
//
// Tile plan (FlashAttention-2 style, mma.sync m16n8k16, fp32 accumulators):
// - a block owns BM = 64 query rows of one query head; 4 warps, each warp 16
//   rows. Blocks run heaviest tiles first (reversed tile order).
// - the key loop walks the representative tiles [0, m(t_hi + 1)) and then the
//   raw tiles [g m(t_lo + 1), t_hi], BN = 64 keys each: every key tile that no
//   row of the block sees is skipped by construction, and the per-element mask
//   is applied only to tiles some row sees partly (the staircase edges).
// - Q stays in registers as A fragments (ldmatrix from shared memory once);
//   K and V tiles are double-buffered in shared memory by cp.async (rows out of
//   range zero-filled), read by ldmatrix (V transposed); rows padded by 16 B so
//   the 8 rows of an ldmatrix hit distinct banks.
// - online softmax in the log2 domain; P goes from the S accumulators straight
//   into A fragments of the P V product.
// Shared memory: (BM (d_qk+8) + 2 BN (d_qk+8) + 2 BN (d_v+8)) * 2 bytes:
// 80 KB for d = 128, 104 KB for d_qk = 192, d_v = 128.
#include <cstdint>

#include "mma_sm80.cuh"
#include "prefill_common.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int BM = 64, BN = 64, kWarps = 4, kThreads = kWarps * 32;

template <class T, int DQK, int DV>
struct Smem {
  static constexpr int QS = DQK + 8, KS = DQK + 8, VS = DV + 8;  // padded row strides (elements)
  static constexpr size_t bytes = (size_t(BM) * QS + 2 * size_t(BN) * KS + 2 * size_t(BN) * VS) * sizeof(T);
};

template <class T, int DQK, int DV>
__global__ void __launch_bounds__(kThreads) lca_prefill_kernel(PrefillArgs a, float scale_log2,
                                                               float rep_bias_log2) {
  using S = Smem<T, DQK, DV>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * S::QS;
  T* sV = sK + 2 * BN * S::KS;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heaviest first
  const int h = blockIdx.y;
  const int64_t kvh = h / (a.q_heads / a.kv_heads);
  const Visibility vis = visibility_of(a);
  const int64_t q0 = tile * BM;
  const int64_t rows = min(static_cast<int64_t>(BM), a.q_len - q0);
  const int64_t t_lo = a.q_start + q0, t_hi = t_lo + rows - 1;

  const TileKeys<BN> keys(t_lo, t_hi, vis);
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* rk = static_cast<const T*>(a.rep_k);
  const T* rv = static_cast<const T*>(a.rep_v);
  const int64_t raw_end = a.raw_start + a.raw_len;

  // Q tile -> shared memory (rows past q_len are zeros).
  for (int c = threadIdx.x; c < BM * (DQK / 8); c += kThreads) {
    const int r = c / (DQK / 8), col = (c % (DQK / 8)) * 8;
    const bool ok = r < rows;
    const T* src = q + ((q0 + (ok ? r : 0)) * a.q_heads + h) * DQK + col;
    cp_async16(sQ + r * S::QS + col, src, ok ? 16 : 0);
  }
  auto load_tile = [&](int i, int stage) {
    T* dk = sK + stage * BN * S::KS;
    T* dv = sV + stage * BN * S::VS;
    const bool rep = keys.is_rep(i);
    const int64_t base = keys.base(i);
    // Rows of width D from the representatives or the raw rows; keys out of range are zeros.
    auto load_rows = [&]<int D>(T* dst, int stride, const T* rep_src, const T* raw_src) {
      for (int c = threadIdx.x; c < BN * (D / 8); c += kThreads) {
        const int r = c / (D / 8), col = (c % (D / 8)) * 8;
        const int64_t key = base + r;
        const bool ok = rep ? key < keys.m_hi : (key >= a.raw_start && key < raw_end && key <= t_hi);
        const T* src = rep ? rep_src + ((ok ? key : 0) * a.kv_heads + kvh) * D + col
                           : raw_src + ((ok ? key - a.raw_start : 0) * a.kv_heads + kvh) * D + col;
        cp_async16(dst + r * stride + col, src, ok ? 16 : 0);
      }
    };
    load_rows.template operator()<DQK>(dk, S::KS, rk, k);
    load_rows.template operator()<DV>(dv, S::VS, rv, v);
  };
  load_tile(0, 0);
  cp_async_commit();

  // Per-thread rows: r0 = lane / 4 and r0 + 8 of the warp's 16.
  // (rows past the end mirror the last row; they are never stored)
  const RowView row_view[2] = {RowView(t_lo + min(static_cast<int64_t>(warp * 16 + lane / 4), rows - 1), vis),
                               RowView(t_lo + min(static_cast<int64_t>(warp * 16 + lane / 4 + 8), rows - 1), vis)};

  uint32_t qf[DQK / 16][4];
  float o[DV / 8][4];
#pragma unroll
  for (int n = 0; n < DV / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int i = 0; i < keys.tiles; ++i) {
    if (i + 1 < keys.tiles) {
      load_tile(i + 1, (i + 1) & 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (i == 0) {
#pragma unroll
      for (int kk = 0; kk < DQK / 16; ++kk)
        ldmatrix_x4(qf[kk], sQ + (warp * 16 + lane % 16) * S::QS + kk * 16 + (lane / 16) * 8);
    }
    const T* tk = sK + (i & 1) * BN * S::KS;
    const T* tv = sV + (i & 1) * BN * S::VS;

    // S = Q K^T for the warp's 16 rows x BN keys.
    float s[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int np = 0; np < BN / 16; ++np) {
#pragma unroll
      for (int kk = 0; kk < DQK / 16; ++kk) {
        uint32_t b[4];
        ldmatrix_x4(b, tk + (np * 16 + (lane / 16) * 8 + lane % 8) * S::KS + kk * 16 + ((lane / 8) % 2) * 8);
        mma16816<T>(s[2 * np], qf[kk], b[0], b[1]);
        mma16816<T>(s[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }

    // Mask (edge tiles only, a copy of the loop without it for the others),
    // maxima of the raw scores (scale > 0 keeps their order), then each
    // probability as one FFMA and one ex2 (as the Hopper kernel does).
    const bool rep = keys.is_rep(i);
    const float bias = rep ? rep_bias_log2 : 0.f;
    if (!keys.full(i)) {
      int first[2], last[2];
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) tile_key_limits<BN>(row_view[ri], rep, keys.base(i), first[ri], last[ri]);
#pragma unroll
      for (int n = 0; n < BN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n * 8 + (lane % 4) * 2 + (e % 2), ri = e / 2;
          if (key < first[ri] || key > last[ri]) s[n][e] = -INFINITY;
        }
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[n][e]);
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) tile_max[ri] = tile_max[ri] * scale_log2 + bias;  // -inf stays -inf
    float corr[2], safe[2];
    online_softmax_step(tile_max, row_max, row_sum, safe, corr);
    const float shift[2] = {bias - safe[0], bias - safe[1]};
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2_ftz(fmaf(s[n][e], scale_log2, shift[e / 2]));
        row_sum[e / 2] += s[n][e];
      }
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int nd = 0; nd < DV / 16; ++nd) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, tv + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * S::VS + nd * 16 + (lane / 16) * 8);
        mma16816<T>(o[2 * nd], pa, b[0], b[1]);
        mma16816<T>(o[2 * nd + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's load
  }

  // Normalise and store.
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const float inv = 1.f / quad_sum(row_sum[ri]);
    const int64_t r = warp * 16 + lane / 4 + ri * 8;
    if (r >= rows) continue;
    T* dst = out + ((q0 + r) * a.q_heads + h) * DV;
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) {
      const uint32_t pair = pack2<T>(o[n][ri * 2] * inv, o[n][ri * 2 + 1] * inv);
      *reinterpret_cast<uint32_t*>(dst + n * 8 + (lane % 4) * 2) = pair;
    }
  }
}

template <class T, int DQK, int DV>
void launch(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  using S = Smem<T, DQK, DV>;
  auto kernel = lca_prefill_kernel<T, DQK, DV>;
  LCA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S::bytes)));
  const dim3 grid(static_cast<unsigned>((a.q_len + BM - 1) / BM), static_cast<unsigned>(a.q_heads));
  kernel<<<grid, kThreads, S::bytes, stream>>>(a, scale_log2, bias_log2);
  LCA_CUDA_CHECK_LAUNCH("lca_prefill (sm80)");
}

template <class T>
void dispatch_dims(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  if (a.d_qk == 64 && a.d_v == 64) return launch<T, 64, 64>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 96 && a.d_v == 64) return launch<T, 96, 64>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 128 && a.d_v == 128) return launch<T, 128, 128>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 192 && a.d_v == 128) return launch<T, 192, 128>(a, scale_log2, bias_log2, stream);
}

}  // namespace

bool prefill_sm80_supports(int64_t d_qk, int64_t d_v) {
  return (d_qk == 64 && d_v == 64) || (d_qk == 96 && d_v == 64) || (d_qk == 128 && d_v == 128) ||
         (d_qk == 192 && d_v == 128);
}

void prefill_sm80(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "cuda::lca_prefill",
                 [&](auto tag) { dispatch_dims<decltype(tag)>(a, scale_log2, bias_log2, stream); });
}

}  // namespace lca::cuda::detail
