// The CPU runtime: loading (GGUF or Hugging Face safetensors) into one f32
// weight set, and the forward pass through per-layer condensed caches. Llama
// and Qwen2 (GQA) here; the MLA architectures' pieces are in model/mla.cpp.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>

#include "lca/error.hpp"
#include "lca/gguf.hpp"
#include "lca/model.hpp"
#include "lca/safetensors.hpp"
#include "model/layers.hpp"
#include "model/mla.hpp"
#include "model/text_file.hpp"

namespace lca {

namespace {

using model::in_quotes;

struct ArchName {
  const char* gguf;  // general.architecture
  const char* hf;    // config.json architectures[0]
};
constexpr ArchName kArchs[] = {{"llama", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}};

bool is_qwen2(const ModelConfig& c) { return c.architecture == "Qwen2ForCausalLM"; }

// Reads tensors by their name in the source file, with the shape the config implies.
using Reader = std::function<Tensor<float>(const std::string& name, const Shape& shape)>;
using Has = std::function<bool(const std::string& name)>;

// llama.cpp's converter reorders each head's rows of attn_q/attn_k of Llama
// models from the half-split rotary layout (pairs (j, j + d/2)) to the
// interleaved one (pairs (2j, 2j + 1)): row i * d/2 + j went to row 2j + i.
// This puts them back, so the weights equal Hugging Face's.
Tensor<float> unpermute_rope_rows(const Tensor<float>& w, int64_t heads, int64_t head_dim) {
  Tensor<float> out(w.shape());
  const int64_t half = head_dim / 2, cols = w.numel() / w.dim(0);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < half; ++j) {
        const float* src = w.data() + (h * head_dim + 2 * j + i) * cols;
        std::copy(src, src + cols, out.data() + (h * head_dim + i * half + j) * cols);
      }
  return out;
}

bool is_mla_arch(const ModelConfig& c) {
  return c.architecture == "DeepseekV2ForCausalLM" || c.architecture == "DeepseekV3ForCausalLM" ||
         c.architecture == "MiniCPM3ForCausalLM";
}

void check_common(const ModelConfig& c) {
  LCA_CHECK(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.vocab_size > 0 && c.intermediate_size > 0,
            "Model: config ", in_quotes(c.source), " has a non-positive size (hidden ", c.hidden_size, ", layers ",
            c.num_hidden_layers, ", vocab ", c.vocab_size, ", intermediate ", c.intermediate_size, ")");
  LCA_CHECK(c.rms_norm_eps > 0, "Model: config ", in_quotes(c.source), ": rms_norm_eps must be > 0, got ",
            c.rms_norm_eps);
  c.rope.validate();
}

void check_supported(const ModelConfig& c) {
  if (c.is_mla()) {
    LCA_CHECK(is_mla_arch(c), "Model: architecture ", in_quotes(c.architecture), " of ", in_quotes(c.source),
              " is not supported by the runtime (supported: ", supported_model_architectures(), ")");
    check_common(c);
    model::mla_arch(c);
    return;
  }
  bool known = false;
  for (const auto& a : kArchs) known = known || c.architecture == a.hf;
  LCA_CHECK(known, "Model: architecture ", in_quotes(c.architecture), " of ", in_quotes(c.source),
            " is not supported by the runtime (supported: ", supported_model_architectures(), ")");
  LCA_CHECK(c.rope_scaling.type == RopeScalingType::none, "Model: rope scaling ",
            rope_scaling_type_name(c.rope_scaling.type), " of ", in_quotes(c.source),
            " is not supported by the runtime (plain RoPE only)");
  c.gqa.validate();
  check_common(c);
}

// Reads every weight. `names` maps a role to the file's tensor name.
struct WeightNames {
  std::string embed, final_norm, lm_head;
  std::function<std::string(int64_t layer, const char* role)> layer;  // role: "attn_norm", "wq", "bq", ...
};

ModelWeights read_weights(const ModelConfig& c, const WeightNames& names, const Reader& read, const Has& has,
                          bool unpermute_qk) {
  const int64_t D = c.hidden_size, V = c.vocab_size, F = c.intermediate_size;
  const int64_t hd = c.gqa.head_dim, q_dim = c.gqa.q_heads * hd, kv_dim = c.gqa.kv_heads * hd;
  ModelWeights w;
  w.embed = read(names.embed, {V, D});
  w.final_norm = read(names.final_norm, {D});
  if (has(names.lm_head)) {
    w.lm_head = read(names.lm_head, {V, D});
  } else {
    LCA_CHECK(c.tie_word_embeddings, "Model: ", in_quotes(c.source), " has no output weight ", in_quotes(names.lm_head),
              " and does not tie it to the embeddings");
    w.lm_head = Tensor<float>({0});
  }
  // Qwen2 always has q/k/v biases; Llama may (attention_bias).
  const bool bias = is_qwen2(c) || has(names.layer(0, "bq"));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights lw;
    auto n = [&](const char* role) { return names.layer(l, role); };
    lw.attn_norm = read(n("attn_norm"), {D});
    lw.wq = read(n("wq"), {q_dim, D});
    lw.wk = read(n("wk"), {kv_dim, D});
    lw.wv = read(n("wv"), {kv_dim, D});
    lw.wo = read(n("wo"), {D, q_dim});
    if (bias) {
      lw.bq = read(n("bq"), {q_dim});
      lw.bk = read(n("bk"), {kv_dim});
      lw.bv = read(n("bv"), {kv_dim});
    } else {
      lw.bq = lw.bk = lw.bv = Tensor<float>({0});
    }
    if (unpermute_qk) {
      lw.wq = unpermute_rope_rows(lw.wq, c.gqa.q_heads, hd);
      lw.wk = unpermute_rope_rows(lw.wk, c.gqa.kv_heads, hd);
      if (bias) {
        lw.bq = unpermute_rope_rows(lw.bq, c.gqa.q_heads, hd);
        lw.bk = unpermute_rope_rows(lw.bk, c.gqa.kv_heads, hd);
      }
    }
    lw.ffn_norm = read(n("ffn_norm"), {D});
    lw.w_gate = read(n("w_gate"), {F, D});
    lw.w_up = read(n("w_up"), {F, D});
    lw.w_down = read(n("w_down"), {D, F});
    w.layers.push_back(std::move(lw));
  }
  return w;
}

}  // namespace

