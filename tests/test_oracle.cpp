// A float64 dense oracle of lca-spec.md, written independently of the
// library (it calls none of lca::ref), and the reference compared to it.
//
// The oracle works position by position over the whole sequence with an
// explicit visibility mask: for query t, group j is condensed iff
// tau_j = (j+1) g + w - 1 <= t; raw token i is visible iff i <= t and its group
// i / g is not condensed for t. Each representative is computed from its own
// definition (section 3 / 5) with per-(summary position, head) dot products,
// and attention is a plain softmax over every visible key.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "lca/reference.hpp"
#include "test_util.hpp"

namespace {

using namespace lca_test;
using lca::KeyMode;
using lca::MassBias;
using lca::RopeParams;
using lca::ScoreMode;

// ---- The oracle -------------------------------------------------------------------

// Half-split RoPE: pairs (j, j + d/2), angle = pos * theta^(-2j/d).
void oracle_rope(double* x, int64_t d, int64_t pos, double theta) {
  const int64_t half = d / 2;
  for (int64_t j = 0; j < half; ++j) {
    const double angle = static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(d));
    const double c = std::cos(angle), s = std::sin(angle);
    const double a = x[j], b = x[j + half];
    x[j] = a * c - b * s;
    x[j + half] = b * c + a * s;
  }
}

double odot(const double* a, const double* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// alpha = softmax(s); returns the argmax, the smallest index on ties.
int64_t oracle_softmax_argmax(const std::vector<double>& s, std::vector<double>& alpha) {
  int64_t best = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i)
    if (s[i] > s[best]) best = i;
  alpha.assign(s.size(), 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < s.size(); ++i) sum += alpha[i] = std::exp(s[i] - s[best]);
  for (auto& a : alpha) a /= sum;
  return best;
}

bool condensed_for(int64_t j, int64_t t, const LcaParams& p) { return (j + 1) * p.group + p.window - 1 <= t; }

struct OracleRep {
  std::vector<double> row;        // the representative cache row
  std::vector<int64_t> anchors;   // absolute positions, one per kv head (1 for MLA)
  std::vector<double> weights;    // [K * g]
};

// Section 3, MLA. q [N, H, dc + dr] absorbed queries, kv [N, dc + dr].
OracleRep oracle_condense_mla(const Tensor<double>& q, const Tensor<double>& kv, int64_t j, double scale,
                              const MlaDims& d, const LcaParams& p) {
  const int64_t g = p.group, H = d.heads, dc = d.d_latent, row = d.d_latent + d.d_rope;
  const int64_t tau = (j + 1) * g + p.window - 1;
  const int64_t width = p.score == ScoreMode::full ? row : dc;
  std::vector<double> s(static_cast<size_t>(g));
  for (int64_t i = 0; i < g; ++i) {
    double acc = 0.0;
    for (int64_t sp = tau - g + 1; sp <= tau; ++sp)
      for (int64_t h = 0; h < H; ++h) acc += odot(q.data() + (sp * H + h) * row, kv.row(j * g + i), width);
    s[i] = scale / static_cast<double>(g * H) * acc;
  }
  OracleRep r;
  std::vector<double> alpha;
  const int64_t a = oracle_softmax_argmax(s, alpha);
  r.row.assign(static_cast<size_t>(row), 0.0);
  for (int64_t i = 0; i < g; ++i)
    for (int64_t c = 0; c < dc; ++c) r.row[c] += alpha[i] * kv.row(j * g + i)[c];
  for (int64_t c = dc; c < row; ++c) r.row[c] = kv.row(j * g + a)[c];
  r.anchors = {j * g + a};
  r.weights = alpha;
  return r;
}

// Section 5, GQA. q [N, Hq, d] (rotated), kv rows [N, kvh * 2d] per kv head [k ; v].
OracleRep oracle_condense_gqa(const Tensor<double>& q, const Tensor<double>& kv, int64_t j, double scale,
                              const GqaDims& d, double theta, const LcaParams& p) {
  const int64_t g = p.group, Hq = d.q_heads, kvh = d.kv_heads, hd = d.head_dim, per = Hq / kvh;
  const int64_t tau = (j + 1) * g + p.window - 1;
  OracleRep r;
  r.row.assign(static_cast<size_t>(kvh * 2 * hd), 0.0);
  for (int64_t k = 0; k < kvh; ++k) {
    const int64_t koff = k * 2 * hd, voff = koff + hd;
    std::vector<double> s(static_cast<size_t>(g));
    for (int64_t i = 0; i < g; ++i) {
      double acc = 0.0;
      for (int64_t sp = tau - g + 1; sp <= tau; ++sp)
        for (int64_t h = k * per; h < (k + 1) * per; ++h)
          acc += odot(q.data() + (sp * Hq + h) * hd, kv.row(j * g + i) + koff, hd);
      s[i] = scale / static_cast<double>(g * per) * acc;
    }
    std::vector<double> alpha;
    const int64_t a = oracle_softmax_argmax(s, alpha);
    const int64_t anchor = j * g + a;
    for (int64_t i = 0; i < g; ++i)
      for (int64_t c = 0; c < hd; ++c) r.row[voff + c] += alpha[i] * kv.row(j * g + i)[voff + c];
    if (p.key_mode == KeyMode::anchor) {
      for (int64_t c = 0; c < hd; ++c) r.row[koff + c] = kv.row(anchor)[koff + c];
    } else {
      std::vector<double> pooled(static_cast<size_t>(hd), 0.0), key(static_cast<size_t>(hd));
      for (int64_t i = 0; i < g; ++i) {
        for (int64_t c = 0; c < hd; ++c) key[c] = kv.row(j * g + i)[koff + c];
        oracle_rope(key.data(), hd, -(j * g + i), theta);  // Rot(i)^{-1}
        for (int64_t c = 0; c < hd; ++c) pooled[c] += alpha[i] * key[c];
      }
      oracle_rope(pooled.data(), hd, anchor, theta);
      for (int64_t c = 0; c < hd; ++c) r.row[koff + c] = pooled[c];
    }
    r.anchors.push_back(anchor);
    r.weights.insert(r.weights.end(), alpha.begin(), alpha.end());
  }
  return r;
}

