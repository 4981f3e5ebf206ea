// gqa_summary_queries: the head-summed queries of section 5 (one fp32 row
// per position and kv head), which condense_groups_gqa sums over S_j.
// One thread per output value; reads each query once.
#include "common.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda {
namespace {

template <class T>
__global__ void gqa_summary_kernel(const T* q, float* out, int64_t L, int per, int kv_heads, int d) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= L * kv_heads * d) return;
  const int c = static_cast<int>(idx % d);
  const int64_t lk = idx / d;  // l * kv_heads + kv
  const int kv = static_cast<int>(lk % kv_heads);
  const int64_t l = lk / kv_heads;
  float acc = 0.f;
  for (int h = 0; h < per; ++h) acc += detail::to_float(q[(l * kv_heads * per + kv * per + h) * d + c]);
  out[idx] = acc;
}

}  // namespace

void gqa_summary_queries(const void* q, float* out, int64_t L, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                         DType dtype, cudaStream_t stream) {
  const char* where = "cuda::gqa_summary_queries";
  GqaDims{.q_heads = q_heads, .kv_heads = kv_heads, .head_dim = head_dim}.validate();
  LCA_CHECK(q && out, where, ": q and out must be device pointers, got a null one");
  const int64_t n = L * kv_heads * head_dim;
  if (n == 0) return;
  detail::dispatch_dtype(dtype, where, [&](auto tag) {
    using T = decltype(tag);
    gqa_summary_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
        static_cast<const T*>(q), out, L, static_cast<int>(q_heads / kv_heads), static_cast<int>(kv_heads),
        static_cast<int>(head_dim));
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