std::string mtla_tensor_name(int64_t layer, const std::string& part) {
  return "model.layers." + std::to_string(layer) + ".self_attn.hypernet_down." + part;
}

const char* supported_model_architectures() {
  return "LlamaForCausalLM (gguf: llama), Qwen2ForCausalLM (gguf: qwen2), DeepseekV2ForCausalLM, "
         "DeepseekV3ForCausalLM, MiniCPM3ForCausalLM (Hugging Face folders)";
}

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  ModelConfig c;
  c.source = f.path();
  for (const auto& a : kArchs)
    if (arch == a.gguf) c.architecture = a.hf;
  LCA_CHECK(!c.architecture.empty(), "gguf file ", in_quotes(f.path()), ": architecture ", in_quotes(arch),
            " is not supported by the runtime (supported: ", supported_model_architectures(), ")");
  c.model_type = arch;
  c.attention = AttentionKind::gqa;
  const std::string p = arch + ".";
  c.hidden_size = f.get_int(p + "embedding_length");
  c.num_hidden_layers = f.get_int(p + "block_count");
  c.intermediate_size = f.get_int(p + "feed_forward_length");
  c.max_position_embeddings = f.get_int(p + "context_length");
  c.gqa.q_heads = f.get_int(p + "attention.head_count");
  c.gqa.kv_heads = f.has(p + "attention.head_count_kv") ? f.get_int(p + "attention.head_count_kv") : c.gqa.q_heads;
  LCA_CHECK(c.gqa.q_heads > 0 && c.gqa.kv_heads > 0 && c.gqa.q_heads % c.gqa.kv_heads == 0, "gguf file ",
            in_quotes(f.path()), ": head counts ", c.gqa.q_heads, " (query) and ", c.gqa.kv_heads,
            " (key/value) must be positive, the first a multiple of the second");
  if (f.has(p + "attention.key_length")) {
    c.gqa.head_dim = f.get_int(p + "attention.key_length");
  } else {
    LCA_CHECK(c.hidden_size % c.gqa.q_heads == 0, "gguf file ", in_quotes(f.path()), ": embedding_length ",
              c.hidden_size, " is not divisible by the head count ", c.gqa.q_heads);
    c.gqa.head_dim = c.hidden_size / c.gqa.q_heads;
  }
  if (f.has(p + "rope.dimension_count"))
    LCA_CHECK(f.get_int(p + "rope.dimension_count") == c.gqa.head_dim, "gguf file ", in_quotes(f.path()),
              ": rope.dimension_count ", f.get_int(p + "rope.dimension_count"), " differs from the head dimension ",
              c.gqa.head_dim, " (partial rotary is not supported)");
  c.rms_norm_eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  c.rope.theta = f.has(p + "rope.freq_base") ? f.get_float(p + "rope.freq_base") : 10000.0;
  if (f.has(p + "rope.scaling.type")) {
    const std::string t = f.get_string(p + "rope.scaling.type");
    LCA_CHECK(t == "none", "gguf file ", in_quotes(f.path()), ": rope scaling ", in_quotes(t),
              " is not supported by the runtime (plain RoPE only)");
  }
  // Llama-3.1-style scaling comes as per-frequency factors in a tensor.
  LCA_CHECK(!f.contains("rope_freqs.weight"), "gguf file ", in_quotes(f.path()),
            ": rope scaling by frequency factors (tensor rope_freqs.weight, Llama 3.1) is not supported by the "
            "runtime (plain RoPE only)");
  if (f.has(p + "vocab_size")) c.vocab_size = f.get_int(p + "vocab_size");
  else if (f.contains("token_embd.weight") && f.info("token_embd.weight").shape.size() == 2)
    c.vocab_size = f.info("token_embd.weight").shape[0];
  c.tie_word_embeddings = !f.contains("output.weight");
  return c;
}