// Dense attention with the visibility mask. Query head h reads its key at
// row[key_off(h), + key_len) and value at row[val_off(h), + val_len).
template <class KeyOff, class ValOff>
Tensor<double> oracle_attend(const Tensor<double>& q, const Tensor<double>& kv, const std::vector<OracleRep>& reps,
                             double scale, const LcaParams& p, int64_t key_len, int64_t val_len, KeyOff key_off,
                             ValOff val_off) {
  const int64_t N = q.dim(0), H = q.dim(1);
  const double bias = p.mass_bias == MassBias::log_g ? std::log(static_cast<double>(p.group)) : 0.0;
  Tensor<double> out({N, H, val_len});
  std::vector<double> logits;
  std::vector<const double*> vals;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const double* qv = q.data() + (t * H + h) * key_len;
      logits.clear();
      vals.clear();
      for (int64_t j = 0; (j + 1) * p.group <= N; ++j) {
        if (!condensed_for(j, t, p)) continue;
        const std::vector<double>& rr = reps.at(static_cast<size_t>(j)).row;
        logits.push_back(scale * odot(qv, rr.data() + key_off(h), key_len) + bias);
        vals.push_back(rr.data() + val_off(h));
      }
      for (int64_t i = 0; i <= t; ++i) {
        if (condensed_for(i / p.group, t, p)) continue;
        logits.push_back(scale * odot(qv, kv.row(i) + key_off(h), key_len));
        vals.push_back(kv.row(i) + val_off(h));
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (double l : logits) mx = std::max(mx, l);
      double sum = 0.0;
      double* o = out.data() + (t * H + h) * val_len;
      for (size_t k = 0; k < logits.size(); ++k) {
        const double e = std::exp(logits[k] - mx);
        sum += e;
        for (int64_t c = 0; c < val_len; ++c) o[c] += e * vals[k][c];
      }
      for (int64_t c = 0; c < val_len; ++c) o[c] /= sum;
    }
  return out;
}

// Representatives of every group condensed before N.
std::vector<OracleRep> oracle_reps_mla(const Tensor<double>& q, const Tensor<double>& kv, double scale,
                                       const MlaDims& d, const LcaParams& p) {
  std::vector<OracleRep> reps;
  const int64_t N = kv.dim(0);
  for (int64_t j = 0; condensed_for(j, N - 1, p); ++j) reps.push_back(oracle_condense_mla(q, kv, j, scale, d, p));
  return reps;
}
std::vector<OracleRep> oracle_reps_gqa(const Tensor<double>& q, const Tensor<double>& kv, double scale,
                                       const GqaDims& d, double theta, const LcaParams& p) {
  std::vector<OracleRep> reps;
  const int64_t N = kv.dim(0);
  for (int64_t j = 0; condensed_for(j, N - 1, p); ++j)
    reps.push_back(oracle_condense_gqa(q, kv, j, scale, d, theta, p));
  return reps;
}

Tensor<double> oracle_mla(const Tensor<double>& q, const Tensor<double>& kv, double scale, const MlaDims& d,
                          const LcaParams& p) {
  const auto reps = oracle_reps_mla(q, kv, scale, d, p);
  return oracle_attend(q, kv, reps, scale, p, d.d_latent + d.d_rope, d.d_latent, [](int64_t) { return 0; },
                       [](int64_t) { return 0; });
}

Tensor<double> oracle_gqa(const Tensor<double>& q, const Tensor<double>& kv, double scale, const GqaDims& d,
                          double theta, const LcaParams& p) {
  const auto reps = oracle_reps_gqa(q, kv, scale, d, theta, p);
  const int64_t per = d.q_heads / d.kv_heads, hd = d.head_dim;
  return oracle_attend(
      q, kv, reps, scale, p, hd, hd, [=](int64_t h) { return (h / per) * 2 * hd; },
      [=](int64_t h) { return (h / per) * 2 * hd + hd; });
}

