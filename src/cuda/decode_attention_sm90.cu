// decode_attention_sm90: decode_attention.cu's split-KV attention for
// MiniCPM3's MLA shape (40 heads, d_qk = 288 = latent 256 + rope 32, d_v =
// 256) on Hopper's wgmma (sm_90a): the same function and splits. Its split
// outputs go to the workspace in the storage dtype, not fp32: at batch 8, 33
// splits of 40 heads x 256 are 10.8 MB of fp32 written at every block's end
// and read again by decode_combine, a quarter of LCA's cache bytes at 128K;
// half of that made MiniCPM3's batch-8 steps 3-7% faster (docs/perf-notes.md).
// The mma.sync kernel keeps fp32, where the same change measured no faster.
//
// Why a kernel of its own: a MiniCPM3 row feeds 40 heads of math per 576
// bytes, three times DeepSeek-V2-Lite's per byte. With mma.sync every operand
// passes through ldmatrix and registers, and four block-wide barriers a tile
// held full decode near half the copy bandwidth (docs/perf-notes.md). wgmma
// reads both operands of S = Q K^T from shared memory and the tensor cores
// run the products asynchronously.
//
// Tile plan (one warpgroup, 128 threads; two blocks per SM, so that one's
// loads and barriers hide under the other's math):
// - a block owns one (split, batch entry) and all heads, padded to wgmma's
//   M = 64: Q's 40 rows are held, and the A operand's rows 40..63 read
//   whatever follows them in shared memory; those rows' outputs are dropped,
//   and no output row depends on another row of Q. The padding costs 1.6x the
//   math of 40 heads, which the tensor cores have to spare at 576 bytes a row.
// - tiles of R = 64 rows of the split's part of [representatives ; raw
//   window], in S = 2 stages, copied by all threads with cp.async into the
//   128-byte-swizzled canonical layout: five blocks of 64 columns x R rows of
//   128 B (the fifth holds the rope's 32 values, half used). Eight threads a
//   row, each looking its rows up itself; raw row t comes from the step's
//   input rows. Programmatic launch as decode_attention.cu.
// - S = Q K^T: 18 wgmma m64n64k16, A = Q and B = the tile, both K-major.
// - softmax in registers, FlashAttention style: heads are the accumulator's
//   rows, four threads a head; scale, representative bias and the split's end
//   per key, online in the log2 domain; P stays in registers as the A operand.
// - O += P V: two wgmma m64n128k16 per 16 rows, B = the tile's first 256
//   columns (the latent c) read MN-major: the value is the key's first part.
// Shared memory: Q 25 KB + 2 x 40 KB + alignment: 106 KB.
// (Three stages at one block per SM, and 32-row tiles in three or four
// stages at two, were slower: docs/perf-notes.md.)
#include <cmath>

#include "decode.cuh"
#include "prefill_common.cuh"
#include "wgmma.cuh"

