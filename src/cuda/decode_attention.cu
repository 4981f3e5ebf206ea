// decode_attention: one new query per sequence attends its rows
// [representatives ; raw window] (lca-spec.md section 4; full attention: rows
// [0, t]) in the paged cache, split over the row list (flash-decoding); the
// combine kernel (decode_combine.cu) merges the splits. On sm_90a MiniCPM3's
// shape takes decode_attention_sm90.cu (wgmma) instead; this kernel serves it
// on other devices.
//
// Tile plan (mma.sync m16n8k16, fp32 accumulators; 4 warps per head tile,
// 128 HT threads):
// - a block owns one (split, batch entry, kv head, block of 16 HT query heads;
//   HT = 3 for MiniCPM3's 40 heads, 1 elsewhere). MLA has one kv head, so all
//   heads of a sequence share every row read (absorbed form: key = [c ; k^R],
//   value = c, one row read serves both); GQA loads the kv head's [k ; v]
//   slice of each row.
// - a split's rows are whole tiles of R rows, spread evenly over the splits,
//   in S stages in shared memory by cp.async (rows past the end zero-filled);
//   a tile's row addresses are looked up once in the block tables (into shared
//   memory) before its copies are issued. DeepSeek: R = 32, S = 2, so that two
//   blocks share an SM and one's loads overlap the other's math; GQA: R = 64,
//   S = 2; MiniCPM3: R = 64, S = 3, one block per SM (below), whose tiles of
//   576-byte rows carry three head tiles' math each.
// - launched with programmatic dependent launch after the append kernel: a
//   block looks up and copies its first tiles while the append still runs (at
//   batch 1 the step is a chain of latencies), taking the new raw row t from
//   the step's input rows; only the block that holds a row the append computes
//   (a closing group's representative, MTLA's open row) waits for it first.
// - S = Q K^T: warp w takes head tile w / 4 and a quarter (w % 4) of the
//   tile's rows (Q and K by ldmatrix; even and odd k-steps in separate
//   accumulators), scales, masks, and writes S to shared memory. (With one
//   warp quartet looping over MiniCPM3's three head tiles, its tiles were
//   three times longer chains.) With three head tiles each warp keeps its Q
//   fragments in registers (72 for d_qk = 288) instead of reloading them at
//   every k-step of every tile.
// - softmax: 8 threads per head reduce the tile's scores (online, log2
//   domain), write P (in the storage dtype) and the rescale factor.
// - O += P V: warp w owns output columns [q d_v/4, (q+1) d_v/4), q = w % 4, of
//   its head tile (V by transposed ldmatrix from the same shared rows).
// - the split's output, normalised, and its log-sum-exp go to fp32 workspace.
// Shared memory: (16 HT (d_qk+8) + S R (W+8) + 16 HT (R+8)) * 2 + 16 HT R * 4
// bytes and a little, W = d_qk (MLA) or 2 d (GQA): 97 KB for DeepSeek
// (576/512), 160 KB for MiniCPM3 (288/256, HT = 3), 74 KB for GQA d = 128.
#include <cmath>

#include "decode.cuh"
#include "mma_sm80.cuh"
#include "prefill_common.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kHeads = 16, kWarps = 4;  // kWarps warps per head tile

// HT head tiles of 16 per block: every row a block loads serves 16 HT heads;
// R rows per tile (64, or 32 where a smaller tile lets two blocks share an SM);
// S stages of tiles in flight.
template <class T, bool kMla, int DQK, int DV, int HT, int R, int S>
struct Tile {
  static constexpr int kRows = R, kStages = S;
  static constexpr int MH = kHeads * HT;          // query heads per block
  static constexpr int kThreads = 32 * kWarps * HT;  // four warps per head tile
  static constexpr int kMinBlocks = 1;
  // Several head tiles (MiniCPM3's 40 heads): each warp keeps its head tile's
  // Q fragments in registers (DQK / 16 x 4), loaded once, not from shared
  // memory at every k-step of every tile. The block then has an SM to itself;
  // with 64-row tiles in three stages that made this shape's decode 10-15%
  // faster (docs/perf-notes.md).
  static constexpr bool kQInRegs = HT > 1;
  static constexpr int W = kMla ? DQK : 2 * DQK;  // values of a row the block loads
  static constexpr int VO = kMla ? 0 : DQK;       // the value's offset within them
  static constexpr int RS = W + 8, QS = DQK + 8, PS = kRows + 8;  // padded shared rows (elements)
  static constexpr int NV = DV / kWarps;          // output columns per warp
  static constexpr size_t q_elems = size_t(MH) * QS, row_elems = size_t(kStages) * kRows * RS,
                          p_elems = size_t(MH) * PS;
  static constexpr size_t bytes = (q_elems + row_elems + p_elems) * sizeof(T) + size_t(MH) * kRows * 4 +
                                  3 * MH * 4 + kStages * kRows * sizeof(void*);
  static constexpr int WR = R / kWarps, NT = WR / 8;  // tile rows per warp in S, n8 tiles of them
  static_assert(DQK % 32 == 0 && NV % 16 == 0, "head dims must be multiples of 32 (d_v of 64)");
  static_assert(R == 32 || R == 64, "tiles of 32 or 64 rows");
};

