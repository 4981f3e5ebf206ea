// GQA in the CPU reference: lca-spec.md section 5 (and 4 with K^/V^).
#include "lca/reference.hpp"
#include "reference/rows.hpp"

namespace lca::ref {
namespace {

// Row = per kv head [k ; v]; query head h reads kv head h / (q_heads / kv_heads).
detail::RowFormat gqa_format(const GqaDims& d) {
  return {.kv_heads = d.kv_heads, .kv_block = 2 * d.head_dim, .key_len = d.head_dim, .value_off = d.head_dim,
          .value_len = d.head_dim, .row_width = d.row_width()};
}

}  // namespace

template <class T>
Tensor<T> gqa_pack_rows(const Tensor<T>& k, const Tensor<T>& v, const GqaDims& dims) {
  dims.validate();
  const int64_t kvh = dims.kv_heads, d = dims.head_dim;
  expect_shape("gqa_pack_rows", "k", k, {-1, kvh, d});
  expect_shape("gqa_pack_rows", "v", v, {k.dim(0), kvh, d});
  Tensor<T> rows({k.dim(0), dims.row_width()});
  for (int64_t i = 0; i < k.dim(0); ++i)
    for (int64_t h = 0; h < kvh; ++h)
      for (int64_t c = 0; c < d; ++c) {
        rows.row(i)[h * 2 * d + c] = k.row(i)[h * d + c];
        rows.row(i)[h * 2 * d + d + c] = v.row(i)[h * d + c];
      }
  return rows;
}

template <class T>
Tensor<T> gqa_attention(const Tensor<T>& q, const Tensor<T>& kv_rows, int64_t q_start, double scale,
                        const GqaDims& dims) {
  dims.validate();
  expect_shape("gqa_attention", "q", q, {-1, dims.q_heads, dims.head_dim});
  expect_shape("gqa_attention", "kv_rows", kv_rows, {-1, dims.row_width()});
  return lca_attention_gqa(q, q_start, Tensor<T>({0, dims.row_width()}), kv_rows, 0, scale, dims,
                           LcaParams::full());
}

template <class T>
Tensor<T> gqa_summary_queries(const Tensor<T>& q, const GqaDims& dims) {
  dims.validate();
  const int64_t Hq = dims.q_heads, kvh = dims.kv_heads, d = dims.head_dim, per = dims.group_size();
  expect_shape("gqa_summary_queries", "q", q, {-1, Hq, d});
  Tensor<T> out({q.dim(0), kvh, d});
  for (int64_t l = 0; l < q.dim(0); ++l)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t c = 0; c < d; ++c) out.row(l)[(h / per) * d + c] += q.row(l)[h * d + c];
  return out;
}

