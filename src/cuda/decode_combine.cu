// decode_combine: merges the splits of decode_attention. Block (b, h, c) owns
// 64 output columns of head h of batch entry b: its threads load the splits'
// log-sum-exps (log2 domain; empty splits hold -inf and weigh 0) in parallel
// and turn them into weights in shared memory, then G groups of 16 threads
// each sum every G-th split's normalised output (four columns per thread,
// eight loads in flight: at batch 1 this kernel is a chain of L2 latencies;
// the first few are issued with the log-sum-exps' loads), and the groups' sums
// are added in a fixed order. The outputs are fp32 from the mma.sync kernel
// and in the storage dtype from the wgmma kernel (decode_attention_sm90.cu).
// G = 16 where there are more than 40 splits (batch 1); otherwise G = 8, so
// that every split's load goes out in the first round and no group idles (at
// batch 32, 8 or 2 splits: with 16 groups half the block or more had nothing
// to sum). Launched with programmatic dependent launch: its blocks are
// resident and waiting when the attention kernel ends. Shared memory: splits +
// G * 64 floats.
#include "decode.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kCols = 64;

// Four columns of a split's output as floats: 16 bytes of fp32, or 8 of the storage dtype.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
template <class P>
__device__ __forceinline__ float4 load4(const P* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const P* x = reinterpret_cast<const P*>(&raw);
  return make_float4(to_float(x[0]), to_float(x[1]), to_float(x[2]), to_float(x[3]));
}

// kGroups groups of 16 threads; each thread's first kPre splits load with the
// log-sum-exps. P: the partial outputs' type (float, or T from the wgmma kernel).
template <class T, class P, int kGroups, int kPre, int kThreads = kGroups * (kCols / 4)>
__global__ void __launch_bounds__(kThreads) decode_combine_kernel(int q_heads, int d_v, int splits,
                                                                  const P* part_out, const float* part_lse,
                                                                  T* out) {
  extern __shared__ float smem[];
  float* partial = smem;                     // [kGroups][kCols], float4-aligned
  float* weight = smem + kGroups * kCols;    // [splits]
  const int b = blockIdx.x, h = blockIdx.y, col0 = blockIdx.z * kCols, tid = threadIdx.x;
  pdl_launch_dependents();  // the product after it (a decode_linear at batch 1) may load its weights now
  pdl_wait();               // the attention kernel's partials are written
  __shared__ float reduce[kThreads / 32];
  // Block-wide max and sum, by shuffles and one shared slot per warp.
  auto block_reduce = [&](float x, bool is_max) {
    x = is_max ? warp_max(x) : warp_sum(x);
    __syncthreads();  // reduce[] is free again
    if (tid % 32 == 0) reduce[tid / 32] = x;
    __syncthreads();
    x = reduce[0];
    for (int w = 1; w < kThreads / 32; ++w) x = is_max ? fmaxf(x, reduce[w]) : x + reduce[w];
    return x;
  };
  // The first kPre of this thread's splits' outputs are loaded before the
  // log-sum-exps, so that both L2 round trips are in flight at once.
  const int group = tid / (kCols / 4), c = col0 + (tid % (kCols / 4)) * 4;
  const P* src = part_out + (static_cast<int64_t>(b) * splits * q_heads + h) * d_v + c;
  const int64_t stride = static_cast<int64_t>(q_heads) * d_v;
  float4 first[kPre];
#pragma unroll
  for (int j = 0; j < kPre; ++j) {
    const int s = group + j * kGroups;
    first[j] = c < d_v && s < splits ? load4(src + s * stride) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const float* lse = part_lse + static_cast<int64_t>(b) * splits * q_heads + h;
  float top = -INFINITY;  // every log-sum-exp is loaded once, by its own thread
  for (int s = tid; s < splits; s += kThreads) top = fmaxf(top, weight[s] = lse[s * q_heads]);
  top = block_reduce(top, true);
  float den = 0.f;
  for (int s = tid; s < splits; s += kThreads) den += weight[s] = weight[s] == -INFINITY ? 0.f : exp2f(weight[s] - top);
  den = block_reduce(den, false);

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int j = 0; j < kPre; ++j) {
    const int s = group + j * kGroups;
    const float w = s < splits ? weight[s] : 0.f;
    acc.x += w * first[j].x, acc.y += w * first[j].y, acc.z += w * first[j].z, acc.w += w * first[j].w;
  }
  if (c < d_v) {
    // No branch on empty splits (weight 0, zeros written): the unrolled loads are all in flight.
#pragma unroll 8
    for (int s = group + kPre * kGroups; s < splits; s += kGroups) {
      const float4 x = load4(src + s * stride);
      const float w = weight[s];
      acc.x += w * x.x, acc.y += w * x.y, acc.z += w * x.z, acc.w += w * x.w;
    }
  }
  *reinterpret_cast<float4*>(partial + group * kCols + (tid % (kCols / 4)) * 4) = acc;
  __syncthreads();
  if (tid < kCols && col0 + tid < d_v) {
    float sum = 0.f;
    for (int gi = 0; gi < kGroups; ++gi) sum += partial[gi * kCols + tid];
    out[(static_cast<int64_t>(b) * q_heads + h) * d_v + col0 + tid] = from_float<T>(sum / den);
  }
}

}  // namespace

void decode_combine(const StepView& s, const DecodeShape& sh, const void* part_out, const float* part_lse,
                    int splits, void* out, DType dtype, cudaStream_t stream) {
  if (s.batch == 0) return;
  const dim3 grid(s.batch, sh.q_heads, (sh.d_v + kCols - 1) / kCols);
  // The wgmma kernel stores its partials in the storage dtype, the mma.sync kernel in fp32.
  const bool storage_dtype = decode_sm90_supports(sh);
  dispatch_dtype(dtype, "cuda::decode_combine", [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&]<class P, int kGroups, int kPre>() {
      const size_t smem = (splits + kGroups * kCols) * sizeof(float);
      launch_with_pdl(decode_combine_kernel<T, P, kGroups, kPre>, grid, kGroups * (kCols / 4), smem, stream,
                      sh.q_heads, sh.d_v, splits, static_cast<const P*>(part_out), part_lse, static_cast<T*>(out));
    };
    auto launch_groups = [&]<class P>() {
      if (splits <= 8 * 5)  // 8 groups: each thread's loads all up front
        launch.template operator()<P, 8, 5>();
      else
        launch.template operator()<P, 16, 4>();
    };
    if (storage_dtype)
      launch_groups.template operator()<T>();
    else
      launch_groups.template operator()<float>();
    LCA_CUDA_CHECK_LAUNCH("decode_combine");
  });
}

}  // namespace lca::cuda::detail
