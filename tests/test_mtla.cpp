// MTLA (mtla-spec.md): the reference against a float64 dense oracle of the
// training form written here (identity 3 and the stride-aware mask), the cache
// (identities 1 and 2: streaming = prefill = training form bitwise, ceil(n/s)
// rows at every n), agreement with the PyPI package `mtla` (identity 4, from
// the case files tests/mtla_agreement.py wrote), and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lca/cache.hpp"
#include "lca/reference.hpp"
#include "test_util.hpp"

namespace {

using namespace lca_test;
using lca::CondensedKvCache;
using lca::DType;
using lca::MtlaHyperNet;
using lca::MtlaParams;
namespace ref = lca::ref;

const std::vector<int64_t> kDownRates = {1, 2, 3, 4, 16};

MtlaParams mtla(int64_t s) {
  MtlaParams p;
  p.down_rate = s;
  return p;
}

// Random MLA dims with d_latent a multiple of 4 (the hyper-network's rank d_c/4).
MlaDims random_mtla_dims(Rng& rng) {
  MlaDims d = random_mla_dims(rng);
  d.d_latent = 4 * rng.uniform_int(2, 8);
  return d;
}

// Weights of size ~1/sqrt(fan-in) and biases ~0.5: the logits fc_c(PE) . fc_p(c)
// are O(1), so the sigmoid weights spread over (0, 1) instead of saturating.
template <class T>
MtlaHyperNet<T> random_hyper(const MlaDims& d, Rng& rng) {
  const int64_t dc = d.d_latent, r = dc / 4;
  const double sd = 1.0 / std::sqrt(static_cast<double>(dc));
  return {randn<T>({r, dc}, rng, 2 * sd), randn<T>({r}, rng, 0.5), randn<T>({r, dc}, rng, 2 * sd),
          randn<T>({r}, rng, 0.5)};
}

struct MtlaStream {
  MlaDims dims;
  MtlaParams p;
  double scale;
  MtlaHyperNet<double> hyper;
  Tensor<double> rows;  // [n, d_c + d_r]
  Tensor<double> q;     // [n, H, d_c + d_r] absorbed
  int64_t n() const { return rows.dim(0); }
  std::string describe() const {
    return str(dims) + " s=" + std::to_string(p.down_rate) + " n=" + std::to_string(n());
  }
};

MtlaStream random_stream(Rng& rng, int64_t s, int64_t n) {
  MtlaStream st{random_mtla_dims(rng), mtla(s), 0.0, {}, {}, {}};
  st.scale = st.dims.default_scale();
  st.hyper = random_hyper<double>(st.dims, rng);
  st.rows = randn<double>({n, st.dims.row_width()}, rng);
  st.q = random_queries<double>(n, st.dims.heads, st.dims.row_width(), rng, 0.5);
  return st;
}

// ---- The dense oracle (float64), written from the spec text ------------------------

// w_i = sigmoid(fc_c(PE(floor(i/s))) . fc_p(c_i)), PE[2j] = sin(k / 10000^(2j/d)), PE[2j+1] = cos(...).
std::vector<double> oracle_weights(const MtlaStream& st) {
  const int64_t dc = st.dims.d_latent, r = dc / 4;
  const MtlaHyperNet<double>& h = st.hyper;
  std::vector<double> w(static_cast<size_t>(st.n()));
  for (int64_t i = 0; i < st.n(); ++i) {
    const double k = static_cast<double>(i / st.p.down_rate);
    std::vector<double> pe(static_cast<size_t>(dc));
    for (int64_t j = 0; 2 * j < dc; ++j) {
      const double angle = k / std::pow(10000.0, static_cast<double>(2 * j) / static_cast<double>(dc));
      pe[2 * j] = std::sin(angle);
      pe[2 * j + 1] = std::cos(angle);
    }
    double logit = 0;
    for (int64_t o = 0; o < r; ++o) {
      double a = h.fc_c_bias.data()[o], b = h.fc_p_bias.data()[o];
      for (int64_t c = 0; c < dc; ++c) {
        a += h.fc_c_weight.data()[o * dc + c] * pe[c];
        b += h.fc_p_weight.data()[o * dc + c] * st.rows.row(i)[c];
      }
      logit += a * b;
    }
    w[i] = 1.0 / (1.0 + std::exp(-logit));
  }
  return w;
}

// Section 3, training form: row j = [sum_{i in chunk(j), i <= j} w_i c_i ; k^R_j];
// query t sees row j iff j <= t and ((j + 1) mod s == 0 or j == t).
Tensor<double> oracle_training_form(const MtlaStream& st, const std::vector<double>& w) {
  const int64_t n = st.n(), H = st.dims.heads, dc = st.dims.d_latent, width = st.dims.row_width();
  const int64_t s = st.p.down_rate;
  Tensor<double> rows({n, width});
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i <= j; ++i)
      if (i / s == j / s)
        for (int64_t c = 0; c < dc; ++c) rows.row(j)[c] += w[i] * st.rows.row(i)[c];
    for (int64_t c = dc; c < width; ++c) rows.row(j)[c] = st.rows.row(j)[c];
  }
  Tensor<double> out({n, H, dc});
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const double* qv = st.q.data() + (t * H + h) * width;
      std::vector<double> logit;
      std::vector<int64_t> seen;
      for (int64_t j = 0; j < n; ++j) {
        if (!(j <= t && ((j + 1) % s == 0 || j == t))) continue;
        double dot = 0;
        for (int64_t c = 0; c < width; ++c) dot += qv[c] * rows.row(j)[c];
        logit.push_back(st.scale * dot);
        seen.push_back(j);
      }
      const double mx = *std::max_element(logit.begin(), logit.end());
      double sum = 0;
      for (double& x : logit) sum += x = std::exp(x - mx);
      double* o = out.data() + (t * H + h) * dc;
      for (size_t k = 0; k < seen.size(); ++k)
        for (int64_t c = 0; c < dc; ++c) o[c] += logit[k] / sum * rows.row(seen[k])[c];
      EXPECT_EQ(static_cast<int64_t>(seen.size()), t / s + 1) << "query " << t << " sees floor(t/s) + 1 rows";
    }
  return out;
}

