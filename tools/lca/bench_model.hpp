// `lca bench-model`: prefill time and decode step latency of a whole model on
// the GPU, full attention against LCA, in one run (CUDA builds only).
#pragma once

#include <string>
#include <vector>

namespace lca::tools {

struct BenchModelOptions {
  std::string config = "qwen2.5-7b";  // a preset name or a model folder (config.json)
  bool random_weights = true;
  std::vector<long long> contexts = {8192, 32768, 131072};
  std::vector<long long> batches = {1, 8};
  long long window = 1024, group = 16;
  int decode_steps = 20;
  bool cublas_products = false;  // cuBLAS for every product (GpuSessionOptions::one_row_products off)
  bool profile_decode = false;  // one extra step per batch between cudaProfilerStart/Stop (for ncu)
  std::string json_path;
};

int run_bench_model(const BenchModelOptions& options);

}  // namespace lca::tools
