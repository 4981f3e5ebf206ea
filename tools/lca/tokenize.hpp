#pragma once

#include <string>

namespace lca::tools {

struct TokenizeOptions {
  std::string tokenizer_json;  // a Hugging Face tokenizer.json
  std::string vocab_json;      // or a BpeVocab as JSON (fields as in lca/tokenizer.hpp)
  std::string text;            // encode this and print the ids
  std::string ids;             // or decode these ("1 2 3")
  std::string jsonl;           // or encode each line (a JSON string) of this file ("-": stdin)
  bool no_special = false;     // leave out BOS/EOS the tokenizer would add
  bool skip_special = false;   // decoding: leave out special tokens
};

int run_tokenize(const TokenizeOptions& options);

}  // namespace lca::tools
