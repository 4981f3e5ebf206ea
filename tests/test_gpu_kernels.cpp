// CUDA kernels against the CPU reference (float64) on fresh random inputs.
// Inputs are rounded to the kernel's dtype first, so both sides compute the
// same function of the same numbers; outputs are poisoned (all bits set: NaN in
// bf16 and f16) before each launch, and NaN never passes.
// Without a GPU every case reports SKIPPED.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "lca/cuda.hpp"
#include "lca/dtype.hpp"
#include "lca/reference.hpp"
#include "reference/rows.hpp"
#include "cuda/model_ops.hpp"

namespace {

using lca::DType;
using lca::LcaParams;
using lca::Tensor;

#define REQUIRE_GPU() \
  if (!lca::cuda::device_present()) GTEST_SKIP() << "no CUDA device on this machine"

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// A device buffer of n values of `dtype` (or raw bytes for other types).
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t b) : bytes(b) {
    if (cudaMalloc(&ptr, b == 0 ? 16 : b) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  void poison() { cudaMemset(ptr, 0xff, bytes); }
};

// Rounds t to dtype in place and returns the encoded bytes on the device.
std::unique_ptr<DeviceBuffer> upload(Tensor<float>& t, DType dtype) {
  std::vector<unsigned char> bytes(static_cast<size_t>(t.numel() * lca::dtype_size(dtype)));
  lca::encode(dtype, t.data(), t.numel(), bytes.data());
  lca::decode(dtype, bytes.data(), t.numel(), t.data());  // the values the GPU sees
  auto d = std::make_unique<DeviceBuffer>(bytes.size());
  cudaMemcpy(d->ptr, bytes.data(), bytes.size(), cudaMemcpyHostToDevice);
  return d;
}

std::unique_ptr<DeviceBuffer> upload_f32(const Tensor<float>& t) {
  auto d = std::make_unique<DeviceBuffer>(static_cast<size_t>(t.numel()) * 4);
  cudaMemcpy(d->ptr, t.data(), d->bytes, cudaMemcpyHostToDevice);
  return d;
}

Tensor<float> download(const DeviceBuffer& d, const lca::Shape& shape, DType dtype) {
  Tensor<float> out(shape);
  std::vector<unsigned char> bytes(static_cast<size_t>(out.numel() * lca::dtype_size(dtype)));
  cudaMemcpy(bytes.data(), d.ptr, bytes.size(), cudaMemcpyDeviceToHost);
  lca::decode(dtype, bytes.data(), out.numel(), out.data());
  return out;
}

Tensor<float> random_tensor(std::mt19937_64& rng, const lca::Shape& shape, float stddev = 1.f) {
  std::normal_distribution<float> nd(0.f, stddev);
  Tensor<float> t(shape);
  for (float& v : t.vec()) v = nd(rng);
  return t;
}

// ||got - want|| / ||want||; infinity if got holds a NaN or infinity.
double rel_error(const Tensor<float>& got, const Tensor<double>& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (!std::isfinite(got.data()[i])) return INFINITY;
    const double d = got.data()[i] - want.data()[i];
    num += d * d;
    den += want.data()[i] * want.data()[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

LcaParams lca_params(int64_t w, int64_t g) {
  LcaParams p;
  p.window = w;
  p.group = g;
  return p;
}

// ---- condense ---------------------------------------------------------------------

struct CondenseCase {
  int64_t heads, d_latent, d_rope, w, g, groups;
  lca::ScoreMode score;
  DType dtype;
};

TEST(GpuCondense, MlaMatchesReference) {
  REQUIRE_GPU();
  const CondenseCase cases[] = {
      {16, 512, 64, 1024, 16, 40, lca::ScoreMode::latent, DType::bf16},
      {4, 256, 32, 100, 7, 33, lca::ScoreMode::full, DType::f16},
      {2, 64, 32, 0, 16, 9, lca::ScoreMode::latent, DType::f16},
      {40, 256, 32, 37, 64, 5, lca::ScoreMode::full, DType::bf16},
  };
  std::mt19937_64 rng(101);
  for (const CondenseCase& c : cases) {
    SCOPED_TRACE("d_latent " + std::to_string(c.d_latent) + " w " + std::to_string(c.w) + " g " +
                 std::to_string(c.g) + " " + lca::dtype_name(c.dtype));
    LcaParams p = lca_params(c.w, c.g);
    p.score = c.score;
    const lca::MlaDims dims{.heads = c.heads, .d_latent = c.d_latent, .d_rope = c.d_rope};
    const int64_t n = lca::condensation_time(c.groups - 1, p) + 1;  // the last group closes at n - 1
    const int64_t first = 1, count = c.groups - 1;                   // start at a group that is not 0
    const int64_t kv_start = first * c.g - 3 > 0 ? first * c.g - 3 : 0;
    const int64_t sum_start = lca::condensation_time(first, p) - c.g + 1 - 2;
    Tensor<float> latent = random_tensor(rng, {n - kv_start, c.d_latent});
    Tensor<float> rope = random_tensor(rng, {n - kv_start, c.d_rope});
    const int64_t sw = c.score == lca::ScoreMode::full ? c.d_latent + c.d_rope : c.d_latent;
    Tensor<float> summary = random_tensor(rng, {n - sum_start, sw}, 0.3f);
    auto d_lat = upload(latent, c.dtype);
    auto d_rope = upload(rope, c.dtype);
    auto d_sum = upload_f32(summary);
    DeviceBuffer out_lat(count * c.d_latent * 2), out_rope(count * c.d_rope * 2), anchors(count * 8);
    out_lat.poison();
    out_rope.poison();
    lca::cuda::CondenseMlaArgs a;
    a.latent = d_lat->ptr;
    a.rope_key = d_rope->ptr;
    a.summary = static_cast<const float*>(d_sum->ptr);
    a.rep_latent = out_lat.ptr;
    a.rep_rope_key = out_rope.ptr;
    a.anchors = static_cast<int64_t*>(anchors.ptr);
    a.kv_start = kv_start;
    a.kv_len = latent.dim(0);
    a.sum_start = sum_start;
    a.sum_len = summary.dim(0);
    a.first = first;
    a.count = count;
    a.heads = c.heads;
    a.d_latent = c.d_latent;
    a.d_rope = c.d_rope;
    a.scale = 1.0 / std::sqrt(192.0);
    a.dtype = c.dtype;
    a.params = p;
    lca::cuda::condense_groups_mla(a);
    CUDA_OK(cudaDeviceSynchronize());

    // Reference on the same (rounded) inputs, rows packed [c ; k^R].
    Tensor<double> rows({latent.dim(0), dims.row_width()});
    for (int64_t i = 0; i < latent.dim(0); ++i) {
      for (int64_t x = 0; x < c.d_latent; ++x) rows.row(i)[x] = latent.row(i)[x];
      for (int64_t x = 0; x < c.d_rope; ++x) rows.row(i)[c.d_latent + x] = rope.row(i)[x];
    }
    const auto want = lca::ref::condense_groups_mla(rows, kv_start, summary.cast<double>(), sum_start, first, count,
                                                    a.scale, dims, p);
    Tensor<double> want_lat({count, c.d_latent}), want_rope({count, c.d_rope});
    for (int64_t k = 0; k < count; ++k) {
      for (int64_t x = 0; x < c.d_latent; ++x) want_lat.row(k)[x] = want.rows.row(k)[x];
      for (int64_t x = 0; x < c.d_rope; ++x) want_rope.row(k)[x] = want.rows.row(k)[c.d_latent + x];
    }
    EXPECT_LT(rel_error(download(out_lat, {count, c.d_latent}, c.dtype), want_lat), 1e-2);
    EXPECT_EQ(rel_error(download(out_rope, {count, c.d_rope}, c.dtype), want_rope), 0.0);  // a copy
    std::vector<int64_t> got_anchor(count);
    cudaMemcpy(got_anchor.data(), anchors.ptr, count * 8, cudaMemcpyDeviceToHost);
    for (int64_t k = 0; k < count; ++k) EXPECT_EQ(got_anchor[k], want.anchors.row(k)[0]) << "group " << first + k;
  }
}

TEST(GpuCondense, GqaMatchesReference) {
  REQUIRE_GPU();
  struct Case {
    int64_t q_heads, kv_heads, d, w, g, groups;
    lca::KeyMode key;
    DType dtype;
  };
  const Case cases[] = {
      {28, 4, 128, 1024, 16, 30, lca::KeyMode::pooled, DType::bf16},
      {8, 2, 64, 50, 5, 21, lca::KeyMode::anchor, DType::f16},
      {6, 3, 32, 0, 16, 8, lca::KeyMode::pooled, DType::f16},
      {4, 4, 128, 31, 32, 6, lca::KeyMode::anchor, DType::bf16},
  };
  std::mt19937_64 rng(202);
  for (const Case& c : cases) {
    SCOPED_TRACE("d " + std::to_string(c.d) + " w " + std::to_string(c.w) + " g " + std::to_string(c.g));
    LcaParams p = lca_params(c.w, c.g);
    p.key_mode = c.key;
    const lca::GqaDims dims{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d};
    const lca::RopeParams rope{.theta = 10000.0};
    const int64_t n = lca::condensation_time(c.groups - 1, p) + 1;
    Tensor<float> k = random_tensor(rng, {n, c.kv_heads, c.d});
    Tensor<float> v = random_tensor(rng, {n, c.kv_heads, c.d});
    Tensor<float> q = random_tensor(rng, {n, c.q_heads, c.d}, 0.5f);
    auto d_k = upload(k, c.dtype);
    auto d_v = upload(v, c.dtype);
    auto d_q = upload(q, c.dtype);
    DeviceBuffer d_sum(n * c.kv_heads * c.d * 4);
    lca::cuda::gqa_summary_queries(d_q->ptr, static_cast<float*>(d_sum.ptr), n, c.q_heads, c.kv_heads, c.d,
                                   c.dtype);
    const int64_t count = c.groups;
    DeviceBuffer out_k(count * c.kv_heads * c.d * 2), out_v(count * c.kv_heads * c.d * 2),
        anchors(count * c.kv_heads * 8);
    out_k.poison();
    out_v.poison();
    lca::cuda::CondenseGqaArgs a;
    a.k = d_k->ptr;
    a.v = d_v->ptr;
    a.summary = static_cast<const float*>(d_sum.ptr);
    a.rep_k = out_k.ptr;
    a.rep_v = out_v.ptr;
    a.anchors = static_cast<int64_t*>(anchors.ptr);
    a.kv_len = n;
    a.sum_len = n;
    a.count = count;
    a.q_heads = c.q_heads;
    a.kv_heads = c.kv_heads;
    a.head_dim = c.d;
    a.scale = dims.default_scale();
    a.rope = rope;
    a.dtype = c.dtype;
    a.params = p;
    lca::cuda::condense_groups_gqa(a);
    CUDA_OK(cudaDeviceSynchronize());

    const Tensor<double> rows = lca::ref::gqa_pack_rows(k.cast<double>(), v.cast<double>(), dims);
    const Tensor<double> summary = lca::ref::gqa_summary_queries(q.cast<double>(), dims);
    const auto want = lca::ref::condense_groups_gqa(rows, 0, summary, 0, 0, count, a.scale, dims, rope, p);
    Tensor<double> want_k({count, c.kv_heads, c.d}), want_v({count, c.kv_heads, c.d});
    for (int64_t j = 0; j < count; ++j)
      for (int64_t h = 0; h < c.kv_heads; ++h)
        for (int64_t x = 0; x < c.d; ++x) {
          want_k.row(j)[h * c.d + x] = want.rows.row(j)[h * 2 * c.d + x];
          want_v.row(j)[h * c.d + x] = want.rows.row(j)[h * 2 * c.d + c.d + x];
        }
    EXPECT_LT(rel_error(download(out_k, {count, c.kv_heads, c.d}, c.dtype), want_k), 1e-2);
    EXPECT_LT(rel_error(download(out_v, {count, c.kv_heads, c.d}, c.dtype), want_v), 1e-2);
    std::vector<int64_t> got_anchor(count * c.kv_heads);
    cudaMemcpy(got_anchor.data(), anchors.ptr, got_anchor.size() * 8, cudaMemcpyDeviceToHost);
    for (int64_t i = 0; i < count * c.kv_heads; ++i) EXPECT_EQ(got_anchor[i], want.anchors.data()[i]) << i;
  }
}

// ---- prefill attention ---------------------------------------------------------------

struct PrefillCase {
  int64_t q_heads, kv_heads, d_qk, d_v;
  int64_t w, g;         // w < 0: full attention
  int64_t q_start, q_len;
  DType dtype;
  bool mass_bias = false;
  int64_t mtla_s = 0;   // > 0: MTLA visibility (complete rows and each query's own running row)
};

// Random representatives and raw rows; the kernel against the reference's one
// attention over [representatives ; raw rows] in float64.
void check_prefill(const PrefillCase& c, std::mt19937_64& rng) {
  SCOPED_TRACE("heads " + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + " d " +
               std::to_string(c.d_qk) + "/" + std::to_string(c.d_v) + " w " + std::to_string(c.w) + " g " +
               std::to_string(c.g) + " q [" + std::to_string(c.q_start) + ", +" + std::to_string(c.q_len) + ") " +
               lca::dtype_name(c.dtype));
  LcaParams p = c.w < 0 ? LcaParams::full() : lca_params(c.w, c.g);
  if (c.mass_bias) p.mass_bias = lca::MassBias::log_g;
  const lca::MtlaParams mp{.down_rate = std::max<int64_t>(c.mtla_s, 1)};
  const lca::Policy policy = c.mtla_s > 0 ? lca::Policy(mp) : lca::Policy(p);
  const int64_t last = c.q_start + c.q_len - 1;
  // MTLA: the complete rows query `last` sees, and one running row per query position.
  const int64_t reps = c.mtla_s > 0 ? lca::mtla_complete_rows(last, mp) : lca::condensed_groups(last + 1, p);
  const int64_t raw_start = c.mtla_s > 0 ? c.q_start : lca::first_raw_position(c.q_start + 1, p);
  const int64_t raw_len = last + 1 - raw_start;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d_qk));

  Tensor<float> q = random_tensor(rng, {c.q_len, c.q_heads, c.d_qk});
  Tensor<float> k = random_tensor(rng, {raw_len, c.kv_heads, c.d_qk});
  Tensor<float> v = random_tensor(rng, {raw_len, c.kv_heads, c.d_v});
  Tensor<float> rk = random_tensor(rng, {reps, c.kv_heads, c.d_qk});
  Tensor<float> rv = random_tensor(rng, {reps, c.kv_heads, c.d_v});
  auto dq = upload(q, c.dtype);
  auto dk = upload(k, c.dtype);
  auto dv = upload(v, c.dtype);
  auto drk = upload(rk, c.dtype);
  auto drv = upload(rv, c.dtype);
  DeviceBuffer out(c.q_len * c.q_heads * c.d_v * 2);

  lca::cuda::PrefillArgs a;
  a.q = dq->ptr;
  a.k = dk->ptr;
  a.v = dv->ptr;
  a.rep_k = drk->ptr;
  a.rep_v = drv->ptr;
  a.out = out.ptr;
  a.q_len = c.q_len;
  a.q_start = c.q_start;
  a.raw_len = raw_len;
  a.raw_start = raw_start;
  a.reps = reps;
  a.q_heads = c.q_heads;
  a.kv_heads = c.kv_heads;
  a.d_qk = c.d_qk;
  a.d_v = c.d_v;
  a.scale = scale;
  a.dtype = c.dtype;
  a.params = p;
  a.mtla_down_rate = c.mtla_s;

  // Rows per kv head [k ; v], as the reference's RowFormat reads them.
  const int64_t block = c.d_qk + c.d_v;
  auto pack = [&](const Tensor<float>& kk, const Tensor<float>& vv) {
    Tensor<double> rows({kk.dim(0), c.kv_heads * block});
    for (int64_t i = 0; i < kk.dim(0); ++i)
      for (int64_t h = 0; h < c.kv_heads; ++h) {
        for (int64_t x = 0; x < c.d_qk; ++x) rows.row(i)[h * block + x] = kk.row(i)[h * c.d_qk + x];
        for (int64_t x = 0; x < c.d_v; ++x) rows.row(i)[h * block + c.d_qk + x] = vv.row(i)[h * c.d_v + x];
      }
    return rows;
  };
  const lca::ref::detail::RowFormat fmt{.kv_heads = c.kv_heads, .kv_block = block, .key_len = c.d_qk,
                                        .value_off = c.d_qk, .value_len = c.d_v, .row_width = c.kv_heads * block};
  const Tensor<double> want =
      lca::ref::detail::attend_rows(q.cast<double>(), c.q_start, pack(rk, rv), pack(k, v), raw_start, scale, fmt,
                                    policy);
  // Each kernel generation that can run here: the default choice (the wgmma
  // kernel on Hopper for head dims that are multiples of 64) and the sm80 one.
  for (const char* kernel : {"default", "sm80"}) {
    SCOPED_TRACE(std::string("kernel ") + kernel);
    if (std::string(kernel) == "sm80") setenv("LCA_PREFILL_KERNEL", "sm80", 1);
    else unsetenv("LCA_PREFILL_KERNEL");
    out.poison();
    lca::cuda::lca_prefill(a);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double err = rel_error(download(out, {c.q_len, c.q_heads, c.d_v}, c.dtype), want);
    EXPECT_LT(err, 1e-2);
  }
  unsetenv("LCA_PREFILL_KERNEL");
}

// MTLA's visibility through the same kernels: complete rows [0, floor(t/s))
// and the query's own running row, for MLA (decompressed) and GQA head dims,
// chunk starts inside and at chunk boundaries.
TEST(GpuPrefill, MtlaPrefixPlusDiagonal) {
  REQUIRE_GPU();
  std::mt19937_64 rng(404);
  for (int64_t s : {2, 4, 16}) {
    check_prefill({16, 16, 192, 128, 0, 1, 0, 300, DType::bf16, false, s}, rng);
    check_prefill({8, 2, 128, 128, 0, 1, 333, 257, DType::f16, false, s}, rng);
    check_prefill({40, 40, 96, 64, 0, 1, 64, 129, DType::bf16, false, s}, rng);
    check_prefill({6, 3, 64, 64, 0, 1, 7, 1, DType::f16, false, s}, rng);  // one decode-like query
  }
}

TEST(GpuPrefill, GqaHeadDim128) {
  REQUIRE_GPU();
  std::mt19937_64 rng(303);
  // n below, at and past w + g; chunk starts not aligned to g or to the tile.
  check_prefill({8, 2, 128, 128, 256, 16, 0, 200, DType::bf16}, rng);
  check_prefill({8, 2, 128, 128, 256, 16, 0, 272, DType::bf16}, rng);
  check_prefill({8, 2, 128, 128, 256, 16, 0, 700, DType::f16}, rng);
  check_prefill({4, 1, 128, 128, 100, 7, 333, 257, DType::bf16}, rng);
  check_prefill({4, 4, 128, 128, 0, 16, 45, 300, DType::f16}, rng);
  check_prefill({28, 4, 128, 128, 1024, 16, 1500, 190, DType::bf16, true}, rng);
}

TEST(GpuPrefill, GqaHeadDim64) {
  REQUIRE_GPU();
  std::mt19937_64 rng(404);
  check_prefill({6, 2, 64, 64, 64, 16, 0, 500, DType::bf16}, rng);
  check_prefill({6, 3, 64, 64, 33, 5, 17, 301, DType::f16}, rng);
  check_prefill({2, 1, 64, 64, 1, 1, 0, 130, DType::bf16}, rng);
}

TEST(GpuPrefill, MlaDecompressedShapes) {
  REQUIRE_GPU();
  std::mt19937_64 rng(505);
  check_prefill({16, 16, 192, 128, 128, 16, 0, 600, DType::bf16}, rng);  // DeepSeek-V2-Lite
  check_prefill({8, 8, 96, 64, 90, 32, 70, 400, DType::f16}, rng);      // MiniCPM3-4B
}

TEST(GpuPrefill, FullCausalIsTheNoGroupPolicy) {
  REQUIRE_GPU();
  std::mt19937_64 rng(606);
  check_prefill({8, 2, 128, 128, -1, 1, 0, 333, DType::bf16}, rng);
  check_prefill({4, 4, 192, 128, -1, 1, 100, 129, DType::f16}, rng);
  check_prefill({4, 2, 64, 64, -1, 1, 0, 64, DType::bf16}, rng);
}

// Whole pipeline on the GPU: summary queries -> condense -> prefill, against
// the reference's one whole prefill (lca_prefill_gqa) on the same inputs.
TEST(GpuPrefill, GqaEndToEndMatchesReferencePrefill) {
  REQUIRE_GPU();
  std::mt19937_64 rng(707);
  for (const auto& [n, w, g, dtype] : {std::tuple<int64_t, int64_t, int64_t, DType>{900, 256, 16, DType::bf16},
                                       {517, 100, 9, DType::f16}}) {
    SCOPED_TRACE("n " + std::to_string(n));
    const lca::GqaDims dims{.q_heads = 8, .kv_heads = 2, .head_dim = 128};
    const lca::RopeParams rope{.theta = 10000.0};
    const LcaParams p = lca_params(w, g);
    Tensor<float> q = random_tensor(rng, {n, 8, 128}, 0.5f);
    Tensor<float> k = random_tensor(rng, {n, 2, 128});
    Tensor<float> v = random_tensor(rng, {n, 2, 128});
    auto dq = upload(q, dtype);
    auto dk = upload(k, dtype);
    auto dv = upload(v, dtype);
    const int64_t m = lca::condensed_groups(n, p);
    DeviceBuffer sum(n * 2 * 128 * 4), rk(m * 2 * 128 * 2), rv(m * 2 * 128 * 2), out(n * 8 * 128 * 2);
    out.poison();
    lca::cuda::gqa_summary_queries(dq->ptr, static_cast<float*>(sum.ptr), n, 8, 2, 128, dtype);
    lca::cuda::CondenseGqaArgs c;
    c.k = dk->ptr;
    c.v = dv->ptr;
    c.summary = static_cast<const float*>(sum.ptr);
    c.rep_k = rk.ptr;
    c.rep_v = rv.ptr;
    c.kv_len = c.sum_len = n;
    c.count = m;
    c.q_heads = 8;
    c.kv_heads = 2;
    c.head_dim = 128;
    c.scale = dims.default_scale();
    c.rope = rope;
    c.dtype = dtype;
    c.params = p;
    lca::cuda::condense_groups_gqa(c);
    lca::cuda::PrefillArgs a;
    a.q = dq->ptr;
    a.k = dk->ptr;
    a.v = dv->ptr;
    a.rep_k = rk.ptr;
    a.rep_v = rv.ptr;
    a.out = out.ptr;
    a.q_len = a.raw_len = n;
    a.reps = m;
    a.q_heads = 8;
    a.kv_heads = 2;
    a.d_qk = a.d_v = 128;
    a.scale = dims.default_scale();
    a.dtype = dtype;
    a.params = p;
    lca::cuda::lca_prefill(a);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const Tensor<double> rows = lca::ref::gqa_pack_rows(k.cast<double>(), v.cast<double>(), dims);
    const Tensor<double> want = lca::ref::lca_prefill_gqa(q.cast<double>(), rows, c.scale, dims, rope, p);
    // Representatives are rounded to the dtype on the GPU: a little more error than attention alone.
    EXPECT_LT(rel_error(download(out, {n, 8, 128}, dtype), want), 1e-2);
  }
}

TEST(GpuPrefill, BadArgumentsNameTheProblem) {
  REQUIRE_GPU();
  lca::cuda::PrefillArgs a;
  a.q_heads = 8;
  a.kv_heads = 3;
  a.d_qk = a.d_v = 128;
  a.scale = 0.1;
  a.q_len = 1;
  int dummy_storage;
  a.q = a.k = a.v = &dummy_storage;
  a.out = &dummy_storage;
  try {
    lca::cuda::lca_prefill(a);
    FAIL() << "8 query heads over 3 kv heads accepted";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_heads"), std::string::npos) << e.what();
  }
  a.kv_heads = 2;
  a.d_qk = 80;
  EXPECT_THROW(lca::cuda::lca_prefill(a), lca::Error);
  a.d_qk = 128;
  a.params = lca_params(4, 2);
  a.q_start = 20;  // sees m(21) = 8 representatives; none given
  a.raw_len = 100;
  EXPECT_THROW(lca::cuda::lca_prefill(a), lca::Error);
  a.dtype = DType::f32;
  a.params = LcaParams::full();
  a.q_start = 0;
  EXPECT_THROW(lca::cuda::lca_prefill(a), lca::Error);
}

}  // namespace

