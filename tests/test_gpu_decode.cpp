// The GPU decode path (PagedKvCache + decode kernels) against the CPU
// CondensedKvCache, which is tested against the reference and the float64
// oracle: token-by-token decode after a prefill gives the same outputs and the
// same cache contents at every step, across many group closings, for batches
// of sequences of different lengths, sequences leaving and joining (blocks
// reused), forced split counts and CUDA graph replay; prefill chunks
// (begin_extend ... end_extend) between decode steps. Inputs are rounded to
// the cache dtype first, so both sides see the same numbers; outputs are
// poisoned before each step and NaN never passes. Without a GPU the cases
// that need one report SKIPPED; the configuration checks run everywhere.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "lca/cache.hpp"
#include "lca/cuda.hpp"
#include "lca/paged_cache.hpp"
#include "lca/reference.hpp"
#include "cuda/decode.hpp"

namespace {

using lca::DType;
using lca::KvLayout;
using lca::LcaParams;
using lca::Tensor;
using lca::cuda::PagedCacheConfig;
using lca::cuda::PagedKvCache;

#define REQUIRE_GPU() \
  if (!lca::cuda::device_present()) GTEST_SKIP() << "no CUDA device on this machine"

LcaParams lca_params(int64_t w, int64_t g) {
  LcaParams p;
  p.window = w;
  p.group = g;
  return p;
}

Tensor<float> random_rounded(std::mt19937_64& rng, const lca::Shape& shape, DType dtype, float stddev = 1.f) {
  std::normal_distribution<float> nd(0.f, stddev);
  Tensor<float> t(shape);
  for (float& v : t.vec()) v = lca::round_to(dtype, nd(rng));
  return t;
}

// ||got - want|| / ||want||; infinity if got holds a NaN or infinity.
double rel_error(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    const double d = double(got[i]) - want[i];
    num += d * d;
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
double rel_error(const Tensor<float>& got, const Tensor<float>& want) {
  EXPECT_EQ(got.shape(), want.shape());
  if (got.shape() != want.shape()) return INFINITY;
  return rel_error(got.data(), want.data(), got.numel());
}

struct DeviceBytes {
  void* ptr = nullptr;
  explicit DeviceBytes(size_t bytes) { EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(bytes, 16)), cudaSuccess); }
  ~DeviceBytes() { cudaFree(ptr); }
};

