// The Hopper prefill kernel (sm_90a, wgmma): the same function as
// prefill_sm80.cu, for head dims that are multiples of 64.
//
// Tile plan:
// - a block owns BM = 128 query rows of one query head: 2 warpgroups
//   (256 threads), each warpgroup 64 rows; BN = 128 keys per tile, visited as
//   TileKeys says (representative tiles, then raw tiles; masks only on edges).
// - Q, K and V tiles live in shared memory in the 128-byte-swizzled canonical
//   layout of wgmma: a tile of R rows x D columns is D/64 blocks of R rows of
//   128 B (64 values), 16-byte chunk j of row r stored at chunk j ^ (r % 8).
//   K and V are double-buffered, filled by cp.async from all 256 threads.
// - S = Q K^T: wgmma m64n128k16, A = Q and B = K both K-major from shared
//   memory. Online softmax in registers (log2 domain). O += P V: wgmma
//   m64n{d_v}k16 with A = P from registers (the S accumulator layout is the A
//   fragment layout) and B = V MN-major from shared memory (transposed).
// Shared memory: (BM d_qk + 2 BN d_qk + 2 BN d_v) * 2 B + 1 KB alignment:
// 161 KB for d = 128, 209 KB for d_qk = 192 / d_v = 128, 81 KB for d = 64.
#include <cstdint>

#include "prefill_common.cuh"
#include "wgmma.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int BM = 128, BN = 128, kThreads = 256;

template <int DQK, int DV>
struct Sm90Smem {
  static constexpr int q_bytes = BM * DQK * 2, k_bytes = BN * DQK * 2, v_bytes = BN * DV * 2;
  static constexpr size_t bytes = size_t(q_bytes) + 2 * size_t(k_bytes) + 2 * size_t(v_bytes) + 1024;
};

// Byte offset of 16-byte chunk j of row r in a swizzled tile of R rows.
__device__ __forceinline__ uint32_t swizzled(int R, int r, int j) {
  return static_cast<uint32_t>((j >> 3) * R * 128 + r * 128 + (((j & 7) ^ (r & 7)) << 4));
}

