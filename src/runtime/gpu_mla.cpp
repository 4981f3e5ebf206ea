// DeepSeek-V2/V3 and MiniCPM3 on the GPU runtime (runtime/gpu_mla.hpp), the
// function the CPU runtime computes (model/mla.cpp, Sequence::forward_mla)
// with bf16 weights and activations:
//   h = rms_norm(x); q = q_b(q_a_norm(q_a h)) or wq h; [c ; k^R] = kv_a h,
//   c = kv_a_norm(c), k^R and q^R rotated (the arch's inv_freq, factor, pair
//   layout); attention; x += residual_scale (o_proj(W_UV latents) + bo);
//   x += residual_scale mlp(rms_norm(x)) (or DeepSeek's MoE).
// Prefill, chunk by chunk (runtime/prefill_chunks.hpp): summary queries
// sum_h W_UK[h]^T q^C_h in one product (W_UK laid out beside zero rows for the
// rope dims of q), condense on the latents (the cached raw rows and the
// chunk's), then the prefill kernel on decompressed keys and values
// (representatives and raw rows alike). Decode: absorbed queries into PagedKvCache::decode_layer.
#include "runtime/gpu_mla.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "cuda/decode.hpp"
#include "cuda/model_ops.hpp"
#include "lca/cuda.hpp"
#include "lca/error.hpp"
#include "lca/paged_cache.hpp"
#include "runtime/gpu_moe.hpp"

#include "runtime/cublas_ok.hpp"

