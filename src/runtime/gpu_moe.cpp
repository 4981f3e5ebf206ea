// DeepSeek's MoE feed-forward on the GPU (gpu_moe.hpp): model::moe with bf16
// weights and activations, fp32 logits and fp64 routing scores, fp32
// accumulation.
//
// forward(h, rows, x), all on `stream`, no host synchronisation:
// 1. logits [rows, E] fp32 = h router^T (cuBLAS, bf16 in, fp32 out).
// 2. moe_route: per token the per_token experts and their weights (scoring,
//    group choice, top-k with ties to the smaller index, normalisation,
//    routed scaling), as model::moe.
// 3. moe_dispatch: counting sort of the rows * per_token pairs by expert ->
//    row and row-tile offsets per expert, each pair's expert-ordered row.
// 4. moe_gemm_gate_up: act [pairs, F] = silu(h W_g^T) * (h W_u^T) per expert,
//    the rows of h gathered through the sort inside the GEMM.
// 5. moe_gemm_down: y [pairs, D] = act W_d^T per expert.
// 6. moe_combine: x[t] += sum_k weight_k y[pair t k], rounded once.
// A batch-1 decode step (one_row) replaces 1, 3 and 4 by decode_linear's
// one-row products (the experts' weights picked through the choice itself)
// and a SwiGLU over the interleaved gate and up outputs, and 5 and 6 by one
// kernel, moe_down_row.
// The grouped GEMMs' grids are sized from `rows` (an upper bound on the row
// tiles); the device offsets tell each CTA its expert or that it has none.
// The per-expert cuBLAS path (workspace blas_min_rows, not while capturing)
// replaces 4 and 5: the host reads the experts' row offsets (one
// synchronisation), h's rows are gathered into expert order (in y, which
// down overwrites later), then per expert with rows one GEMM against the
// interleaved gate and up weights -> gate_up [pairs, 2F], one SwiGLU over all
// pairs, and per expert one down GEMM -> y.
//
// Shared experts: the shared MLP of Fs = S F (S = arch.shared, F the expert
// size) is S units of F, unit s its gate and up rows s F .. and down columns
// s F ..: SwiGLU is elementwise in F, so the units' down products sum to the
// shared output. The units are stored as experts E .. E + S - 1, which
// moe_route appends to every token's choice with weight 1 (DeepSeek adds the
// shared output unscaled), so the grouped products and the combine do them
// with the routed ones: no cuBLAS products or launches of their own. Pairs per
// token C = K + S.
//
// Device layout of the experts: w_gate_up [E + S, 2F, D] with the gate and
// up rows interleaved in blocks of 8 (the SwiGLU epilogue finds a column's
// gate and up value in the same thread), w_down [E + S, D, F]. The V3
// correction bias stays fp32 (E values; it decides the choice, so it is not
// rounded).
#include "runtime/gpu_moe.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/device_memory.hpp"
#include "cuda/model_ops.hpp"
#include "cuda/moe.hpp"
#include "lca/cuda.hpp"
#include "lca/error.hpp"

#include "runtime/cublas_ok.hpp"

