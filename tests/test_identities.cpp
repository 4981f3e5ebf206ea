// lca-spec.md section 7: the required identities, for MLA and for GQA, on the
// CPU reference (identity 3 is also tested on the cache in test_cache.cpp),
// plus the RoPE properties the GQA pooled key relies on.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lca/reference.hpp"
#include "test_util.hpp"

namespace {

using namespace lca_test;
using lca::KeyMode;
using lca::MassBias;
using lca::RopeParams;
using lca::ScoreMode;
namespace ref = lca::ref;

// ---- Inputs -------------------------------------------------------------------------

template <class T>
struct MlaInput {
  MlaDims d;
  double scale;
  Tensor<T> q, kv;  // q_abs [N, H, row], rows [N, row]
};

template <class T>
MlaInput<T> mla_input(Rng& rng, int64_t n) {
  MlaInput<T> in{random_mla_dims(rng), 0.0, {}, {}};
  in.scale = in.d.default_scale();
  in.kv = randn<T>({n, in.d.row_width()}, rng);
  for (int64_t i = 0; i < n; ++i) ref::rope_rotate(in.kv.row(i) + in.d.d_latent, in.d.d_rope, i, RopeParams{});
  in.q = random_queries<T>(n, in.d.heads, in.d.row_width(), rng);
  return in;
}

template <class T>
struct GqaInput {
  GqaDims d;
  RopeParams rope;
  double scale;
  Tensor<T> q, kv;  // q [N, Hq, d], rows [N, kvh * 2d]
};

template <class T>
GqaInput<T> gqa_input(Rng& rng, int64_t n) {
  GqaInput<T> in{random_gqa_dims(rng), RopeParams{rng.coin() ? 10000.0 : 1000.0}, 0.0, {}, {}};
  in.scale = in.d.default_scale();
  in.kv = randn<T>({n, in.d.row_width()}, rng);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < in.d.kv_heads; ++k) ref::rope_rotate(in.kv.row(i) + k * 2 * in.d.head_dim, in.d.head_dim, i, in.rope);
  in.q = random_queries<T>(n, in.d.q_heads, in.d.head_dim, rng);
  return in;
}

Tensor<double> mla_summary(const MlaInput<double>& in, const LcaParams& p) {
  return ref::mla_summary_queries(in.q, in.d, p.score);
}

// ---- Identity 1: no group condensed yet => LCA equals full attention -----------------

TEST(Identity1NoGroupYet, MlaEqualsFullAttention) {
  Rng rng(1001);
  for (int it = 0; it < 40; ++it) {
    const LcaParams p = random_params(rng, 60, 16);
    const int64_t hi = p.window + p.group - 1;
    if (hi < 1) continue;  // w = 0, g = 1: every n condenses
    const int64_t n = rng.uniform_int(std::max<int64_t>(1, hi - 3), hi);
    const auto in = mla_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " n=" + std::to_string(n));
    ASSERT_EQ(lca::condensed_groups(n, p), 0);
    const Tensor<double> lca_out = ref::lca_prefill_mla(in.q, in.kv, in.scale, in.d, p);
    const Tensor<double> full = ref::mla_attention_absorbed(in.q, in.kv, 0, in.scale, in.d);
    EXPECT_LT(rel_err(lca_out, full), 1e-12);
  }
}

TEST(Identity1NoGroupYet, GqaEqualsFullAttention) {
  Rng rng(1002);
  for (int it = 0; it < 40; ++it) {
    const LcaParams p = random_params(rng, 60, 16);
    const int64_t hi = p.window + p.group - 1;
    if (hi < 1) continue;  // w = 0, g = 1: every n condenses
    const int64_t n = rng.uniform_int(std::max<int64_t>(1, hi - 3), hi);
    const auto in = gqa_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " n=" + std::to_string(n));
    const Tensor<double> lca_out = ref::lca_prefill_gqa(in.q, in.kv, in.scale, in.d, in.rope, p);
    const Tensor<double> full = ref::gqa_attention(in.q, in.kv, 0, in.scale, in.d);
    EXPECT_LT(rel_err(lca_out, full), 1e-12);
  }
}

