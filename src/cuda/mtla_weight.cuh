// The MTLA merge weight of one token (mtla-spec.md section 2), computed by a
// whole block: w = sigmoid(fc_c(PE(k)) . fc_p(c)), fp32, PE angles in fp64.
// Warps compute the two affine maps (four outputs per warp at a time, lanes
// over the input in float4s, 16 loads in flight per lane), the block reduces
// the dot product. Shared by the decode step (decode_append_mtla.cu) and the
// prefill's running rows (mtla_merge_weights.cu).
#pragma once

#include "common.cuh"

namespace lca::cuda::detail {

constexpr int mtla_weight_smem_floats(int dc, int threads) { return 2 * dc + 2 * (dc / 4) + threads / 32; }

// Every thread of a block of kThreads_ calls it; returns w to all of them and
// leaves the latent c (as float) in smem[0 : dc]. hyper: fc_c W [dc/4, dc],
// fc_c b, fc_p W, fc_p b, fp32, packed in that order; dc a multiple of 16.
template <int kThreads_, class T>
__device__ float mtla_merge_weight(const T* src, int64_t k, int dc, const float* hyper, float* smem) {
  constexpr int kWarps_ = kThreads_ / 32;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, dq = dc / 4;
  float* c = smem;             // [dc] the new latent
  float* pe = c + dc;          // [dc] PE(k)
  float* chunk_key = pe + dc;  // [dq]
  float* token_key = chunk_key + dq;
  float* partial = token_key + dq;  // [kWarps_]
  for (int i = tid; i < dc; i += kThreads_) {
    c[i] = to_float(src[i]);
    const int j = i / 2;
    const double angle = static_cast<double>(k) * pow(10000.0, -2.0 * j / dc);
    pe[i] = static_cast<float>(i % 2 == 0 ? sin(angle) : cos(angle));
  }
  __syncthreads();
  const float* fc_c_w = hyper;
  const float* fc_c_b = fc_c_w + int64_t(dq) * dc;
  const float* fc_p_w = fc_c_b + dq;
  const float* fc_p_b = fc_p_w + int64_t(dq) * dc;
  // Outputs of fc_c, then of fc_p, kOut per warp at a time: lanes read float4s
  // of kOut weight rows at once, so a lane has 4 kOut loads in flight.
  constexpr int kOut = 4;
  for (int o0 = warp * kOut; o0 < 2 * dq; o0 += kWarps_ * kOut) {
    float acc[kOut] = {};
#pragma unroll
    for (int u = 0; u < kOut; ++u) {
      const int o = o0 + u;
      if (o >= 2 * dq) break;
      const bool chunk = o < dq;
      const float4* w = reinterpret_cast<const float4*>((chunk ? fc_c_w : fc_p_w) + int64_t(chunk ? o : o - dq) * dc);
      const float4* x = reinterpret_cast<const float4*>(chunk ? pe : c);
#pragma unroll 4
      for (int i = lane; i < dc / 4; i += 32) {
        const float4 a = w[i], y = x[i];
        acc[u] += a.x * y.x + a.y * y.y + a.z * y.z + a.w * y.w;
      }
    }
#pragma unroll
    for (int u = 0; u < kOut; ++u) {
      const int o = o0 + u;
      const float sum = warp_sum(acc[u]);
      if (lane == 0 && o < 2 * dq) {
        if (o < dq) chunk_key[o] = sum + fc_c_b[o];
        else token_key[o - dq] = sum + fc_p_b[o - dq];
      }
    }
  }
  __syncthreads();
  float logit = 0.f;
  for (int i = tid; i < dq; i += kThreads_) logit += chunk_key[i] * token_key[i];
  logit = warp_sum(logit);
  if (lane == 0) partial[warp] = logit;
  __syncthreads();
  logit = 0.f;
  for (int w = 0; w < kWarps_; ++w) logit += partial[w];
  const float weight = 1.f / (1.f + expf(-logit));
  return weight;
}

}  // namespace lca::cuda::detail
