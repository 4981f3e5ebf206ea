// Launchers of the MoE kernels (internal to src/runtime/gpu_moe.cpp; plain C++
// declarations). Every launcher checks its launch; none synchronises, so a
// forward built from them is capturable in a CUDA graph.
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda::detail {

// The routing of DeepSeek's MoE (model::moe's, values of lca::model::MoeRouting).
struct MoeRoutingArgs {
  int routing = 0;  // 0 softmax greedy, 1 softmax group-limited, 2 sigmoid noaux_tc
  int experts = 0, per_token = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling = 1.0;
  // The shared experts as always-chosen experts experts .. experts +
  // shared_units - 1, weight 1 (no routed scaling), after the routed choice.
  int shared_units = 0;
};

// Per token t < rows: the per_token experts chosen from logits [rows, E] (fp32;
// bias [E] fp32, the V3 correction, null otherwise) and their weights:
// expert[t * C + k], weight[t * C + k] for k < K = per_token, in the order of
// decreasing choice score (ties: the smaller expert index first), then the
// shared units S: expert[t * C + K + s] = E + s with weight 1; C = K + S.
void moe_route(const float* logits, const float* bias, int64_t rows, const MoeRoutingArgs& args, int32_t* expert,
               float* weight, cudaStream_t stream);

// Counting sort of the pairs p < pairs (pair p = token p / per_token) by
// expert[p]: offsets [E + 1] (the expert-ordered rows of each expert),
// tile_offsets [E + 1] (the row tiles of `tile_rows` rows before each expert),
// position[p] (the pair's expert-ordered row) and token_of[row].
void moe_dispatch(const int32_t* expert, int64_t pairs, int per_token, int experts, int tile_rows, int32_t* offsets,
                  int32_t* tile_offsets, int32_t* position, int32_t* token_of, cudaStream_t stream);

// Rows of the grouped GEMM's tiles (moe_grouped_gemm.cu's TM).
constexpr int kMoeTileRows = 64;

// The experts' products over expert-ordered rows (bf16 in and out, fp32
// accumulation); grid sized for `pairs` rows in at most `experts` groups.
// Gate and up with SwiGLU: act [pairs, F] = silu(a W_g^T) * (a W_u^T), a row r
//   being h[token_of[r]] [D]; w_gate_up [E, 2F, D] with gate and up rows
//   interleaved in blocks of 8 (rows 16 j .. 16 j + 7 gate rows 8 j .., the
//   next 8 the up rows 8 j ..).
void moe_gemm_gate_up(const void* h, const int32_t* token_of, const void* w_gate_up, const int32_t* offsets,
                      const int32_t* tile_offsets, int64_t pairs, int experts, int64_t d, int64_t f, void* act,
                      cudaStream_t stream);
// Down: y [pairs, D] = act W_d^T per expert; w_down [E, D, F].
void moe_gemm_down(const void* act, const void* w_down, const int32_t* offsets, const int32_t* tile_offsets,
                   int64_t pairs, int experts, int64_t d, int64_t f, void* y, cudaStream_t stream);

// One token (a batch-1 decode step): x [d] += sum_c weight[c] W_down[expert[c]]
// act[c] over its `pairs` choices (moe_route's, at least three launches
// before: read before the wait), in fp32, x rounded once; w_down [E + S, d, f].
// In place of the down products and moe_combine. Takes f a multiple of 8, at
// most 2048, act and w_down 16-byte aligned (moe_down_row_fits); throws
// otherwise.
bool moe_down_row_fits(int64_t f, const void* act, const void* w_down);
void moe_down_row(const void* act, const void* w_down, const int32_t* expert, const float* weight, int pairs,
                  int64_t d, int64_t f, void* x, cudaStream_t stream);

// x[t] += sum_k weight[t * K + k] y[position[t * K + k]] over k < K =
// per_token (here the routed and shared choices), in fp32 in the order of k,
// rounded once to bf16; x, y bf16 rows of d, 16-byte aligned.
void moe_combine(void* x, const void* y, const int32_t* position, const float* weight, int64_t rows, int per_token,
                 int64_t d, cudaStream_t stream);

// GpuMoe's per-expert cuBLAS path (moe_blas_rows.cu): out[r] = h[token_of[r]]
// for r < rows (bf16 rows of d, 16-byte aligned); act [rows, f] = silu(gate) *
// up from gate_up [rows, 2f] whose columns interleave as w_gate_up's rows.
void moe_gather_rows(const void* h, const int32_t* token_of, int64_t rows, int64_t d, void* out, cudaStream_t stream);
void moe_swiglu_interleaved(const void* gate_up, int64_t rows, int64_t f, void* act, cudaStream_t stream);

}  // namespace lca::cuda::detail
