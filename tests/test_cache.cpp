// CondensedKvCache (lca-spec.md section 6 and identity 3): streaming equals
// prefill bitwise for any chunking, agreement with the reference, the
// append/attend split, the exact section-6 size at every n, the full policy,
// and the spec's own numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "lca/cache.hpp"
#include "lca/reference.hpp"
#include "test_util.hpp"

namespace {

using namespace lca_test;
using lca::CondensedKvCache;
using lca::DType;
using lca::KeyMode;
using lca::KvLayout;
using lca::MassBias;
using lca::RopeParams;
using lca::ScoreMode;
namespace ref = lca::ref;

// ---- One layer's token stream ---------------------------------------------------------

struct Stream {
  KvLayout layout;
  MlaDims mla{};
  GqaDims gqa{};
  RopeParams rope{};
  LcaParams p;
  double scale = 0.0;
  Tensor<float> rows;  // [n, row_width]
  Tensor<float> q;     // [n, heads, query_width]
  int64_t n() const { return rows.dim(0); }

  CondensedKvCache make(DType dt) const {
    return layout == KvLayout::mla ? CondensedKvCache::mla(mla, scale, p, dt)
                                   : CondensedKvCache::gqa(gqa, rope, scale, p, dt);
  }
  // The head-summed summary queries the cache keeps (section 6), [n, width] for
  // MLA and [n, kv_heads, d] for GQA (as the reference returns them).
  Tensor<float> summaries() const {
    return layout == KvLayout::mla ? ref::mla_summary_queries(q, mla, p.score) : ref::gqa_summary_queries(q, gqa);
  }
  Tensor<float> prefill() const {
    return layout == KvLayout::mla ? ref::lca_prefill_mla(q, rows, scale, mla, p)
                                   : ref::lca_prefill_gqa(q, rows, scale, gqa, rope, p);
  }
  std::string describe() const {
    return (layout == KvLayout::mla ? str(mla) : str(gqa)) + " " + str(p) + " n=" + std::to_string(n());
  }
};

Stream mla_stream(Rng& rng, const MlaDims& d, const LcaParams& p, int64_t n) {
  Stream s{KvLayout::mla, d, {}, {}, p, d.default_scale(), {}, {}};
  s.rows = randn<float>({n, d.row_width()}, rng);
  for (int64_t i = 0; i < n; ++i) ref::rope_rotate(s.rows.row(i) + d.d_latent, d.d_rope, i, s.rope);
  s.q = random_queries<float>(n, d.heads, d.row_width(), rng);
  return s;
}

Stream gqa_stream(Rng& rng, const GqaDims& d, const LcaParams& p, int64_t n) {
  Stream s{KvLayout::gqa, {}, d, RopeParams{}, p, d.default_scale(), {}, {}};
  s.rows = randn<float>({n, d.row_width()}, rng);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d.kv_heads; ++k) ref::rope_rotate(s.rows.row(i) + k * 2 * d.head_dim, d.head_dim, i, s.rope);
  s.q = random_queries<float>(n, d.q_heads, d.head_dim, rng);
  return s;
}

// Everything a cache holds after a run, plus the concatenated outputs.
struct Snapshot {
  Tensor<float> out, reps, raw, ring;
  int64_t tokens, representatives, raw_entries, summary_entries, first_raw, bytes;
};

Snapshot run_chunked(const Stream& s, DType dt, const std::vector<int64_t>& sizes) {
  CondensedKvCache c = s.make(dt);
  std::vector<Tensor<float>> outs;
  int64_t at = 0;
  for (int64_t L : sizes) {
    outs.push_back(c.forward(slice_rows(s.rows, at, L), slice_rows(s.q, at, L)));
    EXPECT_EQ(outs.back().shape(), (Shape{L, c.query_heads(), c.output_width()}));
    at += L;
  }
  EXPECT_EQ(at, s.n());
  return {concat_rows(outs), c.representative_rows(), c.raw_rows(), c.summary_ring(), c.tokens(),
          c.representatives(), c.raw_entries(), c.summary_entries(), c.first_raw_position(), c.bytes()};
}

