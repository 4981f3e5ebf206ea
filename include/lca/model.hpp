// The model runtime on the CPU: decoder-only transformers whose attention runs
// through one CondensedKvCache per layer, with LCA, full attention
// (LcaParams::full()) or, for MLA models holding MTLA hyper-networks, MTLA.
// - GQA: Llama and Qwen2 (RMSNorm, half-split RoPE, SwiGLU MLP; Qwen2 adds
//   q/k/v biases).
// - MLA: DeepSeek-V2, DeepSeek-V3 and MiniCPM3, in absorbed form over the MLA
//   cache (rows [c ; k^R], queries [W_UK^T q^C ; q^R], output latents then
//   W_UV and o_proj); DeepSeek's MoE feed-forward layers (softmax or sigmoid
//   routing, group-limited selection, shared experts); MiniCPM3's scalings.
//
// Model holds the configuration and every weight as f32 in memory, in Hugging
// Face layout (linear weights [out, in]); it is loaded from a GGUF file (GQA
// only) or a Hugging Face folder (config.json + safetensors). A Sequence is one
// generation's state: its caches and its position. Matrix products go
// through BLAS (sgemm for chunks, sgemv for single tokens).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "lca/cache.hpp"
#include "lca/dtype.hpp"
#include "lca/model_config.hpp"
#include "lca/params.hpp"
#include "lca/tensor.hpp"
#include "lca/tokenizer.hpp"

namespace lca {

class GgufFile;
class Checkpoint;

// A SwiGLU feed-forward block: down(silu(gate x) * up x). Biases [0] when absent.
struct MlpWeights {
  Tensor<float> gate, up, down;     // [F, D], [F, D], [D, F]
  Tensor<float> b_gate, b_up, b_down;  // [F], [F], [D] or [0]
};

// One decoder layer. Biases and the tensors another architecture uses are
// empty (shape [0]).
struct LayerWeights {
  Tensor<float> attn_norm;           // [D]
  // GQA.
  Tensor<float> wq, wk, wv, wo;      // [Hq*hd, D], [Hkv*hd, D], [Hkv*hd, D], [D, Hq*hd]
  Tensor<float> bq, bk, bv;          // [Hq*hd], [Hkv*hd], [Hkv*hd] or [0]
  // MLA (dq = d_nope + d_rope). Queries: wq [H*dq, D] without q_lora, else
  // q_a [r_q, D] -> q_a_norm [r_q] -> q_b [H*dq, r_q]. Keys/values: kv_a
  // [d_c + d_r, D] -> [c ; k^R], kv_a_norm [d_c] on c; kv_b_proj split per head
  // into w_uk [H, d_n, d_c] and w_uv [H, d_v, d_c]; wo [D, H*d_v].
  Tensor<float> q_a, q_a_norm, q_b, kv_a, kv_a_norm, w_uk, w_uv;
  Tensor<float> b_q_a, b_kv_a, bo;   // attention_bias: [r_q], [d_c + d_r], [D] or [0]
  Tensor<float> ffn_norm;            // [D]
  Tensor<float> w_gate, w_up, w_down;  // dense feed-forward: [F, D], [F, D], [D, F]; [0] in MoE layers
  // DeepSeek MoE layers (empty otherwise): router [E, D], its score
  // correction bias [E] (DeepSeek-V3, else [0]), E experts, shared experts
  // (intermediate size moe_intermediate_size * n_shared_experts; gate [0] when none).
  Tensor<float> router, router_bias;
  std::vector<MlpWeights> experts;
  MlpWeights shared;
  // MLA with MTLA: the layer's hyper-network (self_attn.hypernet_down.fc_c/fc_p,
  // docs/mtla-checkpoints.md); rank-0 tensors when the checkpoint has none.
  MtlaHyperNet<float> mtla;
  bool is_moe() const { return !experts.empty(); }
  bool has_mtla() const { return mtla.fc_c_weight.rank() > 0; }
};

struct ModelWeights {
  Tensor<float> embed;       // [V, D]
  std::vector<LayerWeights> layers;
  Tensor<float> final_norm;  // [D]
  Tensor<float> lm_head;     // [V, D], or [0] with tied embeddings (embed is used)
};

// The ModelConfig of a GGUF file's metadata (architectures "llama" and
// "qwen2"): sizes, rope base, rms epsilon, context length; the vocabulary size
// from <arch>.vocab_size or the token embedding. Throws naming the file and key.
ModelConfig gguf_model_config(const GgufFile& file);

class Model {
 public:
  // A .gguf file, or a folder holding config.json and safetensors weights.
  static Model load(const std::string& path);
  static Model from_gguf(const GgufFile& file);
  static Model from_checkpoint(const Checkpoint& checkpoint, const ModelConfig& config);