// The boundary is sharp: at n = w + g (first group condensed, g >= 2) the last
// query's output is no longer the full-attention one, so identity 1 is not
// passing vacuously.
TEST(Identity1NoGroupYet, FirstCondensationChangesTheLastQuery) {
  Rng rng(1003);
  for (int it = 0; it < 20; ++it) {
    LcaParams p = random_params(rng, 40, 8);
    p.group = std::max<int64_t>(p.group, 2);
    const int64_t n = p.window + p.group;
    {
      const auto in = mla_input<double>(rng, n);
      SCOPED_TRACE("MLA " + str(in.d) + " " + str(p));
      const Tensor<double> a = slice_rows(ref::lca_prefill_mla(in.q, in.kv, in.scale, in.d, p), n - 1, 1);
      const Tensor<double> b = slice_rows(ref::mla_attention_absorbed(in.q, in.kv, 0, in.scale, in.d), n - 1, 1);
      EXPECT_GT(rel_err(a, b), 1e-9);
      // ... while every earlier query is still exactly full attention.
      if (n > 1) {
        const Tensor<double> a0 = slice_rows(ref::lca_prefill_mla(in.q, in.kv, in.scale, in.d, p), 0, n - 1);
        const Tensor<double> b0 = slice_rows(ref::mla_attention_absorbed(in.q, in.kv, 0, in.scale, in.d), 0, n - 1);
        EXPECT_LT(rel_err(a0, b0), 1e-12);
      }
    }
    {
      const auto in = gqa_input<double>(rng, n);
      SCOPED_TRACE("GQA " + str(in.d) + " " + str(p));
      const Tensor<double> a = slice_rows(ref::lca_prefill_gqa(in.q, in.kv, in.scale, in.d, in.rope, p), n - 1, 1);
      const Tensor<double> b = slice_rows(ref::gqa_attention(in.q, in.kv, 0, in.scale, in.d), n - 1, 1);
      EXPECT_GT(rel_err(a, b), 1e-9);
    }
  }
}

// ---- Identity 2: g = 1 => LCA equals full attention for any w ---------------------------

TEST(Identity2GroupOne, MlaEqualsFullAttentionForAnyWindow) {
  Rng rng(1011);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 50, 1);
    ASSERT_EQ(p.group, 1);
    if (it < 4) p.window = 0;
    const int64_t n = rng.uniform_int(1, p.window + 60);
    const auto in = mla_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " n=" + std::to_string(n));
    EXPECT_LT(rel_err(ref::lca_prefill_mla(in.q, in.kv, in.scale, in.d, p),
                      ref::mla_attention_absorbed(in.q, in.kv, 0, in.scale, in.d)),
              1e-12);
  }
}

TEST(Identity2GroupOne, GqaEqualsFullAttentionForAnyWindow) {
  Rng rng(1012);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 50, 1);
    ASSERT_EQ(p.group, 1);
    if (it < 4) p.window = 0;
    const int64_t n = rng.uniform_int(1, p.window + 60);
    const auto in = gqa_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " n=" + std::to_string(n));
    EXPECT_LT(rel_err(ref::lca_prefill_gqa(in.q, in.kv, in.scale, in.d, in.rope, p),
                      ref::gqa_attention(in.q, in.kv, 0, in.scale, in.d)),
              1e-12);
  }
}

TEST(Identity2GroupOne, EveryRepresentativeIsItsOwnToken) {
  Rng rng(1013);
  for (int it = 0; it < 20; ++it) {
    LcaParams p = random_params(rng, 20, 1);
    const int64_t m = rng.uniform_int(1, 30);
    const int64_t n = p.window + m;
    {
      const auto in = mla_input<double>(rng, n);
      SCOPED_TRACE("MLA " + str(in.d) + " " + str(p));
      const auto c = ref::condense_groups_mla(in.kv, 0, mla_summary(in, p), 0, 0, m, in.scale, in.d, p);
      EXPECT_LT(rel_err(c.rows, slice_rows(in.kv, 0, m)), 1e-15);
      for (int64_t j = 0; j < m; ++j) {
        EXPECT_EQ(c.anchors.row(j)[0], j);
        EXPECT_EQ(c.weights.row(j)[0], 1.0);
      }
    }
    {
      const auto in = gqa_input<double>(rng, n);
      SCOPED_TRACE("GQA " + str(in.d) + " " + str(p));
      const auto c = ref::condense_groups_gqa(in.kv, 0, ref::gqa_summary_queries(in.q, in.d), 0, 0, m, in.scale, in.d,
                                              in.rope, p);
      EXPECT_LT(rel_err(c.rows, slice_rows(in.kv, 0, m)), 1e-13);  // pooled: Rot(j) Rot(j)^-1 k_j
      for (int64_t j = 0; j < m; ++j)
        for (int64_t k = 0; k < in.d.kv_heads; ++k) {
          EXPECT_EQ(c.anchors.row(j)[k], j);
          EXPECT_EQ(c.weights.row(j)[k], 1.0);
        }
    }
  }
}