Tensor<double> reps_tensor(const std::vector<OracleRep>& reps, int64_t width) {
  Tensor<double> t({static_cast<int64_t>(reps.size()), width});
  for (size_t j = 0; j < reps.size(); ++j) std::copy(reps[j].row.begin(), reps[j].row.end(), t.row(static_cast<int64_t>(j)));
  return t;
}

// ---- Random inputs ------------------------------------------------------------------

// MLA cache rows [N, dc + dr]: N(0,1) latents, rope keys N(0,1) rotated to their position.
Tensor<double> mla_rows(int64_t N, const MlaDims& d, double theta, Rng& rng) {
  Tensor<double> kv = randn<double>({N, d.d_latent + d.d_rope}, rng);
  for (int64_t i = 0; i < N; ++i) oracle_rope(kv.row(i) + d.d_latent, d.d_rope, i, theta);
  return kv;
}

// GQA cache rows [N, kvh * 2d]: keys N(0,1) rotated to their position, values N(0,1).
Tensor<double> gqa_rows(int64_t N, const GqaDims& d, double theta, Rng& rng) {
  Tensor<double> kv = randn<double>({N, d.row_width()}, rng);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < d.kv_heads; ++k) oracle_rope(kv.row(i) + k * 2 * d.head_dim, d.head_dim, i, theta);
  return kv;
}

double random_theta(Rng& rng) { return rng.pick(std::vector<double>{10000.0, 500.0, 1e6}); }

// (w, g) edge cases: g = 1, w = 0, w not a multiple of g, w a multiple of g.
const std::vector<std::pair<int64_t, int64_t>> kEdgeWindows = {{0, 1}, {0, 4}, {3, 1}, {5, 4}, {8, 4},
                                                               {13, 5}, {1, 3}, {10, 7}, {0, 9}, {17, 2}};

// n just below, at and above w + g, and several groups past.
std::vector<int64_t> edge_lengths(int64_t w, int64_t g, Rng& rng) {
  std::vector<int64_t> ns;
  for (int64_t n : {w + g - 2, w + g - 1, w + g, w + g + 1, w + 3 * g + rng.uniform_int(0, g - 1), w + 6 * g + g - 1})
    if (n >= 1) ns.push_back(n);
  return ns;
}

// ---- RoPE ---------------------------------------------------------------------------

TEST(OracleRope, LibraryRopeMatchesOracle) {
  Rng rng(101);
  for (int it = 0; it < 50; ++it) {
    const int64_t d = random_even(rng, 2, 16);
    const double theta = random_theta(rng);
    const int64_t pos = rng.pick(std::vector<int64_t>{0, 1, -1, 7, -33, 1000, 131071, -100000}) + rng.uniform_int(0, 3);
    Tensor<double> x = randn<double>({1, 1, d}, rng), want = x;
    oracle_rope(want.data(), d, pos, theta);
    Tensor<double> got = x;
    lca::ref::rope_rotate(got.data(), d, pos, RopeParams{theta});
    EXPECT_LT(rel_err(got, want), 1e-12) << "d=" << d << " pos=" << pos << " theta=" << theta;

    const int64_t L = rng.uniform_int(1, 6), H = rng.uniform_int(1, 3), start = rng.uniform_int(-20, 200);
    Tensor<double> xs = randn<double>({L, H, d}, rng), wants = xs;
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h) oracle_rope(wants.data() + (l * H + h) * d, d, start + l, theta);
    EXPECT_LT(rel_err(lca::ref::rope_rotate_rows(xs, start, RopeParams{theta}), wants), 1e-12)
        << "rows: L=" << L << " H=" << H << " d=" << d << " start=" << start;
  }
}

// ---- MLA ----------------------------------------------------------------------------

struct MlaCase {
  MlaDims d;
  LcaParams p;
  int64_t n;
  double scale;
  Tensor<double> q, kv;
};

MlaCase make_mla_case(Rng& rng, const LcaParams& p, int64_t n) {
  MlaCase c{random_mla_dims(rng), p, n, 0.0, {}, {}};
  c.scale = rng.coin() ? c.d.default_scale() : 0.05 + 0.5 * rng.uniform();
  c.kv = mla_rows(n, c.d, random_theta(rng), rng);
  c.q = random_queries<double>(n, c.d.heads, c.d.row_width(), rng);
  return c;
}

std::string trace(const MlaCase& c) {
  return str(c.d) + " " + str(c.p) + " n=" + std::to_string(c.n) + " scale=" + std::to_string(c.scale);
}

