// condense_groups_mla: lca-spec.md section 3 on the GPU.
//
// Tile plan: one block of 128 threads per group. Threads sum the g summary
// rows of S_j into shared memory (sw floats); then condense_group_mla
// (condense_group.cuh): warps score the g tokens, warp 0 takes softmax and
// argmax, threads own latent columns and accumulate sum_i alpha_i c_i[col] in
// fp32, stored once in the cache dtype; the anchor's rope key is copied.
// Shared memory: sw + g + 1 floats (under 3 KB for d_c = 512, g = 16).
// Deterministic: fixed reduction order, no atomics.
#include "condense_group.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda {
namespace {

constexpr int kThreads = 128;

template <class T>
__global__ void __launch_bounds__(kThreads) condense_mla_kernel(CondenseMlaArgs a, int sw, float norm) {
  extern __shared__ float smem[];
  const int64_t k = blockIdx.x;
  const int g = static_cast<int>(a.params.group);
  float* query = smem;
  float* scores = query + sw;
  int* anchor_slot = reinterpret_cast<int*>(scores + g);

  const int64_t j = a.first + k;
  const int64_t tau = (j + 1) * g + a.params.window - 1;
  for (int c = threadIdx.x; c < sw; c += kThreads) {
    float acc = 0.f;
#pragma unroll 8
    for (int64_t s = tau - g + 1; s <= tau; ++s) acc += a.summary[(s - a.sum_start) * sw + c];
    query[c] = acc;
  }
  __syncthreads();

  const int64_t row0 = j * g - a.kv_start;  // first token of the group in the inputs
  const int anchor = detail::condense_group_mla<T>(
      query, scores, anchor_slot, sw, g, norm, static_cast<const T*>(a.latent) + row0 * a.d_latent, a.d_latent,
      static_cast<const T*>(a.rope_key) + row0 * a.d_rope, a.d_rope, static_cast<int>(a.d_latent),
      static_cast<int>(a.d_rope), static_cast<T*>(a.rep_latent) + k * a.d_latent,
      static_cast<T*>(a.rep_rope_key) + k * a.d_rope);
  if (a.anchors != nullptr && threadIdx.x == 0) a.anchors[k] = j * g + anchor;
}

}  // namespace

void condense_groups_mla(const CondenseMlaArgs& a, cudaStream_t stream) {
  const char* where = "cuda::condense_groups_mla";
  check_condense_mla(a);
  if (a.count == 0) return;
  const int64_t g = a.params.group;
  const int sw = static_cast<int>(a.params.score == ScoreMode::full ? a.d_latent + a.d_rope : a.d_latent);
  const float norm = static_cast<float>(a.scale / static_cast<double>(g * a.heads));
  const size_t smem = (sw + g + 1) * sizeof(float);
  detail::dispatch_dtype(a.dtype, where, [&](auto tag) {
    using T = decltype(tag);
    if (smem > 48 * 1024)
      LCA_CUDA_CHECK(cudaFuncSetAttribute(condense_mla_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    condense_mla_kernel<T><<<static_cast<unsigned>(a.count), kThreads, smem, stream>>>(a, sw, norm);
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