// ---- Identity 3 on the reference: condensing in pieces = condensing at once ---------------

template <class C>
void expect_same_condensed(const C& a, const C& b) {
  EXPECT_TRUE(bitwise_equal(a.rows, b.rows)) << "rows";
  EXPECT_TRUE(bitwise_equal(a.weights, b.weights)) << "weights";
  EXPECT_EQ(a.anchors.shape(), b.anchors.shape());
  EXPECT_EQ(a.anchors.vec(), b.anchors.vec()) << "anchors";
}

template <class T>
ref::Condensed<T> concat_condensed(const std::vector<ref::Condensed<T>>& parts) {
  std::vector<Tensor<T>> rows, weights;
  std::vector<Tensor<int64_t>> anchors;
  for (const auto& c : parts) {
    rows.push_back(c.rows);
    weights.push_back(c.weights);
    anchors.push_back(c.anchors);
  }
  return {concat_rows(rows), concat_rows(anchors), concat_rows(weights)};
}

TEST(Identity3Streaming, MlaCondenseOneAtATimeEqualsAllAtOnce) {
  Rng rng(1021);
  for (int it = 0; it < 30; ++it) {
    const LcaParams p = random_params(rng, 30, 10);
    const int64_t k = rng.uniform_int(1, 8);
    const int64_t n = p.window + k * p.group + rng.uniform_int(0, p.group - 1);
    const auto in = mla_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " k=" + std::to_string(k));
    const Tensor<double> sum = mla_summary(in, p);
    const auto all = ref::condense_groups_mla(in.kv, 0, sum, 0, 0, k, in.scale, in.d, p);
    ASSERT_EQ(all.rows.dim(0), k);

    // One group per call, same buffers: bitwise the same.
    std::vector<ref::Condensed<double>> ones;
    for (int64_t j = 0; j < k; ++j) ones.push_back(ref::condense_groups_mla(in.kv, 0, sum, 0, j, 1, in.scale, in.d, p));
    expect_same_condensed(concat_condensed(ones), all);

    // Random contiguous batches, same buffers.
    std::vector<ref::Condensed<double>> batches;
    for (int64_t j = 0; j < k;) {
      const int64_t c = rng.uniform_int(1, k - j);
      batches.push_back(ref::condense_groups_mla(in.kv, 0, sum, 0, j, c, in.scale, in.d, p));
      j += c;
    }
    expect_same_condensed(concat_condensed(batches), all);

    // One group per call from minimal slices (rows P_j only, summaries S_j only).
    for (int64_t j = 0; j < k; ++j) {
      const int64_t tau = lca::condensation_time(j, p);
      const auto one = ref::condense_groups_mla(slice_rows(in.kv, j * p.group, p.group), j * p.group,
                                                slice_rows(sum, tau - p.group + 1, p.group), tau - p.group + 1, j, 1,
                                                in.scale, in.d, p);
      EXPECT_LT(rel_err(one.rows, slice_rows(all.rows, j, 1)), 1e-14) << "group " << j;
      EXPECT_LT(rel_err(one.weights, slice_rows(all.weights, j, 1)), 1e-14) << "group " << j;
      EXPECT_EQ(one.anchors.row(0)[0], all.anchors.row(j)[0]) << "group " << j;
    }
  }
}