// ---- Parameters and arithmetic -------------------------------------------------------

TEST(MtlaParams, DefaultsAndDescribe) {
  const MtlaParams p;
  EXPECT_EQ(p.down_rate, 2) << "the mtla package's default";
  EXPECT_NO_THROW(p.validate());
  EXPECT_EQ(mtla(16).describe(), "mtla(s=16)");
  const lca::Policy policy = mtla(3);
  EXPECT_EQ(lca::visible_rows(7, policy).condensed, 2);
  EXPECT_EQ(lca::visible_rows(7, policy).raw_lo, 7);
}

// Identity 2, the arithmetic: ceil(n/s) rows, counted as the chunks k with k s < n.
TEST(MtlaParams, RowCountIsCeilNOverS) {
  for (int64_t s = 1; s <= 20; ++s)
    for (int64_t n = 0; n <= 400; ++n) {
      int64_t chunks = 0, complete = 0;
      for (int64_t k = 0; k * s < n; ++k) {
        ++chunks;
        complete += (k + 1) * s <= n;
      }
      ASSERT_EQ(lca::mtla_rows(n, mtla(s)), chunks) << "s=" << s << " n=" << n;
      ASSERT_EQ(lca::mtla_complete_rows(n, mtla(s)), complete) << "s=" << s << " n=" << n;
    }
  // mtla-spec.md section 6: rows at 128K.
  EXPECT_EQ(lca::mtla_rows(131072, mtla(2)), 65536);
  EXPECT_EQ(lca::mtla_rows(131072, mtla(4)), 32768);
  EXPECT_EQ(lca::mtla_rows(131072, mtla(16)), 8192);
}

// ---- Reference vs the dense oracle -----------------------------------------------------

TEST(MtlaReference, ChunkCodeIsSinusoidal) {
  for (int64_t k : {0, 1, 5, 1000}) {
    const Tensor<double> pe = ref::mtla_chunk_code<double>(k, 12);
    for (int64_t j = 0; j < 6; ++j) {
      const double angle = static_cast<double>(k) * std::exp(-static_cast<double>(2 * j) / 12.0 * std::log(10000.0));
      EXPECT_NEAR(pe.data()[2 * j], std::sin(angle), 1e-12) << "k=" << k << " j=" << j;
      EXPECT_NEAR(pe.data()[2 * j + 1], std::cos(angle), 1e-12) << "k=" << k << " j=" << j;
    }
  }
}

