#include <cmath>
#include <string>

#include "lca/error.hpp"
#include "lca/params.hpp"

namespace lca {

void LcaParams::validate() const {
  LCA_CHECK(group >= 1, "LcaParams: group (g) must be >= 1, got ", group);
  LCA_CHECK(window >= 0, "LcaParams: window (w) must be >= 0, got ", window);
}

std::string LcaParams::describe() const {
  if (is_full()) return "full";
  return "lca(w=" + std::to_string(window) + ", g=" + std::to_string(group) +
         ", score=" + (score == ScoreMode::latent ? "latent" : "full") +
         ", key=" + (key_mode == KeyMode::pooled ? "pooled" : "anchor") +
         (mass_bias == MassBias::log_g ? ", mass_bias=log_g" : "") + ")";
}

void MtlaParams::validate() const {
  LCA_CHECK(down_rate >= 1, "MtlaParams: down_rate (s) must be >= 1, got ", down_rate);
}

std::string MtlaParams::describe() const { return "mtla(s=" + std::to_string(down_rate) + ")"; }

template <class T>
void MtlaHyperNet<T>::validate(const MlaDims& dims) const {
  const char* where = "MtlaHyperNet";
  const int64_t dc = dims.d_latent;
  LCA_CHECK(dc >= 4 && dc % 4 == 0, where, ": d_latent (d_c) must be a positive multiple of 4 (fc_c and fc_p map ",
            "R^d_c to R^(d_c/4)), got ", dc);
  const int64_t out = dc / 4;
  auto check = [&](const char* name, const Tensor<T>& t, const Shape& shape) {
    LCA_CHECK(t.rank() > 0, where, ": ", name, " is missing (expected shape ", shape_str(shape), ")");
    expect_shape(where, name, t, shape);
    expect_finite(where, name, t);
  };
  check("fc_c_weight", fc_c_weight, {out, dc});
  check("fc_c_bias", fc_c_bias, {out});
  check("fc_p_weight", fc_p_weight, {out, dc});
  check("fc_p_bias", fc_p_bias, {out});
}
template struct MtlaHyperNet<float>;
template struct MtlaHyperNet<double>;

double MlaDims::default_scale() const { return 1.0 / std::sqrt(static_cast<double>(d_nope + d_rope)); }

void MlaDims::validate() const {
  LCA_CHECK(heads >= 1, "MlaDims: heads must be >= 1, got ", heads);
  LCA_CHECK(d_latent >= 1, "MlaDims: d_latent must be >= 1, got ", d_latent);
  LCA_CHECK(d_rope >= 2 && d_rope % 2 == 0, "MlaDims: d_rope must be even and >= 2, got ", d_rope);
  LCA_CHECK(d_nope >= 0 && d_v >= 0, "MlaDims: d_nope and d_v must be >= 0, got ", d_nope, " and ", d_v);
}

void RopeParams::validate() const {
  LCA_CHECK(theta > 0 && std::isfinite(theta), "RopeParams: theta must be finite and > 0, got ", theta);
}

double GqaDims::default_scale() const { return 1.0 / std::sqrt(static_cast<double>(head_dim)); }

void GqaDims::validate() const {
  LCA_CHECK(kv_heads >= 1, "GqaDims: kv_heads must be >= 1, got ", kv_heads);
  LCA_CHECK(q_heads >= 1 && q_heads % kv_heads == 0, "GqaDims: q_heads (", q_heads,
            ") must be a positive multiple of kv_heads (", kv_heads, ")");
  LCA_CHECK(head_dim >= 2 && head_dim % 2 == 0, "GqaDims: head_dim must be even and >= 2 (RoPE pairs), got ",
            head_dim);
}

void check_group_coverage(const char* where, const LcaParams& p, int64_t first, int64_t count, int64_t kv_start,
                          int64_t kv_len, int64_t sum_start, int64_t sum_len) {
  LCA_CHECK(first >= 0 && count >= 0, where, ": group range first=", first, " count=", count, " is invalid");
  if (count == 0) return;
  const int64_t g = p.group, lo = first * g, hi = (first + count) * g;
  LCA_CHECK(kv_start <= lo && kv_start + kv_len >= hi, where, ": kv rows cover positions [", kv_start, ", ",
            kv_start + kv_len, "), but groups ", first, "..", first + count - 1, " need [", lo, ", ", hi, ")");
  const int64_t s_lo = condensation_time(first, p) - g + 1, s_hi = condensation_time(first + count - 1, p) + 1;
  LCA_CHECK(sum_start <= s_lo && sum_start + sum_len >= s_hi, where, ": summary queries cover positions [",
            sum_start, ", ", sum_start + sum_len, "), but groups ", first, "..", first + count - 1, " need [", s_lo,
            ", ", s_hi, ")");
}

void check_attention_coverage(const char* where, const LcaParams& p, int64_t q_start, int64_t q_len, int64_t reps,
                              int64_t raw_start, int64_t raw_len) {
  LCA_CHECK(q_start >= 0, where, ": q_start must be >= 0, got ", q_start);
  const int64_t last = q_start + q_len - 1;
  const int64_t need_reps = condensed_groups(last + 1, p);
  LCA_CHECK(reps >= need_reps, where, ": query at position ", last, " sees ", need_reps,
            " representatives, but only ", reps, " were given");
  const int64_t lo = first_raw_position(q_start + 1, p);
  LCA_CHECK(raw_start >= 0 && raw_start <= lo && raw_start + raw_len > last, where, ": raw rows cover positions [",
            raw_start, ", ", raw_start + raw_len, "), but queries at [", q_start, ", ", last + 1, ") need [", lo,
            ", ", last + 1, ")");
}

void check_attention_coverage(const char* where, const MtlaParams& p, int64_t q_start, int64_t q_len,
                              int64_t complete, int64_t run_start, int64_t run_len) {
  LCA_CHECK(q_start >= 0, where, ": q_start must be >= 0, got ", q_start);
  const int64_t last = q_start + q_len - 1;
  const int64_t need = mtla_complete_rows(last, p);
  LCA_CHECK(complete >= need, where, ": query at position ", last, " sees ", need, " complete rows, but only ",
            complete, " were given");
  LCA_CHECK(run_start <= q_start && run_start + run_len > last, where, ": running rows cover positions [", run_start,
            ", ", run_start + run_len, "), but queries at [", q_start, ", ", last + 1, ") need their own rows [",
            q_start, ", ", last + 1, ")");
}

}  // namespace lca
