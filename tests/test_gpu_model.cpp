// The GPU runtime (GpuModel + GpuSession: cuBLAS products, lca's prefill,
// condense and decode kernels, the paged cache) against the CPU runtime
// (Model + Sequence, tested against a float64 oracle) on tiny random Llama and
// Qwen2 models with bf16-valued weights: prefill logits and the logits of
// every decode step after it, for full attention and LCA with a small window
// (many groups condensed), batches of sequences of different lengths, with
// and without CUDA graphs. Without a GPU every case reports SKIPPED.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lca/cuda.hpp"
#include "lca/gpu_model.hpp"
#include "lca/model.hpp"
#include "lca/model_config.hpp"

namespace {

using lca::LcaParams;
using lca::Tensor;

#define REQUIRE_GPU() \
  if (!lca::cuda::device_present()) GTEST_SKIP() << "no CUDA device on this machine"

constexpr int64_t D = 128, Hq = 2, Hkv = 1, F = 256, V = 97, Layers = 2;

lca::Model tiny_model(bool qwen2, std::mt19937_64& rng) {
  char json[1024];
  std::snprintf(json, sizeof json,
                R"({"architectures": ["%s"], "model_type": "%s", "hidden_size": %lld, "intermediate_size": %lld,
  "num_hidden_layers": %lld, "num_attention_heads": %lld, "num_key_value_heads": %lld, "vocab_size": %lld,
  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": %s, "tie_word_embeddings": %s})",
                qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM", qwen2 ? "qwen2" : "llama", (long long)D,
                (long long)F, (long long)Layers, (long long)Hq, (long long)Hkv, (long long)V,
                qwen2 ? "1000000.0" : "10000.0", qwen2 ? "false" : "true");
  const lca::ModelConfig cfg = lca::parse_model_config(json, "tiny");
  auto rnd = [&](lca::Shape shape, double sd, double mean = 0.0) {
    std::normal_distribution<float> nd(static_cast<float>(mean), static_cast<float>(sd));
    Tensor<float> t(std::move(shape));
    for (float& x : t.vec()) x = lca::round_to(lca::DType::bf16, nd(rng));  // what the GPU holds
    return t;
  };
  const int64_t hd = D / Hq;
  const double w = 1.0 / std::sqrt(double(D));
  lca::ModelWeights weights;
  weights.embed = rnd({V, D}, 1.0);
  for (int64_t l = 0; l < Layers; ++l) {
    lca::LayerWeights L;
    L.attn_norm = rnd({D}, 0.1, 1.0);
    L.wq = rnd({Hq * hd, D}, 2 * w);
    L.wk = rnd({Hkv * hd, D}, 2 * w);
    L.wv = rnd({Hkv * hd, D}, w);
    L.wo = rnd({D, Hq * hd}, w);
    L.bq = qwen2 ? rnd({Hq * hd}, 0.3) : Tensor<float>({0});
    L.bk = qwen2 ? rnd({Hkv * hd}, 0.3) : Tensor<float>({0});
    L.bv = qwen2 ? rnd({Hkv * hd}, 0.3) : Tensor<float>({0});
    L.ffn_norm = rnd({D}, 0.1, 1.0);
    L.w_gate = rnd({F, D}, w);
    L.w_up = rnd({F, D}, w);
    L.w_down = rnd({D, F}, 1.0 / std::sqrt(double(F)));
    weights.layers.push_back(std::move(L));
  }
  weights.final_norm = rnd({D}, 0.1, 1.0);
  weights.lm_head = qwen2 ? rnd({V, D}, w) : Tensor<float>({0});
  return lca::Model(cfg, std::move(weights));
}

double rel_error(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// Prompts of different lengths prefilled one by one, then `steps` decode steps of the whole batch.
void compare(bool qwen2, const LcaParams& params, bool graphs, const std::vector<int64_t>& prompts, int64_t steps) {
  SCOPED_TRACE(std::string(qwen2 ? "qwen2 " : "llama ") + params.describe() + (graphs ? " graphs" : " no graphs"));
  std::mt19937_64 rng(11);
  const lca::Model model = tiny_model(qwen2, rng);
  const lca::cuda::GpuModel gpu_model = lca::cuda::GpuModel::upload(model);
  lca::cuda::GpuSessionOptions opt;
  opt.attention = params;
  opt.max_seqs = static_cast<int64_t>(prompts.size());
  opt.max_context = 1024;
  opt.prefill_chunk = 50;  // several MLP chunks
  opt.graphs = graphs;
  lca::cuda::GpuSession session(gpu_model, opt);
  std::vector<lca::Sequence> cpu;
  std::vector<int64_t> seqs;
  std::uniform_int_distribution<int64_t> tok(0, V - 1);
  double worst = 0;
  for (int64_t n : prompts) {
    std::vector<int64_t> prompt(static_cast<size_t>(n));
    for (auto& t : prompt) t = tok(rng);
    cpu.emplace_back(model, params, lca::DType::bf16);
    const Tensor<float> want = cpu.back().forward(prompt);
    seqs.push_back(session.add_sequence());
    const Tensor<float> got = session.prefill(seqs.back(), prompt);
    const double err = rel_error(got.data(), want.data(), V);
    worst = std::max(worst, err);
    ASSERT_LT(err, 3e-2) << "prefill of " << n << " tokens";
  }
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int64_t> tokens;
    for (size_t b = 0; b < seqs.size(); ++b) tokens.push_back(tok(rng));
    const Tensor<float> got = session.decode(seqs, tokens);
    for (size_t b = 0; b < seqs.size(); ++b) {
      const Tensor<float> want = cpu[b].forward(std::vector<int64_t>{tokens[b]});
      const double err = rel_error(got.row(static_cast<int64_t>(b)), want.data(), V);
      worst = std::max(worst, err);
      ASSERT_LT(err, 3e-2) << "decode step " << s << " of sequence " << b;
      ASSERT_EQ(session.tokens(seqs[b]), cpu[b].tokens());
    }
  }
  std::printf("  worst relative error of the logits: %.2e\n", worst);
}

LcaParams small_lca(int64_t w, int64_t g) {
  LcaParams p;
  p.window = w;
  p.group = g;
  return p;
}

TEST(GpuModel, LlamaFullAttentionMatchesCpuRuntime) {
  REQUIRE_GPU();
  compare(false, LcaParams::full(), true, {5, 130, 77}, 12);
}

TEST(GpuModel, LlamaLcaMatchesCpuRuntime) {
  REQUIRE_GPU();
  compare(false, small_lca(32, 8), true, {3, 40, 201}, 20);
  compare(false, small_lca(16, 4), false, {64, 9}, 10);
}

TEST(GpuModel, Qwen2LcaMatchesCpuRuntime) {
  REQUIRE_GPU();
  compare(true, small_lca(24, 8), true, {100, 31}, 17);
  compare(true, LcaParams::full(), false, {33}, 5);
}

TEST(GpuModel, ErrorsNameTheProblem) {
  REQUIRE_GPU();
  std::mt19937_64 rng(3);
  const lca::Model model = tiny_model(false, rng);
  const auto gpu_model = lca::cuda::GpuModel::upload(model);
  lca::cuda::GpuSessionOptions opt;
  opt.max_context = 40;
  lca::cuda::GpuSession session(gpu_model, opt);
  const int64_t seq = session.add_sequence();
  auto expect = [](auto&& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one naming '" << needle << "'";
    } catch (const lca::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect([&] { session.prefill(seq, std::vector<int64_t>(41, 1)); }, "max_context");
  expect([&] { session.prefill(seq, std::vector<int64_t>{1, V}); }, "vocabulary");
  expect([&] { session.decode(std::vector<int64_t>{seq, seq}, std::vector<int64_t>{1}); }, "tokens");
  session.prefill(seq, std::vector<int64_t>(40, 2));
  expect([&] { session.decode(std::vector<int64_t>{seq}, std::vector<int64_t>{1}); }, "max_context");
}

}  // namespace
