// The MLA architectures of the runtime (DeepSeek-V2, DeepSeek-V3, MiniCPM3)
// on tiny random Hugging Face folders written here. Logits are checked
// against a naive float64 transformer written in this file from transformers'
// modeling code: MLA in the decompressed form (per-head keys [W_UK c ; k^R],
// values W_UV c) with each model's own rotary layout (DeepSeek-V2's complex
// pairs, DeepSeek-V3's de-interleaving one, rotate_half), yarn and longrope
// frequencies, the routers of both DeepSeek MoE versions, MiniCPM3's
// scalings. Then the spec identities through the whole model, and the errors.
// MTLA (mtla-spec.md) through the model: checkpoints with hyper-networks, the
// oracle over the spec's training-form rows, its identities 1-3, the config
// field, the errors and `lca generate --attention mtla`.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <numbers>
#include <numeric>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "gguf_writer.hpp"
#include "lca/error.hpp"
#include "lca/model.hpp"
#include "mla_checkpoint.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lca::LcaParams;
using lca::Model;
using lca::Sequence;
using lca::Shape;
using lca::Tensor;
using lca_test::Rng;
using lca_test::Vec;

using lca_test::mla::add_weights;
using lca_test::mla::Arch;
using lca_test::mla::config_of;
using lca_test::mla::Tiny;
using lca_test::mla::write_hf;

Tiny tiny_v2(Rng& rng, bool q_lora, bool group_limited) {
  Tiny m;
  m.arch = Arch::v2;
  m.q_lora = q_lora ? 10 : 0;
  m.bias = !q_lora;
  m.theta = 10000.0 + static_cast<double>(rng.uniform_int(0, 5000));
  m.rsf = 1.5;
  if (group_limited) {
    m.topk_method = "group_limited_greedy";
    m.n_group = 3;
    m.topk_group = 2;
  }
  // Yarn with mscale != mscale_all_dim: the cos/sin factor and the softmax scale both matter.
  m.rope_scaling = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 24},
                    {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 0.8}};
  add_weights(m, rng);
  return m;
}

Tiny tiny_v3(Rng& rng, bool interleave) {
  Tiny m;
  m.arch = Arch::v3;
  m.q_lora = 10;
  m.bias = true;
  m.interleave = interleave;
  m.E = 8;
  m.K = 3;
  m.n_group = 4;
  m.topk_group = 2;
  m.norm_topk = true;
  m.rsf = 2.5;
  m.shared = 2;
  m.first_dense = 1;
  add_weights(m, rng);
  return m;
}

Tiny tiny_minicpm3(Rng& rng) {
  Tiny m;
  m.arch = Arch::minicpm3;
  m.q_lora = 10;
  m.tied = true;
  m.eps = 1e-5;
  m.scale_emb = 12.0;
  m.scale_depth = 1.4;
  m.dim_model_base = 8.0;
  m.rope_parameters_style = true;
  json short_factor = json::array();
  for (int64_t j = 0; j < m.dr / 2; ++j) short_factor.push_back(1.0 + rng.uniform() * 3);
  m.rope_scaling = {{"rope_type", "longrope"}, {"factor", 2.0}, {"original_max_position_embeddings", m.context},
                    {"short_factor", short_factor}, {"long_factor", short_factor}};
  add_weights(m, rng);
  return m;
}

// ---- The float64 oracle (transformers' definitions) --------------------------------

using lca_test::matvec;

void add_bias(Vec& y, const Tensor<float>& b) {
  for (size_t i = 0; i < y.size(); ++i) y[i] += b.data()[i];
}

using lca_test::rms_norm;

double get_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

