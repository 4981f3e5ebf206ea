// The row kernels of GpuMoe's per-expert cuBLAS path (moe.hpp): the gather of
// h's rows into expert order, and SwiGLU over the interleaved gate and up
// columns of a GEMM against w_gate_up.
//
// Plan: grid-stride loops, a thread per 16 bytes (8 bf16) of the gather, per
// 8 output columns of the SwiGLU (one block of 8 gate and the next 8 up
// columns, the interleave's unit).
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t items) {
  return static_cast<unsigned>(std::min<int64_t>((items + kThreads - 1) / kThreads, 132 * 16));
}

__global__ void moe_gather_rows_kernel(const uint4* h, const int32_t* token_of, int64_t rows, int64_t chunks_per_row,
                                       uint4* out) {
  const int64_t n = rows * chunks_per_row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunks_per_row, c = i % chunks_per_row;
    out[i] = h[int64_t(token_of[r]) * chunks_per_row + c];
  }
}

// gate_up rows of 2f: columns 16 j .. 16 j + 7 gate columns 8 j .., the next 8 the up columns.
__global__ void moe_swiglu_interleaved_kernel(const uint4* gate_up, int64_t rows, int64_t blocks_per_row, uint4* act) {
  pdl_wait();  // launched with programmatic dependent launch: only the launch overlaps the kernel before
  pdl_launch_dependents();
  const int64_t n = rows * blocks_per_row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 g = gate_up[2 * i], u = gate_up[2 * i + 1];
    const __nv_bfloat162* gp = reinterpret_cast<const __nv_bfloat162*>(&g);
    const __nv_bfloat162* up = reinterpret_cast<const __nv_bfloat162*>(&u);
    uint4 o;
    __nv_bfloat162* op = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 a = __bfloat1622float2(gp[j]), b = __bfloat1622float2(up[j]);
      op[j] = __floats2bfloat162_rn(a.x / (1.f + expf(-a.x)) * b.x, a.y / (1.f + expf(-a.y)) * b.y);
    }
    act[i] = o;
  }
}

}  // namespace

void moe_gather_rows(const void* h, const int32_t* token_of, int64_t rows, int64_t d, void* out, cudaStream_t stream) {
  if (rows == 0) return;
  LCA_CHECK(d % 8 == 0, "moe_gather_rows: d must be a multiple of 8, got ", d);
  moe_gather_rows_kernel<<<blocks_for(rows * d / 8), kThreads, 0, stream>>>(
      static_cast<const uint4*>(h), token_of, rows, d / 8, static_cast<uint4*>(out));
  LCA_CUDA_CHECK_LAUNCH("moe_gather_rows");
}

void moe_swiglu_interleaved(const void* gate_up, int64_t rows, int64_t f, void* act, cudaStream_t stream) {
  if (rows == 0) return;
  LCA_CHECK(f % 8 == 0, "moe_swiglu_interleaved: f must be a multiple of 8, got ", f);
  launch_with_pdl(moe_swiglu_interleaved_kernel, dim3(blocks_for(rows * f / 8)), kThreads, 0, stream,
                  static_cast<const uint4*>(gate_up), rows, f / 8, static_cast<uint4*>(act));
  LCA_CUDA_CHECK_LAUNCH("moe_swiglu_interleaved");
}

}  // namespace lca::cuda::detail
