// Argument checks of the CUDA launchers, compiled as plain C++: the launchers
// call them first, and so do the Python bindings, so an lca::Error is always
// thrown (and caught) in host code the C++ compiler built.
#include "lca/cuda.hpp"
#include "lca/error.hpp"

namespace lca::cuda {

void check_prefill(const PrefillArgs& a) {
  const char* where = "cuda::lca_prefill";
  a.params.validate();
  LCA_CHECK(prefill_supports(a.d_qk, a.d_v), where, ": head dims (d_qk ", a.d_qk, ", d_v ", a.d_v,
            ") are not built; built: (64, 64), (96, 64), (128, 128), (192, 128)");
  LCA_CHECK(a.kv_heads >= 1 && a.q_heads >= 1 && a.q_heads % a.kv_heads == 0, where, ": q_heads (", a.q_heads,
            ") must be a positive multiple of kv_heads (", a.kv_heads, ")");
  LCA_CHECK(a.q && a.k && a.v && a.out, where, ": q, k, v and out must be device pointers, got a null one");
  LCA_CHECK(a.scale > 0, where, ": scale must be > 0, got ", a.scale);
  LCA_CHECK(a.q_len >= 0 && a.q_start >= 0 && a.raw_start >= 0 && a.raw_len >= 0 && a.reps >= 0, where,
            ": lengths and starts must be >= 0");
  LCA_CHECK(a.dtype != DType::f32, where, ": the CUDA kernels take bf16 or f16 storage, got f32");
  LCA_CHECK(a.mtla_down_rate >= 0, where, ": mtla_down_rate must be >= 0 (0: LCA), got ", a.mtla_down_rate);
  if (a.q_len == 0) return;
  if (a.mtla_down_rate > 0)
    check_attention_coverage(where, MtlaParams{.down_rate = a.mtla_down_rate}, a.q_start, a.q_len, a.reps, a.raw_start,
                             a.raw_len);
  else
    check_attention_coverage(where, a.params, a.q_start, a.q_len, a.reps, a.raw_start, a.raw_len);
  LCA_CHECK(a.reps == 0 || (a.rep_k && a.rep_v), where, ": rep_k and rep_v are null but ", a.reps,
            " representatives were given");
  LCA_CHECK(a.q_heads <= 65535, where, ": at most 65535 query heads, got ", a.q_heads);
}

void check_condense_mla(const CondenseMlaArgs& a) {
  const char* where = "cuda::condense_groups_mla";
  a.params.validate();
  LCA_CHECK(!a.params.is_full(), where, ": the full-attention policy has no groups to condense");
  LCA_CHECK(a.heads >= 1 && a.d_latent >= 1 && a.d_rope >= 1, where, ": heads, d_latent and d_rope must be >= 1");
  LCA_CHECK(a.latent && a.rope_key && a.summary && a.rep_latent && a.rep_rope_key, where,
            ": latent, rope_key, summary, rep_latent and rep_rope_key must be device pointers, got a null one");
  LCA_CHECK(a.params.group <= 1024, where, ": group ", a.params.group, " is larger than the kernel's 1024");
  check_group_coverage(where, a.params, a.first, a.count, a.kv_start, a.kv_len, a.sum_start, a.sum_len);
}

void check_condense_gqa(const CondenseGqaArgs& a) {
  const char* where = "cuda::condense_groups_gqa";
  a.params.validate();
  a.rope.validate();
  LCA_CHECK(!a.params.is_full(), where, ": the full-attention policy has no groups to condense");
  GqaDims{.q_heads = a.q_heads, .kv_heads = a.kv_heads, .head_dim = a.head_dim}.validate();
  LCA_CHECK(a.k && a.v && a.summary && a.rep_k && a.rep_v, where,
            ": k, v, summary, rep_k and rep_v must be device pointers, got a null one");
  LCA_CHECK(a.params.group <= 1024, where, ": group ", a.params.group, " is larger than the kernel's 1024");
  check_group_coverage(where, a.params, a.first, a.count, a.kv_start, a.kv_len, a.sum_start, a.sum_len);
}

void check_mtla_rows(const MtlaRowsArgs& a) {
  const char* where = "cuda::mtla_rows";
  a.params.validate();
  LCA_CHECK(a.d_latent >= 16 && a.d_latent % 16 == 0, where, ": d_latent must be a positive multiple of 16, got ",
            a.d_latent);
  LCA_CHECK(a.d_rope >= 0, where, ": d_rope must be >= 0, got ", a.d_rope);
  LCA_CHECK(a.start >= 0 && a.len >= 0, where, ": start and len must be >= 0, got ", a.start, " and ", a.len);
  LCA_CHECK(a.dtype != DType::f32, where, ": the CUDA kernels take bf16 or f16 storage, got f32");
  if (a.len == 0) return;
  const int64_t s = a.params.down_rate;
  LCA_CHECK(a.rows && a.hyper && a.weights && a.running, where,
            ": rows, hyper, weights and running must be device pointers, got a null one");
  LCA_CHECK((a.start + a.len) / s == a.start / s || a.complete, where, ": complete is null but chunks close");
  LCA_CHECK(a.start % s == 0 || a.open_in, where, ": open_in is null but the chunk at start ", a.start, " is open");
  LCA_CHECK((a.start + a.len) % s == 0 || a.open_out, where, ": open_out is null but a chunk stays open");
  LCA_CHECK(a.open_in == nullptr || a.open_in != a.open_out, where,
            ": open_in and open_out must be distinct buffers");
}

}  // namespace lca::cuda
