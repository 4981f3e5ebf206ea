// pack_gqa_rows: GQA cache rows [k ; v] per kv head from separate k and v
// arrays (the layout the prefill kernel reads) into the layout the cache holds.
// One block per token, 16-byte copies.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

__global__ void pack_gqa_rows_kernel(const int4* k, const int4* v, int hkv, int vecs_per_head, int4* rows) {
  pdl_wait();  // launched with programmatic dependent launch: only the launch overlaps the kernel before
  pdl_launch_dependents();
  const int64_t i = blockIdx.x;
  const int per_token = hkv * vecs_per_head;
  for (int c = threadIdx.x; c < 2 * per_token; c += blockDim.x) {
    const int head = c / (2 * vecs_per_head), r = c % (2 * vecs_per_head);
    const bool is_k = r < vecs_per_head;
    const int4* src = (is_k ? k : v) + i * per_token + head * vecs_per_head + (is_k ? r : r - vecs_per_head);
    rows[i * 2 * per_token + c] = *src;
  }
}

}  // namespace

void pack_gqa_rows(const void* k, const void* v, int64_t n, int64_t hkv, int64_t d, void* rows, cudaStream_t stream) {
  if (n == 0) return;
  LCA_CHECK(d % 8 == 0, "pack_gqa_rows: head dim must be a multiple of 8, got ", d);
  launch_with_pdl(pack_gqa_rows_kernel, dim3(static_cast<unsigned>(n)), 128, 0, stream, static_cast<const int4*>(k),
                  static_cast<const int4*>(v), static_cast<int>(hkv), static_cast<int>(d / 8),
                  static_cast<int4*>(rows));
  LCA_CUDA_CHECK_LAUNCH("pack_gqa_rows");
}

}  // namespace lca::cuda::detail