namespace lca::cuda {
namespace {

using detail::DeviceArray;
using model::MlaArch;
using model::MoeRouting;

// The sizes of one MoE layer (what a workspace must match); shared_size =
// shared_units * expert_size.
struct MoeSizes {
  int64_t experts = 0, per_token = 0, hidden = 0, expert_size = 0, shared_size = 0, shared_units = 0;
  bool operator==(const MoeSizes&) const = default;
};

MoeSizes checked_sizes(const char* where, const MlaArch& a, int64_t hidden) {
  LCA_CHECK(a.experts >= 1, where, ": arch has no routed experts (experts ", a.experts, "): not a MoE architecture");
  LCA_CHECK(a.per_token >= 1 && a.per_token <= a.experts, where, ": arch per_token ", a.per_token,
            " must lie in [1, experts ", a.experts, "]");
  LCA_CHECK(a.expert_size >= 8 && a.expert_size % 8 == 0, where, ": arch expert_size ", a.expert_size,
            " must be a positive multiple of 8 (the grouped GEMM's 16-byte rows)");
  LCA_CHECK(a.shared >= 0, where, ": arch shared ", a.shared, " must be >= 0");
  LCA_CHECK(hidden >= 8 && hidden % 8 == 0, where, ": hidden ", hidden, " must be a positive multiple of 8");
  LCA_CHECK(a.n_group >= 1 && a.experts % a.n_group == 0 && a.topk_group >= 1 && a.topk_group <= a.n_group, where,
            ": arch n_group ", a.n_group, " must divide experts ", a.experts, " and topk_group ", a.topk_group,
            " lie in [1, n_group]");
  LCA_CHECK(a.routing != MoeRouting::sigmoid_noaux_tc || a.experts / a.n_group >= 2, where,
            ": DeepSeek-V3 routing needs groups of >= 2 experts, got ", a.experts / a.n_group);
  LCA_CHECK(a.routing == MoeRouting::softmax_greedy || a.per_token <= a.topk_group * (a.experts / a.n_group), where,
            ": arch per_token ", a.per_token, " exceeds the experts of the topk_group selected groups");
  return MoeSizes{a.experts, a.per_token, hidden, a.expert_size, a.shared * a.expert_size, a.shared};
}

DeviceArray upload_bf16(const char* what, const float* data, int64_t n) {
  DeviceArray a(what, n * 2);
  std::vector<unsigned char> bytes(static_cast<size_t>(n * 2));
  encode(DType::bf16, data, n, bytes.data());
  LCA_CUDA_OK("GpuMoe::upload", cudaMemcpy(a.as(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return a;
}

}  // namespace

// ---- MoeWorkspace ----------------------------------------------------------------------

struct MoeWorkspace::Impl {
  MoeSizes sizes;
  int64_t max_rows = 0;
  DeviceArray logits;                              // [max_rows, E] fp32
  DeviceArray expert, weight, position, token_of;  // [max_rows * C] int32, fp32, int32, int32
  DeviceArray offsets, tile_offsets;               // [E + S + 1] int32
  DeviceArray act, y;                              // [max_rows * C, F], [max_rows * C, D] bf16
  int64_t blas_min_rows = 0;
  DeviceArray gate_up;  // [max_rows * C, 2F] bf16, the cuBLAS path's (blas_min_rows > 0)
  DeviceArray row_gate_up;  // the one-row path's gate and up outputs, [C, 2F] bf16
  int64_t bytes() const {
    int64_t b = 0;
    for (const DeviceArray* p :
         {&logits, &expert, &weight, &position, &token_of, &offsets, &tile_offsets, &act, &y, &gate_up,
          &row_gate_up})
      b += *p ? p->bytes() : 0;
    return b;
  }
};

MoeWorkspace::MoeWorkspace(const MlaArch& arch, int64_t hidden, int64_t max_rows, int64_t blas_min_rows)
    : impl_(std::make_unique<Impl>()) {
  const char* where = "MoeWorkspace";
  Impl& w = *impl_;
  w.sizes = checked_sizes(where, arch, hidden);
  LCA_CHECK(max_rows >= 1, where, ": max_rows must be >= 1, got ", max_rows);
  LCA_CHECK(blas_min_rows >= 0, where, ": blas_min_rows must be >= 0 (0: never), got ", blas_min_rows);
  const int64_t P = max_rows * (w.sizes.per_token + w.sizes.shared_units);
  LCA_CHECK(P <= INT_MAX, where, ": max_rows ", max_rows, " times per_token ", w.sizes.per_token, " + shared ",
            w.sizes.shared_units, " exceeds the int32 row indices of the dispatch");
  LCA_CHECK(device_present(), where, ": no CUDA device is present");
  w.max_rows = max_rows;
  const int64_t E = w.sizes.experts, D = w.sizes.hidden, F = w.sizes.expert_size, S = w.sizes.shared_units;
  w.logits = DeviceArray("MoE router logits", max_rows * E * 4);
  w.expert = DeviceArray("MoE routing", P * 4);
  w.weight = DeviceArray("MoE routing", P * 4);
  w.position = DeviceArray("MoE dispatch", P * 4);
  w.token_of = DeviceArray("MoE dispatch", P * 4);
  w.offsets = DeviceArray("MoE dispatch", (E + S + 1) * 4);
  w.tile_offsets = DeviceArray("MoE dispatch", (E + S + 1) * 4);
  w.act = DeviceArray("MoE expert activations", P * F * 2);
  w.y = DeviceArray("MoE expert outputs", P * D * 2);
  w.blas_min_rows = blas_min_rows;
  if (blas_min_rows > 0) w.gate_up = DeviceArray("MoE expert gate and up outputs", P * 2 * F * 2);
  w.row_gate_up = DeviceArray("MoE expert gate and up outputs", (w.sizes.per_token + S) * 2 * F * 2);
  // Poison the float buffers (all-ones bytes are NaN in bf16 and fp32): a
  // forward that reads what it did not write shows as NaN in its output.
  for (const DeviceArray* p : {&w.logits, &w.weight, &w.act, &w.y, &w.gate_up, &w.row_gate_up})
    if (*p) LCA_CUDA_OK(where, cudaMemset(p->as(), 0xff, static_cast<size_t>(p->bytes())));
  LCA_CUDA_OK(where, cudaDeviceSynchronize());
}

MoeWorkspace::MoeWorkspace(MoeWorkspace&&) noexcept = default;
MoeWorkspace& MoeWorkspace::operator=(MoeWorkspace&&) noexcept = default;
MoeWorkspace::~MoeWorkspace() = default;
int64_t MoeWorkspace::max_rows() const { return impl_->max_rows; }
int64_t MoeWorkspace::blas_min_rows() const { return impl_->blas_min_rows; }
int64_t MoeWorkspace::bytes() const { return impl_->bytes(); }

std::vector<int64_t> MoeWorkspace::expert_rows() const {
  const int64_t n = impl_->sizes.experts + impl_->sizes.shared_units;
  std::vector<int32_t> offsets(static_cast<size_t>(n + 1));
  LCA_CUDA_OK("MoeWorkspace::expert_rows", cudaDeviceSynchronize());
  LCA_CUDA_OK("MoeWorkspace::expert_rows", cudaMemcpy(offsets.data(), impl_->offsets.as(), offsets.size() * 4,
                                                      cudaMemcpyDeviceToHost));
  std::vector<int64_t> rows(static_cast<size_t>(n));
  for (int64_t e = 0; e < n; ++e) rows[e] = offsets[e + 1] - offsets[e];
  return rows;
}

// ---- GpuMoe ------------------------------------------------------------------------------

struct GpuMoe::Impl {
  MoeSizes sizes;
  detail::MoeRoutingArgs routing;
  DeviceArray router;       // [E, D] bf16
  DeviceArray router_bias;  // [E] fp32 (V3), else empty
  DeviceArray gate_up;      // [E + S, 2F, D] bf16, gate and up interleaved in blocks of 8 rows
  DeviceArray down;         // [E + S, D, F] bf16
  int64_t bytes() const {
    int64_t b = 0;
    for (const DeviceArray* p : {&router, &router_bias, &gate_up, &down})
      b += *p ? p->bytes() : 0;
    return b;
  }
};

namespace {

detail::MoeRoutingArgs routing_args(const MlaArch& a) {
  detail::MoeRoutingArgs r;
  r.routing = a.routing == MoeRouting::softmax_greedy ? 0 : a.routing == MoeRouting::softmax_group_limited ? 1 : 2;
  r.experts = static_cast<int>(a.experts);
  r.per_token = static_cast<int>(a.per_token);
  r.n_group = static_cast<int>(a.n_group);
  r.topk_group = static_cast<int>(a.topk_group);
  r.norm_topk_prob = a.norm_topk_prob;
  r.routed_scaling = a.routed_scaling;
  r.shared_units = static_cast<int>(a.shared);
  return r;
}

void check_expert(const char* where, const std::string& what, const MlpWeights& m, int64_t D, int64_t F) {
  expect_shape(where, (what + " gate").c_str(), m.gate, {F, D});
  expect_shape(where, (what + " up").c_str(), m.up, {F, D});
  expect_shape(where, (what + " down").c_str(), m.down, {D, F});
  LCA_CHECK(m.b_gate.numel() == 0 && m.b_up.numel() == 0 && m.b_down.numel() == 0, where, ": ", what,
            " has biases, which DeepSeek's experts do not (not supported)");
}

}  // namespace

GpuMoe::GpuMoe(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuMoe::GpuMoe(GpuMoe&&) noexcept = default;
GpuMoe& GpuMoe::operator=(GpuMoe&&) noexcept = default;
GpuMoe::~GpuMoe() = default;
int64_t GpuMoe::weight_bytes() const { return impl_->bytes(); }

GpuMoe GpuMoe::upload(const MlaArch& arch, const LayerWeights& lw, int64_t hidden) {
  const char* where = "GpuMoe::upload";
  const MoeSizes s = checked_sizes(where, arch, hidden);
  const int64_t E = s.experts, D = s.hidden, F = s.expert_size, Fs = s.shared_size, S = s.shared_units;
  LCA_CHECK(lw.is_moe(), where, ": the layer holds no experts (a dense layer)");
  LCA_CHECK(static_cast<int64_t>(lw.experts.size()) == E, where, ": the layer holds ", lw.experts.size(),
            " experts, the arch ", E);
  expect_shape(where, "router", lw.router, {E, D});
  const bool v3 = arch.routing == MoeRouting::sigmoid_noaux_tc;
  if (v3) expect_shape(where, "router_bias", lw.router_bias, {E});
  for (int64_t e = 0; e < E; ++e) check_expert(where, "expert " + std::to_string(e), lw.experts[e], D, F);
  if (Fs > 0) check_expert(where, "shared expert", lw.shared, D, Fs);
  LCA_CHECK(device_present(), where, ": no CUDA device is present");

  auto impl = std::make_unique<Impl>();
  impl->sizes = s;
  impl->routing = routing_args(arch);
  impl->router = upload_bf16("MoE router", lw.router.data(), E * D);
  if (v3) {
    impl->router_bias = DeviceArray("MoE router bias", E * 4);
    LCA_CUDA_OK(where, cudaMemcpy(impl->router_bias.as(), lw.router_bias.data(), static_cast<size_t>(E * 4),
                                  cudaMemcpyHostToDevice));
  }
  impl->gate_up = DeviceArray("MoE expert gate and up", (E + S) * 2 * F * D * 2);
  impl->down = DeviceArray("MoE expert down", (E + S) * D * F * 2);
  std::vector<float> interleaved(static_cast<size_t>(2 * F * D)), down(static_cast<size_t>(D * F));
  std::vector<unsigned char> bytes(static_cast<size_t>(2 * F * D * 2));
  // Expert `slot` from gate and up rows [F, D] and down [D, F] of row stride
  // down_stride; one at a time: no host copy of all experts.
  auto put = [&](int64_t slot, const float* gate, const float* up, const float* down_src, int64_t down_stride) {
    for (int64_t r = 0; r < F; ++r) {
      const int64_t dst = (r / 8) * 16 + r % 8;
      std::copy_n(gate + r * D, D, interleaved.data() + dst * D);
      std::copy_n(up + r * D, D, interleaved.data() + (dst + 8) * D);
    }
    encode(DType::bf16, interleaved.data(), 2 * F * D, bytes.data());
    LCA_CUDA_OK(where, cudaMemcpy(impl->gate_up.as<char>() + slot * 2 * F * D * 2, bytes.data(),
                                  static_cast<size_t>(2 * F * D * 2), cudaMemcpyHostToDevice));
    for (int64_t i = 0; i < D; ++i) std::copy_n(down_src + i * down_stride, F, down.data() + i * F);
    encode(DType::bf16, down.data(), D * F, bytes.data());
    LCA_CUDA_OK(where, cudaMemcpy(impl->down.as<char>() + slot * D * F * 2, bytes.data(),
                                  static_cast<size_t>(D * F * 2), cudaMemcpyHostToDevice));
  };
  for (int64_t e = 0; e < E; ++e) {
    const MlpWeights& m = lw.experts[e];
    put(e, m.gate.data(), m.up.data(), m.down.data(), F);
  }
  for (int64_t u = 0; u < S; ++u)  // shared unit u: gate and up rows u F .., down columns u F ..
    put(E + u, lw.shared.gate.row(u * F), lw.shared.up.row(u * F), lw.shared.down.data() + u * F, Fs);
  return GpuMoe(std::move(impl));
}

GpuMoe GpuMoe::random(const MlaArch& arch, int64_t hidden, uint64_t seed) {
  const char* where = "GpuMoe::random";
  const MoeSizes s = checked_sizes(where, arch, hidden);
  LCA_CHECK(device_present(), where, ": no CUDA device is present");
  const int64_t E = s.experts, D = s.hidden, F = s.expert_size, Fs = s.shared_size, S = s.shared_units;
  auto impl = std::make_unique<Impl>();
  impl->sizes = s;
  impl->routing = routing_args(arch);
  uint64_t next = seed;
  auto fill = [&](void* p, int64_t n, double fan_in) {
    detail::fill_uniform(p, n, static_cast<float>(1.0 / std::sqrt(fan_in)), next++ * 0x2545F4914F6CDD1Dull, nullptr);
  };
  auto rnd = [&](const char* what, int64_t n, double fan_in) {
    DeviceArray a(what, n * 2);
    fill(a.as(), n, fan_in);
    return a;
  };
  impl->router = rnd("MoE router", E * D, static_cast<double>(D));
  if (arch.routing == MoeRouting::sigmoid_noaux_tc) {
    impl->router_bias = DeviceArray("MoE router bias", E * 4);
    LCA_CUDA_OK(where, cudaMemset(impl->router_bias.as(), 0, static_cast<size_t>(E * 4)));
  }
  impl->gate_up = rnd("MoE expert gate and up", (E + S) * 2 * F * D, static_cast<double>(D));
  impl->down = DeviceArray("MoE expert down", (E + S) * D * F * 2);
  fill(impl->down.as(), E * D * F, static_cast<double>(F));
  // The shared units at the shared MLP's fan-in Fs.
  if (S > 0) fill(impl->down.as<char>() + E * D * F * 2, S * D * F, static_cast<double>(Fs));
  LCA_CUDA_OK(where, cudaDeviceSynchronize());
  return GpuMoe(std::move(impl));
}

namespace {

// Y [M, N] = X [M, K] W [N, K]^T, row-major, bf16 in, bf16 or fp32 out.
void gemm(cublasHandle_t blas, int64_t M, int64_t N, int64_t K, const void* X, const void* W, void* Y, bool y_f32) {
  const float alpha = 1.f, beta = 0.f;
  LCA_CUBLAS_OK("GpuMoe::forward",
                cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M),
                             static_cast<int>(K), &alpha, W, CUDA_R_16BF, static_cast<int>(K), X, CUDA_R_16BF,
                             static_cast<int>(K), &beta, Y, y_f32 ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(N),
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void GpuMoe::forward(const void* h, int64_t rows, void* x, MoeWorkspace& ws, cudaStream_t stream,
                     cublasHandle_t blas, bool one_row) const {
  const char* where = "GpuMoe::forward";
  const Impl& m = *impl_;
  MoeWorkspace::Impl& w = *ws.impl_;
  LCA_CHECK(rows >= 0, where, ": rows must be >= 0, got ", rows);
  LCA_CHECK(rows <= w.max_rows, where, ": rows ", rows, " exceed the workspace's max_rows ", w.max_rows);
  LCA_CHECK(w.sizes == m.sizes, where, ": the workspace was made for experts ", w.sizes.experts, ", per_token ",
            w.sizes.per_token, ", hidden ", w.sizes.hidden, ", expert_size ", w.sizes.expert_size, ", shared size ",
            w.sizes.shared_size, "; the layer has ", m.sizes.experts, ", ", m.sizes.per_token, ", ", m.sizes.hidden,
            ", ", m.sizes.expert_size, ", ", m.sizes.shared_size);
  if (rows == 0) return;
  LCA_CHECK(h != nullptr && x != nullptr, where, ": h and x must not be null");
  LCA_CHECK(blas != nullptr, where, ": blas must not be null");
  const int64_t E = m.sizes.experts, D = m.sizes.hidden, F = m.sizes.expert_size;
  const int64_t C = m.sizes.per_token + m.sizes.shared_units, P = rows * C;  // routed and shared pairs
  const int experts = static_cast<int>(E + m.sizes.shared_units);

  // A batch-1 decode step: the router and each chosen expert's gate and up
  // by decode_linear (the experts picked through moe_route's choice), then
  // down and the combine in one kernel; no dispatch.
  using detail::LinearBatch, detail::WeightLayout;
  const LinearBatch gate_up_batch{C, 0, 2 * F * D, 2 * F, w.expert.as<int32_t>()};
  if (one_row && rows == 1 && detail::decode_linear_fits(WeightLayout::nk, 1, E, D, h, m.router.as()) &&
      detail::decode_linear_fits(WeightLayout::nk, 1, 2 * F, D, h, m.gate_up.as(), gate_up_batch) &&
      detail::moe_down_row_fits(F, w.act.as(), m.down.as())) {
    detail::decode_linear(WeightLayout::nk, E, D, h, m.router.as(), w.logits.as(), 1.f, 0.f, true, stream);
    detail::moe_route(w.logits.as<float>(), m.router_bias ? m.router_bias.as<float>() : nullptr, 1, m.routing,
                      w.expert.as<int32_t>(), w.weight.as<float>(), stream);
    detail::decode_linear(WeightLayout::nk, 2 * F, D, h, m.gate_up.as(), w.row_gate_up.as(), 1.f, 0.f, false, stream,
                          gate_up_batch);
    detail::moe_swiglu_interleaved(w.row_gate_up.as(), C, F, w.act.as(), stream);
    detail::moe_down_row(w.act.as(), m.down.as(), w.expert.as<int32_t>(), w.weight.as<float>(), static_cast<int>(C),
                         D, F, x, stream);
    return;
  }
  gemm(blas, rows, E, D, h, m.router.as(), w.logits.as(), true);
  detail::moe_route(w.logits.as<float>(), m.router_bias ? m.router_bias.as<float>() : nullptr, rows, m.routing,
                    w.expert.as<int32_t>(), w.weight.as<float>(), stream);
  detail::moe_dispatch(w.expert.as<int32_t>(), P, static_cast<int>(C), experts, detail::kMoeTileRows,
                       w.offsets.as<int32_t>(), w.tile_offsets.as<int32_t>(), w.position.as<int32_t>(),
                       w.token_of.as<int32_t>(), stream);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (w.blas_min_rows > 0 && rows >= w.blas_min_rows)
    LCA_CUDA_OK(where, cudaStreamIsCapturing(stream, &capture));
  if (w.blas_min_rows > 0 && rows >= w.blas_min_rows && capture == cudaStreamCaptureStatusNone) {
    std::vector<int32_t> offsets(static_cast<size_t>(experts + 1));
    LCA_CUDA_OK(where, cudaMemcpyAsync(offsets.data(), w.offsets.as(), offsets.size() * 4, cudaMemcpyDeviceToHost,
                                       stream));
    LCA_CUDA_OK(where, cudaStreamSynchronize(stream));
    LCA_CHECK(offsets[experts] == P, where, ": the dispatch sorted ", offsets[experts], " pairs, expected ", P);
    char* const hg = w.y.as<char>();  // h's rows in expert order, until down overwrites them
    detail::moe_gather_rows(h, w.token_of.as<int32_t>(), P, D, hg, stream);
    for (int e = 0; e < experts; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n > 0)
        gemm(blas, n, 2 * F, D, hg + offsets[e] * D * 2, m.gate_up.as<char>() + e * 2 * F * D * 2,
             w.gate_up.as<char>() + offsets[e] * 2 * F * 2, false);
    }
    detail::moe_swiglu_interleaved(w.gate_up.as(), P, F, w.act.as(), stream);
    for (int e = 0; e < experts; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n > 0)
        gemm(blas, n, D, F, w.act.as<char>() + offsets[e] * F * 2, m.down.as<char>() + e * D * F * 2,
             w.y.as<char>() + offsets[e] * D * 2, false);
    }
  } else {
    detail::moe_gemm_gate_up(h, w.token_of.as<int32_t>(), m.gate_up.as(), w.offsets.as<int32_t>(),
                             w.tile_offsets.as<int32_t>(), P, experts, D, F, w.act.as(), stream);
    detail::moe_gemm_down(w.act.as(), m.down.as(), w.offsets.as<int32_t>(), w.tile_offsets.as<int32_t>(), P, experts,
                          D, F, w.y.as(), stream);
  }
  detail::moe_combine(x, w.y.as(), w.position.as<int32_t>(), w.weight.as<float>(), rows, static_cast<int>(C), D,
                      stream);
}

}  // namespace lca::cuda
