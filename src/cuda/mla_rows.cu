// The MLA pieces of a layer around the attention (DeepSeek-V2/V3, MiniCPM3):
// the latent rows [kv_a_norm(c) ; RoPE(k^R)] of the kv_a product, RoPE on the
// queries' rope dims, the decompressed keys' shared rope part, and small
// elementwise helpers (bias, scale, row packing). RoPE takes the model's
// inverse frequencies as a table (yarn and longrope change them) and a factor
// on cos and sin; angles and cos/sin in fp64 (exact enough at 128K positions),
// rounded to fp32 as the CPU runtime's rope_table does. One block per token.
#include <algorithm>

#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxHalf = 64;  // d_rope / 2 at most

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float bias_at(const bf16* b, int64_t i) { return b != nullptr ? to_float(b[i]) : 0.f; }

// cos/sin (times factor) of position pos for the half rope pairs, into shared memory.
__device__ __forceinline__ void rope_table_row(int64_t pos, const double* inv_freq, double factor, int half,
                                               float* cs, float* sn) {
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    double s, c;
    sincos(static_cast<double>(pos) * inv_freq[j], &s, &c);
    cs[j] = static_cast<float>(c * factor);
    sn[j] = static_cast<float>(s * factor);
  }
}

// mla_kv_rows' operands (model_ops.hpp), kv rows kv_stride apart.
struct KvRowsArgs {
  const bf16* kv;
  int64_t kv_stride;
  const bf16 *bias, *norm_w;
  float eps;
  int dc, dr;
  bool interleaved;
  bf16 *rows, *latent, *rope_key;
};

// mla_rope_queries' operands, q's token rows q_stride apart.
struct RopeQueriesArgs {
  bf16* q;
  int64_t q_stride;
  int heads, dn, dr;
  bool interleaved;
  bf16* q_abs;
  int abs_width;
  float* summary_rope;
  int summary_width;
};

// Token i's cache row by the whole block; cs and sn hold its rope table,
// written before the call (the __syncthreads inside orders them before use).
__device__ __forceinline__ void kv_row(const KvRowsArgs& a, int64_t i, const float* cs, const float* sn,
                                       float* partial) {
  const int dc = a.dc, dr = a.dr, width = dc + dr, half = dr / 2;
  const bf16* in = a.kv + i * a.kv_stride;
  float ss = 0.f;
  for (int c = threadIdx.x; c < dc; c += kThreads) {
    const float v = to_float(in[c]) + bias_at(a.bias, c);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  ss = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) ss += partial[w];
  const float inv = rsqrtf(ss / static_cast<float>(dc) + a.eps);
  for (int c = threadIdx.x; c < dc; c += kThreads) {
    const bf16 v = from_float<bf16>((to_float(in[c]) + bias_at(a.bias, c)) * inv * to_float(a.norm_w[c]));
    a.rows[i * width + c] = v;
    if (a.latent != nullptr) a.latent[i * dc + c] = v;
  }
  for (int j = threadIdx.x; j < half; j += kThreads) {
    const int p = a.interleaved ? 2 * j : j, q = a.interleaved ? 2 * j + 1 : j + half;
    const float x = to_float(in[dc + p]) + bias_at(a.bias, dc + p), y = to_float(in[dc + q]) + bias_at(a.bias, dc + q);
    const bf16 rp = from_float<bf16>(x * cs[j] - y * sn[j]), rq = from_float<bf16>(y * cs[j] + x * sn[j]);
    a.rows[i * width + dc + p] = rp;
    a.rows[i * width + dc + q] = rq;
    if (a.rope_key != nullptr) a.rope_key[i * dr + p] = rp, a.rope_key[i * dr + q] = rq;
  }
}

// Token i's query rope by the whole block; cs and sn visible (after a __syncthreads).
__device__ __forceinline__ void rope_query_row(const RopeQueriesArgs& a, int64_t i, const float* cs,
                                               const float* sn) {
  const int dn = a.dn, dr = a.dr, dq = dn + dr, half = dr / 2;
  for (int item = threadIdx.x; item < a.heads * half; item += kThreads) {
    const int h = item / half, j = item % half;
    const int p = a.interleaved ? 2 * j : j, q = a.interleaved ? 2 * j + 1 : j + half;
    bf16* x = a.q + i * a.q_stride + h * dq + dn;
    const float xp = to_float(x[p]), xq = to_float(x[q]);
    const bf16 rp = from_float<bf16>(xp * cs[j] - xq * sn[j]), rq = from_float<bf16>(xq * cs[j] + xp * sn[j]);
    x[p] = rp;
    x[q] = rq;
    if (a.q_abs != nullptr) {
      bf16* y = a.q_abs + (i * a.heads + h) * a.abs_width + (a.abs_width - dr);
      y[p] = rp;
      y[q] = rq;
    }
  }
  if (a.summary_rope == nullptr) return;
  __syncthreads();  // the rotated values of every head are written
  for (int d = threadIdx.x; d < dr; d += kThreads) {
    float s = 0.f;
    for (int h = 0; h < a.heads; ++h) s += to_float(a.q[i * a.q_stride + h * dq + dn + d]);
    a.summary_rope[i * a.summary_width + d] = s;
  }
}