TEST(Identity3Streaming, GqaCondenseOneAtATimeEqualsAllAtOnce) {
  Rng rng(1022);
  for (int it = 0; it < 30; ++it) {
    const LcaParams p = random_params(rng, 30, 10);
    const int64_t k = rng.uniform_int(1, 8);
    const int64_t n = p.window + k * p.group + rng.uniform_int(0, p.group - 1);
    const auto in = gqa_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " k=" + std::to_string(k));
    const Tensor<double> sum = ref::gqa_summary_queries(in.q, in.d);
    const auto all = ref::condense_groups_gqa(in.kv, 0, sum, 0, 0, k, in.scale, in.d, in.rope, p);
    ASSERT_EQ(all.rows.dim(0), k);

    std::vector<ref::Condensed<double>> ones;
    for (int64_t j = 0; j < k; ++j)
      ones.push_back(ref::condense_groups_gqa(in.kv, 0, sum, 0, j, 1, in.scale, in.d, in.rope, p));
    expect_same_condensed(concat_condensed(ones), all);

    std::vector<ref::Condensed<double>> batches;
    for (int64_t j = 0; j < k;) {
      const int64_t c = rng.uniform_int(1, k - j);
      batches.push_back(ref::condense_groups_gqa(in.kv, 0, sum, 0, j, c, in.scale, in.d, in.rope, p));
      j += c;
    }
    expect_same_condensed(concat_condensed(batches), all);

    for (int64_t j = 0; j < k; ++j) {
      const int64_t tau = lca::condensation_time(j, p);
      const auto one = ref::condense_groups_gqa(slice_rows(in.kv, j * p.group, p.group), j * p.group,
                                                slice_rows(sum, tau - p.group + 1, p.group), tau - p.group + 1, j, 1,
                                                in.scale, in.d, in.rope, p);
      EXPECT_LT(rel_err(one.rows, slice_rows(all.rows, j, 1)), 1e-14) << "group " << j;
      EXPECT_LT(rel_err(one.weights, slice_rows(all.weights, j, 1)), 1e-14) << "group " << j;
      EXPECT_EQ(slice_rows(one.anchors, 0, 1).vec(), slice_rows(all.anchors, j, 1).vec()) << "group " << j;
    }
  }
}

// ---- Identity 4: permuting S_j does not change R_j ------------------------------------

// Shuffles the summary rows of every S_j = [tau_j - g + 1, tau_j], j < k, in place.
template <class T>
void permute_within_summaries(Tensor<T>& sum, int64_t k, const LcaParams& p, Rng& rng) {
  const int64_t w = sum.row_stride(), g = p.group;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t lo = lca::condensation_time(j, p) - g + 1;
    std::vector<int64_t> perm(static_cast<size_t>(g));
    for (int64_t i = 0; i < g; ++i) perm[i] = i;
    // A uniformly random permutation other than the identity (g >= 2).
    for (bool moved = false; !moved;) {
      for (int64_t i = g - 1; i > 0; --i) std::swap(perm[i], perm[rng.uniform_int(0, i)]);
      for (int64_t i = 0; i < g; ++i) moved = moved || perm[i] != i;
    }
    const Tensor<T> block = slice_rows(sum, lo, g);
    for (int64_t i = 0; i < g; ++i) std::copy(block.row(perm[i]), block.row(perm[i]) + w, sum.row(lo + i));
  }
}

TEST(Identity4SummaryPermutation, MlaRepresentativesUnchanged) {
  Rng rng(1031);
  for (int it = 0; it < 30; ++it) {
    LcaParams p = random_params(rng, 30, 12);
    p.group = std::max<int64_t>(p.group, 3);
    const int64_t k = rng.uniform_int(1, 6);
    const int64_t n = p.window + k * p.group;
    const auto in = mla_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " k=" + std::to_string(k));
    const Tensor<double> sum = mla_summary(in, p);
    Tensor<double> shuffled = sum;
    permute_within_summaries(shuffled, k, p, rng);
    EXPECT_FALSE(bitwise_equal(sum, shuffled)) << "the permutation must move something";
    const auto a = ref::condense_groups_mla(in.kv, 0, sum, 0, 0, k, in.scale, in.d, p);
    const auto b = ref::condense_groups_mla(in.kv, 0, shuffled, 0, 0, k, in.scale, in.d, p);
    EXPECT_LT(rel_err(b.rows, a.rows), 1e-13);
    EXPECT_LT(rel_err(b.weights, a.weights), 1e-13);
    EXPECT_EQ(b.anchors.vec(), a.anchors.vec());
  }
}