// Chunks of `size` (the last one shorter); size <= 0: random sizes in [1, 40].
std::vector<int64_t> chunking(int64_t n, int64_t size, Rng& rng) {
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < n;) {
    const int64_t L = std::min(n - at, size > 0 ? size : rng.uniform_int(1, 40));
    sizes.push_back(L);
    at += L;
  }
  return sizes;
}

void expect_same_snapshot(const Snapshot& a, const Snapshot& b) {
  EXPECT_TRUE(bitwise_equal(a.out, b.out)) << "forward outputs";
  EXPECT_TRUE(bitwise_equal(a.reps, b.reps)) << "representative_rows()";
  EXPECT_TRUE(bitwise_equal(a.raw, b.raw)) << "raw_rows()";
  EXPECT_TRUE(bitwise_equal(a.ring, b.ring)) << "summary_ring()";
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.representatives, b.representatives);
  EXPECT_EQ(a.raw_entries, b.raw_entries);
  EXPECT_EQ(a.summary_entries, b.summary_entries);
  EXPECT_EQ(a.first_raw, b.first_raw);
  EXPECT_EQ(a.bytes, b.bytes);
}

void check_streaming_equals_prefill(const Stream& s, DType dt, Rng& rng, const std::vector<int64_t>& fixed_sizes,
                                    int random_chunkings) {
  SCOPED_TRACE(s.describe() + " dtype=" + lca::dtype_name(dt));
  const Snapshot whole = run_chunked(s, dt, {s.n()});
  // The whole-sequence state is the section-6 state.
  EXPECT_EQ(whole.tokens, s.n());
  EXPECT_EQ(whole.representatives, lca::condensed_groups(s.n(), s.p));
  EXPECT_EQ(whole.raw_entries, s.n() - lca::first_raw_position(s.n(), s.p));
  EXPECT_GT(whole.representatives, 0) << "the stream must condense something";
  for (int64_t size : fixed_sizes) {
    SCOPED_TRACE("chunks of " + std::to_string(size));
    expect_same_snapshot(run_chunked(s, dt, chunking(s.n(), size, rng)), whole);
  }
  for (int r = 0; r < random_chunkings; ++r) {
    SCOPED_TRACE("random chunking " + std::to_string(r));
    expect_same_snapshot(run_chunked(s, dt, chunking(s.n(), 0, rng)), whole);
  }
}

// ---- (a) streaming = prefill, bitwise -------------------------------------------------

TEST(CacheStreaming, MlaAnyChunkingIsBitwiseEqual) {
  Rng rng(2001);
  const std::vector<std::pair<int64_t, int64_t>> wg = {{40, 8}, {61, 16}, {100, 7}, {45, 1}};
  for (size_t k = 0; k < wg.size(); ++k)
    for (DType dt : {DType::f32, DType::bf16}) {
      LcaParams p = random_params(rng, 1, 1);
      p.window = wg[k].first;
      p.group = wg[k].second;
      const int64_t n = p.window + 6 * p.group + rng.uniform_int(1, p.group + 3);
      const Stream s = mla_stream(rng, random_mla_dims(rng), p, n);
      check_streaming_equals_prefill(s, dt, rng, {1, 7, 16, 100, 1023}, 3);
    }
}

TEST(CacheStreaming, GqaAnyChunkingIsBitwiseEqual) {
  Rng rng(2002);
  const std::vector<std::pair<int64_t, int64_t>> wg = {{40, 8}, {61, 16}, {100, 7}, {45, 1}};
  for (size_t k = 0; k < wg.size(); ++k)
    for (DType dt : {DType::f32, DType::bf16}) {
      LcaParams p = random_params(rng, 1, 1);
      p.window = wg[k].first;
      p.group = wg[k].second;
      p.key_mode = k % 2 ? KeyMode::anchor : KeyMode::pooled;
      const int64_t n = p.window + 6 * p.group + rng.uniform_int(1, p.group + 3);
      const Stream s = gqa_stream(rng, random_gqa_dims(rng), p, n);
      check_streaming_equals_prefill(s, dt, rng, {1, 7, 16, 100, 1023}, 3);
    }
}

