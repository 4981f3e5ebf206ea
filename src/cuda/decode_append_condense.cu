// decode_append_condense: the first kernel of a decode step, one block of 256
// threads per (batch entry, kv head).
// 1. Append: copy the kv head's part of the new row (the whole row for MLA)
//    into its raw block in 16-byte vectors; for LCA write
//    the head-summed query into the summary ring (lca-spec.md section 6: fp32,
//    position t in slot t % g): the sum over the kv head's query heads of
//    query[0 : summary_width]. Thread i loads 8 columns (16 bytes) of every
//    G-th head, all its loads at once, and the G groups' sums are added in
//    shared memory (a loop over 40 heads of scalar loads was a 3-4 us chain
//    at batch 1).
// 2. Condense, only where t closes a group (t = tau_j = (j+1) g + w - 1,
//    section 2): the group's g raw rows, which lie in one pool block
//    (block_rows is a multiple of g), are copied to shared memory by cp.async
//    at the kernel's start; sum the g ring slots of S_j in position order (as
//    the CPU cache does) and turn the rows into representative j through the
//    per-group code the prefill condense kernels use. The block's own writes
//    of step 1 are visible to it after __syncthreads.
// One launch instead of two, and every load of a step issued early: at batch 1
// latency, not bandwidth, sets the time. Launched with programmatic dependent
// launch: the closing group's rows (earlier steps') load before the wait for
// the kernels that make this step's rows and queries.
// Shared memory: summary_width + g + 1 floats, 8 per thread (the head
// groups' sums) and g rows (29 KB for DeepSeek).
#include "condense_group.cuh"
#include "decode.cuh"
#include "prefill_common.cuh"

