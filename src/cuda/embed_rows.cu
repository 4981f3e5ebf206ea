// embed_rows: the token embedding gather, one block per token, 16-byte copies.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

__global__ void embed_rows_kernel(const int4* table, const int64_t* tokens, int64_t vecs, int4* out) {
  const int64_t i = blockIdx.x, row = tokens[i];
  for (int64_t c = threadIdx.x; c < vecs; c += blockDim.x) out[i * vecs + c] = table[row * vecs + c];
}

}  // namespace

void embed_rows(const void* table, const int64_t* tokens, int64_t n, int64_t d, void* out, cudaStream_t stream) {
  if (n == 0) return;
  LCA_CHECK(d % 8 == 0, "embed_rows: d must be a multiple of 8, got ", d);
  embed_rows_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(static_cast<const int4*>(table), tokens, d / 8,
                                                                  static_cast<int4*>(out));
  LCA_CUDA_CHECK_LAUNCH("embed_rows");
}

}  // namespace lca::cuda::detail