template <class T, bool kMla, int DQK, int DV, int HT, int R, int S, class L = Tile<T, kMla, DQK, DV, HT, R, S>>
__global__ void __launch_bounds__(L::kThreads, L::kMinBlocks)
    decode_attention_kernel(PagedView v, StepView s, DecodeShape sh, const T* queries, const T* new_rows,
                            float* part_out, float* part_lse, float scale_log2, float rep_bias_log2) {
  constexpr int MH = L::MH, kRows = L::kRows, NT = L::NT, kThreads = L::kThreads, kStages = L::kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sRows = sQ + L::q_elems;
  T* sP = sRows + L::row_elems;
  float* sS = reinterpret_cast<float*>(sP + L::p_elems);
  float* sMax = sS + MH * kRows;
  float* sSum = sMax + MH;
  float* sCorr = sSum + MH;
  const T** sPtr = reinterpret_cast<const T**>(sCorr + MH);

  // Warp w serves head tile ht = w / 4 and a quarter q4 = w % 4 of the tile's rows (S) and of the output columns (P V).
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, tid = threadIdx.x;
  const int ht = warp / kWarps, q4 = warp % kWarps;
  const int split = blockIdx.x, b = blockIdx.y, splits = gridDim.x;
  const int per = sh.q_heads / sh.kv_heads, head_blocks = (per + MH - 1) / MH;
  const int kv = blockIdx.z / head_blocks, h0 = kv * per + (blockIdx.z % head_blocks) * MH;
  const int heads = min(MH, kv * per + per - h0);  // valid heads of this block

  const int64_t t = s.positions[b];
  const int64_t tr = table_row(v, s.seqs[b]);
  const DecodeRows rows(v, t);
  // Tiles spread evenly over the splits (a sequence shorter than the longest may leave some empty).
  const int64_t tiles_total = (rows.count + kRows - 1) / kRows;
  const int64_t r0 = tiles_total * split / splits * kRows, r1 = min(rows.count, tiles_total * (split + 1) / splits * kRows);
  float* lse_out = part_lse + (static_cast<int64_t>(b) * splits + split) * sh.q_heads + h0;
  pdl_launch_dependents();  // the combine kernel's blocks may take their places now
  const bool reads_appended = r0 <= rows.appended && rows.appended < r1;
  if (reads_appended) pdl_wait();
  if (r0 >= r1) {  // an empty split weighs 0; its output is zeros, so the combine reads it without a branch
    pdl_wait();
    for (int h = tid; h < heads; h += kThreads) lse_out[h] = -INFINITY;
    for (int i = tid; i < heads * DV; i += kThreads)
      part_out[((static_cast<int64_t>(b) * splits + split) * sh.q_heads + h0) * DV + i] = 0.f;
    return;
  }
  const int tiles = static_cast<int>((r1 - r0 + kRows - 1) / kRows);
  const int64_t slice = kMla ? 0 : static_cast<int64_t>(kv) * 2 * DQK;

  // Q (heads past `heads` are zeros).
  const T* qsrc = queries + (static_cast<int64_t>(b) * sh.q_heads + h0) * DQK;
  for (int c = tid; c < MH * (DQK / 8); c += kThreads) {
    const int hl = c / (DQK / 8), col = (c % (DQK / 8)) * 8;
    cp_async16(sQ + hl * L::QS + col, qsrc + (hl < heads ? hl : 0) * DQK + col, hl < heads ? 16 : 0);
  }
  for (int h = tid; h < MH; h += kThreads) sMax[h] = -INFINITY, sSum[h] = 0.f;
  // Raw row t, the list's last (not MTLA's), is the step's input row.
  const int64_t input_row = v.mtla_s == 0 && rows.count > rows.m ? rows.count - 1 : -1;
  auto find_rows = [&](int i) {  // row addresses of tile i (threads 0 .. kRows - 1)
    const int64_t r = r0 + int64_t(i) * kRows + tid;
    if (tid < kRows)
      sPtr[(i % kStages) * kRows + tid] = r >= r1          ? nullptr
                                          : r == input_row ? new_rows + b * v.row_elems + slice
                                                           : paged_row<T>(v, tr, rows, r) + slice;
  };
  auto load_rows = [&](int i) {
    T* dst = sRows + (i % kStages) * kRows * L::RS;
    for (int c = tid; c < kRows * (L::W / 8); c += kThreads) {
      const int r = c / (L::W / 8), col = (c % (L::W / 8)) * 8;
      const T* src = sPtr[(i % kStages) * kRows + r];
      cp_async16(dst + r * L::RS + col, src != nullptr ? src + col : qsrc, src != nullptr ? 16 : 0);
    }
  };
  // Tiles 0 .. S-2 now (Q with tile 0), tile i + S - 1 at iteration i; one
  // commit group per tile (empty past the last), so tile i is complete when at
  // most S - 1 groups are pending.
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < tiles) {
      find_rows(i);
      __syncthreads();
      load_rows(i);
    }
    cp_async_commit();
  }

  float o[L::NV / 8][4];
