// moe_dispatch: a counting sort of the (token, expert) pairs by expert, on the
// device, so that the grouped GEMM finds its rows without a host round trip.
//
// Plan: one block of 1024 threads. Counts per expert by shared-memory atomics;
// thread 0 turns them into row offsets and row-tile offsets (E steps); then
// each pair takes the next row of its expert by an atomic on a shared cursor.
// The order of the rows within an expert is therefore arbitrary, which changes
// no result: every row of the grouped GEMM is computed on its own, and the
// combine reads each pair's row by its position.
// Shared memory: 2 E ints. The code is dispatch_pairs (moe_routing.cuh),
// shared with moe_route_small.
#include "moe_routing.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 1024;

__global__ void __launch_bounds__(kThreads)
    moe_dispatch_kernel(const int32_t* expert, int64_t pairs, int per_token, int experts, int tile_rows,
                        int32_t* offsets, int32_t* tile_offsets, int32_t* position, int32_t* token_of) {
  extern __shared__ int32_t dispatch_smem[];
  dispatch_pairs(expert, pairs, per_token, experts, tile_rows, dispatch_smem, offsets, tile_offsets, position,
                 token_of);
}

}  // namespace

void moe_dispatch(const int32_t* expert, int64_t pairs, int per_token, int experts, int tile_rows, int32_t* offsets,
                  int32_t* tile_offsets, int32_t* position, int32_t* token_of, cudaStream_t stream) {
  if (pairs == 0) return;
  const size_t smem = 2 * size_t(experts) * sizeof(int32_t);
  LCA_CHECK(smem <= 48 * 1024, "moe_dispatch: experts ", experts, " exceed the shared memory of the counting sort");
  moe_dispatch_kernel<<<1, kThreads, smem, stream>>>(expert, pairs, per_token, experts, tile_rows, offsets,
                                                     tile_offsets, position, token_of);
  LCA_CUDA_CHECK_LAUNCH("moe_dispatch");
}

}  // namespace lca::cuda::detail
