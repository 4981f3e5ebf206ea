// The GPU runtime: weights and the layer loop on the host side, cuBLAS for
// the products, lca's kernels for everything else. Llama/Qwen2 (GQA) here;
// DeepSeek-V2/V3 and MiniCPM3 (MLA) layers in runtime/gpu_mla.cpp, which
// shares the embeddings, the final norm and logits, the cache and the graphs.
//
// Prefill runs in chunks of prefill_chunk tokens, each through every layer
// before the next (runtime/prefill_chunks.hpp), onto whatever the sequence
// holds already: RMSNorm -> q/k/v products -> bias + RoPE -> the cached raw
// rows, representatives and summary ring read beside the chunk's own ->
// (LCA) summary queries and condense -> prefill attention over
// [representatives ; raw rows] -> o_proj added to the residual -> RMSNorm ->
// MLP. Each layer's new representatives, raw rows and ring are then written
// into the paged cache, which decode steps and later chunks extend.
#include "lca/gpu_model.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/device_memory.hpp"
#include "cuda/model_ops.hpp"
#include "lca/cuda.hpp"
#include "lca/error.hpp"
#include "model/text_file.hpp"
#include "runtime/gpu_mla.hpp"
#include "runtime/gpu_moe.hpp"
#include "runtime/prefill_chunks.hpp"

#include "runtime/cublas_ok.hpp"

