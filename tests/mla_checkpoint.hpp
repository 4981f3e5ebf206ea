// Tiny random MLA checkpoints (DeepSeek-V2, DeepSeek-V3, MiniCPM3) written as
// Hugging Face folders (config.json + model.safetensors, F32): the model
// tests (test_model_mla.cpp) and the GPU runtime's (test_gpu_model.cpp) load
// them through Model::load.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "gguf_writer.hpp"
#include "lca/tensor.hpp"
#include "test_util.hpp"

namespace lca_test::mla {

using json = nlohmann::json;
using lca::Shape;
using lca::Tensor;

enum class Arch { v2, v3, minicpm3 };

// A tiny model: its config.json and its tensors under Hugging Face's names.
struct Tiny {
  Arch arch = Arch::v2;
  int64_t D = 32, H = 3, dc = 12, dr = 6, dn = 8, dv = 7, q_lora = 0, F = 40, layers = 3, V = 53, context = 96;
  double theta = 10000.0, eps = 1e-6;
  bool bias = false, tied = false, interleave = true;
  // DeepSeek MoE.
  int64_t E = 6, K = 2, moe_F = 12, shared = 1, first_dense = 1, n_group = 1, topk_group = 1;
  std::string topk_method = "greedy";
  bool norm_topk = false;
  double rsf = 1.0;
  // MiniCPM3.
  double scale_emb = 1.0, scale_depth = 0.0, dim_model_base = 0.0;
  json rope_scaling;  // null: none
  bool rope_parameters_style = false;  // transformers 5's "rope_parameters"
  std::vector<std::pair<std::string, Tensor<float>>> tensors;

  const Tensor<float>& get(const std::string& name) const {
    for (const auto& [n, t] : tensors)
      if (n == name) return t;
    throw std::runtime_error("no tensor " + name);
  }
  bool moe_layer(int64_t l) const { return arch != Arch::minicpm3 && l >= first_dense; }
};

inline void add_weights(Tiny& m, Rng& rng) {
  auto add = [&](const std::string& name, const Shape& s, double sd, double mean = 0.0) {
    m.tensors.emplace_back(name, lca_test::randn<float>(s, rng, sd, mean));
  };
  auto sd = [](int64_t in) { return 1.0 / std::sqrt(static_cast<double>(in)); };
  const int64_t dq = m.dn + m.dr;
  add("model.embed_tokens.weight", {m.V, m.D}, m.arch == Arch::minicpm3 ? 0.3 : 1.0);
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.";
    add(p + "input_layernorm.weight", {m.D}, 0.1, 1.0);
    if (m.q_lora > 0) {
      add(a + "q_a_proj.weight", {m.q_lora, m.D}, sd(m.D));
      if (m.bias) add(a + "q_a_proj.bias", {m.q_lora}, 0.3);
      add(a + "q_a_layernorm.weight", {m.q_lora}, 0.1, 1.0);
      add(a + "q_b_proj.weight", {m.H * dq, m.q_lora}, 2 * sd(m.q_lora));
    } else {
      add(a + "q_proj.weight", {m.H * dq, m.D}, 2 * sd(m.D));
    }
    add(a + "kv_a_proj_with_mqa.weight", {m.dc + m.dr, m.D}, 2 * sd(m.D));
    if (m.bias) add(a + "kv_a_proj_with_mqa.bias", {m.dc + m.dr}, 0.3);
    add(a + "kv_a_layernorm.weight", {m.dc}, 0.1, 1.0);
    add(a + "kv_b_proj.weight", {m.H * (m.dn + m.dv), m.dc}, sd(m.dc));
    add(a + "o_proj.weight", {m.D, m.H * m.dv}, sd(m.H * m.dv));
    if (m.bias) add(a + "o_proj.bias", {m.D}, 0.3);
    add(p + "post_attention_layernorm.weight", {m.D}, 0.1, 1.0);
    auto add_mlp = [&](const std::string& q, int64_t F) {
      add(q + "gate_proj.weight", {F, m.D}, sd(m.D));
      add(q + "up_proj.weight", {F, m.D}, sd(m.D));
      add(q + "down_proj.weight", {m.D, F}, sd(F));
    };
    if (m.moe_layer(l)) {
      add(p + "mlp.gate.weight", {m.E, m.D}, 2 * sd(m.D));
      if (m.arch == Arch::v3) add(p + "mlp.gate.e_score_correction_bias", {m.E}, 0.2);
      for (int64_t e = 0; e < m.E; ++e) add_mlp(p + "mlp.experts." + std::to_string(e) + ".", m.moe_F);
      if (m.shared > 0) add_mlp(p + "mlp.shared_experts.", m.moe_F * m.shared);
    } else {
      add_mlp(p + "mlp.", m.F);
    }
  }
  add("model.norm.weight", {m.D}, 0.1, 1.0);
  if (!m.tied) add("lm_head.weight", {m.V, m.D}, sd(m.D));
}

