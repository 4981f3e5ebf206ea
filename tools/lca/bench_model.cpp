// `lca bench-model`: for each context, full attention and LCA on the same
// model in one run: the prefill of one prompt (wall time to the last logits)
// and the latency of one decode step (median of many, each step a graph
// replay plus its host work: token upload, block bookkeeping, logits back) at
// each batch size, with the KV cache bytes the allocator holds per sequence.
// GQA (qwen2.5-7b) and MLA (minicpm3-4b; deepseek-v2-lite once the GPU MoE
// is built) presets, or a model folder's config.json.
// Batches above 1 decode from caches of random contents (a decode step reads
// the cache whatever it holds), so only one prefill per context is computed.
#include "bench_model.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <cuda_profiler_api.h>

#include "lca/cuda.hpp"
#include "lca/error.hpp"
#include "lca/gpu_model.hpp"
#include "lca/model_config.hpp"

namespace lca::tools {
namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  long long context = 0;
  std::string attention;
  double prefill_ms = -1;
  std::vector<double> step_ms;  // per batch; -1: did not fit
  double cache_mib_per_seq = 0;
  std::string note;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int run_bench_model(const BenchModelOptions& o) {
  LCA_CHECK(cuda::device_present(), "bench-model: no CUDA device is present (the benchmark runs on the GPU)");
  LCA_CHECK(o.random_weights, "bench-model: only --random-weights is supported (the weights' values do not change the time)");
  // A folder when one exists at that path, else a preset name (whose error lists the presets).
  const ModelConfig cfg =
      std::filesystem::is_directory(o.config) ? load_model_config(o.config) : preset_config(o.config);
  std::fprintf(stderr, "bench-model: %s, %lld layers, random weights; uploading...\n", cfg.architecture.c_str(),
               static_cast<long long>(cfg.num_hidden_layers));
  const cuda::GpuModel model = cuda::GpuModel::random(cfg, 1);
  std::printf("device: %s; %s (%s), weights %.2f GiB bf16\n", cuda::device_name().c_str(), o.config.c_str(),
              cfg.architecture.c_str(), model.weight_bytes() / 1073741824.0);
  if (o.config == "minicpm3-4b" && !std::filesystem::is_directory(o.config))
    std::printf("note: the minicpm3-4b preset's longrope factor lists are placeholders (1.0; the published values "
                "are not known here): they change the rotation angles, not the work timed\n");
  if (cfg.max_position_embeddings > 0) {
    const long long longest = *std::max_element(o.contexts.begin(), o.contexts.end());
    if (longest > cfg.max_position_embeddings)
      std::printf("note: contexts up to %lld exceed the config's max_position_embeddings %lld (sessions are sized "
                  "by --context; random weights, so only the time is measured)\n",
                  longest, static_cast<long long>(cfg.max_position_embeddings));
  }
  LcaParams lca_p;
  lca_p.window = o.window;
  lca_p.group = o.group;
  std::mt19937_64 rng(5);
  {  // Warm-up outside the timings: module loading, cuBLAS's first products, kernel attributes.
    cuda::GpuSessionOptions wo;
    wo.attention = lca_p;
    wo.max_context = 4096;
    for (const LcaParams& p : {LcaParams::full(), lca_p}) {
      wo.attention = p;
      cuda::GpuSession w(model, wo);
      const int64_t seq = w.add_sequence();
      w.prefill(seq, std::vector<int64_t>(2048, 1));
      w.decode(std::vector<int64_t>{seq}, std::vector<int64_t>{1});
    }
  }
  std::vector<Row> rows;
  for (long long ctx : o.contexts) {
    for (const LcaParams& p : {LcaParams::full(), lca_p}) {
      Row row;
      row.context = ctx;
      row.attention = p.is_full() ? "full" : "lca";
      try {
        // Prefill and batch-1 decode in a one-sequence session, freed before the larger batches.
        cuda::GpuSessionOptions so;
        so.attention = p;
        so.one_row_products = !o.cublas_products;
        so.max_seqs = 1;
        so.max_context = ctx + o.decode_steps + 8;
        std::uniform_int_distribution<int64_t> tok(0, cfg.vocab_size - 1);
        double step1 = -1;
        {
          cuda::GpuSession s1(model, so);
          std::vector<int64_t> prompt(static_cast<size_t>(ctx));
          for (auto& t : prompt) t = tok(rng);
          const int64_t seq = s1.add_sequence();
          std::fprintf(stderr, "bench-model: %s prefill of %lld tokens...\n", row.attention.c_str(), ctx);
          const double t0 = now_ms();
          s1.prefill(seq, prompt);
          row.prefill_ms = now_ms() - t0;
          row.cache_mib_per_seq = s1.cache().bytes_in_use() / 1048576.0;
          std::vector<double> times;
          for (int i = 0; i < o.decode_steps + 3; ++i) {
            const double a = now_ms();
            s1.decode(std::vector<int64_t>{seq}, std::vector<int64_t>{tok(rng)});
            if (i >= 3) times.push_back(now_ms() - a);
          }
          step1 = median(times);
          if (o.profile_decode) {
            cudaProfilerStart();
            s1.decode(std::vector<int64_t>{seq}, std::vector<int64_t>{tok(rng)});
            cudaProfilerStop();
          }
        }
        for (long long batch : o.batches) {
          if (batch == 1) {
            row.step_ms.push_back(step1);
            continue;
          }
          std::vector<double> times;
          try {
            cuda::GpuSessionOptions sb = so;
            sb.max_seqs = batch;
            cuda::GpuSession s(model, sb);
            std::vector<int64_t> seqs;
            for (long long b = 0; b < batch; ++b) {
              seqs.push_back(s.add_sequence());
              s.fill_random(seqs.back(), ctx, 11 + b);
            }
            std::vector<int64_t> toks(static_cast<size_t>(batch));
            for (int i = 0; i < o.decode_steps + 3; ++i) {
              for (auto& t : toks) t = tok(rng);
              const double a = now_ms();
              s.decode(seqs, toks);
              if (i >= 3) times.push_back(now_ms() - a);
            }
            row.step_ms.push_back(median(times));
            if (o.profile_decode) {
              cudaProfilerStart();
              s.decode(seqs, toks);
              cudaProfilerStop();
            }
          } catch (const Error& e) {
            row.step_ms.push_back(-1);
            row.note = e.what();
          }
        }
      } catch (const Error& e) {
        row.note = e.what();
      }
      rows.push_back(row);
    }
  }
  std::printf("%8s %5s | %11s | ", "context", "attn", "prefill ms");
  for (long long b : o.batches) std::printf("step ms b=%-3lld ", b);
  std::printf("| %12s\n", "cache MiB/seq");
  for (const Row& r : rows) {
    std::printf("%8lld %5s | %11.1f | ", r.context, r.attention.c_str(), r.prefill_ms);
    for (double t : r.step_ms) t < 0 ? std::printf("%14s ", "(no fit)") : std::printf("%14.3f ", t);
    std::printf("| %12.1f%s%s\n", r.cache_mib_per_seq, r.note.empty() ? "" : "  ", r.note.c_str());
  }
  for (size_t i = 0; i + 1 < rows.size(); i += 2) {
    const Row &f = rows[i], &l = rows[i + 1];
    std::printf("%8lld full/LCA: prefill %.2fx", f.context, f.prefill_ms / l.prefill_ms);
    for (size_t b = 0; b < f.step_ms.size() && b < l.step_ms.size(); ++b)
      if (f.step_ms[b] > 0 && l.step_ms[b] > 0)
        std::printf(", decode b=%lld %.2fx", o.batches[b], f.step_ms[b] / l.step_ms[b]);
    std::printf(", cache %.1f%% less\n", 100.0 * (1.0 - l.cache_mib_per_seq / f.cache_mib_per_seq));
  }
  if (!o.json_path.empty()) {
    std::ofstream out(o.json_path);
    out << "{\"device\": \"" << cuda::device_name() << "\", \"model\": \"" << o.config
        << "\", \"one_row_products\": " << (o.cublas_products ? "false" : "true") << ", \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      out << "  {\"context\": " << r.context << ", \"attention\": \"" << r.attention << "\", \"prefill_ms\": "
          << r.prefill_ms << ", \"cache_mib_per_seq\": " << r.cache_mib_per_seq << ", \"step_ms\": {";
      for (size_t b = 0; b < r.step_ms.size(); ++b)
        out << (b ? ", " : "") << "\"" << o.batches[b] << "\": " << r.step_ms[b];
      out << "}}" << (i + 1 < rows.size() ? ",\n" : "\n");
    }
    out << "]}\n";
  }
  return 0;
}

}  // namespace lca::tools
