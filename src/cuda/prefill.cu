// lca_prefill: argument checks and the choice of kernel. The Hopper kernel
// (prefill_sm90.cu, wgmma) runs on compute capability 9.0 for head dims that
// are multiples of 64; everything else runs the mma.sync kernel
// (prefill_sm80.cu). Both compute the same function, tested alike.
#include <cmath>
#include <cstdlib>
#include <string>

#include "prefill_common.cuh"

namespace lca::cuda {
namespace {

bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

// LCA_PREFILL_KERNEL=sm80 forces the portable kernel (for comparisons and tests).
bool use_sm90(const PrefillArgs& a) {
  static const bool sm90 = device_is_sm90();
  const char* force = std::getenv("LCA_PREFILL_KERNEL");
  if (force != nullptr && std::string(force) == "sm80") return false;
  return sm90 && detail::prefill_sm90_supports(a.d_qk, a.d_v);
}

}  // namespace

bool prefill_supports(int64_t d_qk, int64_t d_v) {
  return detail::prefill_sm80_supports(d_qk, d_v) || detail::prefill_sm90_supports(d_qk, d_v);
}

void lca_prefill(const PrefillArgs& a, cudaStream_t stream) {
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
  if (a.q_len == 0) return;
  const int64_t last = a.q_start + a.q_len - 1;
  const int64_t need_reps = condensed_groups(last + 1, a.params);
  LCA_CHECK(a.reps >= need_reps, where, ": query at position ", last, " sees ", need_reps,
            " representatives, but only ", a.reps, " were given");
  LCA_CHECK(need_reps == 0 || (a.rep_k && a.rep_v), where, ": rep_k and rep_v are null but ", need_reps,
            " representatives are needed");
  const int64_t lo = first_raw_position(a.q_start + 1, a.params);
  LCA_CHECK(a.raw_start <= lo && a.raw_start + a.raw_len > last, where, ": raw rows cover positions [", a.raw_start,
            ", ", a.raw_start + a.raw_len, "), but queries at [", a.q_start, ", ", last + 1, ") need [", lo, ", ",
            last + 1, ")");
  LCA_CHECK(a.q_heads <= 65535, where, ": at most 65535 query heads, got ", a.q_heads);

  const float scale_log2 = static_cast<float>(a.scale) * 1.4426950408889634f;
  const float bias_log2 = a.params.mass_bias == MassBias::log_g ? std::log2(static_cast<float>(a.params.group)) : 0.f;
  if (use_sm90(a)) detail::prefill_sm90(a, scale_log2, bias_log2, stream);
  else detail::prefill_sm80(a, scale_log2, bias_log2, stream);
}

}  // namespace lca::cuda
