// The MLA architectures of the CPU runtime (DeepSeek-V2, DeepSeek-V3,
// MiniCPM3), as Hugging Face's modeling code computes them: the architecture
// as data (MlaArch, resolved once from the config), the loading of their
// weights, the MLA attention in absorbed form around the cache, and DeepSeek's
// mixture-of-experts feed-forward.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lca/model.hpp"
#include "model/layers.hpp"

namespace lca::model {

enum class MoeRouting {
  softmax_greedy,         // DeepSeek-V2 topk_method "greedy"
  softmax_group_limited,  // DeepSeek-V2 "group_limited_greedy": top experts within the topk_group best groups (by max)
  sigmoid_noaux_tc,       // DeepSeek-V3: sigmoid + correction bias, groups by their top-2 sum
};

// Everything about an MLA model that is not a weight, with Hugging Face's
// defaults filled in and checked.
struct MlaArch {
  // RoPE on the rope dims: inverse frequencies (d_r / 2), the factor on cos
  // and sin (yarn's mscale, longrope's attention factor), the pair layout.
  std::vector<double> inv_freq;
  double rope_factor = 1.0;
  bool interleaved = false;  // pairs (2j, 2j + 1) (DeepSeek), else (j, j + d_r/2)

  // MiniCPM3: embeddings * embed_scale, residual branches * residual_scale,
  // final hidden / logits_divisor (1, 1, 1 for DeepSeek).
  double embed_scale = 1.0, residual_scale = 1.0, logits_divisor = 1.0;

  // DeepSeek MoE: layers >= first_dense are MoE layers (none when experts == 0).
  int64_t experts = 0, per_token = 0, expert_size = 0, shared = 0, first_dense = 0;
  MoeRouting routing = MoeRouting::softmax_greedy;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling = 1.0;
  bool is_moe_layer(int64_t layer) const { return experts > 0 && layer >= first_dense; }
};

// Resolves and checks the config (architecture, rope scaling, MoE and MiniCPM3
// fields); throws lca::Error naming the config and the field.
MlaArch mla_arch(const ModelConfig& c);

using TensorReader = std::function<Tensor<float>(const std::string& name, const Shape& shape)>;
using TensorHas = std::function<bool(const std::string& name)>;

// Every weight of an MLA model under Hugging Face's names (per-expert MoE
// tensors, as the published checkpoints and save_pretrained write them).
ModelWeights read_mla_weights(const ModelConfig& c, const MlaArch& arch, const TensorReader& read,
                              const TensorHas& has);
// Throws naming the tensor whose shape the config does not imply.
void check_mla_weights(const ModelConfig& c, const MlaArch& arch, const ModelWeights& w);

// cos/sin of positions [start, start + len) for the given inverse frequencies, times `factor`.
RopeTable rope_table(int64_t start, int64_t len, const std::vector<double>& inv_freq, double factor);

// The cache rows [L, d_c + d_r] = [kv_a_norm(c) ; rotated k^R] and the absorbed
// queries [L, H, d_c + d_r] = [W_UK^T q^C ; rotated q^R] of normed hidden states h [L, D].
void mla_rows_and_queries(const ModelConfig& c, const MlaArch& arch, const LayerWeights& lw, const float* h,
                          int64_t L, const RopeTable& rope, Tensor<float>& rows, Tensor<float>& q_abs);

// o_proj(W_UV[h] latent_h for every head): latents [L, H, d_c] -> out [L, D].
void mla_output(const ModelConfig& c, const LayerWeights& lw, const Tensor<float>& latents, float* out);

// out [rows, D] = down(silu(gate h) * up h) (+ biases, each empty or [0] when absent).
void mlp(const Tensor<float>& gate, const Tensor<float>& up, const Tensor<float>& down, const Tensor<float>& b_gate,
         const Tensor<float>& b_up, const Tensor<float>& b_down, const float* h, int64_t rows, float* out);
inline void mlp(const MlpWeights& w, const float* h, int64_t rows, float* out) {
  mlp(w.gate, w.up, w.down, w.b_gate, w.b_up, w.b_down, h, rows, out);
}

// DeepSeek's MoE layer: routed experts weighted by the router plus the shared experts.
void moe(const MlaArch& arch, const LayerWeights& lw, const float* h, int64_t rows, int64_t d, float* out);

}  // namespace lca::model