namespace lca::cuda::detail {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads) decode_append_condense_kernel(PagedView v, StepView s, DecodeShape sh,
                                                                         const T* rows, const T* queries, float norm,
                                                                         KeyMode key_mode, double theta) {
  extern __shared__ __align__(16) float smem[];
  const int b = blockIdx.x, kv = blockIdx.y, tid = threadIdx.x;
  const int32_t t = static_cast<int32_t>(s.positions[b]), g = static_cast<int32_t>(v.group);
  const int64_t tr = table_row(v, s.seqs[b]);
  const int64_t part = sh.mla ? v.row_elems : 2 * sh.d_qk, first = sh.mla ? 0 : kv * part;
  const int sw = sh.summary_width;
  const int32_t opened = static_cast<int32_t>(t - v.window + 1);  // tokens past the window, counting t
  const bool closes = !v.full && opened >= g && opened % g == 0;
  const int32_t j = opened / g - 1;

  // The closing group's rows (this kv head's part) go to shared memory at
  // once, so their loads overlap the append; with w = 0 the group ends at t,
  // whose row the append writes, so they wait for it.
  float* query = smem;
  float* scores = smem + sw;
  int* anchor_slot = reinterpret_cast<int*>(scores + g);
  float* head_sums = smem + (sw + g + 1 + 3) / 4 * 4;  // [kThreads * 8]
  T* group = reinterpret_cast<T*>(head_sums + kThreads * 8);
  auto prefetch_group = [&] {
    const T* src = raw_row<T>(v, tr, j * g) + first;
    const int64_t chunks = part * int64_t(sizeof(T)) / 16;
    for (int64_t c = tid; c < int64_t(g) * chunks; c += kThreads)
      cp_async16(group + (c / chunks) * part + (c % chunks) * 8, src + (c / chunks) * v.row_elems + (c % chunks) * 8,
                 16);
    cp_async_commit();
  };
  if (closes && v.window > 0) prefetch_group();  // rows of earlier steps: before the wait
  pdl_wait();               // the step's rows and queries are written
  pdl_launch_dependents();  // the attention kernel may start its lookups and copies now

  // 1. Append.
  const T* src = rows + b * v.row_elems + first;
  T* dst = raw_row<T>(v, tr, t) + first;
  for (int64_t i = tid; i < part * int64_t(sizeof(T)) / 16; i += kThreads)
    reinterpret_cast<int4*>(dst)[i] = reinterpret_cast<const int4*>(src)[i];
  if (v.full) return;
  const int per = sh.q_heads / sh.kv_heads;
  const T* q = queries + (static_cast<int64_t>(b) * sh.q_heads + kv * per) * sh.d_qk;
  float* ring = v.ring + tr * g * v.ring_width + kv * sw;
  if (sw % 8 == 0 && sw / 8 <= kThreads) {
    const int vcols = sw / 8, groups = kThreads / vcols, vc = tid % vcols, hg = tid / vcols;
    float acc[8] = {};
    if (hg < groups) {
      constexpr int kMaxLoads = 8;  // heads per thread in flight at once (40 heads, 8 groups: 5)
      for (int h0 = hg; h0 < per; h0 += groups * kMaxLoads) {
        uint4 x[kMaxLoads];
#pragma unroll
        for (int i = 0; i < kMaxLoads; ++i) {
          const int h = h0 + i * groups;
          if (h < per) x[i] = *reinterpret_cast<const uint4*>(q + h * sh.d_qk + vc * 8);
        }
#pragma unroll
        for (int i = 0; i < kMaxLoads; ++i) {
          if (h0 + i * groups >= per) break;
          const T* e = reinterpret_cast<const T*>(&x[i]);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[j] += to_float(e[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) head_sums[hg * sw + vc * 8 + j] = acc[j];
    }
    __syncthreads();
    for (int c = tid; c < sw; c += kThreads) {
      float sum = 0.f;
      for (int i = 0; i < groups; ++i) sum += head_sums[i * sw + c];
      ring[(t % g) * v.ring_width + c] = sum;
    }
  } else {
    for (int c = tid; c < sw; c += kThreads) {
      float acc = 0.f;
#pragma unroll 16
      for (int h = 0; h < per; ++h) acc += to_float(q[h * sh.d_qk + c]);
      ring[(t % g) * v.ring_width + c] = acc;
    }
  }
  if (!closes) return;

  // 2. Condense group j into representative j.
  __syncthreads();  // the ring slot and row just written are visible to the block
  if (v.window == 0) prefetch_group();
  const int32_t first_slot = (t - g + 1) % g;  // S_j = [t - g + 1, t], oldest first
  for (int c = tid; c < sw; c += kThreads) {
    float acc = 0.f;
#pragma unroll 16
    for (int32_t i = 0; i < g; ++i) {
      const int32_t slot = first_slot + i < g ? first_slot + i : first_slot + i - g;
      acc += ring[slot * v.ring_width + c];
    }
    query[c] = acc;
  }
  cp_async_wait<0>();
  __syncthreads();
  T* rep = rep_row<T>(v, tr, j) + first;
  if (sh.mla) {
    const int dc = sh.d_v, dr = sh.d_qk - sh.d_v;
    condense_group_mla<T>(query, scores, anchor_slot, sw, g, norm, group, part, group + dc, part, dc,
                          dr, rep, rep + dc);
  } else {
    const int d = sh.d_qk;
    condense_group_gqa<T>(query, scores, anchor_slot, d, g, norm, group, group + d, part, int64_t(j) * g,
                          key_mode, theta, rep, rep + d);
  }
}

}  // namespace

void decode_append_condense(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* rows,
                            const void* queries, double scale, const LcaParams& params, const RopeParams& rope,
                            DType dtype, cudaStream_t stream) {
  if (s.batch == 0) return;
  const int64_t g = v.full ? 1 : params.group;
  const float norm = static_cast<float>(scale / static_cast<double>(g * (sh.q_heads / sh.kv_heads)));
  const int64_t part = sh.mla ? sh.d_qk : 2 * sh.d_qk;  // values of a row one block handles
  const size_t smem = v.full ? 0
                             : ((sh.summary_width + g + 1 + 3) / 4 * 4 + kThreads * 8) * sizeof(float) +
                                   g * part * dtype_size(dtype);
  dispatch_dtype(dtype, "cuda::decode_append_condense", [&](auto tag) {
    using T = decltype(tag);
    if (smem > 48 * 1024) {
      static const cudaError_t attr = cudaFuncSetAttribute(
          decode_append_condense_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      LCA_CUDA_CHECK(attr);
    }
    launch_with_pdl(decode_append_condense_kernel<T>, dim3(s.batch, sh.kv_heads), kThreads, smem, stream, v, s, sh,
                    static_cast<const T*>(rows), static_cast<const T*>(queries), norm, params.key_mode, rope.theta);
    LCA_CUDA_CHECK_LAUNCH("decode_append_condense");
  });
}

}  // namespace lca::cuda::detail
