// The Llama/Qwen2 runtime (lca/model.hpp) on tiny random checkpoints written
// here, as a Hugging Face folder (config.json + safetensors) and as GGUF (q/k
// rows permuted the way llama.cpp's converter does). Logits are checked
// against a naive float64 transformer written in this file from the Hugging
// Face modeling code's definitions (rotate_half RoPE, RMSNorm, SwiGLU);
// then the spec identities through the whole model, and the errors.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <string>
#include <vector>

#include "gguf_writer.hpp"
#include "lca/error.hpp"
#include "lca/gguf.hpp"
#include "lca/model.hpp"
#include "lca/safetensors.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using lca::LcaParams;
using lca::Model;
using lca::Sequence;
using lca::Shape;
using lca::Tensor;
using lca_test::Bytes;
using lca_test::Rng;

// ---- A tiny model ------------------------------------------------------------------

struct Tiny {
  bool qwen2 = false;  // q/k/v biases, untied lm_head
  int64_t D = 32, Hq = 4, Hkv = 2, hd = 8, F = 48, layers = 2, V = 61, context = 128;
  double theta = 10000.0, eps = 1e-5;
  bool tied = true;
  // name (Hugging Face) -> values, shape
  std::vector<std::pair<std::string, Tensor<float>>> tensors;

  const Tensor<float>& get(const std::string& name) const {
    for (const auto& [n, t] : tensors)
      if (n == name) return t;
    throw std::runtime_error("no tensor " + name);
  }
  bool has(const std::string& name) const {
    for (const auto& [n, t] : tensors)
      if (n == name) return true;
    return false;
  }
};

Tiny random_tiny(bool qwen2, Rng& rng) {
  Tiny m;
  m.qwen2 = qwen2;
  m.tied = !qwen2;
  m.theta = qwen2 ? 1000000.0 : 10000.0 + static_cast<double>(rng.uniform_int(0, 90000));
  auto add = [&](const std::string& name, const Shape& s, double sd, double mean = 0.0) {
    m.tensors.emplace_back(name, lca_test::randn<float>(s, rng, sd, mean));
  };
  const double w_sd = 1.0 / std::sqrt(static_cast<double>(m.D));
  add("model.embed_tokens.weight", {m.V, m.D}, 1.0);
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {m.D}, 0.1, 1.0);
    add(p + "self_attn.q_proj.weight", {m.Hq * m.hd, m.D}, 2 * w_sd);
    add(p + "self_attn.k_proj.weight", {m.Hkv * m.hd, m.D}, 2 * w_sd);
    add(p + "self_attn.v_proj.weight", {m.Hkv * m.hd, m.D}, w_sd);
    add(p + "self_attn.o_proj.weight", {m.D, m.Hq * m.hd}, w_sd);
    if (qwen2) {
      add(p + "self_attn.q_proj.bias", {m.Hq * m.hd}, 0.3);
      add(p + "self_attn.k_proj.bias", {m.Hkv * m.hd}, 0.3);
      add(p + "self_attn.v_proj.bias", {m.Hkv * m.hd}, 0.3);
    }
    add(p + "post_attention_layernorm.weight", {m.D}, 0.1, 1.0);
    add(p + "mlp.gate_proj.weight", {m.F, m.D}, w_sd);
    add(p + "mlp.up_proj.weight", {m.F, m.D}, w_sd);
    add(p + "mlp.down_proj.weight", {m.D, m.F}, 1.0 / std::sqrt(static_cast<double>(m.F)));
  }
  add("model.norm.weight", {m.D}, 0.1, 1.0);
  if (!m.tied) add("lm_head.weight", {m.V, m.D}, w_sd);
  return m;
}

// ---- The float64 oracle (Hugging Face's definitions) -------------------------------

using lca_test::Vec;

using lca_test::matvec;

using lca_test::rms_norm;

