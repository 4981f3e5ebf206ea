#pragma once

#include <cstdint>
#include <string>

namespace lca::tools {

struct GenerateOptions {
  std::string model;         // a .gguf file or a Hugging Face folder
  std::string prompt;        // text
  std::string prompt_file;   // or text from a file
  std::string prompt_ids;    // or token ids "1,2,3" (no tokenizer needed)
  bool chat = false;         // wrap the prompt in the model's ChatML turn markers
  std::string system;        // with chat: a system turn first
  std::string attention = "lca";  // lca | full | mtla
  int64_t window = 1024;
  int64_t group = 16;
  int64_t down_rate = 0;          // mtla: s; 0 takes the config's "mtla.down_rate"
  std::string dtype = "bf16";     // cache storage
  int64_t max_new_tokens = 128;
  int64_t chunk = 512;            // prefill chunk
  double temperature = 0.0;       // 0: greedy
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::string device = "cpu";     // cpu | cuda
};

int run_generate(const GenerateOptions& options);

}  // namespace lca::tools