TEST(CacheStreaming, DefaultPolicyTinyDims) {
  Rng rng(2003);
  const LcaParams p;  // w = 1024, g = 16
  ASSERT_EQ(p.window, 1024);
  ASSERT_EQ(p.group, 16);
  const int64_t n = 1300;
  {
    const Stream s = mla_stream(rng, MlaDims{.heads = 2, .d_latent = 8, .d_rope = 4, .d_nope = 4, .d_v = 4}, p, n);
    check_streaming_equals_prefill(s, DType::bf16, rng, {1, 1023}, 1);
  }
  {
    const Stream s = gqa_stream(rng, GqaDims{.q_heads = 2, .kv_heads = 1, .head_dim = 4}, p, n);
    check_streaming_equals_prefill(s, DType::f32, rng, {1, 1023}, 1);
  }
}

// The ring holds the head-summed summary queries of the last g - 1 positions, oldest first.
TEST(CacheStreaming, SummaryRingHoldsLastSummaries) {
  Rng rng(2004);
  for (int it = 0; it < 8; ++it) {
    LcaParams p = random_params(rng, 30, 12);
    const int64_t n = rng.uniform_int(1, p.window + 4 * p.group + 5);
    const Stream s = it % 2 ? gqa_stream(rng, random_gqa_dims(rng), p, n) : mla_stream(rng, random_mla_dims(rng), p, n);
    SCOPED_TRACE(s.describe());
    CondensedKvCache c = s.make(DType::bf16);
    for (int64_t at = 0; at < n;) {
      const int64_t L = std::min(n - at, rng.uniform_int(1, 9));
      c.forward(slice_rows(s.rows, at, L), slice_rows(s.q, at, L));
      at += L;
      const int64_t keep = std::min(at, p.group - 1);
      const Tensor<float> all = s.summaries();
      const Tensor<float> want = reshape(slice_rows(all, at - keep, keep), {keep, all.row_stride()});
      EXPECT_TRUE(bitwise_equal(c.summary_ring(), want)) << "after " << at << " tokens";
    }
  }
}

// ---- (b) forward = reference prefill ----------------------------------------------------

TEST(CacheMatchesReference, F32ForwardEqualsPrefill) {
  Rng rng(2011);
  for (int it = 0; it < 16; ++it) {
    const LcaParams p = random_params(rng, 60, 16);
    const int64_t n = rng.uniform_int(1, p.window + 8 * p.group);
    const Stream s = it % 2 ? gqa_stream(rng, random_gqa_dims(rng), p, n) : mla_stream(rng, random_mla_dims(rng), p, n);
    SCOPED_TRACE(s.describe());
    const Tensor<float> want = s.prefill();
    EXPECT_LT(rel_err(run_chunked(s, DType::f32, {n}).out, want), 1e-5) << "one chunk";
    EXPECT_LT(rel_err(run_chunked(s, DType::f32, chunking(n, 0, rng)).out, want), 1e-5) << "random chunks";
    // Representatives equal the reference's condensed rows.
    const int64_t m = lca::condensed_groups(n, p);
    const Snapshot snap = run_chunked(s, DType::f32, chunking(n, 0, rng));
    ASSERT_EQ(snap.reps.dim(0), m);
    if (m > 0) {
      const Tensor<float> sum = s.summaries();
      const Tensor<float> want_reps =
          s.layout == KvLayout::mla ? ref::condense_groups_mla(s.rows, 0, sum, 0, 0, m, s.scale, s.mla, p).rows
                                    : ref::condense_groups_gqa(s.rows, 0, sum, 0, 0, m, s.scale, s.gqa, s.rope, p).rows;
      EXPECT_LT(rel_err(snap.reps, want_reps), 1e-6);
    }
    EXPECT_TRUE(bitwise_equal(snap.raw, slice_rows(s.rows, lca::first_raw_position(n, p), snap.raw.dim(0))));
  }
}

