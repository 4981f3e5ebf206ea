// Internal launcher shared by the MTLA row kernels (plain C++ declarations).
#pragma once

#include <cstdint>

#include "lca/dtype.hpp"

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda::detail {

// weights[l] = the merge weight of the token at position start + l, whose row
// ([c ; k^R], row_elems values) is rows[l]; s is the down rate.
void mtla_merge_weights(const void* rows, int64_t row_elems, int64_t start, int64_t len, int dc, int64_t s,
                        const float* hyper, float* weights, DType dtype, cudaStream_t stream);

}  // namespace lca::cuda::detail
