// bench/prefill_kernels: our CUDA prefill (condense + attention) against our
// full causal attention, same machinery, one layer, batch 1; for the MLA
// shapes also MTLA (s = 2, 4, 16): its rows and its attention. Prints a table
// and writes JSON. Times are medians over many runs with CUDA events, inputs
// random (never zeros). The PyTorch baselines (SDPA/cuDNN, FlexAttention)
// are measured beside these by bench/prefill.py.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "lca/cuda.hpp"
#include "lca/dtype.hpp"

namespace {

struct Shape {
  const char* name;
  int64_t q_heads, kv_heads, d_qk, d_v;
};

void* random_device(size_t n, std::mt19937_64& rng) {
  std::vector<uint16_t> h(n);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : h) x = lca::float_to_bf16(nd(rng));
  void* d;
  CHECK(cudaMalloc(&d, n * 2));
  CHECK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
  return d;
}

using lca_bench::median_ms;

// Exact count of visible (query, key) pairs of one head.
double visible_pairs(int64_t n, const lca::LcaParams& p) {
  double s = 0;
  for (int64_t t = 0; t < n; ++t) s += static_cast<double>(lca::condensed_groups(t + 1, p) + t + 1 - lca::first_raw_position(t + 1, p));
  return s;
}

}  // namespace

// `bench_prefill_kernels --profile`: one full-attention launch of the GQA
// shape at 32K (for ncu); otherwise the whole table, JSON to argv[1].
int profile_once() {
  std::mt19937_64 rng(1);
  const int64_t n = 32768;
  void* q = random_device(n * 28 * 128, rng);
  void* k = random_device(n * 4 * 128, rng);
  void* v = random_device(n * 4 * 128, rng);
  void* o;
  CHECK(cudaMalloc(&o, n * 28 * 128 * 2));
  lca::cuda::PrefillArgs a;
  a.q = q, a.k = k, a.v = v, a.out = o;
  a.q_len = a.raw_len = n;
  a.q_heads = 28, a.kv_heads = 4, a.d_qk = a.d_v = 128;
  a.scale = 1.0 / std::sqrt(128.0);
  a.params = lca::LcaParams::full();
  lca::cuda::lca_prefill(a);
  CHECK(cudaDeviceSynchronize());
  return 0;
}