// bf16 storage: raw rows are the inputs rounded once; representatives are
// bf16 values within one bf16 ulp of the fp32 condensation of the stored
// rows; the attention uses exactly what is stored.
TEST(CacheMatchesReference, Bf16StoresRoundedRowsAndRepresentatives) {
  Rng rng(2012);
  for (int it = 0; it < 12; ++it) {
    LcaParams p = random_params(rng, 50, 16);
    p.group = std::max<int64_t>(p.group, 2);
    const int64_t n = p.window + rng.uniform_int(2, 8) * p.group + rng.uniform_int(0, p.group - 1);
    const Stream s = it % 2 ? gqa_stream(rng, random_gqa_dims(rng), p, n) : mla_stream(rng, random_mla_dims(rng), p, n);
    SCOPED_TRACE(s.describe());
    CondensedKvCache c = s.make(DType::bf16);
    Tensor<float> out;
    for (int64_t at = 0; at < n;) {
      const int64_t L = std::min(n - at, rng.uniform_int(1, 30));
      out = c.forward(slice_rows(s.rows, at, L), slice_rows(s.q, at, L));
      at += L;
    }
    const Tensor<float> stored = rounded(DType::bf16, s.rows);
    const int64_t lo = c.first_raw_position(), m = c.representatives();
    EXPECT_TRUE(bitwise_equal(c.raw_rows(), slice_rows(stored, lo, n - lo)));
    const Tensor<float> reps = c.representative_rows();
    for (float x : reps.vec()) ASSERT_EQ(lca::round_to(DType::bf16, x), x) << "a representative is not bf16";
    const Tensor<float> sum = s.summaries();
    const Tensor<float> want =
        s.layout == KvLayout::mla ? ref::condense_groups_mla(stored, 0, sum, 0, 0, m, s.scale, s.mla, p).rows
                                  : ref::condense_groups_gqa(stored, 0, sum, 0, 0, m, s.scale, s.gqa, s.rope, p).rows;
    ASSERT_EQ(reps.shape(), want.shape());
    for (int64_t i = 0; i < reps.numel(); ++i)
      ASSERT_LE(std::abs(reps.data()[i] - want.data()[i]), std::ldexp(std::abs(want.data()[i]), -7) + 1e-30)
          << "element " << i;
    // The last output is attention over exactly the stored rows.
    const Tensor<float> q_last = slice_rows(s.q, n - 1, 1);
    const Tensor<float> want_out =
        s.layout == KvLayout::mla ? ref::lca_attention_mla(q_last, n - 1, reps, c.raw_rows(), lo, s.scale, s.mla, p)
                                  : ref::lca_attention_gqa(q_last, n - 1, reps, c.raw_rows(), lo, s.scale, s.gqa, p);
    EXPECT_LT(rel_err(slice_rows(out, out.dim(0) - 1, 1), want_out), 1e-5);
  }
}

// ---- (c) append + attend = forward's last row ---------------------------------------------

