// A model's tokenizer and end-of-text ids: from a GGUF file's tokenizer.ggml.*
// metadata (mapped into a BpeVocab) or a Hugging Face folder (tokenizer.json,
// generation_config.json / config.json).
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lca/error.hpp"
#include "lca/gguf.hpp"
#include "lca/model.hpp"
#include "model/json_fields.hpp"
#include "model/text_file.hpp"

namespace lca {

namespace {

using model::in_quotes;
namespace fs = std::filesystem;

// llama.cpp's token types (tokenizer.ggml.token_type).
constexpr int64_t kTokenControl = 3, kTokenUserDefined = 4;

bool is_folder(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

// "eos_token_id" of a JSON object: an integer or a list of integers; absent or null: none.
void json_eos_ids(const nlohmann::json& root, const std::string& source, std::vector<int64_t>& out) {
  if (!root.is_object() || !root.contains("eos_token_id") || root["eos_token_id"].is_null()) return;
  const nlohmann::json& v = root["eos_token_id"];
  int64_t id = 0;
  if (model::json_int64(v, id)) {
    out.push_back(id);
    return;
  }
  LCA_CHECK(v.is_array(), "model config ", in_quotes(source), ": \"eos_token_id\" is ", model::json_kind(v),
            ", expected an integer or a list of integers");
  for (const auto& e : v) {
    LCA_CHECK(model::json_int64(e, id), "model config ", in_quotes(source), ": \"eos_token_id\" holds ",
              model::json_kind(e), ", expected integers");
    out.push_back(id);
  }
}

}  // namespace

BpeVocab gguf_bpe_vocab(const GgufFile& f) {
  BpeVocab v;
  const std::string kind = f.get_string("tokenizer.ggml.model");
  if (kind == "gpt2") {
    v.kind = BpeVocab::Kind::byte_level;
  } else if (kind == "llama") {
    v.kind = BpeVocab::Kind::sentencepiece;
  } else {
    detail::fail("gguf file ", in_quotes(f.path()), ": tokenizer.ggml.model ", in_quotes(kind),
                 " is not supported (gpt2: byte-level BPE, llama: SentencePiece BPE)");
  }
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (f.has("tokenizer.ggml.merges")) v.merges = f.get_string_array("tokenizer.ggml.merges");
  if (v.kind == BpeVocab::Kind::sentencepiece && v.merges.empty() && f.has("tokenizer.ggml.scores")) {
    const GgufValue& s = f.value("tokenizer.ggml.scores");
    LCA_CHECK(s.type == GgufValueType::array && s.element_type == GgufValueType::float32, "gguf file ",
              in_quotes(f.path()), ": tokenizer.ggml.scores is not an array of float32");
    for (const GgufValue& e : s.array) v.scores.push_back(static_cast<float>(e.f));
  }
  if (v.kind == BpeVocab::Kind::byte_level) {
    const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
    v.pre_tokenizer = pre == "default" ? "gpt2" : pre;
  }
  if (f.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> types = f.get_int_array("tokenizer.ggml.token_type");
    LCA_CHECK(types.size() == v.tokens.size(), "gguf file ", in_quotes(f.path()), ": tokenizer.ggml.token_type has ",
              types.size(), " entries for ", v.tokens.size(), " tokens");
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] == kTokenControl) v.special_ids.push_back(static_cast<int64_t>(i));
      if (types[i] == kTokenUserDefined) v.user_defined_ids.push_back(static_cast<int64_t>(i));
    }
  }
  if (f.has("tokenizer.ggml.bos_token_id")) v.bos_id = f.get_int("tokenizer.ggml.bos_token_id");
  if (f.has("tokenizer.ggml.eos_token_id")) v.eos_id = f.get_int("tokenizer.ggml.eos_token_id");
  if (f.has("tokenizer.ggml.unknown_token_id")) v.unk_id = f.get_int("tokenizer.ggml.unknown_token_id");
  // llama.cpp's defaults: SentencePiece models add BOS and a space prefix, GPT-2-style ones neither.
  const bool spm = v.kind == BpeVocab::Kind::sentencepiece;
  v.add_bos = f.has("tokenizer.ggml.add_bos_token") ? f.get_bool("tokenizer.ggml.add_bos_token") : spm;
  v.add_eos = f.has("tokenizer.ggml.add_eos_token") && f.get_bool("tokenizer.ggml.add_eos_token");
  v.add_space_prefix =
      f.has("tokenizer.ggml.add_space_prefix") ? f.get_bool("tokenizer.ggml.add_space_prefix") : spm;
  return v;
}

Tokenizer load_tokenizer(const std::string& model_path) {
  if (is_folder(model_path)) {
    const fs::path p = fs::path(model_path) / "tokenizer.json";
    std::error_code ec;
    LCA_CHECK(fs::is_regular_file(p, ec), "load_tokenizer: model folder ", in_quotes(model_path),
              " has no tokenizer.json");
    return Tokenizer::from_tokenizer_json(p.string());
  }
  return Tokenizer::from_vocab(gguf_bpe_vocab(GgufFile::open(model_path)));
}

std::vector<int64_t> load_eos_ids(const std::string& model_path) {
  std::vector<int64_t> ids;
  if (is_folder(model_path)) {
    // generation_config.json decides generation; config.json is the fallback.
    for (const char* name : {"generation_config.json", "config.json"}) {
      const fs::path p = fs::path(model_path) / name;
      std::error_code ec;
      if (!fs::is_regular_file(p, ec)) continue;
      nlohmann::json root;
      try {
        root = nlohmann::json::parse(model::read_text_file(p.string(), "model config", 1 << 24));
      } catch (const nlohmann::json::exception& e) {
        detail::fail("model config ", in_quotes(p.string()), ": not valid JSON: ", e.what());
      }
      json_eos_ids(root, p.string(), ids);
      if (!ids.empty()) break;
    }
    return ids;
  }
  const GgufFile f = GgufFile::open(model_path);
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"})
    if (f.has(key)) ids.push_back(f.get_int(key));
  return ids;
}

}  // namespace lca