// inv_freq (d_r / 2) and the cos/sin factor (modeling_rope_utils).
std::pair<Vec, double> oracle_rope(const Tiny& m) {
  const int64_t dim = m.dr;
  Vec inv(static_cast<size_t>(dim / 2));
  double factor_on_cos = 1.0;
  const std::string type = m.rope_scaling.is_null() ? "default"
                           : m.rope_scaling.contains("rope_type") ? m.rope_scaling["rope_type"].get<std::string>()
                                                                  : m.rope_scaling["type"].get<std::string>();
  for (int64_t j = 0; j < dim / 2; ++j) inv[j] = 1.0 / std::pow(m.theta, static_cast<double>(2 * j) / dim);
  if (type == "yarn") {
    const json& r = m.rope_scaling;
    const double factor = r["factor"], original = r["original_max_position_embeddings"];
    const double fast = r["beta_fast"], slow = r["beta_slow"];
    auto corr = [&](double rot) { return dim * std::log(original / (rot * 2 * std::numbers::pi)) / (2 * std::log(m.theta)); };
    const double low = std::max(std::floor(corr(fast)), 0.0);
    double high = std::min(std::ceil(corr(slow)), static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    for (int64_t j = 0; j < dim / 2; ++j) {
      const double ramp = std::min(1.0, std::max(0.0, (j - low) / (high - low)));
      const double extra = 1 - ramp;  // inv_freq_extrapolation_factor
      inv[j] = inv[j] / factor * (1 - extra) + inv[j] * extra;
    }
    factor_on_cos = get_mscale(factor, r["mscale"]) / get_mscale(factor, r["mscale_all_dim"]);
  } else if (type == "longrope") {
    const json& r = m.rope_scaling;
    for (int64_t j = 0; j < dim / 2; ++j) inv[j] /= r["short_factor"][j].get<double>();
    const double factor = r["factor"], original = r["original_max_position_embeddings"];
    factor_on_cos = std::sqrt(1 + std::log(factor) / std::log(original));
  }
  return {inv, factor_on_cos};
}

// Rotates u (d_r values) at position pos as each model's attention does.
void oracle_rotate(const Tiny& m, double* u, int64_t pos, const Vec& inv, double f) {
  const int64_t half = m.dr / 2;
  Vec out(static_cast<size_t>(m.dr));
  if (m.arch == Arch::v2) {  // view_as_complex(pairs) * polar(1, freqs) * attention_scaling
    for (int64_t j = 0; j < half; ++j) {
      const std::complex<double> z(u[2 * j], u[2 * j + 1]), w = std::polar(f, pos * inv[j]);
      out[2 * j] = (z * w).real();
      out[2 * j + 1] = (z * w).imag();
    }
  } else if (m.arch == Arch::v3 && m.interleave) {  // cat([q1 cos - q2 sin, q2 cos + q1 sin]), q1 = u[0::2]
    for (int64_t j = 0; j < half; ++j) {
      const double c = f * std::cos(pos * inv[j]), s = f * std::sin(pos * inv[j]);
      out[j] = u[2 * j] * c - u[2 * j + 1] * s;
      out[half + j] = u[2 * j + 1] * c + u[2 * j] * s;
    }
  } else {  // q * cos + rotate_half(q) * sin, cos = cat(freqs, freqs)
    for (int64_t i = 0; i < m.dr; ++i) {
      const double rot = i < half ? -u[i + half] : u[i - half];
      const double a = pos * inv[i % half];
      out[i] = u[i] * f * std::cos(a) + rot * f * std::sin(a);
    }
  }
  std::copy(out.begin(), out.end(), u);
}

Vec oracle_mlp(const Tiny& m, const std::string& p, const Vec& h) {
  Vec gate = matvec(m.get(p + "gate_proj.weight"), h);
  const Vec up = matvec(m.get(p + "up_proj.weight"), h);
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
  return matvec(m.get(p + "down_proj.weight"), gate);
}

// DeepseekV2Moe / DeepseekV3MoE on one token.
Vec oracle_moe(const Tiny& m, const std::string& p, const Vec& h) {
  const Vec logits = matvec(m.get(p + "gate.weight"), h);
  const int64_t E = m.E, per_group = E / m.n_group;
  Vec scores(static_cast<size_t>(E)), choice;
  if (m.arch == Arch::v3) {
    for (int64_t e = 0; e < E; ++e) scores[e] = 1.0 / (1.0 + std::exp(-logits[e]));
    choice = scores;
    for (int64_t e = 0; e < E; ++e) choice[e] += m.get(p + "gate.e_score_correction_bias").data()[e];
  } else {
    double z = 0.0;
    for (int64_t e = 0; e < E; ++e) z += scores[e] = std::exp(logits[e]);
    for (double& s : scores) s /= z;
    choice = scores;
  }
  if (m.arch == Arch::v3 || m.topk_method == "group_limited_greedy") {
    Vec group_score(static_cast<size_t>(m.n_group));
    for (int64_t g = 0; g < m.n_group; ++g) {
      Vec in(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
      std::sort(in.rbegin(), in.rend());
      group_score[g] = m.arch == Arch::v3 ? in[0] + in[1] : in[0];
    }
    std::vector<int64_t> groups(static_cast<size_t>(m.n_group));
    std::iota(groups.begin(), groups.end(), 0);
    std::sort(groups.begin(), groups.end(), [&](int64_t a, int64_t b) { return group_score[a] > group_score[b]; });
    for (int64_t e = 0; e < E; ++e)
      if (std::find(groups.begin(), groups.begin() + m.topk_group, e / per_group) == groups.begin() + m.topk_group)
        choice[e] = m.arch == Arch::v3 ? -INFINITY : 0.0;
  }
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
  Vec weight(static_cast<size_t>(m.K));
  double sum = 0.0;
  for (int64_t i = 0; i < m.K; ++i) sum += weight[i] = scores[order[i]];
  Vec out(static_cast<size_t>(m.D), 0.0);
  for (int64_t i = 0; i < m.K; ++i) {
    const double w = (m.arch == Arch::v3 && m.norm_topk ? weight[i] / (sum + 1e-20) : weight[i]) * m.rsf;
    const Vec y = oracle_mlp(m, p + "experts." + std::to_string(order[i]) + ".", h);
    for (int64_t d = 0; d < m.D; ++d) out[d] += w * y[d];
  }
  if (m.shared > 0) {
    const Vec s = oracle_mlp(m, p + "shared_experts.", h);
    for (int64_t d = 0; d < m.D; ++d) out[d] += s[d];
  }
  return out;
}

// MTLA rows of one layer (mtla-spec.md sections 1-3, training form): row j =
// sum of w_i c_i over i <= j in j's chunk, w_i = sigmoid(fc_c(PE(floor(i/s))) . fc_p(c_i)),
// PE(k)[2j] = sin(k 10000^(-2j/d_c)), PE(k)[2j+1] = cos(...). `a` is the layer's "self_attn." prefix.
std::vector<Vec> oracle_mtla_rows(const Tiny& m, const std::string& a, const std::vector<Vec>& c, int64_t s) {
  const std::string hn = a + "hypernet_down.";
  std::vector<Vec> rows;
  for (size_t i = 0; i < c.size(); ++i) {
    const double k = static_cast<double>(static_cast<int64_t>(i) / s);
    Vec pe(static_cast<size_t>(m.dc));
    for (int64_t j = 0; 2 * j < m.dc; ++j) {
      const double angle = k * std::pow(10000.0, -static_cast<double>(2 * j) / static_cast<double>(m.dc));
      pe[2 * j] = std::sin(angle);
      pe[2 * j + 1] = std::cos(angle);
    }
    Vec chunk_code = matvec(m.get(hn + "fc_c.weight"), pe), latent_code = matvec(m.get(hn + "fc_p.weight"), c[i]);
    add_bias(chunk_code, m.get(hn + "fc_c.bias"));
    add_bias(latent_code, m.get(hn + "fc_p.bias"));
    double logit = 0.0;
    for (size_t r = 0; r < chunk_code.size(); ++r) logit += chunk_code[r] * latent_code[r];
    const double w = 1.0 / (1.0 + std::exp(-logit));
    Vec row = i % static_cast<size_t>(s) == 0 ? Vec(c[i].size(), 0.0) : rows.back();
    for (size_t d = 0; d < row.size(); ++d) row[d] += w * c[i][d];
    rows.push_back(std::move(row));
  }
  return rows;
}

// Logits [T][V] of every position under full causal attention, or with
// mtla_s >= 1 under MTLA at down rate s in the training form: query t sees
// row j (latent oracle_mtla_rows()[j], rope key k^R_j) iff j <= t and
// ((j + 1) mod s == 0 or j == t).
std::vector<Vec> oracle_logits(const Tiny& m, const std::vector<int64_t>& tokens, int64_t mtla_s = 0) {
  const int64_t T = static_cast<int64_t>(tokens.size()), D = m.D, H = m.H, dq = m.dn + m.dr;
  const bool cpm = m.arch == Arch::minicpm3;
  const auto [inv, f] = oracle_rope(m);
  double scale = 1.0 / std::sqrt(static_cast<double>(dq));
  if (m.rope_scaling.contains("mscale_all_dim")) {
    const double ms = get_mscale(m.rope_scaling["factor"], m.rope_scaling["mscale_all_dim"]);
    scale *= ms * ms;
  }
  const double residual = cpm ? m.scale_depth / std::sqrt(static_cast<double>(m.layers)) : 1.0;
  std::vector<Vec> x(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const float* e = m.get("model.embed_tokens.weight").row(tokens[t]);
    x[t] = Vec(e, e + D);
    if (cpm)
      for (double& v : x[t]) v *= m.scale_emb;
  }
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.";
    std::vector<Vec> q(T), c(T), kr(T);
    for (int64_t t = 0; t < T; ++t) {
      const Vec h = rms_norm(x[t], m.get(p + "input_layernorm.weight"), m.eps);
      if (m.q_lora > 0) {
        Vec qa = matvec(m.get(a + "q_a_proj.weight"), h);
        if (m.bias) add_bias(qa, m.get(a + "q_a_proj.bias"));
        q[t] = matvec(m.get(a + "q_b_proj.weight"), rms_norm(qa, m.get(a + "q_a_layernorm.weight"), 1e-6));
      } else {
        q[t] = matvec(m.get(a + "q_proj.weight"), h);
      }
      Vec kv = matvec(m.get(a + "kv_a_proj_with_mqa.weight"), h);
      if (m.bias) add_bias(kv, m.get(a + "kv_a_proj_with_mqa.bias"));
      c[t] = rms_norm(Vec(kv.begin(), kv.begin() + m.dc), m.get(a + "kv_a_layernorm.weight"), 1e-6);
      kr[t] = Vec(kv.begin() + m.dc, kv.end());
      oracle_rotate(m, kr[t].data(), t, inv, f);
      for (int64_t hd = 0; hd < H; ++hd) oracle_rotate(m, q[t].data() + hd * dq + m.dn, t, inv, f);
    }
    // kv_b_proj(latent): per head [k_nope (d_n) ; v (d_v)].
    const Tensor<float>& kv_b = m.get(a + "kv_b_proj.weight");
    const std::vector<Vec> latent = mtla_s > 0 ? oracle_mtla_rows(m, a, c, mtla_s) : c;
    auto visible = [&](int64_t j, int64_t t) { return mtla_s == 0 || (j + 1) % mtla_s == 0 || j == t; };
    std::vector<Vec> kvn(T);
    for (int64_t t = 0; t < T; ++t) kvn[t] = matvec(kv_b, latent[t]);
    for (int64_t t = 0; t < T; ++t) {
      Vec o(static_cast<size_t>(H * m.dv), 0.0);
      for (int64_t hd = 0; hd < H; ++hd) {
        Vec s(static_cast<size_t>(t + 1));
        double top = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          if (!visible(j, t)) {
            s[j] = -INFINITY;
            continue;
          }
          double dot = 0.0;
          for (int64_t i = 0; i < m.dn; ++i) dot += q[t][hd * dq + i] * kvn[j][hd * (m.dn + m.dv) + i];
          for (int64_t i = 0; i < m.dr; ++i) dot += q[t][hd * dq + m.dn + i] * kr[j][i];
          s[j] = dot * scale;
          top = std::max(top, s[j]);
        }
        double z = 0.0;
        for (double& e : s) z += e = std::exp(e - top);
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < m.dv; ++i) o[hd * m.dv + i] += s[j] / z * kvn[j][hd * (m.dn + m.dv) + m.dn + i];
      }
      Vec out = matvec(m.get(a + "o_proj.weight"), o);
      if (m.bias) add_bias(out, m.get(a + "o_proj.bias"));
      for (int64_t i = 0; i < D; ++i) x[t][i] += out[i] * residual;
      const Vec h = rms_norm(x[t], m.get(p + "post_attention_layernorm.weight"), m.eps);
      const Vec y = m.moe_layer(l) ? oracle_moe(m, p + "mlp.", h) : oracle_mlp(m, p + "mlp.", h);
      for (int64_t i = 0; i < D; ++i) x[t][i] += y[i] * residual;
    }
  }
  std::vector<Vec> logits;
  for (int64_t t = 0; t < T; ++t) {
    Vec h = rms_norm(x[t], m.get("model.norm.weight"), m.eps);
    if (cpm)
      for (double& v : h) v /= static_cast<double>(m.D) / m.dim_model_base;
    logits.push_back(matvec(m.get(m.tied ? "model.embed_tokens.weight" : "lm_head.weight"), h));
  }
  return logits;
}

