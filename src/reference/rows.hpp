// Internal to the reference: the one attention over [representatives ; raw
// rows] that MLA, GQA, decompressed MLA and full attention all go through,
// and the per-group softmax/argmax of section 3.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace lca::ref::detail {

// Where a query head finds its key and value inside a cache row.
// Query head h reads kv head kv = h / (H / kv_heads):
//   key   = row[kv * kv_block, + key_len)
//   value = row[kv * kv_block + value_off, + value_len)
struct RowFormat {
  int64_t kv_heads = 1;
  int64_t kv_block = 0;
  int64_t key_len = 0;
  int64_t value_off = 0;
  int64_t value_len = 0;
  int64_t row_width = 0;
};

// Eight partial sums over i mod 8, combined in a fixed order: vectorisable, and
// the same bits whatever the pointers' alignment (streaming = prefill is
// tested bitwise, and the cache's rows sit at different offsets per chunking).
template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  T tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// Section 4 for queries q [L, H, key_len] at positions [q_start, q_start + L):
// query t sees condensed rows 0..v.condensed-1 and the rows of positions
// [v.raw_lo, t], v = visible_rows(t, policy). LCA: representatives
// 0..m(t+1)-1 and raw positions [g m(t+1), t]. MTLA (prefix plus diagonal):
// complete rows 0..floor(t/s)-1 and the running row of t, passed as "raw".
// Arguments are checked by the caller (check_attention_args).
template <class T>
Tensor<T> attend_rows(const Tensor<T>& q, int64_t q_start, const Tensor<T>& reps, const Tensor<T>& raw,
                      int64_t raw_start, double scale, const RowFormat& fmt, const Policy& policy);

// Shape and coverage checks shared by the attention entry points.
template <class T>
void check_attention_args(const char* where, const Tensor<T>& q, int64_t q_start, const Tensor<T>& reps,
                          const Tensor<T>& raw, int64_t raw_start, int64_t heads, const RowFormat& fmt,
                          const Policy& policy);

// Coverage checks shared by the condense entry points: kv rows must hold every
// group's tokens, summary rows (one per position, shape checked by the caller)
// every S_j.
template <class T>
void check_condense_args(const char* where, const Tensor<T>& kv_rows, int64_t kv_start, const Tensor<T>& summary,
                         int64_t sum_start, int64_t first, int64_t count, int64_t row_width,
                         const LcaParams& params);

// Sum of the summary rows (all values of one position) of S_j = [tau_j - g + 1, tau_j], in position order.
template <class T>
std::vector<T> summed_summary(const Tensor<T>& summary, int64_t sum_start, int64_t j, const LcaParams& params);

// alpha = softmax(scores), returns the argmax index (smallest on ties).
template <class T>
int64_t softmax_and_argmax(const std::vector<T>& scores, T* alpha) {
  int64_t best = 0;
  for (int64_t i = 1; i < static_cast<int64_t>(scores.size()); ++i)
    if (scores[i] > scores[best]) best = i;
  T sum = 0;
  for (size_t i = 0; i < scores.size(); ++i) sum += alpha[i] = std::exp(scores[i] - scores[best]);
  for (size_t i = 0; i < scores.size(); ++i) alpha[i] /= sum;
  return best;
}

}  // namespace lca::ref::detail
