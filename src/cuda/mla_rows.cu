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

__global__ void __launch_bounds__(kThreads)
    mla_kv_rows_kernel(const bf16* kv, const bf16* bias, const bf16* norm_w, float eps, int dc, int dr,
                       const int64_t* positions, int64_t start, const double* inv_freq, double factor,
                       bool interleaved, bf16* rows, bf16* latent, bf16* rope_key) {
  __shared__ float partial[kThreads / 32], cs[kMaxHalf], sn[kMaxHalf];
  const int64_t i = blockIdx.x, pos = positions != nullptr ? positions[i] : start + i;
  const int width = dc + dr, half = dr / 2;
  const bf16* in = kv + i * width;
  rope_table_row(pos, inv_freq, factor, half, cs, sn);
  float ss = 0.f;
  for (int c = threadIdx.x; c < dc; c += kThreads) {
    const float v = to_float(in[c]) + bias_at(bias, c);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  ss = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) ss += partial[w];
  const float inv = rsqrtf(ss / static_cast<float>(dc) + eps);
  for (int c = threadIdx.x; c < dc; c += kThreads) {
    const bf16 v = from_float<bf16>((to_float(in[c]) + bias_at(bias, c)) * inv * to_float(norm_w[c]));
    rows[i * width + c] = v;
    if (latent != nullptr) latent[i * dc + c] = v;
  }
  for (int j = threadIdx.x; j < half; j += kThreads) {
    const int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
    const float x = to_float(in[dc + a]) + bias_at(bias, dc + a), y = to_float(in[dc + b]) + bias_at(bias, dc + b);
    const bf16 ra = from_float<bf16>(x * cs[j] - y * sn[j]), rb = from_float<bf16>(y * cs[j] + x * sn[j]);
    rows[i * width + dc + a] = ra;
    rows[i * width + dc + b] = rb;
    if (rope_key != nullptr) rope_key[i * dr + a] = ra, rope_key[i * dr + b] = rb;
  }
}

__global__ void __launch_bounds__(kThreads)
    mla_rope_queries_kernel(bf16* q, int heads, int dn, int dr, const int64_t* positions, int64_t start,
                            const double* inv_freq, double factor, bool interleaved, bf16* q_abs, int abs_width,
                            float* summary_rope, int summary_width) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const int64_t i = blockIdx.x, pos = positions != nullptr ? positions[i] : start + i;
  const int dq = dn + dr, half = dr / 2;
  rope_table_row(pos, inv_freq, factor, half, cs, sn);
  __syncthreads();
  for (int item = threadIdx.x; item < heads * half; item += kThreads) {
    const int h = item / half, j = item % half;
    const int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
    bf16* x = q + (i * heads + h) * dq + dn;
    const float xa = to_float(x[a]), xb = to_float(x[b]);
    const bf16 ra = from_float<bf16>(xa * cs[j] - xb * sn[j]), rb = from_float<bf16>(xb * cs[j] + xa * sn[j]);
    x[a] = ra;
    x[b] = rb;
    if (q_abs != nullptr) {
      bf16* y = q_abs + (i * heads + h) * abs_width + (abs_width - dr);
      y[a] = ra;
      y[b] = rb;
    }
  }
  if (summary_rope == nullptr) return;
  __syncthreads();  // the rotated values of every head are written
  for (int d = threadIdx.x; d < dr; d += kThreads) {
    float s = 0.f;
    for (int h = 0; h < heads; ++h) s += to_float(q[(i * heads + h) * dq + dn + d]);
    summary_rope[i * summary_width + d] = s;
  }
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

__global__ void add_bias_kernel(bf16* x, const bf16* b, int64_t d, int64_t total, float scale) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)
    x[e] = from_float<bf16>(to_float(x[e]) + scale * to_float(b[e % d]));
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
  mla_kv_rows_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      static_cast<const bf16*>(kv), static_cast<const bf16*>(bias), static_cast<const bf16*>(norm_weight),
      static_cast<float>(eps), static_cast<int>(dc), static_cast<int>(dr), positions, start, inv_freq, factor,
      interleaved, static_cast<bf16*>(rows), static_cast<bf16*>(latent), static_cast<bf16*>(rope_key));
  LCA_CUDA_CHECK_LAUNCH("mla_kv_rows");
}

void mla_rope_queries(void* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, const int64_t* positions,
                      int64_t start, const double* inv_freq, double factor, bool interleaved, void* q_abs,
                      int64_t abs_width, float* summary_rope, int64_t summary_width, cudaStream_t stream) {
  if (n == 0) return;
  check_rope("mla_rope_queries", dr);
  LCA_CHECK(q_abs == nullptr || abs_width >= dr, "mla_rope_queries: abs_width ", abs_width, " is below d_rope ", dr);
  mla_rope_queries_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      static_cast<bf16*>(q), static_cast<int>(heads), static_cast<int>(dn), static_cast<int>(dr), positions, start,
      inv_freq, factor, interleaved, static_cast<bf16*>(q_abs), static_cast<int>(abs_width), summary_rope,
      static_cast<int>(summary_width));
  LCA_CUDA_CHECK_LAUNCH("mla_rope_queries");
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

void add_bias(void* x, const void* bias, int64_t rows, int64_t d, float scale, cudaStream_t stream) {
  const int64_t total = rows * d;
  if (total == 0) return;
  add_bias_kernel<<<elementwise_blocks(total), 256, 0, stream>>>(static_cast<bf16*>(x), static_cast<const bf16*>(bias),
                                                                  d, total, scale);
  LCA_CUDA_CHECK_LAUNCH("add_bias");
}

void scale_values(void* x, int64_t n, float scale, cudaStream_t stream) {
  if (n == 0) return;
  scale_values_kernel<<<elementwise_blocks(n), 256, 0, stream>>>(static_cast<bf16*>(x), n, scale);
  LCA_CUDA_CHECK_LAUNCH("scale_values");
}

}  // namespace lca::cuda::detail
