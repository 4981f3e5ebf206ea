// Shared helpers of the lca test suite: a seeded, platform-independent RNG,
// random tensors / shapes / policies, error measures and row slicing.
//
// Every test creates its own Rng from a fixed seed, so a failure reproduces
// exactly; the generators below use only the raw 64-bit output of
// std::mt19937_64 (whose sequence the standard fixes), never the
// implementation-defined std::*_distribution classes.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "lca/dtype.hpp"
#include "lca/error.hpp"
#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace lca_test {

using lca::GqaDims;
using lca::LcaParams;
using lca::MlaDims;
using lca::Shape;
using lca::Tensor;

// ---- Random numbers -----------------------------------------------------------

class Rng {
 public:
  explicit Rng(uint64_t seed) : eng_(seed) {}

  uint64_t bits() { return eng_(); }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(bits() >> 11) * 0x1.0p-53; }
  // Uniform integer in [lo, hi] (inclusive).
  int64_t uniform_int(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int64_t>(bits() % span);
  }
  bool coin(double p = 0.5) { return uniform() < p; }
  // Standard normal (Box-Muller).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }
  template <class V>
  const typename V::value_type& pick(const V& v) {
    return v[static_cast<size_t>(uniform_int(0, static_cast<int64_t>(v.size()) - 1))];
  }

 private:
  std::mt19937_64 eng_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// A tensor of i.i.d. N(mean, sd^2) values.
template <class T>
Tensor<T> randn(const Shape& shape, Rng& rng, double sd = 1.0, double mean = 0.0) {
  Tensor<T> t(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(mean + sd * rng.normal());
  return t;
}

// Queries [L, H, d] = N(0, 1) noise + one random vector shared by every
// position and head (sd `shared_sd`). The shared part makes the head-summed
// summary queries large, so group softmaxes are peaked rather than uniform and
// the anchors are well defined.
template <class T>
Tensor<T> random_queries(int64_t L, int64_t H, int64_t d, Rng& rng, double shared_sd = 1.0) {
  std::vector<double> shared(static_cast<size_t>(d));
  for (auto& x : shared) x = shared_sd * rng.normal();
  Tensor<T> q({L, H, d});
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t c = 0; c < d; ++c) q.data()[(l * H + h) * d + c] = static_cast<T>(shared[c] + rng.normal());
  return q;
}

// ---- Random shapes and policies ---------------------------------------------------

inline int64_t random_even(Rng& rng, int64_t lo, int64_t hi) { return 2 * rng.uniform_int(lo / 2, hi / 2); }

// heads 1-4, d_latent 8-32, d_rope 4-8 even, d_nope / d_v 4-16.
inline MlaDims random_mla_dims(Rng& rng) {
  MlaDims d;
  d.heads = rng.uniform_int(1, 4);
  d.d_latent = rng.uniform_int(8, 32);
  d.d_rope = random_even(rng, 4, 8);
  d.d_nope = rng.uniform_int(4, 16);
  d.d_v = rng.uniform_int(4, 16);
  return d;
}

// q_heads 1-4 (a multiple of kv_heads), head_dim 4-16 even.
inline GqaDims random_gqa_dims(Rng& rng) {
  GqaDims d;
  d.kv_heads = rng.uniform_int(1, 2);
  d.q_heads = d.kv_heads * rng.uniform_int(1, 4 / d.kv_heads);
  d.head_dim = random_even(rng, 4, 16);
  return d;
}

// Window in [0, w_max] (0 with probability 1/6), group in [1, g_max] (1 with
// probability 1/8), every option uniformly.
inline LcaParams random_params(Rng& rng, int64_t w_max, int64_t g_max) {
  LcaParams p;
  p.window = rng.coin(1.0 / 6) ? 0 : rng.uniform_int(0, w_max);
  p.group = rng.coin(1.0 / 8) ? 1 : rng.uniform_int(1, g_max);
  p.score = rng.coin() ? lca::ScoreMode::latent : lca::ScoreMode::full;
  p.key_mode = rng.coin() ? lca::KeyMode::pooled : lca::KeyMode::anchor;
  p.mass_bias = rng.coin() ? lca::MassBias::none : lca::MassBias::log_g;
  return p;
}

inline std::string str(const MlaDims& d) {
  std::ostringstream os;
  os << "MlaDims{H=" << d.heads << ", d_c=" << d.d_latent << ", d_r=" << d.d_rope << ", d_n=" << d.d_nope
     << ", d_v=" << d.d_v << "}";
  return os.str();
}
inline std::string str(const GqaDims& d) {
  std::ostringstream os;
  os << "GqaDims{q_heads=" << d.q_heads << ", kv_heads=" << d.kv_heads << ", head_dim=" << d.head_dim << "}";
  return os.str();
}
// Spelled out here (not LcaParams::describe()) so a trace never depends on the library.
inline std::string str(const LcaParams& p) {
  std::ostringstream os;
  if (p.is_full()) return "LcaParams::full()";
  os << "LcaParams{w=" << p.window << ", g=" << p.group
     << ", score=" << (p.score == lca::ScoreMode::latent ? "latent" : "full")
     << ", key=" << (p.key_mode == lca::KeyMode::pooled ? "pooled" : "anchor")
     << ", mass_bias=" << (p.mass_bias == lca::MassBias::none ? "none" : "log_g") << "}";
  return os.str();
}

// ---- Error measures ---------------------------------------------------------------

