// bench/linear_kernels: the products of a batch-1 decode step (one row x
// against a layer's weight matrix) by cuBLAS and by our decode_linear, for
// the real shapes of MiniCPM3-4B, Qwen2.5-7B and DeepSeek-V2-Lite. Weights
// are cold, as in a model's step: each timed graph runs the product over 24
// copies of the matrix, 88 MB to 6.5 GB in all, more than L2 holds (all but
// the router's, 6 MB, which stay in L2 between replays). Two timings per path:
// - alone: the 24 products in a graph, each after the previous one ends;
// - after a norm: the same, with an RMSNorm of x before each product, as a
//   layer has (our products start their weight loads under the norm:
//   programmatic dependent launch; cuBLAS starts after it).
// Medians of 30 replays, per product. Prints a table and writes JSON (argv[1]).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "cuda/model_ops.hpp"
#include "lca/cuda.hpp"

namespace {

namespace d = lca::cuda::detail;
constexpr int kCopies = 24;

struct Product {
  const char* name;
  int64_t n, k;
};

// Median us per product of a graph of kCopies products (after a norm each when `norm`).
double time_graph(bool ours, bool norm, const Product& p, const std::vector<void*>& w, void* x, void* h, void* g,
                  void* y, cublasHandle_t blas, cudaStream_t stream) {
  const float one = 1.f, zero = 0.f;
  auto products = [&] {
    for (int c = 0; c < kCopies; ++c) {
      const void* in = x;
      if (norm) {
        d::rms_norm(x, g, 1, p.k, 1e-6, h, stream);
        in = h;
      }
      if (ours)
        d::decode_linear(d::WeightLayout::nk, p.n, p.k, in, w[c], y, 1.f, 0.f, false, stream);
      else if (cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(p.n), 1, int(p.k), &one, w[c], CUDA_R_16BF, int(p.k),
                            in, CUDA_R_16BF, int(p.k), &zero, y, CUDA_R_16BF, int(p.n), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "cublasGemmEx failed\n");
        std::exit(1);
      }
    }
  };
  return lca_bench::graph_median_ms(products, stream, 30) * 1e3 / kCopies;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string json = argc > 1 ? argv[1] : "linear_kernels.json";
  const Product products[] = {
      {"minicpm3-4b q_a+kv_a", 768 + 288, 2560}, {"minicpm3-4b q_b", 40 * 96, 768},
      {"minicpm3-4b o", 2560, 2560},             {"minicpm3-4b gate+up", 2 * 6400, 2560},
      {"minicpm3-4b down", 2560, 6400},          {"qwen2.5-7b q", 3584, 3584},
      {"qwen2.5-7b k", 512, 3584},               {"qwen2.5-7b gate+up", 2 * 18944, 3584},
      {"qwen2.5-7b down", 3584, 18944},          {"deepseek-v2-lite q+kv_a", 16 * 192 + 576, 2048},
      {"deepseek-v2-lite o", 2048, 2048},        {"deepseek-v2-lite router", 64, 2048},
  };
  const double bw = lca_bench::copy_gbps();
  std::printf("device: %s; copy bandwidth %.0f GB/s (read + write)\n", lca::cuda::device_name().c_str(), bw);
  std::printf("%-26s %6s %6s | %9s %9s %7s | %9s %9s %7s | %s\n", "product (batch 1)", "N", "K", "cuBLAS us",
              "ours us", "speedup", "+norm cuB", "+norm us", "speedup", "ours GB/s");
  cublasHandle_t blas;
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) return 1;
  std::ofstream out(json);
  out << "{\"device\": \"" << lca::cuda::device_name() << "\", \"copy_gbps\": " << bw << ", \"copies\": " << kCopies
      << ", \"rows\": [\n";
  for (size_t i = 0; i < std::size(products); ++i) {
    const Product& p = products[i];
    std::vector<void*> w(kCopies);
    for (int c = 0; c < kCopies; ++c) {
      CHECK(cudaMalloc(&w[c], p.n * p.k * 2));
      lca_bench::fill_random(w[c], p.n * p.k * 2, 100 + c);
    }
    void *x, *h, *g, *y;
    CHECK(cudaMalloc(&x, p.k * 2));
    CHECK(cudaMalloc(&h, p.k * 2));
    CHECK(cudaMalloc(&g, p.k * 2));
    CHECK(cudaMalloc(&y, p.n * 2));
    lca_bench::fill_random(x, p.k * 2, 1);
    lca_bench::fill_random(g, p.k * 2, 2);
    const double cub = time_graph(false, false, p, w, x, h, g, y, blas, stream);
    const double ours = time_graph(true, false, p, w, x, h, g, y, blas, stream);
    const double cub_n = time_graph(false, true, p, w, x, h, g, y, blas, stream);
    const double ours_n = time_graph(true, true, p, w, x, h, g, y, blas, stream);
    const double gbps = p.n * p.k * 2 / (ours * 1e-6) / 1e9;
    std::printf("%-26s %6lld %6lld | %9.2f %9.2f %6.2fx | %9.2f %9.2f %6.2fx | %.0f\n", p.name, (long long)p.n,
                (long long)p.k, cub, ours, cub / ours, cub_n, ours_n, cub_n / ours_n, gbps);
    out << "  {\"product\": \"" << p.name << "\", \"n\": " << p.n << ", \"k\": " << p.k << ", \"cublas_us\": " << cub
        << ", \"ours_us\": " << ours << ", \"cublas_after_norm_us\": " << cub_n << ", \"ours_after_norm_us\": "
        << ours_n << ", \"ours_gbps\": " << gbps << "}" << (i + 1 < std::size(products) ? ",\n" : "\n");
    for (void* q : w) cudaFree(q);
    cudaFree(x), cudaFree(h), cudaFree(g), cudaFree(y);
  }
  out << "]}\n";
  cublasDestroy(blas);
  return 0;
}
