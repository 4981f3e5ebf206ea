// MLA in the CPU reference: lca-spec.md sections 1, 3 and 4.
#include <cmath>

#include "lca/reference.hpp"
#include "reference/rows.hpp"

namespace lca::ref {
namespace {

// Absorbed MLA: one kv head whose key is the whole row [c ; k^R] and whose
// value is c.
detail::RowFormat absorbed_format(const MlaDims& d) {
  return {.kv_heads = 1, .kv_block = 0, .key_len = d.row_width(), .value_off = 0, .value_len = d.d_latent,
          .row_width = d.row_width()};
}

}  // namespace

template <class T>
Tensor<T> mla_absorb_queries(const Tensor<T>& q_nope, const Tensor<T>& q_rope, const Tensor<T>& w_uk,
                             const MlaDims& dims) {
  const char* where = "mla_absorb_queries";
  dims.validate();
  const int64_t H = dims.heads, dn = dims.d_nope, dc = dims.d_latent, dr = dims.d_rope;
  expect_shape(where, "q_nope", q_nope, {-1, H, dn});
  const int64_t L = q_nope.dim(0);
  expect_shape(where, "q_rope", q_rope, {L, H, dr});
  expect_shape(where, "w_uk", w_uk, {H, dn, dc});
  Tensor<T> out({L, H, dc + dr});
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h) {
      T* o = out.data() + (l * H + h) * (dc + dr);
      const T* qn = q_nope.data() + (l * H + h) * dn;
      for (int64_t n = 0; n < dn; ++n) {  // q~ = W_UK[h]^T q^C
        const T* w = w_uk.data() + (h * dn + n) * dc;
        for (int64_t c = 0; c < dc; ++c) o[c] += w[c] * qn[n];
      }
      const T* qr = q_rope.data() + (l * H + h) * dr;
      for (int64_t r = 0; r < dr; ++r) o[dc + r] = qr[r];
    }
  return out;
}

template <class T>
Tensor<T> mla_attention_decompressed(const Tensor<T>& q_nope, const Tensor<T>& q_rope, const Tensor<T>& kv_rows,
                                     const Tensor<T>& w_uk, const Tensor<T>& w_uv, int64_t q_start, double scale,
                                     const MlaDims& dims) {
  const char* where = "mla_attention_decompressed";
  dims.validate();
  const int64_t H = dims.heads, dn = dims.d_nope, dc = dims.d_latent, dr = dims.d_rope, dv = dims.d_v;
  expect_shape(where, "q_nope", q_nope, {-1, H, dn});
  const int64_t L = q_nope.dim(0);
  expect_shape(where, "q_rope", q_rope, {L, H, dr});
  expect_shape(where, "kv_rows", kv_rows, {-1, dc + dr});
  expect_shape(where, "w_uk", w_uk, {H, dn, dc});
  expect_shape(where, "w_uv", w_uv, {H, dv, dc});
  const int64_t N = kv_rows.dim(0);

  // Per head: key [W_UK c ; k^R] (dn + dr), value W_UV c (dv); plain multi-head attention.
  const int64_t block = dn + dr + dv;
  Tensor<T> rows({N, H * block});
  for (int64_t i = 0; i < N; ++i)
    for (int64_t h = 0; h < H; ++h) {
      const T* c = kv_rows.row(i);
      T* r = rows.row(i) + h * block;
      for (int64_t n = 0; n < dn; ++n) r[n] = detail::dot(w_uk.data() + (h * dn + n) * dc, c, dc);
      for (int64_t k = 0; k < dr; ++k) r[dn + k] = c[dc + k];
      for (int64_t v = 0; v < dv; ++v) r[dn + dr + v] = detail::dot(w_uv.data() + (h * dv + v) * dc, c, dc);
    }
  Tensor<T> q({L, H, dn + dr});
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h) {
      T* o = q.data() + (l * H + h) * (dn + dr);
      for (int64_t n = 0; n < dn; ++n) o[n] = q_nope.data()[(l * H + h) * dn + n];
      for (int64_t k = 0; k < dr; ++k) o[dn + k] = q_rope.data()[(l * H + h) * dr + k];
    }
  const detail::RowFormat fmt{.kv_heads = H, .kv_block = block, .key_len = dn + dr, .value_off = dn + dr,
                              .value_len = dv, .row_width = H * block};
  const LcaParams full = LcaParams::full();
  detail::check_attention_args(where, q, q_start, Tensor<T>({0, fmt.row_width}), rows, 0, H, fmt, full);
  return detail::attend_rows(q, q_start, Tensor<T>({0, fmt.row_width}), rows, 0, scale, fmt, full);
}

template <class T>
Tensor<T> mla_attention_absorbed(const Tensor<T>& q_abs, const Tensor<T>& kv_rows, int64_t q_start, double scale,
                                 const MlaDims& dims) {
  dims.validate();
  expect_shape("mla_attention_absorbed", "q_abs", q_abs, {-1, dims.heads, dims.row_width()});
  expect_shape("mla_attention_absorbed", "kv_rows", kv_rows, {-1, dims.row_width()});
  return lca_attention_mla(q_abs, q_start, Tensor<T>({0, dims.row_width()}), kv_rows, 0, scale, dims,
                           LcaParams::full());
}

template <class T>
Tensor<T> mla_up_project(const Tensor<T>& o_latent, const Tensor<T>& w_uv, const MlaDims& dims) {
  const char* where = "mla_up_project";
  dims.validate();
  const int64_t H = dims.heads, dc = dims.d_latent, dv = dims.d_v;
  expect_shape(where, "o_latent", o_latent, {-1, H, dc});
  expect_shape(where, "w_uv", w_uv, {H, dv, dc});
  const int64_t L = o_latent.dim(0);
  Tensor<T> out({L, H, dv});
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t v = 0; v < dv; ++v)
        out.data()[(l * H + h) * dv + v] =
            detail::dot(w_uv.data() + (h * dv + v) * dc, o_latent.data() + (l * H + h) * dc, dc);
  return out;
}