using MlaModelTest = lca_test::TempDirTest;
using lca_test::max_rel_diff;
using lca_test::random_tokens;

struct Variant {
  std::string name;
  std::function<Tiny(Rng&)> make;
};

std::vector<Variant> variants() {
  return {{"v2_yarn_bias_greedy", [](Rng& r) { return tiny_v2(r, false, false); }},
          {"v2_qlora_group_limited", [](Rng& r) { return tiny_v2(r, true, true); }},
          {"v3_interleaved", [](Rng& r) { return tiny_v3(r, true); }},
          {"v3_half_split", [](Rng& r) { return tiny_v3(r, false); }},
          {"minicpm3_longrope", [](Rng& r) { return tiny_minicpm3(r); }}};
}

// ---- Forward against the oracle --------------------------------------------------------

TEST_F(MlaModelTest, ForwardMatchesFloat64Oracle) {
  Rng rng(0x6d6c61);
  for (const Variant& v : variants()) {
    SCOPED_TRACE(v.name);
    const Tiny m = v.make(rng);
    write_hf(dir_ / v.name, m);
    const Model model = Model::load((dir_ / v.name).string());
    EXPECT_TRUE(model.config().is_mla());
    const std::vector<int64_t> tokens = random_tokens(rng, 13, m.V);
    const std::vector<Vec> expected = oracle_logits(m, tokens);
    // The first seven tokens as one chunk (every position's logits), then one at a time.
    Sequence seq(model, LcaParams::full(), lca::DType::f32);
    const Tensor<float> first = seq.forward(std::span(tokens).first(7), true);
    ASSERT_EQ(first.shape(), (Shape{7, m.V}));
    EXPECT_LT(max_rel_diff(first, std::vector<Vec>(expected.begin(), expected.begin() + 7)), 5e-5);
    for (size_t t = 7; t < tokens.size(); ++t) {
      const Tensor<float> one = seq.forward(std::span(tokens).subspan(t, 1));
      EXPECT_LT(max_rel_diff(one, {expected[t]}), 5e-5) << "position " << t;
    }
    // The cache holds MLA rows: d_c + d_r values per token and layer.
    EXPECT_EQ(seq.caches()[0].row_width(), m.dc + m.dr);
    EXPECT_EQ(seq.full_cache_bytes(), static_cast<int64_t>(tokens.size()) * (m.dc + m.dr) * 4 * m.layers);
  }
}

