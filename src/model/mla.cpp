// DeepSeek-V2, DeepSeek-V3 and MiniCPM3 on the CPU (model/mla.hpp), following
// transformers' modeling_deepseek_v2.py, modeling_deepseek_v3.py and
// modeling_minicpm3.py (5.x) and modeling_rope_utils.py (yarn, longrope).
#include "model/mla.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <tuple>

#include "lca/error.hpp"
#include "model/text_file.hpp"

namespace lca::model {

namespace {

bool is_v2(const ModelConfig& c) { return c.architecture == "DeepseekV2ForCausalLM"; }
bool is_v3(const ModelConfig& c) { return c.architecture == "DeepseekV3ForCausalLM"; }
bool is_minicpm3(const ModelConfig& c) { return c.architecture == "MiniCPM3ForCausalLM"; }

// DeepSeek's yarn_get_mscale.
double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

// Hugging Face's _compute_yarn_parameters: per frequency, a blend of the
// original (extrapolated) and the factor-scaled (interpolated) one, ramping
// between the correction dims of beta_fast and beta_slow rotations.
void yarn_rope(const ModelConfig& c, MlaArch& a) {
  const RopeScaling& rs = c.rope_scaling;
  const int64_t dim = c.mla.d_rope;
  const double base = c.rope.theta, factor = rs.factor;
  const double original = static_cast<double>(rs.original_max_position_embeddings.value_or(c.max_position_embeddings));
  auto correction_dim = [&](double rotations) {
    return static_cast<double>(dim) * std::log(original / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(correction_dim(rs.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(rs.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  a.inv_freq.resize(static_cast<size_t>(dim / 2));
  for (int64_t j = 0; j < dim / 2; ++j) {
    const double pos_freq = std::pow(base, static_cast<double>(2 * j) / static_cast<double>(dim));
    const double ramp = std::clamp((static_cast<double>(j) - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1.0 - ramp;
    a.inv_freq[j] = 1.0 / (factor * pos_freq) * (1.0 - extrapolation) + 1.0 / pos_freq * extrapolation;
  }
  if (rs.attention_factor) a.rope_factor = *rs.attention_factor;
  else if (rs.mscale_given && rs.mscale != 0 && rs.mscale_all_dim != 0)
    a.rope_factor = yarn_mscale(factor, rs.mscale) / yarn_mscale(factor, rs.mscale_all_dim);
  else a.rope_factor = yarn_mscale(factor, 1.0);
}

// Hugging Face's _compute_longrope_parameters with the short factors: the
// long ones apply only past original_max_position_embeddings, and switching
// there would re-rotate keys already in the cache, so such configs are refused.
void longrope_rope(const ModelConfig& c, MlaArch& a) {
  const RopeScaling& rs = c.rope_scaling;
  const int64_t dim = c.mla.d_rope;
  const int64_t original = rs.original_max_position_embeddings.value_or(c.max_position_embeddings);
  LCA_CHECK(c.max_position_embeddings <= original, "Model: ", in_quotes(c.source),
            ": rope_scaling longrope with max_position_embeddings ", c.max_position_embeddings,
            " beyond original_max_position_embeddings ", original,
            " is not supported by the runtime (the long factors would change the rotation of cached keys)");
  LCA_CHECK(static_cast<int64_t>(rs.short_factor.size()) == dim / 2, "Model: ", in_quotes(c.source),
            ": rope_scaling.short_factor has ", rs.short_factor.size(), " values, expected qk_rope_head_dim / 2 = ",
            dim / 2);
  a.inv_freq.resize(static_cast<size_t>(dim / 2));
  for (int64_t j = 0; j < dim / 2; ++j)
    a.inv_freq[j] =
        1.0 / (rs.short_factor[j] * std::pow(c.rope.theta, static_cast<double>(2 * j) / static_cast<double>(dim)));
  const double factor =
      rs.factor > 1 ? rs.factor : static_cast<double>(c.max_position_embeddings) / static_cast<double>(original);
  if (rs.attention_factor) a.rope_factor = *rs.attention_factor;
  else a.rope_factor = factor <= 1 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(static_cast<double>(original)));
}

void moe_arch(const ModelConfig& c, MlaArch& a) {
  const MoeConfig& m = c.moe;
  auto where = [&]() { return "Model: " + in_quotes(c.source) + ": "; };
  // Hugging Face's DeepseekV2Config / DeepseekV3Config defaults.
  a.experts = m.n_routed_experts.value_or(is_v3(c) ? 256 : 64);
  LCA_CHECK(m.num_experts_per_tok || is_v3(c), where(), "\"num_experts_per_tok\" is missing (DeepSeek-V2 has no default)");
  a.per_token = m.num_experts_per_tok.value_or(8);
  a.expert_size = m.moe_intermediate_size.value_or(is_v3(c) ? 2048 : 1407);
  a.shared = m.n_shared_experts.value_or(is_v3(c) ? 1 : 2);
  a.first_dense = m.first_k_dense_replace.value_or(is_v3(c) ? 3 : 0);
  a.routed_scaling = m.routed_scaling_factor.value_or(is_v3(c) ? 2.5 : 1.0);
  a.norm_topk_prob = m.norm_topk_prob.value_or(is_v3(c));
  LCA_CHECK(a.per_token <= a.experts, where(), "\"num_experts_per_tok\" (", a.per_token, ") exceeds \"n_routed_experts\" (",
            a.experts, ")");
  if (is_v2(c)) {
    const std::string method = m.topk_method.value_or("greedy");
    LCA_CHECK(method == "greedy" || method == "group_limited_greedy", where(), "\"topk_method\" '", method,
              "' is not supported for DeepseekV2ForCausalLM (greedy, group_limited_greedy)");
    // DeepSeek's own code normalises the top-k weights (and then skips the
    // routed scaling); Hugging Face's ignores the flag: refuse rather than guess.
    LCA_CHECK(!a.norm_topk_prob, where(),
              "\"norm_topk_prob\" true is not supported for DeepseekV2ForCausalLM (DeepSeek's and Hugging Face's "
              "code disagree on it)");
    LCA_CHECK(c.moe.scoring_func == "softmax", where(), "\"scoring_func\" '", c.moe.scoring_func,
              "' is not supported for DeepseekV2ForCausalLM (softmax)");
    a.routing = method == "greedy" ? MoeRouting::softmax_greedy : MoeRouting::softmax_group_limited;
    if (a.routing == MoeRouting::softmax_group_limited) {
      LCA_CHECK(m.n_group && m.topk_group, where(), "topk_method group_limited_greedy needs \"n_group\" and \"topk_group\"");
      a.n_group = *m.n_group;
      a.topk_group = *m.topk_group;
    }
  } else {
    const std::string method = m.topk_method.value_or("noaux_tc");
    LCA_CHECK(method == "noaux_tc", where(), "\"topk_method\" '", method,
              "' is not supported for DeepseekV3ForCausalLM (noaux_tc)");
    a.routing = MoeRouting::sigmoid_noaux_tc;
    a.n_group = m.n_group.value_or(8);
    a.topk_group = m.topk_group.value_or(4);
  }
  LCA_CHECK(a.n_group >= 1 && a.experts % a.n_group == 0 && a.topk_group >= 1 && a.topk_group <= a.n_group, where(),
            "\"n_group\" ", a.n_group, " must divide \"n_routed_experts\" ", a.experts, ", and \"topk_group\" ",
            a.topk_group, " lie in [1, n_group]");
  LCA_CHECK(a.routing != MoeRouting::sigmoid_noaux_tc || a.experts / a.n_group >= 2, where(),
            "DeepSeek-V3 routing scores groups by their top 2 experts, but a group holds ", a.experts / a.n_group);
  LCA_CHECK(a.per_token <= a.topk_group * (a.experts / a.n_group), where(), "\"num_experts_per_tok\" ", a.per_token,
            " exceeds the experts of the \"topk_group\" selected groups");
}

}  // namespace

MlaArch mla_arch(const ModelConfig& c) {
  LCA_CHECK(is_v2(c) || is_v3(c) || is_minicpm3(c), "Model: architecture ", in_quotes(c.architecture), " of ",
            in_quotes(c.source), " is not an MLA architecture of the runtime");
  c.mla.validate();
  LCA_CHECK(c.mla.d_v >= 1, "Model: ", in_quotes(c.source), ": v_head_dim must be >= 1, got ", c.mla.d_v);
  LCA_CHECK(!c.mlp_bias, "Model: ", in_quotes(c.source), ": \"mlp_bias\" true is not supported by the runtime");
  LCA_CHECK(c.hidden_act == "silu", "Model: ", in_quotes(c.source), ": \"hidden_act\" '", c.hidden_act,
            "' is not supported by the runtime (silu)");
  MlaArch a;
  a.interleaved = is_v2(c) || (is_v3(c) && c.rope_interleave);
  switch (c.rope_scaling.type) {
    case RopeScalingType::none: {
      const int64_t dim = c.mla.d_rope;
      for (int64_t j = 0; j < dim / 2; ++j)
        a.inv_freq.push_back(1.0 / std::pow(c.rope.theta, static_cast<double>(2 * j) / static_cast<double>(dim)));
      break;
    }
    case RopeScalingType::yarn: yarn_rope(c, a); break;
    case RopeScalingType::longrope: longrope_rope(c, a); break;
    default:
      detail::fail("Model: rope_scaling ", rope_scaling_type_name(c.rope_scaling.type), " of ", in_quotes(c.source),
                   " is not supported by the runtime for ", c.architecture, " (none, yarn, longrope)");
  }
  if (is_minicpm3(c)) {
    // MiniCPM3Config's defaults (those of openbmb/MiniCPM3-4B).
    a.embed_scale = c.minicpm.scale_emb.value_or(12.0);
    a.residual_scale = c.minicpm.scale_depth.value_or(1.4) / std::sqrt(static_cast<double>(c.num_hidden_layers));
    a.logits_divisor = static_cast<double>(c.hidden_size) / c.minicpm.dim_model_base.value_or(256.0);
  } else {
    moe_arch(c, a);
  }
  return a;
}

// ---- Weights ---------------------------------------------------------------------------

namespace {

MlpWeights read_mlp(const std::string& prefix, int64_t D, int64_t F, bool bias, const TensorReader& read) {
  MlpWeights m;
  m.gate = read(prefix + "gate_proj.weight", {F, D});
  m.up = read(prefix + "up_proj.weight", {F, D});
  m.down = read(prefix + "down_proj.weight", {D, F});
  if (bias) {
    m.b_gate = read(prefix + "gate_proj.bias", {F});
    m.b_up = read(prefix + "up_proj.bias", {F});
    m.b_down = read(prefix + "down_proj.bias", {D});
  } else {
    m.b_gate = m.b_up = m.b_down = Tensor<float>({0});
  }
  return m;
}

void check_mlp(const std::string& what, const MlpWeights& m, int64_t D, int64_t F) {
  const std::string g = what + " gate", u = what + " up", d = what + " down";
  expect_shape("Model", g.c_str(), m.gate, {F, D});
  expect_shape("Model", u.c_str(), m.up, {F, D});
  expect_shape("Model", d.c_str(), m.down, {D, F});
  const bool bias = m.b_gate.numel() > 0;
  expect_shape("Model", (g + " bias").c_str(), m.b_gate, {bias ? F : 0});
  expect_shape("Model", (u + " bias").c_str(), m.b_up, {bias ? F : 0});
  expect_shape("Model", (d + " bias").c_str(), m.b_down, {bias ? D : 0});
}

int64_t q_width(const ModelConfig& c) { return c.mla.heads * (c.mla.d_nope + c.mla.d_rope); }

}  // namespace

ModelWeights read_mla_weights(const ModelConfig& c, const MlaArch& arch, const TensorReader& read,
                              const TensorHas& has) {
  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.mla.heads;
  const int64_t dn = c.mla.d_nope, dr = c.mla.d_rope, dc = c.mla.d_latent, dv = c.mla.d_v;
  const Tensor<float> none({0});
  ModelWeights w;
  w.embed = read("model.embed_tokens.weight", {V, D});
  w.final_norm = read("model.norm.weight", {D});
  if (c.tie_word_embeddings) {
    w.lm_head = none;  // Hugging Face ties lm_head to the embeddings whatever the file holds
  } else {
    LCA_CHECK(has("lm_head.weight"), "Model: ", in_quotes(c.source), " has no output weight \"lm_head.weight\"",
              " and does not tie it to the embeddings");
    w.lm_head = read("lm_head.weight", {V, D});
  }
  // MTLA hyper-networks: required when the config declares "mtla", read when
  // layer 0 has one; either way every layer must hold all four tensors.
  const std::string first_hyper = mtla_tensor_name(0, "fc_c.weight");
  const bool mtla = c.mtla.has_value() || has(first_hyper);
  LCA_CHECK(!mtla || dc % 4 == 0, "Model: ", in_quotes(c.source), " holds MTLA hyper-network ", in_quotes(first_hyper),
            ", but kv_lora_rank ", dc, " is not a multiple of 4 (the hyper-network maps d_c to d_c/4)");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string a = p + "self_attn.";
    LayerWeights lw;
    lw.wk = lw.wv = lw.bq = lw.bk = lw.bv = none;
    lw.attn_norm = read(p + "input_layernorm.weight", {D});
    if (c.q_lora_rank) {
      const int64_t r = *c.q_lora_rank;
      lw.wq = none;
      lw.q_a = read(a + "q_a_proj.weight", {r, D});
      lw.b_q_a = c.attention_bias ? read(a + "q_a_proj.bias", {r}) : none;
      lw.q_a_norm = read(a + "q_a_layernorm.weight", {r});
      lw.q_b = read(a + "q_b_proj.weight", {q_width(c), r});
    } else {
      lw.wq = read(a + "q_proj.weight", {q_width(c), D});
      lw.q_a = lw.b_q_a = lw.q_a_norm = lw.q_b = none;
    }
    lw.kv_a = read(a + "kv_a_proj_with_mqa.weight", {dc + dr, D});
    lw.b_kv_a = c.attention_bias ? read(a + "kv_a_proj_with_mqa.bias", {dc + dr}) : none;
    lw.kv_a_norm = read(a + "kv_a_layernorm.weight", {dc});
    // kv_b_proj rows, per head: d_n rows of W_UK then d_v rows of W_UV.
    const Tensor<float> kv_b = read(a + "kv_b_proj.weight", {H * (dn + dv), dc});
    lw.w_uk = Tensor<float>({H, dn, dc});
    lw.w_uv = Tensor<float>({H, dv, dc});
    for (int64_t h = 0; h < H; ++h) {
      const float* head = kv_b.row(h * (dn + dv));
      std::copy_n(head, dn * dc, lw.w_uk.data() + h * dn * dc);
      std::copy_n(head + dn * dc, dv * dc, lw.w_uv.data() + h * dv * dc);
    }
    lw.wo = read(a + "o_proj.weight", {D, H * dv});
    lw.bo = c.attention_bias ? read(a + "o_proj.bias", {D}) : none;
    if (mtla) {
      const int64_t r = dc / 4;
      lw.mtla.fc_c_weight = read(mtla_tensor_name(l, "fc_c.weight"), {r, dc});
      lw.mtla.fc_c_bias = read(mtla_tensor_name(l, "fc_c.bias"), {r});
      lw.mtla.fc_p_weight = read(mtla_tensor_name(l, "fc_p.weight"), {r, dc});
      lw.mtla.fc_p_bias = read(mtla_tensor_name(l, "fc_p.bias"), {r});
    }
    lw.ffn_norm = read(p + "post_attention_layernorm.weight", {D});
    lw.router = lw.router_bias = none;
    lw.w_gate = lw.w_up = lw.w_down = none;
    lw.shared = MlpWeights{none, none, none, none, none, none};
    if (arch.is_moe_layer(l)) {
      const std::string m = p + "mlp.";
      lw.router = read(m + "gate.weight", {arch.experts, D});
      lw.router_bias = arch.routing == MoeRouting::sigmoid_noaux_tc
                           ? read(m + "gate.e_score_correction_bias", {arch.experts})
                           : none;
      for (int64_t e = 0; e < arch.experts; ++e)
        lw.experts.push_back(read_mlp(m + "experts." + std::to_string(e) + ".", D, arch.expert_size, false, read));
      if (arch.shared > 0) lw.shared = read_mlp(m + "shared_experts.", D, arch.expert_size * arch.shared, false, read);
    } else {
      MlpWeights m = read_mlp(p + "mlp.", D, c.intermediate_size, false, read);
      lw.w_gate = std::move(m.gate);
      lw.w_up = std::move(m.up);
      lw.w_down = std::move(m.down);
    }
    w.layers.push_back(std::move(lw));
  }
  return w;
}

void check_mla_weights(const ModelConfig& c, const MlaArch& arch, const ModelWeights& w) {
  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.mla.heads;
  const int64_t dn = c.mla.d_nope, dr = c.mla.d_rope, dc = c.mla.d_latent, dv = c.mla.d_v;
  const char* where = "Model";
  expect_shape(where, "embed", w.embed, {V, D});
  expect_shape(where, "final_norm", w.final_norm, {D});
  if (w.lm_head.numel() > 0) expect_shape(where, "lm_head", w.lm_head, {V, D});
  else LCA_CHECK(c.tie_word_embeddings, "Model: ", in_quotes(c.source), " has no lm_head and does not tie it to the embeddings");
  LCA_CHECK(static_cast<int64_t>(w.layers.size()) == c.num_hidden_layers, "Model: weights hold ", w.layers.size(),
            " layers, the config ", c.num_hidden_layers);
  const int64_t bias = c.attention_bias ? 1 : 0;
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    expect_shape(where, "attn_norm", lw.attn_norm, {D});
    if (c.q_lora_rank) {
      const int64_t r = *c.q_lora_rank;
      expect_shape(where, "q_a", lw.q_a, {r, D});
      expect_shape(where, "b_q_a", lw.b_q_a, {bias * r});
      expect_shape(where, "q_a_norm", lw.q_a_norm, {r});
      expect_shape(where, "q_b", lw.q_b, {q_width(c), r});
    } else {
      expect_shape(where, "wq", lw.wq, {q_width(c), D});
    }
    expect_shape(where, "kv_a", lw.kv_a, {dc + dr, D});
    expect_shape(where, "b_kv_a", lw.b_kv_a, {bias * (dc + dr)});
    expect_shape(where, "kv_a_norm", lw.kv_a_norm, {dc});
    expect_shape(where, "w_uk", lw.w_uk, {H, dn, dc});
    expect_shape(where, "w_uv", lw.w_uv, {H, dv, dc});
    expect_shape(where, "wo", lw.wo, {D, H * dv});
    expect_shape(where, "bo", lw.bo, {bias * D});
    if (lw.has_mtla() || w.layers.front().has_mtla() || c.mtla) {
      const int64_t li = static_cast<int64_t>(l);
      LCA_CHECK(lw.has_mtla(), "Model: ", in_quotes(c.source), " has no MTLA hyper-network ",
                in_quotes(mtla_tensor_name(li, "fc_c.weight")),
                c.mtla ? " (the config declares \"mtla\")" : " (layer 0 has one: every layer needs one)");
      LCA_CHECK(dc % 4 == 0, "Model: ", in_quotes(c.source), " holds MTLA hyper-networks, but kv_lora_rank ", dc,
                " is not a multiple of 4 (the hyper-network maps d_c to d_c/4)");
      const MtlaHyperNet<float>& h = lw.mtla;
      const int64_t r = dc / 4;
      for (const auto& [part, t, shape] : {std::tuple{"fc_c.weight", &h.fc_c_weight, Shape{r, dc}},
                                           std::tuple{"fc_c.bias", &h.fc_c_bias, Shape{r}},
                                           std::tuple{"fc_p.weight", &h.fc_p_weight, Shape{r, dc}},
                                           std::tuple{"fc_p.bias", &h.fc_p_bias, Shape{r}}}) {
        const std::string name = mtla_tensor_name(li, part);
        expect_shape(where, name.c_str(), *t, shape);
        expect_finite(where, name.c_str(), *t);
      }
    }
    expect_shape(where, "ffn_norm", lw.ffn_norm, {D});
    if (arch.is_moe_layer(static_cast<int64_t>(l))) {
      expect_shape(where, "router", lw.router, {arch.experts, D});
      expect_shape(where, "router_bias", lw.router_bias,
                   {arch.routing == MoeRouting::sigmoid_noaux_tc ? arch.experts : 0});
      LCA_CHECK(static_cast<int64_t>(lw.experts.size()) == arch.experts, "Model: layer ", l, " holds ",
                lw.experts.size(), " experts, the config ", arch.experts);
      for (const MlpWeights& e : lw.experts) check_mlp("expert", e, D, arch.expert_size);
      if (arch.shared > 0) check_mlp("shared expert", lw.shared, D, arch.expert_size * arch.shared);
    } else {
      LCA_CHECK(lw.experts.empty(), "Model: layer ", l, " is dense but holds experts");
      expect_shape(where, "w_gate", lw.w_gate, {c.intermediate_size, D});
      expect_shape(where, "w_up", lw.w_up, {c.intermediate_size, D});
      expect_shape(where, "w_down", lw.w_down, {D, c.intermediate_size});
    }
  }
}

// ---- Forward pieces --------------------------------------------------------------------

RopeTable rope_table(int64_t start, int64_t len, const std::vector<double>& inv_freq, double factor) {
  RopeTable t;
  t.start = start;
  t.len = len;
  t.half = static_cast<int64_t>(inv_freq.size());
  t.cos.resize(static_cast<size_t>(len * t.half));
  t.sin.resize(static_cast<size_t>(len * t.half));
  for (int64_t l = 0; l < len; ++l)
    for (int64_t j = 0; j < t.half; ++j) {
      const double angle = static_cast<double>(start + l) * inv_freq[j];
      t.cos[l * t.half + j] = static_cast<float>(std::cos(angle) * factor);
      t.sin[l * t.half + j] = static_cast<float>(std::sin(angle) * factor);
    }
  return t;
}

namespace {

// Rotates one rope vector (2 * half values) in place by row l of the table.
void rotate(float* v, const RopeTable& t, int64_t l, bool interleaved) {
  const float* c = t.cos.data() + l * t.half;
  const float* s = t.sin.data() + l * t.half;
  const int64_t step = interleaved ? 1 : t.half;  // partner offset
  for (int64_t j = 0; j < t.half; ++j) {
    float* a = interleaved ? v + 2 * j : v + j;
    float* b = a + step;
    const float x = *a, y = *b;
    *a = x * c[j] - y * s[j];
    *b = y * c[j] + x * s[j];
  }
}

}  // namespace

void mla_rows_and_queries(const ModelConfig& c, const MlaArch& arch, const LayerWeights& lw, const float* h,
                          int64_t L, const RopeTable& rope, Tensor<float>& rows, Tensor<float>& q_abs) {
  const int64_t H = c.mla.heads, dn = c.mla.d_nope, dr = c.mla.d_rope, dc = c.mla.d_latent;
  const int64_t dq = dn + dr, w = dc + dr;
  // The q_a/kv_a layernorms use DeepseekV2RMSNorm's default epsilon, not rms_norm_eps.
  constexpr double kLatentNormEps = 1e-6;
  Tensor<float> q({L, H, dq});
  if (c.q_lora_rank) {
    const int64_t r = *c.q_lora_rank;
    Tensor<float> qa({L, r}), qn({L, r});
    linear(h, L, lw.q_a, lw.b_q_a, qa.data());
    rms_norm(qa.data(), L, r, lw.q_a_norm.data(), kLatentNormEps, qn.data());
    linear(qn.data(), L, lw.q_b, Tensor<float>(), q.data());
  } else {
    linear(h, L, lw.wq, Tensor<float>(), q.data());
  }
  Tensor<float> kv({L, w});
  linear(h, L, lw.kv_a, lw.b_kv_a, kv.data());
  rows = Tensor<float>({L, w});
  for (int64_t i = 0; i < L; ++i) {
    rms_norm(kv.row(i), 1, dc, lw.kv_a_norm.data(), kLatentNormEps, rows.row(i));
    std::copy_n(kv.row(i) + dc, dr, rows.row(i) + dc);
    rotate(rows.row(i) + dc, rope, i, arch.interleaved);
  }
  // q~_h = W_UK[h]^T q^C_h: [L, d_n] x [d_n, d_c] per head, then the rotated q^R.
  q_abs = Tensor<float>({L, H, w});
  for (int64_t hd = 0; hd < H; ++hd)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(L), static_cast<int>(dc),
                static_cast<int>(dn), 1.0f, q.data() + hd * dq, static_cast<int>(H * dq),
                lw.w_uk.data() + hd * dn * dc, static_cast<int>(dc), 0.0f, q_abs.data() + hd * w,
                static_cast<int>(H * w));
  for (int64_t i = 0; i < L; ++i)
    for (int64_t hd = 0; hd < H; ++hd) {
      float* qr = q_abs.data() + (i * H + hd) * w + dc;
      std::copy_n(q.data() + (i * H + hd) * dq + dn, dr, qr);
      rotate(qr, rope, i, arch.interleaved);
    }
}

void mla_output(const ModelConfig& c, const LayerWeights& lw, const Tensor<float>& latents, float* out) {
  const int64_t H = c.mla.heads, dc = c.mla.d_latent, dv = c.mla.d_v, L = latents.dim(0);
  Tensor<float> heads({L, H * dv});
  for (int64_t hd = 0; hd < H; ++hd)  // [L, d_c] x W_UV[h]^T [d_c, d_v]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(L), static_cast<int>(dv),
                static_cast<int>(dc), 1.0f, latents.data() + hd * dc, static_cast<int>(H * dc),
                lw.w_uv.data() + hd * dv * dc, static_cast<int>(dc), 0.0f, heads.data() + hd * dv,
                static_cast<int>(H * dv));
  linear(heads.data(), L, lw.wo, lw.bo, out);
}

void mlp(const Tensor<float>& w_gate, const Tensor<float>& w_up, const Tensor<float>& w_down,
         const Tensor<float>& b_gate, const Tensor<float>& b_up, const Tensor<float>& b_down, const float* h,
         int64_t rows, float* out) {
  const int64_t F = w_gate.dim(0);
  Tensor<float> gate({rows, F}), up({rows, F});
  linear(h, rows, w_gate, b_gate, gate.data());
  linear(h, rows, w_up, b_up, up.data());
  swiglu(gate.data(), up.data(), rows * F);
  linear(gate.data(), rows, w_down, b_down, out);
}

void moe(const MlaArch& a, const LayerWeights& lw, const float* h, int64_t rows, int64_t d, float* out) {
  const int64_t E = a.experts, K = a.per_token, group = E / a.n_group;
  Tensor<float> logits({rows, E});
  linear(h, rows, lw.router, Tensor<float>(), logits.data());
  // Per expert: the tokens routed to it and their weights.
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(E));
  std::vector<std::vector<float>> weights(static_cast<size_t>(E));
  std::vector<double> scores(static_cast<size_t>(E)), choice(static_cast<size_t>(E)), group_score;
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < rows; ++t) {
    const float* z = logits.row(t);
    if (a.routing == MoeRouting::sigmoid_noaux_tc) {
      for (int64_t e = 0; e < E; ++e) {
        scores[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(z[e])));
        choice[e] = scores[e] + lw.router_bias.data()[e];
      }
    } else {
      const double top = *std::max_element(z, z + E);
      double sum = 0.0;
      for (int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(static_cast<double>(z[e]) - top);
      for (int64_t e = 0; e < E; ++e) choice[e] = scores[e] /= sum;
    }
    // Group-limited selection: experts outside the topk_group best groups drop out.
    if (a.routing != MoeRouting::softmax_greedy) {
      group_score.assign(static_cast<size_t>(a.n_group), 0.0);
      for (int64_t g = 0; g < a.n_group; ++g) {
        std::vector<double> in(choice.begin() + g * group, choice.begin() + (g + 1) * group);
        std::sort(in.begin(), in.end(), std::greater<>());
        group_score[g] = a.routing == MoeRouting::sigmoid_noaux_tc ? in[0] + in[1] : in[0];
      }
      std::vector<int64_t> groups(static_cast<size_t>(a.n_group));
      std::iota(groups.begin(), groups.end(), 0);
      std::partial_sort(groups.begin(), groups.begin() + a.topk_group, groups.end(), [&](int64_t x, int64_t y) {
        return group_score[x] > group_score[y] || (group_score[x] == group_score[y] && x < y);
      });
      std::vector<bool> keep(static_cast<size_t>(a.n_group), false);
      for (int64_t i = 0; i < a.topk_group; ++i) keep[groups[i]] = true;
      // V2 masks with 0 (scores are positive), V3 with -inf.
      for (int64_t e = 0; e < E; ++e)
        if (!keep[e / group]) choice[e] = a.routing == MoeRouting::sigmoid_noaux_tc ? -INFINITY : 0.0;
    }
    std::iota(order.begin(), order.end(), 0);
    // Ties (here and among groups) go to the smaller index: a fixed order the GPU runtime matches.
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t x, int64_t y) {
      return choice[x] > choice[y] || (choice[x] == choice[y] && x < y);
    });
    double norm = 1.0;
    if (a.routing == MoeRouting::sigmoid_noaux_tc && a.norm_topk_prob) {
      norm = 1e-20;
      for (int64_t i = 0; i < K; ++i) norm += scores[order[i]];
    }
    for (int64_t i = 0; i < K; ++i) {
      tokens[order[i]].push_back(t);
      weights[order[i]].push_back(static_cast<float>(scores[order[i]] / norm * a.routed_scaling));
    }
  }
  std::fill(out, out + rows * d, 0.0f);
  Tensor<float> in, y;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = static_cast<int64_t>(tokens[e].size());
    if (n == 0) continue;
    in = Tensor<float>({n, d});
    y = Tensor<float>({n, d});
    for (int64_t i = 0; i < n; ++i) std::copy_n(h + tokens[e][i] * d, d, in.row(i));
    mlp(lw.experts[e], in.data(), n, y.data());
    for (int64_t i = 0; i < n; ++i) {
      float* o = out + tokens[e][i] * d;
      for (int64_t j = 0; j < d; ++j) o[j] += weights[e][i] * y.row(i)[j];
    }
  }
  if (a.shared > 0) {
    Tensor<float> s({rows, d});
    mlp(lw.shared, h, rows, s.data());
    for (int64_t i = 0; i < rows * d; ++i) out[i] += s.data()[i];
  }
}

}  // namespace lca::model
