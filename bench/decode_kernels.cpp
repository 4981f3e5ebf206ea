// bench/decode_kernels: one decode step of one layer through PagedKvCache
// (append + condense + split-KV attention + combine), full attention against
// LCA, same machinery, for three real shapes at 8K/32K/128K and batch 1/8/32.
// The step is captured in a CUDA graph and replayed; times are medians of
// many replays with CUDA events; the cache holds random values (never zeros).
// The copy bandwidth is measured in the same run. Then the capacity line: how
// many 128K sequences a 40 GiB pool holds for a 27-layer DeepSeek-V2-Lite-
// shaped model, counted by allocating them until the pool refuses. MTLA
// (s = 2, 4, 16) runs through the same cache and attention kernel beside LCA.
// Batch 1 (and batch 8 at 32K) is also timed as a model replays it: the steps
// of all its layers (27, 62, 28) in one graph, time per layer. Prints tables
// and writes JSON (argv[1]). `--split-sweep [BATCH]`: step times (batch 1
// unless given) against the KV split count; `JSON --model-graph`: only the whole-model graph rows;
// `--only NAME` (last): only the shapes whose name contains NAME (minicpm3).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "bench_util.hpp"
#include "cuda/model_ops.hpp"
#include "lca/cuda.hpp"
#include "lca/paged_cache.hpp"

namespace {

using lca_bench::median_ms;

using lca_bench::copy_gbps;
using lca_bench::fill_random;

struct Shape {
  const char* name;
  lca::KvLayout layout;
  int64_t heads, kv_heads, d_latent_or_head, d_rope;
};

// Bytes of one bf16 cache row: MLA [c ; k^R], GQA every kv head's [k ; v].
int64_t row_bytes_of(const Shape& s) {
  return (s.layout == lca::KvLayout::mla ? s.d_latent_or_head + s.d_rope : 2 * s.kv_heads * s.d_latent_or_head) * 2;
}

// MTLA hyper-networks with random weights at nn.Linear's initial scale, one per layer.
std::vector<lca::MtlaHyperNet<float>> random_hyper(int64_t dc, int64_t layers) {
  uint64_t state = 12345;
  auto rand = [&](lca::Shape shape) {
    lca::Tensor<float> t(std::move(shape));
    for (float& x : t.vec()) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      x = (static_cast<float>(state >> 40) / float(1 << 24) * 2.f - 1.f) / std::sqrt(float(dc));
    }
    return t;
  };
  lca::MtlaHyperNet<float> h{rand({dc / 4, dc}), rand({dc / 4}), rand({dc / 4, dc}), rand({dc / 4})};
  return std::vector<lca::MtlaHyperNet<float>>(static_cast<size_t>(layers), h);
}

lca::cuda::PagedCacheConfig config_of(const Shape& s, const lca::Policy& p, int64_t layers = 1) {
  lca::cuda::PagedCacheConfig c;
  c.layout = s.layout;
  if (s.layout == lca::KvLayout::mla) {
    c.mla = lca::MlaDims{.heads = s.heads, .d_latent = s.d_latent_or_head, .d_rope = s.d_rope, .d_nope = 128, .d_v = 128};
    c.scale = 1.0 / std::sqrt(192.0);
  } else {
    c.gqa = lca::GqaDims{.q_heads = s.heads, .kv_heads = s.kv_heads, .head_dim = s.d_latent_or_head};
    c.scale = 1.0 / std::sqrt(double(s.d_latent_or_head));
  }
  c.policy = p;
  c.layers = layers;
  if (std::holds_alternative<lca::MtlaParams>(p)) c.mtla_hyper = random_hyper(s.d_latent_or_head, layers);
  c.dtype = lca::DType::bf16;
  c.block_rows = 64;
  return c;
}

struct StepTime {
  double ms = 0;
  int64_t splits = 0;
};