TEST(OracleMla, PrefillDoubleMatchesOracleEdgeWindowsAllModes) {
  Rng rng(201);
  int runs = 0;
  for (auto [w, g] : kEdgeWindows)
    for (ScoreMode score : {ScoreMode::latent, ScoreMode::full})
      for (MassBias mb : {MassBias::none, MassBias::log_g})
        for (int64_t n : edge_lengths(w, g, rng)) {
          LcaParams p;
          p.window = w;
          p.group = g;
          p.score = score;
          p.mass_bias = mb;
          p.key_mode = rng.coin() ? KeyMode::pooled : KeyMode::anchor;  // no effect on MLA
          MlaCase c = make_mla_case(rng, p, n);
          SCOPED_TRACE(trace(c));
          const Tensor<double> want = oracle_mla(c.q, c.kv, c.scale, c.d, c.p);
          const Tensor<double> got = lca::ref::lca_prefill_mla(c.q, c.kv, c.scale, c.d, c.p);
          ASSERT_EQ(got.shape(), (Shape{n, c.d.heads, c.d.d_latent}));
          EXPECT_LT(rel_err(got, want), 1e-12);
          ++runs;
        }
  EXPECT_GT(runs, 200);
}

TEST(OracleMla, PrefillDoubleMatchesOracleRandomPolicies) {
  Rng rng(202);
  for (int it = 0; it < 60; ++it) {
    const LcaParams p = random_params(rng, 48, 12);
    const int64_t n = rng.uniform_int(1, p.window + 8 * p.group);
    MlaCase c = make_mla_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    EXPECT_LT(rel_err(lca::ref::lca_prefill_mla(c.q, c.kv, c.scale, c.d, c.p), oracle_mla(c.q, c.kv, c.scale, c.d, c.p)),
              1e-12);
  }
}

// Longer sequences: w up to 200, g up to 32, n up to w + 10 g.
TEST(OracleMla, PrefillDoubleMatchesOracleLonger) {
  Rng rng(209);
  for (int it = 0; it < 8; ++it) {
    LcaParams p = random_params(rng, 1, 1);
    p.window = rng.uniform_int(50, 200);
    p.group = rng.uniform_int(8, 32);
    const int64_t n = p.window + rng.uniform_int(p.group - 1, 10 * p.group);
    MlaCase c = make_mla_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    EXPECT_LT(rel_err(lca::ref::lca_prefill_mla(c.q, c.kv, c.scale, c.d, c.p), oracle_mla(c.q, c.kv, c.scale, c.d, c.p)),
              1e-12);
  }
}

TEST(OracleMla, PrefillFloatMatchesOracle) {
  Rng rng(203);
  int it = 0;
  for (auto [w, g] : kEdgeWindows)
    for (ScoreMode score : {ScoreMode::latent, ScoreMode::full})
      for (MassBias mb : {MassBias::none, MassBias::log_g}) {
        LcaParams p;
        p.window = w;
        p.group = g;
        p.score = score;
        p.mass_bias = mb;
        const int64_t n = std::max<int64_t>(1, w + rng.uniform_int(g - 1, 6 * g + 3));
        MlaCase c = make_mla_case(rng, p, n);
        SCOPED_TRACE(trace(c));
        // The oracle sees exactly the float inputs the library gets.
        const Tensor<float> qf = c.q.cast<float>(), kvf = c.kv.cast<float>();
        const Tensor<double> want = oracle_mla(qf.cast<double>(), kvf.cast<double>(), c.scale, c.d, c.p);
        EXPECT_LT(rel_err(lca::ref::lca_prefill_mla(qf, kvf, c.scale, c.d, c.p), want), 1e-4);
        ++it;
      }
  EXPECT_EQ(it, static_cast<int>(kEdgeWindows.size()) * 4);
}

TEST(OracleMla, CondenseGroupsMatchesOracle) {
  Rng rng(204);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 30, 10);
    const int64_t m = rng.uniform_int(1, 6);
    const int64_t n = p.window + m * p.group + rng.uniform_int(0, p.group - 1);
    MlaCase c = make_mla_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    ASSERT_EQ(lca::condensed_groups(n, p), m);
    const auto want = oracle_reps_mla(c.q, c.kv, c.scale, c.d, c.p);
    ASSERT_EQ(static_cast<int64_t>(want.size()), m);
    const Tensor<double> summary = lca::ref::mla_summary_queries(c.q, c.d, p.score);
    ASSERT_EQ(summary.dim(0), n);
    const auto got = lca::ref::condense_groups_mla(c.kv, 0, summary, 0, 0, m, c.scale, c.d, p);
    ASSERT_EQ(got.rows.shape(), (Shape{m, c.d.row_width()}));
    ASSERT_EQ(got.anchors.shape(), (Shape{m, 1}));
    ASSERT_EQ(got.weights.shape(), (Shape{m, 1, p.group}));
    EXPECT_LT(rel_err(got.rows, reps_tensor(want, c.d.row_width())), 1e-12);
    for (int64_t j = 0; j < m; ++j) {
      EXPECT_EQ(got.anchors.row(j)[0], want[j].anchors[0]) << "group " << j;
      for (int64_t i = 0; i < p.group; ++i)
        EXPECT_NEAR(got.weights.row(j)[i], want[j].weights[i], 1e-13) << "group " << j << " token " << i;
    }
  }
}