// The oracle tells the variants apart: a model read as another architecture
// (other rope layout, router or scalings) gives other logits.
TEST_F(MlaModelTest, ArchitectureDetailsMatter) {
  Rng rng(77);
  const Tiny v3 = tiny_v3(rng, true);
  const std::vector<int64_t> tokens = random_tokens(rng, 9, v3.V);
  write_hf(dir_ / "half", v3, "", [](json& c) { c["rope_interleave"] = false; });
  write_hf(dir_ / "nonorm", v3, "", [](json& c) { c["norm_topk_prob"] = false; });
  const std::vector<Vec> expected = oracle_logits(v3, tokens);
  for (const char* d : {"half", "nonorm"}) {
    const Model model = Model::load((dir_ / d).string());
    Sequence seq(model, LcaParams::full(), lca::DType::f32);
    EXPECT_GT(max_rel_diff(seq.forward(tokens, true), expected), 1e-3) << d;
  }
}

// transformers 5 writes rope_theta and the scaling into "rope_parameters".
TEST(MlaConfig, RopeParametersOfTransformers5) {
  Rng rng(8);
  const Tiny m = tiny_v3(rng, true);
  json c = config_of(m);
  c.erase("rope_theta");
  c.erase("rope_scaling");
  c["rope_parameters"] = {{"rope_theta", 5000.0}, {"rope_type", "yarn"}, {"factor", 4.0}, {"mscale_all_dim", 0.7},
                          {"original_max_position_embeddings", 64}};
  const lca::ModelConfig yarn = lca::parse_model_config(c.dump(), "t5");
  EXPECT_EQ(yarn.rope.theta, 5000.0);
  EXPECT_EQ(yarn.rope_scaling.type, lca::RopeScalingType::yarn);
  EXPECT_EQ(yarn.rope_scaling.factor, 4.0);
  EXPECT_FALSE(yarn.rope_scaling.mscale_given);
  const double ms = 0.1 * 0.7 * std::log(4.0) + 1.0;
  EXPECT_NEAR(yarn.softmax_scale(), ms * ms / std::sqrt(static_cast<double>(m.dn + m.dr)), 1e-12);
  c["rope_parameters"] = {{"rope_theta", 300.0}, {"rope_type", "default"}};
  const lca::ModelConfig plain = lca::parse_model_config(c.dump(), "t5");
  EXPECT_EQ(plain.rope.theta, 300.0);
  EXPECT_EQ(plain.rope_scaling.type, lca::RopeScalingType::none);
  c["rope_parameters"] = {{"rope_theta", 300.0}, {"rope_type", "yarn"}};
  try {
    lca::parse_model_config(c.dump(), "t5");
    ADD_FAILURE() << "no throw";
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_parameters.factor"), std::string::npos) << e.what();
  }
}

