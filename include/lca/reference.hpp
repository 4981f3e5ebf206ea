// The CPU reference: lca-spec.md and mtla-spec.md as readable code, one
// function per section.
// T is float (the library's compute precision) or double (for tests).
// Everything else in lca (cache, CUDA kernels, bindings) is tested against it.
//
// Conventions
// - Tensors are row-major. Positions are absolute and 0-based; a tensor of
//   rows "at positions [s, s + N)" is passed with its start s.
// - MLA works in absorbed form: a cache row is [c ; k^R] (MlaDims::row_width()),
//   an absorbed query is [q~ ; q^R] of the same width, logit = scale * q . row,
//   output latent = sum_i p_i row_i[0 : d_latent].
// - GQA: a cache row is, per kv head, [k (rotated) ; v]; queries are rotated.
// - Full attention is LCA with LcaParams::full(): one code path. MTLA goes
//   through the same attention with its own visibility (prefix plus diagonal).
#pragma once

#include <cstdint>

#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace lca::ref {

// ---- RoPE (Llama/Qwen2 half-split) ----------------------------------------

// x <- Rot(pos) x for one vector of even length d; pos < 0 rotates backwards
// (Rot(p)^{-1} = Rot(-p)).
template <class T>
void rope_rotate(T* x, int64_t d, int64_t pos, const RopeParams& rope);

// Rotates every head vector of x [L, heads, d]: row l by position start + l.
template <class T>
Tensor<T> rope_rotate_rows(const Tensor<T>& x, int64_t start, const RopeParams& rope);

// ---- MLA (sections 1, 3, 4) -------------------------------------------------

// Absorbed queries [L, H, d_c + d_r]: q~ = W_UK[h]^T q^C and q^R appended.
// q_nope [L, H, d_n], q_rope [L, H, d_r] (rotated), w_uk [H, d_n, d_c].
template <class T>
Tensor<T> mla_absorb_queries(const Tensor<T>& q_nope, const Tensor<T>& q_rope,
                             const Tensor<T>& w_uk, const MlaDims& dims);

// Full causal MLA in the decompressed form: per head K = [W_UK c ; k^R],
// V = W_UV c. kv_rows [N, d_c + d_r] at positions [0, N); queries at
// positions [q_start, q_start + L), each seeing [0, t]. Returns [L, H, d_v].
template <class T>
Tensor<T> mla_attention_decompressed(const Tensor<T>& q_nope, const Tensor<T>& q_rope,
                                     const Tensor<T>& kv_rows, const Tensor<T>& w_uk,
                                     const Tensor<T>& w_uv, int64_t q_start, double scale,
                                     const MlaDims& dims);

// Full causal MLA in absorbed form; returns output latents [L, H, d_c].
template <class T>
Tensor<T> mla_attention_absorbed(const Tensor<T>& q_abs, const Tensor<T>& kv_rows,
                                 int64_t q_start, double scale, const MlaDims& dims);

// Head outputs W_UV[h] o_{t,h}: o_latent [L, H, d_c], w_uv [H, d_v, d_c] -> [L, H, d_v].
template <class T>
Tensor<T> mla_up_project(const Tensor<T>& o_latent, const Tensor<T>& w_uv, const MlaDims& dims);

// Head-summed summary queries per position (section 3): [L, d_c] for
// score = latent, [L, d_c + d_r] for score = full.
template <class T>
Tensor<T> mla_summary_queries(const Tensor<T>& q_abs, const MlaDims& dims, ScoreMode score);

// Representatives of groups [first, first + count), with what produced them.
template <class T>
struct Condensed {
  Tensor<T> rows;              // [count, row_width]: the representative cache rows
  Tensor<int64_t> anchors;     // [count, K]: I_j, absolute positions (K = 1 for MLA, kv_heads for GQA)
  Tensor<T> weights;           // [count, K, g]: alpha over the group's positions
};

// Section 3. kv_rows at positions [kv_start, ...) must cover every group's
// tokens; summary (mla_summary_queries rows) at positions [sum_start, ...)
// must cover every S_j = [tau_j - g + 1, tau_j].
template <class T>
Condensed<T> condense_groups_mla(const Tensor<T>& kv_rows, int64_t kv_start,
                                 const Tensor<T>& summary, int64_t sum_start, int64_t first,
                                 int64_t count, double scale, const MlaDims& dims,
                                 const LcaParams& params);

// Section 4, absorbed MLA: queries q_abs [L, H, d_c + d_r] at positions
// [q_start, q_start + L) over representatives reps [M, row] (groups 0..M-1)
// and raw rows at positions [raw_start, raw_start + R). Each query t needs
// m(t+1) <= M and raw rows covering [g m(t+1), t]. Returns latents [L, H, d_c].
template <class T>
Tensor<T> lca_attention_mla(const Tensor<T>& q_abs, int64_t q_start, const Tensor<T>& reps,
                            const Tensor<T>& raw, int64_t raw_start, double scale,
                            const MlaDims& dims, const LcaParams& params);

