// Hugging Face config.json parsing (lca/model_config.hpp): the built-in
// presets against the published values, small hand-written configs, and every
// error case with its message checked for the field at fault.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "lca/error.hpp"
#include "lca/model_config.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using lca::AttentionKind;
using lca::ModelConfig;
using lca::RopeScalingType;

using lca_test::error_of;

// Expects parse_model_config(text, "cfg.json") to throw an lca::Error whose
// message names the source and holds every one of `parts`.
void expect_parse_error(const std::string& text, const std::vector<std::string>& parts) {
  const std::string msg = error_of([&] { lca::parse_model_config(text, "cfg.json"); });
  ASSERT_FALSE(msg.empty()) << "no error for: " << text;
  EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

// A valid Llama config with `extra` fields spliced in (later keys are
// replaced: the parser sees the last duplicate, as nlohmann::json keeps it).
std::string llama(const std::string& extra = "") {
  std::string s = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 8, "vocab_size": 1000, "intermediate_size": 1376, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

// A valid DeepSeek-V2-style MLA config with `extra` fields spliced in.
std::string mla(const std::string& extra = "") {
  std::string s = R"({"architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 1000, "intermediate_size": 512, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096, "kv_lora_rank": 64, "q_lora_rank": null, "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 32, "v_head_dim": 32)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

// ---- Presets ---------------------------------------------------------------------------

TEST(ModelConfig, PresetDeepseekV2Lite) {
  const ModelConfig c = lca::preset_config("deepseek-v2-lite");
  EXPECT_EQ(c.architecture, "DeepseekV2ForCausalLM");
  EXPECT_EQ(c.model_type, "deepseek_v2");
  ASSERT_TRUE(c.is_mla());
  EXPECT_EQ(c.mla.heads, 16);
  EXPECT_EQ(c.mla.d_latent, 512);
  EXPECT_EQ(c.mla.d_rope, 64);
  EXPECT_EQ(c.mla.d_nope, 128);
  EXPECT_EQ(c.mla.d_v, 128);
  EXPECT_EQ(c.mla.row_width(), 576);
  EXPECT_FALSE(c.q_lora_rank.has_value());
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.intermediate_size, 10944);
  EXPECT_EQ(c.max_position_embeddings, 163840);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  ASSERT_TRUE(c.torch_dtype.has_value());
  EXPECT_EQ(*c.torch_dtype, "bfloat16");
  const auto& rs = c.rope_scaling;
  EXPECT_EQ(rs.type, RopeScalingType::yarn);
  EXPECT_DOUBLE_EQ(rs.factor, 40.0);
  ASSERT_TRUE(rs.original_max_position_embeddings.has_value());
  EXPECT_EQ(*rs.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(rs.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(rs.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(rs.mscale, 0.707);
  EXPECT_DOUBLE_EQ(rs.mscale_all_dim, 0.707);
  const auto& m = c.moe;
  ASSERT_TRUE(m.any());
  EXPECT_EQ(m.n_routed_experts.value_or(-1), 64);
  EXPECT_EQ(m.n_shared_experts.value_or(-1), 2);
  EXPECT_EQ(m.num_experts_per_tok.value_or(-1), 6);
  EXPECT_EQ(m.moe_intermediate_size.value_or(-1), 1408);
  EXPECT_EQ(m.first_k_dense_replace.value_or(-1), 1);
  EXPECT_EQ(m.scoring_func, "softmax");
  EXPECT_FALSE(c.minicpm.scale_emb.has_value());
}

TEST(ModelConfig, DeepseekV2LiteSoftmaxScaleIncludesYarnMscale) {
  const ModelConfig c = lca::preset_config("deepseek-v2-lite");
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  const double expected = 1.0 / std::sqrt(192.0) * m * m;
  EXPECT_NEAR(c.softmax_scale(), expected, 1e-12);
  // The correction is not negligible: it differs from the plain scale.
  EXPECT_GT(c.softmax_scale(), c.mla.default_scale() * 1.5);
}

TEST(ModelConfig, PresetMiniCpm3_4B) {
  const ModelConfig c = lca::preset_config("minicpm3-4b");
  EXPECT_EQ(c.architecture, "MiniCPM3ForCausalLM");
  ASSERT_TRUE(c.is_mla());
  EXPECT_EQ(c.mla.heads, 40);
  EXPECT_EQ(c.mla.d_latent, 256);
  EXPECT_EQ(c.mla.d_rope, 32);
  EXPECT_EQ(c.mla.d_nope, 64);
  EXPECT_EQ(c.mla.d_v, 64);
  EXPECT_EQ(c.mla.row_width(), 288);
  ASSERT_TRUE(c.q_lora_rank.has_value());
  EXPECT_EQ(*c.q_lora_rank, 768);
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.num_hidden_layers, 62);
  EXPECT_EQ(c.intermediate_size, 6400);
  EXPECT_EQ(c.vocab_size, 73448);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::longrope);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings.value_or(-1), 32768);
  // Placeholder factor lists (the published ones are not known here), one per rope pair.
  EXPECT_EQ(c.rope_scaling.short_factor, std::vector<double>(16, 1.0));
  EXPECT_EQ(c.rope_scaling.long_factor, std::vector<double>(16, 1.0));
  EXPECT_DOUBLE_EQ(c.minicpm.scale_emb.value_or(-1), 12.0);
  EXPECT_DOUBLE_EQ(c.minicpm.scale_depth.value_or(-1), 1.4);
  EXPECT_DOUBLE_EQ(c.minicpm.dim_model_base.value_or(-1), 256.0);
  EXPECT_FALSE(c.moe.any());
  // longrope leaves the softmax scale alone: 1/sqrt(64 + 32).
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(96.0), 1e-15);
}

TEST(ModelConfig, PresetQwen25_7B) {
  const ModelConfig c = lca::preset_config("qwen2.5-7b");
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  ASSERT_FALSE(c.is_mla());
  EXPECT_EQ(c.attention, AttentionKind::gqa);
  EXPECT_EQ(c.gqa.q_heads, 28);
  EXPECT_EQ(c.gqa.kv_heads, 4);
  EXPECT_EQ(c.gqa.head_dim, 128);
  EXPECT_EQ(c.gqa.group_size(), 7);
  EXPECT_EQ(c.hidden_size, 3584);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.intermediate_size, 18944);
  EXPECT_EQ(c.vocab_size, 152064);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1000000.0);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(128.0), 1e-15);
}