// A cache of `batch` sequences of t tokens each (their slots in seqs), random contents.
std::unique_ptr<lca::cuda::PagedKvCache> random_cache(lca::cuda::PagedCacheConfig cfg, int64_t batch, int64_t t,
                                                      std::vector<int64_t>& seqs) {
  cfg.max_seqs = batch;
  cfg.max_context = t + 1;
  auto cache = std::make_unique<lca::cuda::PagedKvCache>(cfg);
  for (int64_t b = 0; b < batch; ++b) {
    seqs.push_back(cache->add_sequence());
    cache->set_tokens(seqs.back(), t);
  }
  fill_random(cache->device_pool(), cache->total_blocks() * cache->block_bytes(), 7);
  return cache;
}

// One step at position t of `batch` sequences of t tokens, replayed from a graph;
// with cfg.layers > 1 the graph holds the step of every layer, as a model's
// decode graph does, and the time is per layer.
StepTime time_step(lca::cuda::PagedCacheConfig cfg, int64_t batch, int64_t t, int reps, int64_t splits = 0) {
  std::vector<int64_t> seqs;
  const auto cache_ptr = random_cache(cfg, batch, t, seqs);
  lca::cuda::PagedKvCache& cache = *cache_ptr;
  const int64_t rows_bytes = batch * cache.row_width() * 2, q_bytes = batch * cache.query_heads() * cache.query_width() * 2;
  void *rows, *queries, *out;
  CHECK(cudaMalloc(&rows, rows_bytes));
  CHECK(cudaMalloc(&queries, q_bytes));
  CHECK(cudaMalloc(&out, batch * cache.query_heads() * cache.output_width() * 2));
  fill_random(rows, rows_bytes, 11);
  fill_random(queries, q_bytes, 13);
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  cache.begin_step(seqs, stream, splits);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int64_t l = 0; l < cfg.layers; ++l) cache.decode_layer(l, rows, queries, out, stream);
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  StepTime st;
  st.splits = cache.step_splits();
  // Each replay appends the same token again (and condenses the same group): idempotent.
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> times;
  for (int i = 0; i < reps + 5; ++i) {
    CHECK(cudaEventRecord(a, stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    if (i >= 5) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  st.ms = times[times.size() / 2] / static_cast<double>(cfg.layers);
  cache.end_step();
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(stream);
  cudaFree(rows);
  cudaFree(queries);
  cudaFree(out);
  return st;
}

// 128K sequences that a pool of `bytes` holds for `layers` layers.
int64_t capacity(lca::cuda::PagedCacheConfig cfg, int64_t bytes, int64_t context) {
  cfg.pool_bytes = bytes;
  cfg.max_context = context;
  cfg.max_seqs = 1024;
  lca::cuda::PagedKvCache cache(cfg);
  int64_t n = 0;
  for (;; ++n) {
    const int64_t seq = cache.add_sequence();
    try {
      cache.set_tokens(seq, context);
    } catch (const lca::Error&) {
      break;
    }
  }
  return n;
}

}  // namespace

// `--profile SHAPE-INDEX CONTEXT BATCH full|lca`: the step's kernels launched
// directly (no graph) 20 times, for ncu.
int profile(int shape, int64_t ctx, int64_t batch, bool full, const Shape* shapes) {
  lca::cuda::PagedCacheConfig cfg = config_of(shapes[shape], full ? lca::LcaParams::full() : lca::LcaParams{});
  std::vector<int64_t> seqs;
  const auto cache_ptr = random_cache(cfg, batch, ctx, seqs);
  lca::cuda::PagedKvCache& cache = *cache_ptr;
  void *rows, *queries, *out;
  CHECK(cudaMalloc(&rows, batch * cache.row_width() * 2));
  CHECK(cudaMalloc(&queries, batch * cache.query_heads() * cache.query_width() * 2));
  CHECK(cudaMalloc(&out, batch * cache.query_heads() * cache.output_width() * 2));
  fill_random(rows, batch * cache.row_width() * 2, 11);
  fill_random(queries, batch * cache.query_heads() * cache.query_width() * 2, 13);
  cache.begin_step(seqs);
  for (int i = 0; i < 20; ++i) cache.decode_layer(0, rows, queries, out);
  CHECK(cudaDeviceSynchronize());
  std::printf("profiled %s %s context %lld batch %lld, %lld splits\n", shapes[shape].name, full ? "full" : "lca",
              (long long)ctx, (long long)batch, (long long)cache.step_splits());
  return 0;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  bool quick = argc > 2 && std::string(argv[2]) == "--quick";
  const Shape shapes[] = {{"deepseek-v2-lite mla", lca::KvLayout::mla, 16, 1, 512, 64},
                          {"minicpm3-4b mla", lca::KvLayout::mla, 40, 1, 256, 32},
                          {"qwen2.5-7b gqa", lca::KvLayout::gqa, 28, 4, 128, 0}};
  if (argc > 1 && std::string(argv[1]) == "--split-sweep") {  // step time against the split count
    const int64_t batch = argc > 2 ? std::atoll(argv[2]) : 1;
    const std::vector<int64_t> counts = batch == 1 ? std::vector<int64_t>{0, 33, 66, 132, 143, 264}
                                                   : std::vector<int64_t>{0, 8, 11, 16, 22, 33, 48};
    std::printf("batch %lld\n", (long long)batch);
    for (int si = 0; si < 3; ++si)
      for (int64_t ctx : {int64_t(32768), int64_t(131072)})
        for (const bool full : {false, true}) {
          std::printf("%-22s %7lld %s:", shapes[si].name, (long long)ctx, full ? "full" : "lca ");
          const auto cfg = config_of(shapes[si], full ? lca::LcaParams::full() : lca::LcaParams{});
          for (int64_t sp : counts) {
            const StepTime st = time_step(cfg, batch, ctx, 100, sp);
            std::printf("  %lld: %.1f", (long long)st.splits, st.ms * 1e3);
          }
          std::printf("  (splits: us)\n");
        }
    return 0;
  }
  if (argc > 5 && std::string(argv[1]) == "--profile")
    return profile(std::atoi(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), std::string(argv[5]) == "full",
                   shapes);
  // `--model-graph`: only the whole-model graph rows (a quick A/B of the batch-1 step).
  const bool graph_only = argc > 2 && std::string(argv[2]) == "--model-graph";
  const std::string json = argc > 1 ? argv[1] : "decode_kernels.json";
  const std::string only = argc > 3 && std::string(argv[argc - 2]) == "--only" ? argv[argc - 1] : "";
  auto skip = [&](const Shape& s) { return std::string(s.name).find(only) == std::string::npos; };
  const int64_t contexts[] = {8192, 32768, 131072};
  const int64_t batches[] = {1, 8, 32};
  const double bw = copy_gbps();
  std::printf("device: %s; copy bandwidth %.0f GB/s (read + write)\n", lca::cuda::device_name().c_str(), bw);
  std::printf("%-22s %7s %5s | %9s %7s %5s | %9s %9s %7s %5s | %7s | %9s %9s\n", "shape", "context", "batch", "full us",
              "GB/s", "%bw", "LCA us", "close us", "GB/s", "%bw", "full/LCA", "full MiB", "LCA MiB");
  std::ofstream out(json);
  out << "{\"device\": \"" << lca::cuda::device_name() << "\", \"copy_gbps\": " << bw << ", \"rows\": [\n";
  bool first_row = true;
  const lca::LcaParams lca_p;  // w = 1024, g = 16
  for (const Shape& s : shapes) {
    for (int64_t ctx : contexts) {
      for (int64_t batch : batches) {
        if (graph_only || skip(s) || (quick && (ctx > 32768 || batch > 8))) continue;
        const lca::cuda::PagedCacheConfig full_cfg = config_of(s, lca::LcaParams::full());
        const lca::cuda::PagedCacheConfig lca_cfg = config_of(s, lca_p);
        const int reps = 100;
        // The step at position ctx (no group closes there for w = 1024, g = 16 and these contexts),
        // and the step at ctx + 15, where each sequence closes a group.
        const StepTime full = time_step(full_cfg, batch, ctx, reps);
        const StepTime lca_step = time_step(lca_cfg, batch, ctx, reps);
        const StepTime lca_close = time_step(lca_cfg, batch, ctx + 15, reps);
        const int64_t row_bytes = row_bytes_of(s);
        const double full_rows = double(ctx + 1), lca_rows = double(lca::cache_entries(ctx + 1, lca_p));
        const double full_gbps = batch * full_rows * row_bytes / (full.ms * 1e-3) / 1e9;
        const double lca_gbps = batch * lca_rows * row_bytes / (lca_step.ms * 1e-3) / 1e9;
        const double full_mib = full_rows * row_bytes / 1048576.0, lca_mib = lca_rows * row_bytes / 1048576.0;
        std::printf("%-22s %7lld %5lld | %9.1f %7.0f %4.0f%% | %9.1f %9.1f %7.0f %4.0f%% | %6.2fx | %9.2f %9.2f\n",
                    s.name, (long long)ctx, (long long)batch, full.ms * 1e3, full_gbps, 100 * full_gbps / bw,
                    lca_step.ms * 1e3, lca_close.ms * 1e3, lca_gbps, 100 * lca_gbps / bw, full.ms / lca_step.ms,
                    full_mib, lca_mib);
        out << (first_row ? "" : ",\n") << "  {\"shape\": \"" << s.name << "\", \"context\": " << ctx
            << ", \"batch\": " << batch << ", \"full_us\": " << full.ms * 1e3 << ", \"full_splits\": " << full.splits
            << ", \"full_gbps\": " << full_gbps << ", \"lca_us\": " << lca_step.ms * 1e3
            << ", \"lca_close_us\": " << lca_close.ms * 1e3 << ", \"lca_splits\": " << lca_step.splits
            << ", \"lca_gbps\": " << lca_gbps << ", \"full_over_lca\": " << full.ms / lca_step.ms
            << ", \"full_mib_per_seq\": " << full_mib << ", \"lca_mib_per_seq\": " << lca_mib << "}";
        first_row = false;
      }
    }
  }
  // As a model replays it: the step of every layer in one graph, batch 1 at
  // every context and batch 8 at 32K and 128K (where one layer's graph launch
  // is a large share of a single-layer replay).
  out << "\n],\n\"model_graph_rows\": [\n";
  const int64_t model_layers[] = {27, 62, 28};  // DeepSeek-V2-Lite, MiniCPM3-4B, Qwen2.5-7B
  std::printf("\n%-22s %7s %5s %6s | %9s %5s %9s | %7s   (us per layer, the steps of all layers in one graph)\n",
              "whole-model graph", "context", "batch", "layers", "full us", "%bw", "LCA us", "full/LCA");
  first_row = true;
  for (int si = 0; si < 3; ++si) {
    const Shape& s = shapes[si];
    for (int64_t ctx : contexts) {
      for (int64_t batch : {int64_t(1), int64_t(8)}) {
        if ((quick && ctx > 32768) || skip(s) || (batch == 8 && ctx == 8192)) continue;
        const int64_t L = model_layers[si];
        const double full_us = time_step(config_of(s, lca::LcaParams::full(), L), batch, ctx, 50).ms * 1e3;
        const double lca_us = time_step(config_of(s, lca_p, L), batch, ctx, 50).ms * 1e3;
        const double full_gbps = batch * double(ctx + 1) * row_bytes_of(s) / (full_us * 1e-6) / 1e9;
        std::printf("%-22s %7lld %5lld %6lld | %9.1f %4.0f%% %9.1f | %6.2fx\n", s.name, (long long)ctx,
                    (long long)batch, (long long)L, full_us, 100 * full_gbps / bw, lca_us, full_us / lca_us);
        out << (first_row ? "" : ",\n") << "  {\"shape\": \"" << s.name << "\", \"context\": " << ctx
            << ", \"batch\": " << batch << ", \"layers\": " << L << ", \"full_us_per_layer\": " << full_us
            << ", \"full_gbps\": " << full_gbps << ", \"lca_us_per_layer\": " << lca_us << "}";
        first_row = false;
      }
    }
  }
  if (graph_only) {
    out << "\n]}\n";
    return 0;
  }
  out << "\n],\n\"mtla_rows\": [\n";
  // MTLA (mtla-spec.md) in the same cache and attention kernel, MLA shapes.
  std::printf("\n%-22s %7s %5s | %9s %9s %9s | %9s | %10s %10s %10s\n", "MTLA (same kernels)", "context", "batch",
              "s=2 us", "s=4 us", "s=16 us", "LCA us", "s=2 MiB", "s=4 MiB", "s=16 MiB");
  first_row = true;
  for (int si = 0; si < 2; ++si) {
    const Shape& s = shapes[si];
    for (int64_t ctx : contexts) {
      for (int64_t batch : batches) {
        if ((quick && (ctx > 32768 || batch > 8)) || skip(s)) continue;
        double us[3];
        const int64_t rates[3] = {2, 4, 16};
        for (int k = 0; k < 3; ++k)
          us[k] = time_step(config_of(s, lca::MtlaParams{.down_rate = rates[k]}), batch, ctx, 100).ms * 1e3;
        const double lca_us = time_step(config_of(s, lca_p), batch, ctx, 100).ms * 1e3;
        const int64_t row_bytes = row_bytes_of(s);
        auto mib = [&](int64_t rate) { return double((ctx + 1 + rate - 1) / rate) * row_bytes / 1048576.0; };
        std::printf("%-22s %7lld %5lld | %9.1f %9.1f %9.1f | %9.1f | %10.2f %10.2f %10.2f\n", s.name, (long long)ctx,
                    (long long)batch, us[0], us[1], us[2], lca_us, mib(2), mib(4), mib(16));
        out << (first_row ? "" : ",\n") << "  {\"shape\": \"" << s.name << "\", \"context\": " << ctx
            << ", \"batch\": " << batch << ", \"mtla_s2_us\": " << us[0] << ", \"mtla_s4_us\": " << us[1]
            << ", \"mtla_s16_us\": " << us[2] << ", \"lca_us\": " << lca_us << "}";
        first_row = false;
      }
    }
  }
  out << "\n],\n";
  // Capacity: 27 layers of DeepSeek-V2-Lite's MLA cache, 40 GiB, 128K tokens each.
  const int64_t pool = int64_t(40) << 30, ctx = 131072;
  const int64_t cap_full = capacity(config_of(shapes[0], lca::LcaParams::full(), 27), pool, ctx);
  const int64_t cap_lca = capacity(config_of(shapes[0], lca_p, 27), pool, ctx);
  int64_t cap_mtla[3];
  const int64_t rates[3] = {2, 4, 16};
  for (int k = 0; k < 3; ++k)
    cap_mtla[k] = capacity(config_of(shapes[0], lca::MtlaParams{.down_rate = rates[k]}, 27), pool, ctx);
  std::printf("\ncapacity: 128K-token sequences in a 40 GiB pool, 27-layer DeepSeek-V2-Lite MLA cache: full %lld, "
              "LCA %lld (%.1fx), MTLA s=2 %lld, s=4 %lld, s=16 %lld\n",
              (long long)cap_full, (long long)cap_lca, double(cap_lca) / std::max<int64_t>(cap_full, 1),
              (long long)cap_mtla[0], (long long)cap_mtla[1], (long long)cap_mtla[2]);
  out << "\"capacity_40gib_128k_27_layers\": {\"full\": " << cap_full << ", \"lca\": " << cap_lca
      << ", \"mtla_s2\": " << cap_mtla[0] << ", \"mtla_s4\": " << cap_mtla[1] << ", \"mtla_s16\": " << cap_mtla[2]
      << "}}\n";
  return 0;
}