// ---- Model ----------------------------------------------------------------------------

Model::Model(ModelConfig config, ModelWeights weights) : config_(std::move(config)), weights_(std::move(weights)) {
  check_supported(config_);
  const ModelConfig& c = config_;
  if (c.is_mla()) {
    model::check_mla_weights(c, model::mla_arch(c), weights_);
    return;
  }
  const int64_t D = c.hidden_size, V = c.vocab_size, F = c.intermediate_size, hd = c.gqa.head_dim;
  const int64_t q_dim = c.gqa.q_heads * hd, kv_dim = c.gqa.kv_heads * hd;
  const char* where = "Model";
  expect_shape(where, "embed", weights_.embed, {V, D});
  expect_shape(where, "final_norm", weights_.final_norm, {D});
  if (weights_.lm_head.numel() > 0) expect_shape(where, "lm_head", weights_.lm_head, {V, D});
  LCA_CHECK(static_cast<int64_t>(weights_.layers.size()) == c.num_hidden_layers, "Model: weights hold ",
            weights_.layers.size(), " layers, the config ", c.num_hidden_layers);
  const bool bias = weights_.layers.front().bq.numel() > 0;
  for (const LayerWeights& l : weights_.layers) {
    expect_shape(where, "attn_norm", l.attn_norm, {D});
    expect_shape(where, "wq", l.wq, {q_dim, D});
    expect_shape(where, "wk", l.wk, {kv_dim, D});
    expect_shape(where, "wv", l.wv, {kv_dim, D});
    expect_shape(where, "wo", l.wo, {D, q_dim});
    expect_shape(where, "bq", l.bq, {bias ? q_dim : 0});
    expect_shape(where, "bk", l.bk, {bias ? kv_dim : 0});
    expect_shape(where, "bv", l.bv, {bias ? kv_dim : 0});
    expect_shape(where, "ffn_norm", l.ffn_norm, {D});
    expect_shape(where, "w_gate", l.w_gate, {F, D});
    expect_shape(where, "w_up", l.w_up, {F, D});
    expect_shape(where, "w_down", l.w_down, {D, F});
    LCA_CHECK(!l.has_mtla(), "Model: ", in_quotes(c.source), " (", c.architecture,
              ") holds MTLA hyper-networks, but MTLA condenses MLA latents and this is a GQA model");
  }
}

const Tensor<float>& Model::output_weight() const {
  return weights_.lm_head.numel() > 0 ? weights_.lm_head : weights_.embed;
}