// ---- Identities through the model ------------------------------------------------------

TEST_F(MlaModelTest, LcaAndChunkingIdentities) {
  Rng rng(4242);
  for (const Variant& v : variants()) {
    SCOPED_TRACE(v.name);
    const Tiny m = v.make(rng);
    write_hf(dir_ / v.name, m);
    const Model model = Model::load((dir_ / v.name).string());
    const int64_t T = 41;
    const std::vector<int64_t> tokens = random_tokens(rng, T, m.V);

    // A window longer than the sequence: nothing condenses, LCA is full attention.
    LcaParams wide;
    wide.window = T + 5;
    wide.group = 4;
    Sequence full(model, LcaParams::full(), lca::DType::f32), lca_wide(model, wide, lca::DType::f32);
    const Tensor<float> full_logits = full.forward(tokens, true);
    EXPECT_LT(max_rel_diff(lca_wide.forward(tokens, true), full_logits), 1e-6);
    EXPECT_EQ(lca_wide.caches()[0].representatives(), 0);

    // Condensing LCA: chunked prefill equals token by token.
    LcaParams lca;
    lca.window = 8;
    lca.group = 4;
    Sequence stepwise(model, lca, lca::DType::f32);
    Tensor<float> last_step;
    for (int64_t t = 0; t < T; ++t) last_step = stepwise.forward(std::span(tokens).subspan(t, 1));
    for (int64_t chunk : {5, 16}) {
      Sequence chunked(model, lca, lca::DType::f32);
      const Tensor<float> last = chunked.prefill(tokens, chunk);
      EXPECT_LT(max_rel_diff(last, last_step), 2e-5) << "chunk " << chunk;
      EXPECT_EQ(chunked.caches()[1].entries(), stepwise.caches()[1].entries());
    }
    EXPECT_GT(stepwise.caches()[0].representatives(), 0);
    EXPECT_LT(stepwise.cache_bytes(), stepwise.full_cache_bytes());
    // And it is not full attention once groups condense.
    Tensor<float> full_last({1, m.V});
    std::copy_n(full_logits.row(T - 1), m.V, full_last.data());
    EXPECT_GT(max_rel_diff(last_step, full_last), 1e-4);
  }
}

// ---- Errors ----------------------------------------------------------------------------

using lca_test::expect_error;

TEST_F(MlaModelTest, BadCheckpointsNameWhatIsWrong) {
  Rng rng(5);
  const Tiny v2 = tiny_v2(rng, false, false), v3 = tiny_v3(rng, true), cpm = tiny_minicpm3(rng);
  auto load = [&](const std::string& d) { return [this, d] { Model::load((dir_ / d).string()); }; };

  write_hf(dir_ / "expert", v2, "model.layers.2.mlp.experts.3.up_proj.weight");
  expect_error(load("expert"), {"model.layers.2.mlp.experts.3.up_proj.weight"});
  write_hf(dir_ / "bias", v3, "model.layers.1.mlp.gate.e_score_correction_bias");
  expect_error(load("bias"), {"model.layers.1.mlp.gate.e_score_correction_bias"});
  write_hf(dir_ / "qa", v3, "model.layers.0.self_attn.q_a_layernorm.weight");
  expect_error(load("qa"), {"model.layers.0.self_attn.q_a_layernorm.weight"});
  write_hf(dir_ / "head", v2, "lm_head.weight");
  expect_error(load("head"), {"lm_head.weight", "tie"});

  Tiny wrong = v2;
  for (auto& [n, t] : wrong.tensors)
    if (n == "model.layers.1.self_attn.kv_b_proj.weight") t = Tensor<float>({v2.H * (v2.dn + v2.dv), v2.dc + 1});
  write_hf(dir_ / "shape", wrong);
  expect_error(load("shape"), {"model.layers.1.self_attn.kv_b_proj.weight", "[45, 12]"});

  write_hf(dir_ / "method", v2, "", [](json& c) { c["topk_method"] = "bogus"; });
  expect_error(load("method"), {"topk_method", "bogus", "not supported"});
  write_hf(dir_ / "norm", v2, "", [](json& c) { c["norm_topk_prob"] = true; });
  expect_error(load("norm"), {"norm_topk_prob", "DeepseekV2ForCausalLM"});
  write_hf(dir_ / "groups", v3, "", [](json& c) { c["n_group"] = 3; });
  expect_error(load("groups"), {"n_group", "3"});
  write_hf(dir_ / "k", v2, "", [](json& c) { c.erase("num_experts_per_tok"); });
  expect_error(load("k"), {"num_experts_per_tok", "missing"});
  write_hf(dir_ / "linear", v2, "", [](json& c) { c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; });
  expect_error(load("linear"), {"rope_scaling linear", "not supported"});
  write_hf(dir_ / "long", cpm, "", [](json& c) { c["max_position_embeddings"] = 500; });
  expect_error(load("long"), {"longrope", "original_max_position_embeddings", "not supported"});
  write_hf(dir_ / "short", cpm, "", [](json& c) { c["rope_parameters"]["short_factor"] = {1.0, 2.0}; });
  expect_error(load("short"), {"short_factor", "2 values"});
  write_hf(dir_ / "act", cpm, "", [](json& c) { c["hidden_act"] = "gelu"; });
  expect_error(load("act"), {"hidden_act", "gelu"});
}

