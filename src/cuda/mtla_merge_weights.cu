// mtla_merge_weights: the merge weight of each token of a prefill chunk
// (mtla-spec.md section 2), one block of 512 threads per token through
// mtla_weight.cuh (the same code as the decode step). The weights of a chunk's
// tokens are independent of one another; only their running sums
// (mtla_rows.cu) are sequential. Shared memory: 2.5 d_c + 16 floats.
#include "mtla.hpp"
#include "mtla_weight.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 512;

template <class T>
__global__ void __launch_bounds__(kThreads) mtla_merge_weights_kernel(const T* rows, int64_t row_elems, int64_t start,
                                                                      int dc, int64_t s, const float* hyper,
                                                                      float* weights) {
  extern __shared__ float smem[];
  const int64_t l = blockIdx.x;
  const float w = mtla_merge_weight<kThreads>(rows + l * row_elems, (start + l) / s, dc, hyper, smem);
  if (threadIdx.x == 0) weights[l] = w;
}

}  // namespace

void mtla_merge_weights(const void* rows, int64_t row_elems, int64_t start, int64_t len, int dc, int64_t s,
                        const float* hyper, float* weights, DType dtype, cudaStream_t stream) {
  if (len == 0) return;
  const size_t smem = mtla_weight_smem_floats(dc, kThreads) * sizeof(float);
  dispatch_dtype(dtype, "cuda::mtla_merge_weights", [&](auto tag) {
    using T = decltype(tag);
    mtla_merge_weights_kernel<T><<<static_cast<unsigned>(len), kThreads, smem, stream>>>(
        static_cast<const T*>(rows), row_elems, start, dc, s, hyper, weights);
    LCA_CUDA_CHECK_LAUNCH("mtla_merge_weights");
  });
}

}  // namespace lca::cuda::detail