// ---- MTLA rows (prefill) --------------------------------------------------------------

// mtla_rows in two consecutive calls (the second continues the open chunk)
// against the reference's merge weights and running rows in float64.
TEST(GpuMtla, RowsMatchReference) {
  REQUIRE_GPU();
  std::mt19937_64 rng(505);
  for (int64_t s : {2, 3, 16}) {
    for (DType dtype : {DType::bf16, DType::f16}) {
      SCOPED_TRACE("s " + std::to_string(s) + " " + lca::dtype_name(dtype));
      const lca::MlaDims dims{.heads = 16, .d_latent = 512, .d_rope = 64, .d_nope = 128, .d_v = 128};
      const lca::MtlaParams p{.down_rate = s};
      const int64_t n = 101, split = 37, dc = dims.d_latent, row = dims.row_width();
      Tensor<float> rows = random_tensor(rng, {n, row});
      auto d_rows = upload(rows, dtype);  // rows now hold the rounded values
      const float bound = 1.f / std::sqrt(float(dc));
      auto uniform = [&](lca::Shape shape) {
        std::uniform_real_distribution<float> u(-bound, bound);
        Tensor<float> t(std::move(shape));
        for (float& x : t.vec()) x = u(rng);
        return t;
      };
      const lca::MtlaHyperNet<float> hyper{uniform({dc / 4, dc}), uniform({dc / 4}), uniform({dc / 4, dc}),
                                           uniform({dc / 4})};
      Tensor<float> packed({2 * (dc / 4) * dc + 2 * (dc / 4)});
      float* at = packed.data();
      for (const Tensor<float>* t : {&hyper.fc_c_weight, &hyper.fc_c_bias, &hyper.fc_p_weight, &hyper.fc_p_bias})
        at = std::copy(t->data(), t->data() + t->numel(), at);
      auto d_hyper = upload_f32(packed);

      const Tensor<double> w = lca::ref::mtla_merge_weights(rows.cast<double>(), 0, dims, p, hyper.cast<double>());
      const Tensor<double> running = lca::ref::mtla_running_rows(rows.cast<double>(), w, 0, Tensor<double>(), dims, p);

      DeviceBuffer open_a(dc * 4), open_b(dc * 4), weights(n * 4), out_running(n * row * 2), out_complete(n * row * 2);
      out_running.poison();
      out_complete.poison();
      for (auto [start, len] : {std::pair<int64_t, int64_t>{0, split}, {split, n - split}}) {
        lca::cuda::MtlaRowsArgs a;
        a.rows = static_cast<char*>(d_rows->ptr) + start * row * 2;
        a.hyper = static_cast<const float*>(d_hyper->ptr);
        a.open_in = static_cast<const float*>(open_a.ptr);
        a.open_out = static_cast<float*>(start == 0 ? open_a.ptr : open_b.ptr);
        if (start == 0) a.open_in = static_cast<const float*>(open_b.ptr);  // not read: start = 0
        a.weights = static_cast<float*>(weights.ptr) + start;
        a.running = static_cast<char*>(out_running.ptr) + start * row * 2;
        a.complete = static_cast<char*>(out_complete.ptr) + (start / s) * row * 2;
        a.start = start;
        a.len = len;
        a.d_latent = dc;
        a.d_rope = dims.d_rope;
        a.dtype = dtype;
        a.params = p;
        lca::cuda::mtla_rows(a);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      }
      Tensor<float> got_w({n});
      cudaMemcpy(got_w.data(), weights.ptr, n * 4, cudaMemcpyDeviceToHost);
      EXPECT_LT(rel_error(got_w, w), 1e-5);
      // Running rows: one rounding of the fp32 sum; complete rows: the running row of each chunk's last position.
      EXPECT_LT(rel_error(download(out_running, {n, row}, dtype), running), 1e-2);
      const int64_t complete = n / s;
      Tensor<double> want_complete({complete, row});
      for (int64_t k = 0; k < complete; ++k)
        std::copy(running.row((k + 1) * s - 1), running.row((k + 1) * s - 1) + row, want_complete.row(k));
      EXPECT_LT(rel_error(download(out_complete, {complete, row}, dtype), want_complete), 1e-2);
      // The rope keys are copies.
      const Tensor<float> got = download(out_running, {n, row}, dtype);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t x = dc; x < row; ++x) ASSERT_EQ(got.row(t)[x], rows.row(t)[x]) << "position " << t;
    }
  }
}