// ||a - b|| / ||b|| over all elements. +inf if the shapes differ, if any
// element of a (or of the reference b) is NaN/Inf, or if b = 0 and a != b.
template <class A, class B>
double rel_err(const Tensor<A>& a, const Tensor<B>& b) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (a.shape() != b.shape()) return inf;
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = static_cast<double>(a.data()[i]), y = static_cast<double>(b.data()[i]);
    if (!std::isfinite(x) || !std::isfinite(y)) return inf;
    num += (x - y) * (x - y);
    den += y * y;
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : inf;
  return std::sqrt(num) / std::sqrt(den);
}

// Bitwise equality of two float/double tensors (shape and every bit pattern).
template <class T>
::testing::AssertionResult bitwise_equal(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shapes differ: " << lca::shape_str(a.shape()) << " vs "
                                         << lca::shape_str(b.shape());
  int64_t first = -1, count = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (std::memcmp(&a.data()[i], &b.data()[i], sizeof(T)) != 0) {
      if (first < 0) first = i;
      ++count;
    }
  }
  if (count == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(17);
  os << count << " of " << a.numel() << " elements differ; first at flat index " << first << ": "
     << static_cast<double>(a.data()[first]) << " vs " << static_cast<double>(b.data()[first]);
  return ::testing::AssertionFailure() << os.str();
}

// ---- Row slicing ------------------------------------------------------------------

// Rows [start, start + count) of the first dimension, same trailing dims.
template <class T>
Tensor<T> slice_rows(const Tensor<T>& t, int64_t start, int64_t count) {
  Shape s = t.shape();
  s[0] = count;
  Tensor<T> out(s);
  if (count > 0) std::copy(t.row(start), t.row(start) + count * t.row_stride(), out.data());
  return out;
}

// Concatenation along the first dimension (all parts share trailing dims).
template <class T>
Tensor<T> concat_rows(const std::vector<Tensor<T>>& parts) {
  Shape s = parts.at(0).shape();
  int64_t n = 0;
  for (const auto& p : parts) n += p.dim(0);
  s[0] = n;
  Tensor<T> out(s);
  int64_t at = 0;
  for (const auto& p : parts) {
    std::copy(p.data(), p.data() + p.numel(), out.data() + at);
    at += p.numel();
  }
  return out;
}

// Same data, new shape (numel must match).
template <class T>
Tensor<T> reshape(const Tensor<T>& t, const Shape& s) {
  Tensor<T> out(s);
  EXPECT_EQ(out.numel(), t.numel()) << "reshape " << lca::shape_str(t.shape()) << " -> " << lca::shape_str(s);
  std::copy(t.data(), t.data() + std::min(out.numel(), t.numel()), out.data());
  return out;
}

// Every element rounded to the storage dtype and back.
inline Tensor<float> rounded(lca::DType dt, const Tensor<float>& t) {
  Tensor<float> out = t;
  for (auto& x : out.vec()) x = lca::round_to(dt, x);
  return out;
}

// ---- Spec arithmetic, written out independently of params.hpp ----------------------

// m(n) by brute force: the number of groups j with tau_j = (j+1)g + w - 1 <= n - 1.
inline int64_t brute_condensed_groups(int64_t n, int64_t w, int64_t g) {
  int64_t m = 0;
  while ((m + 1) * g + w - 1 <= n - 1) ++m;
  return m;
}

// A fresh folder per test under the system's temp dir (named after the test
// and the process), removed after it.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("lca_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name()) + "_" +
            std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

inline std::vector<int64_t> random_tokens(Rng& rng, int64_t n, int64_t vocab) {
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = rng.uniform_int(0, vocab - 1);
  return t;
}

// max |a - b| over all entries, relative to max |b|; b as rows of doubles or a tensor.
inline double max_rel_diff(const lca::Tensor<float>& a, const std::vector<std::vector<double>>& b) {
  double diff = 0.0, scale = 0.0;
  for (int64_t t = 0; t < a.dim(0); ++t)
    for (int64_t i = 0; i < a.dim(1); ++i) {
      diff = std::max(diff, std::abs(a.row(t)[i] - b[static_cast<size_t>(t)][static_cast<size_t>(i)]));
      scale = std::max(scale, std::abs(b[static_cast<size_t>(t)][static_cast<size_t>(i)]));
    }
  return diff / scale;
}
inline double max_rel_diff(const lca::Tensor<float>& a, const lca::Tensor<float>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double diff = 0.0, scale = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a.data()[i] - b.data()[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b.data()[i])));
  }
  return diff / scale;
}

// Runs call and expects an lca::Error whose message contains every one of parts.
inline void expect_error(const std::function<void()>& call, const std::vector<std::string>& parts) {
  try {
    call();
    ADD_FAILURE() << "no throw; expected " << ::testing::PrintToString(parts);
  } catch (const lca::Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// The message of the lca::Error that f throws ("" when it throws none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lca::Error& e) {
    return e.what();
  }
  return "";
}

// Pieces of the float64 model oracles (Hugging Face's definitions).
using Vec = std::vector<double>;
inline Vec matvec(const lca::Tensor<float>& w, const Vec& x) {  // w [out, in]
  Vec y(static_cast<size_t>(w.dim(0)), 0.0);
  for (int64_t o = 0; o < w.dim(0); ++o)
    for (int64_t i = 0; i < w.dim(1); ++i)
      y[static_cast<size_t>(o)] += static_cast<double>(w.row(o)[i]) * x[static_cast<size_t>(i)];
  return y;
}
inline Vec rms_norm(const Vec& x, const lca::Tensor<float>& w, double eps) {
  double ms = 0.0;
  for (double v : x) ms += v * v;
  ms /= static_cast<double>(x.size());
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w.data()[i] * (x[i] / std::sqrt(ms + eps));
  return y;
}

}  // namespace lca_test
