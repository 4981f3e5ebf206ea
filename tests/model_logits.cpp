// model_logits MODEL IDS OUT: the logits of every position of the token ids
// "1,2,3" under full attention (f32 cache), written to OUT as float32 [L, V],
// for smollm2_reference.py to compare with its own forward pass.
//
// model_logits --json MODEL IDS [STEPS]: the same logits as JSON on stdout,
// {"logits": [[...], ...], "greedy": [...]}, where "greedy" holds STEPS
// (default 0) tokens generated greedily after IDS (prefill, then one decode
// step per token), for hf_compare.py.
#include <cstdio>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lca/model.hpp"

namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) ids.push_back(std::stoll(item));
  return ids;
}

int64_t argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return best;
}

int emit_json(const std::string& model_path, const std::vector<int64_t>& ids, int64_t steps) {
  const lca::Model model = lca::Model::load(model_path);
  const int64_t V = model.vocab_size();
  nlohmann::json out;
  {
    lca::Sequence seq(model, lca::LcaParams::full(), lca::DType::f32);
    const lca::Tensor<float> logits = seq.forward(ids, true);
    out["logits"] = nlohmann::json::array();
    for (int64_t t = 0; t < logits.dim(0); ++t)
      out["logits"].push_back(std::vector<float>(logits.row(t), logits.row(t) + V));
  }
  lca::Sequence seq(model, lca::LcaParams::full(), lca::DType::f32);
  lca::Tensor<float> last = seq.forward(ids);
  std::vector<int64_t> greedy;
  for (int64_t s = 0; s < steps; ++s) {
    greedy.push_back(argmax(last.row(0), V));
    if (s + 1 < steps) {
      const int64_t one[1] = {greedy.back()};
      last = seq.forward(one);
    }
  }
  out["greedy"] = greedy;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc >= 4 && std::string(argv[1]) == "--json" && argc <= 5)
      return emit_json(argv[2], parse_ids(argv[3]), argc == 5 ? std::stoll(argv[4]) : 0);
    if (argc != 4) {
      std::fprintf(stderr, "usage: model_logits MODEL IDS OUT\n       model_logits --json MODEL IDS [STEPS]\n");
      return 2;
    }
    const std::vector<int64_t> ids = parse_ids(argv[2]);
    const lca::Model model = lca::Model::load(argv[1]);
    lca::Sequence seq(model, lca::LcaParams::full(), lca::DType::f32);
    const lca::Tensor<float> logits = seq.forward(ids, true);
    std::FILE* f = std::fopen(argv[3], "wb");
    if (!f || std::fwrite(logits.data(), sizeof(float), logits.vec().size(), f) != logits.vec().size())
      throw std::runtime_error(std::string("cannot write ") + argv[3]);
    std::fclose(f);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "model_logits: %s\n", e.what());
    return 1;
  }
  return 0;
}