Model Model::from_gguf(const GgufFile& f) {
  ModelConfig c = gguf_model_config(f);
  check_supported(c);
  WeightNames names;
  names.embed = "token_embd.weight";
  names.final_norm = "output_norm.weight";
  names.lm_head = "output.weight";
  names.layer = [](int64_t l, const char* role) {
    static const std::pair<const char*, const char*> kRoles[] = {
        {"attn_norm", "attn_norm.weight"}, {"wq", "attn_q.weight"},       {"wk", "attn_k.weight"},
        {"wv", "attn_v.weight"},           {"wo", "attn_output.weight"},  {"bq", "attn_q.bias"},
        {"bk", "attn_k.bias"},             {"bv", "attn_v.bias"},         {"ffn_norm", "ffn_norm.weight"},
        {"w_gate", "ffn_gate.weight"},     {"w_up", "ffn_up.weight"},     {"w_down", "ffn_down.weight"}};
    for (const auto& [r, n] : kRoles)
      if (std::string(role) == r) return "blk." + std::to_string(l) + "." + n;
    return std::string();
  };
  auto read = [&](const std::string& n, const Shape& s) { return f.read(n, s); };
  auto has = [&](const std::string& n) { return f.contains(n); };
  // Only Llama's q/k rows were permuted by the converter (Qwen2 keeps the half-split layout).
  ModelWeights w = read_weights(c, names, read, has, c.model_type == "llama");
  return Model(std::move(c), std::move(w));
}

Model Model::from_checkpoint(const Checkpoint& ckpt, const ModelConfig& config) {
  check_supported(config);
  auto read = [&](const std::string& n, const Shape& s) { return ckpt.read(n, s); };
  auto has = [&](const std::string& n) { return ckpt.contains(n); };
  if (config.is_mla()) return Model(config, model::read_mla_weights(config, model::mla_arch(config), read, has));
  WeightNames names;
  names.embed = "model.embed_tokens.weight";
  names.final_norm = "model.norm.weight";
  names.lm_head = "lm_head.weight";
  names.layer = [](int64_t l, const char* role) {
    static const std::pair<const char*, const char*> kRoles[] = {
        {"attn_norm", "input_layernorm.weight"},
        {"wq", "self_attn.q_proj.weight"},
        {"wk", "self_attn.k_proj.weight"},
        {"wv", "self_attn.v_proj.weight"},
        {"wo", "self_attn.o_proj.weight"},
        {"bq", "self_attn.q_proj.bias"},
        {"bk", "self_attn.k_proj.bias"},
        {"bv", "self_attn.v_proj.bias"},
        {"ffn_norm", "post_attention_layernorm.weight"},
        {"w_gate", "mlp.gate_proj.weight"},
        {"w_up", "mlp.up_proj.weight"},
        {"w_down", "mlp.down_proj.weight"}};
    for (const auto& [r, n] : kRoles)
      if (std::string(role) == r) return "model.layers." + std::to_string(l) + "." + n;
    return std::string();
  };
  ModelWeights w = read_weights(config, names, read, has, false);
  return Model(config, std::move(w));
}

Model Model::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const ModelConfig c = load_model_config(path);
    return from_checkpoint(Checkpoint::open(path), c);
  }
  LCA_CHECK(fs::exists(path, ec), "Model::load: model path ", in_quotes(path), " does not exist");
  return from_gguf(GgufFile::open(path));
}

// ---- Sequence -------------------------------------------------------------------------

namespace {

// The cache's attention, on one thread for a single token: its work is too
// small to pay for waking a team, and on a loaded machine a team's barrier
// waits for whichever thread is descheduled (decode ran 10x slower).
Tensor<float> attend(CondensedKvCache& cache, const Tensor<float>& rows, const Tensor<float>& q) {
  if (rows.dim(0) > 1) return cache.forward(rows, q);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  try {
    Tensor<float> out = cache.forward(rows, q);
    omp_set_num_threads(threads);
    return out;
  } catch (...) {
    omp_set_num_threads(threads);
    throw;
  }
}

}  // namespace

Sequence::Sequence(const Model& model, const Policy& policy, DType storage)
    : model_(&model), policy_(policy), storage_(storage) {
  const ModelConfig& c = model.config();
  caches_.reserve(static_cast<size_t>(c.num_hidden_layers));
  if (const auto* mtla = std::get_if<MtlaParams>(&policy)) {
    mtla->validate();
    LCA_CHECK(c.is_mla(), "Sequence: MTLA needs an MLA model; ", in_quotes(c.source), " (", c.architecture,
              ") is a GQA model");
    LCA_CHECK(model.has_mtla(), "Sequence: model ", in_quotes(c.source), " has no MTLA hyper-networks (",
              mtla_tensor_name(0, "fc_c.weight"), " ...); MTLA needs a checkpoint trained with them");
    const ModelWeights& w = model.weights();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      caches_.push_back(CondensedKvCache::mtla(c.mla, c.softmax_scale(), *mtla, w.layers[l].mtla, storage));
    return;
  }
  const LcaParams& params = std::get<LcaParams>(policy);
  params.validate();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    caches_.push_back(c.is_mla() ? CondensedKvCache::mla(c.mla, c.softmax_scale(), params, storage)
                                 : CondensedKvCache::gqa(c.gqa, c.rope, c.softmax_scale(), params, storage));
}