__global__ void __launch_bounds__(kThreads)
    mla_kv_rows_kernel(KvRowsArgs a, const int64_t* positions, int64_t start, const double* inv_freq,
                       double factor) {
  __shared__ float partial[kThreads / 32], cs[kMaxHalf], sn[kMaxHalf];
  const int64_t i = blockIdx.x, pos = positions != nullptr ? positions[i] : start + i;
  rope_table_row(pos, inv_freq, factor, a.dr / 2, cs, sn);
  kv_row(a, i, cs, sn, partial);
}

__global__ void __launch_bounds__(kThreads)
    mla_rope_queries_kernel(RopeQueriesArgs a, const int64_t* positions, int64_t start, const double* inv_freq,
                            double factor) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const int64_t i = blockIdx.x, pos = positions != nullptr ? positions[i] : start + i;
  rope_table_row(pos, inv_freq, factor, a.dr / 2, cs, sn);
  __syncthreads();
  rope_query_row(a, i, cs, sn);
}

// Both for the same tokens: one rope table, one launch (decode).
__global__ void __launch_bounds__(kThreads)
    mla_kv_rows_rope_queries_kernel(KvRowsArgs kv, RopeQueriesArgs q, const int64_t* positions, int64_t start,
                                    const double* inv_freq, double factor) {
  __shared__ float partial[kThreads / 32], cs[kMaxHalf], sn[kMaxHalf];
  const int64_t i = blockIdx.x, pos = positions != nullptr ? positions[i] : start + i;
  // Positions are the step's (copied before the graph runs), so the fp64 rope
  // table is computed before the wait for the products that make kv and q.
  rope_table_row(pos, inv_freq, factor, kv.dr / 2, cs, sn);
  pdl_wait();
  pdl_launch_dependents();
  kv_row(kv, i, cs, sn, partial);  // its __syncthreads makes the table visible to rope_query_row too
  rope_query_row(q, i, cs, sn);
}

__global__ void rope_keys_to_heads_kernel(const bf16* rope_key, int heads, int dn, int dr, bf16* k) {
  const int64_t i = blockIdx.x;
  for (int item = threadIdx.x; item < heads * dr; item += blockDim.x) {
    const int h = item / dr, d = item % dr;
    k[(i * heads + h) * (dn + dr) + dn + d] = rope_key[i * dr + d];
  }
}

__global__ void pack_mla_rows_kernel(const bf16* latent, const bf16* rope_key, int dc, int dr, bf16* rows) {
  const int64_t i = blockIdx.x;
  for (int c = threadIdx.x; c < dc + dr; c += blockDim.x)
    rows[i * (dc + dr) + c] = c < dc ? latent[i * dc + c] : rope_key[i * dr + c - dc];
}

__global__ void add_bias_kernel(bf16* x, const bf16* b, int64_t d, int64_t ld, int64_t total, float scale) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    bf16* xe = x + e / d * ld + e % d;
    *xe = from_float<bf16>(to_float(*xe) + scale * to_float(b[e % d]));
  }
}

__global__ void scale_values_kernel(bf16* x, int64_t n, float s) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    x[e] = from_float<bf16>(to_float(x[e]) * s);
}

unsigned elementwise_blocks(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 16)); }

void check_rope(const char* where, int64_t dr) {
  LCA_CHECK(dr >= 2 && dr % 2 == 0 && dr / 2 <= kMaxHalf, where, ": d_rope must be even and in [2, ", 2 * kMaxHalf,
            "], got ", dr);
}

}  // namespace

void mla_kv_rows(const void* kv, const void* bias, const void* norm_weight, double eps, int64_t n, int64_t dc,
                 int64_t dr, const int64_t* positions, int64_t start, const double* inv_freq, double factor,
                 bool interleaved, void* rows, void* latent, void* rope_key, cudaStream_t stream) {
  if (n == 0) return;
  check_rope("mla_kv_rows", dr);
  const KvRowsArgs a{static_cast<const bf16*>(kv), dc + dr, static_cast<const bf16*>(bias),
                     static_cast<const bf16*>(norm_weight), static_cast<float>(eps), static_cast<int>(dc),
                     static_cast<int>(dr), interleaved, static_cast<bf16*>(rows), static_cast<bf16*>(latent),
                     static_cast<bf16*>(rope_key)};
  mla_kv_rows_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(a, positions, start, inv_freq, factor);
  LCA_CUDA_CHECK_LAUNCH("mla_kv_rows");
}

