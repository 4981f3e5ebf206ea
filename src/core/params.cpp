#include <cmath>
#include <sstream>

#include "lca/error.hpp"
#include "lca/params.hpp"

namespace lca {

void LcaParams::validate() const {
  LCA_CHECK(group >= 1, "LcaParams: group (g) must be >= 1, got ", group);
  LCA_CHECK(window >= 0, "LcaParams: window (w) must be >= 0, got ", window);
}

std::string LcaParams::describe() const {
  if (is_full()) return "full";
  std::ostringstream os;
  os << "lca(w=" << window << ", g=" << group
     << ", score=" << (score == ScoreMode::latent ? "latent" : "full")
     << ", key=" << (key_mode == KeyMode::pooled ? "pooled" : "anchor")
     << (mass_bias == MassBias::log_g ? ", mass_bias=log_g" : "") << ")";
  return os.str();
}

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

}  // namespace lca
