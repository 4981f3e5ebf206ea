// rms_norm: one block of 256 threads per row; the sum of squares in fp32 by
// shuffles, then each thread scales its columns by the weight. Where the row
// is at most 8,192 values in 16-byte pieces (every model here), each thread
// loads its pieces of the row and of the weight once, all at the start: at
// batch 1 this kernel is one block, and a loop of dependent loads, twice over
// the row, made it 7 us (docs/perf-notes.md). Launched with programmatic
// dependent launch (the weight is read before the wait for x), and lets the
// next kernel (a decode_linear) start its weight loads at once.
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 256, kMaxPieces = 4;  // 8-value pieces per thread: rows of up to 8,192 values

__device__ float block_sum(float ss) {
  __shared__ float partial[kThreads / 32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  ss = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) ss += partial[i];
  return ss;
}

__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const __nv_bfloat16* x, const __nv_bfloat16* w, int64_t d,
                                                            int64_t x_stride, float eps, __nv_bfloat16* out) {
  const __nv_bfloat16* row = x + blockIdx.x * x_stride;
  pdl_wait();
  pdl_launch_dependents();
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < d; c += kThreads) {
    const float v = __bfloat162float(row[c]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(d) + eps);
  for (int64_t c = threadIdx.x; c < d; c += kThreads)
    out[blockIdx.x * d + c] = __float2bfloat16(__bfloat162float(row[c]) * inv * __bfloat162float(w[c]));
}

// d % 8 == 0, d <= 8 kThreads kMaxPieces, rows and weight 16-byte aligned.
__global__ void __launch_bounds__(kThreads) rms_norm_pieces_kernel(const __nv_bfloat16* x, const __nv_bfloat16* w,
                                                                   int d, int64_t x_stride, float eps,
                                                                   __nv_bfloat16* out) {
  const uint4* row = reinterpret_cast<const uint4*>(x + blockIdx.x * x_stride);
  const uint4* weight = reinterpret_cast<const uint4*>(w);
  const int pieces = d / 8;
  uint4 xv[kMaxPieces], wv[kMaxPieces];
#pragma unroll
  for (int i = 0; i < kMaxPieces; ++i) {
    const int p = threadIdx.x + i * kThreads;
    if (p < pieces) wv[i] = __ldg(weight + p);  // the weight does not depend on the kernel before
  }
  pdl_wait();
  pdl_launch_dependents();
#pragma unroll
  for (int i = 0; i < kMaxPieces; ++i) {
    const int p = threadIdx.x + i * kThreads;
    if (p < pieces) xv[i] = row[p];
  }
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPieces; ++i) {
    if (threadIdx.x + i * kThreads >= pieces) break;
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&xv[i]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      ss += f.x * f.x + f.y * f.y;
    }
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(d) + eps);
  uint4* dst = reinterpret_cast<uint4*>(out + blockIdx.x * static_cast<int64_t>(d));
#pragma unroll
  for (int i = 0; i < kMaxPieces; ++i) {
    const int p = threadIdx.x + i * kThreads;
    if (p >= pieces) break;
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&xv[i]);
    const __nv_bfloat162* g = reinterpret_cast<const __nv_bfloat162*>(&wv[i]);
    uint4 o;
    __nv_bfloat162* oh = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]), gw = __bfloat1622float2(g[j]);
      oh[j] = __floats2bfloat162_rn(f.x * inv * gw.x, f.y * inv * gw.y);
    }
    dst[p] = o;
  }
}

}  // namespace

void rms_norm(const void* x, const void* weight, int64_t rows, int64_t d, double eps, void* out, cudaStream_t stream,
              int64_t x_stride) {
  if (rows == 0) return;
  LCA_CHECK(x_stride == 0 || x_stride >= d, "rms_norm: x_stride ", x_stride, " is below the row's ", d, " values");
  const int64_t stride = x_stride > 0 ? x_stride : d;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (d % 8 == 0 && d <= 8 * kThreads * kMaxPieces && stride % 8 == 0 && aligned(x) && aligned(weight) && aligned(out))
    launch_with_pdl(rms_norm_pieces_kernel, dim3(static_cast<unsigned>(rows)), kThreads, 0, stream,
                    static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(weight),
                    static_cast<int>(d), stride, static_cast<float>(eps), static_cast<__nv_bfloat16*>(out));
  else
    launch_with_pdl(rms_norm_kernel, dim3(static_cast<unsigned>(rows)), kThreads, 0, stream,
                    static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(weight), d, stride,
                    static_cast<float>(eps), static_cast<__nv_bfloat16*>(out));
  LCA_CUDA_CHECK_LAUNCH("rms_norm");
}

}  // namespace lca::cuda::detail