// `--profile-condense`: the GQA shape's summary queries and condense at 128K, once (for ncu).
int profile_condense() {
  std::mt19937_64 rng(1);
  const int64_t n = 131072;
  const lca::LcaParams p;
  const int64_t m = lca::condensed_groups(n, p);
  void* q = random_device(n * 28 * 128, rng);
  void* k = random_device(n * 4 * 128, rng);
  void* v = random_device(n * 4 * 128, rng);
  void *rk, *rv;
  float* sum;
  CHECK(cudaMalloc(&rk, m * 4 * 128 * 2));
  CHECK(cudaMalloc(&rv, m * 4 * 128 * 2));
  CHECK(cudaMalloc(&sum, n * 4 * 128 * 4));
  lca::cuda::CondenseGqaArgs c;
  c.k = k, c.v = v, c.summary = sum, c.rep_k = rk, c.rep_v = rv;
  c.kv_len = c.sum_len = n;
  c.count = m;
  c.q_heads = 28, c.kv_heads = 4, c.head_dim = 128;
  c.scale = 1.0 / std::sqrt(128.0);
  c.params = p;
  lca::cuda::gqa_summary_queries(q, sum, n, 28, 4, 128, lca::DType::bf16);
  lca::cuda::condense_groups_gqa(c);
  CHECK(cudaDeviceSynchronize());
  return 0;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc > 1 && std::string(argv[1]) == "--profile") return profile_once();
  if (argc > 1 && std::string(argv[1]) == "--profile-condense") return profile_condense();
  // Optional after the JSON path: --quick (8K and 32K only), --only NAME-PREFIX (one shape).
  bool quick = false;
  std::string only;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick") quick = true;
    if (std::string(argv[i]) == "--only" && i + 1 < argc) only = argv[++i];
  }
  const std::string json = argc > 1 ? argv[1] : "prefill_kernels.json";
  const Shape shapes[] = {{"qwen2.5-7b gqa", 28, 4, 128, 128},
                          {"deepseek-v2-lite mla (decompressed)", 16, 16, 192, 128},
                          {"minicpm3-4b mla (decompressed)", 40, 40, 96, 64}};
  const int64_t contexts[] = {8192, 32768, 65536, 131072};
  std::printf("device: %s\n", lca::cuda::device_name().c_str());
  std::printf("%-38s %7s | %10s %9s | %10s %10s %9s | %7s\n", "shape", "context", "full ms", "TFLOP/s", "cond ms",
              "LCA ms", "TFLOP/s", "full/LCA");
  std::ofstream out(json);
  out << "{\"device\": \"" << lca::cuda::device_name() << "\", \"rows\": [\n";
  bool first_row = true;
  std::mt19937_64 rng(1);
  for (const Shape& s : shapes) {
    if (!only.empty() && std::string(s.name).rfind(only, 0) != 0) continue;
    for (const int64_t n : contexts) {
      if (quick && n > 32768) continue;
      lca::LcaParams lca_p;  // w = 1024, g = 16
      const lca::LcaParams full_p = lca::LcaParams::full();
      const int64_t m = lca::condensed_groups(n, lca_p);
      void* q = random_device(n * s.q_heads * s.d_qk, rng);
      void* k = random_device(n * s.kv_heads * s.d_qk, rng);
      void* v = random_device(n * s.kv_heads * s.d_v, rng);
      void *rk, *rv, *o;
      CHECK(cudaMalloc(&rk, std::max<int64_t>(m, 1) * s.kv_heads * s.d_qk * 2));
      CHECK(cudaMalloc(&rv, std::max<int64_t>(m, 1) * s.kv_heads * s.d_v * 2));
      CHECK(cudaMalloc(&o, n * s.q_heads * s.d_v * 2));
      float* sum;
      CHECK(cudaMalloc(&sum, n * s.kv_heads * s.d_qk * 4));
      lca::cuda::PrefillArgs a;
      a.q = q, a.k = k, a.v = v, a.rep_k = rk, a.rep_v = rv, a.out = o;
      a.q_len = a.raw_len = n;
      a.q_heads = s.q_heads, a.kv_heads = s.kv_heads, a.d_qk = s.d_qk, a.d_v = s.d_v;
      a.scale = 1.0 / std::sqrt(double(s.d_qk));
      a.dtype = lca::DType::bf16;
      const int reps = n >= 65536 ? 10 : 30;

      a.params = full_p;
      a.reps = 0;
      const double full_ms = median_ms([&] { lca::cuda::lca_prefill(a); }, reps);
      CHECK(cudaDeviceSynchronize());

      // LCA: summary queries + condense (GQA form of the keys; for MLA shapes this times the
      // same work per kv head, the latent condense is measured by its own kernel later) + attention.
      lca::cuda::CondenseGqaArgs c;
      c.k = k, c.v = v, c.summary = sum, c.rep_k = rk, c.rep_v = rv;
      c.kv_len = c.sum_len = n;
      c.count = m;
      c.q_heads = s.q_heads, c.kv_heads = s.kv_heads, c.head_dim = s.d_qk;
      c.scale = a.scale;
      c.dtype = lca::DType::bf16;
      c.params = lca_p;
      const bool gqa_condense = s.d_qk == s.d_v;
      auto condense = [&] {
        if (!gqa_condense) return;
        lca::cuda::gqa_summary_queries(q, sum, n, s.q_heads, s.kv_heads, s.d_qk, lca::DType::bf16);
        lca::cuda::condense_groups_gqa(c);
      };
      const double cond_ms = gqa_condense ? median_ms(condense, reps) : 0.0;
      a.params = lca_p;
      a.reps = m;
      const double attn_ms = median_ms([&] { lca::cuda::lca_prefill(a); }, reps);
      CHECK(cudaDeviceSynchronize());
      const double lca_ms = cond_ms + attn_ms;
      const double flop_per_pair = 2.0 * (s.d_qk + s.d_v) * s.q_heads;
      const double full_tf = visible_pairs(n, full_p) * flop_per_pair / (full_ms * 1e-3) / 1e12;
      const double lca_tf = visible_pairs(n, lca_p) * flop_per_pair / (attn_ms * 1e-3) / 1e12;
      std::printf("%-38s %7lld | %10.3f %9.1f | %10.3f %10.3f %9.1f | %6.2fx\n", s.name, (long long)n, full_ms, full_tf,
                  cond_ms, lca_ms, lca_tf, full_ms / lca_ms);
      out << (first_row ? "" : ",\n") << "  {\"shape\": \"" << s.name << "\", \"context\": " << n
          << ", \"full_ms\": " << full_ms << ", \"full_tflops\": " << full_tf << ", \"condense_ms\": " << cond_ms
          << ", \"lca_attention_ms\": " << attn_ms << ", \"lca_ms\": " << lca_ms << ", \"lca_attention_tflops\": "
          << lca_tf;
      // MTLA (MLA shapes): the rows (merge weights, running and complete rows of the latents,
      // d_c = 512 or 256 as the shape's model) + the attention with MTLA's visibility.
      if (!gqa_condense) {
        const int64_t dc = s.d_v == 128 ? 512 : 256, dr = s.d_v == 128 ? 64 : 32, row = dc + dr;
        void* latents = random_device(n * row, rng);
        std::vector<float> hyper_h(2 * (dc / 4) * dc + 2 * (dc / 4));
        for (size_t i = 0; i < hyper_h.size(); ++i) hyper_h[i] = float((i * 2654435761u) % 2001) / 1000.f - 1.f;
        for (float& x : hyper_h) x /= std::sqrt(float(dc));
        float *hyper, *open, *weights;
        void *running, *complete, *crk, *crv;
        CHECK(cudaMalloc(&hyper, hyper_h.size() * 4));
        CHECK(cudaMemcpy(hyper, hyper_h.data(), hyper_h.size() * 4, cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&open, dc * 4));
        CHECK(cudaMalloc(&weights, n * 4));
        CHECK(cudaMalloc(&running, n * row * 2));
        CHECK(cudaMalloc(&complete, n * row * 2));
        CHECK(cudaMalloc(&crk, n / 2 * s.kv_heads * s.d_qk * 2));
        CHECK(cudaMalloc(&crv, n / 2 * s.kv_heads * s.d_v * 2));
        std::printf("%-38s %7s |", "  MTLA (rows + attention) ms", "");
        out << ", \"mtla\": [";
        for (int64_t rate : {2, 4, 16}) {
          lca::cuda::MtlaRowsArgs r;
          r.rows = latents, r.hyper = hyper, r.open_out = open, r.weights = weights, r.running = running;
          r.complete = complete, r.start = 0, r.len = n, r.d_latent = dc, r.d_rope = dr;
          r.params.down_rate = rate;
          const double rows_ms = median_ms([&] { lca::cuda::mtla_rows(r); }, reps);
          lca::cuda::PrefillArgs ma = a;
          ma.rep_k = crk, ma.rep_v = crv, ma.reps = n / rate, ma.mtla_down_rate = rate;
          const double mattn_ms = median_ms([&] { lca::cuda::lca_prefill(ma); }, reps);
          CHECK(cudaDeviceSynchronize());
          std::printf(" s=%lld %.3f + %.3f", (long long)rate, rows_ms, mattn_ms);
          out << (rate == 2 ? "" : ", ") << "{\"s\": " << rate << ", \"rows_ms\": " << rows_ms
              << ", \"attention_ms\": " << mattn_ms << "}";
        }
        std::printf("\n");
        out << "]";
        for (void* p : {latents, static_cast<void*>(hyper), static_cast<void*>(open), static_cast<void*>(weights),
                        running, complete, crk, crv})
          CHECK(cudaFree(p));
      }
      out << "}";
      first_row = false;
      for (void* p : {q, k, v, rk, rv, o, static_cast<void*>(sum)}) CHECK(cudaFree(p));
    }
  }
  out << "\n]}\n";
  return 0;
}
