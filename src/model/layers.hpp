// The small building blocks of the Llama/Qwen2 forward pass, on raw f32 rows
// (row-major, contiguous). Shared by the model and its tests.
#pragma once

#include <cstdint>
#include <vector>

#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace lca::model {

// y[r, :] = x[r, :] W^T (+ bias) for r < rows: W [out, in] row-major, bias
// [out] or empty. One row goes through sgemv, several through sgemm.
void linear(const float* x, int64_t rows, const Tensor<float>& w, const Tensor<float>& bias, float* y);

// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight (Llama's RMSNorm).
void rms_norm(const float* x, int64_t rows, int64_t d, const float* weight, double eps, float* y);

// gate <- silu(gate) * up, elementwise over n values (SwiGLU).
void swiglu(float* gate, const float* up, int64_t n);

// cos/sin of the half-split rotary map for positions [start, start + len):
// angle(p, j) = p * theta^(-2j/d), computed in double as ref::rope_rotate does.
struct RopeTable {
  int64_t start = 0, len = 0, half = 0;
  std::vector<float> cos, sin;  // [len, half]
};
RopeTable rope_table(int64_t start, int64_t len, int64_t head_dim, const RopeParams& rope);

// Rotates x [len, heads, head_dim] in place, row l by position start + l:
// (a, b) = (x[j], x[j + d/2]) -> (a cos - b sin, b cos + a sin).
void apply_rope(float* x, int64_t heads, const RopeTable& table);

}  // namespace lca::model
