#include "lca/tensor.hpp"

#include <cmath>

namespace lca {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

template <class T>
void expect_shape(const char* where, const char* name, const Tensor<T>& t, const Shape& expected) {
  bool ok = t.shape().size() == expected.size();
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == t.shape()[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < expected.size(); ++i)
      want += (i ? ", " : "") + (expected[i] < 0 ? std::string("*") : std::to_string(expected[i]));
    detail::fail(where, ": ", name, " has shape ", shape_str(t.shape()), ", expected ", want + "]");
  }
}

template <class T>
void expect_finite(const char* where, const char* name, const Tensor<T>& t) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(static_cast<double>(t.data()[i]))) {
      detail::fail(where, ": ", name, " holds a non-finite value (", static_cast<double>(t.data()[i]),
                   ") at flat index ", i, " of shape ", shape_str(t.shape()));
    }
  }
}

template void expect_shape(const char*, const char*, const Tensor<float>&, const Shape&);
template void expect_shape(const char*, const char*, const Tensor<double>&, const Shape&);
template void expect_shape(const char*, const char*, const Tensor<int64_t>&, const Shape&);
template void expect_finite(const char*, const char*, const Tensor<float>&);
template void expect_finite(const char*, const char*, const Tensor<double>&);

}  // namespace lca
