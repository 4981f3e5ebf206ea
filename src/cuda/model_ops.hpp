// Launchers of the small kernels a transformer layer needs around the
// attention (internal to the GPU runtime, src/runtime/gpu_model.cpp). bf16
// storage, fp32 arithmetic; every launcher checks the launch.
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda::detail {

// ---- One-row products of a batch-1 decode step (src/cuda/decode_linear.cu) ----
// y [N] = alpha W x [K] + beta y, W [N, K] row-major (nn.Linear's, `nk`) or
// [K, N] (`kn`); bf16 x and W, fp32 sums, y bf16 or fp32 (y_f32). A batch of
// independent products: product b reads x + b x_stride and W + b w_stride and
// writes y + b y_stride (element strides). Launched with programmatic
// dependent launch: the first weight loads overlap the kernel before.
// Takes one row (M == 1); nk: K a multiple of 8, x and W 16-byte aligned; kn:
// N a multiple of 8, K <= 128, W 16-byte aligned; strides of x and W
// multiples of 8 (decode_linear_fits). decode_linear throws otherwise.
enum class WeightLayout { nk, kn };
struct LinearBatch {
  int64_t count = 1, x_stride = 0, w_stride = 0, y_stride = 0;
  // nk only: product b's W at w + w_index[b] w_stride (device ints that the
  // kernel before writes, such as MoE's chosen experts; read after the wait,
  // so such a product loads no weights early).
  const int32_t* w_index = nullptr;
};
bool decode_linear_fits(WeightLayout layout, int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                        const LinearBatch& batch = {});
void decode_linear(WeightLayout layout, int64_t N, int64_t K, const void* x, const void* w, void* y, float alpha,
                   float beta, bool y_f32, cudaStream_t stream, const LinearBatch& batch = {});

// out[i, :] = table[tokens[i], :] for i < n; table [vocab, d] bf16.
void embed_rows(const void* table, const int64_t* tokens, int64_t n, int64_t d, void* out, cudaStream_t stream);

// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight (rows of d values), bf16;
// x's rows x_stride values apart (0: d), out's d.
void rms_norm(const void* x, const void* weight, int64_t rows, int64_t d, double eps, void* out, cudaStream_t stream,
              int64_t x_stride = 0);

// q [n, hq, d], k [n, hkv, d], v [n, hkv, d] in place: add the biases (each
// may be null), then rotate q and k by RoPE (half-split pairs, theta) at
// position positions[i] (positions null: start + i). Angles in fp64.
void bias_rope(void* q, void* k, void* v, const void* bq, const void* bk, const void* bv, int64_t n, int64_t hq,
               int64_t hkv, int64_t d, const int64_t* positions, int64_t start, double theta, cudaStream_t stream);

// act [n, f] = silu(gate) * up, from gate_up [n, 2f] = [gate | up] (one product for both).
void swiglu(const void* gate_up, int64_t n, int64_t f, void* act, cudaStream_t stream);

// rows [n, hkv * 2d] = per kv head [k ; v], from k and v [n, hkv, d].
void pack_gqa_rows(const void* k, const void* v, int64_t n, int64_t hkv, int64_t d, void* rows, cudaStream_t stream);

// ---- MLA (src/cuda/mla_rows.cu) ----
// RoPE there takes the model's inverse frequencies (d_r / 2 fp64 values on the
// device) and a factor on cos and sin; pairs (2j, 2j + 1) when interleaved,
// else (j, j + d_r/2); position positions[i] (positions null: start + i).

// kv [n, d_c + d_r] (the kv_a product) -> rows [n, d_c + d_r] = [rms_norm(c + b)
// * norm_weight ; RoPE(k^R + b)] (bias may be null); also into latent [n, d_c]
// and rope_key [n, d_r] when those are not null.
void mla_kv_rows(const void* kv, const void* bias, const void* norm_weight, double eps, int64_t n, int64_t dc,
                 int64_t dr, const int64_t* positions, int64_t start, const double* inv_freq, double factor,
                 bool interleaved, void* rows, void* latent, void* rope_key, cudaStream_t stream);

// q [n, heads, d_n + d_r]: RoPE on each head's last d_r values, in place; the
// rotated values also into the last d_r of q_abs [n, heads, abs_width] rows
// (when not null), and their sum over heads into summary_rope[i * summary_width
// + d] (fp32, when not null).
void mla_rope_queries(void* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, const int64_t* positions,
                      int64_t start, const double* inv_freq, double factor, bool interleaved, void* q_abs,
                      int64_t abs_width, float* summary_rope, int64_t summary_width, cudaStream_t stream);

// Decode: mla_kv_rows (rows only, no latent or rope_key) and mla_rope_queries
// (into q_abs [n, heads, d_c + d_r], no summary) of the same tokens in one
// launch, the same values as the two; kv's rows kv_stride values apart and
// q's token rows q_stride apart (both may lie in one joint product).
void mla_decode_rows(const void* kv, int64_t kv_stride, const void* bias, const void* norm_weight, double eps,
                     void* q, int64_t q_stride, int64_t n, int64_t heads, int64_t dn, int64_t dc, int64_t dr,
                     const int64_t* positions, const double* inv_freq, double factor, bool interleaved, void* rows,
                     void* q_abs, cudaStream_t stream);

// k [n, heads, d_n + d_r]: each head's last d_r values <- rope_key [n, d_r].
void rope_keys_to_heads(const void* rope_key, int64_t n, int64_t heads, int64_t dn, int64_t dr, void* k,
                        cudaStream_t stream);

// rows [n, d_c + d_r] = [latent ; rope_key].
void pack_mla_rows(const void* latent, const void* rope_key, int64_t n, int64_t dc, int64_t dr, void* rows,
                   cudaStream_t stream);

// x [rows, d] += scale * bias (broadcast over rows); x's rows ld values apart (0: d).
void add_bias(void* x, const void* bias, int64_t rows, int64_t d, float scale, cudaStream_t stream, int64_t ld = 0);

// x[0, n) *= scale.
void scale_values(void* x, int64_t n, float scale, cudaStream_t stream);

// Uniform values in [-scale, scale) from a hash of (seed, index), bf16.
void fill_uniform(void* p, int64_t n, float scale, uint64_t seed, cudaStream_t stream);

}  // namespace lca::cuda::detail