// q * cos + rotate_half(q) * sin, cos/sin = cat(freqs, freqs), rotate_half(u) = cat(-u2, u1).
void rope_hf(double* u, int64_t d, int64_t pos, double theta) {
  const int64_t half = d / 2;
  Vec rot(static_cast<size_t>(d)), out(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) rot[i] = i < half ? -u[i + half] : u[i - half];
  for (int64_t i = 0; i < d; ++i) {
    const double inv_freq = 1.0 / std::pow(theta, static_cast<double>(2 * (i % half)) / static_cast<double>(d));
    const double a = static_cast<double>(pos) * inv_freq;
    out[i] = u[i] * std::cos(a) + rot[i] * std::sin(a);
  }
  std::copy(out.begin(), out.end(), u);
}

// Logits [T][V] of every position of `tokens` under full causal attention.
std::vector<Vec> oracle_logits(const Tiny& m, const std::vector<int64_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size()), D = m.D, hd = m.hd;
  std::vector<Vec> x(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const float* e = m.get("model.embed_tokens.weight").row(tokens[t]);
    x[t] = Vec(e, e + D);
  }
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<Vec> q(T), k(T), v(T);
    for (int64_t t = 0; t < T; ++t) {
      const Vec h = rms_norm(x[t], m.get(p + "input_layernorm.weight"), m.eps);
      q[t] = matvec(m.get(p + "self_attn.q_proj.weight"), h);
      k[t] = matvec(m.get(p + "self_attn.k_proj.weight"), h);
      v[t] = matvec(m.get(p + "self_attn.v_proj.weight"), h);
      if (m.qwen2) {
        for (size_t i = 0; i < q[t].size(); ++i) q[t][i] += m.get(p + "self_attn.q_proj.bias").data()[i];
        for (size_t i = 0; i < k[t].size(); ++i) k[t][i] += m.get(p + "self_attn.k_proj.bias").data()[i];
        for (size_t i = 0; i < v[t].size(); ++i) v[t][i] += m.get(p + "self_attn.v_proj.bias").data()[i];
      }
      for (int64_t h2 = 0; h2 < m.Hq; ++h2) rope_hf(q[t].data() + h2 * hd, hd, t, m.theta);
      for (int64_t h2 = 0; h2 < m.Hkv; ++h2) rope_hf(k[t].data() + h2 * hd, hd, t, m.theta);
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec o(static_cast<size_t>(m.Hq * hd), 0.0);
      for (int64_t h = 0; h < m.Hq; ++h) {
        const int64_t g = h / (m.Hq / m.Hkv);
        Vec s(static_cast<size_t>(t + 1));
        double top = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < hd; ++c) dot += q[t][h * hd + c] * k[j][g * hd + c];
          s[j] = dot / std::sqrt(static_cast<double>(hd));
          top = std::max(top, s[j]);
        }
        double z = 0.0;
        for (double& e : s) z += e = std::exp(e - top);
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t c = 0; c < hd; ++c) o[h * hd + c] += s[j] / z * v[j][g * hd + c];
      }
      const Vec a = matvec(m.get(p + "self_attn.o_proj.weight"), o);
      for (int64_t i = 0; i < D; ++i) x[t][i] += a[i];
      const Vec h = rms_norm(x[t], m.get(p + "post_attention_layernorm.weight"), m.eps);
      Vec gate = matvec(m.get(p + "mlp.gate_proj.weight"), h);
      const Vec up = matvec(m.get(p + "mlp.up_proj.weight"), h);
      for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const Vec down = matvec(m.get(p + "mlp.down_proj.weight"), gate);
      for (int64_t i = 0; i < D; ++i) x[t][i] += down[i];
    }
  }
  std::vector<Vec> logits;
  for (int64_t t = 0; t < T; ++t)
    logits.push_back(matvec(m.get(m.tied ? "model.embed_tokens.weight" : "lm_head.weight"),
                            rms_norm(x[t], m.get("model.norm.weight"), m.eps)));
  return logits;
}

// ---- Writers -------------------------------------------------------------------------

