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
// Softmax greedy routing (V2) over at most 64 experts skips the rounds: each
// lane ranks its two experts' scores against all 64 at once (a batch-1 step
// waits on this kernel; the rounds of argmax made it ~5 us).
// Shared memory: (2 E + n_group) doubles per warp.
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "moe.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kMaxWarps = 4;

__device__ __forceinline__ double warp_sum_f64(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The index of the largest of v[0, n) in every lane: the smallest index among
// equal values; NaN never wins (-inf does, before nothing).
__device__ int warp_argmax(const double* v, int n) {
  const int lane = threadIdx.x % 32;
  double best = -INFINITY;
  int best_i = INT_MAX;
  for (int i = lane; i < n; i += 32) {
    const double x = v[i];
    if (x > best || (x == best && i < best_i)) best = x, best_i = i;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
  }
  return best_i == INT_MAX ? 0 : best_i;  // all NaN: only when more are chosen than exist (refused on the host)
}

__global__ void moe_route_kernel(const float* logits, const float* bias, int64_t rows, MoeRoutingArgs a,
                                 int32_t* expert, float* weight) {
  extern __shared__ double route_smem[];
  pdl_wait();  // launched with programmatic dependent launch: only the launch overlaps the kernel before
  pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + warp;
  if (t >= rows) return;  // whole warps only: the kernel synchronises warps, never the block
  const int E = a.experts, G = a.n_group, group = E / G, K = a.per_token;
  double* score = route_smem + warp * (2 * E + G);
  double* choice = score + E;
  double* group_score = choice + E;
  const float* z = logits + t * E;
  int32_t* out_e = expert + t * (K + a.shared_units);
  float* out_w = weight + t * (K + a.shared_units);

  if (a.routing == 0 && E <= 64) {  // softmax greedy: every choice's rank at once, no rounds of argmax
    // The same fp64 scores as below; rank = higher scores + equal ones of
    // smaller index (NaN below every score: it never wins).
    const float z0 = lane < E ? z[lane] : -INFINITY, z1 = lane + 32 < E ? z[lane + 32] : -INFINITY;
    const float top = warp_max(fmaxf(z0, z1));
    const double e0 = lane < E ? exp(static_cast<double>(z0) - static_cast<double>(top)) : 0.0;
    const double e1 = lane + 32 < E ? exp(static_cast<double>(z1) - static_cast<double>(top)) : 0.0;
    const double sum = warp_sum_f64(e0 + e1);  // the loop below adds each lane's two in this order too
    const double s0 = e0 / sum, s1 = e1 / sum;
    const double k0 = lane < E && !isnan(s0) ? s0 : -1.0, k1 = lane + 32 < E && !isnan(s1) ? s1 : -1.0;
    int r0 = 0, r1 = 0;
    for (int j = 0; j < E; ++j) {
      const double kj = __shfl_sync(0xffffffffu, j < 32 ? k0 : k1, j % 32);
      r0 += kj > k0 || (kj == k0 && j < lane);
      r1 += kj > k1 || (kj == k1 && j < lane + 32);
    }
    if (lane < E && r0 < K) out_e[r0] = lane, out_w[r0] = static_cast<float>(s0 / 1.0 * a.routed_scaling);
    if (lane + 32 < E && r1 < K) out_e[r1] = lane + 32, out_w[r1] = static_cast<float>(s1 / 1.0 * a.routed_scaling);
    for (int i = lane; i < a.shared_units; i += 32) out_e[K + i] = E + i, out_w[K + i] = 1.f;
    return;
  }

  if (a.routing == 2) {
    for (int e = lane; e < E; e += 32) {
      const double s = 1.0 / (1.0 + exp(-static_cast<double>(z[e])));
      score[e] = s;
      choice[e] = s + static_cast<double>(bias[e]);
    }
  } else {
    float top = -INFINITY;
    for (int e = lane; e < E; e += 32) top = fmaxf(top, z[e]);
    top = warp_max(top);
    double sum = 0.0;
    for (int e = lane; e < E; e += 32) sum += score[e] = exp(static_cast<double>(z[e]) - static_cast<double>(top));
    sum = warp_sum_f64(sum);
    for (int e = lane; e < E; e += 32) choice[e] = score[e] /= sum;
  }
  __syncwarp();

  if (a.routing != 0) {
    for (int g = lane; g < G; g += 32) {
      double best = -INFINITY, second = -INFINITY;
      for (int i = g * group; i < (g + 1) * group; ++i) {
        const double c = choice[i];
        if (c > best) second = best, best = c;
        else if (c > second) second = c;
      }
      group_score[g] = a.routing == 2 ? best + second : best;
    }
    __syncwarp();
    for (int i = 0; i < a.topk_group; ++i) {  // kept groups end up NaN
      const int g = warp_argmax(group_score, G);
      __syncwarp();
      if (lane == 0) group_score[g] = NAN;
      __syncwarp();
    }
    const double masked = a.routing == 2 ? -INFINITY : 0.0;
    for (int e = lane; e < E; e += 32)
      if (!isnan(group_score[e / group])) choice[e] = masked;
    __syncwarp();
  }

  for (int k = 0; k < K; ++k) {
    const int e = warp_argmax(choice, E);
    __syncwarp();
    if (lane == 0) {
      out_e[k] = e;
      choice[e] = NAN;
    }
    __syncwarp();
  }
  if (lane == 0) {
    double norm = 1.0;
    if (a.routing == 2 && a.norm_topk_prob) {
      norm = 1e-20;
      for (int k = 0; k < K; ++k) norm += score[out_e[k]];
    }
    for (int k = 0; k < K; ++k) out_w[k] = static_cast<float>(score[out_e[k]] / norm * a.routed_scaling);
    for (int s = 0; s < a.shared_units; ++s) {
      out_e[K + s] = E + s;
      out_w[K + s] = 1.f;
    }
  }
}

}  // namespace

void moe_route(const float* logits, const float* bias, int64_t rows, const MoeRoutingArgs& args, int32_t* expert,
               float* weight, cudaStream_t stream) {
  if (rows == 0) return;
  const size_t per_warp = (2 * size_t(args.experts) + size_t(args.n_group)) * sizeof(double);
  LCA_CHECK(per_warp <= 48 * 1024, "moe_route: experts ", args.experts, " need ", per_warp,
            " bytes of shared memory per token, more than 48 KB");
  const int warps = static_cast<int>(std::min<size_t>(kMaxWarps, 48 * 1024 / per_warp));
  const int64_t blocks = (rows + warps - 1) / warps;
  launch_with_pdl(moe_route_kernel, dim3(static_cast<unsigned>(blocks)), warps * 32, warps * per_warp, stream, logits,
                  bias, rows, args, expert, weight);
  LCA_CUDA_CHECK_LAUNCH("moe_route");
}

}  // namespace lca::cuda::detail