namespace lca::cuda::detail {
namespace {

// One warpgroup; tiles of R rows in S stages; Q rows held (heads <= 40).
constexpr int kThreads = 128, R = 64, kStages = 2, kQRows = 40;
constexpr int DQK = 288, DV = 256;
[[maybe_unused]] constexpr int kChunks = DQK / 8;  // 16-byte chunks of a row
constexpr int kColBlocks = (DQK + 63) / 64;
constexpr int kQBytes = kColBlocks * kQRows * 128, kTileBytes = kColBlocks * R * 128;
constexpr size_t kSmemBytes = 1024 + kQBytes + size_t(kStages) * kTileBytes;

bool g_use_sm90 = true;

// Byte offset of 16-byte chunk c of row r in a swizzled buffer of `rows` rows
// (chunk j of a 128-B row lands at j ^ (r % 8): the 128-byte swizzle).
[[maybe_unused]] __device__ __forceinline__ uint32_t swizzled(int r, int c, int rows) {
  return (c / 8) * rows * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4);
}

template <class T>
__device__ __forceinline__ void mma_s(float (&s)[32], uint64_t da, uint64_t db, int scale_d) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) sm90::wgmma_ss_m64n64k16_bf16(s, da, db, scale_d);
  else sm90::wgmma_ss_m64n64k16_f16(s, da, db, scale_d);
}
template <class T>
__device__ __forceinline__ void mma_pv(float (&o)[64], const uint32_t (&p)[4], uint64_t db) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) sm90::wgmma_rs_m64n128k16_bf16(o, p, db, 1);
  else sm90::wgmma_rs_m64n128k16_f16(o, p, db, 1);
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1)
    decode_attention_sm90_kernel(PagedView v, StepView s, DecodeShape sh, const T* queries, const T* new_rows,
                                 T* part_out, float* part_lse, float scale_log2, float rep_bias_log2) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  // Tiles on 1 KB boundaries: the swizzle is a function of address bits.
  unsigned char* sQ = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  unsigned char* sRows = sQ + kQBytes;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int split = blockIdx.x, b = blockIdx.y, splits = gridDim.x;
  const int heads = sh.q_heads;  // <= kQRows, one kv head (decode_sm90_supports)
  const int64_t t = s.positions[b];
  const int64_t tr = table_row(v, s.seqs[b]);
  const DecodeRows rows(v, t);
  // Tiles spread evenly over the splits, as decode_attention.cu.
  const int64_t tiles_total = (rows.count + R - 1) / R;
  const int64_t r0 = tiles_total * split / splits * R, r1 = min(rows.count, tiles_total * (split + 1) / splits * R);
  float* lse_out = part_lse + (static_cast<int64_t>(b) * splits + split) * heads;
  T* out = part_out + (static_cast<int64_t>(b) * splits + split) * heads * DV;
  pdl_launch_dependents();
  const bool reads_appended = r0 <= rows.appended && rows.appended < r1;
  if (reads_appended) pdl_wait();
  if (r0 >= r1) {  // an empty split weighs 0
    pdl_wait();
    for (int h = tid; h < heads; h += kThreads) lse_out[h] = -INFINITY;
    for (int i = tid; i < heads * DV; i += kThreads) out[i] = from_float<T>(0.f);
    return;
  }
  const int tiles = static_cast<int>((r1 - r0 + R - 1) / R);

  const T* qsrc = queries + static_cast<int64_t>(b) * heads * DQK;
  for (int c = tid; c < kQRows * kChunks; c += kThreads) {
    const int h = c / kChunks, col = c % kChunks;
    cp_async16(sQ + swizzled(h, col, kQRows), qsrc + (h < heads ? h : 0) * DQK + col * 8, h < heads ? 16 : 0);
  }
  const int64_t input_row = v.mtla_s == 0 && rows.count > rows.m ? rows.count - 1 : -1;
  // Eight threads a row, 16 rows a pass: thread tid copies chunks c = tid % 8
  // + 8 j of rows tid / 8 + 16 p. Each thread looks its four rows up itself
  // (no shared table, no barrier), a warp's copies are four 128-byte runs, and
  // c % 8 is the thread's own, so a row's swizzled chunk slot is one XOR.
  const int lc = tid % 8;
  auto load_rows = [&](int i) {  // rows past the split's end arrive as zeros
    unsigned char* dst = sRows + (i % kStages) * kTileBytes;
    const T* src[R / 16];
#pragma unroll
    for (int p = 0; p < R / 16; ++p) {
      const int64_t r = r0 + int64_t(i) * R + p * 16 + tid / 8;
      src[p] = r >= r1 ? nullptr : r == input_row ? new_rows + b * v.row_elems : paged_row<T>(v, tr, rows, r);
    }
#pragma unroll
    for (int p = 0; p < R / 16; ++p) {
      const int lr = p * 16 + tid / 8, bytes = src[p] != nullptr ? 16 : 0;
      const T* from = src[p] != nullptr ? src[p] + lc * 8 : qsrc;
      unsigned char* to = dst + lr * 128 + ((lc ^ (lr % 8)) << 4);
#pragma unroll
      for (int j = 0; j < (kChunks + 7) / 8; ++j)
        if (lc + 8 * j < kChunks) cp_async16(to + j * R * 128, from + (bytes ? 64 * j : 0), bytes);
    }
  };
  // Tiles 0 .. S-2 now (Q with tile 0), tile i + S - 1 at iteration i; one
  // commit group per tile.
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < tiles) load_rows(i);
    cp_async_commit();
  }

  float o[2][64];  // O of the thread's two heads: columns [0, 128) and [128, 256)
