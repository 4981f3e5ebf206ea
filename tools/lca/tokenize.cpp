// lca tokenize: encode or decode with a tokenizer.json or an in-memory
// vocabulary. The JSON-lines mode is what tests/tokenizer_agreement.py drives.
#include "tokenize.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lca/error.hpp"
#include "lca/tokenizer.hpp"

namespace lca::tools {

namespace {

using json = nlohmann::json;

// {"kind": "byte_level" | "sentencepiece", "pre_tokenizer", "tokens", "merges",
//  "scores", "special_ids", "user_defined_ids", "bos_id", "eos_id", "unk_id",
//  "add_bos", "add_eos", "add_space_prefix"}; absent fields keep BpeVocab's defaults.
BpeVocab read_vocab(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LCA_CHECK(in.good(), "lca tokenize: --vocab '", path, "': cannot open");
  const json j = json::parse(in);
  BpeVocab v;
  const std::string kind = j.value("kind", "byte_level");
  LCA_CHECK(kind == "byte_level" || kind == "sentencepiece", "lca tokenize: --vocab '", path, "': kind '", kind,
            "' is not byte_level or sentencepiece");
  v.kind = kind == "byte_level" ? BpeVocab::Kind::byte_level : BpeVocab::Kind::sentencepiece;
  v.pre_tokenizer = j.value("pre_tokenizer", v.pre_tokenizer);
  v.tokens = j.at("tokens").get<std::vector<std::string>>();
  v.merges = j.value("merges", std::vector<std::string>{});
  v.scores = j.value("scores", std::vector<float>{});
  v.special_ids = j.value("special_ids", std::vector<int64_t>{});
  v.user_defined_ids = j.value("user_defined_ids", std::vector<int64_t>{});
  v.bos_id = j.value("bos_id", v.bos_id);
  v.eos_id = j.value("eos_id", v.eos_id);
  v.unk_id = j.value("unk_id", v.unk_id);
  v.add_bos = j.value("add_bos", v.add_bos);
  v.add_eos = j.value("add_eos", v.add_eos);
  v.add_space_prefix = j.value("add_space_prefix", v.add_space_prefix);
  return v;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

}  // namespace

int run_tokenize(const TokenizeOptions& o) {
  LCA_CHECK(o.tokenizer_json.empty() != o.vocab_json.empty(), "lca tokenize: give one of --tokenizer and --vocab");
  const int modes = !o.text.empty() + !o.ids.empty() + !o.jsonl.empty();
  LCA_CHECK(modes == 1, "lca tokenize: give one of --text, --ids and --jsonl");
  const Tokenizer tok = o.tokenizer_json.empty() ? Tokenizer::from_vocab(read_vocab(o.vocab_json))
                                                 : Tokenizer::from_tokenizer_json(o.tokenizer_json);
  if (!o.text.empty()) {
    fmt::print("{}\n", join_ids(tok.encode(o.text, !o.no_special)));
    return 0;
  }
  if (!o.ids.empty()) {
    std::istringstream in(o.ids);
    std::vector<int64_t> ids;
    for (int64_t id; in >> id;) ids.push_back(id);
    LCA_CHECK(in.eof(), "lca tokenize: --ids '", o.ids, "' is not a list of integers");
    fmt::print("{}\n", tok.decode(ids, o.skip_special));
    return 0;
  }
  // One JSON string per line in; one {"ids", "decoded", "decoded_skip_special", "pieces"} per line out.
  std::ifstream file;
  if (o.jsonl != "-") {
    file.open(o.jsonl, std::ios::binary);
    LCA_CHECK(file.good(), "lca tokenize: --jsonl '", o.jsonl, "': cannot open");
  }
  std::istream& in = o.jsonl == "-" ? std::cin : file;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const json text = json::parse(line, nullptr, false);
    LCA_CHECK(text.is_string(), "lca tokenize: --jsonl line ", n, " is not a JSON string");
    const std::vector<int64_t> ids = tok.encode(text.get<std::string>(), !o.no_special);
    json out = {{"ids", ids},
                {"decoded", tok.decode(ids, false)},
                {"decoded_skip_special", tok.decode(ids, true)},
                {"pieces", tok.pre_tokenize(text.get<std::string>())}};
    fmt::print("{}\n", out.dump(-1, ' ', false, json::error_handler_t::strict));
  }
  return 0;
}

}  // namespace lca::tools
