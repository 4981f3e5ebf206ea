// decode_append_mtla: the first kernel of an MTLA decode step (mtla-spec.md
// sections 2 and 4), one block of 512 threads per batch entry. For the new
// token t of chunk k = t / s:
//   w_t = sigmoid(fc_c(PE(k)) . fc_p(c_t))        (fp32; PE angles in fp64)
//   sum_k = w_t c_t (t opens the chunk) or sum_k + w_t c_t
//   row k = [round(sum_k) ; k^R_t]                 (stored in place each step)
// The fp32 sum stays beside the cache, so the stored row is one rounding of
// it whatever the chunking. The weight is mtla_weight.cuh's, shared with the
// prefill's running-rows kernels. Shared memory: 2.5 d_c + 16 floats.
#include "decode.cuh"
#include "mtla_weight.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 512;

template <class T>
__global__ void __launch_bounds__(kThreads) decode_append_mtla_kernel(PagedView v, StepView s, int dc, const T* rows) {
  extern __shared__ float smem[];
  const int b = blockIdx.x, tid = threadIdx.x;
  const int32_t t = static_cast<int32_t>(s.positions[b]), stride = static_cast<int32_t>(v.mtla_s);
  const int32_t k = t / stride;
  const int64_t tr = table_row(v, s.seqs[b]);
  const T* src = rows + b * v.row_elems;
  float* c = smem;  // [dc] the new latent, left there by mtla_merge_weight
  const float weight = mtla_merge_weight<kThreads>(src, k, dc, v.hyper, smem);

  float* sum = v.open_sum + tr * dc;
  T* dst = rep_row<T>(v, tr, k);
  const bool opens = t % stride == 0;
  for (int i = tid; i < dc; i += kThreads) {
    const float x = __fmul_rn(weight, c[i]);
    const float y = opens ? x : __fadd_rn(sum[i], x);
    sum[i] = y;
    dst[i] = from_float<T>(y);
  }
  for (int64_t i = dc + tid; i < v.row_elems; i += kThreads) dst[i] = src[i];  // the latest token's rope key
}

}  // namespace

void decode_append_mtla(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* rows, DType dtype,
                        cudaStream_t stream) {
  if (s.batch == 0) return;
  const int dc = sh.d_v;
  const size_t smem = mtla_weight_smem_floats(dc, kThreads) * sizeof(float);
  dispatch_dtype(dtype, "cuda::decode_append_mtla", [&](auto tag) {
    using T = decltype(tag);
    decode_append_mtla_kernel<T><<<s.batch, kThreads, smem, stream>>>(v, s, dc, static_cast<const T*>(rows));
    LCA_CUDA_CHECK_LAUNCH("decode_append_mtla");
  });
}

}  // namespace lca::cuda::detail