const LcaParams& Sequence::params() const {
  const auto* p = std::get_if<LcaParams>(&policy_);
  LCA_CHECK(p, "Sequence::params: the sequence runs MTLA, not LCA (use policy())");
  return *p;
}

int64_t Sequence::cache_bytes() const {
  int64_t b = 0;
  for (const auto& cache : caches_) b += cache.bytes();
  return b;
}

int64_t Sequence::full_cache_bytes() const {
  const ModelConfig& c = model_->config();
  const int64_t row = c.is_mla() ? c.mla.row_width() : c.gqa.row_width();
  return n_ * row * dtype_size(storage_) * static_cast<int64_t>(caches_.size());
}

Tensor<float> Sequence::forward(std::span<const int64_t> tokens, bool all_logits) {
  const ModelConfig& c = model_->config();
  const ModelWeights& w = model_->weights();
  const int64_t L = static_cast<int64_t>(tokens.size());
  LCA_CHECK(!failed_, "Sequence::forward: an earlier forward failed midway; start a new Sequence");
  LCA_CHECK(L >= 1, "Sequence::forward: tokens is empty");
  for (int64_t i = 0; i < L; ++i)
    LCA_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size, "Sequence::forward: token ", tokens[i], " at index ", i,
              " is outside the vocabulary [0, ", c.vocab_size, ")");
  LCA_CHECK(n_ + L <= c.max_position_embeddings || c.max_position_embeddings <= 0, "Sequence::forward: ", n_ + L,
            " tokens exceed the model's context of ", c.max_position_embeddings);

  const int64_t D = c.hidden_size;
  Tensor<float> x({L, D}), h({L, D}), o({L, D});
  for (int64_t i = 0; i < L; ++i) std::copy_n(w.embed.row(tokens[i]), D, x.row(i));
  // Past the checks above only an internal failure can throw; the caches of
  // earlier layers would then hold tokens the later ones lack, so the sequence
  // refuses further use.
  try {
    if (c.is_mla()) forward_mla(x);
    else forward_gqa(x);
  } catch (...) {
    failed_ = true;
    throw;
  }
  n_ += L;

  const int64_t first = all_logits ? 0 : L - 1, count = L - first;
  Tensor<float> normed({count, D});
  model::rms_norm(x.row(first), count, D, w.final_norm.data(), c.rms_norm_eps, normed.data());
  if (c.is_mla()) {  // MiniCPM3 divides the final hidden states by hidden_size / dim_model_base
    const float divisor = static_cast<float>(model::mla_arch(c).logits_divisor);
    if (divisor != 1.0f)
      for (float& v : normed.vec()) v /= divisor;
  }
  Tensor<float> logits({count, c.vocab_size});
  model::linear(normed.data(), count, model_->output_weight(), Tensor<float>(), logits.data());
  return logits;
}

