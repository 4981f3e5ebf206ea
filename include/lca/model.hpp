// The model runtime on the CPU: Llama and Qwen2 decoder-only transformers
// (RMSNorm, GQA attention with half-split RoPE, SwiGLU MLP; Qwen2 adds q/k/v
// biases) whose attention runs through one CondensedKvCache per layer, with
// LCA or full attention (LcaParams::full()).
//
// Model holds the configuration and every weight as f32 in memory, in Hugging
// Face layout (linear weights [out, in]); it is loaded from a GGUF file or a
// Hugging Face folder (config.json + safetensors). A Sequence is one
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

// One decoder layer. Biases are empty tensors (shape [0]) when the model has none.
struct LayerWeights {
  Tensor<float> attn_norm;           // [D]
  Tensor<float> wq, wk, wv, wo;      // [Hq*hd, D], [Hkv*hd, D], [Hkv*hd, D], [D, Hq*hd]
  Tensor<float> bq, bk, bv;          // [Hq*hd], [Hkv*hd], [Hkv*hd] or [0]
  Tensor<float> ffn_norm;            // [D]
  Tensor<float> w_gate, w_up, w_down;  // [F, D], [F, D], [D, F]
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
// Token ids that end generation: GGUF eos (and eot) ids; a folder's
// generation_config.json "eos_token_id" (an id or a list), else config.json's.
std::vector<int64_t> load_eos_ids(const std::string& model_path);

// The architectures Model accepts (config.json names and GGUF names).
const char* supported_model_architectures();

class Sequence {
 public:
  // One cache per layer with `params` (LcaParams::full() for full attention),
  // rows stored in `storage`. The model must outlive the sequence.
  Sequence(const Model& model, const LcaParams& params, DType storage = DType::bf16);

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
  const LcaParams& params() const { return params_; }

 private:
  const Model* model_;
  LcaParams params_;
  DType storage_;
  std::vector<CondensedKvCache> caches_;
  int64_t n_ = 0;
  bool failed_ = false;  // a forward threw after changing some caches
};

}  // namespace lca