// ---- MTLA (mtla-spec.md) through the model ----------------------------------------------

using lca_test::mla::add_hypernets;

std::function<void(json&)> declare_mtla(int64_t s) {
  return [s](json& c) { c["mtla"] = {{"down_rate", s}}; };
}

lca::MtlaParams down_rate(int64_t s) {
  lca::MtlaParams p;
  p.down_rate = s;
  return p;
}

int64_t ceil_div(int64_t n, int64_t s) { return (n + s - 1) / s; }

// Logits equal the float64 oracle (MTLA rows of the spec's training form, the
// decompressed MLA attention over them) for every architecture and several
// rates; the cache holds ceil(n/s) rows per layer.
TEST_F(MlaModelTest, MtlaForwardMatchesFloat64Oracle) {
  Rng rng(0x6d746c61);
  for (const Variant& v : variants()) {
    Tiny m = v.make(rng);
    add_hypernets(m, rng);
    write_hf(dir_ / v.name, m, "", declare_mtla(2));
    const Model model = Model::load((dir_ / v.name).string());
    ASSERT_TRUE(model.has_mtla());
    ASSERT_TRUE(model.config().mtla.has_value());
    EXPECT_EQ(model.config().mtla->down_rate, 2);
    const std::vector<int64_t> tokens = random_tokens(rng, 13, m.V);
    const std::vector<Vec> plain = oracle_logits(m, tokens);
    for (int64_t s : {2, 3, 5}) {
      SCOPED_TRACE(v.name + " s=" + std::to_string(s));
      const std::vector<Vec> expected = oracle_logits(m, tokens, s);
      // The oracle tells MTLA from plain attention.
      Tensor<float> plain_last({1, m.V}), mtla_last({1, m.V});
      for (int64_t i = 0; i < m.V; ++i) {
        plain_last.data()[i] = static_cast<float>(plain.back()[i]);
        mtla_last.data()[i] = static_cast<float>(expected.back()[i]);
      }
      EXPECT_GT(max_rel_diff(mtla_last, plain_last), 1e-3);

      Sequence seq(model, down_rate(s), lca::DType::f32);
      const Tensor<float> first = seq.forward(std::span(tokens).first(7), true);
      EXPECT_LT(max_rel_diff(first, std::vector<Vec>(expected.begin(), expected.begin() + 7)), 5e-5);
      for (size_t t = 7; t < tokens.size(); ++t) {
        const Tensor<float> one = seq.forward(std::span(tokens).subspan(t, 1));
        EXPECT_LT(max_rel_diff(one, {expected[t]}), 5e-5) << "position " << t;
      }
      const int64_t n = static_cast<int64_t>(tokens.size());
      for (const lca::CondensedKvCache& cache : seq.caches()) {
        EXPECT_TRUE(cache.is_mtla());
        EXPECT_EQ(cache.entries(), ceil_div(n, s));
      }
      const int64_t open = n % s != 0 ? m.dc * 4 : 0;  // the open row's fp32 sum
      EXPECT_EQ(seq.cache_bytes(), m.layers * (ceil_div(n, s) * (m.dc + m.dr) * 4 + open));
      EXPECT_TRUE(std::holds_alternative<lca::MtlaParams>(seq.policy()));
      EXPECT_THROW(seq.params(), lca::Error);
    }
  }
}

// Identities 1 and 2: chunked prefill equals token by token, in f32 and bf16
// caches; ceil(n/s) rows in every layer at every n.
TEST_F(MlaModelTest, MtlaChunkedPrefillEqualsTokenByToken) {
  Rng rng(0x31);
  for (const Variant& v : variants()) {
    Tiny m = v.make(rng);
    add_hypernets(m, rng);
    write_hf(dir_ / v.name, m);  // hyper-networks without the config's "mtla": the rate is the caller's
    const Model model = Model::load((dir_ / v.name).string());
    ASSERT_TRUE(model.has_mtla());
    EXPECT_FALSE(model.config().mtla.has_value());
    const int64_t T = 29;
    const std::vector<int64_t> tokens = random_tokens(rng, T, m.V);
    for (const auto& [dt, s] : {std::pair{lca::DType::f32, int64_t{3}}, std::pair{lca::DType::bf16, int64_t{4}}}) {
      SCOPED_TRACE(v.name + " s=" + std::to_string(s) + " " + lca::dtype_name(dt));
      Sequence stepwise(model, down_rate(s), dt);
      Tensor<float> last_step;
      for (int64_t t = 0; t < T; ++t) {
        last_step = stepwise.forward(std::span(tokens).subspan(t, 1));
        for (const auto& cache : stepwise.caches()) ASSERT_EQ(cache.entries(), ceil_div(t + 1, s)) << "n " << t + 1;
      }
      for (int64_t chunk : {int64_t{5}, int64_t{16}, T}) {
        Sequence chunked(model, down_rate(s), dt);
        const Tensor<float> last = chunked.prefill(tokens, chunk);
        EXPECT_LT(max_rel_diff(last, last_step), dt == lca::DType::f32 ? 1e-5 : 5e-3) << "chunk " << chunk;
        for (const auto& cache : chunked.caches()) EXPECT_EQ(cache.entries(), ceil_div(T, s));
      }
    }
  }
}

