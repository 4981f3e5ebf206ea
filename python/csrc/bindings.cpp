// torch ops over lca's CUDA kernels: shape, dtype and device checks raise
// ValueError with the problem named; the kernels' own checks (lca::Error)
// arrive as ValueError too.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>

#include "lca/cuda.hpp"
#include "lca/error.hpp"

namespace {

lca::DType dtype_of(const torch::Tensor& t, const char* name) {
  if (t.scalar_type() == torch::kBFloat16) return lca::DType::bf16;
  if (t.scalar_type() == torch::kFloat16) return lca::DType::f16;
  throw lca::Error(std::string("lca: ") + name + " must be bfloat16 or float16, got " +
                   std::string(c10::toString(t.scalar_type())));
}

std::string sizes(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

void check(const torch::Tensor& t, const char* name, int64_t rank) {
  LCA_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  LCA_CHECK(t.dim() == rank, name, " must have ", rank, " dimensions, got ", t.dim());
  LCA_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void same_dtype(const torch::Tensor& a, const torch::Tensor& b, const char* an, const char* bn) {
  LCA_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype");
}

lca::LcaParams policy(int64_t window, int64_t group, bool mass_bias) {
  lca::LcaParams p = window < 0 ? lca::LcaParams::full() : lca::LcaParams{};
  if (window >= 0) {
    p.window = window;
    p.group = group;
  }
  p.mass_bias = mass_bias ? lca::MassBias::log_g : lca::MassBias::none;
  p.validate();
  return p;
}

// q [L, Hq, d_qk], k/v [R, Hkv, d], rep_k/rep_v [M, Hkv, d] (M may be 0) -> [L, Hq, d_v].
// window < 0: full causal attention.
torch::Tensor prefill(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rep_k, torch::Tensor rep_v,
                      double scale, int64_t window, int64_t group, int64_t q_start, int64_t raw_start,
                      bool mass_bias) {
  check(q, "q", 3);
  check(k, "k", 3);
  check(v, "v", 3);
  check(rep_k, "rep_k", 3);
  check(rep_v, "rep_v", 3);
  const lca::DType dt = dtype_of(q, "q");
  same_dtype(q, k, "q", "k");
  same_dtype(q, v, "q", "v");
  same_dtype(q, rep_k, "q", "rep_k");
  same_dtype(q, rep_v, "q", "rep_v");
  LCA_CHECK(k.size(0) == v.size(0) && k.size(1) == v.size(1), "k ", sizes(k), " and v ", sizes(v),
            " must agree in rows and kv heads");
  LCA_CHECK(k.size(2) == q.size(2), "k head dim ", k.size(2), " must equal q head dim ", q.size(2));
  LCA_CHECK(rep_k.size(0) == rep_v.size(0), "rep_k and rep_v must have the same number of rows");
  LCA_CHECK(rep_k.size(0) == 0 || (rep_k.size(1) == k.size(1) && rep_k.size(2) == k.size(2) &&
                                   rep_v.size(1) == v.size(1) && rep_v.size(2) == v.size(2)),
            "rep_k/rep_v must be [M, kv_heads, d] like k/v");
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = torch::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  lca::cuda::PrefillArgs a;
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.rep_k = rep_k.numel() ? rep_k.data_ptr() : nullptr;
  a.rep_v = rep_v.numel() ? rep_v.data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.q_len = q.size(0);
  a.q_start = q_start;
  a.raw_len = k.size(0);
  a.raw_start = raw_start;
  a.reps = rep_k.size(0);
  a.q_heads = q.size(1);
  a.kv_heads = k.size(1);
  a.d_qk = q.size(2);
  a.d_v = v.size(2);
  a.scale = scale;
  a.dtype = dt;
  a.params = policy(window, group, mass_bias);
  lca::cuda::check_prefill(a);  // throws here, in C++-compiled code, not inside the launcher
  lca::cuda::lca_prefill(a, at::cuda::getCurrentCUDAStream());
  return out;
}

// Head-summed summary queries of GQA: q [L, Hq, d] -> [L, Hkv, d] fp32.
torch::Tensor summary_queries_gqa(torch::Tensor q, int64_t kv_heads) {
  check(q, "q", 3);
  const lca::DType dt = dtype_of(q, "q");
  lca::GqaDims{.q_heads = q.size(1), .kv_heads = kv_heads, .head_dim = q.size(2)}.validate();
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = torch::empty({q.size(0), kv_heads, q.size(2)}, q.options().dtype(torch::kFloat32));
  lca::cuda::gqa_summary_queries(q.data_ptr(), out.data_ptr<float>(), q.size(0), q.size(1), kv_heads, q.size(2), dt,
                                 at::cuda::getCurrentCUDAStream());
  return out;
}

// Groups [first, first + count) of GQA keys/values at positions kv_start..; summary fp32 [S, Hkv, d]
// at positions sum_start... Returns (rep_k, rep_v, anchors).
std::vector<torch::Tensor> condense_gqa(torch::Tensor k, torch::Tensor v, torch::Tensor summary, int64_t q_heads,
                                        double scale, int64_t window, int64_t group, bool anchor_key,
                                        double rope_theta, int64_t first, int64_t count, int64_t kv_start,
                                        int64_t sum_start) {
  check(k, "k", 3);
  check(v, "v", 3);
  check(summary, "summary", 3);
  const lca::DType dt = dtype_of(k, "k");
  same_dtype(k, v, "k", "v");
  LCA_CHECK(summary.scalar_type() == torch::kFloat32, "summary must be float32 (from summary_queries_gqa)");
  LCA_CHECK(k.sizes() == v.sizes(), "k ", sizes(k), " and v ", sizes(v), " must have the same shape");
  LCA_CHECK(summary.size(1) == k.size(1) && summary.size(2) == k.size(2), "summary must be [S, kv_heads, d]");
  const c10::cuda::CUDAGuard guard(k.device());
  auto rep_k = torch::empty({count, k.size(1), k.size(2)}, k.options());
  auto rep_v = torch::empty_like(rep_k);
  auto anchors = torch::empty({count, k.size(1)}, k.options().dtype(torch::kInt64));
  lca::cuda::CondenseGqaArgs a;
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.summary = summary.data_ptr<float>();
  a.rep_k = rep_k.data_ptr();
  a.rep_v = rep_v.data_ptr();
  a.anchors = anchors.data_ptr<int64_t>();
  a.kv_start = kv_start;
  a.kv_len = k.size(0);
  a.sum_start = sum_start;
  a.sum_len = summary.size(0);
  a.first = first;
  a.count = count;
  a.q_heads = q_heads;
  a.kv_heads = k.size(1);
  a.head_dim = k.size(2);
  a.scale = scale;
  a.rope.theta = rope_theta;
  a.dtype = dt;
  a.params = policy(window, group, false);
  a.params.key_mode = anchor_key ? lca::KeyMode::anchor : lca::KeyMode::pooled;
  lca::cuda::check_condense_gqa(a);
  lca::cuda::condense_groups_gqa(a, at::cuda::getCurrentCUDAStream());
  return {rep_k, rep_v, anchors};
}

// MLA: latent [N, d_c], rope_key [N, d_r] at positions kv_start..; summary fp32 [S, d_c] (or
// [S, d_c + d_r] with full_score) at positions sum_start... Returns (rep_latent, rep_rope_key, anchors).
std::vector<torch::Tensor> condense_mla(torch::Tensor latent, torch::Tensor rope_key, torch::Tensor summary,
                                        int64_t heads, double scale, int64_t window, int64_t group, bool full_score,
                                        int64_t first, int64_t count, int64_t kv_start, int64_t sum_start) {
  check(latent, "latent", 2);
  check(rope_key, "rope_key", 2);
  check(summary, "summary", 2);
  const lca::DType dt = dtype_of(latent, "latent");
  same_dtype(latent, rope_key, "latent", "rope_key");
  LCA_CHECK(summary.scalar_type() == torch::kFloat32, "summary must be float32");
  LCA_CHECK(latent.size(0) == rope_key.size(0), "latent and rope_key must have the same number of rows");
  const int64_t sw = full_score ? latent.size(1) + rope_key.size(1) : latent.size(1);
  LCA_CHECK(summary.size(1) == sw, "summary must have ", sw, " columns, got ", summary.size(1));
  const c10::cuda::CUDAGuard guard(latent.device());
  auto rep_latent = torch::empty({count, latent.size(1)}, latent.options());
  auto rep_rope = torch::empty({count, rope_key.size(1)}, latent.options());
  auto anchors = torch::empty({count}, latent.options().dtype(torch::kInt64));
  lca::cuda::CondenseMlaArgs a;
  a.latent = latent.data_ptr();
  a.rope_key = rope_key.data_ptr();
  a.summary = summary.data_ptr<float>();
  a.rep_latent = rep_latent.data_ptr();
  a.rep_rope_key = rep_rope.data_ptr();
  a.anchors = anchors.data_ptr<int64_t>();
  a.kv_start = kv_start;
  a.kv_len = latent.size(0);
  a.sum_start = sum_start;
  a.sum_len = summary.size(0);
  a.first = first;
  a.count = count;
  a.heads = heads;
  a.d_latent = latent.size(1);
  a.d_rope = rope_key.size(1);
  a.scale = scale;
  a.dtype = dt;
  a.params = policy(window, group, false);
  a.params.score = full_score ? lca::ScoreMode::full : lca::ScoreMode::latent;
  lca::cuda::check_condense_mla(a);
  lca::cuda::condense_groups_mla(a, at::cuda::getCurrentCUDAStream());
  return {rep_latent, rep_rope, anchors};
}

// Every op converts lca::Error into Python's ValueError inside the op itself.
template <class Sig, Sig F>
struct Guarded;
template <class R, class... A, R (*F)(A...)>
struct Guarded<R (*)(A...), F> {
  static R call(A... args) {
    try {
      return F(std::move(args)...);
    } catch (const lca::Error& e) {
      throw pybind11::value_error(e.what());
    }
  }
};
#define LCA_OP(f) &Guarded<decltype(&f), &f>::call

std::string device_name() { return lca::cuda::device_name(); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("prefill", LCA_OP(prefill));
  m.def("summary_queries_gqa", LCA_OP(summary_queries_gqa));
  m.def("condense_gqa", LCA_OP(condense_gqa));
  m.def("condense_mla", LCA_OP(condense_mla));
  m.def("device_name", &device_name);
}