void Sequence::forward_gqa(Tensor<float>& x) {
  const ModelConfig& c = model_->config();
  const ModelWeights& w = model_->weights();
  const int64_t L = x.dim(0), D = c.hidden_size, F = c.intermediate_size, hd = c.gqa.head_dim;
  const int64_t Hq = c.gqa.q_heads, Hkv = c.gqa.kv_heads, kv_dim = Hkv * hd;
  Tensor<float> h({L, D}), k({L, kv_dim}), v({L, kv_dim}), rows({L, 2 * kv_dim});
  Tensor<float> q({L, Hq, hd}), o({L, D}), gate({L, F}), up({L, F});
  const model::RopeTable rope = model::rope_table(n_, L, hd, c.rope);
  for (size_t layer = 0; layer < w.layers.size(); ++layer) {
    const LayerWeights& lw = w.layers[layer];
    model::rms_norm(x.data(), L, D, lw.attn_norm.data(), c.rms_norm_eps, h.data());
    model::linear(h.data(), L, lw.wq, lw.bq, q.data());
    model::linear(h.data(), L, lw.wk, lw.bk, k.data());
    model::linear(h.data(), L, lw.wv, lw.bv, v.data());
    model::apply_rope(q.data(), Hq, rope);
    model::apply_rope(k.data(), Hkv, rope);
    // Cache rows: per kv head [k ; v] (the layout of ref::gqa_pack_rows).
    for (int64_t i = 0; i < L; ++i)
      for (int64_t g = 0; g < Hkv; ++g) {
        std::copy_n(k.row(i) + g * hd, hd, rows.row(i) + g * 2 * hd);
        std::copy_n(v.row(i) + g * hd, hd, rows.row(i) + g * 2 * hd + hd);
      }
    const Tensor<float> attn = attend(caches_[layer], rows, q);  // [L, Hq, hd]
    model::linear(attn.data(), L, lw.wo, Tensor<float>(), o.data());
    for (int64_t i = 0; i < L * D; ++i) x.data()[i] += o.data()[i];

    model::rms_norm(x.data(), L, D, lw.ffn_norm.data(), c.rms_norm_eps, h.data());
    model::linear(h.data(), L, lw.w_gate, Tensor<float>(), gate.data());
    model::linear(h.data(), L, lw.w_up, Tensor<float>(), up.data());
    model::swiglu(gate.data(), up.data(), L * F);
    model::linear(gate.data(), L, lw.w_down, Tensor<float>(), o.data());
    for (int64_t i = 0; i < L * D; ++i) x.data()[i] += o.data()[i];
  }
}

void Sequence::forward_mla(Tensor<float>& x) {
  const ModelConfig& c = model_->config();
  const ModelWeights& w = model_->weights();
  const model::MlaArch arch = model::mla_arch(c);
  const int64_t L = x.dim(0), D = c.hidden_size;
  const float embed_scale = static_cast<float>(arch.embed_scale);
  const float residual_scale = static_cast<float>(arch.residual_scale);
  if (embed_scale != 1.0f)
    for (float& v : x.vec()) v *= embed_scale;
  Tensor<float> h({L, D}), o({L, D}), rows, q_abs;
  const model::RopeTable rope = model::rope_table(n_, L, arch.inv_freq, arch.rope_factor);
  for (size_t layer = 0; layer < w.layers.size(); ++layer) {
    const LayerWeights& lw = w.layers[layer];
    model::rms_norm(x.data(), L, D, lw.attn_norm.data(), c.rms_norm_eps, h.data());
    model::mla_rows_and_queries(c, arch, lw, h.data(), L, rope, rows, q_abs);
    const Tensor<float> latents = attend(caches_[layer], rows, q_abs);  // [L, H, d_c]
    model::mla_output(c, lw, latents, o.data());
    for (int64_t i = 0; i < L * D; ++i) x.data()[i] += o.data()[i] * residual_scale;

    model::rms_norm(x.data(), L, D, lw.ffn_norm.data(), c.rms_norm_eps, h.data());
    if (lw.is_moe()) {
      model::moe(arch, lw, h.data(), L, D, o.data());
    } else {
      const Tensor<float> none;
      model::mlp(lw.w_gate, lw.w_up, lw.w_down, none, none, none, h.data(), L, o.data());
    }
    for (int64_t i = 0; i < L * D; ++i) x.data()[i] += o.data()[i] * residual_scale;
  }
}

Tensor<float> Sequence::prefill(std::span<const int64_t> tokens, int64_t chunk,
                                const std::function<void(int64_t, int64_t)>& progress) {
  LCA_CHECK(chunk >= 1, "Sequence::prefill: chunk must be >= 1, got ", chunk);
  const int64_t total = static_cast<int64_t>(tokens.size());
  LCA_CHECK(total >= 1, "Sequence::prefill: tokens is empty");
  LCA_CHECK(n_ + total <= model_->context_length() || model_->context_length() <= 0, "Sequence::prefill: ",
            n_ + total, " tokens exceed the model's context of ", model_->context_length());
  Tensor<float> logits;
  for (int64_t at = 0; at < total; at += chunk) {
    const int64_t len = std::min(chunk, total - at);
    logits = forward(tokens.subspan(static_cast<size_t>(at), static_cast<size_t>(len)));
    if (progress) progress(at + len, total);
  }
  return logits;
}

}  // namespace lca