  // Checks that the config is a supported architecture and every weight has
  // the shape it implies (throws lca::Error naming the tensor).
  Model(ModelConfig config, ModelWeights weights);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  bool has_qkv_bias() const { return weights_.layers.front().bq.numel() > 0; }
  // Every layer holds an MTLA hyper-network (an MLA checkpoint that has them).
  bool has_mtla() const { return weights_.layers.front().has_mtla(); }
  int64_t vocab_size() const { return config_.vocab_size; }
  int64_t context_length() const { return config_.max_position_embeddings; }
  const Tensor<float>& output_weight() const;  // lm_head, or embed when tied

 private:
  ModelConfig config_;
  ModelWeights weights_;
};

// The BpeVocab of a GGUF file's tokenizer.ggml.* metadata: model "gpt2"
// (byte-level BPE; tokenizer.ggml.pre names the pre-tokenizer) or "llama"
// (SentencePiece BPE, by merges or scores); control tokens (token_type 3) become
// special_ids, user-defined ones (4) user_defined_ids; bos/eos/unk ids and the
// add_bos/add_eos/add_space_prefix flags with llama.cpp's defaults.
BpeVocab gguf_bpe_vocab(const GgufFile& file);
// The tokenizer of a model path: a GGUF file's vocabulary or a folder's tokenizer.json.
Tokenizer load_tokenizer(const std::string& model_path);
// The MTLA hyper-network tensor of a layer: "model.layers.L.self_attn.hypernet_down." + part,
// part one of "fc_c.weight", "fc_c.bias", "fc_p.weight", "fc_p.bias" (docs/mtla-checkpoints.md).
std::string mtla_tensor_name(int64_t layer, const std::string& part);

// Token ids that end generation: GGUF eos (and eot) ids; a folder's
// generation_config.json "eos_token_id" (an id or a list), else config.json's.
std::vector<int64_t> load_eos_ids(const std::string& model_path);

// The architectures Model accepts (config.json names and GGUF names).
const char* supported_model_architectures();

class Sequence {
 public:
  // One cache per layer with `policy`: LcaParams (LcaParams::full() for full
  // attention; an LcaParams converts to a Policy) or MtlaParams, which needs an
  // MLA model holding MTLA hyper-networks (CondensedKvCache::mtla with each
  // layer's). Rows stored in `storage`. The model must outlive the sequence.
  Sequence(const Model& model, const Policy& policy, DType storage = DType::bf16);

  // Tokens at positions [n, n + L) (L >= 1): runs every layer, appending to
  // the caches, and returns logits [1, V] of the last position, or [L, V] of
  // every position when all_logits. Token ids and the context length are
  // checked before any cache changes; should a later step fail, the sequence
  // refuses further calls.
  Tensor<float> forward(std::span<const int64_t> tokens, bool all_logits = false);

  // Chunked prefill: forward over chunks of `chunk` tokens, calling
  // progress(done, total) after each; returns the last position's logits [1, V].
  Tensor<float> prefill(std::span<const int64_t> tokens, int64_t chunk,
                        const std::function<void(int64_t, int64_t)>& progress = {});

  int64_t tokens() const { return n_; }
  const std::vector<CondensedKvCache>& caches() const { return caches_; }
  int64_t cache_bytes() const;            // sum of the caches' bytes()
  int64_t full_cache_bytes() const;       // what full attention would hold: n rows per layer
  const Policy& policy() const { return policy_; }
  const LcaParams& params() const;  // the LCA policy; throws for MTLA

 private:
  // Every layer over hidden states x [L, D] at positions [n, n + L), in place.
  void forward_gqa(Tensor<float>& x);
  void forward_mla(Tensor<float>& x);

  const Model* model_;
  Policy policy_;
  DType storage_;
  std::vector<CondensedKvCache> caches_;
  int64_t n_ = 0;
  bool failed_ = false;  // a forward threw after changing some caches
};

}  // namespace lca