std::string config_json(const Tiny& m, const std::string& arch = "") {
  const std::string a = !arch.empty() ? arch : m.qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                R"({"architectures": ["%s"], "model_type": "%s", "hidden_size": %lld, "intermediate_size": %lld,
  "num_hidden_layers": %lld, "num_attention_heads": %lld, "num_key_value_heads": %lld, "vocab_size": %lld,
  "max_position_embeddings": %lld, "rms_norm_eps": %.17g, "rope_theta": %.17g, "tie_word_embeddings": %s})",
                a.c_str(), m.qwen2 ? "qwen2" : "llama", static_cast<long long>(m.D), static_cast<long long>(m.F),
                static_cast<long long>(m.layers), static_cast<long long>(m.Hq), static_cast<long long>(m.Hkv),
                static_cast<long long>(m.V), static_cast<long long>(m.context), m.eps, m.theta,
                m.tied ? "true" : "false");
  return buf;
}

// A Hugging Face folder: config.json + model.safetensors (F32), skipping `drop`.
void write_hf(const fs::path& dir, const Tiny& m, const std::string& drop = "", const std::string& arch = "") {
  fs::create_directories(dir);
  lca_test::write_bytes(dir / "config.json", config_json(m, arch));
  std::string header = "{";
  Bytes data;
  for (const auto& [name, t] : m.tensors) {
    if (name == drop) continue;
    std::string shape;
    for (int64_t d : t.shape()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += (header.size() > 1 ? "," : "") + ("\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + shape +
                                                "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
                                                std::to_string(data.size() + 4 * t.numel()) + "]}");
    data += lca_test::f32_bytes(t.vec());
  }
  header += "}";
  lca_test::write_bytes(dir / "model.safetensors", lca_test::le<uint64_t>(header.size()) + header + data);
}

// llama.cpp's permutation of q/k rows for Llama (reshape(heads, 2, d/2, in).swapaxes(1, 2)).
Tensor<float> permute_like_llama_cpp(const Tensor<float>& w, int64_t heads) {
  const int64_t rows = w.dim(0), cols = w.numel() / rows, hd = rows / heads, half = hd / 2;
  Tensor<float> out(w.shape());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < half; ++j)
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t c = 0; c < cols; ++c)
          out.data()[((h * half + j) * 2 + i) * cols + c] = w.data()[((h * 2 + i) * half + j) * cols + c];
  return out;
}