// Queries at positions [q_start, N) over representatives and a raw slice
// starting at raw_start <= g m(q_start + 1); extra representatives are allowed.
TEST(OracleMla, AttentionWithOffsetsMatchesOracle) {
  Rng rng(205);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 24, 8);
    const int64_t n = rng.uniform_int(1, p.window + 7 * p.group + 3);
    MlaCase c = make_mla_case(rng, p, n);
    const int64_t q_start = rng.uniform_int(0, n - 1);
    const int64_t lo = lca::first_raw_position(q_start + 1, p);
    const int64_t raw_start = lo - rng.uniform_int(0, lo);
    SCOPED_TRACE(trace(c) + " q_start=" + std::to_string(q_start) + " raw_start=" + std::to_string(raw_start));
    auto reps = oracle_reps_mla(c.q, c.kv, c.scale, c.d, c.p);
    const Tensor<double> want_all = oracle_attend(c.q, c.kv, reps, c.scale, c.p, c.d.row_width(), c.d.d_latent,
                                                  [](int64_t) { return 0; }, [](int64_t) { return 0; });
    Tensor<double> rep_t = reps_tensor(reps, c.d.row_width());
    if (rng.coin()) rep_t = concat_rows<double>({rep_t, randn<double>({2, c.d.row_width()}, rng)});
    const Tensor<double> got = lca::ref::lca_attention_mla(slice_rows(c.q, q_start, n - q_start), q_start, rep_t,
                                                           slice_rows(c.kv, raw_start, n - raw_start), raw_start,
                                                           c.scale, c.d, c.p);
    EXPECT_LT(rel_err(got, slice_rows(want_all, q_start, n - q_start)), 1e-12);
  }
}

// Identical latents in a group: every score ties, so the anchor is the
// group's first position and the weights are uniform.
TEST(OracleMla, TiedScoresAnchorAtSmallestPosition) {
  Rng rng(206);
  for (int it = 0; it < 20; ++it) {
    LcaParams p = random_params(rng, 20, 8);
    p.group = std::max<int64_t>(p.group, 2);
    p.score = ScoreMode::latent;
    const int64_t m = rng.uniform_int(1, 4);
    const int64_t n = p.window + m * p.group + rng.uniform_int(0, 3);
    MlaCase c = make_mla_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    // Groups 0 and 1 (if any) keep latents equal to their first token's; rope keys stay distinct.
    for (int64_t j = 0; j < std::min<int64_t>(m, 2); ++j)
      for (int64_t i = 1; i < p.group; ++i)
        std::copy(c.kv.row(j * p.group), c.kv.row(j * p.group) + c.d.d_latent, c.kv.row(j * p.group + i));
    const auto got = lca::ref::condense_groups_mla(c.kv, 0, lca::ref::mla_summary_queries(c.q, c.d, p.score), 0, 0,
                                                   m, c.scale, c.d, p);
    for (int64_t j = 0; j < std::min<int64_t>(m, 2); ++j) {
      EXPECT_EQ(got.anchors.row(j)[0], j * p.group);
      for (int64_t i = 0; i < p.group; ++i) EXPECT_NEAR(got.weights.row(j)[i], 1.0 / p.group, 1e-15);
      for (int64_t r = c.d.d_latent; r < c.d.row_width(); ++r) EXPECT_EQ(got.rows.row(j)[r], c.kv.row(j * p.group)[r]);
    }
    EXPECT_LT(rel_err(lca::ref::lca_prefill_mla(c.q, c.kv, c.scale, c.d, c.p), oracle_mla(c.q, c.kv, c.scale, c.d, c.p)),
              1e-12);
  }
}

TEST(OracleMla, FullAttentionMatchesOracle) {
  Rng rng(207);
  for (int it = 0; it < 20; ++it) {
    const int64_t n = rng.uniform_int(1, 120);
    MlaCase c = make_mla_case(rng, LcaParams::full(), n);
    const int64_t q_start = rng.coin() ? 0 : rng.uniform_int(0, n - 1);
    SCOPED_TRACE(trace(c) + " q_start=" + std::to_string(q_start));
    const Tensor<double> want = oracle_mla(c.q, c.kv, c.scale, c.d, LcaParams::full());
    const Tensor<double> got =
        lca::ref::mla_attention_absorbed(slice_rows(c.q, q_start, n - q_start), c.kv, q_start, c.scale, c.d);
    EXPECT_LT(rel_err(got, slice_rows(want, q_start, n - q_start)), 1e-12);
  }
}