template <class T>
Condensed<T> condense_groups_gqa(const Tensor<T>& kv_rows, int64_t kv_start, const Tensor<T>& summary,
                                 int64_t sum_start, int64_t first, int64_t count, double scale,
                                 const GqaDims& dims, const RopeParams& rope, const LcaParams& params) {
  dims.validate();
  rope.validate();
  const char* where = "condense_groups_gqa";
  const int64_t g = params.group, kvh = dims.kv_heads, d = dims.head_dim;
  expect_shape(where, "summary queries", summary, {-1, kvh, d});
  detail::check_condense_args(where, kv_rows, kv_start, summary, sum_start, first, count, dims.row_width(), params);
  Condensed<T> out{Tensor<T>({count, dims.row_width()}), Tensor<int64_t>({count, kvh}), Tensor<T>({count, kvh, g})};
  const T norm = static_cast<T>(scale / static_cast<double>(g * dims.group_size()));
  std::vector<T> scores(static_cast<size_t>(g)), key(static_cast<size_t>(d));
  for (int64_t k = 0; k < count; ++k) {
    const int64_t j = first + k;
    const std::vector<T> query = detail::summed_summary(summary, sum_start, j, params);  // [kvh * d]
    auto token = [&](int64_t i) { return kv_rows.row(j * g + i - kv_start); };
    for (int64_t h = 0; h < kvh; ++h) {
      const int64_t k_at = h * 2 * d, v_at = k_at + d;
      for (int64_t i = 0; i < g; ++i) scores[i] = norm * detail::dot(query.data() + h * d, token(i) + k_at, d);
      T* alpha = out.weights.row(k) + h * g;
      const int64_t anchor = detail::softmax_and_argmax(scores, alpha);
      const int64_t anchor_pos = j * g + anchor;
      out.anchors.row(k)[h] = anchor_pos;
      T* rep = out.rows.row(k);
      for (int64_t i = 0; i < g; ++i)
        for (int64_t c = 0; c < d; ++c) rep[v_at + c] += alpha[i] * token(i)[v_at + c];
      if (params.key_mode == KeyMode::anchor) {
        for (int64_t c = 0; c < d; ++c) rep[k_at + c] = token(anchor)[k_at + c];
        continue;
      }
      // pooled: Rot(I_j) sum_i alpha_i Rot(i)^{-1} k_i
      for (int64_t i = 0; i < g; ++i) {
        key.assign(token(i) + k_at, token(i) + k_at + d);
        rope_rotate(key.data(), d, -(j * g + i), rope);
        for (int64_t c = 0; c < d; ++c) rep[k_at + c] += alpha[i] * key[c];
      }
      rope_rotate(rep + k_at, d, anchor_pos, rope);
    }
  }
  return out;
}

template <class T>
Tensor<T> lca_attention_gqa(const Tensor<T>& q, int64_t q_start, const Tensor<T>& reps, const Tensor<T>& raw,
                            int64_t raw_start, double scale, const GqaDims& dims, const LcaParams& params) {
  dims.validate();
  const detail::RowFormat fmt = gqa_format(dims);
  detail::check_attention_args("lca_attention_gqa", q, q_start, reps, raw, raw_start, dims.q_heads, fmt, params);
  return detail::attend_rows(q, q_start, reps, raw, raw_start, scale, fmt, params);
}

template <class T>
Tensor<T> lca_prefill_gqa(const Tensor<T>& q, const Tensor<T>& kv_rows, double scale, const GqaDims& dims,
                          const RopeParams& rope, const LcaParams& params) {
  params.validate();
  dims.validate();
  expect_shape("lca_prefill_gqa", "q", q, {kv_rows.dim(0), dims.q_heads, dims.head_dim});
  const int64_t m = condensed_groups(kv_rows.dim(0), params);
  Tensor<T> reps({0, dims.row_width()});
  if (m > 0)
    reps = condense_groups_gqa(kv_rows, 0, gqa_summary_queries(q, dims), 0, 0, m, scale, dims, rope, params).rows;
  return lca_attention_gqa(q, 0, reps, kv_rows, 0, scale, dims, params);
}

#define LCA_INSTANTIATE(T)                                                                                       \
  template Tensor<T> gqa_pack_rows(const Tensor<T>&, const Tensor<T>&, const GqaDims&);                          \
  template Tensor<T> gqa_attention(const Tensor<T>&, const Tensor<T>&, int64_t, double, const GqaDims&);         \
  template Tensor<T> gqa_summary_queries(const Tensor<T>&, const GqaDims&);                                      \
  template Condensed<T> condense_groups_gqa(const Tensor<T>&, int64_t, const Tensor<T>&, int64_t, int64_t,       \
                                            int64_t, double, const GqaDims&, const RopeParams&,                  \
                                            const LcaParams&);                                                   \
  template Tensor<T> lca_attention_gqa(const Tensor<T>&, int64_t, const Tensor<T>&, const Tensor<T>&, int64_t,   \
                                       double, const GqaDims&, const LcaParams&);                                \
  template Tensor<T> lca_prefill_gqa(const Tensor<T>&, const Tensor<T>&, double, const GqaDims&,                 \
                                     const RopeParams&, const LcaParams&);
LCA_INSTANTIATE(float)
LCA_INSTANTIATE(double)
#undef LCA_INSTANTIATE

}  // namespace lca::ref