#pragma unroll
  for (int n = 0; n < L::NV / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  uint32_t qf[L::kQInRegs ? DQK / 16 : 1][4];  // the warp's Q fragments, where kept in registers

  for (int i = 0; i < tiles; ++i) {
    if (i + kStages - 1 < tiles) {
      find_rows(i + kStages - 1);
      __syncthreads();
      load_rows(i + kStages - 1);
    }
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    if constexpr (L::kQInRegs)
      if (i == 0)
#pragma unroll
        for (int kk = 0; kk < DQK / 16; ++kk)
          ldmatrix_x4(qf[kk], sQ + (ht * 16 + lane % 16) * L::QS + kk * 16 + (lane / 16) * 8);
    const T* tile = sRows + (i % kStages) * kRows * L::RS;
    const int64_t base = r0 + int64_t(i) * kRows;

    // S for the warp's quarter of the tile's rows and its head tile; even and
    // odd k-steps accumulate apart, halving the chain of dependent mma.
    float acc[NT][4] = {}, acc_odd[NT][4] = {};
    auto k_step = [&](int kk, float(&c)[NT][4], const uint32_t(&a)[4]) {
      uint32_t bk[4];
      if constexpr (NT == 2)
        ldmatrix_x4(bk, tile + (q4 * 16 + (lane / 16) * 8 + lane % 8) * L::RS + kk * 16 + ((lane / 8) % 2) * 8);
      else
        ldmatrix_x2(bk, tile + (q4 * 8 + lane % 8) * L::RS + kk * 16 + ((lane / 8) % 2) * 8);
      mma16816<T>(c[0], a, bk[0], bk[1]);
      if constexpr (NT == 2) mma16816<T>(c[1], a, bk[2], bk[3]);
    };
    if constexpr (L::kQInRegs) {
#pragma unroll
      for (int kk = 0; kk < DQK / 16; kk += 2) {
        k_step(kk, acc, qf[kk]);
        k_step(kk + 1, acc_odd, qf[kk + 1]);
      }
    } else {
      auto q_frag = [&](int kk, uint32_t(&a)[4]) {
        ldmatrix_x4(a, sQ + (ht * 16 + lane % 16) * L::QS + kk * 16 + (lane / 16) * 8);
      };
#pragma unroll 2
      for (int kk = 0; kk < DQK / 16; kk += 2) {
        uint32_t a0[4], a1[4];
        q_frag(kk, a0);
        k_step(kk, acc, a0);
        q_frag(kk + 1, a1);
        k_step(kk + 1, acc_odd, a1);
      }
    }
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int head = ht * 16 + lane / 4 + (e / 2) * 8, key = q4 * L::WR + n * 8 + (lane % 4) * 2 + (e % 2);
        const int64_t r = base + key;
        const float x = acc[n][e] + acc_odd[n][e];
        sS[head * kRows + key] = r < r1 ? x * scale_log2 + (r < rows.m ? rep_bias_log2 : 0.f) : -INFINITY;
      }
    __syncthreads();

    // Online softmax over the tile: 8 threads per head, kRows / 8 scores each.
    constexpr int KPT = kRows / 8;
    for (int item = tid; item < MH * 8; item += kThreads) {
      const int head = item / 8, part = item % 8;
      float x[KPT], tile_max = -INFINITY;
#pragma unroll
      for (int e = 0; e < KPT; ++e) tile_max = fmaxf(tile_max, x[e] = sS[head * kRows + part * KPT + e]);
#pragma unroll
      for (int o2 = 1; o2 < 8; o2 <<= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o2));
      const float old_max = sMax[head], new_max = fmaxf(old_max, tile_max);
      const float safe = new_max == -INFINITY ? 0.f : new_max;
      float sum = 0.f;
#pragma unroll
      for (int e = 0; e < KPT; e += 2) {
        const float p0 = exp2f(x[e] - safe), p1 = exp2f(x[e + 1] - safe);
        sum += p0 + p1;
        *reinterpret_cast<uint32_t*>(sP + head * L::PS + part * KPT + e) = pack2<T>(p0, p1);
      }
#pragma unroll
      for (int o2 = 1; o2 < 8; o2 <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o2);
      __syncwarp();  // every lane of the head has read sMax before lane 0 rewrites it
      if (part == 0) {
        const float corr = exp2f(old_max - safe);
        sCorr[head] = corr;
        sSum[head] = sSum[head] * corr + sum;
        sMax[head] = new_max;
      }
    }
    __syncthreads();

    // O = O * corr + P V for the warp's columns of its head tile.
    {
      const float c0 = sCorr[ht * 16 + lane / 4], c1 = sCorr[ht * 16 + lane / 4 + 8];
#pragma unroll
      for (int n = 0; n < L::NV / 8; ++n) o[n][0] *= c0, o[n][1] *= c0, o[n][2] *= c1, o[n][3] *= c1;
    }