TEST(MtlaReference, MatchesDenseTrainingForm) {
  Rng rng(7001);
  for (int64_t s : kDownRates)
    for (int it = 0; it < 3; ++it) {
      const MtlaStream st = random_stream(rng, s, rng.uniform_int(1, 3 * s + 20));
      SCOPED_TRACE(st.describe());
      const std::vector<double> w = oracle_weights(st);
      const Tensor<double> weights = ref::mtla_merge_weights(st.rows, 0, st.dims, st.p, st.hyper);
      Tensor<double> want_w({st.n()});
      std::copy(w.begin(), w.end(), want_w.data());
      EXPECT_LT(rel_err(weights, want_w), 1e-14);
      const Tensor<double> want = oracle_training_form(st, w);
      EXPECT_LT(rel_err(ref::mtla_prefill_mla(st.q, st.rows, st.scale, st.dims, st.p, st.hyper), want), 1e-12);
      // The float reference (what the cache computes with) to float accuracy.
      const Tensor<float> got_f = ref::mtla_prefill_mla(st.q.cast<float>(), st.rows.cast<float>(), st.scale, st.dims,
                                                        st.p, st.hyper.cast<float>());
      EXPECT_LT(rel_err(got_f, want), 2e-5);
    }
}

// Identity 3: s = 1 is full MLA over the scaled latents w_i c_i, each row its own token.
TEST(MtlaReference, DownRateOneIsFullMlaOverScaledLatents) {
  Rng rng(7002);
  for (int it = 0; it < 4; ++it) {
    const MtlaStream st = random_stream(rng, 1, rng.uniform_int(1, 40));
    SCOPED_TRACE(st.describe());
    const std::vector<double> w = oracle_weights(st);
    Tensor<double> scaled = st.rows;
    for (int64_t i = 0; i < st.n(); ++i)
      for (int64_t c = 0; c < st.dims.d_latent; ++c) scaled.row(i)[c] *= w[i];
    // Dense causal softmax over the scaled rows.
    const int64_t H = st.dims.heads, dc = st.dims.d_latent, width = st.dims.row_width();
    Tensor<double> want({st.n(), H, dc});
    for (int64_t t = 0; t < st.n(); ++t)
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> p(static_cast<size_t>(t + 1));
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < width; ++c) dot += st.q.data()[(t * H + h) * width + c] * scaled.row(j)[c];
          mx = std::max(mx, p[j] = st.scale * dot);
        }
        for (double& x : p) sum += x = std::exp(x - mx);
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t c = 0; c < dc; ++c) want.data()[(t * H + h) * dc + c] += p[j] / sum * scaled.row(j)[c];
      }
    const Tensor<double> got = ref::mtla_prefill_mla(st.q, st.rows, st.scale, st.dims, st.p, st.hyper);
    EXPECT_LT(rel_err(got, want), 1e-12);
    EXPECT_LT(rel_err(ref::mla_attention_absorbed(st.q, scaled, 0, st.scale, st.dims), want), 1e-12);
  }
}

// The running rows continue across a split at any position, given the open sum.
TEST(MtlaReference, RunningRowsContinueFromOpenSum) {
  Rng rng(7003);
  for (int64_t s : kDownRates) {
    const MtlaStream st = random_stream(rng, s, 2 * s + 5);
    const Tensor<double> w = ref::mtla_merge_weights(st.rows, 0, st.dims, st.p, st.hyper);
    const Tensor<double> whole = ref::mtla_running_rows(st.rows, w, 0, Tensor<double>(), st.dims, st.p);
    for (int64_t cut = 1; cut < st.n(); ++cut) {
      Tensor<double> open({st.dims.d_latent});
      std::copy(whole.row(cut - 1), whole.row(cut - 1) + st.dims.d_latent, open.data());
      const int64_t L = st.n() - cut;
      const Tensor<double> tail_w = ref::mtla_merge_weights(slice_rows(st.rows, cut, L), cut, st.dims, st.p, st.hyper);
      EXPECT_TRUE(bitwise_equal(tail_w, slice_rows(w, cut, L))) << "s=" << s << " cut=" << cut;
      EXPECT_TRUE(bitwise_equal(
          ref::mtla_running_rows(slice_rows(st.rows, cut, L), tail_w, cut, open, st.dims, st.p),
          slice_rows(whole, cut, L)))
          << "s=" << s << " cut=" << cut;
    }
  }
}

// ---- The cache (identities 1 and 2) -------------------------------------------------------

struct MtlaRun {
  Tensor<float> out, complete, open_row, open_sum;
  int64_t entries, bytes;
};

