// The lca command-line tool. Subcommands are thin layers over the library.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "demo.hpp"
#include "generate.hpp"
#include "tokenize.hpp"
#if LCA_HAVE_CUDA
#include "bench_model.hpp"
#endif

int main(int argc, char** argv) {
  CLI::App app{"lca: Latent-Condensed Attention for long-context inference"};
  app.require_subcommand(1);

  lca::tools::DemoOptions demo;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo", "Fill a condensed and a full KV cache of a DeepSeek-V2-Lite-shaped MLA layer and compare them");
  demo_cmd->add_option("--contexts", demo.contexts, "Context lengths (tokens)")->check(CLI::PositiveNumber);
  demo_cmd->add_option("--queries", demo.queries, "Decode queries attended against each cache")
      ->check(CLI::PositiveNumber);
  demo_cmd->add_option("--window", demo.window, "LCA window w")->check(CLI::NonNegativeNumber);
  demo_cmd->add_option("--group", demo.group, "LCA group size g")->check(CLI::PositiveNumber);
  demo_cmd->add_option("--dtype", demo.dtype, "Cache storage dtype: bf16, f16 or f32");
  demo_cmd->add_option("--seed", demo.seed, "Random seed");
  demo_cmd->add_option("--json", demo.json_path, "Also write the results as JSON to this file");

  lca::tools::GenerateOptions gen;
  CLI::App* gen_cmd = app.add_subcommand("generate", "Generate text with a Llama/Qwen2 (GGUF or HF folder) or DeepSeek-V2/V3/MiniCPM3 model (HF folder) over LCA, full attention or MTLA");
  gen_cmd->add_option("--model", gen.model, "A .gguf file or a Hugging Face model folder")->required();
  gen_cmd->add_option("--prompt", gen.prompt, "Prompt text");
  gen_cmd->add_option("--prompt-file", gen.prompt_file, "Read the prompt text from this file");
  gen_cmd->add_option("--prompt-ids", gen.prompt_ids, "Prompt as comma-separated token ids");
  gen_cmd->add_flag("--chat", gen.chat, "Wrap the prompt as a user turn of the model's chat format (ChatML)");
  gen_cmd->add_option("--system", gen.system, "With --chat: a system message first");
  gen_cmd->add_option("--attention", gen.attention, "lca, full, or mtla (MLA checkpoints with MTLA hyper-networks)")
      ->check(CLI::IsMember({"lca", "full", "mtla"}));
  gen_cmd->add_option("--down-rate", gen.down_rate, "MTLA down rate s (default: the config's mtla.down_rate)")
      ->check(CLI::PositiveNumber);
  gen_cmd->add_option("--window", gen.window, "LCA window w")->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--group", gen.group, "LCA group size g")->check(CLI::PositiveNumber);
  gen_cmd->add_option("--dtype", gen.dtype, "KV cache storage: bf16, f16 or f32");
  gen_cmd->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate")->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--chunk", gen.chunk, "Prefill chunk (tokens)")->check(CLI::PositiveNumber);
  gen_cmd->add_option("--temperature", gen.temperature, "0: greedy (default); > 0: sample")->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--seed", gen.seed, "Sampling seed");
  gen_cmd->add_flag("--ignore-eos", gen.ignore_eos, "Keep generating past the end-of-text token");
  gen_cmd->add_option("--device", gen.device, "cpu, or cuda (the GPU runtime; lca built with CUDA)")
      ->check(CLI::IsMember({"cpu", "cuda"}));

  lca::tools::TokenizeOptions tokenize;
  CLI::App* tokenize_cmd =
      app.add_subcommand("tokenize", "Encode text or decode ids with a tokenizer.json or a vocabulary");
  tokenize_cmd->add_option("--tokenizer", tokenize.tokenizer_json, "A Hugging Face tokenizer.json");
  tokenize_cmd->add_option("--vocab", tokenize.vocab_json, "Or a BpeVocab as JSON (see tools/lca/tokenize.cpp)");
  tokenize_cmd->add_option("--text", tokenize.text, "Encode this text and print the ids");
  tokenize_cmd->add_option("--ids", tokenize.ids, "Decode these ids ('1 2 3') and print the text");
  tokenize_cmd->add_option("--jsonl", tokenize.jsonl,
                           "Encode each line (a JSON string) of this file, '-' for stdin; print JSON lines");
  tokenize_cmd->add_flag("--no-special", tokenize.no_special, "Do not add BOS/EOS");
  tokenize_cmd->add_flag("--skip-special", tokenize.skip_special, "Decoding: leave out special tokens");

#if LCA_HAVE_CUDA
  lca::tools::BenchModelOptions bench;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench-model", "On the GPU: prefill time and decode step latency of a whole model, full vs LCA, in one run");
  bench_cmd->add_option("--config", bench.config,
                        "A preset (qwen2.5-7b, minicpm3-4b, deepseek-v2-lite) or a model folder with config.json");
  bench_cmd->add_flag("--random-weights", bench.random_weights, "Random weights at the config's sizes (required)");
  bench_cmd->add_option("--context", bench.contexts, "Context lengths (tokens)")->delimiter(',')->check(CLI::PositiveNumber);
  bench_cmd->add_option("--batch", bench.batches, "Decode batch sizes")->delimiter(',')->check(CLI::PositiveNumber);
  bench_cmd->add_option("--window", bench.window, "LCA window w")->check(CLI::NonNegativeNumber);
  bench_cmd->add_option("--group", bench.group, "LCA group size g")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--steps", bench.decode_steps, "Decode steps timed per batch")->check(CLI::PositiveNumber);
  bench_cmd->add_flag("--cublas-products", bench.cublas_products,
                      "Batch-1 decode products by cuBLAS instead of our one-row kernel (for comparison)");
  bench_cmd->add_flag("--profile-decode", bench.profile_decode,
                      "One extra decode step per batch between cudaProfilerStart/Stop, for ncu --profile-from-start off");
  bench_cmd->add_option("--json", bench.json_path, "Also write the results as JSON to this file");
#endif

  CLI11_PARSE(app, argc, argv);
  try {
    if (demo_cmd->parsed()) return lca::tools::run_demo(demo);
    if (gen_cmd->parsed()) return lca::tools::run_generate(gen);
    if (tokenize_cmd->parsed()) return lca::tools::run_tokenize(tokenize);
#if LCA_HAVE_CUDA
    if (bench_cmd->parsed()) return lca::tools::run_bench_model(bench);
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