// Identity 3: s = 1 is full MLA attention over the scaled latents w_i c_i, one
// row per token with its own rope key (the oracle's dense form), not plain MLA.
TEST_F(MlaModelTest, MtlaDownRateOneIsFullMlaOverScaledLatents) {
  Rng rng(0x51);
  for (const Variant& v : variants()) {
    SCOPED_TRACE(v.name);
    Tiny m = v.make(rng);
    add_hypernets(m, rng);
    write_hf(dir_ / v.name, m, "", declare_mtla(1));
    const Model model = Model::load((dir_ / v.name).string());
    const std::vector<int64_t> tokens = random_tokens(rng, 11, m.V);
    const std::vector<Vec> expected = oracle_logits(m, tokens, 1);
    Sequence seq(model, *model.config().mtla, lca::DType::f32);
    const Tensor<float> logits = seq.forward(tokens, true);
    EXPECT_LT(max_rel_diff(logits, expected), 5e-5);
    EXPECT_EQ(seq.caches()[0].entries(), 11);
    // w_i != 1: plain full attention over c_i differs.
    Sequence full(model, LcaParams::full(), lca::DType::f32);
    EXPECT_GT(max_rel_diff(full.forward(tokens, true), logits), 1e-3);
  }
}

TEST(MlaConfig, MtlaField) {
  Rng rng(3);
  const Tiny m = tiny_v2(rng, false, false);
  json c = config_of(m);
  EXPECT_FALSE(lca::parse_model_config(c.dump(), "t").mtla.has_value());
  c["mtla"] = nullptr;
  EXPECT_FALSE(lca::parse_model_config(c.dump(), "t").mtla.has_value());
  const int64_t s = rng.uniform_int(1, 64);
  c["mtla"] = {{"down_rate", s}};
  const lca::ModelConfig parsed = lca::parse_model_config(c.dump(), "t");
  ASSERT_TRUE(parsed.mtla.has_value());
  EXPECT_EQ(parsed.mtla->down_rate, s);

  auto bad = [&](const json& mtla, const std::vector<std::string>& parts, const std::function<void(json&)>& edit = {}) {
    json b = config_of(m);
    b["mtla"] = mtla;
    if (edit) edit(b);
    expect_error([&] { lca::parse_model_config(b.dump(), "cfg"); }, parts);
  };
  bad({{"down_rate", 0}}, {"cfg", "\"mtla.down_rate\"", ">= 1", "got 0"});
  bad({{"down_rate", 2.5}}, {"\"mtla.down_rate\"", "integer"});
  bad(json::object(), {"\"mtla.down_rate\"", "missing"});
  bad({{"down_rate", 2}, {"downrate", 2}}, {"\"mtla.downrate\"", "not an MTLA field"});
  bad(json::array({2}), {"\"mtla\"", "an array", "object"});
  bad({{"down_rate", 2}}, {"\"mtla\"", "kv_lora_rank", "multiple of 4"}, [](json& b) {
    b["kv_lora_rank"] = 10;
  });
  // A GQA model may not declare it.
  const json llama = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 16}, {"num_hidden_layers", 1},
                      {"num_attention_heads", 2},                {"vocab_size", 10}, {"intermediate_size", 8},
                      {"max_position_embeddings", 32},           {"rms_norm_eps", 1e-6},
                      {"mtla", {{"down_rate", 2}}}};
  expect_error([&] { lca::parse_model_config(llama.dump(), "llama"); },
               {"\"mtla\"", "LlamaForCausalLM", "only MLA architectures"});
}

TEST_F(MlaModelTest, MtlaBadCheckpointsNameTheTensor) {
  Rng rng(0x99);
  Tiny m = tiny_v3(rng, true);
  const Tiny plain = m;
  add_hypernets(m, rng);
  auto load = [&](const std::string& d) { return [this, d] { Model::load((dir_ / d).string()); }; };

  write_hf(dir_ / "missing", m, "model.layers.1.self_attn.hypernet_down.fc_p.bias", declare_mtla(2));
  expect_error(load("missing"), {"model.layers.1.self_attn.hypernet_down.fc_p.bias"});
  // Without the config's "mtla" too: layer 0 has one, so every layer needs one.
  write_hf(dir_ / "missing_undeclared", m, "model.layers.2.self_attn.hypernet_down.fc_c.weight");
  expect_error(load("missing_undeclared"), {"model.layers.2.self_attn.hypernet_down.fc_c.weight"});
  // Declared, but the checkpoint has none.
  write_hf(dir_ / "none", plain, "", declare_mtla(2));
  expect_error(load("none"), {"model.layers.0.self_attn.hypernet_down.fc_c.weight"});

  Tiny wrong = m;
  for (auto& [n, t] : wrong.tensors)
    if (n == "model.layers.1.self_attn.hypernet_down.fc_c.weight") t = Tensor<float>({m.dc / 4, m.dc + 1});
  write_hf(dir_ / "shape", wrong, "", declare_mtla(2));
  expect_error(load("shape"), {"model.layers.1.self_attn.hypernet_down.fc_c.weight", "[3, 13]"});

  // A model built in memory with a non-finite hyper-network weight.
  write_hf(dir_ / "good", m, "", declare_mtla(2));
  const Model good = Model::load((dir_ / "good").string());
  lca::ModelWeights nan_weights = good.weights();
  nan_weights.layers[2].mtla.fc_p_bias.data()[1] = NAN;
  expect_error([&] { const Model bad(good.config(), nan_weights); },
               {"model.layers.2.self_attn.hypernet_down.fc_p.bias", "finite"});

  // MTLA on a checkpoint without hyper-networks.
  write_hf(dir_ / "plain", plain);
  const Model no_hyper = Model::load((dir_ / "plain").string());
  EXPECT_FALSE(no_hyper.has_mtla());
  expect_error([&] { const Sequence seq(no_hyper, down_rate(2)); },
               {"has no MTLA hyper-networks", "model.layers.0.self_attn.hypernet_down.fc_c.weight"});
  expect_error([&] { const Sequence seq(good, down_rate(0)); }, {"down_rate", ">= 1"});
}