MtlaRun run_cache(const MtlaStream& st, DType dt, const std::vector<int64_t>& sizes) {
  CondensedKvCache c = CondensedKvCache::mtla(st.dims, st.scale, st.p, st.hyper.cast<float>(), dt);
  const Tensor<float> rows = st.rows.cast<float>(), q = st.q.cast<float>();
  std::vector<Tensor<float>> outs;
  int64_t at = 0;
  for (int64_t L : sizes) {
    outs.push_back(c.forward(slice_rows(rows, at, L), slice_rows(q, at, L)));
    at += L;
  }
  EXPECT_EQ(at, st.n());
  return {concat_rows(outs), c.representative_rows(), c.raw_rows(), c.open_row_sum(), c.entries(), c.bytes()};
}

std::vector<int64_t> random_chunking(int64_t n, int64_t size, Rng& rng) {
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < n;) {
    sizes.push_back(std::min(n - at, size > 0 ? size : rng.uniform_int(1, 12)));
    at += sizes.back();
  }
  return sizes;
}

// Identity 1: one prefill, random chunkings and token-by-token decode give
// bitwise the same outputs and cache, in f32 and bf16; the cache equals the
// reference's training form on the same (rounded) rows.
TEST(MtlaCache, StreamingEqualsPrefillEqualsTrainingForm) {
  Rng rng(7101);
  for (int64_t s : kDownRates)
    for (DType dt : {DType::f32, DType::bf16}) {
      const MtlaStream st = random_stream(rng, s, 3 * s + 16 + rng.uniform_int(1, 2 * s + 3));
      SCOPED_TRACE(st.describe() + " dtype=" + lca::dtype_name(dt));
      const MtlaRun whole = run_cache(st, dt, {st.n()});
      EXPECT_EQ(whole.entries, lca::mtla_rows(st.n(), st.p));
      std::vector<std::vector<int64_t>> chunkings = {random_chunking(st.n(), 1, rng), random_chunking(st.n(), s, rng),
                                                     random_chunking(st.n(), s + 1, rng)};
      for (int r = 0; r < 3; ++r) chunkings.push_back(random_chunking(st.n(), 0, rng));
      for (size_t k = 0; k < chunkings.size(); ++k) {
        SCOPED_TRACE("chunking " + std::to_string(k));
        const MtlaRun run = run_cache(st, dt, chunkings[k]);
        EXPECT_TRUE(bitwise_equal(run.out, whole.out)) << "forward outputs";
        EXPECT_TRUE(bitwise_equal(run.complete, whole.complete)) << "complete rows";
        EXPECT_TRUE(bitwise_equal(run.open_row, whole.open_row)) << "open row";
        EXPECT_TRUE(bitwise_equal(run.open_sum, whole.open_sum)) << "open-row sum";
        EXPECT_EQ(run.entries, whole.entries);
        EXPECT_EQ(run.bytes, whole.bytes);
      }
      // The training form in float on the stored rows: the running rows rounded to the cache dtype.
      const Tensor<float> rows = st.rows.cast<float>(), q = st.q.cast<float>();
      const MtlaHyperNet<float> hyper = st.hyper.cast<float>();
      const Tensor<float> w = ref::mtla_merge_weights(rows, 0, st.dims, st.p, hyper);
      const Tensor<float> running = ref::mtla_running_rows(rows, w, 0, Tensor<float>(), st.dims, st.p);
      const Tensor<float> stored = rounded(dt, running);
      const Tensor<float> want = ref::mtla_attention_mla(q, 0, ref::mtla_cache_rows(stored, st.p), stored, 0, st.scale,
                                                         st.dims, st.p);
      EXPECT_TRUE(bitwise_equal(whole.out, want)) << "cache = training form on the stored rows";
      if (dt == DType::f32)
        EXPECT_TRUE(bitwise_equal(whole.out, ref::mtla_prefill_mla(q, rows, st.scale, st.dims, st.p, hyper)));
      // What the cache holds is the rounding of the reference's rows; the open sum is fp32, unrounded.
      const Tensor<float> cache_rows = ref::mtla_cache_rows(running, st.p);
      const int64_t complete = lca::mtla_complete_rows(st.n(), st.p);
      EXPECT_TRUE(bitwise_equal(whole.complete, rounded(dt, slice_rows(cache_rows, 0, complete))));
      EXPECT_TRUE(bitwise_equal(whole.open_row, rounded(dt, slice_rows(cache_rows, complete, st.n() % s ? 1 : 0))));
      if (st.n() % s != 0) {
        Tensor<float> open_sum({st.dims.d_latent});
        std::copy(running.row(st.n() - 1), running.row(st.n() - 1) + st.dims.d_latent, open_sum.data());
        EXPECT_TRUE(bitwise_equal(whole.open_sum, open_sum));
      }
    }
}