inline json config_of(const Tiny& m) {
  static const char* kArch[] = {"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "MiniCPM3ForCausalLM"};
  static const char* kType[] = {"deepseek_v2", "deepseek_v3", "minicpm3"};
  const int i = static_cast<int>(m.arch);
  json c = {{"architectures", {kArch[i]}},
            {"model_type", kType[i]},
            {"hidden_size", m.D},
            {"intermediate_size", m.F},
            {"num_hidden_layers", m.layers},
            {"num_attention_heads", m.H},
            {"num_key_value_heads", m.H},
            {"vocab_size", m.V},
            {"max_position_embeddings", m.context},
            {"rms_norm_eps", m.eps},
            {"kv_lora_rank", m.dc},
            {"q_lora_rank", m.q_lora > 0 ? json(m.q_lora) : json(nullptr)},
            {"qk_nope_head_dim", m.dn},
            {"qk_rope_head_dim", m.dr},
            {"v_head_dim", m.dv},
            {"attention_bias", m.bias},
            {"tie_word_embeddings", m.tied},
            {"hidden_act", "silu"}};
  if (m.rope_parameters_style) {
    json rp = m.rope_scaling.is_null() ? json{{"rope_type", "default"}} : m.rope_scaling;
    rp["rope_theta"] = m.theta;
    c["rope_parameters"] = rp;
  } else {
    c["rope_theta"] = m.theta;
    c["rope_scaling"] = m.rope_scaling;
  }
  if (m.arch == Arch::minicpm3) {
    c["scale_emb"] = m.scale_emb;
    c["scale_depth"] = m.scale_depth;
    c["dim_model_base"] = m.dim_model_base;
  } else {
    c["n_routed_experts"] = m.E;
    c["num_experts_per_tok"] = m.K;
    c["moe_intermediate_size"] = m.moe_F;
    c["n_shared_experts"] = m.shared;
    c["first_k_dense_replace"] = m.first_dense;
    c["n_group"] = m.n_group;
    c["topk_group"] = m.topk_group;
    c["norm_topk_prob"] = m.norm_topk;
    c["routed_scaling_factor"] = m.rsf;
    c["topk_method"] = m.arch == Arch::v3 ? "noaux_tc" : m.topk_method;
    if (m.arch == Arch::v3) c["rope_interleave"] = m.interleave;
  }
  return c;
}

// config.json + model.safetensors (F32), skipping `drop`; `edit` may change the config.
inline void write_hf(const std::filesystem::path& dir, const Tiny& m, const std::string& drop = "",
              const std::function<void(json&)>& edit = {}) {
  std::filesystem::create_directories(dir);
  json c = config_of(m);
  if (edit) edit(c);
  lca_test::write_bytes(dir / "config.json", c.dump(1));
  std::string header = "{";
  lca_test::Bytes data;
  for (const auto& [name, t] : m.tensors) {
    if (name == drop) continue;
    json shape = t.shape();
    header += (header.size() > 1 ? "," : "") +
              json(name).dump() + ":" +
              json{{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + 4 * t.numel()}}}
                  .dump();
    data += lca_test::f32_bytes(t.vec());
  }
  header += "}";
  lca_test::write_bytes(dir / "model.safetensors", lca_test::le<uint64_t>(header.size()) + header + data);
}

// Every layer's hyper-network under the mtla package's module names
// (self_attn.hypernet_down.fc_c / fc_p, nn.Linear layout). Weights ~2/sqrt(d_c)
// and biases ~0.5, as in test_mtla.cpp: the merge weights spread over (0, 1).
// MTLA hyper-networks at nn.Linear's initial scale (std 1 / sqrt(3 d_c) for
// weights and biases), where the merge weights' logits are O(1). At 3.5x that
// scale the logits reach +-45, most sigmoid weights sit at 1e-20 and the bf16
// rounding of the GPU's activations moves them by tens of percent: sums of
// negligible terms, but no meaningful relative comparison of the rows.
inline void add_hypernets(Tiny& m, Rng& rng) {
  const int64_t r = m.dc / 4;
  const double sd = 1.0 / std::sqrt(3.0 * static_cast<double>(m.dc));
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string hn = "model.layers." + std::to_string(l) + ".self_attn.hypernet_down.";
    m.tensors.emplace_back(hn + "fc_c.weight", lca_test::randn<float>({r, m.dc}, rng, sd));
    m.tensors.emplace_back(hn + "fc_c.bias", lca_test::randn<float>({r}, rng, sd));
    m.tensors.emplace_back(hn + "fc_p.weight", lca_test::randn<float>({r, m.dc}, rng, sd));
    m.tensors.emplace_back(hn + "fc_p.bias", lca_test::randn<float>({r}, rng, sd));
  }
}

}  // namespace lca_test::mla