TEST(Identity4SummaryPermutation, GqaRepresentativesUnchanged) {
  Rng rng(1032);
  for (int it = 0; it < 30; ++it) {
    LcaParams p = random_params(rng, 30, 12);
    p.group = std::max<int64_t>(p.group, 3);
    const int64_t k = rng.uniform_int(1, 6);
    const int64_t n = p.window + k * p.group;
    const auto in = gqa_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p) + " k=" + std::to_string(k));
    const Tensor<double> sum = ref::gqa_summary_queries(in.q, in.d);
    Tensor<double> shuffled = sum;
    permute_within_summaries(shuffled, k, p, rng);
    EXPECT_FALSE(bitwise_equal(sum, shuffled));
    const auto a = ref::condense_groups_gqa(in.kv, 0, sum, 0, 0, k, in.scale, in.d, in.rope, p);
    const auto b = ref::condense_groups_gqa(in.kv, 0, shuffled, 0, 0, k, in.scale, in.d, in.rope, p);
    EXPECT_LT(rel_err(b.rows, a.rows), 1e-13);
    EXPECT_LT(rel_err(b.weights, a.weights), 1e-13);
    EXPECT_EQ(b.anchors.vec(), a.anchors.vec());
  }
}

// Permuting the queries of S_j inside a whole prefill leaves every output that
// does not itself use one of the moved queries unchanged: outputs at positions
// outside the permuted S_j are the same.
TEST(Identity4SummaryPermutation, MlaPrefillOutputsOutsideSUnchanged) {
  Rng rng(1033);
  for (int it = 0; it < 15; ++it) {
    LcaParams p = random_params(rng, 20, 8);
    p.group = std::max<int64_t>(p.group, 2);
    const int64_t n = p.window + 4 * p.group + 2;
    auto in = mla_input<double>(rng, n);
    SCOPED_TRACE(str(in.d) + " " + str(p));
    const Tensor<double> a = ref::lca_prefill_mla(in.q, in.kv, in.scale, in.d, p);
    // Permute the whole queries (all heads) of S_0 and recompute.
    const int64_t lo = lca::condensation_time(0, p) - p.group + 1;
    Tensor<double> q2 = in.q;
    const int64_t stride = q2.row_stride();
    for (int64_t i = 0; i < p.group; ++i)
      std::copy(in.q.row(lo + (i + 1) % p.group), in.q.row(lo + (i + 1) % p.group) + stride, q2.row(lo + i));
    const Tensor<double> b = ref::lca_prefill_mla(q2, in.kv, in.scale, in.d, p);
    for (int64_t t = 0; t < n; ++t) {
      if (t >= lo && t < lo + p.group) continue;
      EXPECT_LT(rel_err(slice_rows(b, t, 1), slice_rows(a, t, 1)), 1e-13) << "position " << t;
    }
  }
}

// ---- Identity 5: the section-6 count, by brute force ---------------------------------

TEST(Identity5CacheCount, CacheEntriesEqualsBruteForceEveryN) {
  const std::vector<std::pair<int64_t, int64_t>> configs = {{0, 1},  {0, 16},   {5, 1},    {40, 16}, {37, 16},
                                                            {100, 7}, {1024, 16}, {13, 5}, {3, 64},  {999, 33}};
  for (auto [w, g] : configs) {
    LcaParams p;
    p.window = w;
    p.group = g;
    SCOPED_TRACE(str(p));
    int64_t mismatches = 0;
    for (int64_t n = 1; n <= 3000; ++n) {
      // Brute force: groups with tau_j <= n - 1, plus every token not in those groups.
      std::vector<bool> condensed;
      for (int64_t j = 0; (j + 1) * g + w - 1 <= n - 1; ++j) condensed.push_back(true);
      const int64_t m = static_cast<int64_t>(condensed.size());
      int64_t raw = 0;
      for (int64_t i = 0; i < n; ++i) raw += (i / g < m) ? 0 : 1;
      int64_t first_raw = n;
      for (int64_t i = 0; i < n; ++i)
        if (i / g >= m) {
          first_raw = i;
          break;
        }
      const bool ok = lca::cache_entries(n, p) == m + raw && lca::condensed_groups(n, p) == m &&
                      lca::first_raw_position(n, p) == std::min(first_raw, g * m);
      if (!ok && mismatches++ < 5)
        ADD_FAILURE() << "n=" << n << ": cache_entries=" << lca::cache_entries(n, p) << " (want " << m + raw
                      << "), condensed_groups=" << lca::condensed_groups(n, p) << " (want " << m
                      << "), first_raw_position=" << lca::first_raw_position(n, p) << " (want " << g * m << ")";
      // Section 2: once condensing has begun there are between w and w + g - 1 raw tokens.
      if (m > 0) {
        EXPECT_GE(raw, w);
        EXPECT_LE(raw, w + g - 1);
      }
    }
    EXPECT_EQ(mismatches, 0);
    for (int64_t j = 0; j < 50; ++j) EXPECT_EQ(lca::condensation_time(j, p), (j + 1) * g + w - 1);
    // tau_j is the first query position for which group j is not raw.
    for (int64_t j = 0; j < 20; ++j) {
      const int64_t tau = lca::condensation_time(j, p);
      EXPECT_EQ(lca::condensed_groups(tau + 1, p), j + 1);
      EXPECT_EQ(lca::condensed_groups(tau, p), j);
    }
  }
  for (int64_t n : {1, 2, 17, 1000, 131072}) {
    EXPECT_EQ(lca::cache_entries(n, LcaParams::full()), n);
    EXPECT_EQ(lca::condensed_groups(n, LcaParams::full()), 0);
  }
}

