// lca_prefill: argument checks and the choice of kernel. The Hopper kernel
// (prefill_sm90.cu, wgmma) runs on compute capability 9.0 for every built
// head-dim pair; elsewhere the mma.sync kernel (prefill_sm80.cu) runs. Both
// compute the same function and are tested alike.
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
  check_prefill(a);
  if (a.q_len == 0) return;
  const float scale_log2 = static_cast<float>(a.scale) * 1.4426950408889634f;
  const float bias_log2 = a.mtla_down_rate == 0 && a.params.mass_bias == MassBias::log_g
                              ? std::log2(static_cast<float>(a.params.group))
                              : 0.f;
  if (use_sm90(a)) detail::prefill_sm90(a, scale_log2, bias_log2, stream);
  else detail::prefill_sm80(a, scale_log2, bias_log2, stream);
}

}  // namespace lca::cuda
