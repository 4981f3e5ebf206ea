#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lca::tools {

struct DemoOptions {
  std::vector<int64_t> contexts{4096, 16384, 32768};
  int64_t queries = 64;
  int64_t window = 1024;
  int64_t group = 16;
  std::string dtype = "bf16";
  uint64_t seed = 2604;
  std::string json_path;
};

int run_demo(const DemoOptions& options);

}  // namespace lca::tools
