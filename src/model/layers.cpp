#include "model/layers.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

namespace lca::model {

namespace {

// OpenBLAS's own thread count, read once before we change it.
int blas_threads() {
  static const int threads = std::max(1, openblas_get_num_threads());
  return threads;
}

}  // namespace

// Two thread pools (OpenBLAS's pthreads and OpenMP's) spin-waiting against
// each other cost a quarter of the prefill time on 2 cores, so each kind of
// product uses one pool: a chunk's sgemm is split over the OpenMP team, each
// thread calling OpenBLAS single-threaded on a slice of W's rows; a single
// token's sgemv (memory-bound, and between serial attention steps) is left to
// OpenBLAS's threads. Measured on the 2-core machine, SmolLM2 full attention:
// prefill of 1K tokens 2.5-3.0 s against 3.0-4.7 s with OpenBLAS threading
// both; decode about 60 tokens/s against 40 for a serial sgemv.
void linear(const float* x, int64_t rows, const Tensor<float>& w, const Tensor<float>& bias, float* y) {
  const int64_t out = w.dim(0), in = w.dim(1);
  const int pool = blas_threads();
  if (rows == 1) {
    openblas_set_num_threads(pool);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f, w.data(),
                static_cast<int>(in), x, 1, 0.0f, y, 1);
  } else {
    openblas_set_num_threads(1);
    const int64_t threads = std::max(1, omp_get_max_threads());
    const int64_t slice = (std::max<int64_t>(64, (out + threads - 1) / threads) + 63) / 64 * 64;
    const int64_t slices = (out + slice - 1) / slice;
#pragma omp parallel for schedule(static) if (slices > 1 && rows * in * out > (1 << 16))
    for (int64_t s = 0; s < slices; ++s) {
      const int64_t o0 = s * slice, n = std::min(slice, out - o0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(n),
                  static_cast<int>(in), 1.0f, x, static_cast<int>(in), w.row(o0), static_cast<int>(in), 0.0f, y + o0,
                  static_cast<int>(out));
    }
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