namespace lca::cuda {

namespace detail {

DeviceArray upload_bf16(const char* what, const Tensor<float>& t) {
  DeviceArray a(what, t.numel() * 2);
  std::vector<unsigned char> bytes(static_cast<size_t>(t.numel() * 2));
  encode(DType::bf16, t.data(), t.numel(), bytes.data());
  LCA_CUDA_OK("GpuModel::upload", cudaMemcpy(a.as(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return a;
}

DeviceArray upload_bf16_rows(const char* what, const Tensor<float>& a, const Tensor<float>& b) {
  LCA_CHECK(a.shape().size() == 2 && b.shape().size() == 2 && a.shape()[1] == b.shape()[1], "GpuModel::upload: ",
            what, ": the two matrices must have the same row width, got ", a.shape()[1], " and ", b.shape()[1]);
  Tensor<float> t({a.shape()[0] + b.shape()[0], a.shape()[1]});
  std::copy_n(a.data(), a.numel(), t.data());
  std::copy_n(b.data(), b.numel(), t.data() + a.numel());
  return upload_bf16(what, t);
}

void copy_columns(const void* src, int64_t src_width, int64_t col, int64_t rows, int64_t width, void* dst,
                  cudaStream_t stream) {
  if (rows == 0) return;
  LCA_CUDA_OK("GpuSession (copy_columns)",
              cudaMemcpy2DAsync(dst, static_cast<size_t>(width * 2), static_cast<const char*>(src) + col * 2,
                                static_cast<size_t>(src_width * 2), static_cast<size_t>(width * 2),
                                static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream));
}

}  // namespace detail

namespace {

using detail::DeviceArray;
using detail::upload_bf16;
using model::in_quotes;

struct LayerArrays {
  DeviceArray attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate_up, w_down;  // w_gate_up: [gate ; up]
};

int64_t lcm_block(int64_t g) {  // rows per cache block: a multiple of g near 64
  return g >= 64 ? g : g * ((64 + g - 1) / g);
}

}  // namespace

struct GpuModel::Impl {
  ModelConfig cfg;
  std::vector<LayerArrays> layers;
  DeviceArray embed, final_norm, lm_head;  // lm_head empty when tied
  bool qkv_bias = false;
  int64_t bytes = 0;
  std::unique_ptr<detail::MlaWeights> mla;  // MLA models: their layers (layers above empty)
  float embed_scale = 1.f, logits_scale = 1.f;  // MiniCPM3: scale_emb, dim_model_base / hidden_size
  const void* output_weight() const { return lm_head ? lm_head.as() : embed.as(); }
};

namespace {

void check_gqa(const char* where, const ModelConfig& c) {
  LCA_CHECK(c.attention == AttentionKind::gqa, where, ": ", c.architecture,
            " (MLA) is not built on the GPU runtime yet; it runs Llama and Qwen2 (GQA)");
  LCA_CHECK(c.gqa.head_dim == 64 || c.gqa.head_dim == 128, where, ": head_dim ", c.gqa.head_dim,
            " is not built for the GPU kernels (64, 128)");
  LCA_CHECK(c.rope_scaling.type == RopeScalingType::none, where, ": rope_scaling ",
            rope_scaling_type_name(c.rope_scaling.type), " is not supported on the GPU runtime yet");
  LCA_CHECK(c.hidden_size % 8 == 0 && c.intermediate_size % 2 == 0, where,
            ": hidden_size must be a multiple of 8 and intermediate_size even");
}

}  // namespace

GpuModel::GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuModel::GpuModel(GpuModel&&) noexcept = default;
GpuModel& GpuModel::operator=(GpuModel&&) noexcept = default;
GpuModel::~GpuModel() = default;
const ModelConfig& GpuModel::config() const { return impl_->cfg; }
int64_t GpuModel::weight_bytes() const { return impl_->bytes; }

GpuModel GpuModel::upload(const Model& model) {
  const char* where = "GpuModel::upload";
  LCA_CHECK(device_present(), where, ": no CUDA device is present");
  auto impl = std::make_unique<Impl>();
  impl->cfg = model.config();
  const ModelWeights& w = model.weights();
  if (impl->cfg.is_mla()) {
    detail::check_mla(where, impl->cfg);
    impl->mla = detail::upload_mla(model);
    detail::upload_mtla(model, *impl->mla);
    impl->bytes += impl->mla->bytes;
    impl->embed_scale = static_cast<float>(impl->mla->arch.embed_scale);
    impl->logits_scale = static_cast<float>(1.0 / impl->mla->arch.logits_divisor);
  } else {
    check_gqa(where, impl->cfg);
    impl->qkv_bias = model.has_qkv_bias();
    for (const LayerWeights& l : w.layers) {
      LayerArrays a;
      a.attn_norm = upload_bf16("attn_norm", l.attn_norm);
      a.wq = upload_bf16("q_proj", l.wq);
      a.wk = upload_bf16("k_proj", l.wk);
      a.wv = upload_bf16("v_proj", l.wv);
      a.wo = upload_bf16("o_proj", l.wo);
      if (impl->qkv_bias) {
        a.bq = upload_bf16("q bias", l.bq);
        a.bk = upload_bf16("k bias", l.bk);
        a.bv = upload_bf16("v bias", l.bv);
      }
      a.ffn_norm = upload_bf16("ffn_norm", l.ffn_norm);
      a.w_gate_up = detail::upload_bf16_rows("gate_proj and up_proj", l.w_gate, l.w_up);
      a.w_down = upload_bf16("down_proj", l.w_down);
      impl->layers.push_back(std::move(a));
    }
  }
  impl->embed = upload_bf16("embed_tokens", w.embed);
  impl->final_norm = upload_bf16("norm", w.final_norm);
  if (w.lm_head.numel() > 0) impl->lm_head = upload_bf16("lm_head", w.lm_head);
  for (const LayerArrays& a : impl->layers)
    for (const DeviceArray* p : {&a.attn_norm, &a.wq, &a.wk, &a.wv, &a.wo, &a.bq, &a.bk, &a.bv, &a.ffn_norm,
                                 &a.w_gate_up, &a.w_down})
      impl->bytes += *p ? p->bytes() : 0;
  impl->bytes += impl->embed.bytes() + impl->final_norm.bytes() + (impl->lm_head ? impl->lm_head.bytes() : 0);
  return GpuModel(std::move(impl));
}

GpuModel GpuModel::random(const ModelConfig& config, uint64_t seed) {
  const char* where = "GpuModel::random";
  LCA_CHECK(device_present(), where, ": no CUDA device is present");
  auto impl = std::make_unique<Impl>();
  impl->cfg = config;
  if (config.is_mla()) {
    detail::check_mla(where, config);
    impl->mla = detail::random_mla(config, seed);
    impl->bytes += impl->mla->bytes;
    impl->embed_scale = static_cast<float>(impl->mla->arch.embed_scale);
    impl->logits_scale = static_cast<float>(1.0 / impl->mla->arch.logits_divisor);
    seed += 1000003;  // the embeddings' seeds apart from the layers'
  } else {
    check_gqa(where, config);
  }
  const int64_t gqa_layers = impl->mla ? 0 : config.num_hidden_layers;
  const int64_t D = config.hidden_size, F = config.intermediate_size, V = config.vocab_size;
  const int64_t hq = config.gqa.q_heads * config.gqa.head_dim, hkv = config.gqa.kv_heads * config.gqa.head_dim;
  impl->qkv_bias = config.architecture.find("Qwen2") != std::string::npos;
  uint64_t s = seed;
  auto rnd = [&](const char* what, int64_t n, double fan_in) {
    DeviceArray a(what, n * 2);
    detail::fill_uniform(a.as(), n, static_cast<float>(1.0 / std::sqrt(fan_in)), s++ * 0x2545F4914F6CDD1Dull, nullptr);
    impl->bytes += a.bytes();
    return a;
  };
  auto ones = [&](const char* what, int64_t n) {
    return upload_bf16(what, Tensor<float>({n}, 1.f));
  };
  for (int64_t l = 0; l < gqa_layers; ++l) {
    LayerArrays a;
    a.attn_norm = ones("attn_norm", D);
    a.wq = rnd("q_proj", hq * D, D);
    a.wk = rnd("k_proj", hkv * D, D);
    a.wv = rnd("v_proj", hkv * D, D);
    a.wo = rnd("o_proj", D * hq, hq);
    if (impl->qkv_bias) {
      a.bq = rnd("q bias", hq, 64);
      a.bk = rnd("k bias", hkv, 64);
      a.bv = rnd("v bias", hkv, 64);
    }
    a.ffn_norm = ones("ffn_norm", D);
    a.w_gate_up = rnd("gate_proj and up_proj", 2 * F * D, D);
    a.w_down = rnd("down_proj", D * F, F);
    impl->layers.push_back(std::move(a));
  }
  impl->embed = rnd("embed_tokens", V * D, 1.0);
  impl->final_norm = ones("norm", D);
  if (!config.tie_word_embeddings) impl->lm_head = rnd("lm_head", V * D, D);
  LCA_CUDA_OK(where, cudaDeviceSynchronize());
  return GpuModel(std::move(impl));
}

// ---- GpuSession --------------------------------------------------------------------

struct GpuSession::Impl {
  const GpuModel::Impl* m = nullptr;
  GpuSessionOptions opt;
  LcaParams lca;  // opt.attention's LCA policy; LcaParams::full() for full attention and MTLA
  int64_t D = 0, F = 0, V = 0, hq = 0, hkv = 0, d = 0, qw = 0, kvw = 0;
  std::unique_ptr<PagedKvCache> cache;
  std::unique_ptr<detail::MlaLayers> mla;  // MLA models: their layers
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  bool decoding = false;  // in decode_launches: products of one row go to decode_linear (opt.one_row_products)
  DeviceArray workspace;
  // Decode buffers, max_seqs rows each.
  DeviceArray x, h, q, k, v, rows, o, gate, up, logits, d_tokens, d_positions;
  std::vector<int64_t> h_tokens, h_positions;
  // The captured step: its batch and split count.
  cudaGraphExec_t graph = nullptr;
  std::vector<int64_t> graph_seqs;
  int64_t graph_splits = -1;

  ~Impl() {
    if (graph) cudaGraphExecDestroy(graph);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

  // Y [M, N] (+)= alpha X [M, K] W [N, K]^T, row-major, bf16 in and out (fp32 out when y_f32).
  void gemm(int64_t M, int64_t N, int64_t K, const void* X, const void* W, void* Y, bool accumulate,
            bool y_f32 = false, float alpha = 1.f) {
    const float beta = accumulate ? 1.f : 0.f;
    if (decoding && opt.one_row_products && detail::decode_linear_fits(detail::WeightLayout::nk, M, N, K, X, W))
      return detail::decode_linear(detail::WeightLayout::nk, N, K, X, W, Y, alpha, beta, y_f32, stream);  // batch 1
    LCA_CUBLAS_OK("GpuSession", cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M),
                                             static_cast<int>(K), &alpha, W, CUDA_R_16BF, static_cast<int>(K), X,
                                             CUDA_R_16BF, static_cast<int>(K), &beta, Y,
                                             y_f32 ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(N),
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // MLP of rows [0, n) of x (in place, residual added), in chunks of opt.prefill_chunk rows.
  // gate_up_buf: [chunk, 2F]; act_buf: [chunk, F].
  void mlp(const LayerArrays& L, void* x_rows, void* h_rows, int64_t n, void* gate_up_buf, void* act_buf,
           int64_t chunk) {
    detail::rms_norm(x_rows, L.ffn_norm.as(), n, D, m->cfg.rms_norm_eps, h_rows, stream);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t c = std::min(chunk, n - r0);
      const auto* hr = static_cast<const char*>(h_rows) + r0 * D * 2;
      auto* xr = static_cast<char*>(x_rows) + r0 * D * 2;
      gemm(c, 2 * F, D, hr, L.w_gate_up.as(), gate_up_buf, false);
      detail::swiglu(gate_up_buf, c, F, act_buf, stream);
      gemm(c, D, F, act_buf, L.w_down.as(), xr, true);
    }
  }

  // x [n, D] = the embeddings of tokens [n] (device), times MiniCPM3's scale_emb.
  void embed(const int64_t* tokens, int64_t n, void* x_rows) {
    detail::embed_rows(m->embed.as(), tokens, n, D, x_rows, stream);
    if (m->embed_scale != 1.f) detail::scale_values(x_rows, n * D, m->embed_scale, stream);
  }

  // logits [n, V] (fp32) of the final hidden states x_rows [n, D].
  void final_logits(const void* x_rows, int64_t n) {
    detail::rms_norm(x_rows, m->final_norm.as(), n, D, m->cfg.rms_norm_eps, h.as(), stream);
    gemm(n, V, D, h.as(), m->output_weight(), logits.as(), false, true, m->logits_scale);
  }

  // One decode step's launches for the batch in d_tokens/d_positions (capturable).
  void decode_launches(int64_t B) {
    const detail::DecodingScope scope(decoding);
    embed(d_tokens.as<int64_t>(), B, x.as());
    if (mla) mla->decode(*cache, B, x.as(), d_positions.as<int64_t>());
    for (size_t l = 0; l < m->layers.size(); ++l) {
      const LayerArrays& L = m->layers[l];
      detail::rms_norm(x.as(), L.attn_norm.as(), B, D, m->cfg.rms_norm_eps, h.as(), stream);
      gemm(B, qw, D, h.as(), L.wq.as(), q.as(), false);
      gemm(B, kvw, D, h.as(), L.wk.as(), k.as(), false);
      gemm(B, kvw, D, h.as(), L.wv.as(), v.as(), false);
      detail::bias_rope(q.as(), k.as(), v.as(), L.bq.as(), L.bk.as(), L.bv.as(), B, hq, hkv, d, d_positions.as<int64_t>(), 0,
                        m->cfg.rope.theta, stream);
      detail::pack_gqa_rows(k.as(), v.as(), B, hkv, d, rows.as(), stream);
      cache->decode_layer(static_cast<int64_t>(l), rows.as(), q.as(), o.as(), stream);
      gemm(B, D, qw, o.as(), L.wo.as(), x.as(), true);
      mlp(L, x.as(), h.as(), B, gate.as(), up.as(), B);
    }
    final_logits(x.as(), B);
  }

  // One GQA prefill call's buffers (rows: tokens, raw, representatives and summaries of its plan).
  struct GqaPrefillBuffers {
    DeviceArray h, q, k, v, rows, o, gate, up, sum, rep_k, rep_v, rep_rows;
    GqaPrefillBuffers(const Impl& s, const detail::PrefillPlan& plan) {
      const int64_t c = plan.chunk, raw = plan.raw, reps = std::max<int64_t>(plan.reps, 1);
      h = DeviceArray("prefill activations", c * s.D * 2);
      q = DeviceArray("prefill queries", c * s.qw * 2);
      k = DeviceArray("prefill raw keys", raw * s.kvw * 2);
      v = DeviceArray("prefill raw values", raw * s.kvw * 2);
      rows = DeviceArray("prefill raw rows", raw * 2 * s.kvw * 2);
      o = DeviceArray("prefill attention outputs", c * s.qw * 2);
      gate = DeviceArray("prefill MLP", c * 2 * s.F * 2);
      up = DeviceArray("prefill MLP", c * s.F * 2);
      sum = DeviceArray("summary queries", s.lca.is_full() ? 16 : plan.summaries * s.kvw * 4);
      rep_k = DeviceArray("representative keys", reps * s.kvw * 2);
      rep_v = DeviceArray("representative values", reps * s.kvw * 2);
      rep_rows = DeviceArray("representative rows", reps * 2 * s.kvw * 2);
    }
  };

  // Every GQA layer over x [L, D] (embedded) of the chunk the cache is
  // extending seq by: positions [n0, n0 + L), n0 = cache->tokens(seq).
  void gqa_prefill_chunk(GqaPrefillBuffers& b, int64_t seq, int64_t L, void* x_rows) {
    const LcaParams& p = lca;
    const ModelConfig& c = m->cfg;
    const detail::ChunkSpan ch(cache->tokens(seq), L, p);
    const int64_t row = 2 * kvw;  // values per cache row
    auto at = [](const DeviceArray& a, int64_t elems) { return a.as<char>() + elems * 2; };  // bf16 element
    // The chunk's own keys and values follow the cached raw rows in k and v.
    char* k_own = at(b.k, ch.cached * kvw);
    char* v_own = at(b.v, ch.cached * kvw);
    float* ring1 = p.is_full() ? nullptr : b.sum.as<float>() + ch.ring1_offset() * kvw;
    for (size_t l = 0; l < m->layers.size(); ++l) {
      const LayerArrays& W = m->layers[l];
      detail::rms_norm(x_rows, W.attn_norm.as(), L, D, c.rms_norm_eps, b.h.as(), stream);
      gemm(L, qw, D, b.h.as(), W.wq.as(), b.q.as(), false);
      gemm(L, kvw, D, b.h.as(), W.wk.as(), k_own, false);
      gemm(L, kvw, D, b.h.as(), W.wv.as(), v_own, false);
      detail::bias_rope(b.q.as(), k_own, v_own, W.bq.as(), W.bk.as(), W.bv.as(), L, hq, hkv, d, nullptr, ch.n0,
                        c.rope.theta, stream);
      // The cache as the chunk finds it: representatives [0, m0), raw rows
      // [raw_start, n0) into k and v before the chunk's own, ring into sum [0, ring0).
      cache->read_layer_device(seq, static_cast<int64_t>(l), b.rep_rows.as(), b.rows.as(), b.sum.as<float>(), nullptr,
                               stream);
      detail::copy_columns(b.rows.as(), d * 2, 0, ch.cached * hkv, d, b.k.as(), stream);
      detail::copy_columns(b.rows.as(), d * 2, d, ch.cached * hkv, d, b.v.as(), stream);
      detail::copy_columns(b.rep_rows.as(), d * 2, 0, ch.m0 * hkv, d, b.rep_k.as(), stream);
      detail::copy_columns(b.rep_rows.as(), d * 2, d, ch.m0 * hkv, d, b.rep_v.as(), stream);
      if (!p.is_full()) {
        gqa_summary_queries(b.q.as(), b.sum.as<float>() + ch.ring0 * kvw, L, hq, hkv, d, DType::bf16, stream);
        CondenseGqaArgs ca;  // groups [m0, m1) into representatives [m0, m1)
        ca.k = b.k.as(), ca.v = b.v.as(), ca.summary = b.sum.as<float>();
        ca.rep_k = at(b.rep_k, ch.m0 * kvw), ca.rep_v = at(b.rep_v, ch.m0 * kvw);
        ca.kv_start = ch.raw_start, ca.kv_len = ch.raw_len;
        ca.sum_start = ch.n0 - ch.ring0, ca.sum_len = ch.summaries();
        ca.first = ch.m0, ca.count = ch.m1 - ch.m0;
        ca.q_heads = hq, ca.kv_heads = hkv, ca.head_dim = d;
        ca.scale = c.softmax_scale();
        ca.rope = c.rope;
        ca.dtype = DType::bf16;
        ca.params = p;
        condense_groups_gqa(ca, stream);
      }
      PrefillArgs a;
      a.q = b.q.as(), a.k = b.k.as(), a.v = b.v.as(), a.rep_k = b.rep_k.as(), a.rep_v = b.rep_v.as(), a.out = b.o.as();
      a.q_len = L, a.q_start = ch.n0;
      a.raw_len = ch.raw_len, a.raw_start = ch.raw_start;
      a.reps = ch.m1;
      a.q_heads = hq, a.kv_heads = hkv, a.d_qk = a.d_v = d;
      a.scale = c.softmax_scale();
      a.dtype = DType::bf16;
      a.params = p;
      lca_prefill(a, stream);
      // Back into the cache: representatives [m0, m1), raw rows [new_raw, n1), the ring of n1.
      const int64_t own_raw = ch.new_raw - ch.raw_start;
      detail::pack_gqa_rows(at(b.rep_k, ch.m0 * kvw), at(b.rep_v, ch.m0 * kvw), ch.m1 - ch.m0, hkv, d,
                            at(b.rep_rows, ch.m0 * row), stream);
      detail::pack_gqa_rows(at(b.k, own_raw * kvw), at(b.v, own_raw * kvw), ch.n1 - ch.new_raw, hkv, d,
                            at(b.rows, own_raw * row), stream);
      cache->write_extend_device(seq, static_cast<int64_t>(l), at(b.rep_rows, ch.m0 * row), at(b.rows, own_raw * row),
                                 ring1, nullptr, stream);
      gemm(L, D, qw, b.o.as(), W.wo.as(), x_rows, true);
      mlp(W, x_rows, b.h.as(), L, b.gate.as(), b.up.as(), L);
    }
  }
};

GpuSession::GpuSession(const GpuModel& model, const GpuSessionOptions& options) : impl_(std::make_unique<Impl>()) {
  const char* where = "GpuSession";
  Impl& s = *impl_;
  s.m = model.impl_.get();
  s.opt = options;
  const ModelConfig& c = s.m->cfg;
  if (s.opt.max_context == 0) s.opt.max_context = c.max_position_embeddings;
  LCA_CHECK(s.opt.max_context >= 1, where, ": max_context must be >= 1 (the model gives ", c.max_position_embeddings,
            ")");
  LCA_CHECK(s.opt.max_seqs >= 1, where, ": max_seqs must be >= 1, got ", s.opt.max_seqs);
  LCA_CHECK(s.opt.prefill_chunk >= 1, where, ": prefill_chunk must be >= 1, got ", s.opt.prefill_chunk);
  s.D = c.hidden_size, s.F = c.intermediate_size, s.V = c.vocab_size;
  s.hq = c.gqa.q_heads, s.hkv = c.gqa.kv_heads, s.d = c.gqa.head_dim;
  s.qw = s.hq * s.d, s.kvw = s.hkv * s.d;
  s.lca = detail::lca_part(s.opt.attention);
  const MtlaParams* mtla = std::get_if<MtlaParams>(&s.opt.attention);
  if (mtla) {
    // As the CPU runtime words them (Sequence).
    mtla->validate();
    LCA_CHECK(c.is_mla(), where, ": MTLA needs an MLA model; ", in_quotes(c.source), " (", c.architecture,
              ") is a GQA model");
    LCA_CHECK(!s.m->mla->mtla_hyper.empty(), where, ": model ", in_quotes(c.source), " has no MTLA hyper-networks (",
              mtla_tensor_name(0, "fc_c.weight"), " ...); MTLA needs a checkpoint trained with them");
  }

  PagedCacheConfig pc;
  pc.layout = c.is_mla() ? KvLayout::mla : KvLayout::gqa;
  pc.mla = c.mla;
  pc.gqa = c.gqa;
  pc.rope = c.rope;
  pc.scale = c.softmax_scale();
  pc.policy = s.opt.attention;
  pc.dtype = DType::bf16;
  pc.layers = c.num_hidden_layers;
  pc.max_seqs = s.opt.max_seqs;
  pc.max_context = s.opt.max_context;
  pc.block_rows = s.lca.is_full() ? 64 : lcm_block(s.lca.group);
  if (mtla) pc.mtla_hyper = s.m->mla->mtla_hyper;
  s.cache = std::make_unique<PagedKvCache>(pc);

  LCA_CUDA_OK(where, cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  LCA_CUBLAS_OK(where, cublasCreate(&s.blas));
  LCA_CUBLAS_OK(where, cublasSetStream(s.blas, s.stream));
  s.workspace = DeviceArray("the cuBLAS workspace", 32 << 20);
  LCA_CUBLAS_OK(where, cublasSetWorkspace(s.blas, s.workspace.as(), static_cast<size_t>(s.workspace.bytes())));
  const int64_t B = s.opt.max_seqs;
  s.x = DeviceArray("decode activations", B * s.D * 2);
  s.h = DeviceArray("decode activations", B * s.D * 2);
  s.q = DeviceArray("decode queries", B * s.qw * 2);
  s.k = DeviceArray("decode keys", B * s.kvw * 2);
  s.v = DeviceArray("decode values", B * s.kvw * 2);
  s.rows = DeviceArray("decode cache rows", B * 2 * s.kvw * 2);
  s.o = DeviceArray("decode attention outputs", B * s.qw * 2);
  s.gate = DeviceArray("decode MLP", B * 2 * s.F * 2);
  s.up = DeviceArray("decode MLP", B * s.F * 2);
  s.logits = DeviceArray("decode logits", B * s.V * 4);
  s.d_tokens = DeviceArray("decode tokens", B * 8);
  s.d_positions = DeviceArray("decode positions", B * 8);
  if (s.m->mla) s.mla = std::make_unique<detail::MlaLayers>(c, *s.m->mla, s.opt, s.stream, s.blas);
}

GpuSession::~GpuSession() = default;
int64_t GpuSession::add_sequence() { return impl_->cache->add_sequence(); }
void GpuSession::release_sequence(int64_t seq) { impl_->cache->release_sequence(seq); }
int64_t GpuSession::tokens(int64_t seq) const { return impl_->cache->tokens(seq); }
const PagedKvCache& GpuSession::cache() const { return *impl_->cache; }

Tensor<float> GpuSession::prefill(int64_t seq, std::span<const int64_t> tokens) {
  const char* where = "GpuSession::prefill";
  Impl& s = *impl_;
  const int64_t N = static_cast<int64_t>(tokens.size());
  LCA_CHECK(N >= 1, where, ": the prompt is empty");
  for (int64_t t : tokens) LCA_CHECK(t >= 0 && t < s.V, where, ": token id ", t, " is outside the vocabulary [0, ", s.V, ")");
  const int64_t n0 = s.cache->tokens(seq);  // checks the slot
  LCA_CHECK(N <= s.opt.max_context - n0, where, ": sequence ", seq, " holds ", n0, " tokens; the prompt's ", N,
            " more exceed the session's max_context of ", s.opt.max_context);
  const int64_t chunk = std::min(s.opt.prefill_chunk, N);
  // Every chunk's blocks are there before the first changes anything.
  const int64_t need = s.cache->extend_blocks(seq, N, chunk), free_blocks = s.cache->free_blocks();
  LCA_CHECK(need <= free_blocks, where, ": out of cache blocks: the prompt's ", N, " tokens in chunks of ", chunk,
            " need ", need, " free, ", free_blocks, " are");
  const detail::PrefillPlan plan = detail::plan_prefill(n0, N, chunk, s.opt.attention);
  DeviceArray toks("prompt tokens", N * 8), x("prefill activations", plan.chunk * s.D * 2);
  LCA_CUDA_OK(where, cudaMemcpyAsync(toks.as(), tokens.data(), N * 8, cudaMemcpyHostToDevice, s.stream));
  std::unique_ptr<Impl::GqaPrefillBuffers> gqa;
  if (s.mla) s.mla->begin_prefill(plan);
  else gqa = std::make_unique<Impl::GqaPrefillBuffers>(s, plan);
  Tensor<float> out({1, s.V});
  bool extending = false;
  try {
    int64_t L = 0;
    for (int64_t done = 0; done < N; done += L) {
      L = std::min(chunk, N - done);
      s.cache->begin_extend(seq, L, s.stream);
      extending = true;
      s.embed(toks.as<int64_t>() + done, L, x.as());
      if (s.mla) s.mla->prefill_chunk(*s.cache, seq, L, x.as());
      else s.gqa_prefill_chunk(*gqa, seq, L, x.as());
      s.cache->end_extend(seq);
      extending = false;
    }
    s.final_logits(x.as<char>() + (L - 1) * s.D * 2, 1);
    LCA_CUDA_OK(where, cudaMemcpyAsync(out.data(), s.logits.as(), s.V * 4, cudaMemcpyDeviceToHost, s.stream));
    // The buffers are freed on return: the work that reads them must be done.
    LCA_CUDA_OK(where, cudaStreamSynchronize(s.stream));
  } catch (...) {
    // A failed chunk gives its blocks back; the chunks before it stay committed.
    if (extending) s.cache->cancel_extend(seq);
    cudaStreamSynchronize(s.stream);
    if (s.mla) s.mla->end_prefill();
    throw;
  }
  if (s.mla) s.mla->end_prefill();
  return out;
}

Tensor<float> GpuSession::decode(std::span<const int64_t> seqs, std::span<const int64_t> tokens) {
  const char* where = "GpuSession::decode";
  Impl& s = *impl_;
  const int64_t B = static_cast<int64_t>(seqs.size());
  LCA_CHECK(B >= 1 && B == static_cast<int64_t>(tokens.size()), where, ": ", B, " sequences but ", tokens.size(),
            " tokens");
  LCA_CHECK(B <= s.opt.max_seqs, where, ": batch of ", B, " over max_seqs ", s.opt.max_seqs);
  for (int64_t t : tokens) LCA_CHECK(t >= 0 && t < s.V, where, ": token id ", t, " is outside the vocabulary [0, ", s.V, ")");
  s.h_tokens.assign(tokens.begin(), tokens.end());
  s.h_positions.clear();
  for (int64_t seq : seqs) s.h_positions.push_back(s.cache->tokens(seq));  // checks the slot
  s.cache->begin_step(seqs, s.stream);  // blocks for the new tokens, or an error with nothing changed
  LCA_CUDA_OK(where, cudaMemcpyAsync(s.d_tokens.as(), s.h_tokens.data(), B * 8, cudaMemcpyHostToDevice, s.stream));
  LCA_CUDA_OK(where, cudaMemcpyAsync(s.d_positions.as(), s.h_positions.data(), B * 8, cudaMemcpyHostToDevice, s.stream));
  if (!s.opt.graphs) {
    s.decode_launches(B);
  } else {
    const std::vector<int64_t> batch(seqs.begin(), seqs.end());
    if (s.graph == nullptr || batch != s.graph_seqs || s.cache->step_splits() != s.graph_splits) {
      if (s.graph) cudaGraphExecDestroy(s.graph), s.graph = nullptr;
      cudaGraph_t g;
      LCA_CUDA_OK(where, cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal));
      try {
        s.decode_launches(B);
      } catch (...) {
        cudaStreamEndCapture(s.stream, &g);
        throw;
      }
      LCA_CUDA_OK(where, cudaStreamEndCapture(s.stream, &g));
      LCA_CUDA_OK(where, cudaGraphInstantiate(&s.graph, g, 0));
      cudaGraphDestroy(g);
      s.graph_seqs = batch;
      s.graph_splits = s.cache->step_splits();
    }
    LCA_CUDA_OK(where, cudaGraphLaunch(s.graph, s.stream));
  }
  s.cache->end_step();
  Tensor<float> out({B, s.V});
  LCA_CUDA_OK(where, cudaMemcpyAsync(out.data(), s.logits.as(), B * s.V * 4, cudaMemcpyDeviceToHost, s.stream));
  LCA_CUDA_OK(where, cudaStreamSynchronize(s.stream));
  return out;
}

void GpuSession::fill_random(int64_t seq, int64_t n, uint64_t seed) {
  Impl& s = *impl_;
  s.cache->set_tokens(seq, n);
  // Every block of the pool: fine for a benchmark, where all sequences are random.
  detail::fill_uniform(s.cache->device_pool(), s.cache->total_blocks() * s.cache->block_bytes() / 2, 1.f, seed,
                       s.stream);
  LCA_CUDA_OK("GpuSession::fill_random", cudaStreamSynchronize(s.stream));
}

}  // namespace lca::cuda
