// Tensor maps for the TMA loads of the Hopper kernels (tma.cuh). The driver's
// encoder is reached through the runtime, so lca needs no libcuda at link time.
#include <cudaTypedefs.h>

#include "tma.cuh"

namespace lca::cuda::detail {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

}  // namespace

CUtensorMap make_tensor_map(const void* base, DType dtype, int64_t rows, int64_t heads, int64_t d, int box_rows) {
  const auto encode = encoder();
  LCA_CHECK(encode != nullptr, "cuda: the driver has no cuTensorMapEncodeTiled (TMA needs CUDA 12+ drivers)");
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(d * 2), static_cast<cuuint64_t>(heads * d * 2)};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = encode(&map, dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                            3, const_cast<void*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LCA_CHECK(r == CUDA_SUCCESS, "cuda: cuTensorMapEncodeTiled failed (error ", static_cast<int>(r), ") for a [", rows,
            ", ", heads, ", ", d, "] tensor at ", base, " (TMA needs 16-byte aligned rows)");
  return map;
}

}  // namespace lca::cuda::detail
