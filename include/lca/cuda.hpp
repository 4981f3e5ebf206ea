// The CUDA kernels of lca, as launchers on device pointers (contiguous,
// row-major, bf16 or f16 storage, fp32 compute). Every launcher checks its
// arguments and throws lca::Error naming the problem; launch failures throw
// too. Present only when lca is built with CUDA (LCA_HAVE_CUDA).
#pragma once

#include <cstdint>
#include <string>

#include "lca/dtype.hpp"
#include "lca/params.hpp"

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda {

// Whether a usable CUDA device is present (false on machines without a GPU).
bool device_present();
std::string device_name();

// ---- Condensing (lca-spec.md sections 3 and 5) -----------------------------
//
// Summary queries are per position, head-summed, fp32 (as in the CPU cache):
// summary row p covers position sum_start + p. Groups [first, first + count)
// are condensed; their tokens' rows start at position kv_start.

struct CondenseMlaArgs {
  const void* latent = nullptr;    // [N, d_latent]  positions kv_start..
  const void* rope_key = nullptr;  // [N, d_rope]    (rotated)
  const float* summary = nullptr;  // [S, d_latent] or [S, d_latent + d_rope] (score = full)
  void* rep_latent = nullptr;      // [count, d_latent] out
  void* rep_rope_key = nullptr;    // [count, d_rope] out
  int64_t* anchors = nullptr;      // [count] out, optional
  int64_t kv_start = 0, kv_len = 0, sum_start = 0, sum_len = 0, first = 0, count = 0;
  int64_t heads = 0, d_latent = 0, d_rope = 0;
  double scale = 0;
  DType dtype = DType::bf16;
  LcaParams params;
};
void condense_groups_mla(const CondenseMlaArgs& a, cudaStream_t stream = nullptr);

struct CondenseGqaArgs {
  const void* k = nullptr;         // [N, kv_heads, head_dim] positions kv_start.. (rotated)
  const void* v = nullptr;         // [N, kv_heads, head_dim]
  const float* summary = nullptr;  // [S, kv_heads, head_dim]
  void* rep_k = nullptr;           // [count, kv_heads, head_dim] out
  void* rep_v = nullptr;           // [count, kv_heads, head_dim] out
  int64_t* anchors = nullptr;      // [count, kv_heads] out, optional
  int64_t kv_start = 0, kv_len = 0, sum_start = 0, sum_len = 0, first = 0, count = 0;
  int64_t q_heads = 0, kv_heads = 0, head_dim = 0;
  double scale = 0;
  RopeParams rope;
  DType dtype = DType::bf16;
  LcaParams params;
};
void condense_groups_gqa(const CondenseGqaArgs& a, cudaStream_t stream = nullptr);

// Head-summed summary queries of GQA: q [L, q_heads, d] -> out [L, kv_heads, d] fp32.
void gqa_summary_queries(const void* q, float* out, int64_t L, int64_t q_heads, int64_t kv_heads,
                         int64_t head_dim, DType dtype, cudaStream_t stream = nullptr);

// ---- Prefill attention (section 4) -----------------------------------------
//
// Queries at positions [q_start, q_start + q_len) attend over representatives
// 0..m(t+1)-1 and raw positions [g m(t+1), t] (with LcaParams::full(): causal
// attention over [0, t]). Query head h reads kv head h / (q_heads / kv_heads).
// MLA prefill runs here in decompressed form (kv_heads = q_heads,
// d_qk = d_nope + d_rope, d_v), GQA with d_qk = d_v = head_dim.
struct PrefillArgs {
  const void* q = nullptr;      // [q_len, q_heads, d_qk]
  const void* k = nullptr;      // raw keys [raw_len, kv_heads, d_qk], positions raw_start..
  const void* v = nullptr;      // raw values [raw_len, kv_heads, d_v]
  const void* rep_k = nullptr;  // [reps, kv_heads, d_qk]
  const void* rep_v = nullptr;  // [reps, kv_heads, d_v]
  void* out = nullptr;          // [q_len, q_heads, d_v]
  int64_t q_len = 0, q_start = 0, raw_len = 0, raw_start = 0, reps = 0;
  int64_t q_heads = 0, kv_heads = 0, d_qk = 0, d_v = 0;
  double scale = 0;
  DType dtype = DType::bf16;
  LcaParams params;
  // MTLA (mtla-spec.md section 3) when > 0, the down rate s (params is then
  // not read): rep_k/rep_v hold the complete rows, query t seeing rows
  // [0, floor(t/s)), and k/v hold one running row per position, query t
  // seeing only its own (raw_start <= q_start).
  int64_t mtla_down_rate = 0;
};
void lca_prefill(const PrefillArgs& a, cudaStream_t stream = nullptr);

// ---- MTLA rows (mtla-spec.md sections 2-4) ---------------------------------
//
// For the tokens at positions [start, start + len): their merge weights, their
// running rows (query t's own row [round(c~_{t/s}(t)) ; k^R_t], what MTLA
// prefill attends as "raw" rows) and the complete rows of the chunks that close
// among them, chunks [floor(start/s), floor((start + len)/s)) (what the cache
// keeps). Sums are fp32; the chunk open at `start` continues from open_in, and
// the chunk open at start + len leaves its sum in open_out.
struct MtlaRowsArgs {
  const void* rows = nullptr;       // [len, d_latent + d_rope] = [c ; k^R]
  const float* hyper = nullptr;     // fc_c W [d_c/4, d_c], fc_c b [d_c/4], fc_p W, fc_p b: fp32, packed
  const float* open_in = nullptr;   // [d_latent], read when s does not divide start
  float* open_out = nullptr;        // [d_latent], written when s does not divide start + len (not open_in)
  float* weights = nullptr;         // [len] out: the merge weights
  void* running = nullptr;          // [len, d_latent + d_rope] out
  void* complete = nullptr;         // [floor((start+len)/s) - floor(start/s), d_latent + d_rope] out
  int64_t start = 0, len = 0, d_latent = 0, d_rope = 0;
  DType dtype = DType::bf16;
  MtlaParams params;
};
void mtla_rows(const MtlaRowsArgs& a, cudaStream_t stream = nullptr);

// Head dims the prefill kernel is built for: (d_qk, d_v).
bool prefill_supports(int64_t d_qk, int64_t d_v);

// The launchers' argument checks (each launcher calls its own first): throw
// lca::Error naming the problem. Bindings call them before launching.
void check_prefill(const PrefillArgs& a);
void check_condense_mla(const CondenseMlaArgs& a);
void check_condense_gqa(const CondenseGqaArgs& a);
void check_mtla_rows(const MtlaRowsArgs& a);

}  // namespace lca::cuda
