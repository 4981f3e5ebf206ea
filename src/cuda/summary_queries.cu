// gqa_summary_queries: the head-summed queries of section 5 (one fp32 row
// per position and kv head), which condense_groups_gqa sums over S_j.
// A thread owns V consecutive values of one (position, kv head) row: V = 8
// (one 16-byte load per query head) where the head dim and the pointer allow,
// else 1. Each value sums the group's heads in order, as the CPU does. 32-bit
// index arithmetic (L * kv_heads * head_dim < 2^31 is checked): with 64-bit
// divisions per value this kernel was compute-bound at half the bandwidth.
#include "common.cuh"
#include "lca/cuda.hpp"

namespace lca::cuda {
namespace {

template <class T, int V>
__global__ void gqa_summary_kernel(const T* q, float* out, uint32_t rows, int per, int kv_heads, int d) {
  const uint32_t idx = blockIdx.x * blockDim.x + threadIdx.x;  // over rows * kv_heads * (d / V)
  const uint32_t vecs = static_cast<uint32_t>(d / V);
  if (idx >= rows * static_cast<uint32_t>(kv_heads) * vecs) return;
  const uint32_t c = (idx % vecs) * V, lk = idx / vecs;  // lk = l * kv_heads + kv
  const uint32_t l = lk / kv_heads, kv = lk % kv_heads;
  const T* src = q + (static_cast<int64_t>(l) * kv_heads * per + static_cast<int64_t>(kv) * per) * d + c;
  float acc[V] = {};
  for (int h = 0; h < per; ++h) {
    if constexpr (V == 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(h) * d);
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += detail::to_float(x[j]);
    } else {
      acc[0] += detail::to_float(src[static_cast<int64_t>(h) * d]);
    }
  }
  float* dst = out + static_cast<int64_t>(lk) * d + c;
#pragma unroll
  for (int j = 0; j < V; ++j) dst[j] = acc[j];
}

}  // namespace

void gqa_summary_queries(const void* q, float* out, int64_t L, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                         DType dtype, cudaStream_t stream) {
  const char* where = "cuda::gqa_summary_queries";
  GqaDims{.q_heads = q_heads, .kv_heads = kv_heads, .head_dim = head_dim}.validate();
  LCA_CHECK(q && out, where, ": q and out must be device pointers, got a null one");
  const int64_t n = L * kv_heads * head_dim;
  if (n == 0) return;
  LCA_CHECK(n < (int64_t(1) << 31), where, ": ", L, " positions x ", kv_heads, " kv heads x ", head_dim,
            " values exceed the kernel's 32-bit indexing");
  const bool vec8 = head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
  detail::dispatch_dtype(dtype, where, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto kernel, int64_t threads) {
      kernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(
          static_cast<const T*>(q), out, static_cast<uint32_t>(L), static_cast<int>(q_heads / kv_heads),
          static_cast<int>(kv_heads), static_cast<int>(head_dim));
    };
    if (vec8) launch(gqa_summary_kernel<T, 8>, n / 8);
    else launch(gqa_summary_kernel<T, 1>, n);
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