TEST(CacheAppendAttend, AttendEqualsLastForwardRow) {
  Rng rng(2021);
  for (int it = 0; it < 16; ++it) {
    const LcaParams p = random_params(rng, 50, 12);
    const int64_t n = rng.uniform_int(1, p.window + 6 * p.group);
    const Stream s = it % 2 ? gqa_stream(rng, random_gqa_dims(rng), p, n) : mla_stream(rng, random_mla_dims(rng), p, n);
    const DType dt = it % 4 < 2 ? DType::f32 : DType::bf16;
    SCOPED_TRACE(s.describe() + " dtype=" + lca::dtype_name(dt));
    const Tensor<float> fwd = run_chunked(s, dt, {n}).out;

    CondensedKvCache c = s.make(dt);
    const Tensor<float> sum = s.summaries();  // GQA: [n, kv_heads, d] as the reference returns it
    for (int64_t at = 0; at < n;) {
      const int64_t L = std::min(n - at, rng.uniform_int(1, 25));
      c.append(slice_rows(s.rows, at, L), slice_rows(sum, at, L));
      at += L;
    }
    EXPECT_EQ(c.tokens(), n);
    const Tensor<float> att = c.attend(slice_rows(s.q, n - 1, 1));
    EXPECT_TRUE(bitwise_equal(att, slice_rows(fwd, n - 1, 1)));

    // A batch of queries all attend as position n - 1 over what the cache holds.
    const Tensor<float> qb = concat_rows<float>({randn<float>({2, s.q.dim(1), s.q.dim(2)}, rng), slice_rows(s.q, n - 1, 1)});
    const Tensor<float> batch = c.attend(qb);
    ASSERT_EQ(batch.shape(), (Shape{3, c.query_heads(), c.output_width()}));
    EXPECT_TRUE(bitwise_equal(slice_rows(batch, 2, 1), slice_rows(fwd, n - 1, 1)));
    const Tensor<float> reps = c.representative_rows(), raw = c.raw_rows();
    for (int64_t b = 0; b < 3; ++b) {
      std::vector<Tensor<float>> one_q{slice_rows(qb, b, 1)};
      const Tensor<float> want =
          s.layout == KvLayout::mla
              ? ref::lca_attention_mla(one_q[0], n - 1, reps, raw, c.first_raw_position(), s.scale, s.mla, p)
              : ref::lca_attention_gqa(one_q[0], n - 1, reps, raw, c.first_raw_position(), s.scale, s.gqa, p);
      EXPECT_LT(rel_err(slice_rows(batch, b, 1), want), 1e-6) << "batch row " << b;
    }
  }
}

// ---- (d) section-6 size at every n ----------------------------------------------------------

void check_counts_every_n(KvLayout layout, const LcaParams& p, DType dt, int64_t n_max, Rng& rng) {
  const MlaDims md{.heads = 1, .d_latent = 3, .d_rope = 2, .d_nope = 2, .d_v = 2};
  const GqaDims gd{.q_heads = 2, .kv_heads = 2, .head_dim = 2};
  CondensedKvCache c = layout == KvLayout::mla ? CondensedKvCache::mla(md, 0.5, p, dt)
                                               : CondensedKvCache::gqa(gd, RopeParams{}, 0.5, p, dt);
  const int64_t row_w = layout == KvLayout::mla ? md.d_latent + md.d_rope : gd.kv_heads * 2 * gd.head_dim;
  const int64_t sum_w = layout == KvLayout::gqa ? gd.kv_heads * gd.head_dim
                                                : (p.score == ScoreMode::full ? md.d_latent + md.d_rope : md.d_latent);
  const int64_t dsize = dt == DType::f32 ? 4 : 2;
  const int64_t w = p.window, g = p.group;
  SCOPED_TRACE(std::string(layout == KvLayout::mla ? "MLA " : "GQA ") + str(p) + " dtype=" + lca::dtype_name(dt));
  ASSERT_EQ(c.row_width(), row_w);
  ASSERT_EQ(c.summary_width(), sum_w);
  ASSERT_EQ(c.dtype(), dt);
  EXPECT_EQ(c.entries(), 0);
  EXPECT_EQ(c.bytes(), 0);
  int64_t failures = 0;
  for (int64_t n = 1; n <= n_max; ++n) {
    c.append(randn<float>({1, row_w}, rng), randn<float>({1, sum_w}, rng));
    const int64_t m = brute_condensed_groups(n, w, g);
    const int64_t raw = n - g * m;
    const int64_t ring = std::min(n, g - 1);
    const bool ok = c.tokens() == n && c.representatives() == m && c.raw_entries() == raw && c.entries() == m + raw &&
                    c.first_raw_position() == g * m && c.summary_entries() == ring &&
                    c.row_bytes() == (m + raw) * row_w * dsize && c.summary_bytes() == ring * sum_w * 4 &&
                    c.bytes() == c.row_bytes() + c.summary_bytes() && c.entries() == lca::cache_entries(n, p) &&
                    c.representative_rows().dim(0) == m && c.raw_rows().dim(0) == raw && c.summary_ring().dim(0) == ring;
    if (!ok && failures++ < 5)
      ADD_FAILURE() << "n=" << n << ": tokens=" << c.tokens() << " representatives=" << c.representatives() << " (want "
                    << m << ") raw_entries=" << c.raw_entries() << " (want " << raw << ") first_raw="
                    << c.first_raw_position() << " summary_entries=" << c.summary_entries() << " (want " << ring
                    << ") row_bytes=" << c.row_bytes() << " (want " << (m + raw) * row_w * dsize
                    << ") summary_bytes=" << c.summary_bytes() << " (want " << ring * sum_w * 4 << ")";
  }
  EXPECT_EQ(failures, 0);
}

