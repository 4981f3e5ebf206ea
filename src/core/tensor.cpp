#include "lca/tensor.hpp"

#include <cmath>
#include <sstream>

namespace lca {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

template <class T>
void expect_shape(const char* where, const char* name, const Tensor<T>& t, const Shape& expected) {
  bool ok = t.shape().size() == expected.size();
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == t.shape()[i];
  if (!ok) {
    Shape shown = expected;
    std::ostringstream want;
    want << "[";
    for (size_t i = 0; i < shown.size(); ++i) {
      want << (i ? ", " : "");
      if (shown[i] < 0) want << "*"; else want << shown[i];
    }
    want << "]";
    detail::fail(where, ": ", name, " has shape ", shape_str(t.shape()), ", expected ", want.str());
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