// Decompressed (per-head K = [W_UK c ; k^R], V = W_UV c) equals absorbed +
// up-projection, and both equal a direct decompressed oracle.
TEST(OracleMla, DecompressedEqualsAbsorbed) {
  Rng rng(208);
  for (int it = 0; it < 25; ++it) {
    const MlaDims d = random_mla_dims(rng);
    const int64_t N = rng.uniform_int(1, 80);
    const int64_t L = rng.uniform_int(1, N), q_start = N - L;
    const double scale = d.default_scale();
    SCOPED_TRACE(str(d) + " N=" + std::to_string(N) + " L=" + std::to_string(L));
    const Tensor<double> q_nope = randn<double>({L, d.heads, d.d_nope}, rng);
    const Tensor<double> q_rope = randn<double>({L, d.heads, d.d_rope}, rng);
    const Tensor<double> kv = mla_rows(N, d, 10000.0, rng);
    const Tensor<double> w_uk = randn<double>({d.heads, d.d_nope, d.d_latent}, rng, 1.0 / std::sqrt(d.d_latent));
    const Tensor<double> w_uv = randn<double>({d.heads, d.d_v, d.d_latent}, rng, 1.0 / std::sqrt(d.d_latent));

    const Tensor<double> q_abs = lca::ref::mla_absorb_queries(q_nope, q_rope, w_uk, d);
    ASSERT_EQ(q_abs.shape(), (Shape{L, d.heads, d.row_width()}));
    // Oracle absorbed queries: q~ = W_UK[h]^T q^C, q^R appended.
    Tensor<double> q_abs_want({L, d.heads, d.row_width()});
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < d.heads; ++h) {
        double* o = q_abs_want.data() + (l * d.heads + h) * d.row_width();
        for (int64_t c = 0; c < d.d_latent; ++c)
          for (int64_t k = 0; k < d.d_nope; ++k)
            o[c] += w_uk.data()[(h * d.d_nope + k) * d.d_latent + c] * q_nope.data()[(l * d.heads + h) * d.d_nope + k];
        for (int64_t r = 0; r < d.d_rope; ++r) o[d.d_latent + r] = q_rope.data()[(l * d.heads + h) * d.d_rope + r];
      }
    EXPECT_LT(rel_err(q_abs, q_abs_want), 1e-12);

    const Tensor<double> dec = lca::ref::mla_attention_decompressed(q_nope, q_rope, kv, w_uk, w_uv, q_start, scale, d);
    const Tensor<double> abs =
        lca::ref::mla_up_project(lca::ref::mla_attention_absorbed(q_abs, kv, q_start, scale, d), w_uv, d);
    ASSERT_EQ(dec.shape(), (Shape{L, d.heads, d.d_v}));
    EXPECT_LT(rel_err(abs, dec), 1e-12);

    // Direct oracle of the decompressed form.
    Tensor<double> want({L, d.heads, d.d_v});
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < d.heads; ++h) {
        const int64_t t = q_start + l;
        std::vector<double> logit(static_cast<size_t>(t + 1));
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i <= t; ++i) {
          double acc = 0.0;
          for (int64_t k = 0; k < d.d_nope; ++k)
            acc += q_nope.data()[(l * d.heads + h) * d.d_nope + k] *
                   odot(w_uk.data() + (h * d.d_nope + k) * d.d_latent, kv.row(i), d.d_latent);
          acc += odot(q_rope.data() + (l * d.heads + h) * d.d_rope, kv.row(i) + d.d_latent, d.d_rope);
          logit[i] = scale * acc;
          mx = std::max(mx, logit[i]);
        }
        double sum = 0.0;
        double* o = want.data() + (l * d.heads + h) * d.d_v;
        for (int64_t i = 0; i <= t; ++i) {
          const double e = std::exp(logit[i] - mx);
          sum += e;
          for (int64_t v = 0; v < d.d_v; ++v) o[v] += e * odot(w_uv.data() + (h * d.d_v + v) * d.d_latent, kv.row(i), d.d_latent);
        }
        for (int64_t v = 0; v < d.d_v; ++v) o[v] /= sum;
      }
    EXPECT_LT(rel_err(dec, want), 1e-12);
  }
}

// ---- GQA ----------------------------------------------------------------------------

struct GqaCase {
  GqaDims d;
  LcaParams p;
  int64_t n;
  double scale, theta;
  Tensor<double> q, kv;
};

GqaCase make_gqa_case(Rng& rng, const LcaParams& p, int64_t n) {
  GqaCase c{random_gqa_dims(rng), p, n, 0.0, random_theta(rng), {}, {}};
  c.scale = rng.coin() ? c.d.default_scale() : 0.05 + 0.5 * rng.uniform();
  c.kv = gqa_rows(n, c.d, c.theta, rng);
  c.q = random_queries<double>(n, c.d.q_heads, c.d.head_dim, rng);
  return c;
}

std::string trace(const GqaCase& c) {
  return str(c.d) + " " + str(c.p) + " n=" + std::to_string(c.n) + " scale=" + std::to_string(c.scale) +
         " theta=" + std::to_string(c.theta);
}