// ---- Identity 6: representatives are convex combinations ------------------------------

// Per coordinate, v lies in [min, max] of the group's values. Slack: `eps`
// times the largest |value| of that coordinate (the rounding of a convex sum),
// plus `abs_slack`.
::testing::AssertionResult in_box(const std::vector<const double*>& members, const double* v, int64_t n, double eps,
                                  double abs_slack = 0.0) {
  for (int64_t c = 0; c < n; ++c) {
    double lo = members[0][c], hi = members[0][c], big = 0.0;
    for (const double* m : members) {
      lo = std::min(lo, m[c]);
      hi = std::max(hi, m[c]);
      big = std::max(big, std::abs(m[c]));
    }
    const double slack = eps * big + abs_slack;
    if (!(v[c] >= lo - slack && v[c] <= hi + slack))
      return ::testing::AssertionFailure() << "coordinate " << c << " = " << v[c] << " outside [" << lo << ", " << hi
                                           << "]";
  }
  return ::testing::AssertionSuccess();
}

template <class T>
::testing::AssertionResult convex_weights(const T* w, int64_t g, double tol) {
  double sum = 0.0;
  for (int64_t i = 0; i < g; ++i) {
    if (!(w[i] >= 0)) return ::testing::AssertionFailure() << "weight " << i << " = " << w[i] << " < 0";
    sum += w[i];
  }
  if (!(std::abs(sum - 1.0) <= tol)) return ::testing::AssertionFailure() << "weights sum to " << sum;
  return ::testing::AssertionSuccess();
}

// Index of the largest weight, the smallest one on ties.
template <class T>
int64_t argmax_first(const T* w, int64_t g) {
  int64_t best = 0;
  for (int64_t i = 1; i < g; ++i)
    if (w[i] > w[best]) best = i;
  return best;
}

TEST(Identity6Convex, MlaRepresentatives) {
  Rng rng(1041);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 30, 16);
    const int64_t k = rng.uniform_int(1, 6);
    const int64_t n = p.window + k * p.group + rng.uniform_int(0, p.group - 1);
    auto in = mla_input<double>(rng, n);
    const int64_t g = p.group, dc = in.d.d_latent;
    // Some groups hold duplicated latents (exact score ties) to exercise the tie rule.
    if (g >= 2 && p.score == ScoreMode::latent && rng.coin())
      for (int64_t i = 1; i < g; ++i) std::copy(in.kv.row(0), in.kv.row(0) + dc, in.kv.row(i));
    SCOPED_TRACE(str(in.d) + " " + str(p) + " k=" + std::to_string(k));
    const auto c = ref::condense_groups_mla(in.kv, 0, mla_summary(in, p), 0, 0, k, in.scale, in.d, p);
    for (int64_t j = 0; j < k; ++j) {
      SCOPED_TRACE("group " + std::to_string(j));
      const double* w = c.weights.row(j);
      EXPECT_TRUE(convex_weights(w, g, 1e-12));
      std::vector<const double*> members;
      for (int64_t i = 0; i < g; ++i) members.push_back(in.kv.row(j * g + i));
      EXPECT_TRUE(in_box(members, c.rows.row(j), dc, 1e-12));
      // The latent is exactly the alpha-weighted sum.
      for (int64_t x = 0; x < dc; ++x) {
        double want = 0.0;
        for (int64_t i = 0; i < g; ++i) want += w[i] * members[i][x];
        EXPECT_NEAR(c.rows.row(j)[x], want, 1e-12 * (1.0 + std::abs(want)));
      }
      const int64_t anchor = c.anchors.row(j)[0];
      EXPECT_EQ(anchor, j * g + argmax_first(w, g));
      ASSERT_GE(anchor, j * g);
      ASSERT_LT(anchor, j * g + g);
      for (int64_t r = dc; r < in.d.row_width(); ++r) EXPECT_EQ(c.rows.row(j)[r], in.kv.row(anchor)[r]);
    }
  }
}