// append(rows) fills the same cache as forward, and attend() at n - 1 equals
// the last forward output.
TEST(MtlaCache, AppendAndAttendMatchForward) {
  Rng rng(7102);
  for (int64_t s : kDownRates) {
    const MtlaStream st = random_stream(rng, s, 2 * s + rng.uniform_int(1, s + 2));
    SCOPED_TRACE(st.describe());
    const Tensor<float> rows = st.rows.cast<float>(), q = st.q.cast<float>();
    CondensedKvCache fwd = CondensedKvCache::mtla(st.dims, st.scale, st.p, st.hyper.cast<float>(), DType::bf16);
    CondensedKvCache app = CondensedKvCache::mtla(st.dims, st.scale, st.p, st.hyper.cast<float>(), DType::bf16);
    int64_t at = 0;
    for (int64_t L : random_chunking(st.n(), 0, rng)) {
      const Tensor<float> out = fwd.forward(slice_rows(rows, at, L), slice_rows(q, at, L));
      app.append(slice_rows(rows, at, L));
      at += L;
      EXPECT_TRUE(bitwise_equal(app.representative_rows(), fwd.representative_rows()));
      EXPECT_TRUE(bitwise_equal(app.raw_rows(), fwd.raw_rows()));
      const Tensor<float> last = slice_rows(out, L - 1, 1);
      EXPECT_TRUE(bitwise_equal(app.attend(slice_rows(q, at - 1, 1)), last)) << "attend after " << at << " tokens";
      // A batch of queries attends as position n - 1 does, each on its own.
      const Tensor<float> batch = concat_rows(std::vector<Tensor<float>>{slice_rows(q, 0, 1), slice_rows(q, at - 1, 1)});
      EXPECT_TRUE(bitwise_equal(slice_rows(app.attend(batch), 1, 1), last));
    }
  }
}

// Identity 2 in the cache: ceil(n/s) rows at every n, floor(n/s) complete and
// the open one when s does not divide n; bytes count them and the fp32 open sum.
TEST(MtlaCache, RowCountAtEveryN) {
  Rng rng(7103);
  for (int64_t s : kDownRates) {
    const MtlaStream st = random_stream(rng, s, 300);
    CondensedKvCache c = CondensedKvCache::mtla(st.dims, st.scale, st.p, st.hyper.cast<float>(), DType::f16);
    const Tensor<float> rows = st.rows.cast<float>();
    const int64_t width = st.dims.row_width(), dc = st.dims.d_latent;
    for (int64_t n = 1; n <= st.n(); ++n) {
      c.append(slice_rows(rows, n - 1, 1));
      int64_t chunks = 0;
      for (int64_t k = 0; k * s < n; ++k) ++chunks;
      const bool open = n % s != 0;
      ASSERT_EQ(c.tokens(), n);
      ASSERT_EQ(c.entries(), chunks) << "s=" << s << " n=" << n;
      ASSERT_EQ(c.representatives(), chunks - (open ? 1 : 0)) << "s=" << s << " n=" << n;
      ASSERT_EQ(c.raw_entries(), open ? 1 : 0) << "s=" << s << " n=" << n;
      ASSERT_EQ(c.summary_entries(), 0);
      ASSERT_EQ(c.row_bytes(), chunks * width * 2);
      ASSERT_EQ(c.summary_bytes(), open ? dc * 4 : 0);
      ASSERT_EQ(c.open_row_sum().numel(), open ? dc : 0);
    }
  }
}

// The LCA cache is untouched by the policy: its accessors still work, and an
// MTLA cache reports its own policy.
TEST(MtlaCache, PolicyAccessors) {
  Rng rng(7104);
  const MlaDims d = random_mtla_dims(rng);
  const CondensedKvCache m = CondensedKvCache::mtla(d, d.default_scale(), mtla(4), random_hyper<float>(d, rng));
  EXPECT_TRUE(m.is_mtla());
  EXPECT_EQ(m.mtla_params().down_rate, 4);
  EXPECT_EQ(std::get<MtlaParams>(m.policy()).down_rate, 4);
  const CondensedKvCache l = CondensedKvCache::mla(d, d.default_scale(), LcaParams{});
  EXPECT_FALSE(l.is_mtla());
  EXPECT_EQ(l.params().group, 16);
}

// ---- Agreement with the PyPI package mtla (identity 4) --------------------------------------

struct AgreementCase {
  nlohmann::json j;
  MlaDims dims;
  MtlaParams p;
  MtlaHyperNet<double> hyper;
  Tensor<double> w_uk, w_uv, wo;