TEST(GpuMtla, BadArgumentsNameTheProblem) {
  lca::cuda::MtlaRowsArgs a;
  a.d_latent = 500;
  a.len = 1;
  EXPECT_THROW(lca::cuda::check_mtla_rows(a), lca::Error);
  a.d_latent = 512;
  a.params.down_rate = 0;
  EXPECT_THROW(lca::cuda::check_mtla_rows(a), lca::Error);
  a.params.down_rate = 2;
  float buf[4];
  a.rows = a.hyper = a.weights = buf;
  a.running = a.complete = buf;
  a.start = 1;  // the chunk at start is open but open_in is null
  try {
    lca::cuda::check_mtla_rows(a);
    FAIL() << "no error";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("open_in"), std::string::npos) << e.what();
  }
}

// ---- MLA decode rows on a joint product ---------------------------------------------

namespace {

std::vector<uint16_t> read_bits(const DeviceBuffer& d) {
  std::vector<uint16_t> b(d.bytes / 2);
  cudaMemcpy(b.data(), d.ptr, d.bytes, cudaMemcpyDeviceToHost);
  return b;
}


// decode_linear (the batch-1 products) against double: tail rows (N not a
// multiple of 8 warps), K whose pieces are not a multiple of 32 lanes or of the
// 8 loads in flight, alpha and a residual (beta = 1), fp32 output, the
// smallest K; then a chain rms_norm -> product -> swiglu -> product with a
// residual, each launched with programmatic dependent launch after the one
// before (a missing wait would read poisoned or stale inputs).
TEST(GpuModelOps, DecodeLinearMatchesReference) {
  REQUIRE_GPU();
  namespace d = lca::cuda::detail;
  std::mt19937_64 rng(0x6c696e);
  struct Case {
    int64_t n, k;
    float alpha, beta;
    bool y_f32;
  };
  for (const Case c : {Case{1056, 2560, 1.f, 0.f, false}, Case{77, 768, 1.f, 0.f, false},
                       Case{300, 1000, 0.7f, 1.f, false}, Case{513, 200, 1.3f, 0.f, true},
                       Case{64, 8, 1.f, 1.f, true}, Case{2560, 6400, 1.f, 1.f, false}}) {
    SCOPED_TRACE("N " + std::to_string(c.n) + " K " + std::to_string(c.k));
    Tensor<float> x = random_tensor(rng, {1, c.k}), w = random_tensor(rng, {c.n, c.k}, 0.05f);
    Tensor<float> y0 = random_tensor(rng, {1, c.n});
    auto x_dev = upload(x, DType::bf16);
    auto w_dev = upload(w, DType::bf16);
    std::unique_ptr<DeviceBuffer> y;
    if (c.y_f32) y = upload_f32(y0);
    else y = upload(y0, DType::bf16);  // rounds y0 to the values the kernel reads
    if (c.beta == 0.f) y->poison();
    ASSERT_TRUE(d::decode_linear_fits(d::WeightLayout::nk, 1, c.n, c.k, x_dev->ptr, w_dev->ptr));
    d::decode_linear(d::WeightLayout::nk, c.n, c.k, x_dev->ptr, w_dev->ptr, y->ptr, c.alpha, c.beta, c.y_f32, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    Tensor<double> want({1, c.n});
    for (int64_t i = 0; i < c.n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < c.k; ++j) s += double(w.row(i)[j]) * x.data()[j];
      want.data()[i] = c.alpha * s + (c.beta != 0.f ? c.beta * double(y0.data()[i]) : 0.0);
    }
    EXPECT_LT(rel_error(download(*y, {1, c.n}, c.y_f32 ? DType::f32 : DType::bf16), want), c.y_f32 ? 1e-4 : 1e-2);
  }

  // The chain of an MLP at batch 1: h = rms_norm(x), gu = W1 h, a = swiglu(gu), x += W2 a.
  const int64_t D = 512, F = 1376;
  Tensor<float> x = random_tensor(rng, {1, D}), g = random_tensor(rng, {D}, 0.5f);
  Tensor<float> w1 = random_tensor(rng, {2 * F, D}, 0.05f), w2 = random_tensor(rng, {D, F}, 0.05f);
  auto x_dev = upload(x, DType::bf16);
  auto g_dev = upload(g, DType::bf16);
  auto w1_dev = upload(w1, DType::bf16);
  auto w2_dev = upload(w2, DType::bf16);
  DeviceBuffer h(D * 2), gu(2 * F * 2), a(F * 2);
  h.poison();
  gu.poison();
  a.poison();
  d::rms_norm(x_dev->ptr, g_dev->ptr, 1, D, 1e-6, h.ptr, nullptr);
  d::decode_linear(d::WeightLayout::nk, 2 * F, D, h.ptr, w1_dev->ptr, gu.ptr, 1.f, 0.f, false, nullptr);
  d::swiglu(gu.ptr, 1, F, a.ptr, nullptr);
  d::decode_linear(d::WeightLayout::nk, D, F, a.ptr, w2_dev->ptr, x_dev->ptr, 1.f, 1.f, false, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  // The reference rounds to bf16 where the kernels store bf16.
  auto bf = [](double v) {
    float f = static_cast<float>(v);
    uint16_t b;
    lca::encode(DType::bf16, &f, 1, &b);
    lca::decode(DType::bf16, &b, 1, &f);
    return double(f);
  };
  double ss = 0;
  for (int64_t j = 0; j < D; ++j) ss += double(x.data()[j]) * x.data()[j];
  const double inv = 1.0 / std::sqrt(ss / D + 1e-6);
  std::vector<double> hv(D), av(F);
  for (int64_t j = 0; j < D; ++j) hv[j] = bf(x.data()[j] * inv * g.data()[j]);
  std::vector<double> guv(2 * F);
  for (int64_t i = 0; i < 2 * F; ++i) {
    double s = 0;
    for (int64_t j = 0; j < D; ++j) s += double(w1.row(i)[j]) * hv[j];
    guv[i] = bf(s);
  }
  for (int64_t i = 0; i < F; ++i) av[i] = bf(guv[i] / (1.0 + std::exp(-guv[i])) * guv[F + i]);
  Tensor<double> want({1, D});
  for (int64_t i = 0; i < D; ++i) {
    double s = 0;
    for (int64_t j = 0; j < F; ++j) s += double(w2.row(i)[j]) * av[j];
    want.data()[i] = x.data()[i] + s;
  }
  EXPECT_LT(rel_error(download(*x_dev, {1, D}, DType::bf16), want), 2e-2);

  // Batches of products with strides, as MLA's per heads: W [N, K] (W_UV), and
  // W [K, N] (W_UK applied to each head's q^C, x rows dq apart).
  for (const auto layout : {d::WeightLayout::nk, d::WeightLayout::kn}) {
    const bool nk = layout == d::WeightLayout::nk;
    SCOPED_TRACE(nk ? "batched nk" : "batched kn");
    const int64_t heads = 5, n = nk ? 128 : 520, k = nk ? 512 : 96, xs = k + 32, ys = n + 8;
    Tensor<float> xb = random_tensor(rng, {heads, xs}), wb = random_tensor(rng, {heads, n * k}, 0.05f);
    auto xb_dev = upload(xb, DType::bf16);
    auto wb_dev = upload(wb, DType::bf16);
    DeviceBuffer yb(heads * ys * 2);
    yb.poison();
    const d::LinearBatch lb{heads, xs, n * k, ys};
    ASSERT_TRUE(d::decode_linear_fits(layout, 1, n, k, xb_dev->ptr, wb_dev->ptr, lb));
    d::decode_linear(layout, n, k, xb_dev->ptr, wb_dev->ptr, yb.ptr, 1.f, 0.f, false, nullptr, lb);
    CUDA_OK(cudaDeviceSynchronize());
    const Tensor<float> got = download(yb, {heads, ys}, DType::bf16);
    Tensor<float> got_n({heads, n});
    Tensor<double> want_n({heads, n});
    for (int64_t b = 0; b < heads; ++b)
      for (int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (int64_t j = 0; j < k; ++j)
          s += double(wb.row(b)[nk ? i * k + j : j * n + i]) * xb.row(b)[j];
        want_n.row(b)[i] = s;
        got_n.row(b)[i] = got.row(b)[i];
      }
    EXPECT_LT(rel_error(got_n, want_n), 1e-2);
  }

  // What it does not take, it names.
  EXPECT_FALSE(d::decode_linear_fits(d::WeightLayout::nk, 2, 64, 64, x_dev->ptr, w1_dev->ptr));
  EXPECT_FALSE(d::decode_linear_fits(d::WeightLayout::nk, 1, 64, 12, x_dev->ptr, w1_dev->ptr));
  EXPECT_FALSE(d::decode_linear_fits(d::WeightLayout::nk, 1, 64, 64, static_cast<char*>(x_dev->ptr) + 2, w1_dev->ptr));
  EXPECT_FALSE(d::decode_linear_fits(d::WeightLayout::kn, 1, 60, 64, x_dev->ptr, w1_dev->ptr));
  EXPECT_FALSE(d::decode_linear_fits(d::WeightLayout::kn, 1, 64, 129, x_dev->ptr, w1_dev->ptr));
  try {
    d::decode_linear(d::WeightLayout::nk, 64, 12, x_dev->ptr, w1_dev->ptr, h.ptr, 1.f, 0.f, false, nullptr);
    ADD_FAILURE() << "no error for K = 12";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("K = 12"), std::string::npos) << e.what();
  }
}

}  // namespace

