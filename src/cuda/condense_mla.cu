// condense_groups_mla: lca-spec.md section 3 on the GPU.
//
// Tile plan: one warp per group, 4 warps per block. The warp sums the g
// summary rows of S_j into shared memory (sw floats), scores the g tokens
// (lanes stride the latent, one warp reduction per token), takes softmax and
// argmax in shared memory (g floats), then pools: each lane owns latent
// columns lane, lane + 32, ... and accumulates sum_i alpha_i c_i[col] in fp32,
// stored once in the cache dtype; the anchor's rope key is copied.
// Shared memory: 4 * (sw + g) floats (under 11 KB for d_c = 512, g = 16).
// Deterministic: fixed reduction order, no atomics.
#include "common.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda {
namespace {

constexpr int kWarps = 4;

template <class T>
__global__ void condense_mla_kernel(CondenseMlaArgs a, int sw, float norm) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (k >= a.count) return;
  const int g = static_cast<int>(a.params.group);
  float* query = smem + warp * (sw + g);
  float* scores = query + sw;

  const int64_t j = a.first + k;
  const int64_t tau = (j + 1) * g + a.params.window - 1;
  for (int c = lane; c < sw; c += 32) {
    float acc = 0.f;
    for (int64_t s = tau - g + 1; s <= tau; ++s) acc += a.summary[(s - a.sum_start) * sw + c];
    query[c] = acc;
  }
  __syncwarp();

  const T* latent = static_cast<const T*>(a.latent);
  const T* rope = static_cast<const T*>(a.rope_key);
  const int64_t dc = a.d_latent, dr = a.d_rope;
  const int64_t row0 = j * g - a.kv_start;  // first token of the group in the inputs
  for (int i = 0; i < g; ++i) {
    const T* c = latent + (row0 + i) * dc;
    float acc = 0.f;
    for (int x = lane; x < sw; x += 32) acc += query[x] * detail::to_float(x < dc ? c[x] : rope[(row0 + i) * dr + x - dc]);
    acc = detail::warp_sum(acc);
    if (lane == 0) scores[i] = norm * acc;
  }
  __syncwarp();
  const int anchor = detail::warp_softmax_argmax(scores, g);

  T* out = static_cast<T*>(a.rep_latent) + k * dc;
  for (int64_t x = lane; x < dc; x += 32) {
    float acc = 0.f;
    for (int i = 0; i < g; ++i) acc += scores[i] * detail::to_float(latent[(row0 + i) * dc + x]);
    out[x] = detail::from_float<T>(acc);
  }
  T* out_rope = static_cast<T*>(a.rep_rope_key) + k * dr;
  for (int64_t x = lane; x < dr; x += 32) out_rope[x] = rope[(row0 + anchor) * dr + x];
  if (a.anchors != nullptr && lane == 0) a.anchors[k] = j * g + anchor;
}

}  // namespace

void condense_groups_mla(const CondenseMlaArgs& a, cudaStream_t stream) {
  const char* where = "cuda::condense_groups_mla";
  check_condense_mla(a);
  if (a.count == 0) return;
  const int64_t g = a.params.group;
  const int sw = static_cast<int>(a.params.score == ScoreMode::full ? a.d_latent + a.d_rope : a.d_latent);
  const float norm = static_cast<float>(a.scale / static_cast<double>(g * a.heads));
  const size_t smem = kWarps * (sw + g) * sizeof(float);
  const unsigned blocks = static_cast<unsigned>((a.count + kWarps - 1) / kWarps);
  detail::dispatch_dtype(a.dtype, where, [&](auto tag) {
    using T = decltype(tag);
    if (smem > 48 * 1024)
      LCA_CUDA_CHECK(cudaFuncSetAttribute(condense_mla_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    condense_mla_kernel<T><<<blocks, kWarps * 32, smem, stream>>>(a, sw, norm);
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