  Tensor<double> tensor(const nlohmann::json& v, const Shape& shape) const {
    Tensor<double> t(shape);
    EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel()) << "case file entry of shape " << lca::shape_str(shape);
    for (int64_t i = 0; i < std::min<int64_t>(t.numel(), static_cast<int64_t>(v.size())); ++i)
      t.data()[i] = v[static_cast<size_t>(i)].get<double>();
    return t;
  }
  // The package's module output: wo . flatten_h(W_UV[h] o_{t,h}).
  Tensor<double> module_output(const Tensor<double>& latents) const {
    const Tensor<double> heads = ref::mla_up_project(latents, w_uv, dims);
    const int64_t L = heads.dim(0), E = wo.dim(0), in = wo.dim(1);
    Tensor<double> y({L, E});
    for (int64_t l = 0; l < L; ++l)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t k = 0; k < in; ++k) y.row(l)[e] += wo.row(e)[k] * heads.row(l)[k];
    return y;
  }
  // Absorbed queries of positions [q_from, T) from the package's q_nope and rotated q_pe.
  Tensor<double> queries(const nlohmann::json& run, int64_t L) const {
    return ref::mla_absorb_queries(tensor(run["q_nope"], {L, dims.heads, dims.d_nope}),
                                   tensor(run["q_rope"], {L, dims.heads, dims.d_rope}), w_uk, dims);
  }
};

AgreementCase load_case(int64_t s) {
  const std::string path = std::string(LCA_TEST_DATA_DIR) + "/mtla_agreement_s" + std::to_string(s) + ".json";
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  AgreementCase c;
  c.j = nlohmann::json::parse(f);
  const auto& j = c.j;
  c.dims = MlaDims{.heads = j["heads"], .d_latent = j["d_latent"], .d_rope = j["d_rope"], .d_nope = j["d_nope"],
                   .d_v = j["d_v"]};
  c.p = mtla(j["down_rate"].get<int64_t>());
  EXPECT_EQ(c.p.down_rate, s);
  const int64_t dc = c.dims.d_latent, H = c.dims.heads, E = j["embed_dim"];
  c.hyper = {c.tensor(j["fc_c_weight"], {dc / 4, dc}), c.tensor(j["fc_c_bias"], {dc / 4}),
             c.tensor(j["fc_p_weight"], {dc / 4, dc}), c.tensor(j["fc_p_bias"], {dc / 4})};
  c.w_uk = c.tensor(j["w_uk"], {H, c.dims.d_nope, dc});
  c.w_uv = c.tensor(j["w_uv"], {H, c.dims.d_v, dc});
  c.wo = c.tensor(j["wo"], {E, H * c.dims.d_v});
  return c;
}

constexpr double kAgreement = 1e-10;

// Its training-mode forward (stride-aware mask) and its merge weights.
TEST(MtlaAgreement, PackageTrainingForward) {
  for (int64_t s : {2, 4}) {
    SCOPED_TRACE("s=" + std::to_string(s));
    const AgreementCase c = load_case(s);
    const int64_t T = c.j["length"], E = c.j["embed_dim"];
    EXPECT_DOUBLE_EQ(c.j["scale"].get<double>(), c.dims.default_scale());
    const Tensor<double> kv = c.tensor(c.j["kv_rows"], {T, c.dims.row_width()});
    EXPECT_LT(rel_err(ref::mtla_merge_weights(kv, 0, c.dims, c.p, c.hyper), c.tensor(c.j["merge_weights"], {T})),
              kAgreement);
    const Tensor<double> q = c.queries(c.j, T);
    const Tensor<double> y = c.module_output(ref::mtla_prefill_mla(q, kv, c.dims.default_scale(), c.dims, c.p, c.hyper));
    EXPECT_LT(rel_err(y, c.tensor(c.j["train_out"], {T, E})), kAgreement);
  }
}