TEST(ModelConfig, UnknownPresetListsKnownOnes) {
  const std::string msg = error_of([] { lca::preset_config("gpt-2"); });
  EXPECT_NE(msg.find("gpt-2"), std::string::npos) << msg;
  for (const char* k : {"deepseek-v2-lite", "minicpm3-4b", "qwen2.5-7b"})
    EXPECT_NE(msg.find(k), std::string::npos) << msg;
}

// ---- Hand-written configs ---------------------------------------------------------------

TEST(ModelConfig, LlamaDefaults) {
  const ModelConfig c = lca::parse_model_config(llama(), "cfg.json");
  EXPECT_EQ(c.source, "cfg.json");
  ASSERT_FALSE(c.is_mla());
  EXPECT_EQ(c.gqa.q_heads, 8);
  EXPECT_EQ(c.gqa.kv_heads, 8);     // default: num_attention_heads
  EXPECT_EQ(c.gqa.head_dim, 64);    // default: hidden_size / num_attention_heads
  EXPECT_EQ(c.gqa.group_size(), 1);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.torch_dtype.has_value());
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
  EXPECT_FALSE(c.moe.any());
  EXPECT_NEAR(c.softmax_scale(), 0.125, 1e-15);
}

TEST(ModelConfig, LlamaExplicitHeadDimAndLlama3Scaling) {
  const ModelConfig c = lca::parse_model_config(
      llama(R"("num_key_value_heads": 2, "head_dim": 128, "rope_theta": 500000.0, "tie_word_embeddings": true,
               "torch_dtype": "float16", "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"),
      "cfg.json");
  EXPECT_EQ(c.gqa.kv_heads, 2);
  EXPECT_EQ(c.gqa.head_dim, 128);  // not 512 / 8
  EXPECT_EQ(c.gqa.group_size(), 4);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype.value_or(""), "float16");
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings.value_or(-1), 8192);
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(128.0), 1e-15);
}

