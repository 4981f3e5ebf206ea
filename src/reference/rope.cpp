#include <cmath>

#include "lca/reference.hpp"

namespace lca::ref {

template <class T>
void rope_rotate(T* x, int64_t d, int64_t pos, const RopeParams& rope) {
  const int64_t half = d / 2;
  for (int64_t j = 0; j < half; ++j) {
    // Angle in double: positions reach 1e5+ and float angles would lose the phase.
    const double angle = static_cast<double>(pos) * std::pow(rope.theta, -2.0 * static_cast<double>(j) / d);
    const T c = static_cast<T>(std::cos(angle)), s = static_cast<T>(std::sin(angle));
    const T a = x[j], b = x[j + half];
    x[j] = a * c - b * s;
    x[j + half] = b * c + a * s;
  }
}

template <class T>
Tensor<T> rope_rotate_rows(const Tensor<T>& x, int64_t start, const RopeParams& rope) {
  LCA_CHECK(x.rank() == 3, "rope_rotate_rows: x must be [L, heads, d], got ", shape_str(x.shape()));
  LCA_CHECK(x.dim(2) % 2 == 0, "rope_rotate_rows: head dim must be even, got ", x.dim(2));
  rope.validate();
  Tensor<T> out = x;
  for (int64_t l = 0; l < x.dim(0); ++l)
    for (int64_t h = 0; h < x.dim(1); ++h) rope_rotate(out.row(l) + h * x.dim(2), x.dim(2), start + l, rope);
  return out;
}

template void rope_rotate(float*, int64_t, int64_t, const RopeParams&);
template void rope_rotate(double*, int64_t, int64_t, const RopeParams&);
template Tensor<float> rope_rotate_rows(const Tensor<float>&, int64_t, const RopeParams&);
template Tensor<double> rope_rotate_rows(const Tensor<double>&, int64_t, const RopeParams&);

}  // namespace lca::ref