// One whole prefill from position 0: summary queries, every group that closes
// before N, then attention. kv_rows [N, row], q_abs [N, H, row]. Returns [N, H, d_c].
template <class T>
Tensor<T> lca_prefill_mla(const Tensor<T>& q_abs, const Tensor<T>& kv_rows, double scale,
                          const MlaDims& dims, const LcaParams& params);

// ---- MTLA (mtla-spec.md) ------------------------------------------------------

// Section 1: the sinusoidal code of chunk k, PE(k) [d] (d even):
// PE[2j] = sin(k 10000^(-2j/d)), PE[2j+1] = cos(k 10000^(-2j/d)).
template <class T>
Tensor<T> mtla_chunk_code(int64_t k, int64_t d);

// Section 2: w_i = sigmoid(fc_c(PE(floor(i/s))) . fc_p(c_i)) for the tokens at
// positions [start, start + L), kv_rows [L, d_c + d_r] = [c ; k^R]. Returns [L].
template <class T>
Tensor<T> mtla_merge_weights(const Tensor<T>& kv_rows, int64_t start, const MlaDims& dims,
                             const MtlaParams& params, const MtlaHyperNet<T>& hyper);

// Section 2, the running rows of positions [start, start + L): row t =
// [c~_{floor(t/s)}(t) ; k^R_t], where c~ sums w_i c_i over the chunk up to t
// in position order. From start = 0 these are the training form's rows. When
// start is inside a chunk, `open` [d_c] is that chunk's sum up to start - 1
// (what a cache keeps); otherwise it is not read and may be empty.
template <class T>
Tensor<T> mtla_running_rows(const Tensor<T>& kv_rows, const Tensor<T>& weights, int64_t start,
                            const Tensor<T>& open, const MlaDims& dims, const MtlaParams& params);

// Section 4: the ceil(N/s) rows a cache holds after N tokens, taken from the
// running rows of positions [0, N): row k is the running row at
// min((k+1)s, N) - 1 (complete rows, then the open one when s does not divide N).
template <class T>
Tensor<T> mtla_cache_rows(const Tensor<T>& running, const MtlaParams& params);

// Section 3, absorbed MLA: queries q_abs [L, H, d_c + d_r] at positions
// [q_start, q_start + L) over complete rows [M, row] (chunks 0..M-1) and
// running rows at positions [run_start, run_start + R): query t sees complete
// rows 0..floor(t/s)-1 and its own running row. Returns latents [L, H, d_c].
template <class T>
Tensor<T> mtla_attention_mla(const Tensor<T>& q_abs, int64_t q_start, const Tensor<T>& complete,
                             const Tensor<T>& running, int64_t run_start, double scale, const MlaDims& dims,
                             const MtlaParams& params);

// One whole prefill from position 0 (the training form): merge weights,
// running rows, attention. kv_rows [N, row], q_abs [N, H, row]. Returns [N, H, d_c].
template <class T>
Tensor<T> mtla_prefill_mla(const Tensor<T>& q_abs, const Tensor<T>& kv_rows, double scale, const MlaDims& dims,
                           const MtlaParams& params, const MtlaHyperNet<T>& hyper);

// ---- GQA (section 5) --------------------------------------------------------

// Packs rotated keys and values [N, kv_heads, d] into cache rows [N, row_width].
template <class T>
Tensor<T> gqa_pack_rows(const Tensor<T>& k, const Tensor<T>& v, const GqaDims& dims);

// Full causal GQA: q [L, Hq, d] rotated, at positions [q_start, q_start + L);
// kv_rows [N, row] at positions [0, N). Returns [L, Hq, d].
template <class T>
Tensor<T> gqa_attention(const Tensor<T>& q, const Tensor<T>& kv_rows, int64_t q_start,
                        double scale, const GqaDims& dims);

// Summary queries summed over each kv head's query heads: [L, kv_heads, d].
template <class T>
Tensor<T> gqa_summary_queries(const Tensor<T>& q, const GqaDims& dims);

// Section 5: as condense_groups_mla, per kv head; key_mode pooled needs the rope.
template <class T>
Condensed<T> condense_groups_gqa(const Tensor<T>& kv_rows, int64_t kv_start,
                                 const Tensor<T>& summary, int64_t sum_start, int64_t first,
                                 int64_t count, double scale, const GqaDims& dims,
                                 const RopeParams& rope, const LcaParams& params);

// Section 4 with K^/V^: as lca_attention_mla. Returns [L, Hq, d].
template <class T>
Tensor<T> lca_attention_gqa(const Tensor<T>& q, int64_t q_start, const Tensor<T>& reps,
                            const Tensor<T>& raw, int64_t raw_start, double scale,
                            const GqaDims& dims, const LcaParams& params);

template <class T>
Tensor<T> lca_prefill_gqa(const Tensor<T>& q, const Tensor<T>& kv_rows, double scale,
                          const GqaDims& dims, const RopeParams& rope, const LcaParams& params);

}  // namespace lca::ref
