// GpuMoe (DeepSeek's MoE feed-forward on the GPU) against the CPU model::moe
// on the same bf16-rounded weights and inputs: DeepSeek-V2 greedy and
// group-limited routing, DeepSeek-V3 sigmoid + correction bias with group
// choice, with and without shared experts and normalisation, sizes whose GEMM
// tiles do not divide, experts with several row tiles, rows 1 to 300 (uneven
// counts, experts with no tokens), exact ties broken alike, a CUDA graph of
// forward replayed twice equal to the direct call, and the rows of x past
// `rows` left untouched; the per-expert cuBLAS path (workspace blas_min_rows)
// against the same CPU oracle, and not taken under capture. Each row is compared on its own, so one token routed
// differently fails. Without a GPU the cases that need one report SKIPPED; the
// argument checks, which come before any device work, run everywhere.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "lca/cuda.hpp"
#include "model/mla.hpp"
#include "runtime/gpu_moe.hpp"
#include "test_util.hpp"

namespace {

using lca::DType;
using lca::LayerWeights;
using lca::MlpWeights;
using lca::Tensor;
using lca::cuda::GpuMoe;
using lca::cuda::MoeWorkspace;
using lca::model::MlaArch;
using lca::model::MoeRouting;
using lca_test::expect_error;
using lca_test::Rng;

#define REQUIRE_GPU() \
  if (!lca::cuda::device_present()) GTEST_SKIP() << "no CUDA device on this machine"

struct MoeCase {
  MoeRouting routing = MoeRouting::softmax_greedy;
  int64_t D = 64, E = 8, K = 2, F = 32, shared = 1, n_group = 1, topk_group = 1;
  bool norm = false;
  double scaling = 1.0;
};

// Group-limited softmax routing (DeepSeek-V2) with two shared units and a
// routed scaling.
MoeCase group_limited_case() {
  MoeCase c;
  c.routing = MoeRouting::softmax_group_limited;
  c.K = 3, c.shared = 2, c.n_group = 4, c.topk_group = 2, c.scaling = 16.0;
  return c;
}

// Tails in every GEMM dimension (D = 136 and F = 72 are no multiples of the
// 32-deep k tiles; 2F = 144 and D spill into a second, partial column tile),
// no shared experts, V3 routing without normalisation.
MoeCase uneven_v3_case() {
  MoeCase c;
  c.routing = MoeRouting::sigmoid_noaux_tc;
  c.D = 136, c.E = 16, c.K = 4, c.F = 72, c.shared = 0, c.n_group = 4, c.topk_group = 2, c.scaling = 1.5;
  return c;
}

MlaArch arch_of(const MoeCase& c) {
  MlaArch a;
  a.experts = c.E;
  a.per_token = c.K;
  a.expert_size = c.F;
  a.shared = c.shared;
  a.routing = c.routing;
  a.n_group = c.n_group;
  a.topk_group = c.topk_group;
  a.norm_topk_prob = c.norm;
  a.routed_scaling = c.scaling;
  return a;
}

// N(0, sd^2) values rounded to bf16 (what the GPU holds, so both sides see the same numbers).
Tensor<float> bf16_randn(const lca::Shape& shape, Rng& rng, double sd) {
  Tensor<float> t(shape);
  for (float& v : t.vec()) v = lca::round_to(DType::bf16, static_cast<float>(sd * rng.normal()));
  return t;
}

MlpWeights random_mlp(int64_t D, int64_t F, Rng& rng) {
  const Tensor<float> none({0});
  return MlpWeights{bf16_randn({F, D}, rng, 1.0 / std::sqrt(double(D))), bf16_randn({F, D}, rng, 1.0 / std::sqrt(double(D))),
                    bf16_randn({D, F}, rng, 1.0 / std::sqrt(double(F))), none, none, none};
}

// One MoE layer's weights (router logits ~ N(0, 1) for h ~ N(0, 1)).
LayerWeights random_moe_layer(const MoeCase& c, Rng& rng) {
  LayerWeights lw;
  lw.router = bf16_randn({c.E, c.D}, rng, 1.0 / std::sqrt(double(c.D)));
  lw.router_bias = c.routing == MoeRouting::sigmoid_noaux_tc ? bf16_randn({c.E}, rng, 0.3) : Tensor<float>({0});
  for (int64_t e = 0; e < c.E; ++e) lw.experts.push_back(random_mlp(c.D, c.F, rng));
  const Tensor<float> none({0});
  lw.shared = c.shared > 0 ? random_mlp(c.D, c.F * c.shared, rng) : MlpWeights{none, none, none, none, none, none};
  return lw;
}

// The stream, a cuBLAS handle bound to it and its workspace (as GpuSession sets them).
struct Gpu {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  Gpu() {
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasSetStream(blas, stream), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cudaMalloc(&blas_workspace, 32 << 20), cudaSuccess);
    EXPECT_EQ(cublasSetWorkspace(blas, blas_workspace, 32 << 20), CUBLAS_STATUS_SUCCESS);
  }
  ~Gpu() {
    cublasDestroy(blas);
    cudaStreamDestroy(stream);
    cudaFree(blas_workspace);
  }
};

