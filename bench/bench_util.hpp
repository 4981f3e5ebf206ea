// Shared by the kernel benchmarks: CUDA error checks that end the run, the
// median of many timed runs with CUDA events after warm-up runs, random
// inputs, and the copy bandwidth each benchmark measures beside its results.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>

#include "cuda/model_ops.hpp"

#define CHECK(x)                                                    \
  do {                                                              \
    cudaError_t e_ = (x);                                           \
    if (e_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                 \
    }                                                               \
  } while (0)

namespace lca_bench {

// Median milliseconds of `reps` calls of f, timed by events on `stream`.
template <class F>
double median_ms(F&& f, int reps, int warmup = 3, cudaStream_t stream = nullptr) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) f();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(a, stream));
    f();
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Median milliseconds of `reps` replays of a CUDA graph of what launch()
// issues on `stream` (captured once, after which the graph is destroyed).
template <class F>
double graph_median_ms(F&& launch, cudaStream_t stream, int reps, int warmup = 3) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  launch();
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = median_ms([&] { CHECK(cudaGraphLaunch(exec, stream)); }, reps, warmup, stream);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ms;
}

// Random bf16 values in [-1, 1): never time on zeros.
inline void fill_random(void* p, int64_t bytes, uint64_t seed) {
  lca::cuda::detail::fill_uniform(p, bytes / 2, 1.f, seed, nullptr);
}

// Device-to-device copy bandwidth in GB/s, counting bytes read and written.
inline double copy_gbps() {
  const size_t bytes = size_t(1) << 30;
  void *a, *b;
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  fill_random(a, bytes, 1);
  const double ms = median_ms([&] { CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 20, 5);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

}  // namespace lca_bench
