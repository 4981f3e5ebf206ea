// Chunked prefill in the GPU runtime (internal to src/runtime/): the
// positions one chunk reads and writes, and the buffer sizes of a prefill call.
//
// A chunk appends tokens [n0, n1) to a sequence whose cache holds n0 tokens
// (lca-spec.md section 6: m(n0) representatives, raw rows [g m(n0), n0), the
// summaries of the last min(n0, g-1) positions). Per layer it lays out, as
// contiguous buffers, the raw rows [g m(n0), n1): the cached ones, then its own.
// That covers both what its queries see (query t: raw [g m(t+1), t], and
// g m(t+1) >= g m(n0)) and the tokens of the groups it condenses, [m(n0),
// m(n1)), whose first position is g m(n0). Summary rows likewise: the ring's
// positions [n0 - ring0, n0), then its own; every summary query of those
// groups is in there (group m(n0) is not condensed at n0, so its S_j starts at
// or after n0 - g + 1). The attention then sees m(n1) representatives: the
// cached m(n0) and the chunk's new ones. By the streaming identity (section 7,
// identity 3) this is the one-chunk prefill's function, whatever the chunking.
#pragma once

#include <algorithm>
#include <cstdint>
#include <variant>

#include "lca/params.hpp"

namespace lca::cuda::detail {

struct ChunkSpan {
  int64_t n0 = 0, n1 = 0, L = 0;
  int64_t m0 = 0, m1 = 0;        // representatives before and after the chunk
  int64_t raw_start = 0;         // g m(n0): position of the raw buffers' first row
  int64_t cached = 0;            // raw rows read from the cache: positions [raw_start, n0)
  int64_t raw_len = 0;           // raw rows in the buffers: positions [raw_start, n1)
  int64_t ring0 = 0, ring1 = 0;  // summary rows held before the chunk and after it (0 for full attention)
  int64_t new_raw = 0;           // first position written back raw: max(g m(n1), n0)

  ChunkSpan(int64_t start, int64_t len, const LcaParams& p) : n0(start), n1(start + len), L(len) {
    m0 = condensed_groups(n0, p);
    m1 = condensed_groups(n1, p);
    raw_start = first_raw_position(n0, p);
    cached = n0 - raw_start;
    raw_len = n1 - raw_start;
    ring0 = p.is_full() ? 0 : std::min(n0, p.group - 1);
    ring1 = p.is_full() ? 0 : std::min(n1, p.group - 1);
    new_raw = std::max(first_raw_position(n1, p), n0);
  }
  // Summary rows in the buffer (positions [n0 - ring0, n1)), and the index of the ring of n1 in it.
  int64_t summaries() const { return ring0 + L; }
  int64_t ring1_offset() const { return ring0 + L - ring1; }
};

// The largest chunk of a prefill call: its buffers are sized once.
struct PrefillPlan {
  int64_t chunk = 0;      // tokens
  int64_t raw = 0;        // raw rows (cached and own)
  int64_t reps = 0;       // representatives after the last chunk
  int64_t summaries = 0;  // summary rows (ring and own)
};

// N tokens appended to a sequence of n0 in chunks of `chunk` tokens.
inline PrefillPlan plan_prefill(int64_t n0, int64_t N, int64_t chunk, const LcaParams& p) {
  PrefillPlan plan;
  for (int64_t a = n0; a < n0 + N; a += chunk) {
    const ChunkSpan c(a, std::min(chunk, n0 + N - a), p);
    plan.chunk = std::max(plan.chunk, c.L);
    plan.raw = std::max(plan.raw, c.raw_len);
    plan.reps = std::max(plan.reps, c.m1);
    plan.summaries = std::max(plan.summaries, c.summaries());
  }
  return plan;
}

// MTLA (mtla-spec.md): a chunk [n0, n1) reads the ceil(n0/s) cached rows and
// lays out its L running rows (the "raw" rows) and the rows [0, ceil(n1/s)):
// the complete ones it attends and the open one it writes back.
inline PrefillPlan plan_prefill(int64_t n0, int64_t N, int64_t chunk, const MtlaParams& p) {
  PrefillPlan plan;
  plan.chunk = plan.raw = std::min(chunk, N);
  plan.reps = (n0 + N + p.down_rate - 1) / p.down_rate;
  return plan;
}

inline PrefillPlan plan_prefill(int64_t n0, int64_t N, int64_t chunk, const Policy& p) {
  return std::visit([&](const auto& q) { return plan_prefill(n0, N, chunk, q); }, p);
}

// The LCA part of a policy: MTLA has no window, groups or ring (LcaParams::full()).
inline LcaParams lca_part(const Policy& p) {
  const LcaParams* lca = std::get_if<LcaParams>(&p);
  return lca ? *lca : LcaParams::full();
}

}  // namespace lca::cuda::detail