// wgmma shared-memory descriptor, 128-byte swizzle.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

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
__global__ void __launch_bounds__(kThreads, 1) lca_prefill_sm90_kernel(PrefillArgs a, float scale_log2,
                                                                        float bias_log2) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Sm90Smem<DQK, DV>;
  extern __shared__ unsigned char smem_raw[];
  // The swizzle pattern is a function of address bits, so tiles start on 1 KB.
  const uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  unsigned char* sQ = smem;
  unsigned char* sK = sQ + S::q_bytes;
  unsigned char* sV = sK + 2 * S::k_bytes;

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t tile = gridDim.x - 1 - blockIdx.x;  // heaviest first
  const int h = blockIdx.y;
  const int64_t kvh = h / (a.q_heads / a.kv_heads);
  const int64_t w = a.params.window, g = a.params.group;
  const int64_t q0 = tile * BM;
  const int64_t rows = min(static_cast<int64_t>(BM), a.q_len - q0);
  const int64_t t_lo = a.q_start + q0, t_hi = t_lo + rows - 1;
  const TileKeys<BN> keys(t_lo, t_hi, w, g);

  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* rk = static_cast<const T*>(a.rep_k);
  const T* rv = static_cast<const T*>(a.rep_v);
  const int64_t raw_end = a.raw_start + a.raw_len;

  for (int c = tid; c < BM * (DQK / 8); c += kThreads) {
    const int r = c / (DQK / 8), j = c % (DQK / 8);
    const bool ok = r < rows;
    cp_async16(sQ + swizzled(BM, r, j), q + ((q0 + (ok ? r : 0)) * a.q_heads + h) * DQK + j * 8, ok ? 16 : 0);
  }
  auto load_tile = [&](int i, int stage) {
    unsigned char* dk = sK + stage * S::k_bytes;
    unsigned char* dv = sV + stage * S::v_bytes;
    const bool rep = keys.is_rep(i);
    const int64_t base = keys.base(i);
    for (int c = tid; c < BN * (DQK / 8); c += kThreads) {
      const int r = c / (DQK / 8), j = c % (DQK / 8);
      const int64_t key = base + r;
      const bool ok = rep ? key < keys.m_hi : (key >= a.raw_start && key < raw_end && key <= t_hi);
      const T* src = rep ? rk + ((ok ? key : 0) * a.kv_heads + kvh) * DQK + j * 8
                         : k + ((ok ? key - a.raw_start : 0) * a.kv_heads + kvh) * DQK + j * 8;
      cp_async16(dk + swizzled(BN, r, j), src, ok ? 16 : 0);
    }
    for (int c = tid; c < BN * (DV / 8); c += kThreads) {
      const int r = c / (DV / 8), j = c % (DV / 8);
      const int64_t key = base + r;
      const bool ok = rep ? key < keys.m_hi : (key >= a.raw_start && key < raw_end && key <= t_hi);
      const T* src = rep ? rv + ((ok ? key : 0) * a.kv_heads + kvh) * DV + j * 8
                         : v + ((ok ? key - a.raw_start : 0) * a.kv_heads + kvh) * DV + j * 8;
      cp_async16(dv + swizzled(BN, r, j), src, ok ? 16 : 0);
    }
  };
  load_tile(0, 0);
  cp_async_commit();

  // This thread's two rows of its warpgroup's 64 (rows past the end mirror the last).
  const int row0 = wg * 64 + warp * 16 + lane / 4;
  const RowView row_view[2] = {RowView(t_lo + min(static_cast<int64_t>(row0), rows - 1), w, g),
                               RowView(t_lo + min(static_cast<int64_t>(row0 + 8), rows - 1), w, g)};

  float o[DV / 2];
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) o[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const uint32_t q_base = smem_addr(sQ) + wg * 64 * 128;

  for (int i = 0; i < keys.tiles; ++i) {
    if (i + 1 < keys.tiles) {
      load_tile(i + 1, (i + 1) & 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    // cp.async wrote through the generic proxy; wgmma reads through the async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();

    const uint32_t k_base = smem_addr(sK + (i & 1) * S::k_bytes);
    const uint32_t v_base = smem_addr(sV + (i & 1) * S::v_bytes);

    // S = Q K^T (64 rows x 128 keys per warpgroup).
    float s[64];
    sm90::fence_regs(s);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 values = 32 B into the 128-B row
      mma_qk<T>(s, make_desc(q_base + (kk / 4) * BM * 128 + off, 16, 1024),
                make_desc(k_base + (kk / 4) * BN * 128 + off, 16, 1024), kk > 0 ? 1 : 0);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(s);

    // Scale, bias, mask (edge tiles only), online softmax.
    const bool rep = keys.is_rep(i);
    const int64_t base = keys.base(i);
    const bool full_tile = keys.full(i);
    const float bias = rep ? bias_log2 : 0.f;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int x = 0; x < 64; ++x) {
      const int ri = (x % 4) / 2;
      float val = s[x] * scale_log2 + bias;
      if (!full_tile) {
        const int64_t key = base + (x / 4) * 8 + (lane % 4) * 2 + (x % 2);
        if (!row_view[ri].sees(rep, key)) val = -INFINITY;
      }
      s[x] = val;
      tile_max[ri] = fmaxf(tile_max[ri], val);
    }
    float corr[2], safe[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      tile_max[ri] = fmaxf(tile_max[ri], __shfl_xor_sync(0xffffffffu, tile_max[ri], 1));
      tile_max[ri] = fmaxf(tile_max[ri], __shfl_xor_sync(0xffffffffu, tile_max[ri], 2));
      const float new_max = fmaxf(row_max[ri], tile_max[ri]);
      safe[ri] = new_max == -INFINITY ? 0.f : new_max;  // a row that saw nothing yet: exp2 -> 0, not NaN
      corr[ri] = exp2f(row_max[ri] - safe[ri]);
      row_max[ri] = new_max;
      row_sum[ri] *= corr[ri];
    }
    uint32_t p[BN / 16][4];
#pragma unroll
    for (int x = 0; x < 64; x += 2) {
      const int ri = (x % 4) / 2;
      const float e0 = exp2f(s[x] - safe[ri]), e1 = exp2f(s[x + 1] - safe[ri]);
      row_sum[ri] += e0 + e1;
      // n8 block x / 4 -> k-step (x / 4) / 2; register (x % 4) / 2 + 2 * ((x / 4) % 2).
      p[x / 8][(x % 4) / 2 + 2 * ((x / 4) % 2)] = pack2<T>(e0, e1);
    }
#pragma unroll
    for (int x = 0; x < DV / 2; ++x) o[x] *= corr[(x % 4) / 2];

    // O += P V.
    sm90::fence_regs(o);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) mma_pv<T, DV>(o, p[kk], make_desc(v_base + kk * 2048, BN * 128, 1024));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o);
    __syncthreads();  // this stage is refilled by the next iteration's load
  }

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    float sum = row_sum[ri];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = 1.f / sum;
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
bool built_for_sm90a() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, lca_prefill_sm90_kernel<T, DQK, DV>) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.binaryVersion == 90;
}

template <class T, int DQK, int DV>
void launch(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  using S = Sm90Smem<DQK, DV>;
  auto kernel = lca_prefill_sm90_kernel<T, DQK, DV>;
  LCA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S::bytes)));
  const dim3 grid(static_cast<unsigned>((a.q_len + BM - 1) / BM), static_cast<unsigned>(a.q_heads));
  kernel<<<grid, kThreads, S::bytes, stream>>>(a, scale_log2, bias_log2);
  LCA_CUDA_CHECK_LAUNCH("lca_prefill (sm90)");
}

template <class T>
void dispatch_dims(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  if (a.d_qk == 64 && a.d_v == 64) return launch<T, 64, 64>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 128 && a.d_v == 128) return launch<T, 128, 128>(a, scale_log2, bias_log2, stream);
  if (a.d_qk == 192 && a.d_v == 128) return launch<T, 192, 128>(a, scale_log2, bias_log2, stream);
}

}  // namespace

bool prefill_sm90_supports(int64_t d_qk, int64_t d_v) {
  static const bool built = built_for_sm90a<__nv_bfloat16, 128, 128>();
  return built && ((d_qk == 64 && d_v == 64) || (d_qk == 128 && d_v == 128) || (d_qk == 192 && d_v == 128));
}

void prefill_sm90(const PrefillArgs& a, float scale_log2, float bias_log2, cudaStream_t stream) {
  dispatch_dtype(a.dtype, "cuda::lca_prefill",
                 [&](auto tag) { dispatch_dims<decltype(tag)>(a, scale_log2, bias_log2, stream); });
}

}  // namespace lca::cuda::detail