// Its incremental decode (prompt, then one token per call), with and without
// recompute_prompt_attn: the outputs and the final cache rows; then our cache
// in f32, fed the same way, against the package to float accuracy.
TEST(MtlaAgreement, PackageIncrementalDecode) {
  for (int64_t s : {2, 4})
    for (const char* mode : {"decode", "recompute"}) {
      SCOPED_TRACE("s=" + std::to_string(s) + " " + mode);
      const AgreementCase c = load_case(s);
      const nlohmann::json& run = c.j[mode];
      const int64_t T = c.j["length"], E = c.j["embed_dim"], prompt = c.j["prompt"], q_from = run["q_from"];
      const double scale = c.dims.default_scale();
      const Tensor<double> kv = c.tensor(run["kv_rows"], {T, c.dims.row_width()});
      const Tensor<double> q = c.queries(run, T - q_from);
      const Tensor<double> w = ref::mtla_merge_weights(kv, 0, c.dims, c.p, c.hyper);
      const Tensor<double> running = ref::mtla_running_rows(kv, w, 0, Tensor<double>(), c.dims, c.p);
      const Tensor<double> cache_rows = ref::mtla_cache_rows(running, c.p);
      const Tensor<double> want_out = c.tensor(run["out"], {T - q_from, E});
      const Tensor<double> want_cache = c.tensor(run["cache"], {lca::mtla_rows(T, c.p), c.dims.row_width()});
      EXPECT_LT(rel_err(cache_rows, want_cache), kAgreement);
      const Tensor<double> o = ref::mtla_attention_mla(q, q_from, cache_rows, running, 0, scale, c.dims, c.p);
      EXPECT_LT(rel_err(c.module_output(o), want_out), kAgreement);

      CondensedKvCache cache = CondensedKvCache::mtla(c.dims, scale, c.p, c.hyper.cast<float>());
      const Tensor<float> kv_f = kv.cast<float>(), q_f = q.cast<float>();
      if (q_from > 0) cache.append(slice_rows(kv_f, 0, q_from));  // the prompt tokens before the first query
      std::vector<Tensor<float>> outs;
      for (int64_t at = q_from; at < T;) {
        const int64_t L = at < prompt ? prompt - at : 1;
        outs.push_back(cache.forward(slice_rows(kv_f, at, L), slice_rows(q_f, at - q_from, L)));
        at += L;
      }
      const Tensor<float> held = concat_rows(std::vector<Tensor<float>>{cache.representative_rows(), cache.raw_rows()});
      EXPECT_LT(rel_err(held, want_cache), 1e-5);
      EXPECT_LT(rel_err(c.module_output(concat_rows(outs).cast<double>()), want_out), 1e-4);
    }
}

// ---- Errors name the argument --------------------------------------------------------------

template <class F>
void expect_error_naming(F&& f, const std::vector<std::string>& words) {
  try {
    f();
    ADD_FAILURE() << "no lca::Error thrown; expected one mentioning " << words.at(0);
  } catch (const lca::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("lca: ", 0), 0u) << msg;
    for (const auto& w : words) EXPECT_NE(msg.find(w), std::string::npos) << "\"" << msg << "\" lacks \"" << w << "\"";
  }
}

TEST(MtlaErrors, ParamsAndHyperNet) {
  Rng rng(7201);
  expect_error_naming([] { mtla(0).validate(); }, {"MtlaParams", "down_rate", "got 0"});
  expect_error_naming([] { mtla(-3).validate(); }, {"down_rate", "-3"});
  MlaDims d{.heads = 2, .d_latent = 16, .d_rope = 4, .d_nope = 4, .d_v = 4};
  const MtlaHyperNet<float> good = random_hyper<float>(d, rng);
  EXPECT_NO_THROW(good.validate(d));
  MlaDims odd = d;
  odd.d_latent = 18;
  expect_error_naming([&] { good.validate(odd); }, {"MtlaHyperNet", "d_latent", "4", "18"});
  MtlaHyperNet<float> h = good;
  h.fc_c_weight = Tensor<float>();
  expect_error_naming([&] { h.validate(d); }, {"MtlaHyperNet", "fc_c_weight", "missing", "[4, 16]"});
  h = good;
  h.fc_p_weight = Tensor<float>({16, 4});  // transposed: nn.Linear is [out, in]
  expect_error_naming([&] { h.validate(d); }, {"fc_p_weight", "[16, 4]", "[4, 16]"});
  h = good;
  h.fc_c_bias = Tensor<float>({5});
  expect_error_naming([&] { h.validate(d); }, {"fc_c_bias", "[5]"});
  h = good;
  h.fc_p_bias.data()[2] = NAN;
  expect_error_naming([&] { h.validate(d); }, {"fc_p_bias"});
  expect_error_naming([&] { CondensedKvCache::mtla(d, d.default_scale(), mtla(2), h); }, {"fc_p_bias"});
  expect_error_naming([&] { CondensedKvCache::mtla(d, d.default_scale(), mtla(0), good); }, {"down_rate"});
  expect_error_naming([&] { CondensedKvCache::mtla(odd, odd.default_scale(), mtla(2), good); }, {"d_latent"});
  expect_error_naming([&] { ref::mtla_merge_weights(Tensor<float>({3, 20}), 0, d, mtla(2), h); }, {"fc_p_bias"});
}

