// mtla_rows: the MTLA rows of a prefill chunk (mtla-spec.md sections 2-4).
// After mtla_merge_weights, one block of 256 threads per chunk of s positions
// overlapping the prefill chunk: threads own latent columns and walk the
// chunk's positions in order, keeping the fp32 running sum (w c for the
// chunk's first token, sum + w c after; multiply and add rounded separately,
// as the CPU reference computes them), and write each position's running row
// [round(sum) ; k^R_t]; the row of the chunk's last position is also its
// complete row. The chunk open at `start` continues from open_in, the one
// open at start + L leaves its sum in open_out (distinct buffers: different
// blocks read one and write the other).
#include "lca/cuda.hpp"
#include "common.cuh"
#include "mtla.hpp"

namespace lca::cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads) mtla_rows_kernel(MtlaRowsArgs a, int64_t row_elems) {
  const int64_t s = a.params.down_rate, first_chunk = a.start / s, end = a.start + a.len;
  const int64_t chunk = first_chunk + blockIdx.x;
  const int64_t p_lo = max(chunk * s, a.start), p_hi = min((chunk + 1) * s, end);  // positions [p_lo, p_hi)
  const int dc = static_cast<int>(a.d_latent);
  const T* rows = static_cast<const T*>(a.rows);
  T* running = static_cast<T*>(a.running);
  T* complete = static_cast<T*>(a.complete);
  for (int x = threadIdx.x; x < dc; x += kThreads) {
    float sum = p_lo > chunk * s ? a.open_in[x] : 0.f;
    for (int64_t p = p_lo; p < p_hi; ++p) {
      const float add = __fmul_rn(a.weights[p - a.start], detail::to_float(rows[(p - a.start) * row_elems + x]));
      sum = p == chunk * s ? add : __fadd_rn(sum, add);
      const T stored = detail::from_float<T>(sum);
      running[(p - a.start) * row_elems + x] = stored;
      if (p == (chunk + 1) * s - 1) complete[(chunk - first_chunk) * row_elems + x] = stored;
    }
    if (p_hi < (chunk + 1) * s) a.open_out[x] = sum;
  }
  for (int64_t p = p_lo; p < p_hi; ++p)  // the latest token's rope key
    for (int64_t x = dc + threadIdx.x; x < row_elems; x += kThreads) {
      const T key = rows[(p - a.start) * row_elems + x];
      running[(p - a.start) * row_elems + x] = key;
      if (p == (chunk + 1) * s - 1) complete[(chunk - first_chunk) * row_elems + x] = key;
    }
}

}  // namespace

void mtla_rows(const MtlaRowsArgs& a, cudaStream_t stream) {
  const char* where = "cuda::mtla_rows";
  check_mtla_rows(a);
  if (a.len == 0) return;
  const int64_t s = a.params.down_rate, row_elems = a.d_latent + a.d_rope;
  detail::mtla_merge_weights(a.rows, row_elems, a.start, a.len, static_cast<int>(a.d_latent), s, a.hyper, a.weights,
                             a.dtype, stream);
  const int64_t chunks = (a.start + a.len - 1) / s - a.start / s + 1;
  detail::dispatch_dtype(a.dtype, where, [&](auto tag) {
    using T = decltype(tag);
    mtla_rows_kernel<T><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(a, row_elems);
    LCA_CUDA_CHECK_LAUNCH(where);
  });
}

}  // namespace lca::cuda