struct DeviceBytes {
  void* ptr = nullptr;
  explicit DeviceBytes(size_t bytes) { EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(bytes, 16)), cudaSuccess); }
  ~DeviceBytes() { cudaFree(ptr); }
};

std::vector<uint16_t> to_bf16(const Tensor<float>& t) {
  std::vector<uint16_t> b(static_cast<size_t>(t.numel()));
  lca::encode(DType::bf16, t.data(), t.numel(), b.data());
  return b;
}

constexpr uint16_t kPoison = 0xffff;  // a bf16 NaN

// x [cap, D] on the device: rows < rows from x0, the others poisoned.
void load_x(void* x, const Tensor<float>& x0, int64_t rows, int64_t cap, int64_t D) {
  std::vector<uint16_t> b(static_cast<size_t>(cap * D), kPoison);
  const std::vector<uint16_t> v = to_bf16(x0);
  std::copy_n(v.begin(), rows * D, b.begin());
  ASSERT_EQ(cudaMemcpy(x, b.data(), b.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
}

std::vector<uint16_t> read_x(const void* x, int64_t cap, int64_t D) {
  std::vector<uint16_t> b(static_cast<size_t>(cap * D));
  EXPECT_EQ(cudaMemcpy(b.data(), x, b.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  return b;
}

// got = bf16 x after forward; want = x0 + moe (CPU). Every row: ||got - want|| /
// ||moe row|| < 2e-2; rows past `rows` still poisoned.
void expect_rows_match(const std::vector<uint16_t>& got, const Tensor<float>& x0, const Tensor<float>& moe,
                       int64_t rows, int64_t cap, int64_t D) {
  double worst = 0.0;
  int64_t worst_row = -1;
  for (int64_t r = 0; r < rows; ++r) {
    double num = 0.0, den = 0.0;
    for (int64_t j = 0; j < D; ++j) {
      const float g = lca::bf16_to_float(got[static_cast<size_t>(r * D + j)]);
      const double want = double(x0.data()[r * D + j]) + moe.data()[r * D + j];
      num += std::isfinite(g) ? (g - want) * (g - want) : INFINITY;
      den += double(moe.data()[r * D + j]) * moe.data()[r * D + j];
    }
    const double err = std::sqrt(num / std::max(den, 1e-30));
    if (!(err <= worst)) worst = err, worst_row = r;
  }
  EXPECT_LT(worst, 2e-2) << "row " << worst_row << " of " << rows;
  int64_t touched = 0;
  for (int64_t i = rows * D; i < cap * D; ++i) touched += got[static_cast<size_t>(i)] != kPoison;
  EXPECT_EQ(touched, 0) << "values of x past row " << rows << " were written";
}

// upload + forward for each row count (one workspace, sized for the largest)
// against model::moe on h of that many rows.
void check_against_cpu(const MoeCase& c, const LayerWeights& lw, const std::vector<int64_t>& row_counts,
                       const std::function<Tensor<float>(int64_t rows)>& make_h, Rng& rng,
                       int64_t blas_min_rows = 0, bool one_row = false) {
  const MlaArch arch = arch_of(c);
  const GpuMoe moe = GpuMoe::upload(arch, lw, c.D);
  const int64_t cap = *std::max_element(row_counts.begin(), row_counts.end());
  MoeWorkspace ws(arch, c.D, cap, blas_min_rows);
  EXPECT_EQ(ws.blas_min_rows(), blas_min_rows);
  EXPECT_EQ(ws.max_rows(), cap);
  Gpu gpu;
  DeviceBytes h_dev(static_cast<size_t>(cap * c.D * 2)), x_dev(static_cast<size_t>(cap * c.D * 2));
  for (const int64_t rows : row_counts) {
    SCOPED_TRACE("rows " + std::to_string(rows));
    const Tensor<float> h = make_h(rows);
    const Tensor<float> x0 = bf16_randn({rows, c.D}, rng, 0.5);
    Tensor<float> want({rows, c.D});
    lca::model::moe(arch, lw, h.data(), rows, c.D, want.data());
    const std::vector<uint16_t> hb = to_bf16(h);
    ASSERT_EQ(cudaMemcpy(h_dev.ptr, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_NO_FATAL_FAILURE(load_x(x_dev.ptr, x0, rows, cap, c.D));
    moe.forward(h_dev.ptr, rows, x_dev.ptr, ws, gpu.stream, gpu.blas, one_row);
    ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
    expect_rows_match(read_x(x_dev.ptr, cap, c.D), x0, want, rows, cap, c.D);
  }
}

void check_random_case(const MoeCase& c, uint64_t seed, int64_t blas_min_rows = 0) {
  Rng rng(seed);
  const LayerWeights lw = random_moe_layer(c, rng);
  // A small count first (poisoned workspace), then more and fewer (stale workspace).
  check_against_cpu(c, lw, {7, 300, 1, 64}, [&](int64_t rows) { return bf16_randn({rows, c.D}, rng, 1.0); }, rng,
                    blas_min_rows);
}

TEST(GpuMoe, V2GreedyMatchesCpu) {
  REQUIRE_GPU();
  check_random_case(MoeCase{}, 101);
}

TEST(GpuMoe, V2GroupLimitedMatchesCpu) {
  REQUIRE_GPU();
  check_random_case(group_limited_case(), 102);
}

TEST(GpuMoe, V3NoauxTcMatchesCpu) {
  REQUIRE_GPU();
  MoeCase c;
  c.routing = MoeRouting::sigmoid_noaux_tc;
  c.n_group = 4, c.topk_group = 2, c.norm = true, c.scaling = 2.5;
  check_random_case(c, 103);
}

TEST(GpuMoe, V3UnevenSizesWithoutSharedMatchesCpu) {
  REQUIRE_GPU();
  check_random_case(uneven_v3_case(), 104);
}

// Few experts, many rows: experts with several 64-row tiles; three column
// tiles of gate/up (2F = 320) and two of down (D = 256).
TEST(GpuMoe, SeveralRowTilesPerExpertMatchesCpu) {
  REQUIRE_GPU();
  MoeCase c;
  c.D = 256, c.E = 4, c.K = 2, c.F = 160;
  check_random_case(c, 105);
}

// Exact ties: h in {-1, -1/2, 0, 1/2, 1}, router entries multiples of 1/16 up
// to 1/8 and a V3 bias of few values make many logits, scores and group
// scores exactly equal on both sides (every product and sum is exact in
// fp32); the smaller index must win everywhere, as on the CPU.
TEST(GpuMoe, ExactTiesGoToTheSmallerIndexAsOnCpu) {
  REQUIRE_GPU();
  for (const MoeRouting routing :
       {MoeRouting::softmax_greedy, MoeRouting::softmax_group_limited, MoeRouting::sigmoid_noaux_tc}) {
    SCOPED_TRACE("routing " + std::to_string(static_cast<int>(routing)));
    MoeCase c;
    c.routing = routing;
    if (routing != MoeRouting::softmax_greedy) c.n_group = 4, c.topk_group = 2;
    c.K = 3, c.norm = routing == MoeRouting::sigmoid_noaux_tc;
    Rng rng(106 + static_cast<uint64_t>(routing));
    LayerWeights lw = random_moe_layer(c, rng);
    for (float& v : lw.router.vec()) v = static_cast<float>(rng.uniform_int(-2, 2)) / 16.f;
    for (float& v : lw.router_bias.vec()) v = static_cast<float>(rng.uniform_int(0, 1)) / 4.f;
    const std::vector<int64_t> rows = {300};
    check_against_cpu(c, lw, rows,
                      [&](int64_t n) {
                        Tensor<float> h({n, c.D});
                        for (float& v : h.vec()) v = static_cast<float>(rng.uniform_int(-2, 2)) / 2.f;
                        return h;
                      },
                      rng);
  }
}

// The per-expert cuBLAS path from 8 rows (7 and 1 rows take the grouped
// kernels, 300 and 64 cuBLAS): two shared units, group-limited routing; then
// tails in every dimension without shared experts.
TEST(GpuMoe, PerExpertBlasPathMatchesCpu) {
  REQUIRE_GPU();
  check_random_case(group_limited_case(), 112, 8);
  check_random_case(uneven_v3_case(), 113, 8);
}

// A batch-1 decode step's path (one_row: decode_linear products of the chosen
// experts, no dispatch) for one row, between forwards of 7 rows (the grouped
// kernels) on the same workspace: shared units with group-limited routing,
// V3 routing without shared experts and with tails (D = 136, F = 72).
TEST(GpuMoe, OneRowDecodePathMatchesCpu) {
  REQUIRE_GPU();
  uint64_t seed = 114;
  for (const MoeCase& k : {MoeCase{}, group_limited_case(), uneven_v3_case()}) {
    Rng rng(seed++);
    const LayerWeights lw = random_moe_layer(k, rng);
    check_against_cpu(k, lw, {1, 7, 1, 1}, [&](int64_t rows) { return bf16_randn({rows, k.D}, rng, 1.0); }, rng, 0,
                      true);
  }
}

// The experts' row counts after a forward: every token in each shared unit,
// K routed choices per token, no routed expert with more rows than tokens.
TEST(GpuMoe, ExpertRowsCountTheChoices) {
  REQUIRE_GPU();
  MoeCase c;
  c.K = 3, c.shared = 2;
  Rng rng(114);
  const GpuMoe moe = GpuMoe::upload(arch_of(c), random_moe_layer(c, rng), c.D);
  Gpu gpu;
  for (const int64_t rows : {1, 5, 40}) {
    MoeWorkspace ws(arch_of(c), c.D, rows);
    DeviceBytes h_dev(static_cast<size_t>(rows * c.D * 2)), x_dev(static_cast<size_t>(rows * c.D * 2));
    const std::vector<uint16_t> hb = to_bf16(bf16_randn({rows, c.D}, rng, 1.0));
    ASSERT_EQ(cudaMemcpy(h_dev.ptr, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    moe.forward(h_dev.ptr, rows, x_dev.ptr, ws, gpu.stream, gpu.blas);
    const std::vector<int64_t> n = ws.expert_rows();
    ASSERT_EQ(static_cast<int64_t>(n.size()), c.E + c.shared);
    int64_t routed = 0, used = 0;
    for (int64_t e = 0; e < c.E; ++e) {
      EXPECT_GE(n[e], 0);
      EXPECT_LE(n[e], rows) << "expert " << e;
      routed += n[e];
      used += n[e] > 0;
    }
    EXPECT_EQ(routed, rows * c.K);
    EXPECT_GE(used, c.K);
    for (int64_t u = 0; u < c.shared; ++u) EXPECT_EQ(n[c.E + u], rows) << "shared unit " << u;
  }
}

// One forward on `gpu`'s stream captured into an instantiated graph.
void capture_forward(const GpuMoe& moe, const void* h, int64_t rows, void* x, MoeWorkspace& ws, Gpu& gpu,
                     cudaGraphExec_t& exec) {
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(gpu.stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  moe.forward(h, rows, x, ws, gpu.stream, gpu.blas);
  ASSERT_EQ(cudaStreamEndCapture(gpu.stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  cudaGraphDestroy(graph);
}

// A workspace with the cuBLAS path keeps forward capturable: under capture it
// takes the grouped kernels, the bits of a direct call on a plain workspace.
TEST(GpuMoe, BlasWorkspaceUnderCaptureTakesTheGroupedKernels) {
  REQUIRE_GPU();
  MoeCase c;
  c.shared = 2;
  Rng rng(115);
  const LayerWeights lw = random_moe_layer(c, rng);
  const MlaArch arch = arch_of(c);
  const GpuMoe moe = GpuMoe::upload(arch, lw, c.D);
  const int64_t rows = 48;
  MoeWorkspace plain(arch, c.D, rows), blas_ws(arch, c.D, rows, 1);
  Gpu gpu;
  DeviceBytes h_dev(static_cast<size_t>(rows * c.D * 2)), x_dev(static_cast<size_t>(rows * c.D * 2));
  const std::vector<uint16_t> hb = to_bf16(bf16_randn({rows, c.D}, rng, 1.0));
  ASSERT_EQ(cudaMemcpy(h_dev.ptr, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  const Tensor<float> x0 = bf16_randn({rows, c.D}, rng, 0.5);
  ASSERT_NO_FATAL_FAILURE(load_x(x_dev.ptr, x0, rows, rows, c.D));
  moe.forward(h_dev.ptr, rows, x_dev.ptr, plain, gpu.stream, gpu.blas);
  ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
  const std::vector<uint16_t> grouped = read_x(x_dev.ptr, rows, c.D);

  cudaGraphExec_t exec = nullptr;
  ASSERT_NO_FATAL_FAILURE(capture_forward(moe, h_dev.ptr, rows, x_dev.ptr, blas_ws, gpu, exec));
  ASSERT_NO_FATAL_FAILURE(load_x(x_dev.ptr, x0, rows, rows, c.D));
  ASSERT_EQ(cudaGraphLaunch(exec, gpu.stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
  EXPECT_EQ(read_x(x_dev.ptr, rows, c.D), grouped);
  cudaGraphExecDestroy(exec);
}

// forward captured in a CUDA graph, replayed twice, gives the direct call's bits.
TEST(GpuMoe, GraphReplayEqualsDirectCall) {
  REQUIRE_GPU();
  MoeCase c;
  c.routing = MoeRouting::sigmoid_noaux_tc;
  c.n_group = 4, c.topk_group = 2, c.norm = true, c.scaling = 2.5;
  Rng rng(107);
  const LayerWeights lw = random_moe_layer(c, rng);
  const MlaArch arch = arch_of(c);
  const GpuMoe moe = GpuMoe::upload(arch, lw, c.D);
  const int64_t rows = 64;
  MoeWorkspace ws(arch, c.D, rows);
  Gpu gpu;
  DeviceBytes h_dev(static_cast<size_t>(rows * c.D * 2)), x_dev(static_cast<size_t>(rows * c.D * 2));
  const std::vector<uint16_t> hb = to_bf16(bf16_randn({rows, c.D}, rng, 1.0));
  ASSERT_EQ(cudaMemcpy(h_dev.ptr, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  const Tensor<float> x0 = bf16_randn({rows, c.D}, rng, 0.5);

  ASSERT_NO_FATAL_FAILURE(load_x(x_dev.ptr, x0, rows, rows, c.D));
  moe.forward(h_dev.ptr, rows, x_dev.ptr, ws, gpu.stream, gpu.blas);
  ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
  const std::vector<uint16_t> direct = read_x(x_dev.ptr, rows, c.D);

  cudaGraphExec_t exec = nullptr;
  ASSERT_NO_FATAL_FAILURE(capture_forward(moe, h_dev.ptr, rows, x_dev.ptr, ws, gpu, exec));
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_NO_FATAL_FAILURE(load_x(x_dev.ptr, x0, rows, rows, c.D));
    ASSERT_EQ(cudaGraphLaunch(exec, gpu.stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
    EXPECT_EQ(read_x(x_dev.ptr, rows, c.D), direct) << "replay " << replay;
  }
  cudaGraphExecDestroy(exec);
}

TEST(GpuMoe, ZeroRowsLeaveXUntouched) {
  REQUIRE_GPU();
  MoeCase c;
  Rng rng(108);
  const GpuMoe moe = GpuMoe::upload(arch_of(c), random_moe_layer(c, rng), c.D);
  MoeWorkspace ws(arch_of(c), c.D, 4);
  Gpu gpu;
  DeviceBytes x_dev(static_cast<size_t>(4 * c.D * 2)), h_dev(static_cast<size_t>(4 * c.D * 2));
  ASSERT_NO_FATAL_FAILURE(load_x(x_dev.ptr, Tensor<float>({0, c.D}), 0, 4, c.D));
  moe.forward(h_dev.ptr, 0, x_dev.ptr, ws, gpu.stream, gpu.blas);
  ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
  const std::vector<uint16_t> x = read_x(x_dev.ptr, 4, c.D);
  EXPECT_EQ(std::count(x.begin(), x.end(), kPoison), 4 * c.D);
}

// Random weights at the arch's sizes: a finite output, and the byte counts the sizes imply.
TEST(GpuMoe, RandomWeightsGiveFiniteOutput) {
  REQUIRE_GPU();
  MoeCase c;
  c.routing = MoeRouting::sigmoid_noaux_tc;
  c.D = 128, c.E = 16, c.K = 4, c.F = 48, c.shared = 1, c.n_group = 4, c.topk_group = 2, c.norm = true;
  const MlaArch arch = arch_of(c);
  const GpuMoe moe = GpuMoe::random(arch, c.D, 7);
  EXPECT_EQ(moe.weight_bytes(), (c.E * c.D + c.E * 3 * c.F * c.D + 3 * c.F * c.shared * c.D) * 2 + c.E * 4);
  const int64_t rows = 33;
  MoeWorkspace ws(arch, c.D, rows);
  EXPECT_GT(ws.bytes(), rows * c.K * (c.F + c.D) * 2);
  Rng rng(109);
  Gpu gpu;
  DeviceBytes h_dev(static_cast<size_t>(rows * c.D * 2)), x_dev(static_cast<size_t>(rows * c.D * 2));
  const std::vector<uint16_t> hb = to_bf16(bf16_randn({rows, c.D}, rng, 1.0));
  ASSERT_EQ(cudaMemcpy(h_dev.ptr, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(x_dev.ptr, 0, static_cast<size_t>(rows * c.D * 2)), cudaSuccess);
  moe.forward(h_dev.ptr, rows, x_dev.ptr, ws, gpu.stream, gpu.blas);
  ASSERT_EQ(cudaStreamSynchronize(gpu.stream), cudaSuccess);
  const std::vector<uint16_t> x = read_x(x_dev.ptr, rows, c.D);
  int64_t finite = 0, nonzero = 0;
  for (const uint16_t v : x) {
    finite += std::isfinite(lca::bf16_to_float(v));
    nonzero += lca::bf16_to_float(v) != 0.f;
  }
  EXPECT_EQ(finite, rows * c.D);
  EXPECT_GT(nonzero, rows * c.D / 2);
}

TEST(GpuMoe, ForwardRefusesTooManyRowsAndAForeignWorkspace) {
  REQUIRE_GPU();
  MoeCase c;
  Rng rng(110);
  const GpuMoe moe = GpuMoe::upload(arch_of(c), random_moe_layer(c, rng), c.D);
  MoeWorkspace ws(arch_of(c), c.D, 8);
  Gpu gpu;
  DeviceBytes x_dev(static_cast<size_t>(9 * c.D * 2)), h_dev(static_cast<size_t>(9 * c.D * 2));
  expect_error([&] { moe.forward(h_dev.ptr, 9, x_dev.ptr, ws, gpu.stream, gpu.blas); },
               {"GpuMoe::forward", "rows 9", "max_rows 8"});
  MoeCase wider = c;
  wider.F = 48;
  MoeWorkspace other(arch_of(wider), c.D, 8);
  expect_error([&] { moe.forward(h_dev.ptr, 8, x_dev.ptr, other, gpu.stream, gpu.blas); },
               {"GpuMoe::forward", "workspace", "expert_size 48"});
  expect_error([&] { moe.forward(nullptr, 8, x_dev.ptr, ws, gpu.stream, gpu.blas); }, {"GpuMoe::forward", "null"});
}

// The checks before any device work: these run without a GPU.
TEST(GpuMoe, RefusesBadArchAndWeights) {
  MoeCase c;
  Rng rng(111);
  const LayerWeights lw = random_moe_layer(c, rng);
  const MlaArch arch = arch_of(c);
  MlaArch dense = arch;
  dense.experts = 0;
  expect_error([&] { MoeWorkspace(dense, c.D, 4); }, {"MoeWorkspace", "no routed experts"});
  expect_error([&] { GpuMoe::upload(dense, lw, c.D); }, {"GpuMoe::upload", "no routed experts"});
  expect_error([&] { GpuMoe::random(dense, c.D, 1); }, {"GpuMoe::random", "no routed experts"});
  expect_error([&] { MoeWorkspace(arch, c.D, 0); }, {"MoeWorkspace", "max_rows"});
  expect_error([&] { MoeWorkspace(arch, c.D, 4, -1); }, {"MoeWorkspace", "blas_min_rows", "-1"});
  expect_error([&] { MoeWorkspace(arch, 60, 4); }, {"MoeWorkspace", "hidden 60"});
  MlaArch odd_f = arch;
  odd_f.expert_size = 30;
  expect_error([&] { MoeWorkspace(odd_f, c.D, 4); }, {"MoeWorkspace", "expert_size 30"});

  expect_error([&] { GpuMoe::upload(arch, LayerWeights{}, c.D); }, {"GpuMoe::upload", "no experts"});
  LayerWeights bad = lw;
  bad.experts.pop_back();
  expect_error([&] { GpuMoe::upload(arch, bad, c.D); }, {"GpuMoe::upload", "7 experts", "arch 8"});
  bad = lw;
  bad.router = Tensor<float>({c.E, c.D + 1});
  expect_error([&] { GpuMoe::upload(arch, bad, c.D); }, {"GpuMoe::upload", "router", "[8, 65]", "[8, 64]"});
  bad = lw;
  bad.experts[3].up = Tensor<float>({c.F + 1, c.D});
  expect_error([&] { GpuMoe::upload(arch, bad, c.D); }, {"GpuMoe::upload", "expert 3 up"});
  bad = lw;
  bad.experts[5].b_gate = Tensor<float>({c.F});
  expect_error([&] { GpuMoe::upload(arch, bad, c.D); }, {"GpuMoe::upload", "expert 5", "biases"});
  bad = lw;
  bad.shared.down = Tensor<float>({c.D, c.F + 8});
  expect_error([&] { GpuMoe::upload(arch, bad, c.D); }, {"GpuMoe::upload", "shared expert down"});
  MlaArch v3 = arch;
  v3.routing = MoeRouting::sigmoid_noaux_tc;
  expect_error([&] { GpuMoe::upload(v3, lw, c.D); }, {"GpuMoe::upload", "router_bias"});
  expect_error([&] { GpuMoe::upload(arch, lw, 56); }, {"GpuMoe::upload", "router"});
}

}  // namespace
