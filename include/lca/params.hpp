// Plain parameter structs of the public API: the LCA policy (lca-spec.md
// sections 2-5), the MTLA policy (mtla-spec.md) and the shapes of the two
// attention layouts they condense.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <variant>

#include "lca/tensor.hpp"

namespace lca {

// Section 3 (MLA only; GQA scores keys with the full query): the importance
// score uses the latent part only (default) or also
// the rope part of the summary queries.
enum class ScoreMode { latent, full };
// Section 5 (GQA): the representative key is the pooled un-rotated key rotated
// to the anchor position (default), or the anchor token's own key.
enum class KeyMode { pooled, anchor };
// Section 4: optional log(g) added to every representative's logit.
enum class MassBias { none, log_g };

// The condensation policy. Full attention is the same policy with no groups:
// LcaParams::full() has an infinite window, so m(n) = 0 for every n.
struct LcaParams {
  int64_t window = 1024;  // w >= 0
  int64_t group = 16;     // g >= 1
  ScoreMode score = ScoreMode::latent;
  KeyMode key_mode = KeyMode::pooled;
  MassBias mass_bias = MassBias::none;

  static constexpr int64_t kNoWindow = std::numeric_limits<int64_t>::max() / 4;
  static LcaParams full() {
    LcaParams p;
    p.window = kNoWindow;
    p.group = 1;
    return p;
  }
  bool is_full() const { return window >= kNoWindow; }
  // Throws lca::Error naming the bad field (g = 0, w < 0, ...).
  void validate() const;
  std::string describe() const;  // e.g. "lca(w=1024, g=16, score=latent, key=pooled)"
};

// MTLA (mtla-spec.md): tokens merged in chunks of s = down_rate with learned
// sigmoid weights; a query sees the complete rows of earlier chunks and the
// running merge of its own chunk. s = 1 is full MLA over the scaled latents.
struct MtlaParams {
  int64_t down_rate = 2;  // s >= 1 (the mtla package's default)
  // Throws lca::Error naming the bad field (s = 0, ...).
  void validate() const;
  std::string describe() const;  // e.g. "mtla(s=2)"
};

// The merge rule of a cache: LCA (LcaParams::full() = full attention) or MTLA.
using Policy = std::variant<LcaParams, MtlaParams>;

// MLA in absorbed form (section 1). A cache row is [c ; k^R] (d_latent + d_rope
// values); an absorbed query is [q~ ; q^R] of the same width, so every logit is
// scale * dot(query, row) and every output is a weighted sum of rows[0:d_latent].
struct MlaDims {
  int64_t heads = 0;      // H
  int64_t d_latent = 0;   // d_c (kv_lora_rank)
  int64_t d_rope = 0;     // d_r (qk_rope_head_dim)
  int64_t d_nope = 0;     // d_n (qk_nope_head_dim), only for the decompressed form
  int64_t d_v = 0;        // v_head_dim, only for the decompressed form
  int64_t row_width() const { return d_latent + d_rope; }
  // The model's softmax scale without config corrections: 1/sqrt(d_n + d_r).
  double default_scale() const;
  void validate() const;
};

// The rotary map of Llama/Qwen2: half-split rotation (pairs (j, j + d/2)),
// inverse frequencies theta^(-2j/d).
struct RopeParams {
  double theta = 10000.0;
  void validate() const;
};

// GQA (section 5). A cache row holds, per kv head, [k (rotated) ; v]:
// kv_heads * 2 * head_dim values. Query head h uses kv head h / (q_heads / kv_heads).
struct GqaDims {
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t group_size() const { return q_heads / kv_heads; }  // query heads per kv head
  int64_t row_width() const { return kv_heads * 2 * head_dim; }
  double default_scale() const;  // 1/sqrt(head_dim)
  void validate() const;
};

// ---- Group arithmetic (section 2) ----------------------------------------

// m(n) = max(0, floor((n - w) / g)): groups condensed once n tokens are visible.
inline int64_t condensed_groups(int64_t n, const LcaParams& p) {
  if (p.is_full() || n <= p.window) return 0;
  return (n - p.window) / p.group;
}
// tau_j = (j + 1) g + w - 1: the first query position for which group j is not raw.
inline int64_t condensation_time(int64_t j, const LcaParams& p) {
  return (j + 1) * p.group + p.window - 1;
}
// First raw position once n tokens are visible: g * m(n).
inline int64_t first_raw_position(int64_t n, const LcaParams& p) {
  return p.is_full() ? 0 : p.group * condensed_groups(n, p);
}
// Section 6: cache entries after n tokens, m(n) + (n - g m(n)).
inline int64_t cache_entries(int64_t n, const LcaParams& p) {
  return condensed_groups(n, p) + (n - first_raw_position(n, p));
}

// ---- MTLA chunk arithmetic (mtla-spec.md sections 2-4) -------------------------

// Cache rows after n tokens: ceil(n / s), the last one running when s does not divide n.
inline int64_t mtla_rows(int64_t n, const MtlaParams& p) { return (n + p.down_rate - 1) / p.down_rate; }
// Complete rows after n tokens, floor(n / s); query t sees mtla_complete_rows(t) of them.
inline int64_t mtla_complete_rows(int64_t n, const MtlaParams& p) { return n / p.down_rate; }

// What query t sees, for either policy: condensed rows [0, condensed) and the
// rows of positions [raw_lo, t]. LCA: m(t+1) representatives and raw tokens
// [g m(t+1), t]. MTLA: floor(t/s) complete rows and its own running row
// ("prefix plus diagonal"; raw_lo = t).
struct Visible {
  int64_t condensed;
  int64_t raw_lo;
};
inline Visible visible_rows(int64_t t, const LcaParams& p) {
  return {condensed_groups(t + 1, p), first_raw_position(t + 1, p)};
}
inline Visible visible_rows(int64_t t, const MtlaParams& p) { return {mtla_complete_rows(t, p), t}; }
inline Visible visible_rows(int64_t t, const Policy& p) {
  return std::visit([t](const auto& q) { return visible_rows(t, q); }, p);
}

// The MTLA hyper-network of one layer (mtla-spec.md section 1): two affine maps
// fc_c, fc_p : R^{d_c} -> R^{d_c/4}, laid out as PyTorch's nn.Linear, which is
// how the mtla package stores them (hypernet_down.fc_c / fc_p): weight
// [d_c/4, d_c] row-major (output-major, y = W x + b), bias [d_c/4].
template <class T>
struct MtlaHyperNet {
  Tensor<T> fc_c_weight, fc_c_bias;  // applied to the chunk code PE(k)
  Tensor<T> fc_p_weight, fc_p_bias;  // applied to the latent c_i
  // Throws lca::Error naming the missing, mis-shaped or non-finite tensor, or
  // d_latent not divisible by 4.
  void validate(const MlaDims& dims) const;
  template <class U>
  MtlaHyperNet<U> cast() const {
    return {fc_c_weight.template cast<U>(), fc_c_bias.template cast<U>(), fc_p_weight.template cast<U>(),
            fc_p_bias.template cast<U>()};
  }
};

// Coverage checks shared by every implementation (they throw lca::Error
// naming the missing positions):
// - condensing groups [first, first + count) needs their tokens' rows, held
//   at positions [kv_start, kv_start + kv_len), and the summary queries of
//   every S_j, held at [sum_start, sum_start + sum_len);
void check_group_coverage(const char* where, const LcaParams& p, int64_t first, int64_t count, int64_t kv_start,
                          int64_t kv_len, int64_t sum_start, int64_t sum_len);
// - queries at [q_start, q_start + q_len) (q_len >= 1) need m(t+1) <= reps
//   representatives and raw rows, held at [raw_start, raw_start + raw_len),
//   covering [g m(t+1), t] for each t.
void check_attention_coverage(const char* where, const LcaParams& p, int64_t q_start, int64_t q_len, int64_t reps,
                              int64_t raw_start, int64_t raw_len);
// - MTLA: queries at [q_start, q_start + q_len) need floor(t/s) <= complete
//   complete rows and their own running rows, held at [run_start, run_start + run_len).
void check_attention_coverage(const char* where, const MtlaParams& p, int64_t q_start, int64_t q_len,
                              int64_t complete, int64_t run_start, int64_t run_len);

}  // namespace lca