template <class T>
Tensor<T> mla_summary_queries(const Tensor<T>& q_abs, const MlaDims& dims, ScoreMode score) {
  dims.validate();
  const int64_t H = dims.heads, row = dims.row_width();
  expect_shape("mla_summary_queries", "q_abs", q_abs, {-1, H, row});
  const int64_t L = q_abs.dim(0);
  const int64_t width = score == ScoreMode::full ? row : dims.d_latent;
  Tensor<T> out({L, width});
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t c = 0; c < width; ++c) out.row(l)[c] += q_abs.row(l)[h * row + c];
  return out;
}

template <class T>
Condensed<T> condense_groups_mla(const Tensor<T>& kv_rows, int64_t kv_start, const Tensor<T>& summary,
                                 int64_t sum_start, int64_t first, int64_t count, double scale,
                                 const MlaDims& dims, const LcaParams& params) {
  dims.validate();
  const int64_t g = params.group, dc = dims.d_latent, row = dims.row_width();
  const int64_t width = params.score == ScoreMode::full ? row : dc;
  expect_shape("condense_groups_mla", "summary queries", summary, {-1, width});
  detail::check_condense_args("condense_groups_mla", kv_rows, kv_start, summary, sum_start, first, count, row, params);
  Condensed<T> out{Tensor<T>({count, row}), Tensor<int64_t>({count, 1}), Tensor<T>({count, 1, g})};
  // s_i = scale / (g H) * (sum over S_j and heads of the summary query) . row_i[0 : width]
  const T norm = static_cast<T>(scale / static_cast<double>(g * dims.heads));
  std::vector<T> scores(static_cast<size_t>(g));
  for (int64_t k = 0; k < count; ++k) {
    const int64_t j = first + k;
    const std::vector<T> query = detail::summed_summary(summary, sum_start, j, params);
    auto token = [&](int64_t i) { return kv_rows.row(j * g + i - kv_start); };
    for (int64_t i = 0; i < g; ++i) scores[i] = norm * detail::dot(query.data(), token(i), width);
    T* alpha = out.weights.row(k);
    const int64_t anchor = detail::softmax_and_argmax(scores, alpha);
    T* rep = out.rows.row(k);
    for (int64_t i = 0; i < g; ++i)  // semantic pooling of the latents
      for (int64_t c = 0; c < dc; ++c) rep[c] += alpha[i] * token(i)[c];
    for (int64_t r = dc; r < row; ++r) rep[r] = token(anchor)[r];  // the anchor's rotated rope key
    out.anchors.row(k)[0] = j * g + anchor;
  }
  return out;
}

template <class T>
Tensor<T> lca_attention_mla(const Tensor<T>& q_abs, int64_t q_start, const Tensor<T>& reps, const Tensor<T>& raw,
                            int64_t raw_start, double scale, const MlaDims& dims, const LcaParams& params) {
  dims.validate();
  const detail::RowFormat fmt = absorbed_format(dims);
  detail::check_attention_args("lca_attention_mla", q_abs, q_start, reps, raw, raw_start, dims.heads, fmt, params);
  return detail::attend_rows(q_abs, q_start, reps, raw, raw_start, scale, fmt, params);
}

template <class T>
Tensor<T> lca_prefill_mla(const Tensor<T>& q_abs, const Tensor<T>& kv_rows, double scale, const MlaDims& dims,
                          const LcaParams& params) {
  params.validate();
  dims.validate();
  expect_shape("lca_prefill_mla", "q_abs", q_abs, {kv_rows.dim(0), dims.heads, dims.row_width()});
  const int64_t m = condensed_groups(kv_rows.dim(0), params);
  Tensor<T> reps({0, dims.row_width()});
  if (m > 0) {
    const Tensor<T> summary = mla_summary_queries(q_abs, dims, params.score);
    reps = condense_groups_mla(kv_rows, 0, summary, 0, 0, m, scale, dims, params).rows;
  }
  return lca_attention_mla(q_abs, 0, reps, kv_rows, 0, scale, dims, params);
}

#define LCA_INSTANTIATE(T)                                                                                      \
  template Tensor<T> mla_absorb_queries(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, const MlaDims&);  \
  template Tensor<T> mla_attention_decompressed(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,           \
                                                const Tensor<T>&, const Tensor<T>&, int64_t, double,            \
                                                const MlaDims&);                                                \
  template Tensor<T> mla_attention_absorbed(const Tensor<T>&, const Tensor<T>&, int64_t, double, const MlaDims&); \
  template Tensor<T> mla_up_project(const Tensor<T>&, const Tensor<T>&, const MlaDims&);                        \
  template Tensor<T> mla_summary_queries(const Tensor<T>&, const MlaDims&, ScoreMode);                          \
  template Condensed<T> condense_groups_mla(const Tensor<T>&, int64_t, const Tensor<T>&, int64_t, int64_t,      \
                                            int64_t, double, const MlaDims&, const LcaParams&);                 \
  template Tensor<T> lca_attention_mla(const Tensor<T>&, int64_t, const Tensor<T>&, const Tensor<T>&, int64_t,  \
                                       double, const MlaDims&, const LcaParams&);                               \
  template Tensor<T> lca_prefill_mla(const Tensor<T>&, const Tensor<T>&, double, const MlaDims&, const LcaParams&);
LCA_INSTANTIATE(float)
LCA_INSTANTIATE(double)
#undef LCA_INSTANTIATE

}  // namespace lca::ref
