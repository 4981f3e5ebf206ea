// condense_groups_gqa: lca-spec.md section 5 on the GPU.
//
// Tile plan: one block of 128 threads per (group, kv head). Threads sum the g
// summary rows of S_j for the kv head into shared memory (d floats); then
// condense_group_gqa (condense_group.cuh): warps score the g keys, warp 0
// takes softmax and argmax, threads pool the values (columns) and, for
// key_mode = pooled, un-rotate each key, pool, and rotate the sum to the anchor
// position (threads own RoPE pairs (c, c + d/2), angles in fp64 as the CPU
// reference does). Shared memory: d + g + 1 floats.
// Deterministic: fixed reduction order, no atomics.
#include "condense_group.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda {
namespace {

constexpr int kThreads = 128;

template <class T>
__global__ void __launch_bounds__(kThreads) condense_gqa_kernel(CondenseGqaArgs a, float norm) {
  extern __shared__ float smem[];
  const int64_t k = blockIdx.x / a.kv_heads;
  const int kv = static_cast<int>(blockIdx.x % a.kv_heads);
  const int g = static_cast<int>(a.params.group), d = static_cast<int>(a.head_dim);
  const int64_t H = a.kv_heads;
  float* query = smem;
  float* scores = query + d;
  int* anchor_slot = reinterpret_cast<int*>(scores + g);

  const int64_t j = a.first + k;
  const int64_t tau = (j + 1) * g + a.params.window - 1;
  for (int c = threadIdx.x; c < d; c += kThreads) {
    float acc = 0.f;
#pragma unroll 8
    for (int64_t s = tau - g + 1; s <= tau; ++s) acc += a.summary[((s - a.sum_start) * H + kv) * d + c];
    query[c] = acc;
  }
  __syncthreads();

  const int64_t row0 = j * g - a.kv_start;  // first token of the group in the inputs
  const int64_t base = (row0 * H + kv) * d;
  const int anchor = detail::condense_group_gqa<T>(
      query, scores, anchor_slot, d, g, norm, static_cast<const T*>(a.k) + base, static_cast<const T*>(a.v) + base,
      H * d, j * g, a.params.key_mode, a.rope.theta, static_cast<T*>(a.rep_k) + (k * H + kv) * d,
      static_cast<T*>(a.rep_v) + (k * H + kv) * d);
  if (a.anchors != nullptr && threadIdx.x == 0) a.anchors[k * H + kv] = j * g + anchor;
}

}  // namespace

void condense_groups_gqa(const CondenseGqaArgs& a, cudaStream_t stream) {
  const char* where = "cuda::condense_groups_gqa";
  check_condense_gqa(a);
  if (a.count == 0) return;
  const int64_t g = a.params.group;
  const float norm = static_cast<float>(a.scale / static_cast<double>(g * (a.q_heads / a.kv_heads)));
  const size_t smem = (a.head_dim + g + 1) * sizeof(float);
  detail::dispatch_dtype(a.dtype, where, [&](auto tag) {
    using T = decltype(tag);
    condense_gqa_kernel<T><<<static_cast<unsigned>(a.count * a.kv_heads), kThreads, smem, stream>>>(a, norm);
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
