// bench/moe_kernels: one DeepSeek-V2-Lite-shaped MoE layer (GpuMoe::random:
// hidden 2048, 64 routed experts of 1408, top-6, 2 shared experts as two
// always-chosen units of 1408) through GpuMoe::forward at 1, 8 and 32 rows
// (decode: the forward captured in a CUDA graph and replayed; at 1 row also
// the batch-1 decode step's one-row path) and 128 to 8192 rows (prefill
// chunks: plain launches). Beside it, at every row count, the
// per-expert cuBLAS path (MoeWorkspace blas_min_rows 1: one GEMM per expert
// with rows for gate and up, one for down; plain launches, one host
// synchronisation each), so that measurement decides where it should take
// over. Times are medians of CUDA events after warm-up runs. GB/s counts the
// weights a forward touches (the router, the distinct routed experts with
// rows, the shared units), from the routing read back after the timed runs;
// TFLOP/s the products' 2 (pairs 3 F D + rows E D). The copy bandwidth is
// measured in the same run. Prints a table; `--json FILE` writes JSON;
// `--stages` times the one-row path stage by stage instead.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "cuda/model_ops.hpp"
#include "cuda/moe.hpp"
#include "lca/cuda.hpp"
#include "lca/model_config.hpp"
#include "model/mla.hpp"
#include "runtime/gpu_moe.hpp"

