// bench_handover: what it costs one grid to hand its results to the next
// phase of a decode step, in a CUDA graph. This decides whether a fused,
// cooperatively launched step kernel (append, grid sync, attention, grid
// sync, combine) can beat our three kernels chained by programmatic launch.
//
// Every phase is the same: block b reads cell (b + 1) % G of the phase's input
// (written by another block in the phase before) and writes cell b of its
// output, plus one. After P phases every cell must hold P; the run checks it,
// so a hand-over that does not order the phases fails instead of timing fast.
// Variants, each P = 48 phases in one graph (16 layers of three kernels):
// - kernels: one kernel per phase, plain stream order;
// - pdl: one kernel per phase, programmatic dependent launch (each calls
//   launch_dependents at its start and griddepcontrol.wait before its read);
// - grid.sync: one cooperative kernel, cooperative_groups' grid sync between
//   phases;
// - counter: one cooperative kernel, our own barrier (a fence, one atomic add
//   per block on a monotonically growing counter, a spin on an acquire load);
// - 16 x (pdl + 2 syncs): 16 cooperative kernels of three phases, chained by
//   programmatic launch if the runtime takes both attributes (the shape of one
//   fused step kernel per layer).
// Prints a table (us per hand-over, median of 200 graph replays) and writes
// JSON (argv[1]).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "cuda/common.cuh"
#include "lca/cuda.hpp"

namespace {

constexpr int kThreads = 128, kPhases = 48;

__device__ __forceinline__ void phase(const int* in, int* out) {
  const int G = gridDim.x, b = blockIdx.x;
  if (threadIdx.x == 0) out[b] = in[(b + 1) % G] + 1;
}

__global__ void phase_plain(const int* in, int* out) { phase(in, out); }

__global__ void phase_pdl(const int* in, int* out) {
  lca::cuda::detail::pdl_launch_dependents();
  lca::cuda::detail::pdl_wait();
  phase(in, out);
}

// Phases [first, first + count) of buf (cells of phase p at buf + p G), a grid sync between them.
__global__ void phases_grid_sync(int* buf, int first, int count, bool pdl) {
  if (pdl) {
    lca::cuda::detail::pdl_launch_dependents();
    lca::cuda::detail::pdl_wait();
  }
  auto grid = cooperative_groups::this_grid();
  const int G = gridDim.x;
  for (int p = first; p < first + count; ++p) {
    if (p > first) grid.sync();
    phase(buf + p * G, buf + (p + 1) * G);
  }
}

__global__ void phases_counter(int* buf, unsigned* counter, int count) {
  const int G = gridDim.x;
  for (int p = 0; p < count; ++p) {
    if (p > 0) {
      __syncthreads();
      if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        const unsigned target = static_cast<unsigned>(p) * G;
        unsigned seen;
        do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        while (seen < target);
      }
      __syncthreads();
    }
    phase(buf + p * G, buf + (p + 1) * G);
  }
}