// A GQA model: MTLA is refused by the sequence and, with hyper-networks, by the model.
TEST(MlaModelMtla, GqaModelRefusesMtla) {
  Rng rng(0x47);
  lca::ModelConfig c;
  c.source = "tiny-llama";
  c.architecture = "LlamaForCausalLM";
  c.attention = lca::AttentionKind::gqa;
  c.gqa = {4, 2, 4};
  c.hidden_size = 16;
  c.num_hidden_layers = 1;
  c.vocab_size = 11;
  c.intermediate_size = 12;
  c.max_position_embeddings = 32;
  c.rms_norm_eps = 1e-6;
  lca::ModelWeights w;
  w.embed = lca_test::randn<float>({11, 16}, rng);
  w.final_norm = lca_test::randn<float>({16}, rng, 0.1, 1.0);
  w.lm_head = lca_test::randn<float>({11, 16}, rng);
  lca::LayerWeights lw;
  lw.attn_norm = lw.ffn_norm = lca_test::randn<float>({16}, rng, 0.1, 1.0);
  lw.wq = lca_test::randn<float>({16, 16}, rng);
  lw.wk = lw.wv = lca_test::randn<float>({8, 16}, rng);
  lw.wo = lca_test::randn<float>({16, 16}, rng);
  lw.bq = lw.bk = lw.bv = Tensor<float>({0});
  lw.w_gate = lw.w_up = lca_test::randn<float>({12, 16}, rng);
  lw.w_down = lca_test::randn<float>({16, 12}, rng);
  w.layers.push_back(lw);
  const Model model(c, w);
  Sequence(model, LcaParams::full()).forward(std::vector<int64_t>{1, 2});  // the model itself runs
  expect_error([&] { const Sequence seq(model, down_rate(2)); }, {"MTLA needs an MLA model", "tiny-llama", "GQA"});
  lca::LayerWeights with_hyper = lw;
  with_hyper.mtla = {Tensor<float>({1, 4}), Tensor<float>({1}), Tensor<float>({1, 4}), Tensor<float>({1})};
  w.layers[0] = with_hyper;
  expect_error([&] { const Model bad(c, w); }, {"MTLA hyper-networks", "GQA model"});
}

#ifdef LCA_CLI_PATH
// `lca generate --attention mtla`: runs on a checkpoint with hyper-networks
// (the config's rate, or --down-rate) and reports the MTLA cache bytes;
// refuses a checkpoint without them.
TEST_F(MlaModelTest, GenerateWithMtla) {
  Rng rng(0x6e);
  Tiny m = tiny_v2(rng, true, false);
  const Tiny plain = m;
  add_hypernets(m, rng);
  write_hf(dir_ / "mtla", m, "", declare_mtla(3));
  write_hf(dir_ / "plain", plain);
  auto run = [&](const std::string& model, const std::string& args, std::string& err) {
    const fs::path err_file = dir_ / "stderr.txt";
    const std::string cmd = std::string(LCA_CLI_PATH) + " generate --model '" + (dir_ / model).string() +
                            "' --prompt-ids 1,2,3,4,5 --max-new-tokens 3 --ignore-eos --dtype f32 " + args +
                            " > /dev/null 2> '" + err_file.string() + "'";
    const int rc = std::system(cmd.c_str());
    std::ifstream f(err_file);
    err.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return rc;
  };
  // 5 prompt tokens and 2 decoded ones (the third is not fed back) sit in the cache.
  auto bytes = [&](int64_t s) {
    const int64_t n = 7;
    return m.layers * (ceil_div(n, s) * (m.dc + m.dr) * 4 + (n % s != 0 ? m.dc * 4 : 0));
  };
  std::string err;
  EXPECT_EQ(run("mtla", "--attention mtla", err), 0) << err;
  EXPECT_NE(err.find("mtla(s=3) attention"), std::string::npos) << err;
  EXPECT_NE(err.find("(mtla(s=3), " + std::to_string(bytes(3)) + " bytes)"), std::string::npos) << err;
  EXPECT_EQ(run("mtla", "--attention mtla --down-rate 2", err), 0) << err;
  EXPECT_NE(err.find("(mtla(s=2), " + std::to_string(bytes(2)) + " bytes)"), std::string::npos) << err;
  EXPECT_NE(run("plain", "--attention mtla --down-rate 2", err), 0);
  EXPECT_NE(err.find("has no MTLA hyper-networks (model.layers.0.self_attn.hypernet_down.fc_c.weight"),
            std::string::npos)
      << err;
  EXPECT_NE(run("plain", "--attention lca --down-rate 2", err), 0);
  EXPECT_NE(err.find("--down-rate applies to --attention mtla only"), std::string::npos) << err;
}
#endif

}  // namespace