// Decode reads q and kv_a in place from one product [B, ld]: mla_decode_rows
// there must give the bits of mla_kv_rows and mla_rope_queries on contiguous
// copies (q rotated in place, q_abs's rope columns, the cache rows), and
// rms_norm and add_bias on strided rows those of contiguous ones. Three
// tokens, so that a wrong stride reads another token's values; both rope
// pair layouts; padding columns beyond the two parts.
TEST(GpuMlaRows, DecodeRowsOnAJointProductEqualTheSeparateKernels) {
  REQUIRE_GPU();
  namespace d = lca::cuda::detail;
  std::mt19937_64 rng(0x6a6f696e74);
  const int64_t B = 3, H = 2, dn = 16, dr = 8, dc = 40, dq = dn + dr, width = dc + dr, nq = H * dq;
  const int64_t ld = nq + width + 8;
  for (const bool interleaved : {false, true}) {
    SCOPED_TRACE(interleaved ? "interleaved" : "half-split");
    Tensor<float> joint = random_tensor(rng, {B, ld}), bias = random_tensor(rng, {width}, 0.3f);
    Tensor<float> norm_w = random_tensor(rng, {dc}, 0.5f);
    auto joint_dev = upload(joint, DType::bf16);
    auto bias_dev = upload(bias, DType::bf16);
    auto norm_dev = upload(norm_w, DType::bf16);
    // Contiguous copies of the two parts (joint now holds the bf16 values).
    Tensor<float> q({B, nq}), kv({B, width});
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(joint.row(b), nq, q.row(b));
      std::copy_n(joint.row(b) + nq, width, kv.row(b));
    }
    auto q_dev = upload(q, DType::bf16);
    auto kv_dev = upload(kv, DType::bf16);
    std::vector<int64_t> positions(B);
    std::uniform_int_distribution<int64_t> pos(0, 200000);
    for (int64_t& p : positions) p = pos(rng);
    std::vector<double> inv_freq(dr / 2);
    for (size_t j = 0; j < inv_freq.size(); ++j) inv_freq[j] = std::pow(10000.0, -2.0 * double(j) / double(dr));
    DeviceBuffer pos_dev(B * 8), freq_dev(inv_freq.size() * 8);
    CUDA_OK(cudaMemcpy(pos_dev.ptr, positions.data(), pos_dev.bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(freq_dev.ptr, inv_freq.data(), freq_dev.bytes, cudaMemcpyHostToDevice));
    const auto* p = static_cast<const int64_t*>(pos_dev.ptr);
    const auto* f = static_cast<const double*>(freq_dev.ptr);
    const double eps = 1e-6, factor = 1.25;

    DeviceBuffer rows_sep(B * width * 2), rows_one(B * width * 2), abs_sep(B * H * width * 2),
        abs_one(B * H * width * 2);
    abs_sep.poison(), abs_one.poison(), rows_sep.poison(), rows_one.poison();
    d::mla_kv_rows(kv_dev->ptr, bias_dev->ptr, norm_dev->ptr, eps, B, dc, dr, p, 0, f, factor, interleaved,
                   rows_sep.ptr, nullptr, nullptr, nullptr);
    d::mla_rope_queries(q_dev->ptr, B, H, dn, dr, p, 0, f, factor, interleaved, abs_sep.ptr, width, nullptr, 0,
                        nullptr);
    d::mla_decode_rows(static_cast<char*>(joint_dev->ptr) + nq * 2, ld, bias_dev->ptr, norm_dev->ptr, eps,
                       joint_dev->ptr, ld, B, H, dn, dc, dr, p, f, factor, interleaved, rows_one.ptr, abs_one.ptr,
                       nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(read_bits(rows_one), read_bits(rows_sep));
    EXPECT_EQ(read_bits(abs_one), read_bits(abs_sep));
    const std::vector<uint16_t> joint_bits = read_bits(*joint_dev), q_bits = read_bits(*q_dev);
    int64_t q_differ = 0, rest_changed = 0;
    std::vector<uint16_t> joint0(static_cast<size_t>(B * ld));
    lca::encode(DType::bf16, joint.data(), joint.numel(), joint0.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < ld; ++c) {
        const size_t i = static_cast<size_t>(b * ld + c);
        if (c < nq) q_differ += joint_bits[i] != q_bits[static_cast<size_t>(b * nq + c)];
        else rest_changed += joint_bits[i] != joint0[i];
      }
    EXPECT_EQ(q_differ, 0) << "q rotated in place differs";
    EXPECT_EQ(rest_changed, 0) << "kv_a or padding columns of the joint product were written";
    // Rope moved some values: the comparison above is not of two untouched copies.
    EXPECT_NE(q_bits, std::vector<uint16_t>(joint0.begin(), joint0.begin() + nq));

    // rms_norm and add_bias (the q_a part with q_lora) on strided rows.
    const int64_t r = 24;
    Tensor<float> qa({B, r}), qa_bias = random_tensor(rng, {r}), qa_norm = random_tensor(rng, {r});
    for (int64_t b = 0; b < B; ++b) std::copy_n(joint.row(b), r, qa.row(b));
    auto qa_dev = upload(qa, DType::bf16);
    auto qa_bias_dev = upload(qa_bias, DType::bf16);
    auto qa_norm_dev = upload(qa_norm, DType::bf16);
    auto strided = upload(joint, DType::bf16);
    DeviceBuffer out_sep(B * r * 2), out_one(B * r * 2);
    d::add_bias(qa_dev->ptr, qa_bias_dev->ptr, B, r, 1.f, nullptr);
    d::rms_norm(qa_dev->ptr, qa_norm_dev->ptr, B, r, eps, out_sep.ptr, nullptr);
    d::add_bias(strided->ptr, qa_bias_dev->ptr, B, r, 1.f, nullptr, ld);
    d::rms_norm(strided->ptr, qa_norm_dev->ptr, B, r, eps, out_one.ptr, nullptr, ld);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(read_bits(out_one), read_bits(out_sep));
    const std::vector<uint16_t> biased = read_bits(*strided), biased_sep = read_bits(*qa_dev);
    int64_t bias_differ = 0, bias_outside = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < ld; ++c) {
        const size_t i = static_cast<size_t>(b * ld + c);
        if (c < r) bias_differ += biased[i] != biased_sep[static_cast<size_t>(b * r + c)];
        else bias_outside += biased[i] != joint0[i];
      }
    EXPECT_EQ(bias_differ, 0);
    EXPECT_EQ(bias_outside, 0) << "add_bias wrote past the row's d values";
  }
}