void mla_rope_queries(void* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, const int64_t* positions,
                      int64_t start, const double* inv_freq, double factor, bool interleaved, void* q_abs,
                      int64_t abs_width, float* summary_rope, int64_t summary_width, cudaStream_t stream) {
  if (n == 0) return;
  check_rope("mla_rope_queries", dr);
  LCA_CHECK(q_abs == nullptr || abs_width >= dr, "mla_rope_queries: abs_width ", abs_width, " is below d_rope ", dr);
  const RopeQueriesArgs a{static_cast<bf16*>(q), heads * (dn + dr), static_cast<int>(heads), static_cast<int>(dn),
                          static_cast<int>(dr), interleaved, static_cast<bf16*>(q_abs), static_cast<int>(abs_width),
                          summary_rope, static_cast<int>(summary_width)};
  mla_rope_queries_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(a, positions, start, inv_freq, factor);
  LCA_CUDA_CHECK_LAUNCH("mla_rope_queries");
}

void mla_decode_rows(const void* kv, int64_t kv_stride, const void* bias, const void* norm_weight, double eps,
                     void* q, int64_t q_stride, int64_t n, int64_t heads, int64_t dn, int64_t dc, int64_t dr,
                     const int64_t* positions, const double* inv_freq, double factor, bool interleaved, void* rows,
                     void* q_abs, cudaStream_t stream) {
  if (n == 0) return;
  check_rope("mla_decode_rows", dr);
  LCA_CHECK(kv_stride >= dc + dr && q_stride >= heads * (dn + dr), "mla_decode_rows: kv_stride ", kv_stride,
            " or q_stride ", q_stride, " is below its row's values (", dc + dr, ", ", heads * (dn + dr), ")");
  const KvRowsArgs k{static_cast<const bf16*>(kv), kv_stride, static_cast<const bf16*>(bias),
                     static_cast<const bf16*>(norm_weight), static_cast<float>(eps), static_cast<int>(dc),
                     static_cast<int>(dr), interleaved, static_cast<bf16*>(rows), nullptr, nullptr};
  const RopeQueriesArgs r{static_cast<bf16*>(q), q_stride, static_cast<int>(heads), static_cast<int>(dn),
                          static_cast<int>(dr), interleaved, static_cast<bf16*>(q_abs), static_cast<int>(dc + dr),
                          nullptr, 0};
  launch_with_pdl(mla_kv_rows_rope_queries_kernel, dim3(static_cast<unsigned>(n)), kThreads, 0, stream, k, r,
                  positions, int64_t(0), inv_freq, factor);
  LCA_CUDA_CHECK_LAUNCH("mla_decode_rows");
}

void rope_keys_to_heads(const void* rope_key, int64_t n, int64_t heads, int64_t dn, int64_t dr, void* k,
                        cudaStream_t stream) {
  if (n == 0) return;
  rope_keys_to_heads_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(
      static_cast<const bf16*>(rope_key), static_cast<int>(heads), static_cast<int>(dn), static_cast<int>(dr),
      static_cast<bf16*>(k));
  LCA_CUDA_CHECK_LAUNCH("rope_keys_to_heads");
}

void pack_mla_rows(const void* latent, const void* rope_key, int64_t n, int64_t dc, int64_t dr, void* rows,
                   cudaStream_t stream) {
  if (n == 0) return;
  pack_mla_rows_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(
      static_cast<const bf16*>(latent), static_cast<const bf16*>(rope_key), static_cast<int>(dc),
      static_cast<int>(dr), static_cast<bf16*>(rows));
  LCA_CUDA_CHECK_LAUNCH("pack_mla_rows");
}

void add_bias(void* x, const void* bias, int64_t rows, int64_t d, float scale, cudaStream_t stream, int64_t ld) {
  const int64_t total = rows * d;
  if (total == 0) return;
  LCA_CHECK(ld == 0 || ld >= d, "add_bias: ld ", ld, " is below the row's ", d, " values");
  add_bias_kernel<<<elementwise_blocks(total), 256, 0, stream>>>(static_cast<bf16*>(x), static_cast<const bf16*>(bias),
                                                                  d, ld > 0 ? ld : d, total, scale);
  LCA_CUDA_CHECK_LAUNCH("add_bias");
}

void scale_values(void* x, int64_t n, float scale, cudaStream_t stream) {
  if (n == 0) return;
  scale_values_kernel<<<elementwise_blocks(n), 256, 0, stream>>>(static_cast<bf16*>(x), n, scale);
  LCA_CUDA_CHECK_LAUNCH("scale_values");
}

}  // namespace lca::cuda::detail