void write_gguf(const fs::path& path, const Tiny& m, const std::string& arch_override = "") {
  lca_test::GgufWriter w;
  const std::string arch = !arch_override.empty() ? arch_override : m.qwen2 ? "qwen2" : "llama";
  w.add_string("general.architecture", arch);
  w.add_u32(arch + ".block_count", static_cast<uint32_t>(m.layers));
  w.add_u32(arch + ".context_length", static_cast<uint32_t>(m.context));
  w.add_u32(arch + ".embedding_length", static_cast<uint32_t>(m.D));
  w.add_u32(arch + ".feed_forward_length", static_cast<uint32_t>(m.F));
  w.add_u32(arch + ".attention.head_count", static_cast<uint32_t>(m.Hq));
  w.add_u32(arch + ".attention.head_count_kv", static_cast<uint32_t>(m.Hkv));
  w.add_f32(arch + ".rope.freq_base", static_cast<float>(m.theta));
  w.add_f32(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(m.eps));
  w.add_u32(arch + ".rope.dimension_count", static_cast<uint32_t>(m.hd));
  static const std::pair<const char*, const char*> kNames[] = {
      {"input_layernorm.weight", "attn_norm.weight"},  {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},    {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"}, {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},        {"self_attn.v_proj.bias", "attn_v.bias"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},         {"mlp.down_proj.weight", "ffn_down.weight"}};
  for (const auto& [name, t] : m.tensors) {
    std::string g;
    Tensor<float> v = t;
    if (name == "model.embed_tokens.weight") g = "token_embd.weight";
    else if (name == "model.norm.weight") g = "output_norm.weight";
    else if (name == "lm_head.weight") g = "output.weight";
    else {
      const size_t dot = name.find('.', std::string("model.layers.").size());
      const std::string layer = name.substr(13, dot - 13), rest = name.substr(dot + 1);
      for (const auto& [hf, gg] : kNames)
        if (rest == hf) g = "blk." + layer + "." + gg;
      const bool q = rest.starts_with("self_attn.q_proj"), k = rest.starts_with("self_attn.k_proj");
      if (arch == "llama" && (q || k)) v = permute_like_llama_cpp(t, q ? m.Hq : m.Hkv);
    }
    w.add_tensor(g, t.shape(), lca_test::kTF32, lca_test::f32_bytes(v.vec()));
  }
  w.write(path);
}

using ModelTest = lca_test::TempDirTest;
using lca_test::max_rel_diff;
using lca_test::random_tokens;


// ---- Forward against the oracle --------------------------------------------------------

TEST_F(ModelTest, ForwardMatchesFloat64OracleFromBothFormats) {
  Rng rng(0x6d6f64656c);
  for (bool qwen2 : {false, true}) {
    const Tiny m = random_tiny(qwen2, rng);
    const std::string tag = qwen2 ? "qwen2" : "llama";
    write_hf(dir_ / tag, m);
    write_gguf(dir_ / (tag + ".gguf"), m);
    const std::vector<int64_t> tokens = random_tokens(rng, 11, m.V);
    const std::vector<Vec> expected = oracle_logits(m, tokens);
    for (const fs::path& p : {dir_ / tag, dir_ / (tag + ".gguf")}) {
      SCOPED_TRACE(p.string());
      const Model model = Model::load(p.string());
      EXPECT_EQ(model.has_qkv_bias(), qwen2);
      EXPECT_EQ(model.config().tie_word_embeddings, !qwen2);
      // The first six tokens as one chunk (every position's logits), then one at a time.
      Sequence seq(model, LcaParams::full(), lca::DType::f32);
      const Tensor<float> first = seq.forward(std::span(tokens).first(6), true);
      ASSERT_EQ(first.shape(), (Shape{6, m.V}));
      EXPECT_LT(max_rel_diff(first, std::vector<Vec>(expected.begin(), expected.begin() + 6)), 2e-5);
      for (size_t t = 6; t < tokens.size(); ++t) {
        const Tensor<float> one = seq.forward(std::span(tokens).subspan(t, 1));
        ASSERT_EQ(one.shape(), (Shape{1, m.V}));
        EXPECT_LT(max_rel_diff(one, {expected[t]}), 2e-5) << "position " << t;
      }
      EXPECT_EQ(seq.tokens(), static_cast<int64_t>(tokens.size()));
    }
  }
}

// Without undoing llama.cpp's permutation the GGUF Llama would differ: the
// test above can fail. (Qwen2 GGUF files are not permuted.)
TEST_F(ModelTest, GgufLlamaQkRowsAreUnpermuted) {
  Rng rng(99);
  const Tiny m = random_tiny(false, rng);
  write_gguf(dir_ / "l.gguf", m);
  const Model model = Model::load((dir_ / "l.gguf").string());
  const auto& wq = model.weights().layers[1].wq;
  EXPECT_EQ(wq.vec(), m.get("model.layers.1.self_attn.q_proj.weight").vec());
  EXPECT_NE(permute_like_llama_cpp(wq, m.Hq).vec(), wq.vec());
}

// ---- Spec identities through the model -------------------------------------------------

TEST_F(ModelTest, LcaWithWindowBeyondTheSequenceEqualsFull) {
  Rng rng(7);
  for (bool qwen2 : {false, true}) {
    const Tiny m = random_tiny(qwen2, rng);
    write_hf(dir_ / "m", m);
    const Model model = Model::load((dir_ / "m").string());
    const std::vector<int64_t> tokens = random_tokens(rng, 40, m.V);
    LcaParams lca;
    lca.window = 40;
    lca.group = static_cast<int64_t>(rng.uniform_int(1, 8));
    for (lca::DType dt : {lca::DType::f32, lca::DType::bf16}) {
      Sequence full(model, LcaParams::full(), dt), cond(model, lca, dt);
      const Tensor<float> a = full.forward(tokens, true), b = cond.forward(tokens, true);
      EXPECT_EQ(a.vec(), b.vec());
      EXPECT_EQ(cond.cache_bytes() - full.cache_bytes(),
                m.layers * std::min<int64_t>(40, lca.group - 1) * m.Hkv * m.hd * 4)  // the summary ring
          << "g " << lca.group;
    }
    fs::remove_all(dir_ / "m");
  }
}

TEST_F(ModelTest, ChunkedPrefillEqualsTokenByToken) {
  Rng rng(11);
  const Tiny m = random_tiny(true, rng);
  write_gguf(dir_ / "m.gguf", m);
  const Model model = Model::load((dir_ / "m.gguf").string());
  const int64_t T = 45;
  const std::vector<int64_t> tokens = random_tokens(rng, T, m.V);
  LcaParams lca;
  lca.window = 8;
  lca.group = 4;
  for (lca::DType dt : {lca::DType::f32, lca::DType::bf16}) {
    Sequence stepwise(model, lca, dt);
    Tensor<float> steps({T, m.V});
    for (int64_t t = 0; t < T; ++t) {
      const Tensor<float> one = stepwise.forward(std::span(tokens).subspan(static_cast<size_t>(t), 1));
      std::copy_n(one.data(), m.V, steps.row(t));
    }
    for (int64_t chunk : {int64_t{3}, int64_t{16}, T}) {
      SCOPED_TRACE(chunk);
      Sequence chunked(model, lca, dt);
      Tensor<float> all({T, m.V});
      for (int64_t at = 0; at < T; at += chunk) {
        const int64_t len = std::min(chunk, T - at);
        const Tensor<float> part = chunked.forward(std::span(tokens).subspan(static_cast<size_t>(at), static_cast<size_t>(len)), true);
        std::copy_n(part.data(), part.numel(), all.row(at));
      }
      EXPECT_LT(max_rel_diff(all, steps), 1e-5);
      EXPECT_EQ(chunked.cache_bytes(), stepwise.cache_bytes());
      Sequence via_prefill(model, lca, dt);
      int64_t calls = 0;
      const Tensor<float> last = via_prefill.prefill(tokens, chunk, [&](int64_t done, int64_t total) {
        ++calls;
        EXPECT_EQ(total, T);
        EXPECT_LE(done, T);
      });
      EXPECT_EQ(calls, (T + chunk - 1) / chunk);
      Tensor<float> last_step({1, m.V});
      std::copy_n(steps.row(T - 1), m.V, last_step.data());
      EXPECT_LT(max_rel_diff(last, last_step), 1e-5);
    }
    // The caches condensed: 45 tokens, w 8, g 4 -> 9 representatives + 9 raw rows per layer.
    EXPECT_EQ(stepwise.caches()[0].entries(), 18);
    EXPECT_LT(stepwise.cache_bytes(), stepwise.full_cache_bytes());
  }
  // And LCA is not full attention once groups condense.
  Sequence full(model, LcaParams::full(), lca::DType::f32), cond(model, lca, lca::DType::f32);
  EXPECT_GT(max_rel_diff(cond.forward(tokens), full.forward(tokens)), 1e-4);
}

// ---- Errors ----------------------------------------------------------------------------

using lca_test::expect_error;

TEST_F(ModelTest, LoadErrorsNameWhatIsWrong) {
  Rng rng(5);
  const Tiny m = random_tiny(false, rng);
  write_hf(dir_ / "missing", m, "model.layers.1.mlp.up_proj.weight");
  expect_error([&] { Model::load((dir_ / "missing").string()); }, {"model.layers.1.mlp.up_proj.weight"});

  Tiny untied = m;
  untied.tied = false;
  write_hf(dir_ / "untied", untied);
  expect_error([&] { Model::load((dir_ / "untied").string()); }, {"lm_head.weight", "tie"});

  Tiny wrong = m;
  wrong.tensors[3].second = Tensor<float>({m.Hkv * m.hd + 2, m.D});  // model.layers.0.self_attn.k_proj.weight
  write_hf(dir_ / "shape", wrong);
  expect_error([&] { Model::load((dir_ / "shape").string()); }, {"model.layers.0.self_attn.k_proj.weight", "[18, 32]"});

  {
    lca_test::GgufWriter w;
    w.add_string("general.architecture", "llama");
    for (const char* k : {"llama.block_count", "llama.context_length", "llama.embedding_length",
                          "llama.feed_forward_length", "llama.attention.head_count"})
      w.add_u32(k, 8);
    w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.add_tensor("rope_freqs.weight", {4}, lca_test::kTF32, lca_test::f32_bytes({1, 1, 2, 4}));
    w.write(dir_ / "l31.gguf");
    expect_error([&] { Model::load((dir_ / "l31.gguf").string()); }, {"l31.gguf", "rope_freqs.weight", "not supported"});
    lca_test::GgufWriter s;
    s.add_string("general.architecture", "llama");
    s.add_string("llama.rope.scaling.type", "yarn");
    for (const char* k : {"llama.block_count", "llama.context_length", "llama.embedding_length",
                          "llama.feed_forward_length", "llama.attention.head_count"})
      s.add_u32(k, 8);
    s.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    s.write(dir_ / "yarn.gguf");
    expect_error([&] { Model::load((dir_ / "yarn.gguf").string()); }, {"yarn.gguf", "'yarn'", "not supported"});
  }
  write_gguf(dir_ / "gpt2.gguf", m, "gpt2");
  expect_error([&] { Model::load((dir_ / "gpt2.gguf").string()); }, {"gpt2", "not supported"});
  expect_error([&] { Model::load((dir_ / "absent.gguf").string()); }, {"absent.gguf", "does not exist"});
  lca_test::write_bytes(dir_ / "junk.gguf", "this is not a model file at all");
  expect_error([&] { Model::load((dir_ / "junk.gguf").string()); }, {"junk.gguf", "bad magic"});

  // MLA configs run (tests/test_model_mla.cpp), but weights must match them
  // (MiniCPM3-4B's preset holds placeholder longrope factor lists).
  const lca::ModelConfig ds = lca::preset_config("deepseek-v2-lite");
  expect_error([&] { Model(ds, lca::ModelWeights{}); }, {"embed", "[102400, 2048]"});
  const lca::ModelConfig cpm = lca::preset_config("minicpm3-4b");
  expect_error([&] { Model(cpm, lca::ModelWeights{}); }, {"embed", "[73448, 2560]"});
}

TEST_F(ModelTest, ForwardErrorsLeaveTheSequenceUsable) {
  Rng rng(6);
  const Tiny m = random_tiny(false, rng);
  write_gguf(dir_ / "m.gguf", m);
  const Model model = Model::load((dir_ / "m.gguf").string());
  Sequence seq(model, LcaParams{}, lca::DType::bf16);
  const std::vector<int64_t> bad = {1, m.V};
  expect_error([&] { seq.forward(bad); }, {"token", std::to_string(m.V), "vocabulary"});
  expect_error([&] { seq.forward(std::span<const int64_t>()); }, {"empty"});
  const std::vector<int64_t> too_long(static_cast<size_t>(m.context + 1), 3);
  expect_error([&] { seq.forward(too_long); }, {"context", std::to_string(m.context)});
  expect_error([&] { seq.prefill(too_long, 16); }, {"context"});
  expect_error([&] { seq.prefill(bad, 0); }, {"chunk"});
  EXPECT_EQ(seq.tokens(), 0);
  EXPECT_EQ(seq.cache_bytes(), 0);
  const std::vector<int64_t> ok = {1, 2, 3};
  EXPECT_EQ(seq.forward(ok).shape(), (Shape{1, m.V}));
  LcaParams broken;
  broken.group = 0;
  EXPECT_THROW(Sequence(model, broken), lca::Error);
}

// A failure inside the layers (here a NaN key reaching the cache of layer 1,
// after layer 0 took the tokens) leaves the caches out of step: the sequence
// then refuses further use rather than compute with them.
TEST_F(ModelTest, AFailureMidwayRetiresTheSequence) {
  Rng rng(8);
  const Tiny m = random_tiny(false, rng);
  write_hf(dir_ / "m", m);
  const Model good = Model::load((dir_ / "m").string());
  lca::ModelWeights w = good.weights();
  w.layers[1].wk.data()[3] = NAN;
  const Model bad(good.config(), std::move(w));
  Sequence seq(bad, LcaParams::full(), lca::DType::f32);
  const std::vector<int64_t> tokens = {1, 2, 3};
  EXPECT_THROW(seq.forward(tokens), lca::Error);
  expect_error([&] { seq.forward(tokens); }, {"failed midway"});
  EXPECT_EQ(seq.tokens(), 0);
}

// ---- Tokenizer and end-of-text ids of a model -------------------------------------------

TEST_F(ModelTest, GgufTokenizerMetadataBecomesABpeVocab) {
  lca_test::GgufWriter w;
  w.add_string("tokenizer.ggml.model", "gpt2");
  // Byte-level tokens: "\xc4\xa0" is the mapped space.
  w.add_string_array("tokenizer.ggml.tokens", {"<|end|>", "a", "b", "\xc4\xa0", "ab", "\xc4\xa0" "a", "\xc4\xa0" "ab", "<tool>"});
  w.add_string_array("tokenizer.ggml.merges", {"\xc4\xa0" " a", "a b", "\xc4\xa0" "a b"});
  w.add_i32_array("tokenizer.ggml.token_type", {3, 1, 1, 1, 1, 1, 1, 4});
  w.add_u32("tokenizer.ggml.bos_token_id", 0);
  w.add_u32("tokenizer.ggml.eos_token_id", 0);
  w.write(dir_ / "t.gguf");
  const lca::GgufFile f = lca::GgufFile::open((dir_ / "t.gguf").string());
  const lca::BpeVocab v = lca::gguf_bpe_vocab(f);
  EXPECT_EQ(v.kind, lca::BpeVocab::Kind::byte_level);
  EXPECT_EQ(v.pre_tokenizer, "gpt2");  // no tokenizer.ggml.pre: llama.cpp's default
  EXPECT_EQ(v.tokens.size(), 8u);
  EXPECT_EQ(v.merges.size(), 3u);
  EXPECT_EQ(v.special_ids, (std::vector<int64_t>{0}));
  EXPECT_EQ(v.user_defined_ids, (std::vector<int64_t>{7}));
  EXPECT_EQ(v.eos_id, 0);
  EXPECT_FALSE(v.add_bos);  // gpt2 default
  const lca::Tokenizer tok = lca::load_tokenizer((dir_ / "t.gguf").string());
  EXPECT_EQ(tok.encode("ab ab<|end|>"), (std::vector<int64_t>{4, 6, 0}));
  EXPECT_EQ(lca::load_eos_ids((dir_ / "t.gguf").string()), (std::vector<int64_t>{0}));

  lca_test::GgufWriter spm;
  spm.add_string("tokenizer.ggml.model", "llama");
  spm.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a"});
  spm.add("tokenizer.ggml.scores", lca_test::kArr,
          lca_test::le<uint32_t>(lca_test::kF32) + lca_test::le<uint64_t>(4) + lca_test::le(0.0f) + lca_test::le(0.0f) +
              lca_test::le(0.0f) + lca_test::le(-1.5f));
  spm.add_u32("tokenizer.ggml.bos_token_id", 1);
  spm.write(dir_ / "s.gguf");
  const lca::BpeVocab sv = lca::gguf_bpe_vocab(lca::GgufFile::open((dir_ / "s.gguf").string()));
  EXPECT_EQ(sv.kind, lca::BpeVocab::Kind::sentencepiece);
  EXPECT_EQ(sv.scores, (std::vector<float>{0, 0, 0, -1.5f}));
  EXPECT_TRUE(sv.add_bos);  // SentencePiece default
  EXPECT_TRUE(sv.add_space_prefix);

  lca_test::GgufWriter bert;
  bert.add_string("tokenizer.ggml.model", "bert");
  bert.write(dir_ / "b.gguf");
  expect_error([&] { lca::load_tokenizer((dir_ / "b.gguf").string()); }, {"b.gguf", "'bert'", "not supported"});
}

TEST_F(ModelTest, EosIdsOfAHuggingFaceFolder) {
  fs::create_directories(dir_ / "m");
  lca_test::write_bytes(dir_ / "m" / "config.json", R"({"eos_token_id": 7})");
  EXPECT_EQ(lca::load_eos_ids((dir_ / "m").string()), (std::vector<int64_t>{7}));
  lca_test::write_bytes(dir_ / "m" / "generation_config.json", R"({"eos_token_id": [3, 9]})");
  EXPECT_EQ(lca::load_eos_ids((dir_ / "m").string()), (std::vector<int64_t>{3, 9}));
  lca_test::write_bytes(dir_ / "m" / "generation_config.json", R"({"eos_token_id": "x"})");
  expect_error([&] { lca::load_eos_ids((dir_ / "m").string()); }, {"generation_config.json", "eos_token_id"});
  expect_error([&] { lca::load_tokenizer((dir_ / "m").string()); }, {"tokenizer.json"});
}

// ---- The real model, when present --------------------------------------------------------

std::string smollm2_path() {
  if (const char* p = std::getenv("LCA_SMOLLM2_GGUF")) return fs::exists(p) ? p : "";
  const char* home = std::getenv("HOME");
  const std::string p = std::string(home ? home : "") + "/.cache/lca/SmolLM2-135M-Instruct.Q4_1.gguf";
  return home && fs::exists(p) ? p : "";
}

// SmolLM2-135M-Instruct (Q4_1 GGUF): "The capital of France is" continues with
// " Paris" greedily, with full attention and with LCA (w larger than the text).
TEST(SmolLM2, GreedyContinuationIsParis) {
  const std::string path = smollm2_path();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF not found (set LCA_SMOLLM2_GGUF or run scripts/get-smollm2.sh)";
  const Model model = Model::load(path);
  EXPECT_EQ(model.config().num_hidden_layers, 30);
  EXPECT_EQ(model.config().gqa.kv_heads, 3);
  const std::vector<int64_t> prompt = {504, 3575, 282, 4649, 314};  // "The capital of France is"
  const lca::GgufFile file = lca::GgufFile::open(path);
  const std::vector<std::string> vocab = file.get_string_array("tokenizer.ggml.tokens");
  const lca::Tokenizer tok = lca::load_tokenizer(path);
  EXPECT_EQ(tok.encode("The capital of France is"), prompt);
  for (const LcaParams& p : {LcaParams::full(), LcaParams{}}) {
    Sequence seq(model, p);
    const Tensor<float> logits = seq.forward(prompt);
    const int64_t next = std::max_element(logits.data(), logits.data() + logits.numel()) - logits.data();
    EXPECT_EQ(vocab.at(static_cast<size_t>(next)), "\xc4\xa0Paris") << p.describe();  // "Ġ" + "Paris"
    EXPECT_EQ(tok.decode(std::vector<int64_t>{next}), " Paris");
  }
}

}  // namespace