namespace lca::cuda::detail {
namespace {

// The q_a/kv_a layernorms' epsilon: DeepseekV2RMSNorm's default, not rms_norm_eps (as model/mla.cpp).
constexpr double kLatentNormEps = 1e-6;

bool has_moe_layers(const ModelConfig& c, const model::MlaArch& arch) {
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (arch.is_moe_layer(l)) return true;
  return false;
}

// Element e of a bf16 array.
void* bf(void* p, int64_t e) { return static_cast<char*>(p) + e * 2; }
const void* bf(const void* p, int64_t e) { return static_cast<const char*>(p) + e * 2; }

// W_UK [H, dn, dc] laid out as [H * (dn + dr), dc] with zero rows at each head's
// rope dims: q [N, H * dq] times it is sum_h W_UK[h]^T q^C_h, one product.
DeviceArray summary_weight(const DeviceArray& w_uk, int64_t H, int64_t dn, int64_t dr, int64_t dc) {
  const char* where = "GpuModel (MLA summary weight)";
  DeviceArray a("the MLA summary weight", H * (dn + dr) * dc * 2);
  LCA_CUDA_OK(where, cudaMemset(a.as(), 0, static_cast<size_t>(a.bytes())));
  LCA_CUDA_OK(where, cudaMemcpy2D(a.as(), static_cast<size_t>((dn + dr) * dc * 2), w_uk.as(),
                                  static_cast<size_t>(dn * dc * 2), static_cast<size_t>(dn * dc * 2),
                                  static_cast<size_t>(H), cudaMemcpyDeviceToDevice));
  return a;
}

DeviceArray upload_inv_freq(const std::vector<double>& inv_freq) {
  DeviceArray a("rope inverse frequencies", static_cast<int64_t>(inv_freq.size()) * 8);
  LCA_CUDA_OK("GpuModel", cudaMemcpy(a.as(), inv_freq.data(), inv_freq.size() * 8, cudaMemcpyHostToDevice));
  return a;
}

}  // namespace

void check_mla(const char* where, const ModelConfig& c) {
  const model::MlaArch arch = model::mla_arch(c);  // throws naming the config field at fault
  const MlaDims& m = c.mla;
  LCA_CHECK(prefill_supports(m.d_nope + m.d_rope, m.d_v), where, ": ", c.architecture, " head dims (d_qk = ",
            "qk_nope_head_dim + qk_rope_head_dim = ", m.d_nope + m.d_rope, ", v_head_dim ", m.d_v,
            ") are not built for the GPU prefill kernel; built (d_qk, d_v): (96, 64) as MiniCPM3, (192, 128) as "
            "DeepSeek-V2/V3, (64, 64), (128, 128)");
  LCA_CHECK(decode_supports(true, m.row_width(), m.d_latent), where, ": ", c.architecture, " kv_lora_rank ",
            m.d_latent, " with qk_rope_head_dim ", m.d_rope,
            " is not built for the GPU decode kernels; built: (512, 64) as DeepSeek-V2/V3, (256, 32) as MiniCPM3");
  LCA_CHECK(c.hidden_size % 8 == 0 && c.intermediate_size % 2 == 0, where,
            ": hidden_size must be a multiple of 8 and intermediate_size even");
}

std::unique_ptr<MlaWeights> upload_mla(const Model& model) {
  const ModelConfig& c = model.config();
  const int64_t D = c.hidden_size, H = c.mla.heads;
  auto w = std::make_unique<MlaWeights>();
  w->arch = model::mla_arch(c);
  auto up = [&](const char* what, const Tensor<float>& t) {
    if (t.numel() == 0) return DeviceArray();
    DeviceArray a = upload_bf16(what, t);
    w->bytes += a.bytes();
    return a;
  };
  for (const LayerWeights& lw : model.weights().layers) {
    MlaLayerArrays a;
    a.attn_norm = up("input_layernorm", lw.attn_norm);
    const Tensor<float>& wq = c.q_lora_rank ? lw.q_a : lw.wq;
    expect_shape("GpuModel::upload", c.q_lora_rank ? "q_a_proj" : "q_proj", wq,
                 {c.q_lora_rank.value_or(H * (c.mla.d_nope + c.mla.d_rope)), D});
    expect_shape("GpuModel::upload", "kv_a_proj_with_mqa", lw.kv_a, {c.mla.d_latent + c.mla.d_rope, D});
    a.q_kv_a = upload_bf16_rows(c.q_lora_rank ? "q_a_proj and kv_a_proj_with_mqa" : "q_proj and kv_a_proj_with_mqa",
                                wq, lw.kv_a);
    w->bytes += a.q_kv_a.bytes();
    if (c.q_lora_rank) {
      a.b_q_a = up("q_a_proj bias", lw.b_q_a);
      a.q_a_norm = up("q_a_layernorm", lw.q_a_norm);
      a.q_b = up("q_b_proj", lw.q_b);
    }
    a.b_kv_a = up("kv_a_proj_with_mqa bias", lw.b_kv_a);
    a.kv_a_norm = up("kv_a_layernorm", lw.kv_a_norm);
    a.w_uk = up("kv_b_proj (W_UK)", lw.w_uk);
    a.w_uv = up("kv_b_proj (W_UV)", lw.w_uv);
    a.w_uk_sum = summary_weight(a.w_uk, H, c.mla.d_nope, c.mla.d_rope, c.mla.d_latent);
    w->bytes += a.w_uk_sum.bytes();
    a.wo = up("o_proj", lw.wo);
    a.bo = up("o_proj bias", lw.bo);
    a.ffn_norm = up("post_attention_layernorm", lw.ffn_norm);
    if (lw.is_moe()) {
      a.moe = std::make_shared<const GpuMoe>(GpuMoe::upload(w->arch, lw, D));
      w->bytes += a.moe->weight_bytes();
    } else {
      a.w_gate_up = upload_bf16_rows("gate_proj and up_proj", lw.w_gate, lw.w_up);
      w->bytes += a.w_gate_up.bytes();
      a.w_down = up("down_proj", lw.w_down);
    }
    w->layers.push_back(std::move(a));
  }
  w->inv_freq = upload_inv_freq(w->arch.inv_freq);
  // The summary weights were laid out on the legacy stream; sessions run on their own.
  LCA_CUDA_OK("GpuModel::upload", cudaDeviceSynchronize());
  return w;
}

std::unique_ptr<MlaWeights> random_mla(const ModelConfig& c, uint64_t seed) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.mla.heads;
  const int64_t dn = c.mla.d_nope, dr = c.mla.d_rope, dc = c.mla.d_latent, dv = c.mla.d_v, dq = dn + dr;
  auto w = std::make_unique<MlaWeights>();
  w->arch = model::mla_arch(c);
  uint64_t s = seed;
  auto rnd = [&](const char* what, int64_t n, double fan_in) {
    DeviceArray a(what, n * 2);
    fill_uniform(a.as(), n, static_cast<float>(1.0 / std::sqrt(fan_in)), s++ * 0x2545F4914F6CDD1Dull, nullptr);
    w->bytes += a.bytes();
    return a;
  };
  auto ones = [&](const char* what, int64_t n) {
    DeviceArray a = upload_bf16(what, Tensor<float>({n}, 1.f));
    w->bytes += a.bytes();
    return a;
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MlaLayerArrays a;
    a.attn_norm = ones("input_layernorm", D);
    a.q_kv_a = rnd("q_proj (q_a_proj) and kv_a_proj_with_mqa", (c.q_lora_rank.value_or(H * dq) + dc + dr) * D, D);
    if (c.q_lora_rank) {
      const int64_t r = *c.q_lora_rank;
      if (c.attention_bias) a.b_q_a = rnd("q_a_proj bias", r, 64);
      a.q_a_norm = ones("q_a_layernorm", r);
      a.q_b = rnd("q_b_proj", H * dq * r, r);
    }
    if (c.attention_bias) a.b_kv_a = rnd("kv_a_proj_with_mqa bias", dc + dr, 64);
    a.kv_a_norm = ones("kv_a_layernorm", dc);
    a.w_uk = rnd("kv_b_proj (W_UK)", H * dn * dc, dc);
    a.w_uv = rnd("kv_b_proj (W_UV)", H * dv * dc, dc);
    a.w_uk_sum = summary_weight(a.w_uk, H, dn, dr, dc);
    w->bytes += a.w_uk_sum.bytes();
    a.wo = rnd("o_proj", D * H * dv, H * dv);
    if (c.attention_bias) a.bo = rnd("o_proj bias", D, 64);
    a.ffn_norm = ones("post_attention_layernorm", D);
    if (w->arch.is_moe_layer(l)) {
      a.moe = std::make_shared<const GpuMoe>(GpuMoe::random(w->arch, D, s++ * 0x2545F4914F6CDD1Dull));
      w->bytes += a.moe->weight_bytes();
    } else {
      a.w_gate_up = rnd("gate_proj and up_proj", 2 * F * D, D);
      a.w_down = rnd("down_proj", D * F, F);
    }
    w->layers.push_back(std::move(a));
  }
  w->inv_freq = upload_inv_freq(w->arch.inv_freq);
  LCA_CUDA_OK("GpuModel::random", cudaDeviceSynchronize());
  return w;
}