TEST(CacheSize, SectionSixCountAtEveryNMla) {
  Rng rng(2031);
  for (auto [w, g] : std::vector<std::pair<int64_t, int64_t>>{{40, 16}, {37, 5}, {0, 1}, {1024, 16}, {100, 7}})
    for (DType dt : {DType::f32, DType::bf16}) {
      LcaParams p;
      p.window = w;
      p.group = g;
      p.score = rng.coin() ? ScoreMode::latent : ScoreMode::full;
      check_counts_every_n(KvLayout::mla, p, dt, 3000, rng);
    }
}

TEST(CacheSize, SectionSixCountAtEveryNGqa) {
  Rng rng(2032);
  for (auto [w, g] : std::vector<std::pair<int64_t, int64_t>>{{40, 16}, {13, 4}, {0, 3}, {1024, 16}})
    for (DType dt : {DType::f32, DType::bf16}) {
      LcaParams p;
      p.window = w;
      p.group = g;
      p.key_mode = rng.coin() ? KeyMode::pooled : KeyMode::anchor;
      check_counts_every_n(KvLayout::gqa, p, dt, 3000, rng);
    }
}

TEST(CacheSize, Bf16HalvesRowBytes) {
  Rng rng(2033);
  const LcaParams p;
  const MlaDims d{.heads = 1, .d_latent = 6, .d_rope = 2, .d_nope = 2, .d_v = 2};
  CondensedKvCache a = CondensedKvCache::mla(d, 0.5, p, DType::f32);
  CondensedKvCache b = CondensedKvCache::mla(d, 0.5, p, DType::bf16);
  const Tensor<float> rows = randn<float>({1500, d.row_width()}, rng), sum = randn<float>({1500, d.d_latent}, rng);
  a.append(rows, sum);
  b.append(rows, sum);
  EXPECT_EQ(a.entries(), lca::cache_entries(1500, p));
  EXPECT_EQ(a.row_bytes(), a.entries() * d.row_width() * 4);
  EXPECT_EQ(b.row_bytes(), b.entries() * d.row_width() * 2);
  EXPECT_EQ(2 * b.row_bytes(), a.row_bytes());
  EXPECT_EQ(a.summary_bytes(), b.summary_bytes()) << "the summary ring is fp32 in both";
}

// ---- (e) the full policy ------------------------------------------------------------------

