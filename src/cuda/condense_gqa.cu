// condense_groups_gqa: lca-spec.md section 5 on the GPU.
//
// Tile plan: one warp per (group, kv head), 4 warps per block. The warp sums
// the g summary rows of S_j for its kv head into shared memory (d floats),
// scores the g keys (one warp reduction each), takes softmax and argmax in
// shared memory (g floats), pools the values (lanes own columns), and for
// key_mode = pooled un-rotates each key, pools, and rotates the sum to the
// anchor position: each lane owns RoPE pairs (c, c + d/2), angles in fp64 as
// the CPU reference does. Shared memory: 4 * (d + g) floats.
// Deterministic: fixed reduction order, no atomics.
#include "common.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda {
namespace {

constexpr int kWarps = 4;

// (cos, sin) of pos * theta^(-2c/d), in double for long positions.
__device__ __forceinline__ void rope_angle(int64_t pos, int c, int d, double theta, float& cs, float& sn) {
  double s, co;
  sincos(static_cast<double>(pos) * pow(theta, -2.0 * c / d), &s, &co);
  cs = static_cast<float>(co);
  sn = static_cast<float>(s);
}

template <class T>
__global__ void condense_gqa_kernel(CondenseGqaArgs a, float norm) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (item >= a.count * a.kv_heads) return;
  const int64_t k = item / a.kv_heads;
  const int kv = static_cast<int>(item % a.kv_heads);
  const int g = static_cast<int>(a.params.group), d = static_cast<int>(a.head_dim), half = d / 2;
  const int64_t H = a.kv_heads;
  float* query = smem + warp * (d + g);
  float* scores = query + d;

  const int64_t j = a.first + k;
  const int64_t tau = (j + 1) * g + a.params.window - 1;
  for (int c = lane; c < d; c += 32) {
    float acc = 0.f;
    for (int64_t s = tau - g + 1; s <= tau; ++s) acc += a.summary[((s - a.sum_start) * H + kv) * d + c];
    query[c] = acc;
  }
  __syncwarp();

  const T* keys = static_cast<const T*>(a.k);
  const T* values = static_cast<const T*>(a.v);
  const int64_t row0 = j * g - a.kv_start;
  auto at = [&](const T* base, int i, int c) { return detail::to_float(base[((row0 + i) * H + kv) * d + c]); };
  for (int i = 0; i < g; ++i) {
    float acc = 0.f;
    for (int c = lane; c < d; c += 32) acc += query[c] * at(keys, i, c);
    acc = detail::warp_sum(acc);
    if (lane == 0) scores[i] = norm * acc;
  }
  __syncwarp();
  const int anchor = detail::warp_softmax_argmax(scores, g);
  const int64_t anchor_pos = j * g + anchor;

  T* out_k = static_cast<T*>(a.rep_k) + (k * H + kv) * d;
  T* out_v = static_cast<T*>(a.rep_v) + (k * H + kv) * d;
  for (int c = lane; c < d; c += 32) {
    float acc = 0.f;
    for (int i = 0; i < g; ++i) acc += scores[i] * at(values, i, c);
    out_v[c] = detail::from_float<T>(acc);
  }
  if (a.params.key_mode == KeyMode::anchor) {
    for (int c = lane; c < d; c += 32) out_k[c] = keys[((row0 + anchor) * H + kv) * d + c];
  } else {
    for (int c = lane; c < half; c += 32) {
      float lo = 0.f, hi = 0.f;  // sum_i alpha_i Rot(i)^{-1} k_i, pair (c, c + d/2)
      for (int i = 0; i < g; ++i) {
        float cs, sn;
        rope_angle(j * g + i, c, d, a.rope.theta, cs, sn);
        const float x = at(keys, i, c), y = at(keys, i, c + half);
        lo += scores[i] * (x * cs + y * sn);  // rotation by -angle
        hi += scores[i] * (y * cs - x * sn);
      }
      float cs, sn;
      rope_angle(anchor_pos, c, d, a.rope.theta, cs, sn);
      out_k[c] = detail::from_float<T>(lo * cs - hi * sn);
      out_k[c + half] = detail::from_float<T>(hi * cs + lo * sn);
    }
  }
  if (a.anchors != nullptr && lane == 0) a.anchors[k * H + kv] = anchor_pos;
}

}  // namespace

void condense_groups_gqa(const CondenseGqaArgs& a, cudaStream_t stream) {
  const char* where = "cuda::condense_groups_gqa";
  check_condense_gqa(a);
  if (a.count == 0) return;
  const int64_t g = a.params.group;
  const float norm = static_cast<float>(a.scale / static_cast<double>(g * (a.q_heads / a.kv_heads)));
  const size_t smem = kWarps * (a.head_dim + g) * sizeof(float);
  const unsigned blocks = static_cast<unsigned>((a.count * a.kv_heads + kWarps - 1) / kWarps);
  detail::dispatch_dtype(a.dtype, where, [&](auto tag) {
    using T = decltype(tag);
    condense_gqa_kernel<T><<<blocks, kWarps * 32, smem, stream>>>(a, norm);
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
