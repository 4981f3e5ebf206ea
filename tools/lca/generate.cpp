// `lca generate`: load a Llama/Qwen2 model (GGUF file or Hugging Face folder),
// prefill the prompt in chunks through per-layer condensed caches (LCA, full
// attention, or MTLA with the checkpoint's hyper-networks), then decode one
// token at a time, streaming the text.
// Progress and the summary go to stderr, the generated text to stdout.
#include "generate.hpp"

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "lca/error.hpp"
#include "lca/gguf.hpp"
#include "lca/model.hpp"
#if LCA_HAVE_CUDA
#include "lca/gpu_model.hpp"
#endif
#include "lca/tokenizer.hpp"

namespace lca::tools {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    LCA_CHECK(used > 0 && item.find_first_not_of(" \t", used) == std::string::npos, "generate: --prompt-ids item '",
              item, "' is not an integer");
    ids.push_back(v);
  }
  return ids;
}

std::string read_prompt_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LCA_CHECK(f.good(), "generate: --prompt-file '", path, "' cannot be opened");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Greedy (temperature 0) or sampled from softmax(logits / temperature).
int64_t pick_token(const float* logits, int64_t vocab, double temperature, std::mt19937_64& rng) {
  if (temperature <= 0.0) return std::max_element(logits, logits + vocab) - logits;
  const float top = *std::max_element(logits, logits + vocab);
  std::vector<double> p(static_cast<size_t>(vocab));
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += p[i] = std::exp((logits[i] - top) / temperature);
  double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
  for (int64_t i = 0; i < vocab; ++i)
    if ((u -= p[i]) <= 0.0) return i;
  return vocab - 1;
}

}  // namespace

