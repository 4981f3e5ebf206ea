// LCA_CUBLAS_OK: a cuBLAS call whose failure is an lca::Error naming where,
// the call and cuBLAS's status (the GPU runtime's products).
#pragma once

#include <cublas_v2.h>

#include "lca/error.hpp"

#define LCA_CUBLAS_OK(where, expr)                                                                \
  do {                                                                                            \
    const cublasStatus_t lca_st_ = (expr);                                                        \
    if (lca_st_ != CUBLAS_STATUS_SUCCESS)                                                         \
      ::lca::detail::fail(where, ": ", #expr, " failed: ", cublasGetStatusString(lca_st_));       \
  } while (0)
