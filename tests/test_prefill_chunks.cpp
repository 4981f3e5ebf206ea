// The GPU runtime's chunked prefill layout (src/runtime/prefill_chunks.hpp),
// emulated on the CPU reference in float64, so that its position arithmetic
// is checked on every machine: per chunk [n0, n1), the cached raw rows
// [g m(n0), n0) then the chunk's own, the ring's summaries then the chunk's,
// groups [m(n0), m(n1)) condensed from those, attention over the cached and
// the new representatives; then what the paged cache keeps (the new
// representatives, the raw rows [max(g m(n1), n0), n1) beside the cached ones
// still raw, the ring of n1). Against one whole prefill (lca-spec.md section 7,
// identity 3): every chunking gives the same outputs and the same cache. The
// reference's coverage checks throw where a chunk's buffers miss a row.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "lca/reference.hpp"
#include "runtime/prefill_chunks.hpp"
#include "test_util.hpp"

namespace {

using namespace lca_test;
using lca::cuda::detail::ChunkSpan;
using lca::cuda::detail::plan_prefill;
using lca::cuda::detail::PrefillPlan;
namespace ref = lca::ref;

// What the paged cache holds for one MLA layer of one sequence (section 6).
struct CacheState {
  int64_t n = 0;
  Tensor<double> reps, raw, ring;  // [m(n), row], positions [g m(n), n), summaries of the last min(n, g-1)
};

// Chunks of the given sizes through the layout; returns the outputs of every query.
Tensor<double> chunked(const Tensor<double>& q, const Tensor<double>& kv, const MlaDims& d, double scale,
                       const LcaParams& p, const std::vector<int64_t>& sizes, CacheState& st) {
  const int64_t row = d.row_width(), sw = p.score == lca::ScoreMode::full ? row : d.d_latent;
  st.reps = Tensor<double>({0, row});
  st.raw = Tensor<double>({0, row});
  st.ring = Tensor<double>({0, sw});
  std::vector<Tensor<double>> outs;
  for (int64_t L : sizes) {
    const ChunkSpan ch(st.n, L, p);
    SCOPED_TRACE("chunk [" + std::to_string(ch.n0) + ", " + std::to_string(ch.n1) + ")");
    // The cache as the chunk finds it has the rows the layout reads.
    EXPECT_EQ(st.reps.dim(0), ch.m0);
    EXPECT_EQ(st.raw.dim(0), ch.cached);
    EXPECT_EQ(st.ring.dim(0), ch.ring0);
    const Tensor<double> q_own = slice_rows(q, ch.n0, L), rows_own = slice_rows(kv, ch.n0, L);
    const Tensor<double> raw = concat_rows<double>({st.raw, rows_own});  // positions [raw_start, n1)
    EXPECT_EQ(raw.dim(0), ch.raw_len);
    Tensor<double> sum({0, sw}), new_reps({0, row});
    if (!p.is_full()) {
      sum = concat_rows<double>({st.ring, ref::mla_summary_queries(q_own, d, p.score)});  // [n0 - ring0, n1)
      EXPECT_EQ(sum.dim(0), ch.summaries());
      new_reps = ref::condense_groups_mla(raw, ch.raw_start, sum, ch.n0 - ch.ring0, ch.m0, ch.m1 - ch.m0, scale, d, p)
                     .rows;
    }
    const Tensor<double> reps = concat_rows<double>({st.reps, new_reps});
    outs.push_back(ref::lca_attention_mla(q_own, ch.n0, reps, raw, ch.raw_start, scale, d, p));
    // Write back as PagedKvCache::write_extend_device and end_extend do: the
    // cached raw rows still raw at n1 stay, the chunk's from new_raw are added.
    const int64_t first_raw = lca::first_raw_position(ch.n1, p);
    const int64_t kept = std::max<int64_t>(0, ch.n0 - std::max(first_raw, ch.raw_start));
    st.raw = concat_rows<double>({slice_rows(st.raw, st.raw.dim(0) - kept, kept),
                                  slice_rows(raw, ch.new_raw - ch.raw_start, ch.n1 - ch.new_raw)});
    st.reps = reps;
    if (!p.is_full()) st.ring = slice_rows(sum, ch.ring1_offset(), ch.ring1);
    st.n = ch.n1;
  }
  return concat_rows(outs);
}

// Random chunk sizes summing to n: single tokens (decode steps), sizes near g
// and w, and larger ones.
std::vector<int64_t> random_chunks(Rng& rng, int64_t n, const LcaParams& p) {
  const int64_t g = p.is_full() ? 4 : p.group, w = p.is_full() ? 16 : p.window;
  const std::vector<int64_t> sizes = {1, 1, 2, 3, std::max<int64_t>(1, g - 1), g, g + 1, std::max<int64_t>(1, w), w + g + 1, 40};
  std::vector<int64_t> out;
  for (int64_t done = 0; done < n;) {
    const int64_t L = std::min(n - done, sizes[static_cast<size_t>(rng.uniform_int(0, static_cast<int64_t>(sizes.size()) - 1))]);
    out.push_back(L);
    done += L;
  }
  return out;
}

TEST(PrefillChunkLayout, AnyChunkingEqualsOneWholePrefill) {
  Rng rng(2027);
  for (int it = 0; it < 40; ++it) {
    const LcaParams p = it % 8 == 7 ? LcaParams::full() : random_params(rng, 40, 8);
    const int64_t n = rng.uniform_int(1, 160);
    const MlaDims d = random_mla_dims(rng);
    const double scale = d.default_scale();
    Tensor<double> kv = randn<double>({n, d.row_width()}, rng);
    for (int64_t i = 0; i < n; ++i) ref::rope_rotate(kv.row(i) + d.d_latent, d.d_rope, i, lca::RopeParams{});
    const Tensor<double> q = random_queries<double>(n, d.heads, d.row_width(), rng);
    const std::vector<int64_t> sizes = random_chunks(rng, n, p);
    SCOPED_TRACE(str(p) + " n " + std::to_string(n) + " in " + std::to_string(sizes.size()) + " chunks");
    CacheState st;
    const Tensor<double> got = chunked(q, kv, d, scale, p, sizes, st);
    const Tensor<double> want = ref::lca_prefill_mla(q, kv, scale, d, p);
    EXPECT_LT(rel_err(got, want), 1e-12);
    // The cache: representatives of the whole prefill's groups, raw rows [g m(n), n), the ring.
    const int64_t m = lca::condensed_groups(n, p), first_raw = lca::first_raw_position(n, p);
    ASSERT_EQ(st.reps.dim(0), m);
    if (m > 0) {
      const Tensor<double> sum = ref::mla_summary_queries(q, d, p.score);
      EXPECT_LT(rel_err(st.reps, ref::condense_groups_mla(kv, 0, sum, 0, 0, m, scale, d, p).rows), 1e-12);
    }
    EXPECT_EQ(st.raw.vec(), slice_rows(kv, first_raw, n - first_raw).vec());
    if (!p.is_full()) {
      const int64_t r = std::min(n, p.group - 1);
      const Tensor<double> sum = ref::mla_summary_queries(q, d, p.score);
      EXPECT_LT(rel_err(st.ring, slice_rows(sum, n - r, r)), 1e-12);
    }
  }
}

// The plan sizes every chunk's buffers: no chunk needs more rows than it gives,
// and under LCA the raw rows stay within the window and the chunk.
TEST(PrefillChunkLayout, PlanBoundsEveryChunk) {
  Rng rng(2029);
  for (int it = 0; it < 200; ++it) {
    const LcaParams p = it % 10 == 9 ? LcaParams::full() : random_params(rng, 300, 32);
    const int64_t n0 = rng.uniform_int(0, 2000), N = rng.uniform_int(1, 3000), chunk = rng.uniform_int(1, 700);
    const PrefillPlan plan = plan_prefill(n0, N, chunk, p);
    EXPECT_EQ(plan.chunk, std::min(chunk, N));
    EXPECT_EQ(plan.reps, lca::condensed_groups(n0 + N, p));
    if (!p.is_full()) {
      EXPECT_LE(plan.raw, p.window + p.group - 1 + plan.chunk);
      EXPECT_LE(plan.summaries, p.group - 1 + plan.chunk);
    } else {
      EXPECT_EQ(plan.raw, n0 + N);
    }
    for (int64_t a = n0; a < n0 + N; a += chunk) {
      const ChunkSpan c(a, std::min(chunk, n0 + N - a), p);
      EXPECT_LE(c.raw_len, plan.raw);
      EXPECT_LE(c.summaries(), plan.summaries);
      EXPECT_GE(c.new_raw, c.n0);
      EXPECT_LE(c.raw_start, c.n0);
    }
  }
}

}  // namespace
