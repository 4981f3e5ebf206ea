// moe_route: DeepSeek's router choice per token, as model::moe computes it.
//
// Plan: one warp per token, 4 warps per block. The warp turns the token's fp32
// logits into scores in fp64 (the CPU's precision, so that both sides order
// the experts alike) held in shared memory: softmax (V2) or sigmoid plus the
// correction bias (V3). Group-limited routing scores each group (its best, or
// its best two for V3; one lane per group), keeps the topk_group best groups
// and masks the other experts' choice scores (0 for V2, -inf for V3, as the
// CPU). Then per_token rounds of a warp argmax over the choice scores; ties
// go to the smaller index (model::moe orders ties the same way), and a chosen
// expert is marked NaN so that it never wins again. Lane 0 writes the weights:
// score / (sum of the chosen scores + 1e-20, V3 with norm_topk_prob) *
// routed_scaling; then the shared units, experts E .. E + S - 1 of weight 1.
// Shared memory: (2 E + n_group) doubles per warp. The warp's code is
// route_token (moe_routing.cuh), shared with moe_route_small.
#include <algorithm>

#include "moe_routing.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kMaxWarps = 4;

__global__ void moe_route_kernel(const float* logits, const float* bias, int64_t rows, MoeRoutingArgs a,
                                 int32_t* expert, float* weight) {
  extern __shared__ double route_smem[];
  const int warp = threadIdx.x / 32;
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + warp;
  if (t >= rows) return;  // whole warps only: the kernel synchronises warps, never the block
  const int64_t C = a.per_token + a.shared_units;
  route_token(logits + t * a.experts, bias, a, route_smem + warp * route_smem_doubles(a.experts, a.n_group),
              expert + t * C, weight + t * C);
}

}  // namespace

void moe_route(const float* logits, const float* bias, int64_t rows, const MoeRoutingArgs& args, int32_t* expert,
               float* weight, cudaStream_t stream) {
  if (rows == 0) return;
  const size_t per_warp = size_t(route_smem_doubles(args.experts, args.n_group)) * sizeof(double);
  LCA_CHECK(per_warp <= 48 * 1024, "moe_route: experts ", args.experts, " need ", per_warp,
            " bytes of shared memory per token, more than 48 KB");
  const int warps = static_cast<int>(std::min<size_t>(kMaxWarps, 48 * 1024 / per_warp));
  const int64_t blocks = (rows + warps - 1) / warps;
  moe_route_kernel<<<static_cast<unsigned>(blocks), warps * 32, warps * per_warp, stream>>>(logits, bias, rows, args,
                                                                                           expert, weight);
  LCA_CUDA_CHECK_LAUNCH("moe_route");
}

}  // namespace lca::cuda::detail
