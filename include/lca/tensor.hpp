// A small owning host tensor: row-major, contiguous, any rank. The CPU
// reference and the CPU cache speak in these; GPU code will use views.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "lca/error.hpp"

namespace lca {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[4, 16, 576]"

template <class T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, T fill = T(0)) : shape_(std::move(shape)) {
    int64_t n = 1;
    for (int64_t d : shape_) {
      LCA_CHECK(d >= 0, "Tensor: negative dimension in shape ", shape_str(shape_));
      n *= d;
    }
    data_.assign(static_cast<size_t>(n), fill);
  }

  const Shape& shape() const { return shape_; }
  int64_t rank() const { return static_cast<int64_t>(shape_.size()); }
  int64_t dim(int64_t i) const { return shape_.at(static_cast<size_t>(i)); }
  int64_t numel() const { return static_cast<int64_t>(data_.size()); }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  std::vector<T>& vec() { return data_; }
  const std::vector<T>& vec() const { return data_; }

  // Values per index of the first dimension (the product of the other dims).
  int64_t row_stride() const { return shape_.empty() || shape_[0] == 0 ? 0 : numel() / shape_[0]; }
  T* row(int64_t i) { return data_.data() + i * row_stride(); }
  const T* row(int64_t i) const { return data_.data() + i * row_stride(); }

  template <class U>
  Tensor<U> cast() const {
    Tensor<U> out(shape_);
    for (int64_t i = 0; i < numel(); ++i) out.data()[i] = static_cast<U>(data_[static_cast<size_t>(i)]);
    return out;
  }

 private:
  Shape shape_;
  std::vector<T> data_;
};

// Throws lca::Error "lca: <where>: <name> has shape [..], expected [..]" on a mismatch.
// A dimension of -1 in `expected` matches any size.
template <class T>
void expect_shape(const char* where, const char* name, const Tensor<T>& t, const Shape& expected);

// Throws lca::Error naming the tensor and the first non-finite element.
template <class T>
void expect_finite(const char* where, const char* name, const Tensor<T>& t);

}  // namespace lca