void upload_mtla(const Model& model, MlaWeights& w) {
  if (!model.has_mtla()) return;
  const int64_t dc = model.config().mla.d_latent;
  w.mtla_hyper_floats = 2 * (dc / 4 * dc + dc / 4);
  std::vector<float> packed;
  packed.reserve(static_cast<size_t>(w.mtla_hyper_floats * model.config().num_hidden_layers));
  for (const LayerWeights& lw : model.weights().layers) {
    lw.mtla.validate(model.config().mla);
    w.mtla_hyper.push_back(lw.mtla);
    for (const Tensor<float>* part : {&lw.mtla.fc_c_weight, &lw.mtla.fc_c_bias, &lw.mtla.fc_p_weight,
                                      &lw.mtla.fc_p_bias})
      packed.insert(packed.end(), part->data(), part->data() + part->numel());
  }
  w.mtla_hyper_packed = DeviceArray("the MTLA hyper-networks", static_cast<int64_t>(packed.size()) * 4);
  LCA_CUDA_OK("GpuModel::upload", cudaMemcpy(w.mtla_hyper_packed.as(), packed.data(), packed.size() * 4,
                                             cudaMemcpyHostToDevice));
  w.bytes += w.mtla_hyper_packed.bytes();
}

// ---- A session's layers ------------------------------------------------------------------

struct MlaLayers::Impl {
  const ModelConfig* c = nullptr;
  const MlaWeights* w = nullptr;
  GpuSessionOptions opt;
  bool decoding = false;  // in decode(): products of one row go to decode_linear (opt.one_row_products)
  LcaParams lca;          // the LCA policy, LcaParams::full() for full attention and MTLA
  MtlaParams mtla;        // MTLA's, when mtla_s > 0
  int64_t mtla_s = 0;     // MTLA's down rate; 0: LCA or full attention
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int64_t D = 0, F = 0, H = 0, dn = 0, dr = 0, dc = 0, dv = 0, dq = 0, width = 0, r = 0;
  float residual_scale = 1.f;
  std::shared_ptr<MoeWorkspace> moe_ws;
  // Decode buffers, max_seqs rows each.
  DeviceArray h, q, qa, qn, kv, rows, q_abs, lat, heads, gate, up;
  DeviceArray joint;  // [max_seqs, q_columns() + width]: the q (or q_a) and kv_a products of one GEMM
  // One prefill call's buffers (rows: tokens, raw, representatives and summaries of its plan).
  struct PrefillBuffers {
    DeviceArray h, q, qa, qn, kv, o, gate, up;                    // the chunk's tokens
    DeviceArray rows, latent, rope_key, k, v;                     // raw rows, cached then own
    DeviceArray sum;                                              // summaries, ring then own
    DeviceArray rep_rows, rep_latent, rep_rope, rep_k, rep_v;     // representatives, cached then new
    DeviceArray run_rows, merge_weights, open_in, open_out;       // MTLA: running rows, w_i, open-row sums
  };
  std::unique_ptr<PrefillBuffers> pb;

  const model::MlaArch& arch() const { return w->arch; }

