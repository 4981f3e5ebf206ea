// The model runtime on the GPU for Llama and Qwen2 (GQA) and DeepSeek-V2/V3
// and MiniCPM3 (MLA; DeepSeek's MoE layers once the GPU MoE is built): bf16 weights,
// cuBLAS products, and lca's kernels for the attention (condense + prefill
// over [representatives ; raw rows], decode through PagedKvCache). Present
// only when lca is built with CUDA.
//
// GpuModel holds the weights (and an MLA checkpoint's MTLA hyper-networks);
// GpuSession a batch of sequences and their paged cache, with one attention
// policy (LCA, LcaParams::full(), or MTLA on MLA models with hyper-networks):
//   prefill(seq, tokens)   a prompt appended to a sequence (empty, or holding
//                          an earlier prefill and decode steps), in chunks of
//                          prefill_chunk tokens, each through every layer,
//                          its rows written into the paged cache;
//   decode(seqs, tokens)   one token for each of a batch of sequences; with
//                          graphs on, the step of a batch is captured once and
//                          replayed for later steps of the same batch.
// Errors (no device, out of memory, out of cache blocks, context over
// capacity, unsupported architecture) are lca::Error naming the problem.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "lca/model.hpp"
#include "lca/model_config.hpp"
#include "lca/paged_cache.hpp"
#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace lca::cuda {

class GpuModel {
 public:
  // The weights of a CPU model (Llama, Qwen2, DeepSeek-V2/V3, MiniCPM3), rounded to bf16;
  // MTLA hyper-networks, when the model holds them, in fp32 (as the CPU runtime).
  static GpuModel upload(const Model& model);
  // Random weights (uniform, scale 1/sqrt(fan-in); norms 1) at a config's
  // sizes: benchmarks at real size with no checkpoint.
  static GpuModel random(const ModelConfig& config, uint64_t seed = 1);

  GpuModel(GpuModel&&) noexcept;
  GpuModel& operator=(GpuModel&&) noexcept;
  ~GpuModel();

  const ModelConfig& config() const;
  int64_t weight_bytes() const;

 private:
  friend class GpuSession;
  struct Impl;
  explicit GpuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct GpuSessionOptions {
  // LCA, LcaParams::full() (full attention), or MtlaParams: MTLA (mtla-spec.md),
  // for MLA models holding hyper-networks (Model::has_mtla()).
  Policy attention = LcaParams{};
  int64_t max_seqs = 1;
  int64_t max_context = 0;      // 0: the model's max_position_embeddings
  // Tokens per prefill chunk: each chunk runs through every layer before the
  // next, so prefill activations are O(prefill_chunk + window + representatives)
  // rows under LCA (O(context) raw rows under full attention; MTLA: the chunk's
  // running rows and the ceil(context/s) cached ones), not O(prompt).
  // Exact under any chunking (lca-spec.md section 7, identity 3; mtla-spec.md 5.1).
  int64_t prefill_chunk = 8192;
  bool graphs = true;           // decode steps replayed from CUDA graphs
  // Batch-1 decode steps run their products through our one-row kernel, whose
  // weight loads overlap the kernel before it (programmatic dependent launch),
  // instead of cuBLAS; false: cuBLAS throughout (for comparison).
  bool one_row_products = true;
};

class GpuSession {
 public:
  GpuSession(const GpuModel& model, const GpuSessionOptions& options);
  ~GpuSession();
  GpuSession(const GpuSession&) = delete;
  GpuSession& operator=(const GpuSession&) = delete;

  int64_t add_sequence();
  void release_sequence(int64_t seq);
  int64_t tokens(int64_t seq) const;

  // Appends tokens (L >= 1) at positions [n0, n0 + L) of a sequence holding
  // n0 >= 0 tokens (a prompt, or a later turn after decode steps); returns the
  // last position's logits [1, V]. Token ids, n0 + L <= max_context and the
  // cache blocks of every chunk are checked before any change. Should a chunk
  // fail on the device, tokens(seq) counts the chunks before it, but layers
  // the failed chunk had written may hold a ring that no longer matches:
  // release such a sequence.
  Tensor<float> prefill(int64_t seq, std::span<const int64_t> tokens);
  // tokens[b] appended to seqs[b]; returns logits [B, V].
  Tensor<float> decode(std::span<const int64_t> seqs, std::span<const int64_t> tokens);
  // Benchmarks: an empty sequence set to n tokens of random cache contents
  // (what decode timing needs, without computing a prefill).
  void fill_random(int64_t seq, int64_t n, uint64_t seed = 7);

  const PagedKvCache& cache() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lca::cuda
