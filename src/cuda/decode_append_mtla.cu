// decode_append_mtla: the first kernel of an MTLA decode step (mtla-spec.md
// sections 2 and 4), one block of 512 threads per batch entry. For the new
// token t of chunk k = t / s:
//   w_t = sigmoid(fc_c(PE(k)) . fc_p(c_t))        (fp32; PE angles in fp64)
//   sum_k = w_t c_t (t opens the chunk) or sum_k + w_t c_t
//   row k = [round(sum_k) ; k^R_t]                 (stored in place each step)
// The fp32 sum stays beside the cache, so the stored row is one rounding of
// it whatever the chunking. Warps compute the two affine maps (four outputs
// per warp at a time, lanes over the input in float4s, 16 loads in flight per
// lane), the block reduces the dot product.
// Shared memory: 2 d_c + 2 d_c/4 + 8 floats.
#include "condense_group.cuh"
#include "decode.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 512, kWarps = kThreads / 32;

template <class T>
__global__ void __launch_bounds__(kThreads) decode_append_mtla_kernel(PagedView v, StepView s, int dc, const T* rows) {
  extern __shared__ float smem[];
  const int b = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32, dq = dc / 4;
  const int32_t t = static_cast<int32_t>(s.positions[b]), stride = static_cast<int32_t>(v.mtla_s);
  const int32_t k = t / stride;
  const int64_t tr = table_row(v, s.seqs[b]);
  float* c = smem;             // [dc] the new latent
  float* pe = c + dc;          // [dc] PE(k)
  float* chunk_key = pe + dc;  // [dq]
  float* token_key = chunk_key + dq;
  float* partial = token_key + dq;  // [kWarps]
  const T* src = rows + b * v.row_elems;
  for (int i = tid; i < dc; i += kThreads) {
    c[i] = to_float(src[i]);
    const int j = i / 2;
    const double angle = static_cast<double>(k) * pow(10000.0, -2.0 * j / dc);
    pe[i] = static_cast<float>(i % 2 == 0 ? sin(angle) : cos(angle));
  }
  __syncthreads();
  const float* fc_c_w = v.hyper;
  const float* fc_c_b = fc_c_w + int64_t(dq) * dc;
  const float* fc_p_w = fc_c_b + dq;
  const float* fc_p_b = fc_p_w + int64_t(dq) * dc;
  // Outputs of fc_c, then of fc_p, kOut per warp at a time: lanes read float4s
  // of kOut weight rows at once, so a lane has 4 kOut loads in flight.
  constexpr int kOut = 4;
  for (int o0 = warp * kOut; o0 < 2 * dq; o0 += kWarps * kOut) {
    float acc[kOut] = {};
#pragma unroll
    for (int u = 0; u < kOut; ++u) {
      const int o = o0 + u;
      if (o >= 2 * dq) break;
      const bool chunk = o < dq;
      const float4* w = reinterpret_cast<const float4*>((chunk ? fc_c_w : fc_p_w) + int64_t(chunk ? o : o - dq) * dc);
      const float4* x = reinterpret_cast<const float4*>(chunk ? pe : c);
#pragma unroll 4
      for (int i = lane; i < dc / 4; i += 32) {
        const float4 a = w[i], y = x[i];
        acc[u] += a.x * y.x + a.y * y.y + a.z * y.z + a.w * y.w;
      }
    }
#pragma unroll
    for (int u = 0; u < kOut; ++u) {
      const int o = o0 + u;
      const float sum = warp_sum(acc[u]);
      if (lane == 0 && o < 2 * dq) {
        if (o < dq) chunk_key[o] = sum + fc_c_b[o];
        else token_key[o - dq] = sum + fc_p_b[o - dq];
      }
    }
  }
  __syncthreads();
  float logit = 0.f;
  for (int i = tid; i < dq; i += kThreads) logit += chunk_key[i] * token_key[i];
  logit = warp_sum(logit);
  if (lane == 0) partial[warp] = logit;
  __syncthreads();
  logit = 0.f;
  for (int w = 0; w < kWarps; ++w) logit += partial[w];
  const float weight = 1.f / (1.f + expf(-logit));

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
  const size_t smem = (2 * dc + 2 * (dc / 4) + kWarps) * sizeof(float);
  dispatch_dtype(dtype, "cuda::decode_append_mtla", [&](auto tag) {
    using T = decltype(tag);
    decode_append_mtla_kernel<T><<<s.batch, kThreads, smem, stream>>>(v, s, dc, static_cast<const T*>(rows));
    LCA_CUDA_CHECK_LAUNCH("decode_append_mtla");
  });
}

}  // namespace lca::cuda::detail
