#include <algorithm>
#include <cmath>
#include <limits>

#include "reference/rows.hpp"

namespace lca::ref::detail {

template <class T>
Tensor<T> attend_rows(const Tensor<T>& q, int64_t q_start, const Tensor<T>& reps, const Tensor<T>& raw,
                      int64_t raw_start, double scale, const RowFormat& fmt, const Policy& policy) {
  const int64_t L = q.dim(0), H = q.dim(1);
  const int64_t heads_per_kv = H / fmt.kv_heads;
  const LcaParams* lca = std::get_if<LcaParams>(&policy);
  const T rep_bias =
      lca && lca->mass_bias == MassBias::log_g ? std::log(static_cast<T>(lca->group)) : T(0);
  const T s = static_cast<T>(scale);
  Tensor<T> out({L, H, fmt.value_len});

#pragma omp parallel
  {
    std::vector<T> logits;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t t = q_start + l;
        const Visible visible = visible_rows(t, policy);
        const int64_t m = visible.condensed, lo = visible.raw_lo;
        const int64_t kv = h / heads_per_kv;
        const int64_t key_at = kv * fmt.kv_block, value_at = key_at + fmt.value_off;
        const T* qv = q.data() + (l * H + h) * fmt.key_len;
        // Row k of the visible list: representatives first, then raw positions lo..t.
        auto row = [&](int64_t k) { return k < m ? reps.row(k) : raw.row(lo + (k - m) - raw_start); };
        const int64_t count = m + (t - lo + 1);

        logits.resize(static_cast<size_t>(count));
        T max_logit = -std::numeric_limits<T>::infinity();
        for (int64_t k = 0; k < count; ++k) {
          logits[k] = s * dot(qv, row(k) + key_at, fmt.key_len) + (k < m ? rep_bias : T(0));
          max_logit = std::max(max_logit, logits[k]);
        }
        T* o = out.data() + (l * H + h) * fmt.value_len;
        T sum = 0;
        for (int64_t k = 0; k < count; ++k) {
          const T p = std::exp(logits[k] - max_logit);
          sum += p;
          const T* v = row(k) + value_at;
#pragma omp simd
          for (int64_t c = 0; c < fmt.value_len; ++c) o[c] += p * v[c];
        }
        for (int64_t c = 0; c < fmt.value_len; ++c) o[c] /= sum;
      }
    }
  }
  return out;
}

template <class T>
void check_attention_args(const char* where, const Tensor<T>& q, int64_t q_start, const Tensor<T>& reps,
                          const Tensor<T>& raw, int64_t raw_start, int64_t heads, const RowFormat& fmt,
                          const Policy& policy) {
  const bool mtla = std::holds_alternative<MtlaParams>(policy);
  std::visit([](const auto& p) { p.validate(); }, policy);
  expect_shape(where, "queries", q, {-1, heads, fmt.key_len});
  expect_shape(where, mtla ? "complete rows" : "representatives", reps, {-1, fmt.row_width});
  expect_shape(where, mtla ? "running rows" : "raw rows", raw, {-1, fmt.row_width});
  LCA_CHECK(q.dim(0) >= 1, where, ": no queries (queries has shape ", shape_str(q.shape()), ")");
  std::visit([&](const auto& p) { check_attention_coverage(where, p, q_start, q.dim(0), reps.dim(0), raw_start, raw.dim(0)); },
             policy);
}

template <class T>
void check_condense_args(const char* where, const Tensor<T>& kv_rows, int64_t kv_start, const Tensor<T>& summary,
                         int64_t sum_start, int64_t first, int64_t count, int64_t row_width,
                         const LcaParams& params) {
  params.validate();
  LCA_CHECK(!params.is_full(), where, ": the full-attention policy has no groups to condense");
  expect_shape(where, "kv rows", kv_rows, {-1, row_width});
  check_group_coverage(where, params, first, count, kv_start, kv_rows.dim(0), sum_start, summary.dim(0));
}

template <class T>
std::vector<T> summed_summary(const Tensor<T>& summary, int64_t sum_start, int64_t j, const LcaParams& params) {
  const int64_t width = summary.row_stride();
  std::vector<T> acc(static_cast<size_t>(width), T(0));
  const int64_t tau = condensation_time(j, params);
  for (int64_t s = tau - params.group + 1; s <= tau; ++s) {
    const T* row = summary.row(s - sum_start);
    for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
  }
  return acc;
}

#define LCA_INSTANTIATE(T)                                                                                     \
  template Tensor<T> attend_rows(const Tensor<T>&, int64_t, const Tensor<T>&, const Tensor<T>&, int64_t,     \
                                 double, const RowFormat&, const Policy&);                                   \
  template void check_attention_args(const char*, const Tensor<T>&, int64_t, const Tensor<T>&,               \
                                     const Tensor<T>&, int64_t, int64_t, const RowFormat&, const Policy&);    \
  template void check_condense_args(const char*, const Tensor<T>&, int64_t, const Tensor<T>&, int64_t,        \
                                    int64_t, int64_t, int64_t, const LcaParams&);                   \
  template std::vector<T> summed_summary(const Tensor<T>&, int64_t, int64_t, const LcaParams&);
LCA_INSTANTIATE(float)
LCA_INSTANTIATE(double)
#undef LCA_INSTANTIATE

}  // namespace lca::ref::detail
