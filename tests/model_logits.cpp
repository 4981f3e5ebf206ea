// model_logits MODEL IDS OUT: the logits of every position of the token ids
// "1,2,3" under full attention (f32 cache), written to OUT as float32 [L, V],
// for smollm2_reference.py to compare with its own forward pass.
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "lca/model.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: model_logits MODEL IDS OUT\n");
    return 2;
  }
  try {
    std::vector<int64_t> ids;
    std::stringstream ss(argv[2]);
    for (std::string item; std::getline(ss, item, ',');) ids.push_back(std::stoll(item));
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