TEST(OracleGqa, PrefillDoubleMatchesOracleEdgeWindowsAllModes) {
  Rng rng(301);
  int runs = 0;
  for (auto [w, g] : kEdgeWindows)
    for (KeyMode km : {KeyMode::pooled, KeyMode::anchor})
      for (MassBias mb : {MassBias::none, MassBias::log_g})
        for (int64_t n : edge_lengths(w, g, rng)) {
          LcaParams p;
          p.window = w;
          p.group = g;
          p.key_mode = km;
          p.mass_bias = mb;
          p.score = rng.coin() ? ScoreMode::latent : ScoreMode::full;  // no effect on GQA
          GqaCase c = make_gqa_case(rng, p, n);
          SCOPED_TRACE(trace(c));
          const Tensor<double> want = oracle_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p);
          const Tensor<double> got = lca::ref::lca_prefill_gqa(c.q, c.kv, c.scale, c.d, RopeParams{c.theta}, c.p);
          ASSERT_EQ(got.shape(), (Shape{n, c.d.q_heads, c.d.head_dim}));
          EXPECT_LT(rel_err(got, want), 1e-12);
          ++runs;
        }
  EXPECT_GT(runs, 200);
}

TEST(OracleGqa, PrefillDoubleMatchesOracleRandomPolicies) {
  Rng rng(302);
  for (int it = 0; it < 60; ++it) {
    const LcaParams p = random_params(rng, 48, 12);
    const int64_t n = rng.uniform_int(1, p.window + 8 * p.group);
    GqaCase c = make_gqa_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    EXPECT_LT(rel_err(lca::ref::lca_prefill_gqa(c.q, c.kv, c.scale, c.d, RopeParams{c.theta}, c.p),
                      oracle_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p)),
              1e-12);
  }
}

TEST(OracleGqa, PrefillDoubleMatchesOracleLonger) {
  Rng rng(309);
  for (int it = 0; it < 8; ++it) {
    LcaParams p = random_params(rng, 1, 1);
    p.window = rng.uniform_int(50, 200);
    p.group = rng.uniform_int(8, 32);
    const int64_t n = p.window + rng.uniform_int(p.group - 1, 10 * p.group);
    GqaCase c = make_gqa_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    EXPECT_LT(rel_err(lca::ref::lca_prefill_gqa(c.q, c.kv, c.scale, c.d, RopeParams{c.theta}, c.p),
                      oracle_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p)),
              1e-12);
  }
}

TEST(OracleGqa, PrefillFloatMatchesOracle) {
  Rng rng(303);
  int it = 0;
  for (auto [w, g] : kEdgeWindows)
    for (KeyMode km : {KeyMode::pooled, KeyMode::anchor})
      for (MassBias mb : {MassBias::none, MassBias::log_g}) {
        LcaParams p;
        p.window = w;
        p.group = g;
        p.key_mode = km;
        p.mass_bias = mb;
        const int64_t n = std::max<int64_t>(1, w + rng.uniform_int(g - 1, 6 * g + 3));
        GqaCase c = make_gqa_case(rng, p, n);
        SCOPED_TRACE(trace(c));
        const Tensor<float> qf = c.q.cast<float>(), kvf = c.kv.cast<float>();
        const Tensor<double> want = oracle_gqa(qf.cast<double>(), kvf.cast<double>(), c.scale, c.d, c.theta, c.p);
        EXPECT_LT(rel_err(lca::ref::lca_prefill_gqa(qf, kvf, c.scale, c.d, RopeParams{c.theta}, c.p), want), 1e-4);
        ++it;
      }
  EXPECT_EQ(it, static_cast<int>(kEdgeWindows.size()) * 4);
}

TEST(OracleGqa, CondenseGroupsMatchesOracle) {
  Rng rng(304);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 30, 10);
    const int64_t m = rng.uniform_int(1, 6);
    const int64_t n = p.window + m * p.group + rng.uniform_int(0, p.group - 1);
    GqaCase c = make_gqa_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    const auto want = oracle_reps_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p);
    ASSERT_EQ(static_cast<int64_t>(want.size()), m);
    const Tensor<double> summary = lca::ref::gqa_summary_queries(c.q, c.d);
    ASSERT_EQ(summary.shape(), (Shape{n, c.d.kv_heads, c.d.head_dim}));
    const auto got = lca::ref::condense_groups_gqa(c.kv, 0, summary, 0, 0, m, c.scale, c.d, RopeParams{c.theta}, p);
    ASSERT_EQ(got.rows.shape(), (Shape{m, c.d.row_width()}));
    ASSERT_EQ(got.anchors.shape(), (Shape{m, c.d.kv_heads}));
    ASSERT_EQ(got.weights.shape(), (Shape{m, c.d.kv_heads, p.group}));
    EXPECT_LT(rel_err(got.rows, reps_tensor(want, c.d.row_width())), 1e-12);
    for (int64_t j = 0; j < m; ++j)
      for (int64_t k = 0; k < c.d.kv_heads; ++k) {
        EXPECT_EQ(got.anchors.row(j)[k], want[j].anchors[k]) << "group " << j << " kv head " << k;
        for (int64_t i = 0; i < p.group; ++i)
          EXPECT_NEAR(got.weights.row(j)[k * p.group + i], want[j].weights[k * p.group + i], 1e-13)
              << "group " << j << " kv head " << k << " token " << i;
      }
  }
}

