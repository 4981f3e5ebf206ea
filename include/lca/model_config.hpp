// Reading a Hugging Face model configuration (config.json).
//
// parse_model_config() turns the JSON text of a config.json into a plain
// ModelConfig: the attention layout (MLA for DeepSeek-V2/V3 and MiniCPM3, GQA
// for Qwen2 and Llama), the common sizes, the rotary base and its scaling, and
// the optional DeepSeek MoE and MiniCPM3 fields, and lca's optional "mtla". Every bad input throws
// lca::Error naming the source and the field at fault.
//
// Conventions: an optional field given as JSON null counts as absent (its
// default applies); a required field must be present and non-null, except
// q_lora_rank, which must be present but may be null (no query compression).
// Integer fields must be JSON integers (2048.0 is refused); floating-point
// fields accept any JSON number.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lca/params.hpp"

namespace lca {

enum class AttentionKind { mla, gqa };

enum class RopeScalingType { none, yarn, llama3, linear, dynamic, longrope };
const char* rope_scaling_type_name(RopeScalingType t);  // "none", "yarn", ...

// "rope_scaling" (null or absent: type none). The type comes from "rope_type"
// or "type" (both given: they must agree); "default" means none.
struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  // Required (> 0) for linear, dynamic, yarn and llama3; optional for longrope.
  double factor = 1.0;
  // Required for llama3; optional otherwise.
  std::optional<int64_t> original_max_position_embeddings;
  // yarn (defaults as in DeepSeek's modeling code).
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  bool mscale_given = false;  // "mscale" present: Hugging Face's yarn attention factor differs without it
  std::optional<double> attention_factor;  // yarn and longrope: overrides the derived cos/sin factor
  // longrope: per-frequency divisors (qk_rope_head_dim / 2 values each).
  std::vector<double> short_factor, long_factor;
  // llama3 (both required for that type).
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
};

// DeepSeek MoE fields, each recorded only when the config holds it (non-null).
struct MoeConfig {
  std::optional<int64_t> n_routed_experts;
  std::optional<int64_t> n_shared_experts;
  std::optional<int64_t> num_experts_per_tok;
  std::optional<int64_t> moe_intermediate_size;
  std::optional<int64_t> first_k_dense_replace;
  std::optional<double> routed_scaling_factor;
  std::optional<int64_t> n_group;
  std::optional<int64_t> topk_group;
  std::optional<std::string> topk_method;
  std::optional<bool> norm_topk_prob;
  std::string scoring_func = "softmax";  // DeepSeek-V3: "sigmoid"
  bool any() const {
    return n_routed_experts || n_shared_experts || num_experts_per_tok || moe_intermediate_size ||
           first_k_dense_replace || routed_scaling_factor || n_group || topk_group || topk_method || norm_topk_prob;
  }
};

// MiniCPM3's muP-style scalings, each recorded only when present.
struct MiniCpmScaling {
  std::optional<double> scale_emb;
  std::optional<double> scale_depth;
  std::optional<double> dim_model_base;
};

struct ModelConfig {
  std::string source;        // the file (or label) the config came from
  std::string architecture;  // architectures[0], e.g. "DeepseekV2ForCausalLM"
  std::string model_type;    // "model_type" when present, else ""
  AttentionKind attention = AttentionKind::gqa;

  // MLA (attention == mla): heads, kv_lora_rank, qk_rope/qk_nope/v head dims.
  MlaDims mla;
  std::optional<int64_t> q_lora_rank;  // null: queries are not compressed
  // GQA (attention == gqa).
  GqaDims gqa;

  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t vocab_size = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 0.0;
  RopeParams rope;  // theta = rope_theta (default 10000), or rope_parameters.rope_theta
  // "rope_scaling", or transformers 5's "rope_parameters" (rope_type and scaling fields).
  RopeScaling rope_scaling;
  bool attention_bias = false;    // "attention_bias" (MLA: q_a_proj, kv_a_proj_with_mqa, o_proj)
  bool mlp_bias = false;          // "mlp_bias"
  std::string hidden_act = "silu";  // "hidden_act"
  bool rope_interleave = true;    // DeepSeek-V3 "rope_interleave": pairs (2j, 2j+1), else (j, j + d/2)
  bool tie_word_embeddings = false;
  std::optional<std::string> torch_dtype;

  MoeConfig moe;
  MiniCpmScaling minicpm;
  // "mtla": {"down_rate": s} (lca's own field, docs/mtla-checkpoints.md): the
  // checkpoint was trained with MTLA at down rate s and holds every layer's
  // hyper-network. MLA architectures only; kv_lora_rank a multiple of 4.
  std::optional<MtlaParams> mtla;

  bool is_mla() const { return attention == AttentionKind::mla; }
  int64_t num_attention_heads() const { return is_mla() ? mla.heads : gqa.q_heads; }
  // 1/sqrt(qk_nope + qk_rope) (MLA) or 1/sqrt(head_dim) (GQA), times mscale^2
  // for yarn scaling with mscale_all_dim > 0, where
  // mscale = 0.1 * mscale_all_dim * ln(factor) + 1 if factor > 1, else 1
  // (DeepSeek's yarn_get_mscale).
  double softmax_scale() const;
};

// The architectures parse_model_config accepts, comma-separated.
const char* supported_architectures();

// Parses config.json text; `source` names it in error messages.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
// Reads and parses dir/config.json.
ModelConfig load_model_config(const std::string& dir);
// Built-in configs: "deepseek-v2-lite", "minicpm3-4b", "qwen2.5-7b".
ModelConfig preset_config(const std::string& name);

}  // namespace lca
