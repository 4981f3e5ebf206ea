// MTLA in the CPU reference: mtla-spec.md sections 1-4. The attention is the
// absorbed MLA attention of mla.cpp with MTLA's visibility.
#include <algorithm>
#include <cmath>

#include "lca/reference.hpp"
#include "reference/rows.hpp"

namespace lca::ref {
namespace {

detail::RowFormat absorbed_format(const MlaDims& d) {
  return {.kv_heads = 1, .kv_block = 0, .key_len = d.row_width(), .value_off = 0, .value_len = d.d_latent,
          .row_width = d.row_width()};
}

// y = W x + b for an nn.Linear layout: W [out, in], b [out].
template <class T>
std::vector<T> affine(const Tensor<T>& w, const Tensor<T>& b, const T* x) {
  const int64_t out = w.dim(0), in = w.dim(1);
  std::vector<T> y(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) y[o] = detail::dot(w.row(o), x, in) + b.data()[o];
  return y;
}

}  // namespace

template <class T>
Tensor<T> mtla_chunk_code(int64_t k, int64_t d) {
  LCA_CHECK(d >= 2 && d % 2 == 0, "mtla_chunk_code: d must be even and >= 2, got ", d);
  LCA_CHECK(k >= 0, "mtla_chunk_code: chunk index k must be >= 0, got ", k);
  Tensor<T> pe({d});
  for (int64_t j = 0; j < d / 2; ++j) {
    // Angles in double whatever T is: one code per chunk for every precision.
    const double angle = static_cast<double>(k) * std::pow(10000.0, -2.0 * static_cast<double>(j) / static_cast<double>(d));
    pe.data()[2 * j] = static_cast<T>(std::sin(angle));
    pe.data()[2 * j + 1] = static_cast<T>(std::cos(angle));
  }
  return pe;
}

template <class T>
Tensor<T> mtla_merge_weights(const Tensor<T>& kv_rows, int64_t start, const MlaDims& dims, const MtlaParams& params,
                             const MtlaHyperNet<T>& hyper) {
  const char* where = "mtla_merge_weights";
  dims.validate();
  params.validate();
  hyper.validate(dims);
  expect_shape(where, "kv_rows", kv_rows, {-1, dims.row_width()});
  LCA_CHECK(start >= 0, where, ": start must be >= 0, got ", start);
  const int64_t L = kv_rows.dim(0), s = params.down_rate;
  Tensor<T> w({L});
  std::vector<T> chunk_key;  // fc_c(PE(k)), shared by the tokens of chunk k
  for (int64_t l = 0; l < L; ++l) {
    const int64_t i = start + l;
    if (l == 0 || i % s == 0) chunk_key = affine(hyper.fc_c_weight, hyper.fc_c_bias, mtla_chunk_code<T>(i / s, dims.d_latent).data());
    const std::vector<T> token_key = affine(hyper.fc_p_weight, hyper.fc_p_bias, kv_rows.row(l));
    const T logit = detail::dot(chunk_key.data(), token_key.data(), static_cast<int64_t>(chunk_key.size()));
    w.data()[l] = T(1) / (T(1) + std::exp(-logit));
  }
  return w;
}

template <class T>
Tensor<T> mtla_running_rows(const Tensor<T>& kv_rows, const Tensor<T>& weights, int64_t start, const Tensor<T>& open,
                            const MlaDims& dims, const MtlaParams& params) {
  const char* where = "mtla_running_rows";
  dims.validate();
  params.validate();
  expect_shape(where, "kv_rows", kv_rows, {-1, dims.row_width()});
  const int64_t L = kv_rows.dim(0), dc = dims.d_latent, row = dims.row_width(), s = params.down_rate;
  expect_shape(where, "weights", weights, {L});
  LCA_CHECK(start >= 0, where, ": start must be >= 0, got ", start);
  if (start % s != 0) expect_shape(where, "open (the running sum of the chunk open at start)", open, {dc});
  Tensor<T> out({L, row});
  for (int64_t l = 0; l < L; ++l) {
    const int64_t t = start + l;
    const T* c = kv_rows.row(l);
    const T w = weights.data()[l];
    T* o = out.row(l);
    // The first token of a chunk starts the sum (w c, not 0 + w c: the same
    // bits, -0 included, whichever chunking got here).
    const T* prev = t % s == 0 ? nullptr : (l == 0 ? open.data() : out.row(l - 1));
    for (int64_t k = 0; k < dc; ++k) o[k] = prev ? prev[k] + w * c[k] : w * c[k];
    for (int64_t r = dc; r < row; ++r) o[r] = c[r];  // the latest token's rope key
  }
  return out;
}

template <class T>
Tensor<T> mtla_cache_rows(const Tensor<T>& running, const MtlaParams& params) {
  params.validate();
  LCA_CHECK(running.rank() == 2, "mtla_cache_rows: running rows must be [N, row], got shape ",
            shape_str(running.shape()));
  const int64_t N = running.dim(0), s = params.down_rate, rows = mtla_rows(N, params);
  Tensor<T> out({rows, running.dim(1)});
  for (int64_t k = 0; k < rows; ++k) {
    const T* src = running.row(std::min((k + 1) * s, N) - 1);
    std::copy(src, src + running.dim(1), out.row(k));
  }
  return out;
}

template <class T>
Tensor<T> mtla_attention_mla(const Tensor<T>& q_abs, int64_t q_start, const Tensor<T>& complete,
                             const Tensor<T>& running, int64_t run_start, double scale, const MlaDims& dims,
                             const MtlaParams& params) {
  dims.validate();
  const detail::RowFormat fmt = absorbed_format(dims);
  detail::check_attention_args("mtla_attention_mla", q_abs, q_start, complete, running, run_start, dims.heads, fmt,
                               Policy(params));
  return detail::attend_rows(q_abs, q_start, complete, running, run_start, scale, fmt, Policy(params));
}

template <class T>
Tensor<T> mtla_prefill_mla(const Tensor<T>& q_abs, const Tensor<T>& kv_rows, double scale, const MlaDims& dims,
                           const MtlaParams& params, const MtlaHyperNet<T>& hyper) {
  dims.validate();
  params.validate();
  expect_shape("mtla_prefill_mla", "q_abs", q_abs, {kv_rows.dim(0), dims.heads, dims.row_width()});
  const Tensor<T> weights = mtla_merge_weights(kv_rows, 0, dims, params, hyper);
  const Tensor<T> running = mtla_running_rows(kv_rows, weights, 0, Tensor<T>(), dims, params);
  return mtla_attention_mla(q_abs, 0, mtla_cache_rows(running, params), running, 0, scale, dims, params);
}

#define LCA_INSTANTIATE(T)                                                                                        \
  template Tensor<T> mtla_chunk_code(int64_t, int64_t);                                                           \
  template Tensor<T> mtla_merge_weights(const Tensor<T>&, int64_t, const MlaDims&, const MtlaParams&,             \
                                        const MtlaHyperNet<T>&);                                                  \
  template Tensor<T> mtla_running_rows(const Tensor<T>&, const Tensor<T>&, int64_t, const Tensor<T>&,            \
                                       const MlaDims&, const MtlaParams&);                                        \
  template Tensor<T> mtla_cache_rows(const Tensor<T>&, const MtlaParams&);                                        \
  template Tensor<T> mtla_attention_mla(const Tensor<T>&, int64_t, const Tensor<T>&, const Tensor<T>&, int64_t,   \
                                        double, const MlaDims&, const MtlaParams&);                               \
  template Tensor<T> mtla_prefill_mla(const Tensor<T>&, const Tensor<T>&, double, const MlaDims&,                 \
                                      const MtlaParams&, const MtlaHyperNet<T>&);
LCA_INSTANTIATE(float)
LCA_INSTANTIATE(double)
#undef LCA_INSTANTIATE

}  // namespace lca::ref