  // Y [M, N] = alpha X [M, K] W^T + beta Y with W [N, K] (w_nk), else alpha X W + beta Y with
  // W [K, N]; row-major with leading dims; `batch` products, element strides (0: shared).
  void gemm(int64_t M, int64_t N, int64_t K, const void* X, int64_t ldx, int64_t sx, const void* W, bool w_nk,
            int64_t ldw, int64_t sw, void* Y, int64_t ldy, int64_t sy, int64_t batch, float alpha, float beta,
            bool y_f32 = false) {
    if (M == 0) return;
    if (decoding && opt.one_row_products && M == 1) {  // a batch-1 decode step
      const LinearBatch lb{batch, sx, sw, sy};
      const WeightLayout layout = w_nk ? WeightLayout::nk : WeightLayout::kn;
      if (ldw == (w_nk ? K : N) && decode_linear_fits(layout, M, N, K, X, W, lb))
        return decode_linear(layout, N, K, X, W, Y, alpha, beta, y_f32, stream, lb);
    }
    LCA_CUBLAS_OK("GpuSession (MLA)",
                  cublasGemmStridedBatchedEx(blas, w_nk ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(N),
                                             static_cast<int>(M), static_cast<int>(K), &alpha, W, CUDA_R_16BF,
                                             static_cast<int>(ldw), sw, X, CUDA_R_16BF, static_cast<int>(ldx), sx,
                                             &beta, Y, y_f32 ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(ldy), sy,
                                             static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  // Y [M, N] = alpha X [M, K] W [N, K]^T + beta Y, contiguous.
  void linear(int64_t M, int64_t N, int64_t K, const void* X, const void* W, void* Y, float alpha = 1.f,
              float beta = 0.f) {
    gemm(M, N, K, X, K, 0, W, true, K, 0, Y, N, 0, 1, alpha, beta);
  }
  void linear(int64_t M, int64_t N, int64_t K, const void* X, const DeviceArray& W, void* Y, float alpha = 1.f,
              float beta = 0.f) {
    linear(M, N, K, X, W.as(), Y, alpha, beta);
  }

  // The q (or q_a) columns of the joint projection q_kv_a; its kv_a rows follow.
  int64_t q_columns() const { return r > 0 ? r : H * dq; }
  // joint [n, q_columns() + width] = h [n, D] [q or q_a ; kv_a]^T: one GEMM for
  // both projections (decode; its rows are read in place with their stride).
  void joint_projection(const MlaLayerArrays& L, const void* hs, int64_t n, void* joint) {
    linear(n, q_columns() + width, D, hs, L.q_kv_a, joint);
  }

  // q [n, H, dq] (rope dims not yet rotated) of normed hidden states h [n, D].
  // With q_lora and joint given (joint_projection's, row stride ld), q_a is
  // read there instead of projected into qa_buf.
  void queries(const MlaLayerArrays& L, const void* hs, int64_t n, void* q_out, void* qa_buf, void* qn_buf,
               void* joint = nullptr, int64_t ld = 0) {
    if (r > 0) {
      void* qa = joint != nullptr ? joint : qa_buf;
      if (joint == nullptr) {
        linear(n, r, D, hs, L.q_kv_a.as(), qa_buf);
        ld = r;
      }
      if (L.b_q_a) add_bias(qa, L.b_q_a.as(), n, r, 1.f, stream, ld);
      rms_norm(qa, L.q_a_norm.as(), n, r, kLatentNormEps, qn_buf, stream, ld);
      linear(n, H * dq, r, qn_buf, L.q_b, q_out);
    } else {
      linear(n, H * dq, D, hs, L.q_kv_a.as(), q_out);
    }
  }

  // The cache rows [n, dc + dr] of h [n, D] (and the latents and rope keys apart, when given),
  // at positions positions[i] (positions null: start + i).
  void latent_rows(const MlaLayerArrays& L, const void* hs, int64_t n, const int64_t* positions, int64_t start,
                   void* kv_buf, void* rows_out, void* latent, void* rope_key) {
    linear(n, width, D, hs, bf(L.q_kv_a.as(), q_columns() * D), kv_buf);
    mla_kv_rows(kv_buf, L.b_kv_a.as(), L.kv_a_norm.as(), kLatentNormEps, n, dc, dr, positions, start,
                w->inv_freq.as<double>(), arch().rope_factor, arch().interleaved, rows_out, latent, rope_key, stream);
  }

  // Decompressed keys k [n, H, dq] = [W_UK[h] c ; k^R] and values v [n, H * dv] = W_UV[h] c.
  void decompress(const MlaLayerArrays& L, const void* latent, const void* rope_key, int64_t n, void* k, void* v) {
    gemm(n, dn, dc, latent, dc, 0, L.w_uk.as(), true, dc, dn * dc, k, H * dq, dq, H, 1.f, 0.f);
    rope_keys_to_heads(rope_key, n, H, dn, dr, k, stream);
    linear(n, H * dv, dc, latent, L.w_uv, v);
  }

  // x [n, D] += residual_scale (o_proj(heads [n, H * dv]) + bo).
  void attention_out(const MlaLayerArrays& L, const void* heads_in, int64_t n, void* x) {
    linear(n, D, H * dv, heads_in, L.wo, x, residual_scale, 1.f);
    if (L.bo) add_bias(x, L.bo.as(), n, D, residual_scale, stream);
  }

  // x [n, D] += residual_scale ffn(rms_norm(x)), in chunks of `chunk` rows.
  // gate_up_buf: [chunk, 2F]; act_buf: [chunk, F].
  void ffn(const MlaLayerArrays& L, void* x, void* hs, int64_t n, void* gate_up_buf, void* act_buf, int64_t chunk) {
    rms_norm(x, L.ffn_norm.as(), n, D, c->rms_norm_eps, hs, stream);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t rows_n = std::min(chunk, n - r0);
      const void* hr = bf(static_cast<const void*>(hs), r0 * D);
      void* xr = bf(x, r0 * D);
      if (L.moe) {  // DeepSeek: residual_scale is 1
        L.moe->forward(hr, rows_n, xr, *moe_ws, stream, blas, decoding && opt.one_row_products);
      } else {
        linear(rows_n, 2 * F, D, hr, L.w_gate_up, gate_up_buf);
        swiglu(gate_up_buf, rows_n, F, act_buf, stream);
        linear(rows_n, D, F, act_buf, L.w_down, xr, residual_scale, 1.f);
      }
    }
  }
};

MlaLayers::MlaLayers(const ModelConfig& c, const MlaWeights& w, const GpuSessionOptions& opt, cudaStream_t stream,
                     cublasHandle_t blas)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.c = &c, s.w = &w, s.opt = opt, s.stream = stream, s.blas = blas;
  s.lca = lca_part(opt.attention);
  if (const MtlaParams* p = std::get_if<MtlaParams>(&opt.attention)) {
    LCA_CHECK(!w.mtla_hyper.empty(), "MlaLayers: MTLA needs the model's hyper-networks (GpuSession checks this)");
    s.mtla = *p, s.mtla_s = p->down_rate;
  }
  s.D = c.hidden_size, s.F = c.intermediate_size, s.H = c.mla.heads;
  s.dn = c.mla.d_nope, s.dr = c.mla.d_rope, s.dc = c.mla.d_latent, s.dv = c.mla.d_v;
  s.dq = s.dn + s.dr, s.width = s.dc + s.dr, s.r = c.q_lora_rank.value_or(0);
  s.residual_scale = static_cast<float>(w.arch.residual_scale);
  const int64_t B = opt.max_seqs;
  s.h = DeviceArray("MLA decode activations", B * s.D * 2);
  s.q = DeviceArray("MLA decode queries", B * s.H * s.dq * 2);
  s.qa = DeviceArray("MLA decode q_a", B * std::max<int64_t>(s.r, 1) * 2);
  s.qn = DeviceArray("MLA decode q_a_norm", B * std::max<int64_t>(s.r, 1) * 2);
  s.kv = DeviceArray("MLA decode kv_a", B * s.width * 2);
  s.joint = DeviceArray("MLA decode q and kv_a products", B * (s.q_columns() + s.width) * 2);
  s.rows = DeviceArray("MLA decode cache rows", B * s.width * 2);
  s.q_abs = DeviceArray("MLA decode absorbed queries", B * s.H * s.width * 2);
  s.lat = DeviceArray("MLA decode output latents", B * s.H * s.dc * 2);
  s.heads = DeviceArray("MLA decode head outputs", B * s.H * s.dv * 2);
  s.gate = DeviceArray("MLA decode MLP", B * 2 * s.F * 2);
  s.up = DeviceArray("MLA decode MLP", B * s.F * 2);
  // From 2048 rows (prefill chunks) the experts' products go to cuBLAS, one
  // GEMM per expert: bench_moe_kernels (H100) measured 2.4x the grouped
  // mma.sync kernel at 8192 rows, parity at 2048, and the grouped kernel
  // ahead below (2.3x at 512 rows; decode steps stay in it, capturable).
  constexpr int64_t kMoeBlasMinRows = 2048;
  if (has_moe_layers(c, w.arch))
    s.moe_ws = std::make_shared<MoeWorkspace>(w.arch, s.D, std::max(opt.prefill_chunk, B), kMoeBlasMinRows);
}

MlaLayers::~MlaLayers() = default;

void MlaLayers::begin_prefill(const PrefillPlan& plan) {
  Impl& s = *impl_;
  s.pb.reset();  // a failed call's buffers, if any, first
  auto b = std::make_unique<Impl::PrefillBuffers>();
  const int64_t c = plan.chunk, raw = plan.raw, reps = std::max<int64_t>(plan.reps, 1);
  const int64_t H = s.H, dq = s.dq, dv = s.dv, r = std::max<int64_t>(s.r, 1);
  b->h = DeviceArray("prefill activations", c * s.D * 2);
  b->q = DeviceArray("prefill queries", c * H * dq * 2);
  b->qa = DeviceArray("prefill q_a", c * r * 2);
  b->qn = DeviceArray("prefill q_a_norm", c * r * 2);
  b->kv = DeviceArray("prefill kv_a", c * s.width * 2);
  b->o = DeviceArray("prefill attention outputs", c * H * dv * 2);
  b->gate = DeviceArray("prefill MLP", c * 2 * s.F * 2);
  b->up = DeviceArray("prefill MLP", c * s.F * 2);
  b->rows = DeviceArray("prefill raw rows", raw * s.width * 2);
  b->latent = DeviceArray("prefill latents", raw * s.dc * 2);
  b->rope_key = DeviceArray("prefill rope keys", raw * s.dr * 2);
  b->k = DeviceArray("prefill decompressed keys", raw * H * dq * 2);
  b->v = DeviceArray("prefill decompressed values", raw * H * dv * 2);
  const int64_t sw = s.lca.is_full() ? 0 : (s.lca.score == ScoreMode::full ? s.width : s.dc);
  b->sum = DeviceArray("summary queries", plan.summaries * sw * 4);
  b->rep_rows = DeviceArray("representative rows", reps * s.width * 2);
  b->rep_latent = DeviceArray("representative latents", reps * s.dc * 2);
  b->rep_rope = DeviceArray("representative rope keys", reps * s.dr * 2);
  b->rep_k = DeviceArray("representative keys", reps * H * dq * 2);
  b->rep_v = DeviceArray("representative values", reps * H * dv * 2);
  if (s.mtla_s > 0) {
    b->run_rows = DeviceArray("MTLA running rows", c * s.width * 2);
    b->merge_weights = DeviceArray("MTLA merge weights", c * 4);
    b->open_in = DeviceArray("MTLA open-row sum", s.dc * 4);
    b->open_out = DeviceArray("MTLA open-row sum", s.dc * 4);
  }
  s.pb = std::move(b);
}

void MlaLayers::end_prefill() { impl_->pb.reset(); }

void MlaLayers::prefill_chunk(PagedKvCache& cache, int64_t seq, int64_t L, void* x) {
  Impl& s = *impl_;
  LCA_CHECK(s.pb != nullptr, "MlaLayers::prefill_chunk: no prefill begun (begin_prefill)");
  if (s.mtla_s > 0) return prefill_chunk_mtla(cache, seq, L, x);
  Impl::PrefillBuffers& b = *s.pb;
  const LcaParams& p = s.lca;
  const bool lca = !p.is_full();
  const int64_t D = s.D, H = s.H, dn = s.dn, dr = s.dr, dc = s.dc, dv = s.dv, dq = s.dq, width = s.width;
  const int64_t sw = cache.summary_width();
  const ChunkSpan ch(cache.tokens(seq), L, p);
  const double scale = s.c->softmax_scale();
  cudaStream_t st = s.stream;
  // The chunk's own rows, latents and rope keys follow the cached raw ones.
  void* rows_own = bf(b.rows.as(), ch.cached * width);
  void* latent_own = bf(b.latent.as(), ch.cached * dc);
  void* rope_own = bf(b.rope_key.as(), ch.cached * dr);
  float* sum_own = lca ? b.sum.as<float>() + ch.ring0 * sw : nullptr;
  for (size_t l = 0; l < s.w->layers.size(); ++l) {
    const MlaLayerArrays& W = s.w->layers[l];
    rms_norm(x, W.attn_norm.as(), L, D, s.c->rms_norm_eps, b.h.as(), st);
    s.queries(W, b.h.as(), L, b.q.as(), b.qa.as(), b.qn.as());
    s.latent_rows(W, b.h.as(), L, nullptr, ch.n0, b.kv.as(), rows_own, latent_own, rope_own);
    float* sum_rope = lca && p.score == ScoreMode::full ? sum_own + dc : nullptr;
    mla_rope_queries(b.q.as(), L, H, dn, dr, nullptr, ch.n0, s.w->inv_freq.as<double>(), s.arch().rope_factor,
                     s.arch().interleaved, nullptr, 0, sum_rope, sw, st);
    // The cache as the chunk finds it: representatives [0, m0), raw rows
    // [raw_start, n0) before the chunk's own, ring into sum [0, ring0).
    cache.read_layer_device(seq, static_cast<int64_t>(l), b.rep_rows.as(), b.rows.as(), b.sum.as<float>(), nullptr,
                            st);
    copy_columns(b.rows.as(), width, 0, ch.cached, dc, b.latent.as(), st);
    copy_columns(b.rows.as(), width, dc, ch.cached, dr, b.rope_key.as(), st);
    copy_columns(b.rep_rows.as(), width, 0, ch.m0, dc, b.rep_latent.as(), st);
    copy_columns(b.rep_rows.as(), width, dc, ch.m0, dr, b.rep_rope.as(), st);
    if (lca) {
      // Head-summed absorbed queries [L, dc] (fp32) into the summary's latent columns.
      s.gemm(L, dc, H * dq, b.q.as(), H * dq, 0, W.w_uk_sum.as(), false, dc, 0, sum_own, sw, 0, 1, 1.f, 0.f, true);
      CondenseMlaArgs ca;  // groups [m0, m1) into representatives [m0, m1)
      ca.latent = b.latent.as(), ca.rope_key = b.rope_key.as(), ca.summary = b.sum.as<float>();
      ca.rep_latent = bf(b.rep_latent.as(), ch.m0 * dc), ca.rep_rope_key = bf(b.rep_rope.as(), ch.m0 * dr);
      ca.kv_start = ch.raw_start, ca.kv_len = ch.raw_len;
      ca.sum_start = ch.n0 - ch.ring0, ca.sum_len = ch.summaries();
      ca.first = ch.m0, ca.count = ch.m1 - ch.m0;
      ca.heads = H, ca.d_latent = dc, ca.d_rope = dr;
      ca.scale = scale;
      ca.dtype = DType::bf16;
      ca.params = p;
      condense_groups_mla(ca, st);
      pack_mla_rows(ca.rep_latent, ca.rep_rope_key, ch.m1 - ch.m0, dc, dr, bf(b.rep_rows.as(), ch.m0 * width), st);
    }
    // Per-head keys and values of every representative and raw row the chunk sees.
    if (ch.m1 > 0) s.decompress(W, b.rep_latent.as(), b.rep_rope.as(), ch.m1, b.rep_k.as(), b.rep_v.as());
    s.decompress(W, b.latent.as(), b.rope_key.as(), ch.raw_len, b.k.as(), b.v.as());
    PrefillArgs a;
    a.q = b.q.as(), a.k = b.k.as(), a.v = b.v.as(), a.rep_k = b.rep_k.as(), a.rep_v = b.rep_v.as(), a.out = b.o.as();
    a.q_len = L, a.q_start = ch.n0;
    a.raw_len = ch.raw_len, a.raw_start = ch.raw_start;
    a.reps = ch.m1;
    a.q_heads = a.kv_heads = H, a.d_qk = dq, a.d_v = dv;
    a.scale = scale;
    a.dtype = DType::bf16;
    a.params = p;
    lca_prefill(a, st);
    // Back into the cache: representatives [m0, m1), raw rows [new_raw, n1), the ring of n1.
    cache.write_extend_device(seq, static_cast<int64_t>(l), bf(b.rep_rows.as(), ch.m0 * width),
                              bf(b.rows.as(), (ch.new_raw - ch.raw_start) * width),
                              lca ? b.sum.as<float>() + ch.ring1_offset() * sw : nullptr, nullptr, st);
    s.attention_out(W, b.o.as(), L, x);
    s.ffn(W, x, b.h.as(), L, b.gate.as(), b.up.as(), L);
  }
}

// MTLA (mtla-spec.md): per layer, the chunk's rows [c ; k^R] -> mtla_rows
// (merge weights; running rows, one per position; the complete rows of the
// chunks that close in it, after the floor(n0/s) cached ones; the row open at
// n0 continued from the cache's fp32 sum) -> the prefill kernel with MTLA's
// visibility over the complete rows ("representatives") and the running rows
// ("raw", each query its own), both decompressed -> the cache's rows
// [floor(n0/s), ceil(n1/s)) and the open row's sum written back.
void MlaLayers::prefill_chunk_mtla(PagedKvCache& cache, int64_t seq, int64_t L, void* x) {
  Impl& s = *impl_;
  Impl::PrefillBuffers& b = *s.pb;
  const int64_t D = s.D, H = s.H, dn = s.dn, dr = s.dr, dc = s.dc, dv = s.dv, dq = s.dq, width = s.width;
  const int64_t rate = s.mtla_s, n0 = cache.tokens(seq), n1 = n0 + L;
  const int64_t complete0 = n0 / rate, complete1 = n1 / rate;  // complete rows before and after the chunk
  const bool open1 = n1 % rate != 0;                            // a row stays open at n1 (row complete1)
  const double scale = s.c->softmax_scale();
  cudaStream_t st = s.stream;
  for (size_t l = 0; l < s.w->layers.size(); ++l) {
    const MlaLayerArrays& W = s.w->layers[l];
    rms_norm(x, W.attn_norm.as(), L, D, s.c->rms_norm_eps, b.h.as(), st);
    s.queries(W, b.h.as(), L, b.q.as(), b.qa.as(), b.qn.as());
    s.latent_rows(W, b.h.as(), L, nullptr, n0, b.kv.as(), b.rows.as(), b.latent.as(), b.rope_key.as());
    mla_rope_queries(b.q.as(), L, H, dn, dr, nullptr, n0, s.w->inv_freq.as<double>(), s.arch().rope_factor,
                     s.arch().interleaved, nullptr, 0, nullptr, 0, st);
    // The cache's ceil(n0/s) rows (the open one, if any, is rewritten below) and its open sum.
    cache.read_layer_device(seq, static_cast<int64_t>(l), b.rep_rows.as(), nullptr, nullptr, b.open_in.as<float>(),
                            st);
    MtlaRowsArgs r;
    r.rows = b.rows.as();
    r.hyper = s.w->mtla_hyper_packed.as<float>() + static_cast<int64_t>(l) * s.w->mtla_hyper_floats;
    r.open_in = b.open_in.as<float>(), r.open_out = b.open_out.as<float>();
    r.weights = b.merge_weights.as<float>();
    r.running = b.run_rows.as();
    r.complete = bf(b.rep_rows.as(), complete0 * width);
    r.start = n0, r.len = L, r.d_latent = dc, r.d_rope = dr;
    r.dtype = DType::bf16;
    r.params = s.mtla;
    mtla_rows(r, st);
    // The row open at n1 is the last position's running row (the rounding of open_out, its rope key).
    if (open1)
      LCA_CUDA_OK("GpuSession (MTLA prefill)",
                  cudaMemcpyAsync(bf(b.rep_rows.as(), complete1 * width), bf(b.run_rows.as(), (L - 1) * width),
                                  static_cast<size_t>(width * 2), cudaMemcpyDeviceToDevice, st));
    copy_columns(b.rep_rows.as(), width, 0, complete1, dc, b.rep_latent.as(), st);
    copy_columns(b.rep_rows.as(), width, dc, complete1, dr, b.rep_rope.as(), st);
    copy_columns(b.run_rows.as(), width, 0, L, dc, b.latent.as(), st);
    copy_columns(b.run_rows.as(), width, dc, L, dr, b.rope_key.as(), st);
    if (complete1 > 0) s.decompress(W, b.rep_latent.as(), b.rep_rope.as(), complete1, b.rep_k.as(), b.rep_v.as());
    s.decompress(W, b.latent.as(), b.rope_key.as(), L, b.k.as(), b.v.as());
    PrefillArgs a;
    a.q = b.q.as(), a.k = b.k.as(), a.v = b.v.as(), a.rep_k = b.rep_k.as(), a.rep_v = b.rep_v.as(), a.out = b.o.as();
    a.q_len = L, a.q_start = n0;
    a.raw_len = L, a.raw_start = n0;
    a.reps = complete1;
    a.q_heads = a.kv_heads = H, a.d_qk = dq, a.d_v = dv;
    a.scale = scale;
    a.dtype = DType::bf16;
    a.mtla_down_rate = rate;
    lca_prefill(a, st);
    cache.write_extend_device(seq, static_cast<int64_t>(l), bf(b.rep_rows.as(), complete0 * width), nullptr, nullptr,
                              open1 ? b.open_out.as<float>() : nullptr, st);
    s.attention_out(W, b.o.as(), L, x);
    s.ffn(W, x, b.h.as(), L, b.gate.as(), b.up.as(), L);
  }
}

void MlaLayers::decode(PagedKvCache& cache, int64_t B, void* x, const int64_t* positions) {
  Impl& s = *impl_;
  const DecodingScope scope(s.decoding);
  const int64_t H = s.H, dn = s.dn, dr = s.dr, dc = s.dc, dv = s.dv, dq = s.dq, width = s.width;
  for (size_t l = 0; l < s.w->layers.size(); ++l) {
    const MlaLayerArrays& L = s.w->layers[l];
    rms_norm(x, L.attn_norm.as(), B, s.D, s.c->rms_norm_eps, s.h.as(), s.stream);
    // One GEMM for q (or q_a) and kv_a, read in place (rows ld apart); with q_lora q from q_a.
    const int64_t ld = s.q_columns() + width;
    s.joint_projection(L, s.h.as(), B, s.joint.as());
    void* q = s.r > 0 ? s.q.as() : s.joint.as();
    const int64_t q_ld = s.r > 0 ? H * dq : ld;
    if (s.r > 0) s.queries(L, s.h.as(), B, s.q.as(), s.qa.as(), s.qn.as(), s.joint.as(), ld);
    // Absorbed queries: q~_h = W_UK[h]^T q^C_h ([B, dn] x [dn, dc] per head); then in one launch the
    // cache rows and the rotated q^R (into q_abs's rope columns).
    s.gemm(B, dc, dn, q, q_ld, dq, L.w_uk.as(), false, dc, dn * dc, s.q_abs.as(), H * width, width, H, 1.f, 0.f);
    mla_decode_rows(bf(s.joint.as(), s.q_columns()), ld, L.b_kv_a.as(), L.kv_a_norm.as(), kLatentNormEps, q, q_ld, B,
                    H, dn, dc, dr, positions, s.w->inv_freq.as<double>(), s.arch().rope_factor, s.arch().interleaved,
                    s.rows.as(), s.q_abs.as(), s.stream);
    cache.decode_layer(static_cast<int64_t>(l), s.rows.as(), s.q_abs.as(), s.lat.as(), s.stream);
    // Head outputs W_UV[h] latent_h ([B, dc] x [dc, dv] per head).
    s.gemm(B, dv, dc, s.lat.as(), H * dc, dc, L.w_uv.as(), true, dc, dv * dc, s.heads.as(), H * dv, dv, H, 1.f, 0.f);
    s.attention_out(L, s.heads.as(), B, x);
    s.ffn(L, x, s.h.as(), B, s.gate.as(), s.up.as(), B);
  }
}

}  // namespace lca::cuda::detail