TEST(Identity6Convex, MlaRepresentativesFloat) {
  Rng rng(1042);
  for (int it = 0; it < 20; ++it) {
    const LcaParams p = random_params(rng, 30, 16);
    const int64_t k = rng.uniform_int(1, 6);
    const int64_t n = p.window + k * p.group;
    const auto in = mla_input<float>(rng, n);
    const int64_t g = p.group, dc = in.d.d_latent;
    SCOPED_TRACE(str(in.d) + " " + str(p));
    const auto c = ref::condense_groups_mla(in.kv, 0, ref::mla_summary_queries(in.q, in.d, p.score), 0, 0, k, in.scale,
                                            in.d, p);
    const Tensor<double> kv = in.kv.cast<double>(), rows = c.rows.cast<double>();
    for (int64_t j = 0; j < k; ++j) {
      EXPECT_TRUE(convex_weights(c.weights.row(j), g, 1e-5)) << "group " << j;
      std::vector<const double*> members;
      for (int64_t i = 0; i < g; ++i) members.push_back(kv.row(j * g + i));
      EXPECT_TRUE(in_box(members, rows.row(j), dc, 1e-5)) << "group " << j;
      const int64_t anchor = c.anchors.row(j)[0];
      EXPECT_EQ(anchor, j * g + argmax_first(c.weights.row(j), g));
      for (int64_t r = dc; r < in.d.row_width(); ++r) EXPECT_EQ(c.rows.row(j)[r], in.kv.row(anchor)[r]);
    }
  }
}

TEST(Identity6Convex, GqaRepresentativesPerKvHead) {
  Rng rng(1043);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 30, 16);
    const int64_t k = rng.uniform_int(1, 6);
    const int64_t n = p.window + k * p.group + rng.uniform_int(0, p.group - 1);
    auto in = gqa_input<double>(rng, n);
    const int64_t g = p.group, hd = in.d.head_dim, kvh = in.d.kv_heads;
    if (g >= 2 && rng.coin())  // exact key ties in group 0, kv head 0
      for (int64_t i = 1; i < g; ++i) std::copy(in.kv.row(0), in.kv.row(0) + hd, in.kv.row(i));
    SCOPED_TRACE(str(in.d) + " " + str(p) + " k=" + std::to_string(k));
    const auto c = ref::condense_groups_gqa(in.kv, 0, ref::gqa_summary_queries(in.q, in.d), 0, 0, k, in.scale, in.d,
                                            in.rope, p);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t h = 0; h < kvh; ++h) {
        SCOPED_TRACE("group " + std::to_string(j) + " kv head " + std::to_string(h));
        const double* w = c.weights.row(j) + h * g;
        const int64_t koff = h * 2 * hd, voff = koff + hd;
        EXPECT_TRUE(convex_weights(w, g, 1e-12));
        std::vector<const double*> values;
        for (int64_t i = 0; i < g; ++i) values.push_back(in.kv.row(j * g + i) + voff);
        EXPECT_TRUE(in_box(values, c.rows.row(j) + voff, hd, 1e-12));
        const int64_t anchor = c.anchors.row(j)[h];
        EXPECT_EQ(anchor, j * g + argmax_first(w, g));
        ASSERT_GE(anchor, j * g);
        ASSERT_LT(anchor, j * g + g);
        if (p.key_mode == KeyMode::anchor) {
          for (int64_t x = 0; x < hd; ++x) EXPECT_EQ(c.rows.row(j)[koff + x], in.kv.row(anchor)[koff + x]);
        } else {
          // Rot(I)^{-1} k^ is a convex combination of the un-rotated keys.
          // Rotations mix coordinates, so their rounding is relative to the
          // key's norm rather than to one coordinate: slack 1e-12 * max ||k_i||.
          std::vector<std::vector<double>> unrot(static_cast<size_t>(g));
          std::vector<const double*> keys;
          double max_norm = 0.0;
          for (int64_t i = 0; i < g; ++i) {
            unrot[i].assign(in.kv.row(j * g + i) + koff, in.kv.row(j * g + i) + koff + hd);
            ref::rope_rotate(unrot[i].data(), hd, -(j * g + i), in.rope);
            keys.push_back(unrot[i].data());
            double nn = 0.0;
            for (double x : unrot[i]) nn += x * x;
            max_norm = std::max(max_norm, std::sqrt(nn));
          }
          std::vector<double> rep(c.rows.row(j) + koff, c.rows.row(j) + koff + hd);
          ref::rope_rotate(rep.data(), hd, -anchor, in.rope);
          EXPECT_TRUE(in_box(keys, rep.data(), hd, 1e-12, 1e-12 * max_norm));
        }
      }
  }
}

