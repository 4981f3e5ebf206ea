// src/core: dtypes, parameters, group arithmetic, tensor checks.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>

#include "lca/dtype.hpp"
#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace {

using lca::DType;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(lca::float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly half-way between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(lca::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 is half-way between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
  EXPECT_EQ(lca::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(lca::float_to_bf16(-2.0f), 0xc000);
  EXPECT_TRUE(std::isnan(lca::bf16_to_float(lca::float_to_bf16(NAN))));
  EXPECT_TRUE(std::isinf(lca::bf16_to_float(lca::float_to_bf16(INFINITY))));
}

TEST(DType, Bf16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = lca::bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(lca::float_to_bf16(f), h) << std::hex << h;
  }
}

TEST(DType, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = lca::f16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(lca::float_to_f16(f), h) << std::hex << h;
  }
}

TEST(DType, F16RoundingIsNearestEven) {
  // Compare against exact rounding done in double: for a float x, the nearest
  // half-precision value (ties to even) among all finite halves.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-30.f, 17.f);
  for (int k = 0; k < 20000; ++k) {
    const float x = std::ldexp(1.0f + (rng() % 1000000) / 1e6f, static_cast<int>(mag(rng))) * (k % 2 ? -1 : 1);
    const float r = lca::f16_to_float(lca::float_to_f16(x));
    // The rounding error is at most half an ulp of the result's binade (or of the subnormal spacing).
    const double ax = std::fabs(static_cast<double>(x));
    if (ax >= 65520.0) {
      EXPECT_TRUE(std::isinf(r)) << x;
      continue;
    }
    int e;
    std::frexp(ax, &e);
    const double ulp = std::ldexp(1.0, std::max(e - 11, -24));
    ASSERT_LE(std::fabs(static_cast<double>(r) - x), ulp / 2) << x;
    // And it is even on exact ties.
    if (std::fabs(std::fabs(static_cast<double>(r) - x) - ulp / 2) == 0.0)
      ASSERT_EQ(lca::float_to_f16(r) & 1, 0) << x;
  }
  EXPECT_EQ(lca::float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(lca::float_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(lca::float_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(lca::float_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(lca::float_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (zero)
  EXPECT_EQ(lca::float_to_f16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(DType, EncodeDecodeIsRoundTo) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 10.f);
  std::vector<float> x(257), back(257);
  for (float& v : x) v = nd(rng);
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    std::vector<unsigned char> bytes(x.size() * lca::dtype_size(t));
    lca::encode(t, x.data(), 257, bytes.data());
    lca::decode(t, bytes.data(), 257, back.data());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(back[i], lca::round_to(t, x[i]));
  }
  EXPECT_EQ(lca::parse_dtype("bf16"), DType::bf16);
  EXPECT_THROW(lca::parse_dtype("int8"), lca::Error);
}

TEST(Groups, CondensedGroupsMatchDefinition) {
  lca::LcaParams p;
  p.window = 1024;
  p.group = 16;
  EXPECT_EQ(lca::condensed_groups(1024 + 15, p), 0);
  EXPECT_EQ(lca::condensed_groups(1024 + 16, p), 1);
  EXPECT_EQ(lca::condensation_time(0, p), 1024 + 15);  // query 1039 sees n = 1040 tokens
  EXPECT_EQ(lca::cache_entries(32768, p), 3008);
  EXPECT_EQ(lca::cache_entries(131072, p), 9152);
  // tau_j is the first position t with j < m(t + 1).
  for (int64_t j = 0; j < 50; ++j) {
    const int64_t tau = lca::condensation_time(j, p);
    EXPECT_LE(lca::condensed_groups(tau, p), j);
    EXPECT_GT(lca::condensed_groups(tau + 1, p), j);
  }
  const lca::LcaParams full = lca::LcaParams::full();
  EXPECT_TRUE(full.is_full());
  EXPECT_EQ(lca::condensed_groups(1 << 30, full), 0);
  EXPECT_EQ(lca::cache_entries(1 << 20, full), 1 << 20);
}

TEST(Params, InvalidValuesNameTheField) {
  lca::LcaParams p;
  p.group = 0;
  try {
    p.validate();
    FAIL() << "group 0 accepted";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("group"), std::string::npos) << e.what();
  }
  lca::MlaDims d{.heads = 2, .d_latent = 8, .d_rope = 3, .d_nope = 4, .d_v = 4};
  EXPECT_THROW(d.validate(), lca::Error);
  lca::GqaDims g{.q_heads = 6, .kv_heads = 4, .head_dim = 8};
  EXPECT_THROW(g.validate(), lca::Error);
  lca::RopeParams r{.theta = -1};
  EXPECT_THROW(r.validate(), lca::Error);
}

TEST(Tensor, ShapeChecksNameTheTensor) {
  lca::Tensor<float> t({3, 4});
  EXPECT_NO_THROW(lca::expect_shape("f", "x", t, {3, -1}));
  try {
    lca::expect_shape("f", "x", t, {3, 5});
    FAIL();
  } catch (const lca::Error& e) {
    EXPECT_STREQ(e.what(), "lca: f: x has shape [3, 4], expected [3, 5]");
  }
  t.data()[5] = NAN;
  EXPECT_THROW(lca::expect_finite("f", "x", t), lca::Error);
  EXPECT_THROW(lca::Tensor<float>({2, -1}), lca::Error);
}

}  // namespace