#pragma unroll
    for (int kk = 0; kk < kRows / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, sP + (ht * 16 + lane % 16) * L::PS + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int nd = 0; nd < L::NV / 16; ++nd) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, tile + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * L::RS + L::VO + q4 * L::NV +
                                  nd * 16 + (lane / 16) * 8);
        mma16816<T>(o[2 * nd], a, bv[0], bv[1]);
        mma16816<T>(o[2 * nd + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();  // this stage, S and P are refilled next
  }

  if (!reads_appended) pdl_wait();  // the grid completes after the append kernel
  // The split's normalised output and log-sum-exp (log2 domain).
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const int hl = ht * 16 + lane / 4 + ri * 8;
    if (hl >= heads) continue;
    const float inv = 1.f / sSum[hl];
    float* dst = part_out + ((static_cast<int64_t>(b) * splits + split) * sh.q_heads + h0 + hl) * DV + q4 * L::NV;
#pragma unroll
    for (int n = 0; n < L::NV / 8; ++n)
      *reinterpret_cast<float2*>(dst + n * 8 + (lane % 4) * 2) = make_float2(o[n][ri * 2] * inv, o[n][ri * 2 + 1] * inv);
  }
  for (int h = tid; h < heads; h += kThreads) lse_out[h] = sMax[h] + log2f(sSum[h]);
}