TEST(CacheFullPolicy, NeverCondensesAndEqualsFullAttention) {
  Rng rng(2041);
  for (int it = 0; it < 8; ++it) {
    const int64_t n = rng.uniform_int(1, 300);
    const LcaParams p = LcaParams::full();
    const Stream s = it % 2 ? gqa_stream(rng, random_gqa_dims(rng), p, n) : mla_stream(rng, random_mla_dims(rng), p, n);
    SCOPED_TRACE(s.describe());
    CondensedKvCache c = s.make(DType::f32);
    std::vector<Tensor<float>> outs;
    for (int64_t at = 0; at < n;) {
      const int64_t L = std::min(n - at, rng.uniform_int(1, 50));
      outs.push_back(c.forward(slice_rows(s.rows, at, L), slice_rows(s.q, at, L)));
      at += L;
      EXPECT_EQ(c.representatives(), 0);
      EXPECT_EQ(c.raw_entries(), at);
      EXPECT_EQ(c.first_raw_position(), 0);
      EXPECT_EQ(c.summary_entries(), 0);
    }
    const Tensor<float> want = s.layout == KvLayout::mla ? ref::mla_attention_absorbed(s.q, s.rows, 0, s.scale, s.mla)
                                                         : ref::gqa_attention(s.q, s.rows, 0, s.scale, s.gqa);
    EXPECT_LT(rel_err(concat_rows(outs), want), 1e-6);
    EXPECT_TRUE(bitwise_equal(c.raw_rows(), s.rows));
  }
  // Counting only, long.
  CondensedKvCache c = CondensedKvCache::mla(MlaDims{.heads = 1, .d_latent = 2, .d_rope = 2}, 1.0, LcaParams::full());
  c.append(randn<float>({5000, 4}, rng), randn<float>({5000, 2}, rng));
  EXPECT_EQ(c.entries(), 5000);
  EXPECT_EQ(c.representatives(), 0);
}

// ---- (f) the spec's own numbers -----------------------------------------------------------

TEST(CacheSize, SpecNumbers) {
  const LcaParams p;  // w = 1024, g = 16
  EXPECT_EQ(lca::cache_entries(131072, p), 9152);
  EXPECT_EQ(lca::cache_entries(32768, p), 3008);
  EXPECT_EQ(lca::condensed_groups(131072, p), (131072 - 1024) / 16);
  const double reduction = 1.0 - 9152.0 / 131072.0;
  EXPECT_NEAR(std::round(reduction * 1000.0) / 10.0, 93.0, 1e-9);
  EXPECT_EQ(lca::cache_entries(1024, p), 1024);
  EXPECT_EQ(lca::cache_entries(1039, p), 1039);  // w + g - 1: nothing condensed yet
  EXPECT_EQ(lca::cache_entries(1040, p), 1 + 1024);
}

// ---- Accessors ----------------------------------------------------------------------------

TEST(CacheAccessors, WidthsAndLayout) {
  const MlaDims md{.heads = 3, .d_latent = 10, .d_rope = 6, .d_nope = 4, .d_v = 5};
  LcaParams p;
  p.window = 7;
  p.group = 3;
  p.score = ScoreMode::full;
  CondensedKvCache a = CondensedKvCache::mla(md, 0.25, p, DType::bf16);
  EXPECT_EQ(a.layout(), KvLayout::mla);
  EXPECT_EQ(a.dtype(), DType::bf16);
  EXPECT_EQ(a.params().window, 7);
  EXPECT_EQ(a.params().group, 3);
  EXPECT_EQ(a.row_width(), 16);
  EXPECT_EQ(a.summary_width(), 16);  // score = full: latent and rope query
  EXPECT_EQ(a.query_heads(), 3);
  EXPECT_EQ(a.query_width(), 16);
  EXPECT_EQ(a.output_width(), 10);
  p.score = ScoreMode::latent;
  EXPECT_EQ(CondensedKvCache::mla(md, 0.25, p).summary_width(), 10);

  const GqaDims gd{.q_heads = 4, .kv_heads = 2, .head_dim = 6};
  CondensedKvCache b = CondensedKvCache::gqa(gd, RopeParams{}, 0.25, p);
  EXPECT_EQ(b.layout(), KvLayout::gqa);
  EXPECT_EQ(b.dtype(), DType::f32);
  EXPECT_EQ(b.row_width(), 24);
  EXPECT_EQ(b.summary_width(), 12);
  EXPECT_EQ(b.query_heads(), 4);
  EXPECT_EQ(b.query_width(), 6);
  EXPECT_EQ(b.output_width(), 6);
  EXPECT_EQ(b.tokens(), 0);
}

}  // namespace
