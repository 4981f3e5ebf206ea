// bias_rope: the bias add of Qwen2's q/k/v projections and Llama/Qwen2's
// half-split RoPE on q and k, in place. One block per token; a thread owns a
// (head, pair) of q or k, or a value of v; angles in fp64 (as the CPU
// reference's rope_rotate), cos and sin rounded to fp32, computed into a table
// before the wait of programmatic dependent launch (they need only positions).
#include "common.cuh"
#include "model_ops.hpp"

namespace lca::cuda::detail {
namespace {

constexpr int kMaxHalf = 256;  // head_dim up to 512

__global__ void bias_rope_kernel(__nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v, const __nv_bfloat16* bq,
                                 const __nv_bfloat16* bk, const __nv_bfloat16* bv, int hq, int hkv, int d,
                                 const int64_t* positions, int64_t start, double theta) {
  __shared__ float cs_table[kMaxHalf], sn_table[kMaxHalf];
  const int64_t i = blockIdx.x, pos = positions != nullptr ? positions[i] : start + i;
  const int half = d / 2;
  // The angles (fp64) depend only on the position: computed before the wait for the products.
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    double s, c;
    sincos(static_cast<double>(pos) * pow(theta, -2.0 * j / d), &s, &c);
    cs_table[j] = static_cast<float>(c);
    sn_table[j] = static_cast<float>(s);
  }
  __syncthreads();
  pdl_wait();
  pdl_launch_dependents();
  auto bias = [](const __nv_bfloat16* b, int idx) { return b != nullptr ? __bfloat162float(b[idx]) : 0.f; };
  // q and k: (head, pair) items; heads [0, hq) of q then [0, hkv) of k.
  for (int item = threadIdx.x; item < (hq + hkv) * half; item += blockDim.x) {
    const int head = item / half, j = item % half;
    const bool is_q = head < hq;
    __nv_bfloat16* x = is_q ? q + (i * hq + head) * d : k + (i * hkv + (head - hq)) * d;
    const __nv_bfloat16* b = is_q ? bq : bk;
    const int base = (is_q ? head : head - hq) * d;
    const float lo = __bfloat162float(x[j]) + bias(b, base + j);
    const float hi = __bfloat162float(x[j + half]) + bias(b, base + j + half);
    const float cs = cs_table[j], sn = sn_table[j];
    x[j] = __float2bfloat16(lo * cs - hi * sn);
    x[j + half] = __float2bfloat16(hi * cs + lo * sn);
  }
  if (bv != nullptr)
    for (int c = threadIdx.x; c < hkv * d; c += blockDim.x)
      v[i * hkv * d + c] = __float2bfloat16(__bfloat162float(v[i * hkv * d + c]) + __bfloat162float(bv[c]));
}

}  // namespace

void bias_rope(void* q, void* k, void* v, const void* bq, const void* bk, const void* bv, int64_t n, int64_t hq,
               int64_t hkv, int64_t d, const int64_t* positions, int64_t start, double theta, cudaStream_t stream) {
  if (n == 0) return;
  LCA_CHECK(d % 2 == 0 && d / 2 <= kMaxHalf, "bias_rope: head_dim ", d, " must be even and at most ", 2 * kMaxHalf);
  launch_with_pdl(bias_rope_kernel, dim3(static_cast<unsigned>(n)), 256, 0, stream, static_cast<__nv_bfloat16*>(q),
                  static_cast<__nv_bfloat16*>(k), static_cast<__nv_bfloat16*>(v),
                  static_cast<const __nv_bfloat16*>(bq), static_cast<const __nv_bfloat16*>(bk),
                  static_cast<const __nv_bfloat16*>(bv), static_cast<int>(hq), static_cast<int>(hkv),
                  static_cast<int>(d), positions, start, theta);
  LCA_CUDA_CHECK_LAUNCH("bias_rope");
}

}  // namespace lca::cuda::detail