TEST(MtlaErrors, ReferenceArguments) {
  Rng rng(7202);
  const MlaDims d{.heads = 2, .d_latent = 8, .d_rope = 4, .d_nope = 4, .d_v = 4};
  const int64_t row = d.row_width();
  const MtlaHyperNet<double> h = random_hyper<double>(d, rng);
  const Tensor<double> rows = randn<double>({6, row}, rng), q = randn<double>({6, 2, row}, rng);
  expect_error_naming([&] { ref::mtla_merge_weights(Tensor<double>({6, row + 1}), 0, d, mtla(2), h); },
                      {"mtla_merge_weights", "kv_rows"});
  expect_error_naming([&] { ref::mtla_merge_weights(rows, -1, d, mtla(2), h); }, {"start", "-1"});
  const Tensor<double> w = ref::mtla_merge_weights(rows, 0, d, mtla(2), h);
  expect_error_naming([&] { ref::mtla_running_rows(rows, Tensor<double>({5}), 0, Tensor<double>(), d, mtla(2)); },
                      {"mtla_running_rows", "weights"});
  // Starting inside a chunk needs the chunk's open sum.
  expect_error_naming([&] { ref::mtla_running_rows(rows, w, 3, Tensor<double>(), d, mtla(2)); }, {"open"});
  const Tensor<double> running = ref::mtla_running_rows(rows, w, 0, Tensor<double>(), d, mtla(2));
  const Tensor<double> complete = ref::mtla_cache_rows(running, mtla(2));
  expect_error_naming([&] { ref::mtla_attention_mla(q, 0, slice_rows(complete, 0, 1), running, 0, 1.0, d, mtla(2)); },
                      {"mtla_attention_mla", "complete rows", "position 5"});
  expect_error_naming([&] { ref::mtla_attention_mla(q, 0, complete, slice_rows(running, 0, 5), 0, 1.0, d, mtla(2)); },
                      {"mtla_attention_mla", "running rows"});
  expect_error_naming([&] { ref::mtla_attention_mla(q, 0, complete, running, 0, 1.0, d, mtla(0)); }, {"down_rate"});
  expect_error_naming([&] { ref::mtla_attention_mla(Tensor<double>({6, 3, row}), 0, complete, running, 0, 1.0, d, mtla(2)); },
                      {"queries", "[6, 3, 12]"});
  expect_error_naming([&] { ref::mtla_prefill_mla(slice_rows(q, 0, 5), rows, 1.0, d, mtla(2), h); }, {"q_abs"});
  expect_error_naming([] { ref::mtla_chunk_code<float>(0, 7); }, {"mtla_chunk_code", "d", "7"});
}

TEST(MtlaErrors, CacheArguments) {
  Rng rng(7203);
  const MlaDims d{.heads = 2, .d_latent = 8, .d_rope = 4, .d_nope = 4, .d_v = 4};
  const int64_t row = d.row_width();
  CondensedKvCache c = CondensedKvCache::mtla(d, d.default_scale(), mtla(3), random_hyper<float>(d, rng));
  expect_error_naming([&] { c.attend(randn<float>({1, 2, row}, rng)); }, {"attend", "empty"});
  expect_error_naming([&] { c.append(randn<float>({2, row}, rng), randn<float>({2, 8}, rng)); },
                      {"append", "summary", "MTLA"});
  expect_error_naming([&] { c.append(randn<float>({2, row + 1}, rng)); }, {"append", "rows", "[2, 13]"});
  Tensor<float> bad = randn<float>({2, row}, rng);
  bad.data()[5] = INFINITY;
  expect_error_naming([&] { c.append(bad); }, {"append", "rows"});
  expect_error_naming([&] { c.forward(randn<float>({2, row}, rng), randn<float>({1, 2, row}, rng)); },
                      {"forward", "queries"});
  EXPECT_EQ(c.tokens(), 0) << "a failed call leaves the cache as it was";
  expect_error_naming([&] { (void)c.params(); }, {"params", "MTLA"});
  CondensedKvCache l = CondensedKvCache::mla(d, d.default_scale(), LcaParams{});
  expect_error_naming([&] { l.append(randn<float>({2, row}, rng)); }, {"append", "summary"});
  expect_error_naming([&] { (void)l.mtla_params(); }, {"mtla_params", "LCA"});
  expect_error_naming([&] { CondensedKvCache::mtla(d, -1.0, mtla(2), random_hyper<float>(d, rng)); }, {"scale"});
}

}  // namespace