// rms_norm against double: rows of 2,560 values (the 16-byte-piece kernel),
// rows of 100 (the fallback), and the largest the piece kernel takes.
TEST(GpuModelOps, RmsNormMatchesReference) {
  REQUIRE_GPU();
  namespace d = lca::cuda::detail;
  std::mt19937_64 rng(0x726d73);
  for (const int64_t D : {2560, 100, 8192}) {
    SCOPED_TRACE("d " + std::to_string(D));
    const int64_t rows = 3;
    const double eps = 1e-6;
    Tensor<float> x = random_tensor(rng, {rows, D}), w = random_tensor(rng, {D}, 0.5f);
    auto x_dev = upload(x, DType::bf16);
    auto w_dev = upload(w, DType::bf16);
    DeviceBuffer out(rows * D * 2);
    out.poison();
    d::rms_norm(x_dev->ptr, w_dev->ptr, rows, D, eps, out.ptr, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    Tensor<double> want({rows, D});
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t c = 0; c < D; ++c) ss += double(x.row(r)[c]) * x.row(r)[c];
      const double inv = 1.0 / std::sqrt(ss / double(D) + eps);
      for (int64_t c = 0; c < D; ++c) want.row(r)[c] = x.row(r)[c] * inv * w.data()[c];
    }
    EXPECT_LT(rel_error(download(out, {rows, D}, DType::bf16), want), 1e-2);
  }
}