TEST(ModelConfig, Qwen2SmallConfig) {
  const std::string text = R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "intermediate_size": 4864,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    "tie_word_embeddings": true, "rope_scaling": {"type": "linear", "factor": 2}})";
  const ModelConfig c = lca::parse_model_config(text, "qwen.json");
  EXPECT_EQ(c.gqa.q_heads, 14);
  EXPECT_EQ(c.gqa.kv_heads, 2);
  EXPECT_EQ(c.gqa.head_dim, 64);
  EXPECT_EQ(c.gqa.group_size(), 7);
  EXPECT_EQ(c.gqa.row_width(), 2 * 2 * 64);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::linear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
}

TEST(ModelConfig, DeepseekV3StyleMoeAndNullFieldsAsAbsent) {
  const ModelConfig c = lca::parse_model_config(
      mla(R"("q_lora_rank": 96, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 8,
             "topk_group": 4, "norm_topk_prob": true, "routed_scaling_factor": 2.5, "n_routed_experts": 16,
             "num_experts_per_tok": 4, "rope_theta": null, "torch_dtype": null, "rope_scaling": null)"),
      "cfg.json");
  EXPECT_EQ(c.q_lora_rank.value_or(-1), 96);
  EXPECT_EQ(c.moe.scoring_func, "sigmoid");
  EXPECT_EQ(c.moe.topk_method.value_or(""), "noaux_tc");
  EXPECT_EQ(c.moe.n_group.value_or(-1), 8);
  EXPECT_EQ(c.moe.topk_group.value_or(-1), 4);
  EXPECT_EQ(c.moe.norm_topk_prob.value_or(false), true);
  EXPECT_DOUBLE_EQ(c.moe.routed_scaling_factor.value_or(-1), 2.5);
  EXPECT_FALSE(c.moe.n_shared_experts.has_value());
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_FALSE(c.torch_dtype.has_value());
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(48.0), 1e-15);
}

TEST(ModelConfig, YarnWithoutMscaleAllDimOrFactorAboveOneKeepsPlainScale) {
  const double plain = 1.0 / std::sqrt(48.0);
  const ModelConfig a =
      lca::parse_model_config(mla(R"("rope_scaling": {"type": "yarn", "factor": 4, "mscale": 1})"), "cfg.json");
  EXPECT_NEAR(a.softmax_scale(), plain, 1e-15);
  const ModelConfig b = lca::parse_model_config(
      mla(R"("rope_scaling": {"type": "yarn", "factor": 1, "mscale_all_dim": 1.0})"), "cfg.json");
  EXPECT_NEAR(b.softmax_scale(), plain, 1e-15);
  const ModelConfig d = lca::parse_model_config(
      mla(R"("rope_scaling": {"rope_type": "yarn", "factor": 4, "mscale_all_dim": 1.0})"), "cfg.json");
  const double m = 0.1 * std::log(4.0) + 1.0;
  EXPECT_NEAR(d.softmax_scale(), plain * m * m, 1e-15);
}

TEST(ModelConfig, RopeTypeDefaultMeansNone) {
  const ModelConfig c =
      lca::parse_model_config(llama(R"("rope_scaling": {"rope_type": "default", "type": "default"})"), "cfg.json");
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
}