int run_generate(const GenerateOptions& o) {
  const int given = !o.prompt.empty() + !o.prompt_file.empty() + !o.prompt_ids.empty();
  LCA_CHECK(given == 1, "generate: give exactly one of --prompt, --prompt-file, --prompt-ids");
  LCA_CHECK(o.attention == "lca" || o.attention == "full" || o.attention == "mtla",
            "generate: --attention must be lca, full or mtla, got '", o.attention, "'");
  LCA_CHECK(o.down_rate >= 0, "generate: --down-rate must be >= 1, got ", o.down_rate);
  LCA_CHECK(o.down_rate == 0 || o.attention == "mtla", "generate: --down-rate applies to --attention mtla only");
  LCA_CHECK(o.max_new_tokens >= 0, "generate: --max-new-tokens must be >= 0, got ", o.max_new_tokens);
  LCA_CHECK(o.chunk >= 1, "generate: --chunk must be >= 1, got ", o.chunk);
  LCA_CHECK(o.temperature >= 0.0, "generate: --temperature must be >= 0, got ", o.temperature);
  LcaParams params = LcaParams::full();
  if (o.attention == "lca") {
    params = LcaParams{};
    params.window = o.window;
    params.group = o.group;
  }
  params.validate();
  const DType storage = parse_dtype(o.dtype);
  const bool mtla = o.attention == "mtla";

  const auto t_load = Clock::now();
  const Model model = Model::load(o.model);
  const ModelConfig& cfg = model.config();
  // GQA: query/key-value heads; MLA: heads and the latent (kv_lora_rank) + rope width of a cache row.
  const std::string heads =
      cfg.is_mla() ? std::to_string(cfg.mla.heads) + " MLA, latent " + std::to_string(cfg.mla.d_latent) + "+" +
                         std::to_string(cfg.mla.d_rope)
                   : std::to_string(cfg.gqa.q_heads) + "/" + std::to_string(cfg.gqa.kv_heads);
  std::fprintf(stderr, "lca generate: %s (%s, %lld layers, d %lld, heads %s, vocab %lld, context %lld) loaded in %.1f s\n",
               o.model.c_str(), cfg.architecture.c_str(), static_cast<long long>(cfg.num_hidden_layers),
               static_cast<long long>(cfg.hidden_size), heads.c_str(), static_cast<long long>(cfg.vocab_size),
               static_cast<long long>(cfg.max_position_embeddings), seconds_since(t_load));

  // MTLA: the checkpoint's hyper-networks at --down-rate, else at the config's rate.
  Policy policy = params;
  if (mtla) {
    LCA_CHECK(cfg.is_mla(), "generate: --attention mtla needs an MLA model; ", o.model, " (", cfg.architecture,
              ") is a GQA model");
    LCA_CHECK(model.has_mtla(), "generate: --attention mtla: model ", o.model, " has no MTLA hyper-networks (",
              mtla_tensor_name(0, "fc_c.weight"), " ...); MTLA needs a checkpoint trained with them");
    MtlaParams p;
    if (o.down_rate > 0) p.down_rate = o.down_rate;
    else if (cfg.mtla) p = *cfg.mtla;
    else
      LCA_CHECK(false, "generate: --attention mtla needs --down-rate: the config of ", o.model,
                " declares no \"mtla\": {\"down_rate\": s}");
    p.validate();
    policy = p;
  }
  const std::string policy_name = std::visit([](const auto& p) { return p.describe(); }, policy);

  // The tokenizer: needed for text prompts; with --prompt-ids, output falls back to ids without one.
  std::optional<Tokenizer> tokenizer;
  if (o.prompt_ids.empty()) {
    tokenizer = load_tokenizer(o.model);
  } else {
    try {
      tokenizer = load_tokenizer(o.model);
    } catch (const Error& e) {
      std::fprintf(stderr, "lca generate: no tokenizer (%s); printing token ids\n", e.what());
    }
  }
  std::vector<int64_t> ids;
  if (!o.prompt_ids.empty()) {
    LCA_CHECK(!o.chat, "generate: --chat needs a text prompt, not --prompt-ids");
    ids = parse_ids(o.prompt_ids);
  } else {
    std::string text = o.prompt_file.empty() ? o.prompt : read_prompt_file(o.prompt_file);
    if (o.chat) {
      // ChatML (SmolLM2, Qwen2): the markers are special tokens, matched literally by encode.
      LCA_CHECK(tokenizer->token_id("<|im_start|>") >= 0 && tokenizer->token_id("<|im_end|>") >= 0,
                "generate: --chat needs a ChatML model (<|im_start|> and <|im_end|> tokens); this vocabulary has none");
      std::string wrapped;
      if (!o.system.empty()) wrapped += "<|im_start|>system\n" + o.system + "<|im_end|>\n";
      text = wrapped + "<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n";
    }
    ids = tokenizer->encode(text, true);
  }
  LCA_CHECK(!ids.empty(), "generate: the prompt is empty");
  const int64_t n_prompt = static_cast<int64_t>(ids.size());
  LCA_CHECK(n_prompt <= model.context_length(), "generate: the prompt has ", n_prompt,
            " tokens, more than the model's context of ", model.context_length());
  for (int64_t id : ids)
    LCA_CHECK(id >= 0 && id < model.vocab_size(), "generate: prompt token ", id, " is outside the vocabulary [0, ",
              model.vocab_size(), ")");

  // The backend: the CPU runtime, or the GPU one (the model's weights in bf16 on the device).
  std::unique_ptr<Sequence> cpu;
#if LCA_HAVE_CUDA
  std::unique_ptr<cuda::GpuModel> gpu_model;
  std::unique_ptr<cuda::GpuSession> gpu;
  int64_t gpu_seq = 0;
#endif
  if (o.device == "cuda") {
#if LCA_HAVE_CUDA
    LCA_CHECK(storage == DType::bf16, "generate: --device cuda keeps the cache in bf16; got --dtype ", o.dtype);
    gpu_model = std::make_unique<cuda::GpuModel>(cuda::GpuModel::upload(model));
    cuda::GpuSessionOptions so;
    so.attention = policy;
    so.max_context = std::min(model.context_length(), n_prompt + o.max_new_tokens + 1);
    gpu = std::make_unique<cuda::GpuSession>(*gpu_model, so);
    gpu_seq = gpu->add_sequence();
#else
    LCA_CHECK(false, "generate: --device cuda needs lca built with CUDA (nvcc on PATH at configure time)");
#endif
  } else {
    cpu = std::make_unique<Sequence>(model, policy, storage);
  }
  auto tokens_now = [&]() -> int64_t {
#if LCA_HAVE_CUDA
    if (gpu) return gpu->tokens(gpu_seq);
#endif
    return cpu->tokens();
  };
  std::fprintf(stderr, "lca generate: %s attention, %s cache on %s, prompt %lld tokens\n", policy_name.c_str(),
               dtype_name(storage).c_str(), o.device.c_str(), static_cast<long long>(n_prompt));

  const auto t_prefill = Clock::now();
  // One progress line, rewritten in place on a terminal (one line per chunk otherwise).
  const bool show_progress = n_prompt > o.chunk, tty = ::isatty(2) != 0;
  Tensor<float> logits;
#if LCA_HAVE_CUDA
  if (gpu) logits = gpu->prefill(gpu_seq, ids);  // in chunks of GpuSessionOptions::prefill_chunk tokens
#endif
  if (cpu)
    logits = cpu->prefill(ids, o.chunk, [&](int64_t done, int64_t total) {
      if (!show_progress) return;
      const double s = seconds_since(t_prefill);
      std::fprintf(stderr, "%sprefill %lld/%lld tokens, %.1f s, %.0f tokens/s%s", tty ? "\r" : "",
                   static_cast<long long>(done), static_cast<long long>(total), s, static_cast<double>(done) / s,
                   tty && done < total ? "   " : "\n");
    });
  const double prefill_s = seconds_since(t_prefill);

  std::mt19937_64 rng(o.seed);
  std::vector<int64_t> eos = load_eos_ids(o.model);
  if (tokenizer && tokenizer->eos_id() >= 0) eos.push_back(tokenizer->eos_id());
  int64_t generated = 0, steps = 0;
  double decode_s = 0.0;
  while (generated < o.max_new_tokens) {
    const int64_t next = pick_token(logits.row(0), model.vocab_size(), o.temperature, rng);
    ++generated;
    if (!o.ignore_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    if (tokenizer) {
      const std::string piece = tokenizer->token(next);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    } else {
      std::printf("%lld,", static_cast<long long>(next));
    }
    std::fflush(stdout);
    if (generated == o.max_new_tokens) break;
    if (tokens_now() >= model.context_length()) {
      std::fprintf(stderr, "\nlca generate: stopped at the model's context of %lld tokens\n",
                   static_cast<long long>(model.context_length()));
      break;
    }
    const int64_t one[1] = {next};
    const auto t_step = Clock::now();
#if LCA_HAVE_CUDA
    if (gpu) logits = gpu->decode(std::vector<int64_t>{gpu_seq}, one);
#endif
    if (cpu) logits = cpu->forward(one);
    decode_s += seconds_since(t_step);
    ++steps;
  }
  std::printf("\n");
  std::fflush(stdout);

  constexpr double kMiB = 1024.0 * 1024.0;
  // KV cache bytes: what the caches (the GPU: the allocator's blocks) hold, and n rows per layer.
  int64_t cache_bytes = 0, full_bytes = 0;
#if LCA_HAVE_CUDA
  if (gpu) {
    const ModelConfig& c = model.config();
    cache_bytes = gpu->cache().bytes_in_use();
    full_bytes = tokens_now() * c.num_hidden_layers * (c.is_mla() ? c.mla.row_width() : c.gqa.row_width()) * 2;
  }
#endif
  if (cpu) cache_bytes = cpu->cache_bytes(), full_bytes = cpu->full_cache_bytes();
  std::fprintf(stderr,
               "lca generate: prompt %lld tokens, prefill %.2f s (%.1f tokens/s); decode %lld tokens, %.2f tokens/s; "
               "KV cache %.2f MiB full-equivalent, %.2f MiB actual (%s, %lld bytes)\n",
               static_cast<long long>(n_prompt), prefill_s, static_cast<double>(n_prompt) / prefill_s,
               static_cast<long long>(generated), decode_s > 0 ? static_cast<double>(steps) / decode_s : 0.0,
               static_cast<double>(full_bytes) / kMiB, static_cast<double>(cache_bytes) / kMiB,
               mtla ? policy_name.c_str() : params.is_full() ? "full" : "lca", static_cast<long long>(cache_bytes));
  return 0;
}

}  // namespace lca::tools
