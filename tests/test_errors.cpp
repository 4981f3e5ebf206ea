// Invalid arguments throw lca::Error whose message names the problem
// (error.hpp: "names the function and the offending argument").
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "lca/cache.hpp"
#include "lca/reference.hpp"
#include "test_util.hpp"

namespace {

using namespace lca_test;
using lca::CondensedKvCache;
using lca::DType;
using lca::RopeParams;
using lca::ScoreMode;
namespace ref = lca::ref;

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// Each inner list is a set of alternatives; the message (case-insensitively)
// must contain at least one alternative of every set.
using Needles = std::vector<std::vector<std::string>>;

template <class F>
void expect_lca_error(const char* what, F&& f, const Needles& needles) {
  SCOPED_TRACE(what);
  std::string msg;
  bool thrown = false;
  EXPECT_THROW(
      {
        try {
          f();
        } catch (const lca::Error& e) {
          msg = e.what();
          thrown = true;
          throw;
        }
      },
      lca::Error);
  if (!thrown) return;
  const std::string m = lower(msg);
  for (const auto& alts : needles) {
    bool found = false;
    std::string shown;
    for (const auto& a : alts) {
      found = found || m.find(lower(a)) != std::string::npos;
      shown += (shown.empty() ? "\"" : " | \"") + a + "\"";
    }
    EXPECT_TRUE(found) << "message \"" << msg << "\" mentions none of " << shown;
  }
}

// ---- Parameters -----------------------------------------------------------------------

TEST(Errors, LcaParamsValidate) {
  LcaParams p;
  EXPECT_NO_THROW(p.validate());
  p.group = 0;
  expect_lca_error("g = 0", [&] { p.validate(); }, {{"group"}});
  p.group = -3;
  expect_lca_error("g < 0", [&] { p.validate(); }, {{"group"}});
  p = LcaParams{};
  p.window = -1;
  expect_lca_error("w = -1", [&] { p.validate(); }, {{"window"}});
  EXPECT_NO_THROW(LcaParams::full().validate());
  // The error type is a std::invalid_argument.
  p.window = -5;
  EXPECT_THROW(p.validate(), std::invalid_argument);
}

TEST(Errors, MlaDimsValidate) {
  const MlaDims ok{.heads = 2, .d_latent = 8, .d_rope = 4, .d_nope = 4, .d_v = 4};
  EXPECT_NO_THROW(ok.validate());
  MlaDims d = ok;
  d.d_rope = 0;
  expect_lca_error("d_rope = 0", [&] { d.validate(); }, {{"d_rope"}});
  d.d_rope = 5;
  expect_lca_error("odd d_rope", [&] { d.validate(); }, {{"d_rope"}});
  d = ok;
  d.heads = 0;
  expect_lca_error("heads = 0", [&] { d.validate(); }, {{"heads"}});
  d = ok;
  d.d_latent = 0;
  expect_lca_error("d_latent = 0", [&] { d.validate(); }, {{"d_latent"}});
}

TEST(Errors, GqaDimsValidate) {
  const GqaDims ok{.q_heads = 4, .kv_heads = 2, .head_dim = 8};
  EXPECT_NO_THROW(ok.validate());
  GqaDims d = ok;
  d.head_dim = 0;
  expect_lca_error("head_dim = 0", [&] { d.validate(); }, {{"head_dim"}});
  d.head_dim = 7;
  expect_lca_error("odd head_dim", [&] { d.validate(); }, {{"head_dim"}});
  d = ok;
  d.q_heads = 3;
  expect_lca_error("q_heads not divisible by kv_heads", [&] { d.validate(); }, {{"q_heads", "kv_heads"}});
  d = ok;
  d.kv_heads = 0;
  expect_lca_error("kv_heads = 0", [&] { d.validate(); }, {{"kv_heads"}});
}

TEST(Errors, RopeDtypeTensor) {
  for (double theta : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
    expect_lca_error("bad theta", [&] { RopeParams{theta}.validate(); }, {{"theta"}});
  expect_lca_error("unknown dtype", [] { lca::parse_dtype("int8"); }, {{"int8", "dtype"}});
  expect_lca_error("negative dim", [] { Tensor<float>({2, -1}); }, {{"negative", "dimension"}});
  expect_lca_error("odd rope rows", [] { ref::rope_rotate_rows(Tensor<double>({2, 1, 5}), 0, RopeParams{}); },
                   {{"even", "dim"}});
}

// ---- Reference: shapes ------------------------------------------------------------------

const MlaDims kMla{.heads = 2, .d_latent = 8, .d_rope = 4, .d_nope = 6, .d_v = 5};
const GqaDims kGqa{.q_heads = 4, .kv_heads = 2, .head_dim = 4};

TEST(Errors, MlaReferenceShapes) {
  const MlaDims& d = kMla;
  const int64_t L = 5, N = 5, row = d.row_width(), H = d.heads;
  Rng rng(3001);
  const auto qn = randn<double>({L, H, d.d_nope}, rng), qr = randn<double>({L, H, d.d_rope}, rng);
  const auto w_uk = randn<double>({H, d.d_nope, d.d_latent}, rng), w_uv = randn<double>({H, d.d_v, d.d_latent}, rng);
  const auto kv = randn<double>({N, row}, rng), q_abs = randn<double>({N, H, row}, rng);
  const double s = d.default_scale();
  LcaParams p;
  p.window = 1;
  p.group = 2;

  // mla_absorb_queries
  expect_lca_error("absorb: q_nope head count", [&] { ref::mla_absorb_queries(randn<double>({L, H + 1, d.d_nope}, rng), qr, w_uk, d); }, {{"q_nope"}});
  expect_lca_error("absorb: q_rope width", [&] { ref::mla_absorb_queries(qn, randn<double>({L, H, d.d_rope + 2}, rng), w_uk, d); }, {{"q_rope"}});
  expect_lca_error("absorb: q_rope length", [&] { ref::mla_absorb_queries(qn, randn<double>({L + 1, H, d.d_rope}, rng), w_uk, d); }, {{"q_rope"}});
  expect_lca_error("absorb: w_uk", [&] { ref::mla_absorb_queries(qn, qr, randn<double>({H, d.d_latent, d.d_nope}, rng), d); }, {{"w_uk"}});
  // mla_attention_decompressed
  expect_lca_error("decompressed: kv width", [&] { ref::mla_attention_decompressed(qn, qr, randn<double>({N, row - 1}, rng), w_uk, w_uv, 0, s, d); }, {{"rows", "kv"}});
  expect_lca_error("decompressed: w_uv", [&] { ref::mla_attention_decompressed(qn, qr, kv, w_uk, randn<double>({H, d.d_v + 1, d.d_latent}, rng), 0, s, d); }, {{"w_uv"}});
  expect_lca_error("decompressed: q_nope heads", [&] { ref::mla_attention_decompressed(randn<double>({L, H + 1, d.d_nope}, rng), qr, kv, w_uk, w_uv, 0, s, d); }, {{"q_nope"}});
  // mla_attention_absorbed
  expect_lca_error("absorbed: kv width", [&] { ref::mla_attention_absorbed(q_abs, randn<double>({N, row + 1}, rng), 0, s, d); }, {{"rows", "kv"}});
  expect_lca_error("absorbed: query heads", [&] { ref::mla_attention_absorbed(randn<double>({N, H + 1, row}, rng), kv, 0, s, d); }, {{"quer", "q_abs"}});
  expect_lca_error("absorbed: query width", [&] { ref::mla_attention_absorbed(randn<double>({N, H, d.d_latent}, rng), kv, 0, s, d); }, {{"quer", "q_abs"}});
  // mla_up_project
  expect_lca_error("up_project: o_latent", [&] { ref::mla_up_project(randn<double>({L, H, d.d_latent + 1}, rng), w_uv, d); }, {{"o_latent", "latent"}});
  expect_lca_error("up_project: w_uv", [&] { ref::mla_up_project(randn<double>({L, H, d.d_latent}, rng), randn<double>({H + 1, d.d_v, d.d_latent}, rng), d); }, {{"w_uv"}});
  // mla_summary_queries
  expect_lca_error("summary: q_abs width", [&] { ref::mla_summary_queries(randn<double>({L, H, row + 2}, rng), d, ScoreMode::latent); }, {{"q_abs", "quer"}});
  // condense_groups_mla
  const auto sum_lat = ref::mla_summary_queries(q_abs, d, ScoreMode::latent);
  expect_lca_error("condense: kv width", [&] { ref::condense_groups_mla(randn<double>({N, row + 1}, rng), 0, sum_lat, 0, 0, 1, s, d, p); }, {{"rows", "kv"}});
  LcaParams pf = p;
  pf.score = ScoreMode::full;  // needs [L, row] summaries
  expect_lca_error("condense: summary width for score=full", [&] { ref::condense_groups_mla(kv, 0, sum_lat, 0, 0, 1, s, d, pf); }, {{"summary"}});
  // lca_attention_mla
  const auto reps = randn<double>({2, row}, rng);
  expect_lca_error("attention: reps width", [&] { ref::lca_attention_mla(q_abs, 0, randn<double>({2, row - 1}, rng), kv, 0, s, d, p); }, {{"representative", "reps"}});
  expect_lca_error("attention: raw width", [&] { ref::lca_attention_mla(q_abs, 0, reps, randn<double>({N, row + 1}, rng), 0, s, d, p); }, {{"raw"}});
  expect_lca_error("attention: query heads", [&] { ref::lca_attention_mla(randn<double>({N, H + 1, row}, rng), 0, reps, kv, 0, s, d, p); }, {{"quer", "q_abs"}});
  // lca_prefill_mla
  expect_lca_error("prefill: q/kv lengths", [&] { ref::lca_prefill_mla(randn<double>({N + 1, H, row}, rng), kv, s, d, p); }, {{"q_abs", "quer", "rows"}});
  expect_lca_error("prefill: kv width", [&] { ref::lca_prefill_mla(q_abs, randn<double>({N, row + 1}, rng), s, d, p); }, {{"q_abs", "quer", "rows", "kv"}});
  LcaParams bad = p;
  bad.group = 0;
  expect_lca_error("prefill: g = 0", [&] { ref::lca_prefill_mla(q_abs, kv, s, d, bad); }, {{"group"}});
  MlaDims odd = d;
  odd.d_rope = 3;
  expect_lca_error("prefill: odd d_rope", [&] { ref::lca_prefill_mla(q_abs, kv, s, odd, p); }, {{"d_rope"}});
}

TEST(Errors, GqaReferenceShapes) {
  const GqaDims& d = kGqa;
  const int64_t N = 6, row = d.row_width(), Hq = d.q_heads, hd = d.head_dim;
  Rng rng(3002);
  const auto q = randn<double>({N, Hq, hd}, rng), kv = randn<double>({N, row}, rng);
  const double s = d.default_scale();
  LcaParams p;
  p.window = 1;
  p.group = 2;
  const Tensor<double> k = randn<double>({N, d.kv_heads, hd}, rng);
  const Tensor<double> v_bad = randn<double>({N, d.kv_heads + 1, hd}, rng);
  expect_lca_error("pack_rows: v shape", [&] { ref::gqa_pack_rows(k, v_bad, d); }, {{lca::shape_str(v_bad.shape())}});
  const Tensor<double> q_bad = randn<double>({N, Hq + 1, hd}, rng);
  expect_lca_error("gqa_attention: query heads", [&] { ref::gqa_attention(q_bad, kv, 0, s, d); }, {{"quer", lca::shape_str(q_bad.shape())}});
  expect_lca_error("gqa_attention: kv width", [&] { ref::gqa_attention(q, randn<double>({N, row + 2}, rng), 0, s, d); }, {{"rows", "kv"}});
  expect_lca_error("summary: q head dim", [&] { ref::gqa_summary_queries(randn<double>({N, Hq, hd + 2}, rng), d); }, {{"gqa_summary_queries"}});
  const auto sum = ref::gqa_summary_queries(q, d);
  expect_lca_error("condense: summary kv heads", [&] { ref::condense_groups_gqa(kv, 0, randn<double>({N, d.kv_heads + 1, hd}, rng), 0, 0, 1, s, d, RopeParams{}, p); }, {{"summary"}});
  expect_lca_error("condense: kv width", [&] { ref::condense_groups_gqa(randn<double>({N, row - 2}, rng), 0, sum, 0, 0, 1, s, d, RopeParams{}, p); }, {{"rows", "kv"}});
  expect_lca_error("condense: bad theta", [&] { ref::condense_groups_gqa(kv, 0, sum, 0, 0, 1, s, d, RopeParams{-1.0}, p); }, {{"theta"}});
  const auto reps = randn<double>({2, row}, rng);
  expect_lca_error("attention: reps width", [&] { ref::lca_attention_gqa(q, 0, randn<double>({2, row + 1}, rng), kv, 0, s, d, p); }, {{"representative", "reps"}});
  expect_lca_error("attention: raw width", [&] { ref::lca_attention_gqa(q, 0, reps, randn<double>({N, row - 1}, rng), 0, s, d, p); }, {{"raw"}});
  expect_lca_error("prefill: q/kv lengths", [&] { ref::lca_prefill_gqa(randn<double>({N - 1, Hq, hd}, rng), kv, s, d, RopeParams{}, p); }, {{"quer", "rows", "q"}});
  GqaDims bad = d;
  bad.kv_heads = 3;
  expect_lca_error("prefill: q_heads % kv_heads", [&] { ref::lca_prefill_gqa(q, kv, s, bad, RopeParams{}, p); }, {{"q_heads", "kv_heads"}});
}

// ---- Reference: coverage ------------------------------------------------------------------

TEST(Errors, AttentionCoverage) {
  const MlaDims& d = kMla;
  const int64_t row = d.row_width();
  Rng rng(3003);
  LcaParams p;
  p.window = 3;
  p.group = 2;
  // n = 10: m(10) = 3; a query at t = 9 needs 3 representatives and raw [6, 9].
  const int64_t n = 10;
  const auto q = randn<double>({n, d.heads, row}, rng), kv = randn<double>({n, row}, rng);
  const double s = d.default_scale();
  ASSERT_EQ(lca::condensed_groups(n, p), 3);
  EXPECT_NO_THROW(ref::lca_attention_mla(q, 0, randn<double>({3, row}, rng), kv, 0, s, d, p));
  expect_lca_error("too few representatives", [&] { ref::lca_attention_mla(q, 0, randn<double>({2, row}, rng), kv, 0, s, d, p); }, {{"representative"}});
  const auto last = slice_rows(q, n - 1, 1);
  const auto reps = randn<double>({3, row}, rng);
  EXPECT_NO_THROW(ref::lca_attention_mla(last, n - 1, reps, slice_rows(kv, 6, 4), 6, s, d, p));
  expect_lca_error("raw rows start after the window", [&] { ref::lca_attention_mla(last, n - 1, reps, slice_rows(kv, 7, 3), 7, s, d, p); }, {{"raw"}});
  expect_lca_error("raw rows end before the query", [&] { ref::lca_attention_mla(last, n - 1, reps, slice_rows(kv, 6, 3), 6, s, d, p); }, {{"raw"}});

  const GqaDims& gd = kGqa;
  const auto gq = randn<double>({1, gd.q_heads, gd.head_dim}, rng);
  const auto grows = randn<double>({n, gd.row_width()}, rng);
  const auto greps = randn<double>({3, gd.row_width()}, rng);
  EXPECT_NO_THROW(ref::lca_attention_gqa(gq, n - 1, greps, slice_rows(grows, 6, 4), 6, 0.5, gd, p));
  expect_lca_error("gqa: too few representatives", [&] { ref::lca_attention_gqa(gq, n - 1, slice_rows(greps, 0, 1), slice_rows(grows, 6, 4), 6, 0.5, gd, p); }, {{"representative"}});
  expect_lca_error("gqa: raw rows start late", [&] { ref::lca_attention_gqa(gq, n - 1, greps, slice_rows(grows, 8, 2), 8, 0.5, gd, p); }, {{"raw"}});
}

TEST(Errors, CondenseCoverage) {
  const MlaDims& d = kMla;
  const int64_t row = d.row_width();
  Rng rng(3004);
  LcaParams p;
  p.window = 3;
  p.group = 4;
  // Group 1: P_1 = [4, 8), tau_1 = 2*4 + 3 - 1 = 10, S_1 = [7, 10].
  const int64_t n = 11;
  const auto kv = randn<double>({n, row}, rng);
  const auto sum = randn<double>({n, d.d_latent}, rng);
  const double s = d.default_scale();
  EXPECT_NO_THROW(ref::condense_groups_mla(kv, 0, sum, 0, 1, 1, s, d, p));
  EXPECT_NO_THROW(ref::condense_groups_mla(slice_rows(kv, 4, 4), 4, slice_rows(sum, 7, 4), 7, 1, 1, s, d, p));
  expect_lca_error("summary starts after S_j", [&] { ref::condense_groups_mla(kv, 0, slice_rows(sum, 8, 3), 8, 1, 1, s, d, p); }, {{"summary"}});
  expect_lca_error("summary ends before tau_j", [&] { ref::condense_groups_mla(kv, 0, slice_rows(sum, 0, 10), 0, 1, 1, s, d, p); }, {{"summary"}});
  expect_lca_error("kv rows miss the group", [&] { ref::condense_groups_mla(slice_rows(kv, 5, 6), 5, sum, 0, 1, 1, s, d, p); }, {{"rows", "kv"}});
  expect_lca_error("kv rows end inside the group", [&] { ref::condense_groups_mla(slice_rows(kv, 0, 7), 0, sum, 0, 1, 1, s, d, p); }, {{"rows", "kv"}});
  expect_lca_error("negative count", [&] { ref::condense_groups_mla(kv, 0, sum, 0, 0, -1, s, d, p); }, {{"count", "group"}});

  const GqaDims& gd = kGqa;
  const auto gkv = randn<double>({n, gd.row_width()}, rng);
  const auto gsum = randn<double>({n, gd.kv_heads, gd.head_dim}, rng);
  EXPECT_NO_THROW(ref::condense_groups_gqa(gkv, 0, gsum, 0, 1, 1, 0.5, gd, RopeParams{}, p));
  expect_lca_error("gqa: summary does not cover S_j", [&] { ref::condense_groups_gqa(gkv, 0, slice_rows(gsum, 0, 9), 0, 1, 1, 0.5, gd, RopeParams{}, p); }, {{"summary"}});
  expect_lca_error("gqa: kv rows miss the group", [&] { ref::condense_groups_gqa(slice_rows(gkv, 6, 5), 6, gsum, 0, 1, 1, 0.5, gd, RopeParams{}, p); }, {{"rows", "kv"}});
}

// ---- Cache ------------------------------------------------------------------------------

TEST(Errors, CacheConstruction) {
  LcaParams bad;
  bad.group = 0;
  expect_lca_error("mla cache g = 0", [&] { CondensedKvCache::mla(kMla, 0.5, bad); }, {{"group"}});
  bad = LcaParams{};
  bad.window = -2;
  expect_lca_error("gqa cache w < 0", [&] { CondensedKvCache::gqa(kGqa, RopeParams{}, 0.5, bad); }, {{"window"}});
  MlaDims md = kMla;
  md.d_rope = 0;
  expect_lca_error("mla cache d_rope = 0", [&] { CondensedKvCache::mla(md, 0.5, LcaParams{}); }, {{"d_rope"}});
  GqaDims gd = kGqa;
  gd.q_heads = 5;
  expect_lca_error("gqa cache q_heads % kv_heads", [&] { CondensedKvCache::gqa(gd, RopeParams{}, 0.5, LcaParams{}); }, {{"q_heads", "kv_heads"}});
}

TEST(Errors, CacheAppendForwardAttend) {
  Rng rng(3005);
  LcaParams p;
  p.window = 4;
  p.group = 2;
  CondensedKvCache c = CondensedKvCache::mla(kMla, 0.5, p);
  const int64_t row = c.row_width(), sw = c.summary_width(), H = c.query_heads(), qw = c.query_width();

  expect_lca_error("attend on an empty cache", [&] { c.attend(randn<float>({1, H, qw}, rng)); }, {{"empty"}});

  expect_lca_error("append: rows and summary lengths differ", [&] { c.append(randn<float>({3, row}, rng), randn<float>({2, sw}, rng)); }, {{"summary", "rows"}});
  expect_lca_error("append: rows width", [&] { c.append(randn<float>({2, row + 1}, rng), randn<float>({2, sw}, rng)); }, {{"rows"}});
  expect_lca_error("append: summary width", [&] { c.append(randn<float>({2, row}, rng), randn<float>({2, sw + 1}, rng)); }, {{"summary"}});
  Tensor<float> nan_rows = randn<float>({3, row}, rng);
  nan_rows.row(1)[2] = std::numeric_limits<float>::quiet_NaN();
  expect_lca_error("append: NaN in rows", [&] { c.append(nan_rows, randn<float>({3, sw}, rng)); }, {{"rows"}, {"finite", "nan"}});
  Tensor<float> inf_sum = randn<float>({3, sw}, rng);
  inf_sum.row(2)[0] = std::numeric_limits<float>::infinity();
  expect_lca_error("append: Inf in summary", [&] { c.append(randn<float>({3, row}, rng), inf_sum); }, {{"summary"}, {"finite", "inf"}});

  expect_lca_error("forward: query width", [&] { c.forward(randn<float>({2, row}, rng), randn<float>({2, H, qw - 1}, rng)); }, {{"quer"}});
  expect_lca_error("forward: query heads", [&] { c.forward(randn<float>({2, row}, rng), randn<float>({2, H + 1, qw}, rng)); }, {{"quer"}});
  expect_lca_error("forward: query count != rows", [&] { c.forward(randn<float>({2, row}, rng), randn<float>({3, H, qw}, rng)); }, {{"quer", "rows"}});
  expect_lca_error("forward: rows width", [&] { c.forward(randn<float>({2, row - 1}, rng), randn<float>({2, H, qw}, rng)); }, {{"rows"}});
  expect_lca_error("forward: NaN in rows", [&] { c.forward(nan_rows, randn<float>({3, H, qw}, rng)); }, {{"rows"}, {"finite", "nan"}});
  Tensor<float> nan_q = randn<float>({2, H, qw}, rng);
  nan_q.data()[5] = std::numeric_limits<float>::quiet_NaN();
  expect_lca_error("forward: NaN in queries", [&] { c.forward(randn<float>({2, row}, rng), nan_q); }, {{"quer"}, {"finite", "nan"}});

  // None of the failed calls added a token.
  EXPECT_EQ(c.tokens(), 0);
  c.append(randn<float>({3, row}, rng), randn<float>({3, sw}, rng));
  EXPECT_EQ(c.tokens(), 3);
  expect_lca_error("attend: query width", [&] { c.attend(randn<float>({1, H, qw + 1}, rng)); }, {{"quer"}});

  // GQA: the same checks on the other layout.
  CondensedKvCache g = CondensedKvCache::gqa(kGqa, RopeParams{}, 0.5, p);
  expect_lca_error("gqa attend on an empty cache", [&] { g.attend(randn<float>({1, kGqa.q_heads, kGqa.head_dim}, rng)); }, {{"empty"}});
  expect_lca_error("gqa append: widths", [&] { g.append(randn<float>({2, kGqa.row_width()}, rng), randn<float>({2, kGqa.head_dim}, rng)); }, {{"summary"}});
  expect_lca_error("gqa forward: query width", [&] { g.forward(randn<float>({1, kGqa.row_width()}, rng), randn<float>({1, kGqa.q_heads, kGqa.head_dim + 2}, rng)); }, {{"quer"}});
}

}  // namespace