// ---- RoPE properties ----------------------------------------------------------------

TEST(RopeProperties, DotDependsOnlyOnRelativePosition) {
  Rng rng(1051);
  for (int it = 0; it < 200; ++it) {
    const int64_t d = random_even(rng, 2, 16);
    const RopeParams rope{rng.coin() ? 10000.0 : 500.0};
    const int64_t a = rng.uniform_int(-2000, 2000), b = rng.uniform_int(-2000, 2000), s = rng.uniform_int(-3000, 3000);
    const Tensor<double> x = randn<double>({d}, rng), y = randn<double>({d}, rng);
    auto rotated_dot = [&](int64_t pa, int64_t pb) {
      std::vector<double> u(x.vec()), v(y.vec());
      ref::rope_rotate(u.data(), d, pa, rope);
      ref::rope_rotate(v.data(), d, pb, rope);
      double acc = 0.0;
      for (int64_t i = 0; i < d; ++i) acc += u[i] * v[i];
      return acc;
    };
    double nx = 0, ny = 0;
    for (int64_t i = 0; i < d; ++i) nx += x.data()[i] * x.data()[i], ny += y.data()[i] * y.data()[i];
    const double bound = 1e-11 * std::sqrt(nx * ny);
    EXPECT_NEAR(rotated_dot(a, b), rotated_dot(a + s, b + s), bound) << "d=" << d << " a=" << a << " b=" << b << " s=" << s;
    EXPECT_NEAR(rotated_dot(a, b), rotated_dot(a - b, 0), bound);
  }
}

TEST(RopeProperties, InverseAndNorm) {
  Rng rng(1052);
  for (int it = 0; it < 200; ++it) {
    const int64_t d = random_even(rng, 2, 16);
    const RopeParams rope{rng.coin() ? 10000.0 : 1e6};
    const int64_t pos = rng.uniform_int(-150000, 150000);
    const Tensor<double> x = randn<double>({1, 1, d}, rng);
    Tensor<double> y = x;
    ref::rope_rotate(y.data(), d, pos, rope);
    double nx = 0, ny = 0;
    for (int64_t i = 0; i < d; ++i) nx += x.data()[i] * x.data()[i], ny += y.data()[i] * y.data()[i];
    EXPECT_NEAR(std::sqrt(ny), std::sqrt(nx), 1e-12 * std::sqrt(nx)) << "rotation preserves the norm";
    ref::rope_rotate(y.data(), d, -pos, rope);
    EXPECT_LT(rel_err(y, x), 1e-12) << "Rot(-p) Rot(p) = I, d=" << d << " p=" << pos;
    Tensor<double> z = x;
    ref::rope_rotate(z.data(), d, 0, rope);
    EXPECT_TRUE(bitwise_equal(z, x)) << "Rot(0) = I";
    // rows: row l is rotated by start + l; rotating it by -(start + l) restores it.
    const int64_t L = rng.uniform_int(1, 5), H = rng.uniform_int(1, 3);
    const Tensor<double> xs = randn<double>({L, H, d}, rng);
    Tensor<double> undone = ref::rope_rotate_rows(xs, pos, rope);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h) ref::rope_rotate(undone.data() + (l * H + h) * d, d, -(pos + l), rope);
    EXPECT_LT(rel_err(undone, xs), 1e-12);
  }
}

}  // namespace
