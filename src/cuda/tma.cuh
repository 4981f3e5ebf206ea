// Hopper bulk-tensor copies (TMA) and the mbarriers they complete on.
// Device side: PTX wrappers. Host side: tensor maps of [rows, heads, d]
// tensors, read in boxes of 64 values x 1 head x R rows with the 128-byte
// swizzle, which is the canonical wgmma K-major/MN-major tile block.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common.cuh"

namespace lca::cuda::detail {

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
// Box at (c0 = column, c1 = head, c2 = row) of `map` into shared memory; rows
// outside the tensor (negative or past its end) arrive as zeros.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(smem_addr(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
      : "memory");
}

// Host: a tensor map of a contiguous [rows, heads, d] tensor of 2-byte values,
// boxes of 64 x 1 x box_rows. Throws lca::Error when the driver refuses it.
CUtensorMap make_tensor_map(const void* base, DType dtype, int64_t rows, int64_t heads, int64_t d, int box_rows);

}  // namespace lca::cuda::detail