#pragma unroll
  for (int x = 0; x < 64; ++x) o[0][x] = o[1][x] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const uint32_t q_base = smem_addr(sQ);

  for (int i = 0; i < tiles; ++i) {
    if (i + kStages - 1 < tiles) load_rows(i + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    sm90::fence_proxy_async();  // the copies are read by wgmma (the async proxy)
    __syncthreads();
    const uint32_t tile = smem_addr(sRows + (i % kStages) * kTileBytes);

    float sc[R / 2];  // S: heads warp*16 + lane/4 (+8) x keys (x/4)*8 + (lane%4)*2 + x%2
    sm90::fence_regs(sc);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // column block kk / 4, 16 values = 32 B into its 128-B rows
      mma_s<T>(sc, sm90::make_desc(q_base + (kk / 4) * kQRows * 128 + off, 16, 1024),
               sm90::make_desc(tile + (kk / 4) * R * 128 + off, 16, 1024), kk > 0 ? 1 : 0);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(sc);

    // Scores in the log2 domain, keys past the split's end masked.
    const int64_t base = r0 + int64_t(i) * R;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int x = 0; x < R / 2; ++x) {
      const int64_t r = base + (x / 4) * 8 + (lane % 4) * 2 + (x % 2);
      sc[x] = r < r1 ? fmaf(sc[x], scale_log2, r < rows.m ? rep_bias_log2 : 0.f) : -INFINITY;
      tile_max[(x % 4) / 2] = fmaxf(tile_max[(x % 4) / 2], sc[x]);
    }
    float safe[2], corr[2];
    online_softmax_step(tile_max, row_max, row_sum, safe, corr);
    uint32_t p[R / 16][4];
#pragma unroll
    for (int x = 0; x < R / 2; x += 2) {
      const int ri = (x % 4) / 2;
      const float e0 = exp2_ftz(sc[x] - safe[ri]), e1 = exp2_ftz(sc[x + 1] - safe[ri]);
      row_sum[ri] += e0 + e1;
      // n8 block x / 4 -> k-step x / 8; register (x % 4) / 2 + 2 * ((x / 4) % 2).
      p[x / 8][(x % 4) / 2 + 2 * ((x / 4) % 2)] = pack2<T>(e0, e1);
    }
#pragma unroll
    for (int x = 0; x < 64; ++x) o[0][x] *= corr[(x % 4) / 2], o[1][x] *= corr[(x % 4) / 2];

    sm90::fence_regs(o[0]);
    sm90::fence_regs(o[1]);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < R / 16; ++kk)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)  // columns [128 hf, 128 hf + 128): column blocks 2 hf, 2 hf + 1
        mma_pv<T>(o[hf], p[kk], sm90::make_desc(tile + hf * 2 * R * 128 + kk * 2048, R * 128, 1024));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o[0]);
    sm90::fence_regs(o[1]);
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  if (!reads_appended) pdl_wait();  // the grid completes after the append kernel
  // The split's normalised output and log-sum-exp (log2 domain).
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const float sum = quad_sum(row_sum[ri]);
    const int h = warp * 16 + lane / 4 + ri * 8;
    if (h >= heads) continue;
    const float inv = 1.f / sum;
    T* dst = out + static_cast<int64_t>(h) * DV + (lane % 4) * 2;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<uint32_t*>(dst + hf * 128 + n * 8) =
            pack2<T>(o[hf][n * 4 + ri * 2] * inv, o[hf][n * 4 + ri * 2 + 1] * inv);
    if (lane % 4 == 0) lse_out[h] = row_max[ri] + log2f(sum);
  }
#else
  __trap();  // built without sm_90a: the host never launches this (decode_sm90_supports)
#endif
}

}  // namespace

void decode_use_sm90(bool on) { g_use_sm90 = on; }

bool decode_sm90_supports(const DecodeShape& sh) {
  static const bool built = built_for_sm90a(decode_attention_sm90_kernel<__nv_bfloat16>);
  return g_use_sm90 && built && sh.mla && sh.d_qk == DQK && sh.d_v == DV && sh.kv_heads == 1 &&
         sh.q_heads <= kQRows;
}

int decode_sm90_tile_rows() { return R; }

int decode_sm90_ctas_per_sm(DType dtype) {
  int ctas = 1;
  dispatch_dtype(dtype, "cuda::decode_attention", [&](auto tag) {
    ctas = blocks_per_sm(decode_attention_sm90_kernel<decltype(tag)>, kThreads, kSmemBytes);
  });
  return ctas;
}

void decode_attention_sm90(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* queries,
                           const void* new_rows, void* part_out, float* part_lse, int splits, float scale_log2,
                           float bias_log2, DType dtype, cudaStream_t stream) {
  dispatch_dtype(dtype, "cuda::decode_attention", [&](auto tag) {
    using T = decltype(tag);
    auto kernel = decode_attention_sm90_kernel<T>;
    // Once per kernel, outside any graph capture that later launches run in.
    static const cudaError_t attr =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes));
    LCA_CUDA_CHECK(attr);
    launch_with_pdl(kernel, dim3(splits, s.batch, 1), kThreads, kSmemBytes, stream, v, s, sh,
                    static_cast<const T*>(queries), static_cast<const T*>(new_rows), static_cast<T*>(part_out),
                    part_lse, scale_log2, bias_log2);
    LCA_CUDA_CHECK_LAUNCH("decode_attention (sm90)");
  });
}

}  // namespace lca::cuda::detail