void to_device(void* dst, const Tensor<float>& t, DType dtype) {
  std::vector<unsigned char> bytes(static_cast<size_t>(t.numel() * lca::dtype_size(dtype)));
  lca::encode(dtype, t.data(), t.numel(), bytes.data());
  ASSERT_EQ(cudaMemcpy(dst, bytes.data(), bytes.size(), cudaMemcpyHostToDevice), cudaSuccess);
}
Tensor<float> from_device(const void* src, const lca::Shape& shape, DType dtype) {
  Tensor<float> t(shape);
  std::vector<unsigned char> bytes(static_cast<size_t>(t.numel() * lca::dtype_size(dtype)));
  EXPECT_EQ(cudaMemcpy(bytes.data(), src, bytes.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  lca::decode(dtype, bytes.data(), t.numel(), t.data());
  return t;
}

// One test scenario: a layout, a policy, and the CPU caches that mirror the GPU's sequences.
struct Scenario {
  PagedCacheConfig cfg;
  std::mt19937_64 rng{7};
  std::unique_ptr<PagedKvCache> gpu;
  std::map<int64_t, lca::CondensedKvCache> cpu;  // slot -> the same sequence on the CPU (layer 0 only)
  std::unique_ptr<DeviceBytes> rows_d, queries_d, out_d;
  int64_t max_batch = 0;
  double worst_out = 0, worst_reps = 0;

  bool mtla() const { return std::holds_alternative<lca::MtlaParams>(cfg.policy); }
  // The LCA policy (full attention stands in for MTLA: no groups, no ring).
  LcaParams lca() const { return mtla() ? LcaParams::full() : std::get<LcaParams>(cfg.policy); }
  lca::CondensedKvCache make_cpu() const {
    if (mtla())
      return lca::CondensedKvCache::mtla(cfg.mla, cfg.scale, std::get<lca::MtlaParams>(cfg.policy), cfg.mtla_hyper[0],
                                         cfg.dtype);
    return cfg.layout == KvLayout::mla ? lca::CondensedKvCache::mla(cfg.mla, cfg.scale, lca(), cfg.dtype)
                                       : lca::CondensedKvCache::gqa(cfg.gqa, cfg.rope, cfg.scale, lca(), cfg.dtype);
  }
  // What the GPU cache holds for a CPU cache: MTLA keeps its open row with the complete ones.
  lca::cuda::PagedLayerContents contents_of(const lca::CondensedKvCache& c) const {
    if (!mtla()) return {c.representative_rows(), c.raw_rows(), lca().is_full() ? Tensor<float>() : c.summary_ring(), {}};
    const Tensor<float> complete = c.representative_rows(), open = c.raw_rows();
    Tensor<float> rows({complete.dim(0) + open.dim(0), c.row_width()});
    std::copy(complete.vec().begin(), complete.vec().end(), rows.data());
    std::copy(open.vec().begin(), open.vec().end(), rows.data() + complete.numel());
    return {rows, Tensor<float>({0, c.row_width()}), Tensor<float>(), open.dim(0) > 0 ? c.open_row_sum() : Tensor<float>()};
  }
  int64_t heads() const { return gpu->query_heads(); }

  void start(int64_t batch) {
    gpu = std::make_unique<PagedKvCache>(cfg);
    max_batch = batch;
    const size_t es = static_cast<size_t>(lca::dtype_size(cfg.dtype));
    rows_d = std::make_unique<DeviceBytes>(batch * gpu->row_width() * es);
    queries_d = std::make_unique<DeviceBytes>(batch * heads() * gpu->query_width() * es);
    out_d = std::make_unique<DeviceBytes>(batch * heads() * gpu->output_width() * es);
  }

  // A new sequence prefilled with n0 random tokens on the CPU, loaded into every GPU layer.
  int64_t join(int64_t n0) {
    const int64_t seq = gpu->add_sequence();
    lca::CondensedKvCache c = make_cpu();
    if (n0 > 0) {
      Tensor<float> rows = random_rounded(rng, {n0, gpu->row_width()}, cfg.dtype);
      Tensor<float> q = random_rounded(rng, {n0, heads(), gpu->query_width()}, cfg.dtype, 0.3f);
      if (mtla()) {
        c.append(rows);
      } else {
        Tensor<float> summary = cfg.layout == KvLayout::mla
                                    ? lca::ref::mla_summary_queries(q, cfg.mla, lca().score)
                                    : lca::ref::gqa_summary_queries(q, cfg.gqa);
        if (lca().is_full()) summary = Tensor<float>({n0, c.summary_width()});
        c.append(rows, summary);
      }
    }
    gpu->set_tokens(seq, n0);
    for (int64_t layer = 0; layer < cfg.layers; ++layer) gpu->write_layer(seq, layer, contents_of(c));
    cpu.erase(seq);
    cpu.emplace(seq, std::move(c));
    return seq;
  }

  void leave(int64_t seq) {
    gpu->release_sequence(seq);
    cpu.erase(seq);
  }

  // Blocks the sequences hold by the spec's counts: representatives and the raw window's blocks.
  int64_t expected_blocks() const {
    const int64_t B = cfg.block_rows;
    int64_t blocks = 0;
    for (const auto& [seq, c] : cpu) {
      const int64_t n = c.tokens();
      if (n == 0) continue;
      if (mtla()) {
        blocks += (lca::mtla_rows(n, std::get<lca::MtlaParams>(cfg.policy)) + B - 1) / B;
        continue;
      }
      const int64_t m = lca::condensed_groups(n, lca());
      blocks += (m + B - 1) / B + (n - 1) / B - lca::first_raw_position(n, lca()) / B + 1;
    }
    return blocks * cfg.layers;
  }

  // One decode step of `seqs` in every layer (layer 0 compared with the CPU).
  // With a graph, the step's launches come from `graph` (captured on first use).
  void step(const std::vector<int64_t>& seqs, int64_t splits = 0, cudaGraphExec_t* graph = nullptr,
            cudaStream_t stream = nullptr) {
    const int64_t B = static_cast<int64_t>(seqs.size());
    ASSERT_LE(B, max_batch);
    Tensor<float> rows = random_rounded(rng, {B, gpu->row_width()}, cfg.dtype);
    Tensor<float> q = random_rounded(rng, {B, heads(), gpu->query_width()}, cfg.dtype, 0.3f);
    to_device(rows_d->ptr, rows, cfg.dtype);
    to_device(queries_d->ptr, q, cfg.dtype);
    ASSERT_EQ(cudaMemset(out_d->ptr, 0xff, B * heads() * gpu->output_width() * lca::dtype_size(cfg.dtype)),
              cudaSuccess);
    gpu->begin_step(seqs, stream, splits);
    if (graph != nullptr) {
      if (*graph == nullptr) {
        cudaGraph_t g;
        ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        for (int64_t layer = 0; layer < cfg.layers; ++layer)
          gpu->decode_layer(layer, rows_d->ptr, queries_d->ptr, out_d->ptr, stream);
        ASSERT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
        ASSERT_EQ(cudaGraphInstantiate(graph, g, 0), cudaSuccess);
        cudaGraphDestroy(g);
      }
      ASSERT_EQ(cudaGraphLaunch(*graph, stream), cudaSuccess);
    } else {
      // Layers past 0 get the same rows: they must end in the same state.
      for (int64_t layer = cfg.layers - 1; layer >= 0; --layer)
        gpu->decode_layer(layer, rows_d->ptr, queries_d->ptr, out_d->ptr, stream);
    }
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    gpu->end_step();
    const Tensor<float> out = from_device(out_d->ptr, {B, heads(), gpu->output_width()}, cfg.dtype);
    const int64_t ow = heads() * gpu->output_width();
    for (int64_t b = 0; b < B; ++b) {
      lca::CondensedKvCache& c = cpu.at(seqs[static_cast<size_t>(b)]);
      Tensor<float> row({1, gpu->row_width()}), qb({1, heads(), gpu->query_width()});
      std::copy_n(rows.row(b), gpu->row_width(), row.data());
      std::copy_n(q.row(b), qb.numel(), qb.data());
      const Tensor<float> want = c.forward(row, qb);
      const double err = rel_error(out.data() + b * ow, want.data(), ow);
      worst_out = std::max(worst_out, err);
      ASSERT_LT(err, 1e-2) << "output of sequence " << seqs[static_cast<size_t>(b)] << " at position "
                           << c.tokens() - 1;
      ASSERT_EQ(gpu->tokens(seqs[static_cast<size_t>(b)]), c.tokens());
    }
    ASSERT_EQ(gpu->blocks_in_use(), expected_blocks());
  }

  // L tokens appended to `seq` as a prefill chunk (begin_extend,
  // read_layer_device and write_extend_device in every layer, end_extend), fed
  // with what the CPU cache holds after appending the same rows and summaries.
  // Each layer's read_layer_device is checked against the CPU cache before it.
  // MTLA: the rows [floor(n0/s), ceil(n1/s)) (the open row rewritten) and the open sum in and out.
  void extend(int64_t seq, int64_t L, int64_t* blocks_while_extending = nullptr) {
    lca::CondensedKvCache& c = cpu.at(seq);
    const lca::cuda::PagedLayerContents before = contents_of(c);
    const int64_t n0 = c.tokens(), n1 = n0 + L, W = gpu->row_width();
    const size_t es = static_cast<size_t>(lca::dtype_size(cfg.dtype));
    Tensor<float> rows = random_rounded(rng, {L, W}, cfg.dtype);
    Tensor<float> q = random_rounded(rng, {L, heads(), gpu->query_width()}, cfg.dtype, 0.3f);
    if (mtla()) {
      c.append(rows);
    } else {
      Tensor<float> summary = lca().is_full()               ? Tensor<float>({L, c.summary_width()})
                              : cfg.layout == KvLayout::mla ? lca::ref::mla_summary_queries(q, cfg.mla, lca().score)
                                                            : lca::ref::gqa_summary_queries(q, cfg.gqa);
      c.append(rows, summary);
    }
    const lca::cuda::PagedLayerContents after = contents_of(c);
    const int64_t m0 = before.representatives.dim(0), m1 = after.representatives.dim(0);
    const int64_t rep_lo = mtla() ? n0 / std::get<lca::MtlaParams>(cfg.policy).down_rate : m0;
    const int64_t raw1 = n1 - after.raw.dim(0), new_raw = std::max(raw1, n0);  // first raw position after; first stored
    if (!mtla()) ASSERT_EQ(raw1, lca::first_raw_position(n1, lca()));
    // What write_extend_device takes: the new representatives, raw rows [new_raw, n1), the ring of n1.
    Tensor<float> new_reps({m1 - rep_lo, W}), new_rows({n1 - new_raw, W});
    std::copy(after.representatives.data() + rep_lo * W, after.representatives.data() + m1 * W, new_reps.data());
    std::copy(after.raw.data() + (new_raw - raw1) * W, after.raw.data() + after.raw.numel(), new_rows.data());
    DeviceBytes reps_d(new_reps.numel() * es), raw_d(new_rows.numel() * es);
    DeviceBytes ring_d(after.summary_ring.numel() * sizeof(float));
    to_device(reps_d.ptr, new_reps, cfg.dtype);
    to_device(raw_d.ptr, new_rows, cfg.dtype);
    ASSERT_EQ(cudaMemcpy(ring_d.ptr, after.summary_ring.data(), after.summary_ring.numel() * sizeof(float),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    DeviceBytes open_d(after.open_sum.numel() * sizeof(float)), got_open(before.open_sum.numel() * sizeof(float));
    ASSERT_EQ(cudaMemcpy(open_d.ptr, after.open_sum.data(), after.open_sum.numel() * sizeof(float),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    // Poisoned buffers for read_layer_device (NaN in bf16 and f16 alike).
    DeviceBytes got_reps(m0 * W * es), got_raw(before.raw.numel() * es);
    DeviceBytes got_ring(before.summary_ring.numel() * sizeof(float));
    gpu->begin_extend(seq, L);
    ASSERT_EQ(gpu->tokens(seq), n0);
    if (blocks_while_extending != nullptr) *blocks_while_extending = gpu->blocks_in_use();
    for (int64_t layer = 0; layer < cfg.layers; ++layer) {
      SCOPED_TRACE("extend of sequence " + std::to_string(seq) + " from " + std::to_string(n0) + " by " +
                   std::to_string(L) + ", layer " + std::to_string(layer));
      ASSERT_EQ(cudaMemset(got_reps.ptr, 0xff, m0 * W * es), cudaSuccess);
      ASSERT_EQ(cudaMemset(got_raw.ptr, 0xff, before.raw.numel() * es), cudaSuccess);
      ASSERT_EQ(cudaMemset(got_ring.ptr, 0xff, before.summary_ring.numel() * sizeof(float)), cudaSuccess);
      ASSERT_EQ(cudaMemset(got_open.ptr, 0xff, before.open_sum.numel() * sizeof(float)), cudaSuccess);
      gpu->read_layer_device(seq, layer, got_reps.ptr, got_raw.ptr, static_cast<float*>(got_ring.ptr),
                             static_cast<float*>(got_open.ptr));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const Tensor<float> raw_now = from_device(got_raw.ptr, before.raw.shape(), cfg.dtype);
      EXPECT_EQ(raw_now.vec(), before.raw.vec());  // stored inputs: bitwise
      if (m0 > 0) EXPECT_LT(rel_error(from_device(got_reps.ptr, before.representatives.shape(), cfg.dtype),
                                      before.representatives), 1e-2);
      if (before.summary_ring.numel() > 0) {
        Tensor<float> ring_now(before.summary_ring.shape());
        ASSERT_EQ(cudaMemcpy(ring_now.data(), got_ring.ptr, ring_now.numel() * sizeof(float), cudaMemcpyDeviceToHost),
                  cudaSuccess);
        EXPECT_LT(rel_error(ring_now, before.summary_ring), 1e-5);
      }
      if (before.open_sum.numel() > 0) {
        Tensor<float> open_now(before.open_sum.shape());
        ASSERT_EQ(cudaMemcpy(open_now.data(), got_open.ptr, open_now.numel() * sizeof(float), cudaMemcpyDeviceToHost),
                  cudaSuccess);
        EXPECT_LT(rel_error(open_now, before.open_sum), 1e-5);
      }
      gpu->write_extend_device(seq, layer, reps_d.ptr, raw_d.ptr, static_cast<const float*>(ring_d.ptr),
                               static_cast<const float*>(open_d.ptr));
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    gpu->end_extend(seq);
    ASSERT_EQ(gpu->tokens(seq), n1);
    ASSERT_EQ(gpu->blocks_in_use(), expected_blocks());
  }

  // Cache contents of every sequence and layer against the CPU cache.
  void compare_contents() {
    for (auto& [seq, c] : cpu) {
      for (int64_t layer = 0; layer < cfg.layers; ++layer) {
        SCOPED_TRACE("sequence " + std::to_string(seq) + " layer " + std::to_string(layer) + " at n = " +
                     std::to_string(c.tokens()));
        const lca::cuda::PagedLayerContents got = gpu->read_layer(seq, layer), want = contents_of(c);
        // Raw rows are the inputs as stored: bitwise.
        ASSERT_EQ(got.raw.shape(), want.raw.shape());
        EXPECT_EQ(got.raw.vec(), want.raw.vec());
        // Representatives (MTLA: merged rows): fp32 sums in another order, rounded once: to rounding.
        ASSERT_EQ(got.representatives.shape(), want.representatives.shape());
        if (got.representatives.numel() > 0) {
          const double err = rel_error(got.representatives, want.representatives);
          worst_reps = std::max(worst_reps, err);
          EXPECT_LT(err, 1e-2);
        }
        if (!lca().is_full()) EXPECT_LT(rel_error(got.summary_ring, want.summary_ring), 1e-5);
        ASSERT_EQ(got.open_sum.shape(), want.open_sum.shape());
        if (got.open_sum.numel() > 0) EXPECT_LT(rel_error(got.open_sum, want.open_sum), 1e-5);
      }
    }
  }
};

PagedCacheConfig mla_config(int64_t heads, int64_t d_latent, int64_t d_rope, LcaParams p, DType dtype,
                            int64_t block_rows) {
  PagedCacheConfig cfg;
  cfg.layout = KvLayout::mla;
  cfg.mla = lca::MlaDims{.heads = heads, .d_latent = d_latent, .d_rope = d_rope, .d_nope = 128, .d_v = 128};
  cfg.scale = 1.0 / std::sqrt(192.0);
  cfg.policy = p;
  cfg.dtype = dtype;
  cfg.block_rows = block_rows;
  return cfg;
}

PagedCacheConfig gqa_config(int64_t q_heads, int64_t kv_heads, int64_t d, LcaParams p, DType dtype,
                            int64_t block_rows) {
  PagedCacheConfig cfg;
  cfg.layout = KvLayout::gqa;
  cfg.gqa = lca::GqaDims{.q_heads = q_heads, .kv_heads = kv_heads, .head_dim = d};
  cfg.rope.theta = 10000.0;
  cfg.scale = 1.0 / std::sqrt(double(d));
  cfg.policy = p;
  cfg.dtype = dtype;
  cfg.block_rows = block_rows;
  return cfg;
}

// A batch of sequences of different lengths decoding `steps` tokens together.
void run_batch(PagedCacheConfig cfg, const std::vector<int64_t>& prefill, int64_t steps, int64_t compare_every) {
  Scenario s;
  cfg.max_seqs = static_cast<int64_t>(prefill.size());
  cfg.max_context = *std::max_element(prefill.begin(), prefill.end()) + steps + 1;
  s.cfg = cfg;
  s.start(cfg.max_seqs);
  std::vector<int64_t> seqs;
  for (int64_t n0 : prefill) seqs.push_back(s.join(n0));
  s.compare_contents();
  for (int64_t i = 0; i < steps; ++i) {
    ASSERT_NO_FATAL_FAILURE(s.step(seqs));
    if ((i + 1) % compare_every == 0) ASSERT_NO_FATAL_FAILURE(s.compare_contents());
  }
  s.compare_contents();
  for (int64_t seq : seqs) s.leave(seq);
  EXPECT_EQ(s.gpu->free_blocks(), s.gpu->total_blocks());
  std::printf("  worst relative error: outputs %.2e, representatives %.2e\n", s.worst_out, s.worst_reps);
}

TEST(GpuDecode, MlaDeepSeekShapeMatchesCpuCache) {
  REQUIRE_GPU();
  // w = 64, g = 16: each sequence closes a group every 16 steps; lengths cross w + g.
  PagedCacheConfig cfg = mla_config(16, 512, 64, lca_params(64, 16), DType::bf16, 64);
  cfg.layers = 2;
  run_batch(cfg, {0, 70, 333, 1000}, 72, 12);
}

TEST(GpuDecode, MlaMiniCpm3ShapeScoreFullMassBias) {
  REQUIRE_GPU();
  LcaParams p = lca_params(40, 8);
  p.score = lca::ScoreMode::full;
  p.mass_bias = lca::MassBias::log_g;
  run_batch(mla_config(40, 256, 32, p, DType::f16, 32), {3, 47, 500}, 50, 10);
}

// MiniCPM3's shape on both attention kernels: the wgmma one (sm_90a, the
// default there) and the mma.sync one other devices take. Lengths span many
// tiles of 64 rows (each across four blocks of 16 rows) and several splits.
TEST(GpuDecode, MlaMiniCpm3ShapeBothKernels) {
  REQUIRE_GPU();
  namespace d = lca::cuda::detail;
  d::DecodeShape sh;
  sh.mla = true, sh.q_heads = 40, sh.kv_heads = 1, sh.d_qk = 288, sh.d_v = 256, sh.summary_width = 256;
  int dev = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  if (major == 9) ASSERT_TRUE(d::decode_sm90_supports(sh)) << "the sm_90a kernel is not in this build";
  struct Restore {
    ~Restore() { d::decode_use_sm90(true); }
  } restore;
  for (bool sm90 : {true, false}) {
    SCOPED_TRACE(sm90 ? "wgmma kernel" : "mma.sync kernel");
    d::decode_use_sm90(sm90);
    EXPECT_EQ(d::decode_sm90_supports(sh), sm90 && major == 9);
    run_batch(mla_config(40, 256, 32, lca_params(128, 16), DType::bf16, 16), {0, 150, 700, 2600}, 34, 17);
    run_batch(mla_config(40, 256, 32, LcaParams::full(), DType::f16, 16), {1, 900, 2100}, 6, 6);
  }
}

TEST(GpuDecode, GqaPooledKeys) {
  REQUIRE_GPU();
  run_batch(gqa_config(28, 4, 128, lca_params(48, 16), DType::bf16, 64), {5, 64, 400, 1500}, 70, 14);
}

TEST(GpuDecode, GqaAnchorKeysHeadDim64) {
  REQUIRE_GPU();
  LcaParams p = lca_params(16, 4);
  p.key_mode = lca::KeyMode::anchor;
  run_batch(gqa_config(9, 3, 64, p, DType::f16, 16), {1, 30, 250}, 40, 8);
}

TEST(GpuDecode, WindowZeroCondensesTheNewToken) {
  REQUIRE_GPU();
  // w = 0: the group that closes at t ends at t, whose row the same step appends.
  run_batch(mla_config(16, 512, 64, lca_params(0, 8), DType::bf16, 32), {0, 21, 64}, 40, 8);
  run_batch(gqa_config(8, 2, 64, lca_params(0, 4), DType::f16, 16), {2, 33}, 30, 6);
}

// Random hyper-network weights at the scale nn.Linear initialises them (1/sqrt(d_c)).
lca::MtlaHyperNet<float> random_hyper(std::mt19937_64& rng, int64_t dc) {
  const float scale = 1.f / std::sqrt(float(dc));
  auto rand = [&](lca::Shape shape) {
    std::uniform_real_distribution<float> u(-scale, scale);
    Tensor<float> t(std::move(shape));
    for (float& x : t.vec()) x = u(rng);
    return t;
  };
  return {rand({dc / 4, dc}), rand({dc / 4}), rand({dc / 4, dc}), rand({dc / 4})};
}

// An MTLA cache of down rate s: DeepSeek-V2-Lite's shape (bf16, blocks of 16
// rows) or MiniCPM3's (fp16, blocks of 8), every layer with the same random
// hyper-network.
PagedCacheConfig mtla_config(std::mt19937_64& rng, int64_t s, bool minicpm3, int64_t layers) {
  PagedCacheConfig cfg = minicpm3 ? mla_config(40, 256, 32, LcaParams{}, DType::f16, 8)
                                  : mla_config(16, 512, 64, LcaParams{}, DType::bf16, 16);
  cfg.policy = lca::MtlaParams{.down_rate = s};
  cfg.layers = layers;
  cfg.mtla_hyper.assign(static_cast<size_t>(layers), random_hyper(rng, cfg.mla.d_latent));
  return cfg;
}

TEST(GpuDecode, MtlaMatchesCpuCache) {
  REQUIRE_GPU();
  std::mt19937_64 rng(31);
  for (int64_t s : {2, 3, 4, 16}) {
    SCOPED_TRACE("s = " + std::to_string(s));
    run_batch(mtla_config(rng, s, false, 2), {0, 5, 64, 301}, 3 * s + 5, 4);
  }
  run_batch(mtla_config(rng, 4, true, 1), {1, 2, 3, 100}, 21, 5);
}

TEST(GpuDecode, FullAttentionIsTheNoGroupPolicy) {
  REQUIRE_GPU();
  run_batch(mla_config(16, 512, 64, LcaParams::full(), DType::bf16, 64), {0, 200, 2100}, 20, 10);
  run_batch(gqa_config(28, 4, 128, LcaParams::full(), DType::f16, 64), {9, 700}, 20, 10);
}

TEST(GpuDecode, SequencesLeaveAndJoinReusingBlocks) {
  REQUIRE_GPU();
  Scenario s;
  s.cfg = gqa_config(8, 2, 64, lca_params(32, 8), DType::bf16, 16);
  s.cfg.layers = 2;
  s.cfg.max_seqs = 3;
  s.cfg.max_context = 600;
  s.start(3);
  std::vector<int64_t> seqs = {s.join(100), s.join(7)};
  for (int i = 0; i < 20; ++i) ASSERT_NO_FATAL_FAILURE(s.step(seqs));
  const int64_t free_before = s.gpu->free_blocks();
  s.leave(seqs[0]);
  EXPECT_GT(s.gpu->free_blocks(), free_before);
  seqs[0] = s.join(300);  // takes the freed slot and blocks
  seqs.push_back(s.join(40));
  EXPECT_EQ(s.gpu->active_sequences(), 3);
  EXPECT_THROW(s.gpu->add_sequence(), lca::Error);
  for (int i = 0; i < 30; ++i) {
    ASSERT_NO_FATAL_FAILURE(s.step(seqs));
    if (i == 12) {  // one sequence finishes, the others go on as a smaller batch
      s.leave(seqs[1]);
      seqs.erase(seqs.begin() + 1);
    }
  }
  s.compare_contents();
}

// Split counts from one to more than the short sequence has tiles (empty
// splits), across the combine's two block shapes (40 | 41). DeepSeek's shape
// takes the mma.sync kernel (fp32 partials); MiniCPM3's takes the wgmma
// kernel on sm_90a (partials in the storage dtype), in bf16 and fp16.
TEST(GpuDecode, ForcedSplitCountsAgree) {
  REQUIRE_GPU();
  const lca::cuda::PagedCacheConfig configs[] = {mla_config(16, 512, 64, lca_params(128, 16), DType::bf16, 64),
                                                 mla_config(40, 256, 32, lca_params(128, 16), DType::bf16, 64),
                                                 mla_config(40, 256, 32, lca_params(128, 16), DType::f16, 64)};
  for (const auto& cfg : configs) {
    SCOPED_TRACE(std::to_string(cfg.mla.heads) + " heads, " + lca::dtype_name(cfg.dtype));
    Scenario s;
    s.cfg = cfg;
    s.cfg.max_seqs = 2;
    s.cfg.max_context = 4000;
    s.cfg.max_splits = 64;
    s.start(2);
    std::vector<int64_t> seqs = {s.join(3000), s.join(130)};
    for (int64_t splits : {1, 2, 3, 7, 40, 41, 64}) {
      SCOPED_TRACE("splits " + std::to_string(splits));
      ASSERT_NO_FATAL_FAILURE(s.step(seqs, splits));
      EXPECT_EQ(s.gpu->step_splits(), splits);
    }
  }
}

TEST(GpuDecode, GraphReplayMatchesCpuCache) {
  REQUIRE_GPU();
  Scenario s;
  s.cfg = mla_config(16, 512, 64, lca_params(64, 16), DType::bf16, 64);
  s.cfg.layers = 3;
  s.cfg.max_seqs = 2;
  s.cfg.max_context = 1000;
  s.start(2);
  std::vector<int64_t> seqs = {s.join(90), s.join(500)};
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraphExec_t graph = nullptr;
  for (int i = 0; i < 40; ++i) ASSERT_NO_FATAL_FAILURE(s.step(seqs, 8, &graph, stream));
  s.compare_contents();
  cudaGraphExecDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST(GpuDecode, OutOfBlocksIsAnErrorAndChangesNothing) {
  REQUIRE_GPU();
  Scenario s;
  s.cfg = gqa_config(8, 2, 64, lca_params(32, 8), DType::bf16, 16);
  s.cfg.max_seqs = 2;
  s.cfg.max_context = 400;
  s.cfg.pool_bytes = 4 * 16 * s.cfg.gqa.row_width() * 2;  // four blocks
  s.start(2);
  const int64_t a = s.join(80);  // one representative block, raw blocks 3 and 4
  EXPECT_EQ(s.gpu->free_blocks(), 1);
  const int64_t b = s.gpu->add_sequence();
  try {
    s.gpu->set_tokens(b, 40);
    FAIL() << "set_tokens beyond the pool did not throw";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of cache blocks"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.gpu->tokens(b), 0);
  EXPECT_EQ(s.gpu->free_blocks(), 1);
  // Decode until a step needs a block it cannot have: the step throws, the cache stays as it was.
  const std::vector<int64_t> seqs = {a};
  bool threw = false;
  for (int i = 0; i < 100 && !threw; ++i) {
    const int64_t n = s.gpu->tokens(a), free = s.gpu->free_blocks();
    try {
      ASSERT_NO_FATAL_FAILURE(s.step(seqs));
    } catch (const lca::Error& e) {
      threw = true;
      EXPECT_NE(std::string(e.what()).find("out of cache blocks"), std::string::npos) << e.what();
      EXPECT_EQ(s.gpu->tokens(a), n);
      EXPECT_EQ(s.gpu->free_blocks(), free);
    }
  }
  EXPECT_TRUE(threw);
}

TEST(GpuDecode, BadCallsNameTheProblem) {
  REQUIRE_GPU();
  Scenario s;
  s.cfg = gqa_config(8, 2, 64, lca_params(32, 8), DType::bf16, 16);
  s.cfg.max_seqs = 2;
  s.cfg.max_context = 50;
  s.start(2);
  const int64_t a = s.join(49);
  auto expect_error = [](auto&& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one naming '" << needle << "'";
    } catch (const lca::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::vector<int64_t> twice = {a, a}, unknown = {1};
  expect_error([&] { s.gpu->begin_step(twice); }, "appears twice");
  expect_error([&] { s.gpu->begin_step(unknown); }, "not an active slot");
  expect_error([&] { s.gpu->decode_layer(0, s.rows_d->ptr, s.queries_d->ptr, s.out_d->ptr); }, "no step in progress");
  expect_error([&] { s.gpu->set_tokens(a, 3); }, "already holds");
  ASSERT_NO_FATAL_FAILURE(s.step({a}));  // the 50th token
  expect_error([&] { s.gpu->begin_step(std::vector<int64_t>{a}); }, "max_context");
  expect_error([&] { s.gpu->read_layer(a, 5); }, "layer 5");
}

// ---- Prefill chunks (begin_extend ... end_extend) ---------------------------------

// Sequences grown by chunks of the given sizes (a decode step of all of them
// after each round), against the CPU cache: contents, blocks in use, and the
// peak blocks of each chunked growth against extend_blocks.
void run_extends(PagedCacheConfig cfg, const std::vector<int64_t>& starts, const std::vector<int64_t>& chunks,
                 int64_t rounds) {
  Scenario s;
  cfg.max_seqs = static_cast<int64_t>(starts.size());
  cfg.max_context = 4000;
  s.cfg = cfg;
  s.start(cfg.max_seqs);
  std::vector<int64_t> seqs;
  for (int64_t n0 : starts) seqs.push_back(s.join(n0));
  std::uniform_int_distribution<size_t> pick(0, chunks.size() - 1);
  for (int64_t r = 0; r < rounds; ++r) {
    for (int64_t seq : seqs) {
      // A prompt of one to three chunks: peak blocks over its chunks as extend_blocks foresees.
      const int64_t chunk = chunks[pick(s.rng)], parts = 1 + static_cast<int64_t>(pick(s.rng) % 3);
      const int64_t L = chunk * parts - (parts > 1 ? chunk / 2 : 0), in_use = s.gpu->blocks_in_use();
      const int64_t foreseen = s.gpu->extend_blocks(seq, L, chunk);
      int64_t peak = in_use;
      for (int64_t done = 0; done < L; done += chunk) {
        int64_t held = 0;  // blocks in use between begin_extend and end_extend, where the peak is
        ASSERT_NO_FATAL_FAILURE(s.extend(seq, std::min(chunk, L - done), &held));
        peak = std::max(peak, held);
      }
      EXPECT_EQ(peak - in_use, foreseen) << "peak blocks of " << L << " tokens in chunks of " << chunk;
    }
    ASSERT_NO_FATAL_FAILURE(s.step(seqs));
    ASSERT_NO_FATAL_FAILURE(s.compare_contents());
  }
  for (int64_t seq : seqs) s.leave(seq);
  EXPECT_EQ(s.gpu->free_blocks(), s.gpu->total_blocks());
}

TEST(GpuDecode, PrefillChunksGqaMatchCpuCache) {
  REQUIRE_GPU();
  // w = 32, g = 8, blocks of 16 rows: chunks open and release blocks, close
  // groups, start below w and past w + g, aligned to g or not.
  PagedCacheConfig cfg = gqa_config(8, 2, 64, lca_params(32, 8), DType::bf16, 16);
  cfg.layers = 2;
  run_extends(cfg, {0, 3, 45}, {1, 5, 8, 37, 100}, 6);
  LcaParams anchor = lca_params(16, 4);
  anchor.key_mode = lca::KeyMode::anchor;
  run_extends(gqa_config(9, 3, 64, anchor, DType::f16, 8), {0, 17}, {2, 4, 9, 64}, 6);
}

TEST(GpuDecode, PrefillChunksMlaMatchCpuCache) {
  REQUIRE_GPU();
  PagedCacheConfig cfg = mla_config(16, 512, 64, lca_params(64, 16), DType::bf16, 64);
  cfg.layers = 2;
  run_extends(cfg, {0, 70, 200}, {1, 15, 16, 63, 150}, 5);
  LcaParams p = lca_params(40, 8);
  p.score = lca::ScoreMode::full;  // ring rows [q~ ; q^R]
  run_extends(mla_config(40, 256, 32, p, DType::f16, 32), {1, 48}, {3, 8, 77}, 5);
  // w = 0: a chunk condenses groups of its own tokens only.
  run_extends(mla_config(16, 512, 64, lca_params(0, 8), DType::bf16, 32), {0, 21}, {1, 7, 40}, 4);
}

// MTLA chunks: rows closing within a chunk and across chunks, the open row
// continued from its fp32 sum, starts and chunk sizes not multiples of s.
TEST(GpuDecode, PrefillChunksMtlaMatchCpuCache) {
  REQUIRE_GPU();
  std::mt19937_64 rng(37);
  for (int64_t s : {1, 2, 3, 4}) {
    SCOPED_TRACE("s = " + std::to_string(s));
    run_extends(mtla_config(rng, s, false, 2), {0, 3, 45}, {1, 3, 5, 8, 37}, 4);
  }
  run_extends(mtla_config(rng, 4, true, 1), {1, 22}, {2, 7, 30}, 4);
}

TEST(GpuDecode, PrefillChunksFullAttention) {
  REQUIRE_GPU();
  run_extends(gqa_config(8, 2, 64, LcaParams::full(), DType::bf16, 16), {0, 30}, {1, 9, 50}, 5);
  run_extends(mla_config(16, 512, 64, LcaParams::full(), DType::bf16, 64), {5}, {64, 100}, 3);
}

// The default pool holds one sequence's max_context prompt in large chunks:
// while a chunk extends it, the old raw window and the new one are both held.
TEST(GpuDecode, DefaultPoolHoldsAChunkedPromptToMaxContext) {
  REQUIRE_GPU();
  for (int64_t chunk : {200, 700, 1100}) {
    PagedCacheConfig cfg = gqa_config(8, 2, 64, lca_params(64, 16), DType::bf16, 64);
    cfg.layers = 3;
    cfg.max_context = 1100;
    PagedKvCache cache(cfg);
    const int64_t seq = cache.add_sequence();
    EXPECT_LE(cache.extend_blocks(seq, cfg.max_context, chunk), cache.free_blocks()) << "chunks of " << chunk;
    for (int64_t n = 0; n < cfg.max_context; n += chunk) {
      ASSERT_NO_THROW(cache.begin_extend(seq, std::min(chunk, cfg.max_context - n))) << "chunk at " << n;
      cache.end_extend(seq);  // contents do not matter here, only blocks
    }
    EXPECT_EQ(cache.tokens(seq), cfg.max_context);
  }
}

TEST(GpuDecode, PrefillChunkBadCallsNameTheProblem) {
  REQUIRE_GPU();
  Scenario s;
  s.cfg = gqa_config(8, 2, 64, lca_params(16, 4), DType::bf16, 16);
  s.cfg.max_seqs = 2;
  s.cfg.max_context = 60;
  s.cfg.pool_bytes = 5 * 16 * s.cfg.gqa.row_width() * 2;  // five blocks
  s.start(2);
  const int64_t a = s.join(30), b = s.gpu->add_sequence();
  auto expect_error = [](auto&& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one naming '" << needle << "'";
    } catch (const lca::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const int64_t free = s.gpu->free_blocks();
  expect_error([&] { s.gpu->begin_extend(a, 31); }, "max_context");
  expect_error([&] { s.gpu->begin_extend(a, 0); }, "L must be >= 1");
  expect_error([&] { s.gpu->write_extend_device(a, 0, nullptr, nullptr, nullptr); }, "not being extended");
  expect_error([&] { s.gpu->end_extend(a); }, "not being extended");
  // Blocks: a holds 1 representative and 2 raw blocks; b's 60 tokens want 3, 2 are left.
  EXPECT_EQ(free, 2);
  EXPECT_EQ(s.gpu->extend_blocks(b, 60, 60), 3);
  expect_error([&] { s.gpu->begin_extend(b, 60); }, "out of cache blocks");
  EXPECT_EQ(s.gpu->free_blocks(), free);
  EXPECT_EQ(s.gpu->tokens(b), 0);
  s.gpu->begin_extend(a, 20);  // 30 -> 50: raw blocks 2 and 3
  EXPECT_EQ(s.gpu->free_blocks(), 0);
  expect_error([&] { s.gpu->begin_extend(a, 1); }, "already being extended");
  expect_error([&] { s.gpu->begin_step(std::vector<int64_t>{a}); }, "end_extend");
  expect_error([&] { s.gpu->write_extend_device(a, 0, nullptr, nullptr, nullptr); }, "reps is null");
  expect_error([&] { s.gpu->set_tokens(a, 3); }, "already holds");
  s.gpu->cancel_extend(a);  // gives its blocks back, n unchanged
  EXPECT_EQ(s.gpu->free_blocks(), free);
  EXPECT_EQ(s.gpu->tokens(a), 30);
  s.gpu->begin_step(std::vector<int64_t>{a});
  expect_error([&] { s.gpu->begin_extend(a, 1); }, "step is in progress");
  s.gpu->end_step();
  // MTLA: the open row's fp32 sum is due wherever a row is open (s = 4, 5 tokens: rows 0 and 1, 1 open).
  std::mt19937_64 rng(3);
  PagedCacheConfig mtla = mtla_config(rng, 4, false, 1);
  mtla.max_context = 64;
  PagedKvCache m(mtla);
  const int64_t seq = m.add_sequence();
  DeviceBytes rows_d(2 * m.row_width() * 2), open_d(512 * sizeof(float));
  m.begin_extend(seq, 5);
  expect_error([&] { m.write_extend_device(seq, 0, rows_d.ptr, nullptr, nullptr, nullptr); }, "open_sum is null");
  m.write_extend_device(seq, 0, rows_d.ptr, nullptr, nullptr, static_cast<const float*>(open_d.ptr));
  m.end_extend(seq);
  expect_error([&] { m.read_layer_device(seq, 0, rows_d.ptr, nullptr, nullptr, nullptr); }, "open_sum is null");
  m.read_layer_device(seq, 0, rows_d.ptr, nullptr, nullptr, static_cast<float*>(open_d.ptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(m.tokens(seq), 5);
}

// ---- Configuration checks: no device needed ---------------------------------------

TEST(PagedCacheConfig, InvalidFieldsAreNamed) {
  auto expect_error = [](PagedCacheConfig cfg, const char* needle) {
    try {
      cfg.validate();
      ADD_FAILURE() << "no error; expected one naming '" << needle << "'";
    } catch (const lca::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  PagedCacheConfig ok = mla_config(16, 512, 64, lca_params(1024, 16), DType::bf16, 64);
  ok.max_context = 1000;
  EXPECT_NO_THROW(ok.validate());
  PagedCacheConfig c = ok;
  c.block_rows = 40;
  expect_error(c, "multiple of the group size");
  c = ok;
  c.dtype = DType::f32;
  expect_error(c, "dtype");
  c = ok;
  c.max_context = 0;
  expect_error(c, "max_context");
  c = ok;
  c.mla.d_latent = 384;
  expect_error(c, "not built for decode");
  c = gqa_config(8, 3, 64, lca_params(64, 16), DType::bf16, 64);
  c.max_context = 100;
  expect_error(c, "kv_heads");
  c = gqa_config(8, 2, 96, lca_params(64, 16), DType::bf16, 64);
  c.max_context = 100;
  expect_error(c, "head_dim 96");
  c = ok;
  c.scale = 0;
  expect_error(c, "scale");
  c = ok;
  c.policy = lca::MtlaParams{.down_rate = 2};
  expect_error(c, "mtla_hyper holds 0 hyper-networks for 1 layers");
  c = gqa_config(8, 2, 64, lca_params(64, 16), DType::bf16, 64);
  c.max_context = 100;
  c.policy = lca::MtlaParams{.down_rate = 2};
  expect_error(c, "MLA layout only");
}

TEST(PagedCacheConfig, NoDeviceIsAClearError) {
  if (lca::cuda::device_present()) GTEST_SKIP() << "a CUDA device is present; this checks the error without one";
  PagedCacheConfig cfg = mla_config(16, 512, 64, lca_params(1024, 16), DType::bf16, 64);
  cfg.max_context = 1000;
  try {
    PagedKvCache cache(cfg);
    FAIL() << "no error without a device";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
}

}  // namespace