TEST(ModelConfig, LoadFromFolder) {
  char tmpl[] = "/tmp/lca_model_config_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir(tmpl);
  {
    std::FILE* f = std::fopen((dir / "config.json").c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string text = llama(R"("num_key_value_heads": 4)");
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  const ModelConfig c = lca::load_model_config(dir.string());
  EXPECT_EQ(c.gqa.kv_heads, 4);
  EXPECT_EQ(c.source, (dir / "config.json").string());
  fs::remove_all(dir);
  // A folder without config.json: the error names the file.
  const std::string msg = error_of([&] { lca::load_model_config(dir.string()); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

// ---- Errors ------------------------------------------------------------------------------

TEST(ModelConfigErrors, InvalidJson) { expect_parse_error("{\"hidden_size\": ", {"not valid JSON"}); }

TEST(ModelConfigErrors, NotAnObject) { expect_parse_error("[1, 2]", {"an array", "expected a JSON object"}); }

TEST(ModelConfigErrors, ArchitecturesMissingEmptyOrWrongType) {
  expect_parse_error(R"({"hidden_size": 1})", {"\"architectures\"", "missing"});
  expect_parse_error(R"({"architectures": []})", {"\"architectures\"", "empty"});
  expect_parse_error(R"({"architectures": "LlamaForCausalLM"})", {"\"architectures\"", "expected an array"});
  expect_parse_error(R"({"architectures": [3]})", {"\"architectures\"", "expected a string"});
}

TEST(ModelConfigErrors, UnsupportedArchitectureListsSupported) {
  expect_parse_error(R"({"architectures": ["GPT2LMHeadModel"]})",
                     {"\"architectures\"", "GPT2LMHeadModel", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM",
                      "MiniCPM3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"});
}

TEST(ModelConfigErrors, RequiredFieldMissing) {
  for (const char* f : {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
                        "rms_norm_eps", "max_position_embeddings"}) {
    std::string text = llama();
    const std::string key = std::string("\"") + f + "\"";
    const auto pos = text.find(key);
    ASSERT_NE(pos, std::string::npos);
    text.replace(pos, key.size(), "\"renamed_field\"");
    expect_parse_error(text, {key, "missing"});
  }
  for (const char* f : {"kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"}) {
    std::string text = mla();
    const std::string key = std::string("\"") + f + "\"";
    const auto pos = text.find(key);
    ASSERT_NE(pos, std::string::npos);
    text.replace(pos, key.size(), "\"renamed_field\"");
    expect_parse_error(text, {key, "missing"});
  }
}

TEST(ModelConfigErrors, WrongJsonType) {
  expect_parse_error(llama(R"("hidden_size": "512")"), {"\"hidden_size\"", "a string", "expected an integer"});
  expect_parse_error(llama(R"("hidden_size": 512.5)"), {"\"hidden_size\"", "expected an integer"});
  expect_parse_error(llama(R"("num_attention_heads": null)"), {"\"num_attention_heads\"", "null"});
  expect_parse_error(llama(R"("rms_norm_eps": "1e-5")"), {"\"rms_norm_eps\"", "expected a number"});
  expect_parse_error(llama(R"("tie_word_embeddings": 1)"), {"\"tie_word_embeddings\"", "expected a boolean"});
  expect_parse_error(llama(R"("torch_dtype": 16)"), {"\"torch_dtype\"", "expected a string"});
  expect_parse_error(llama(R"("rope_scaling": "yarn")"), {"\"rope_scaling\"", "expected an object"});
  expect_parse_error(mla(R"("q_lora_rank": "none")"), {"\"q_lora_rank\"", "expected an integer"});
  expect_parse_error(mla(R"("n_routed_experts": 1.5)"), {"\"n_routed_experts\"", "expected an integer"});
  expect_parse_error(mla(R"("scoring_func": true)"), {"\"scoring_func\"", "expected a string"});
  expect_parse_error(mla(R"("scale_emb": [12])"), {"\"scale_emb\"", "expected a number"});
}

TEST(ModelConfigErrors, OutOfRange) {
  expect_parse_error(llama(R"("num_attention_heads": 0)"), {"\"num_attention_heads\"", ">= 1", "got 0"});
  expect_parse_error(llama(R"("hidden_size": -4)"), {"\"hidden_size\"", ">= 1"});
  expect_parse_error(llama(R"("num_key_value_heads": 3)"),
                     {"\"num_key_value_heads\"", "does not divide", "\"num_attention_heads\""});
  expect_parse_error(llama(R"("num_key_value_heads": 0)"), {"\"num_key_value_heads\"", ">= 1"});
  expect_parse_error(llama(R"("hidden_size": 500)"), {"\"hidden_size\"", "not divisible", "head_dim"});
  expect_parse_error(llama(R"("head_dim": 63)"), {"\"head_dim\"", "even"});
  expect_parse_error(llama(R"("rms_norm_eps": 0)"), {"\"rms_norm_eps\"", "> 0"});
  expect_parse_error(llama(R"("rope_theta": -1.0)"), {"\"rope_theta\"", "> 0"});
  expect_parse_error(mla(R"("qk_rope_head_dim": 15)"), {"\"qk_rope_head_dim\"", "even", "15"});
  expect_parse_error(mla(R"("qk_rope_head_dim": 0)"), {"\"qk_rope_head_dim\"", ">= 2"});
  expect_parse_error(mla(R"("kv_lora_rank": 0)"), {"\"kv_lora_rank\"", ">= 1"});
  expect_parse_error(mla(R"("q_lora_rank": 0)"), {"\"q_lora_rank\"", ">= 1"});
  expect_parse_error(mla(R"("n_routed_experts": 4, "num_experts_per_tok": 6)"),
                     {"\"num_experts_per_tok\"", "\"n_routed_experts\""});
  expect_parse_error(llama(R"("hidden_size": 99999999999999999999)"), {"\"hidden_size\""});
}

TEST(ModelConfigErrors, RopeScalingFields) {
  expect_parse_error(llama(R"("rope_scaling": {"type": "ntk"})"),
                     {"\"rope_scaling.type\"", "'ntk'", "yarn", "llama3", "linear", "dynamic", "longrope"});
  expect_parse_error(llama(R"("rope_scaling": {"rope_type": "su"})"), {"\"rope_scaling.rope_type\"", "'su'"});
  expect_parse_error(llama(R"("rope_scaling": {"factor": 2.0})"), {"\"rope_scaling.type\"", "missing"});
  expect_parse_error(llama(R"("rope_scaling": {"type": "linear", "rope_type": "yarn", "factor": 2})"),
                     {"\"rope_scaling.rope_type\"", "disagrees"});
  expect_parse_error(llama(R"("rope_scaling": {"type": "linear"})"), {"\"rope_scaling.factor\"", "missing"});
  expect_parse_error(llama(R"("rope_scaling": {"type": "dynamic", "factor": 0})"), {"\"rope_scaling.factor\"", "> 0"});
  expect_parse_error(llama(R"("rope_scaling": {"type": "yarn", "factor": "40"})"),
                     {"\"rope_scaling.factor\"", "expected a number"});
  expect_parse_error(llama(R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                                                "high_freq_factor": 4})"),
                     {"\"rope_scaling.original_max_position_embeddings\"", "missing"});
  expect_parse_error(llama(R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "high_freq_factor": 4,
                                                "original_max_position_embeddings": 8192})"),
                     {"\"rope_scaling.low_freq_factor\"", "missing"});
  expect_parse_error(llama(R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                                                "high_freq_factor": 1, "original_max_position_embeddings": 8192})"),
                     {"\"rope_scaling.high_freq_factor\"", "low_freq_factor"});
}

}  // namespace
