// The MLA architectures (DeepSeek-V2/V3, MiniCPM3) in the GPU runtime
// (internal to src/runtime/): their weights on the device and a session's
// layer loops. GpuModel and GpuSession (gpu_model.cpp) own these and keep the
// parts every architecture shares: embeddings, final norm, logits, the paged
// cache, the stream, cuBLAS and the decode graph.
//
// Prefill runs chunk by chunk (runtime/prefill_chunks.hpp), the attention in decompressed form (per-head keys [W_UK c ;
// k^R] and values W_UV c, the prefill kernel's MLA shapes), condensing on the
// latents first; decode runs it in absorbed form over the paged MLA cache
// (queries [W_UK^T q^C ; q^R], output latents then W_UV), as the CPU runtime.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/device_memory.hpp"
#include "lca/gpu_model.hpp"
#include "model/mla.hpp"
#include "runtime/prefill_chunks.hpp"

typedef struct cublasContext* cublasHandle_t;

namespace lca::cuda {

class GpuMoe;
class MoeWorkspace;

namespace detail {

DeviceArray upload_bf16(const char* what, const Tensor<float>& t);
// [a ; b] (b's rows after a's, the same width) as one bf16 array: two projections of
// the same input in one product.
DeviceArray upload_bf16_rows(const char* what, const Tensor<float>& a, const Tensor<float>& b);
// dst [rows, width] = columns [col, col + width) of src [rows, src_width], bf16, on `stream`
// (GQA rows [k ; v] per kv head into k and v; MLA rows [c ; k^R] into latents and rope keys).
void copy_columns(const void* src, int64_t src_width, int64_t col, int64_t rows, int64_t width, void* dst,
                  cudaStream_t stream);

struct MlaLayerArrays {
  DeviceArray attn_norm;
  // [nq + dc + dr, D]: q_proj [nq = H*dq, D] (with q_lora q_a_proj, nq = r) above
  // kv_a_proj_with_mqa [dc + dr, D]; decode projects h through both in one GEMM.
  DeviceArray q_kv_a;
  DeviceArray b_q_a, q_a_norm, q_b;   // q_lora: [r] or empty, [r], [H*dq, r]
  DeviceArray b_kv_a, kv_a_norm;      // [dc + dr] or empty, [dc]
  DeviceArray w_uk, w_uv;             // [H, dn, dc], [H, dv, dc]
  DeviceArray w_uk_sum;               // [H * dq, dc]: W_UK[h] at each head's nope rows, zeros at its rope rows
  DeviceArray wo, bo;                 // [D, H*dv], [D] or empty
  DeviceArray ffn_norm, w_gate_up, w_down;  // dense layers; w_gate_up: [gate ; up]
  std::shared_ptr<const GpuMoe> moe;  // MoE layers
};

struct MlaWeights {
  model::MlaArch arch;
  std::vector<MlaLayerArrays> layers;
  DeviceArray inv_freq;  // fp64 [d_r / 2]
  int64_t bytes = 0;     // the layers' weights
  // MTLA hyper-networks (empty when the model holds none), fp32 as the CPU
  // runtime's: per layer on the host (for the paged cache's decode appends) and
  // packed on the device, fc_c W, fc_c b, fc_p W, fc_p b (for prefill's mtla_rows).
  std::vector<MtlaHyperNet<float>> mtla_hyper;
  DeviceArray mtla_hyper_packed;
  int64_t mtla_hyper_floats = 0;  // per layer
};

// Throws lca::Error when the config cannot run on the GPU runtime (head dims
// the kernels are not built for, MoE layers without the GPU MoE, bad sizes).
void check_mla(const char* where, const ModelConfig& c);
std::unique_ptr<MlaWeights> upload_mla(const Model& model);
std::unique_ptr<MlaWeights> random_mla(const ModelConfig& c, uint64_t seed);
// The model's MTLA hyper-networks into w (nothing when it holds none).
void upload_mtla(const Model& model, MlaWeights& w);

// Sets a flag for a scope (a decode step's launches): products of one row
// then go to decode_linear, prefill keeps cuBLAS (its chunkings stay
// comparable: a different summation order can break an anchor's near-tie).
struct DecodingScope {
  bool& flag;
  explicit DecodingScope(bool& f) : flag(f) { flag = true; }
  ~DecodingScope() { flag = false; }
  DecodingScope(const DecodingScope&) = delete;
  DecodingScope& operator=(const DecodingScope&) = delete;
};

// One session's MLA layers: the decode buffers (max_seqs rows) and the loops.
class MlaLayers {
 public:
  MlaLayers(const ModelConfig& c, const MlaWeights& w, const GpuSessionOptions& opt, cudaStream_t stream,
            cublasHandle_t blas);
  ~MlaLayers();
  // Buffers for the chunks of one prefill call (sized by its plan), until end_prefill.
  void begin_prefill(const PrefillPlan& plan);
  void end_prefill();
  // Every layer over x [L, D] (embedded, scaled) of the chunk the cache is
  // extending seq by (begin_extend; positions [n0, n0 + L), n0 = cache.tokens(seq)):
  // what its queries see read from the cache, its new rows written into it
  // (MTLA: complete rows and the open row's sum, through mtla_rows).
  void prefill_chunk(PagedKvCache& cache, int64_t seq, int64_t L, void* x);
  // One decode step's layers over x [B, D] for the cache's step (positions on
  // the device): capturable, no allocation or host synchronisation.
  void decode(PagedKvCache& cache, int64_t B, void* x, const int64_t* positions);

 private:
  void prefill_chunk_mtla(PagedKvCache& cache, int64_t seq, int64_t L, void* x);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace detail
}  // namespace lca::cuda