// Calls f.template operator()<kMla, DQK, DV, HT, R, S>() for a built shape; false if none.
// MiniCPM3's 40 heads take three head tiles per block (its rows read once, not
// three times) and 64-row tiles in three stages; DeepSeek takes 32-row tiles,
// so two blocks share an SM.
template <class F>
bool dispatch_shape(bool mla, int64_t d_qk, int64_t d_v, F&& f) {
  if (mla && d_qk == 576 && d_v == 512) return f.template operator()<true, 576, 512, 1, 32, 2>(), true;
  if (mla && d_qk == 288 && d_v == 256) return f.template operator()<true, 288, 256, 3, 64, 3>(), true;
  if (!mla && d_qk == 128 && d_v == 128) return f.template operator()<false, 128, 128, 1, 64, 2>(), true;
  if (!mla && d_qk == 64 && d_v == 64) return f.template operator()<false, 64, 64, 1, 64, 2>(), true;
  return false;
}


}  // namespace

int decode_heads_per_block(const DecodeShape& sh) {
  if (decode_sm90_supports(sh)) return sh.q_heads;
  int mh = kHeads;
  dispatch_shape(sh.mla, sh.d_qk, sh.d_v, [&]<bool, int, int, int HT, int, int>() { mh = kHeads * HT; });
  return mh;
}

int decode_tile_rows(const DecodeShape& sh) {
  if (decode_sm90_supports(sh)) return decode_sm90_tile_rows();
  int rows = 64;
  dispatch_shape(sh.mla, sh.d_qk, sh.d_v, [&]<bool, int, int, int, int R, int>() { rows = R; });
  return rows;
}

bool decode_supports(bool mla, int64_t d_qk, int64_t d_v) {
  return mla ? (d_qk == 576 && d_v == 512) || (d_qk == 288 && d_v == 256)
             : (d_qk == 128 && d_v == 128) || (d_qk == 64 && d_v == 64);
}

int decode_ctas_per_sm(const DecodeShape& sh, DType dtype) {
  if (decode_sm90_supports(sh)) return decode_sm90_ctas_per_sm(dtype);
  int ctas = 1;
  dispatch_dtype(dtype, "cuda::decode_attention", [&](auto tag) {
    using T = decltype(tag);
    dispatch_shape(sh.mla, sh.d_qk, sh.d_v, [&]<bool kMla, int DQK, int DV, int HT, int R, int S>() {
      using L = Tile<T, kMla, DQK, DV, HT, R, S>;
      ctas = blocks_per_sm(decode_attention_kernel<T, kMla, DQK, DV, HT, R, S>, L::kThreads, L::bytes);
    });
  });
  return ctas;
}

int device_sm_count() {
  int dev = 0, sms = 0;
  LCA_CUDA_CHECK(cudaGetDevice(&dev));
  LCA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

void decode_attention(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* queries,
                      const void* new_rows, void* part_out, float* part_lse, int splits, double scale,
                      const LcaParams& params, DType dtype, cudaStream_t stream) {
  if (s.batch == 0) return;
  const float scale_log2 = static_cast<float>(scale) * 1.4426950408889634f;
  const float bias_log2 =
      !params.is_full() && params.mass_bias == MassBias::log_g ? std::log2(static_cast<float>(params.group)) : 0.f;
  if (decode_sm90_supports(sh))
    return decode_attention_sm90(v, s, sh, queries, new_rows, part_out, part_lse, splits, scale_log2, bias_log2, dtype,
                                 stream);
  const int per = sh.q_heads / sh.kv_heads, mh = decode_heads_per_block(sh);
  const dim3 grid(splits, s.batch, sh.kv_heads * ((per + mh - 1) / mh));
  dispatch_dtype(dtype, "cuda::decode_attention", [&](auto tag) {
    using T = decltype(tag);
    dispatch_shape(sh.mla, sh.d_qk, sh.d_v, [&]<bool kMla, int DQK, int DV, int HT, int R, int S>() {
      using L = Tile<T, kMla, DQK, DV, HT, R, S>;
      auto kernel = decode_attention_kernel<T, kMla, DQK, DV, HT, R, S>;
      // Once per kernel, outside any graph capture that later launches run in.
      static const cudaError_t attr =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::bytes));
      LCA_CUDA_CHECK(attr);
      launch_with_pdl(kernel, grid, L::kThreads, L::bytes, stream, v, s, sh, static_cast<const T*>(queries),
                      static_cast<const T*>(new_rows), static_cast<float*>(part_out), part_lse, scale_log2,
                      bias_log2);
      LCA_CUDA_CHECK_LAUNCH("decode_attention");
    });
  });
}

}  // namespace lca::cuda::detail
