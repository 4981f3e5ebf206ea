// moe_dispatch: a counting sort of the (token, expert) pairs by expert, on the
// device, so that the grouped GEMM finds its rows without a host round trip.
//
// Plan: one block of 1024 threads. Counts per expert by shared-memory atomics;
// thread 0 turns them into row offsets and row-tile offsets (E steps); then
// each pair takes the next row of its expert by an atomic on a shared cursor.
// The order of the rows within an expert is therefore arbitrary, which changes
// no result: every row of the grouped GEMM is computed on its own, and the
// combine reads each pair's row by its position.
// Shared memory: 2 E ints.
#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 1024;

__global__ void __launch_bounds__(kThreads)
    moe_dispatch_kernel(const int32_t* expert, int64_t pairs, int per_token, int experts, int tile_rows,
                        int32_t* offsets, int32_t* tile_offsets, int32_t* position, int32_t* token_of) {
  extern __shared__ int32_t dispatch_smem[];
  pdl_wait();  // launched with programmatic dependent launch: only the launch overlaps the kernel before
  pdl_launch_dependents();
  int32_t* count = dispatch_smem;
  int32_t* cursor = dispatch_smem + experts;
  for (int e = threadIdx.x; e < experts; e += kThreads) count[e] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += kThreads) atomicAdd(&count[expert[p]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t row = 0, tile = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = cursor[e] = row;
      tile_offsets[e] = tile;
      row += count[e];
      tile += (count[e] + tile_rows - 1) / tile_rows;
    }
    offsets[experts] = row;
    tile_offsets[experts] = tile;
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < pairs; p += kThreads) {
    const int32_t pos = atomicAdd(&cursor[expert[p]], 1);
    position[p] = pos;
    token_of[pos] = static_cast<int32_t>(p / per_token);
  }
}

}  // namespace

void moe_dispatch(const int32_t* expert, int64_t pairs, int per_token, int experts, int tile_rows, int32_t* offsets,
                  int32_t* tile_offsets, int32_t* position, int32_t* token_of, cudaStream_t stream) {
  if (pairs == 0) return;
  const size_t smem = 2 * size_t(experts) * sizeof(int32_t);
  LCA_CHECK(smem <= 48 * 1024, "moe_dispatch: experts ", experts, " exceed the shared memory of the counting sort");
  launch_with_pdl(moe_dispatch_kernel, dim3(1), kThreads, smem, stream, expert, pairs, per_token, experts, tile_rows,
                  offsets, tile_offsets, position, token_of);
  LCA_CUDA_CHECK_LAUNCH("moe_dispatch");
}

}  // namespace lca::cuda::detail