template <class... KArgs, class... Args>
cudaError_t launch(void (*kernel)(KArgs...), int grid, cudaStream_t stream, bool pdl, bool coop, Args... args) {
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (coop) {
    attr[n].id = cudaLaunchAttributeCooperative;
    attr[n++].val.cooperative = 1;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

struct Result {
  std::string variant;
  int grid;
  double us_per_handover;
  bool ok;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string json = argc > 1 ? argv[1] : "handover.json";
  int dev = 0, sms = 0, coop_ok = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CHECK(cudaDeviceGetAttribute(&coop_ok, cudaDevAttrCooperativeLaunch, dev));
  if (!coop_ok) {
    std::fprintf(stderr, "bench_handover: this device does not take cooperative launches\n");
    return 1;
  }
  std::printf("device: %s, %d SMs; %d phases per graph, %d threads a block\n", lca::cuda::device_name().c_str(), sms,
              kPhases, kThreads);
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int* buf = nullptr;
  unsigned* counter = nullptr;
  CHECK(cudaMalloc(&buf, size_t(kPhases + 1) * 2 * sms * sizeof(int)));
  CHECK(cudaMalloc(&counter, sizeof(unsigned)));
  std::vector<Result> results;
  std::printf("%-24s %5s | %12s | %s\n", "variant", "grid", "us/hand-over", "check");

  for (const int G : {sms, 2 * sms}) {
    // Phases' cells, zeroed (and the counter) before every replay, then the variant.
    auto run = [&](const char* name, int handovers, auto&& issue) {
      cudaError_t launch_error = cudaSuccess;
      auto whole = [&] {
        CHECK(cudaMemsetAsync(buf, 0, size_t(kPhases + 1) * G * sizeof(int), stream));
        CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned), stream));
        if (const cudaError_t e = issue(); e != cudaSuccess) launch_error = e;
      };
      auto zero_only = [&] {
        CHECK(cudaMemsetAsync(buf, 0, size_t(kPhases + 1) * G * sizeof(int), stream));
        CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned), stream));
      };
      // Capture first to learn whether the runtime takes the launch at all.
      cudaGraph_t graph;
      CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      whole();
      const cudaError_t end = cudaStreamEndCapture(stream, &graph);
      if (launch_error != cudaSuccess || end != cudaSuccess) {
        std::printf("%-24s %5d | %12s | not taken: %s\n", name, G, "-",
                    cudaGetErrorString(launch_error != cudaSuccess ? launch_error : end));
        (void)cudaGetLastError();
        if (end == cudaSuccess) cudaGraphDestroy(graph);
        return;
      }
      cudaGraphDestroy(graph);
      // The memsets alone first: the variant's last replay leaves the cells to check.
      const double base = lca_bench::graph_median_ms(zero_only, stream, 200, 5);
      const double total = lca_bench::graph_median_ms(whole, stream, 200, 5);
      std::vector<int> cells(G);
      CHECK(cudaMemcpy(cells.data(), buf + size_t(kPhases) * G, G * sizeof(int), cudaMemcpyDeviceToHost));
      bool ok = true;
      for (int c : cells) ok = ok && c == kPhases;
      const double us = (total - base) * 1e3 / handovers;
      std::printf("%-24s %5d | %12.2f | %s\n", name, G, us, ok ? "ok" : "WRONG: phases overlapped");
      results.push_back({name, G, us, ok});
    };
    // Phase p reads the cells of phase p and writes those of phase p + 1.
    auto chain = [&](auto kernel, bool pdl) {
      for (int p = 0; p < kPhases; ++p)
        if (auto e = launch(kernel, G, stream, pdl, false, (const int*)(buf + p * G), buf + (p + 1) * G)) return e;
      return cudaSuccess;
    };
    run("kernels", kPhases, [&] { return chain(phase_plain, false); });
    run("pdl", kPhases, [&] { return chain(phase_pdl, true); });
    run("grid.sync", kPhases, [&] { return launch(phases_grid_sync, G, stream, false, true, buf, 0, kPhases, false); });
    run("counter", kPhases, [&] { return launch(phases_counter, G, stream, false, true, buf, counter, kPhases); });
    run("16 x (pdl + 2 syncs)", kPhases, [&] {
      for (int l = 0; l < kPhases / 3; ++l)
        if (auto e = launch(phases_grid_sync, G, stream, true, true, buf, 3 * l, 3, true)) return e;
      return cudaSuccess;
    });
    run("16 x (plain + 2 syncs)", kPhases, [&] {
      for (int l = 0; l < kPhases / 3; ++l)
        if (auto e = launch(phases_grid_sync, G, stream, false, true, buf, 3 * l, 3, false)) return e;
      return cudaSuccess;
    });
  }

  std::ofstream out(json);
  out << "{\"device\": \"" << lca::cuda::device_name() << "\", \"phases\": " << kPhases << ", \"rows\": [\n";
  for (size_t i = 0; i < results.size(); ++i)
    out << "  {\"variant\": \"" << results[i].variant << "\", \"grid\": " << results[i].grid
        << ", \"us_per_handover\": " << results[i].us_per_handover << ", \"ok\": " << (results[i].ok ? "true" : "false")
        << "}" << (i + 1 < results.size() ? "," : "") << "\n";
  out << "]}\n";
  bool all_ok = true;
  for (const Result& r : results) all_ok = all_ok && r.ok;
  return all_ok ? 0 : 1;
}
