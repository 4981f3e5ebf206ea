#include "model/layers.hpp"

#include <cblas.h>

#include <cmath>

namespace lca::model {

void linear(const float* x, int64_t rows, const Tensor<float>& w, const Tensor<float>& bias, float* y) {
  const int64_t out = w.dim(0), in = w.dim(1);
  if (rows == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f, w.data(),
                static_cast<int>(in), x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(out),
                static_cast<int>(in), 1.0f, x, static_cast<int>(in), w.data(), static_cast<int>(in), 0.0f, y,
                static_cast<int>(out));
  }
  if (bias.numel() > 0)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) y[r * out + o] += bias.data()[o];
}

void rms_norm(const float* x, int64_t rows, int64_t d, const float* weight, double eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(d) + eps));
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = xr[i] * inv * weight[i];
  }
}

void swiglu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

RopeTable rope_table(int64_t start, int64_t len, int64_t head_dim, const RopeParams& rope) {
  RopeTable t;
  t.start = start;
  t.len = len;
  t.half = head_dim / 2;
  t.cos.resize(static_cast<size_t>(len * t.half));
  t.sin.resize(static_cast<size_t>(len * t.half));
  std::vector<double> inv_freq(static_cast<size_t>(t.half));
  for (int64_t j = 0; j < t.half; ++j)
    inv_freq[j] = std::pow(rope.theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
  for (int64_t l = 0; l < len; ++l)
    for (int64_t j = 0; j < t.half; ++j) {
      const double angle = static_cast<double>(start + l) * inv_freq[j];
      t.cos[l * t.half + j] = static_cast<float>(std::cos(angle));
      t.sin[l * t.half + j] = static_cast<float>(std::sin(angle));
    }
  return t;
}

void apply_rope(float* x, int64_t heads, const RopeTable& t) {
  const int64_t half = t.half, d = 2 * half;
  for (int64_t l = 0; l < t.len; ++l) {
    const float* c = t.cos.data() + l * half;
    const float* s = t.sin.data() + l * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (l * heads + h) * d;
      for (int64_t j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        v[j] = a * c[j] - b * s[j];
        v[j + half] = b * c[j] + a * s[j];
      }
    }
  }
}

}  // namespace lca::model
