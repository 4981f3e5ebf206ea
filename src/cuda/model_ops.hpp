// Launchers of the small kernels a transformer layer needs around the
// attention (internal to the GPU runtime, src/runtime/gpu_model.cpp). bf16
// storage, fp32 arithmetic; every launcher checks the launch.
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda::detail {

// out[i, :] = table[tokens[i], :] for i < n; table [vocab, d] bf16.
void embed_rows(const void* table, const int64_t* tokens, int64_t n, int64_t d, void* out, cudaStream_t stream);

// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight (rows of d values), bf16.
void rms_norm(const void* x, const void* weight, int64_t rows, int64_t d, double eps, void* out, cudaStream_t stream);

// q [n, hq, d], k [n, hkv, d], v [n, hkv, d] in place: add the biases (each
// may be null), then rotate q and k by RoPE (half-split pairs, theta) at
// position positions[i] (positions null: start + i). Angles in fp64.
void bias_rope(void* q, void* k, void* v, const void* bq, const void* bk, const void* bv, int64_t n, int64_t hq,
               int64_t hkv, int64_t d, const int64_t* positions, int64_t start, double theta, cudaStream_t stream);

// gate [n, f] <- silu(gate) * up.
void swiglu(void* gate, const void* up, int64_t n, int64_t f, cudaStream_t stream);

// rows [n, hkv * 2d] = per kv head [k ; v], from k and v [n, hkv, d].
void pack_gqa_rows(const void* k, const void* v, int64_t n, int64_t hkv, int64_t d, void* rows, cudaStream_t stream);

// Uniform values in [-scale, scale) from a hash of (seed, index), bf16.
void fill_uniform(void* p, int64_t n, float scale, uint64_t seed, cudaStream_t stream);

}  // namespace lca::cuda::detail