namespace {

using lca_bench::graph_median_ms;
using lca_bench::median_ms;

using lca_bench::copy_gbps;
using lca_bench::fill_random;


struct Row {
  int64_t rows = 0;
  std::string path;
  double us = 0, gbps = 0, tflops = 0, weight_mb = 0;
  int64_t routed_experts = 0;
};

// `--stages`: the batch-1 decode step's one-row MoE path stage by stage: graphs
// of 26 layers' worth (DeepSeek-V2-Lite's MoE layers) of the path cut after
// each stage, each after an RMSNorm as in a layer; the differences are each
// stage's cost. Random weights of the layer's sizes, routing softmax greedy.
int one_row_stages(int64_t D, int64_t E, int64_t F, int64_t K, int64_t S) {
  namespace d = lca::cuda::detail;
  const int64_t C = K + S;
  const int layers = 26;
  void *router, *gate_up, *down, *h, *x, *logits, *expert, *weight, *gu, *act, *y, *ident;
  CHECK(cudaMalloc(&router, E * D * 2));
  CHECK(cudaMalloc(&gate_up, (E + S) * 2 * F * D * 2));
  CHECK(cudaMalloc(&down, (E + S) * D * F * 2));
  CHECK(cudaMalloc(&h, D * 2));
  CHECK(cudaMalloc(&x, D * 2));
  CHECK(cudaMalloc(&logits, E * 4));
  CHECK(cudaMalloc(&expert, C * 4));
  CHECK(cudaMalloc(&weight, C * 4));
  CHECK(cudaMalloc(&gu, C * 2 * F * 2));
  CHECK(cudaMalloc(&act, C * F * 2));
  CHECK(cudaMalloc(&y, C * D * 2));
  CHECK(cudaMalloc(&ident, C * 4));
  std::vector<int32_t> id(static_cast<size_t>(C));
  for (int64_t i = 0; i < C; ++i) id[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  CHECK(cudaMemcpy(ident, id.data(), C * 4, cudaMemcpyHostToDevice));
  fill_random(router, E * D * 2, 1);
  fill_random(gate_up, (E + S) * 2 * F * D * 2, 2);
  fill_random(down, (E + S) * D * F * 2, 3);
  fill_random(x, D * 2, 5);
  d::MoeRoutingArgs ra;
  ra.experts = static_cast<int>(E), ra.per_token = static_cast<int>(K), ra.shared_units = static_cast<int>(S);
  cudaStream_t st;
  CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto* ex = static_cast<int32_t*>(expert);
  const d::LinearBatch gate_up_batch{C, 0, 2 * F * D, 2 * F, ex}, down_batch{C, F, D * F, D, ex};
  auto path = [&](int stages) {
    d::rms_norm(x, router, 1, D, 1e-6, h, st);  // the kernel before, as in a layer
    if (stages >= 1) d::decode_linear(d::WeightLayout::nk, E, D, h, router, logits, 1.f, 0.f, true, st);
    if (stages >= 2)
      d::moe_route(static_cast<float*>(logits), nullptr, 1, ra, ex, static_cast<float*>(weight), st);
    if (stages >= 3) d::decode_linear(d::WeightLayout::nk, 2 * F, D, h, gate_up, gu, 1.f, 0.f, false, st, gate_up_batch);
    if (stages >= 4) d::moe_swiglu_interleaved(gu, C, F, act, st);
    if (stages >= 5) d::decode_linear(d::WeightLayout::nk, D, F, act, down, y, 1.f, 0.f, false, st, down_batch);
    if (stages >= 6)
      d::moe_combine(x, y, static_cast<int32_t*>(ident), static_cast<float*>(weight), 1, static_cast<int>(C), D, st);
  };
  path(2);  // a choice of experts before the graphs that cut it off
  CHECK(cudaStreamSynchronize(st));
  const char* names[] = {"rms_norm", "router", "route", "gate/up", "swiglu", "down", "combine"};
  std::printf("one-row MoE path, per layer (graphs of %d layers):\n", layers);
  double before = 0, after_swiglu = 0;
  for (int k = 0; k <= 6; ++k) {
    const double us = graph_median_ms([&] { for (int l = 0; l < layers; ++l) path(k); }, st, 50) * 1e3 / layers;
    std::printf("  %-9s %7.1f us (+%.1f)\n", names[k], us, us - before);
    before = us;
    if (k == 4) after_swiglu = us;
  }
  // Down and combine in one kernel (moe_down_row), after the same first stages.
  const double us = graph_median_ms(
                        [&] {
                          for (int l = 0; l < layers; ++l) {
                            path(4);
                            d::moe_down_row(act, down, ex, static_cast<float*>(weight), static_cast<int>(C), D, F, x,
                                            st);
                          }
                        },
                        st, 50) *
                    1e3 / layers;
  std::printf("  down and combine in one kernel: %.1f us (+%.1f after swiglu)\n", us, us - after_swiglu);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string json;
  bool stages = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (std::string(argv[i]) == "--stages") {
      stages = true;
    } else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--stages]\n", argv[0]);
      return 2;
    }
  }
  const lca::ModelConfig cfg = lca::preset_config("deepseek-v2-lite");
  const lca::model::MlaArch arch = lca::model::mla_arch(cfg);
  const int64_t D = cfg.hidden_size, E = arch.experts, K = arch.per_token, F = arch.expert_size, S = arch.shared;
  if (stages) return one_row_stages(D, E, F, K, S);
  const int64_t max_rows = 8192;
  const double bw = copy_gbps();
  std::printf("device: %s; copy bandwidth %.0f GB/s (read + write)\n", lca::cuda::device_name().c_str(), bw);
  std::printf("MoE layer: hidden %lld, %lld experts of %lld, top-%lld, %lld shared units\n", (long long)D,
              (long long)E, (long long)F, (long long)K, (long long)S);

  const lca::cuda::GpuMoe moe = lca::cuda::GpuMoe::random(arch, D, 42);
  lca::cuda::MoeWorkspace grouped_ws(arch, D, max_rows), blas_ws(arch, D, max_rows, 1);
  void *h, *x, *blas_workspace;
  CHECK(cudaMalloc(&h, max_rows * D * 2));
  CHECK(cudaMalloc(&x, max_rows * D * 2));
  fill_random(h, max_rows * D * 2, 3);
  fill_random(x, max_rows * D * 2, 5);
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS setup failed\n");
    return 1;
  }
  CHECK(cudaMalloc(&blas_workspace, 32 << 20));
  cublasSetWorkspace(blas, blas_workspace, 32 << 20);
  CHECK(cudaDeviceSynchronize());

  // Weights touched and flops of the last forward on ws.
  auto measure = [&](const lca::cuda::MoeWorkspace& ws, int64_t rows, const std::string& path, double ms) {
    const std::vector<int64_t> n = ws.expert_rows();
    Row r;
    r.rows = rows;
    r.path = path;
    r.us = ms * 1e3;
    int64_t experts_touched = 0;
    for (int64_t e = 0; e < E + S; ++e) experts_touched += n[e] > 0;
    for (int64_t e = 0; e < E; ++e) r.routed_experts += n[e] > 0;
    const double bytes = double(E * D * 2) + double(experts_touched) * 3 * F * D * 2;
    const double flops = 2.0 * (double(rows) * (K + S) * 3 * F * D + double(rows) * E * D);
    r.weight_mb = bytes / 1e6;
    r.gbps = bytes / (ms * 1e-3) / 1e9;
    r.tflops = flops / (ms * 1e-3) / 1e12;
    return r;
  };

  std::vector<Row> rows_out;
  for (const int64_t rows : {int64_t(1), int64_t(8), int64_t(32), int64_t(128), int64_t(512), int64_t(2048), max_rows}) {
    const bool decode = rows <= 32;  // decode batches run from graphs; larger counts are prefill chunks
    const int reps = decode ? 200 : 20;
    auto forward = [&](lca::cuda::MoeWorkspace& ws) { moe.forward(h, rows, x, ws, stream, blas); };
    if (decode) {
      const double ms = graph_median_ms([&] { forward(grouped_ws); }, stream, reps, 5);
      rows_out.push_back(measure(grouped_ws, rows, "grouped, graph", ms));
      if (rows == 1) {  // a batch-1 decode step's path: one-row products of the chosen experts
        const double one_ms =
            graph_median_ms([&] { moe.forward(h, rows, x, grouped_ws, stream, blas, true); }, stream, reps, 5);
        rows_out.push_back(measure(grouped_ws, rows, "one-row, graph", one_ms));
      }
    } else {
      const double ms = median_ms([&] { forward(grouped_ws); }, reps, 5, stream);
      rows_out.push_back(measure(grouped_ws, rows, "grouped", ms));
    }
    const double blas_ms = median_ms([&] { forward(blas_ws); }, reps, 5, stream);
    rows_out.push_back(measure(blas_ws, rows, "cublas per expert", blas_ms));
  }
  CHECK(cudaDeviceSynchronize());

  std::printf("%6s  %-18s | %9s | %6s %9s | %8s %5s | %8s\n", "rows", "path", "us", "routed", "weight MB", "GB/s",
              "%bw", "TFLOP/s");
  for (const Row& r : rows_out)
    std::printf("%6lld  %-18s | %9.1f | %6lld %9.1f | %8.0f %4.0f%% | %8.1f\n", (long long)r.rows, r.path.c_str(),
                r.us, (long long)r.routed_experts, r.weight_mb, r.gbps, 100 * r.gbps / bw, r.tflops);
  if (!json.empty()) {
    std::ofstream out(json);
    out << "{\"device\": \"" << lca::cuda::device_name() << "\", \"copy_gbps\": " << bw << ", \"hidden\": " << D
        << ", \"experts\": " << E << ", \"per_token\": " << K << ", \"expert_size\": " << F
        << ", \"shared_units\": " << S << ", \"rows\": [\n";
    for (size_t i = 0; i < rows_out.size(); ++i) {
      const Row& r = rows_out[i];
      out << (i ? ",\n" : "") << "  {\"rows\": " << r.rows << ", \"path\": \"" << r.path << "\", \"us\": " << r.us
          << ", \"routed_experts\": " << r.routed_experts << ", \"weight_mb\": " << r.weight_mb
          << ", \"gbps\": " << r.gbps << ", \"tflops\": " << r.tflops << "}";
    }
    out << "\n]}\n";
    std::printf("wrote %s\n", json.c_str());
  }
  cublasDestroy(blas);
  cudaStreamDestroy(stream);
  cudaFree(h);
  cudaFree(x);
  cudaFree(blas_workspace);
  return 0;
}