TEST(OracleGqa, AttentionWithOffsetsMatchesOracle) {
  Rng rng(305);
  for (int it = 0; it < 40; ++it) {
    LcaParams p = random_params(rng, 24, 8);
    const int64_t n = rng.uniform_int(1, p.window + 7 * p.group + 3);
    GqaCase c = make_gqa_case(rng, p, n);
    const int64_t q_start = rng.uniform_int(0, n - 1);
    const int64_t lo = lca::first_raw_position(q_start + 1, p);
    const int64_t raw_start = lo - rng.uniform_int(0, lo);
    SCOPED_TRACE(trace(c) + " q_start=" + std::to_string(q_start) + " raw_start=" + std::to_string(raw_start));
    const auto reps = oracle_reps_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p);
    const Tensor<double> want_all = oracle_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p);
    Tensor<double> rep_t = reps_tensor(reps, c.d.row_width());
    if (rng.coin()) rep_t = concat_rows<double>({rep_t, randn<double>({3, c.d.row_width()}, rng)});
    const Tensor<double> got = lca::ref::lca_attention_gqa(slice_rows(c.q, q_start, n - q_start), q_start, rep_t,
                                                           slice_rows(c.kv, raw_start, n - raw_start), raw_start,
                                                           c.scale, c.d, c.p);
    EXPECT_LT(rel_err(got, slice_rows(want_all, q_start, n - q_start)), 1e-12);
  }
}

// Identical rotated keys in a group: every score of that kv head ties.
TEST(OracleGqa, TiedScoresAnchorAtSmallestPosition) {
  Rng rng(306);
  for (int it = 0; it < 20; ++it) {
    LcaParams p = random_params(rng, 20, 8);
    p.group = std::max<int64_t>(p.group, 2);
    const int64_t m = rng.uniform_int(1, 4);
    const int64_t n = p.window + m * p.group + rng.uniform_int(0, 3);
    GqaCase c = make_gqa_case(rng, p, n);
    SCOPED_TRACE(trace(c));
    const int64_t hd = c.d.head_dim;
    for (int64_t j = 0; j < std::min<int64_t>(m, 2); ++j)
      for (int64_t i = 1; i < p.group; ++i)
        for (int64_t k = 0; k < c.d.kv_heads; ++k)
          std::copy(c.kv.row(j * p.group) + k * 2 * hd, c.kv.row(j * p.group) + k * 2 * hd + hd,
                    c.kv.row(j * p.group + i) + k * 2 * hd);
    const auto got = lca::ref::condense_groups_gqa(c.kv, 0, lca::ref::gqa_summary_queries(c.q, c.d), 0, 0, m, c.scale,
                                                   c.d, RopeParams{c.theta}, p);
    for (int64_t j = 0; j < std::min<int64_t>(m, 2); ++j)
      for (int64_t k = 0; k < c.d.kv_heads; ++k) {
        EXPECT_EQ(got.anchors.row(j)[k], j * p.group);
        for (int64_t i = 0; i < p.group; ++i) EXPECT_NEAR(got.weights.row(j)[k * p.group + i], 1.0 / p.group, 1e-15);
      }
    EXPECT_LT(rel_err(lca::ref::lca_prefill_gqa(c.q, c.kv, c.scale, c.d, RopeParams{c.theta}, c.p),
                      oracle_gqa(c.q, c.kv, c.scale, c.d, c.theta, c.p)),
              1e-12);
  }
}

TEST(OracleGqa, FullAttentionMatchesOracle) {
  Rng rng(307);
  for (int it = 0; it < 20; ++it) {
    const int64_t n = rng.uniform_int(1, 120);
    GqaCase c = make_gqa_case(rng, LcaParams::full(), n);
    const int64_t q_start = rng.coin() ? 0 : rng.uniform_int(0, n - 1);
    SCOPED_TRACE(trace(c) + " q_start=" + std::to_string(q_start));
    const Tensor<double> want = oracle_gqa(c.q, c.kv, c.scale, c.d, c.theta, LcaParams::full());
    const Tensor<double> got = lca::ref::gqa_attention(slice_rows(c.q, q_start, n - q_start), c.kv, q_start, c.scale, c.d);
    EXPECT_LT(rel_err(got, slice_rows(want, q_start, n - q_start)), 1e-12);
  }
}

TEST(OracleGqa, PackRowsLayout) {
  Rng rng(308);
  const GqaDims d = random_gqa_dims(rng);
  const int64_t N = 9;
  const Tensor<double> k = randn<double>({N, d.kv_heads, d.head_dim}, rng);
  const Tensor<double> v = randn<double>({N, d.kv_heads, d.head_dim}, rng);
  const Tensor<double> rows = lca::ref::gqa_pack_rows(k, v, d);
  ASSERT_EQ(rows.shape(), (Shape{N, d.row_width()}));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t h = 0; h < d.kv_heads; ++h)
      for (int64_t c = 0; c < d.head_dim; ++c) {
        EXPECT_EQ(rows.row(i)[h * 2 * d.head_dim + c], k.row(i)[h * d.head_dim + c]);
        EXPECT_EQ(rows.row(i)[h * 2 * d.head_dim + d.head_dim + c], v.row(i)[h * d.head_dim + c]);
      }
}

}  // namespace
