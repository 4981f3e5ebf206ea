// PagedKvCache: the block bookkeeping of the GPU condensed cache, on the host.
// The host knows every sequence's length, so it knows ahead of each step which
// blocks the step needs (a raw block when a token opens one, a representative
// block when a group closes into a new one) and which raw blocks it frees
// (those whose groups are all condensed); the kernels only read the tables.
#include "lca/paged_cache.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <variant>
#include <cmath>
#include <vector>

#include "cuda/decode.hpp"
#include "cuda/device_memory.hpp"
#include "lca/cuda.hpp"
#include "lca/error.hpp"

namespace lca::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void PagedCacheConfig::validate() const {
  const char* where = "PagedCacheConfig";
  const bool is_mtla = std::holds_alternative<MtlaParams>(policy);
  const LcaParams params = is_mtla ? LcaParams::full() : std::get<LcaParams>(policy);
  params.validate();
  if (is_mtla) {
    std::get<MtlaParams>(policy).validate();
    LCA_CHECK(layout == KvLayout::mla, where, ": MTLA is defined for the MLA layout only (mtla-spec.md)");
    LCA_CHECK(static_cast<int64_t>(mtla_hyper.size()) == layers, where, ": mtla_hyper holds ", mtla_hyper.size(),
              " hyper-networks for ", layers, " layers (one per layer)");
    for (const MtlaHyperNet<float>& h : mtla_hyper) h.validate(mla);
  }
  LCA_CHECK(std::isfinite(scale) && scale > 0, where, ": scale must be finite and > 0, got ", scale);
  LCA_CHECK(dtype == DType::bf16 || dtype == DType::f16, where, ": dtype must be bf16 or f16, got ",
            dtype_name(dtype));
  LCA_CHECK(layers >= 1, where, ": layers must be >= 1, got ", layers);
  LCA_CHECK(max_seqs >= 1 && max_seqs <= 65535, where, ": max_seqs must be in [1, 65535], got ", max_seqs);
  LCA_CHECK(max_context >= 1 && max_context <= (int64_t(1) << 30), where, ": max_context must be in [1, 2^30], got ",
            max_context);
  LCA_CHECK(block_rows >= 1 && block_rows <= (1 << 20), where, ": block_rows must be in [1, 2^20], got ", block_rows);
  if (!params.is_full()) {
    LCA_CHECK(block_rows % params.group == 0, where, ": block_rows (", block_rows,
              ") must be a multiple of the group size g (", params.group, ") so a group never straddles two blocks");
    LCA_CHECK(params.group <= 1024, where, ": group ", params.group, " is larger than the kernels' 1024");
  }
  LCA_CHECK(pool_bytes >= 0, where, ": pool_bytes must be >= 0, got ", pool_bytes);
  LCA_CHECK(max_splits >= 1 && max_splits <= 1024, where, ": max_splits must be in [1, 1024], got ", max_splits);
  if (!params.is_full()) {
    // The decode condense kernel holds a group's rows in shared memory.
    const int64_t part = layout == KvLayout::mla ? mla.row_width() : 2 * gqa.head_dim;
    const int64_t bytes = params.group * part * dtype_size(dtype) + 4 * (part + params.group + 8);
    LCA_CHECK(bytes <= 200 * 1024, where, ": group ", params.group, " needs ", bytes,
              " bytes of shared memory in the decode condense kernel, more than its 200 KB");
  }
  if (layout == KvLayout::mla) {
    mla.validate();
    LCA_CHECK(detail::decode_supports(true, mla.row_width(), mla.d_latent), where, ": MLA d_latent ", mla.d_latent,
              " with d_rope ", mla.d_rope, " is not built for decode; built: (512, 64) and (256, 32)");
  } else {
    gqa.validate();
    if (!params.is_full() && params.key_mode == KeyMode::pooled) rope.validate();
    LCA_CHECK(detail::decode_supports(false, gqa.head_dim, gqa.head_dim), where, ": GQA head_dim ", gqa.head_dim,
              " is not built for decode; built: 64 and 128");
  }
}

std::string PagedCacheConfig::describe() const {
  std::string s = layout == KvLayout::mla ? "mla" : "gqa";
  s += " " + std::visit([](const auto& p) { return p.describe(); }, policy) + " " + std::string(dtype_name(dtype)) + ", " + std::to_string(layers) + " layers, " +
       std::to_string(max_seqs) + " sequences of up to " + std::to_string(max_context) + " tokens, blocks of " +
       std::to_string(block_rows) + " rows";
  return s;
}

struct PagedKvCache::Impl {
  PagedCacheConfig cfg;
  detail::DecodeShape shape;
  int64_t row_elems = 0, ring_width = 0, rep_stride = 0, raw_stride = 0, total_blocks = 0, g = 1;
  int64_t block_bytes = 0;
  int64_t split_target = 1;  // attention CTAs that fill the device once
  LcaParams lca;             // LCA, or LcaParams::full() for full attention and for MTLA (no groups, no ring)
  int64_t mtla_s = 0;        // MTLA's down rate s; 0 for LCA and full
  bool full = false;         // no ring and no condensing: full attention or MTLA
  float* d_open = nullptr;   // MTLA: [layers * max_seqs, d_c] fp32 open-row sums
  float* d_hyper = nullptr;  // MTLA: per layer fc_c W, b, fc_p W, b
  int64_t hyper_floats = 0;

  void* pool = nullptr;
  std::vector<int32_t> free_list;  // block ids, taken from the back
  std::vector<int32_t> rep_table, raw_table;  // host mirrors of the device tables
  int32_t* d_rep_table = nullptr;
  int32_t* d_raw_table = nullptr;
  float* d_ring = nullptr;

  struct Seq {
    bool active = false;
    int64_t n = 0;
    int64_t raw_first = 0;  // first raw block index still held
    int64_t extending = 0;  // tokens of the chunk between begin_extend and end_extend (0: none)
  };
  std::vector<Seq> seqs;

  // The step.
  bool in_step = false;
  std::vector<int32_t> step_seqs;
  std::vector<int64_t> step_positions;
  int32_t* d_step_seqs = nullptr;
  int64_t* d_step_positions = nullptr;
  int64_t splits = 1;
  void* d_part_out = nullptr;  // split outputs: fp32, or the storage dtype (decode_combine.cu)
  float* d_part_lse = nullptr;
  int64_t part_capacity = 0;  // batch * splits the workspace holds

  // The device allocations; the typed pointers above view them.
  detail::DeviceArray pool_mem, rep_table_mem, raw_table_mem, ring_mem, step_seqs_mem, step_positions_mem,
      part_out_mem, part_lse_mem, open_mem, hyper_mem;

  // Rows of the representative segment after n tokens (MTLA: every row, ceil(n/s)),
  // and the first position held raw.
  int64_t groups(int64_t n) const { return mtla_s > 0 ? ceil_div(n, mtla_s) : condensed_groups(n, lca); }
  int64_t raw_from(int64_t n) const { return mtla_s > 0 ? n : first_raw_position(n, lca); }
  int64_t entries(int64_t n) const { return groups(n) + n - raw_from(n); }
  int64_t tr(int64_t layer, int64_t seq) const { return layer * cfg.max_seqs + seq; }
  int32_t& rep_at(int64_t layer, int64_t seq, int64_t i) { return rep_table[tr(layer, seq) * rep_stride + i]; }
  int32_t& raw_at(int64_t layer, int64_t seq, int64_t i) { return raw_table[tr(layer, seq) * raw_stride + i]; }
  // Returns to the pool, in every layer, the raw blocks of `seq` below its
  // first raw position: they hold only condensed groups. Blocks of positions
  // condensed within one prefill chunk were never taken (-1).
  void release_condensed_raw(int64_t seq) {
    Seq& s = seqs[static_cast<size_t>(seq)];
    while (!full && (s.raw_first + 1) * cfg.block_rows <= raw_from(s.n)) {
      for (int64_t layer = 0; layer < cfg.layers; ++layer) {
        int32_t& b = raw_at(layer, seq, s.raw_first);
        if (b >= 0) free_list.push_back(b), b = -1;
      }
      ++s.raw_first;
    }
  }

  void check_seq(const char* where, int64_t seq) const {
    LCA_CHECK(seq >= 0 && seq < cfg.max_seqs && seqs[static_cast<size_t>(seq)].active, where, ": sequence ", seq,
              " is not an active slot (add_sequence gives one)");
  }
  void check_layer(const char* where, int64_t layer) const {
    LCA_CHECK(layer >= 0 && layer < cfg.layers, where, ": layer ", layer, " is out of range [0, ", cfg.layers, ")");
  }
  void require_blocks(const char* where, int64_t need) const {
    LCA_CHECK(need <= static_cast<int64_t>(free_list.size()), where, ": out of cache blocks: ", need,
              " needed, ", static_cast<int64_t>(free_list.size()), " free (pool of ", total_blocks, " blocks of ",
              cfg.block_rows, " rows, ", block_bytes, " bytes each)");
  }
  int32_t take() {
    const int32_t b = free_list.back();
    free_list.pop_back();
    return b;
  }
  void upload_entry(const char* where, int32_t* device_table, const std::vector<int32_t>& host, int64_t index,
                    cudaStream_t stream) {
    LCA_CUDA_OK(where, cudaMemcpyAsync(device_table + index, host.data() + index, sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream));
  }
  void upload_tables(const char* where, int64_t seq) {
    for (int64_t layer = 0; layer < cfg.layers; ++layer) {
      const int64_t r = tr(layer, seq);
      LCA_CUDA_OK(where, cudaMemcpy(d_rep_table + r * rep_stride, rep_table.data() + r * rep_stride,
                                    rep_stride * sizeof(int32_t), cudaMemcpyHostToDevice));
      LCA_CUDA_OK(where, cudaMemcpy(d_raw_table + r * raw_stride, raw_table.data() + r * raw_stride,
                                    raw_stride * sizeof(int32_t), cudaMemcpyHostToDevice));
    }
  }
  // The blocks begin_extend takes to grow a sequence from n0 to n1 tokens
  // (block indices [lo, hi) of each table): the representatives' new blocks,
  // and the raw blocks of positions [max(g m(n1), n0), n1) not held yet (the
  // held ones are [raw_first, ceil(n0 / B)); positions below g m(n1) are
  // condensed within the chunk and never stored). MTLA holds no raw rows: its
  // new rows are the representative segment's [ceil(n0/s), ceil(n1/s)).
  struct ExtendBlocks {
    int64_t rep_lo, rep_hi, raw_lo, raw_hi;
    int64_t count() const { return rep_hi - rep_lo + raw_hi - raw_lo; }
  };
  ExtendBlocks extend_blocks(int64_t n0, int64_t n1) const {
    const int64_t B = cfg.block_rows;
    if (mtla_s > 0) return {ceil_div(groups(n0), B), ceil_div(groups(n1), B), 0, 0};
    return {ceil_div(groups(n0), B), ceil_div(groups(n1), B), std::max(ceil_div(n0, B), raw_from(n1) / B),
            ceil_div(n1, B)};
  }
  // Raw blocks end_extend returns from n0 to n1: the held ones below raw_from(n1) / B.
  int64_t extend_releases(int64_t n0, int64_t n1) const {
    if (full) return 0;
    const int64_t B = cfg.block_rows;
    return std::max<int64_t>(0, std::min(ceil_div(n0, B), raw_from(n1) / B) - raw_from(n0) / B);
  }
  // Rows [first, first + count) of a segment of (layer, seq) to or from the
  // contiguous device rows `dev`, one copy per block run, on `stream`.
  void copy_rows(const char* where, int64_t layer, int64_t seq, bool rep, int64_t first, int64_t count, void* dev,
                 bool into_cache, cudaStream_t stream) const {
    const int64_t B = cfg.block_rows, row_bytes = row_elems * dtype_size(cfg.dtype);
    const int64_t t = tr(layer, seq);
    for (int64_t r = 0; r < count;) {
      const int64_t idx = first + r, run = std::min(count - r, B - idx % B);
      const int32_t block = rep ? rep_table[t * rep_stride + idx / B] : raw_table[t * raw_stride + idx / B];
      void* cached = row_address(block, idx % B);
      void* buf = static_cast<char*>(dev) + r * row_bytes;
      LCA_CUDA_OK(where, cudaMemcpyAsync(into_cache ? cached : buf, into_cache ? buf : cached, run * row_bytes,
                                         cudaMemcpyDeviceToDevice, stream));
      r += run;
    }
  }
  // The ring rows of positions [first, first + count) (slot p % g) to or from
  // the contiguous fp32 device rows `dev`, one copy per run of slots.
  void copy_ring(const char* where, int64_t layer, int64_t seq, int64_t first, int64_t count, float* dev,
                 bool into_cache, cudaStream_t stream) const {
    float* base = d_ring + tr(layer, seq) * g * ring_width;
    for (int64_t r = 0; r < count;) {
      const int64_t slot = (first + r) % g, run = std::min(count - r, g - slot);
      float* cached = base + slot * ring_width;
      float* buf = dev + r * ring_width;
      LCA_CUDA_OK(where, cudaMemcpyAsync(into_cache ? cached : buf, into_cache ? buf : cached,
                                         run * ring_width * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      r += run;
    }
  }
  void* row_address(int32_t block, int64_t offset) const {
    return static_cast<unsigned char*>(pool) + (block * cfg.block_rows + offset) * row_elems * dtype_size(cfg.dtype);
  }
  detail::PagedView view(int64_t layer) const {
    detail::PagedView v;
    v.pool = pool;
    v.row_elems = row_elems;
    v.block_rows = cfg.block_rows;
    v.rep_table = d_rep_table;
    v.raw_table = d_raw_table;
    v.rep_stride = rep_stride;
    v.raw_stride = raw_stride;
    v.ring = d_ring;
    v.ring_width = ring_width;
    v.table_base = layer * cfg.max_seqs;
    v.window = full ? 0 : lca.window;
    v.group = g;
    v.full = full;
    v.mtla_s = mtla_s;
    v.open_sum = d_open;
    v.hyper = d_hyper == nullptr ? nullptr : d_hyper + layer * hyper_floats;
    return v;
  }
};

PagedKvCache::PagedKvCache(const PagedCacheConfig& config) : impl_(std::make_unique<Impl>()) {
  const char* where = "PagedKvCache";
  config.validate();
  LCA_CHECK(device_present(), where, ": no CUDA device is present");
  Impl& m = *impl_;
  m.cfg = config;
  if (const MtlaParams* mp = std::get_if<MtlaParams>(&config.policy)) {
    m.mtla_s = mp->down_rate;
    m.lca = LcaParams::full();
  } else {
    m.lca = std::get<LcaParams>(config.policy);
  }
  m.full = m.lca.is_full();
  m.g = m.full ? 1 : m.lca.group;
  auto& sh = m.shape;
  if (config.layout == KvLayout::mla) {
    sh.mla = true;
    sh.q_heads = static_cast<int>(config.mla.heads);
    sh.kv_heads = 1;
    sh.d_qk = static_cast<int>(config.mla.row_width());
    sh.d_v = static_cast<int>(config.mla.d_latent);
    sh.summary_width = m.lca.score == ScoreMode::full ? sh.d_qk : sh.d_v;
    m.row_elems = config.mla.row_width();
  } else {
    sh.mla = false;
    sh.q_heads = static_cast<int>(config.gqa.q_heads);
    sh.kv_heads = static_cast<int>(config.gqa.kv_heads);
    sh.d_qk = sh.d_v = static_cast<int>(config.gqa.head_dim);
    sh.summary_width = sh.d_qk;
    m.row_elems = config.gqa.row_width();
  }
  m.ring_width = m.full ? 0 : int64_t(sh.kv_heads) * sh.summary_width;
  const int64_t B = config.block_rows;
  m.block_bytes = B * m.row_elems * dtype_size(config.dtype);
  m.rep_stride = std::max<int64_t>(1, ceil_div(m.groups(config.max_context), B));
  m.raw_stride = ceil_div(config.max_context, B);
  if (config.pool_bytes > 0) {
    m.total_blocks = config.pool_bytes / m.block_bytes;
  } else {
    // Per (layer, sequence): every representative block, and the raw blocks the
    // window spans during a step (w + g rows, one more block when unaligned).
    const int64_t raw_blocks = m.mtla_s > 0 ? 0
                               : m.full     ? m.raw_stride
                                            : std::min(m.raw_stride, ceil_div(m.lca.window + m.g, B) + 1);
    const int64_t rep_blocks = ceil_div(m.groups(config.max_context), B);
    // LCA: one sequence at a time may hold a second window while a prefill
    // chunk is extending it (the old raw blocks are read until end_extend).
    const int64_t chunk_blocks = m.mtla_s > 0 || m.full ? 0 : raw_blocks;
    m.total_blocks = config.layers * (config.max_seqs * (raw_blocks + rep_blocks) + chunk_blocks);
  }
  LCA_CHECK(m.total_blocks >= 1, where, ": pool_bytes ", config.pool_bytes, " holds no block of ", m.block_bytes,
            " bytes");
  LCA_CHECK(m.total_blocks < (int64_t(1) << 31), where, ": ", m.total_blocks, " blocks exceed the 2^31 block ids");

  m.pool_mem = detail::DeviceArray("the block pool", m.total_blocks * m.block_bytes);
  m.pool = m.pool_mem.as<unsigned char>();
  m.free_list.resize(static_cast<size_t>(m.total_blocks));
  for (int64_t i = 0; i < m.total_blocks; ++i) m.free_list[static_cast<size_t>(i)] = static_cast<int32_t>(m.total_blocks - 1 - i);
  const int64_t rows = config.layers * config.max_seqs;
  m.rep_table.assign(static_cast<size_t>(rows * m.rep_stride), -1);
  m.raw_table.assign(static_cast<size_t>(rows * m.raw_stride), -1);
  m.rep_table_mem =
      detail::DeviceArray("the representative block tables", rows * m.rep_stride * int64_t(sizeof(int32_t)));
  m.d_rep_table = m.rep_table_mem.as<int32_t>();
  m.raw_table_mem = detail::DeviceArray("the raw block tables", rows * m.raw_stride * int64_t(sizeof(int32_t)));
  m.d_raw_table = m.raw_table_mem.as<int32_t>();
  LCA_CUDA_OK(where, cudaMemset(m.d_rep_table, 0xff, rows * m.rep_stride * sizeof(int32_t)));
  LCA_CUDA_OK(where, cudaMemset(m.d_raw_table, 0xff, rows * m.raw_stride * sizeof(int32_t)));
  if (!m.full) {
    m.ring_mem = detail::DeviceArray("the summary rings", rows * m.g * m.ring_width * int64_t(sizeof(float)));
    m.d_ring = m.ring_mem.as<float>();
    LCA_CUDA_OK(where, cudaMemset(m.d_ring, 0, rows * m.g * m.ring_width * sizeof(float)));
  }
  m.seqs.resize(static_cast<size_t>(config.max_seqs));
  m.step_seqs_mem = detail::DeviceArray("the step's sequence list", config.max_seqs * int64_t(sizeof(int32_t)));
  m.d_step_seqs = m.step_seqs_mem.as<int32_t>();
  m.step_positions_mem = detail::DeviceArray("the step's positions", config.max_seqs * int64_t(sizeof(int64_t)));
  m.d_step_positions = m.step_positions_mem.as<int64_t>();
  if (m.mtla_s > 0) {
    const int64_t dc = config.mla.d_latent, dq = dc / 4;
    m.open_mem = detail::DeviceArray("the MTLA open-row sums", rows * dc * int64_t(sizeof(float)));
    m.d_open = m.open_mem.as<float>();
    LCA_CUDA_OK(where, cudaMemset(m.d_open, 0, rows * dc * sizeof(float)));
    m.hyper_floats = 2 * (dq * dc + dq);
    m.hyper_mem =
        detail::DeviceArray("the MTLA hyper-networks", config.layers * m.hyper_floats * int64_t(sizeof(float)));
    m.d_hyper = m.hyper_mem.as<float>();
    for (int64_t layer = 0; layer < config.layers; ++layer) {
      const MtlaHyperNet<float>& h = config.mtla_hyper[static_cast<size_t>(layer)];
      float* dst = m.d_hyper + layer * m.hyper_floats;
      for (const Tensor<float>* part : {&h.fc_c_weight, &h.fc_c_bias, &h.fc_p_weight, &h.fc_p_bias}) {
        LCA_CUDA_OK(where, cudaMemcpy(dst, part->data(), part->numel() * sizeof(float), cudaMemcpyHostToDevice));
        dst += part->numel();
      }
    }
  }
  m.split_target = int64_t(detail::device_sm_count()) * detail::decode_ctas_per_sm(m.shape, config.dtype);
}

PagedKvCache::~PagedKvCache() = default;

const PagedCacheConfig& PagedKvCache::config() const { return impl_->cfg; }
int64_t PagedKvCache::row_width() const { return impl_->row_elems; }
int64_t PagedKvCache::query_heads() const { return impl_->shape.q_heads; }
int64_t PagedKvCache::query_width() const { return impl_->shape.d_qk; }
int64_t PagedKvCache::output_width() const { return impl_->shape.d_v; }
int64_t PagedKvCache::summary_width() const { return impl_->ring_width; }
int64_t PagedKvCache::block_bytes() const { return impl_->block_bytes; }
int64_t PagedKvCache::total_blocks() const { return impl_->total_blocks; }
int64_t PagedKvCache::free_blocks() const { return static_cast<int64_t>(impl_->free_list.size()); }
int64_t PagedKvCache::step_splits() const { return impl_->splits; }
void* PagedKvCache::device_pool() const { return impl_->pool; }

int64_t PagedKvCache::add_sequence() {
  for (size_t i = 0; i < impl_->seqs.size(); ++i)
    if (!impl_->seqs[i].active) {
      impl_->seqs[i] = Impl::Seq{.active = true};
      return static_cast<int64_t>(i);
    }
  ::lca::detail::fail("PagedKvCache::add_sequence: all ", impl_->cfg.max_seqs, " sequence slots are in use");
}

void PagedKvCache::release_sequence(int64_t seq) {
  const char* where = "PagedKvCache::release_sequence";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  LCA_CHECK(!m.in_step || std::find(m.step_seqs.begin(), m.step_seqs.end(), seq) == m.step_seqs.end(), where,
            ": sequence ", seq, " is in the current step; call end_step first");
  Impl::Seq& s = m.seqs[static_cast<size_t>(seq)];
  for (int64_t layer = 0; layer < m.cfg.layers; ++layer) {
    for (int64_t i = 0; i < m.rep_stride; ++i) {
      int32_t& b = m.rep_at(layer, seq, i);
      if (b >= 0) m.free_list.push_back(b), b = -1;
    }
    for (int64_t i = 0; i < m.raw_stride; ++i) {
      int32_t& b = m.raw_at(layer, seq, i);
      if (b >= 0) m.free_list.push_back(b), b = -1;
    }
  }
  s = Impl::Seq{};
}

int64_t PagedKvCache::tokens(int64_t seq) const {
  impl_->check_seq("PagedKvCache::tokens", seq);
  return impl_->seqs[static_cast<size_t>(seq)].n;
}

int64_t PagedKvCache::active_sequences() const {
  return std::count_if(impl_->seqs.begin(), impl_->seqs.end(), [](const Impl::Seq& s) { return s.active; });
}

int64_t PagedKvCache::entries(int64_t seq) const {
  return impl_->entries(tokens(seq));
}

void PagedKvCache::set_tokens(int64_t seq, int64_t n) {
  const char* where = "PagedKvCache::set_tokens";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  Impl::Seq& s = m.seqs[static_cast<size_t>(seq)];
  LCA_CHECK(!m.in_step, where, ": a step is in progress; call end_step first");
  LCA_CHECK(s.n == 0 && s.extending == 0, where, ": sequence ", seq, " already holds ", s.n + s.extending,
            " tokens (set_tokens fills an empty one)");
  LCA_CHECK(n >= 0 && n <= m.cfg.max_context, where, ": n = ", n, " is outside [0, max_context = ",
            m.cfg.max_context, "]");
  if (n == 0) return;
  const int64_t B = m.cfg.block_rows, reps = m.groups(n), raw_first = m.raw_from(n) / B, raw_last = (n - 1) / B;
  const int64_t raw_blocks = m.mtla_s > 0 ? 0 : raw_last - raw_first + 1;  // MTLA holds no raw rows
  const int64_t per_layer = ceil_div(reps, B) + raw_blocks;
  m.require_blocks(where, per_layer * m.cfg.layers);
  for (int64_t layer = 0; layer < m.cfg.layers; ++layer) {
    for (int64_t i = 0; i < ceil_div(reps, B); ++i) m.rep_at(layer, seq, i) = m.take();
    for (int64_t i = raw_first; i < raw_first + raw_blocks; ++i) m.raw_at(layer, seq, i) = m.take();
    for (int64_t i = 0; i < ceil_div(reps, B); ++i)
      LCA_CUDA_OK(where, cudaMemset(m.row_address(m.rep_at(layer, seq, i), 0), 0, m.block_bytes));
    for (int64_t i = raw_first; i < raw_first + raw_blocks; ++i)
      LCA_CUDA_OK(where, cudaMemset(m.row_address(m.raw_at(layer, seq, i), 0), 0, m.block_bytes));
    if (!m.full)
      LCA_CUDA_OK(where, cudaMemset(m.d_ring + m.tr(layer, seq) * m.g * m.ring_width, 0,
                                    m.g * m.ring_width * sizeof(float)));
    if (m.mtla_s > 0)
      LCA_CUDA_OK(where, cudaMemset(m.d_open + m.tr(layer, seq) * m.cfg.mla.d_latent, 0,
                                    m.cfg.mla.d_latent * sizeof(float)));
  }
  m.upload_tables(where, seq);
  s.n = n;
  s.raw_first = raw_first;
}

void PagedKvCache::write_layer(int64_t seq, int64_t layer, const PagedLayerContents& c) {
  const char* where = "PagedKvCache::write_layer";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  m.check_layer(where, layer);
  const int64_t n = m.seqs[static_cast<size_t>(seq)].n, reps = m.groups(n), first_raw = m.raw_from(n);
  const int64_t ring_rows = m.full ? 0 : std::min(n, m.g - 1);
  expect_shape(where, "representatives", c.representatives, {reps, m.row_elems});
  expect_shape(where, "raw", c.raw, {n - first_raw, m.row_elems});
  if (m.full) LCA_CHECK(c.summary_ring.numel() == 0, where, ": summary_ring must be empty for full attention and MTLA");
  else expect_shape(where, "summary_ring", c.summary_ring, {ring_rows, m.ring_width});
  const bool open = m.mtla_s > 0 && n % m.mtla_s != 0;
  if (open) expect_shape(where, "open_sum", c.open_sum, {m.cfg.mla.d_latent});
  else LCA_CHECK(c.open_sum.numel() == 0, where, ": open_sum must be empty when no MTLA row is open");
  const int64_t B = m.cfg.block_rows, dsize = dtype_size(m.cfg.dtype);
  std::vector<unsigned char> bytes;
  // Rows [0, count) of `rows` go to consecutive indices from `first` of a segment.
  auto put = [&](const Tensor<float>& rows, int64_t first, bool rep) {
    const int64_t count = rows.dim(0);
    bytes.resize(static_cast<size_t>(count * m.row_elems * dsize));
    encode(m.cfg.dtype, rows.data(), count * m.row_elems, bytes.data());
    for (int64_t r = 0; r < count;) {
      const int64_t idx = first + r, run = std::min(count - r, B - idx % B);
      const int32_t block = rep ? m.rep_at(layer, seq, idx / B) : m.raw_at(layer, seq, idx / B);
      LCA_CUDA_OK(where, cudaMemcpy(m.row_address(block, idx % B), bytes.data() + r * m.row_elems * dsize,
                                    run * m.row_elems * dsize, cudaMemcpyHostToDevice));
      r += run;
    }
  };
  put(c.representatives, 0, true);
  put(c.raw, first_raw, false);
  if (open)
    LCA_CUDA_OK(where, cudaMemcpy(m.d_open + m.tr(layer, seq) * m.cfg.mla.d_latent, c.open_sum.data(),
                                  c.open_sum.numel() * sizeof(float), cudaMemcpyHostToDevice));
  for (int64_t r = 0; r < ring_rows; ++r) {
    const int64_t pos = n - ring_rows + r;
    LCA_CUDA_OK(where, cudaMemcpy(m.d_ring + (m.tr(layer, seq) * m.g + pos % m.g) * m.ring_width,
                                  c.summary_ring.row(r), m.ring_width * sizeof(float), cudaMemcpyHostToDevice));
  }
}

void PagedKvCache::write_layer_device(int64_t seq, int64_t layer, const void* reps, const void* raw, const float* ring,
                                      const float* open_sum, cudaStream_t stream) {
  const char* where = "PagedKvCache::write_layer_device";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  m.check_layer(where, layer);
  const int64_t n = m.seqs[static_cast<size_t>(seq)].n, count = m.groups(n), first_raw = m.raw_from(n);
  const int64_t B = m.cfg.block_rows, row_bytes = m.row_elems * dtype_size(m.cfg.dtype);
  LCA_CHECK(count == 0 || reps, where, ": reps is null but the sequence holds ", count, " representatives");
  LCA_CHECK(n == first_raw || raw, where, ": raw is null but the sequence holds ", n - first_raw, " raw rows");
  const int64_t ring_rows = m.full ? 0 : std::min(n, m.g - 1);
  LCA_CHECK(ring_rows == 0 || ring, where, ": ring is null but ", ring_rows, " summary rows are needed");
  const bool open = m.mtla_s > 0 && n % m.mtla_s != 0;
  LCA_CHECK(!open || open_sum, where, ": open_sum is null but an MTLA row is open");
  auto put = [&](const void* rows, int64_t rows_count, int64_t first, bool rep) {
    for (int64_t r = 0; r < rows_count;) {
      const int64_t idx = first + r, run = std::min(rows_count - r, B - idx % B);
      const int32_t block = rep ? m.rep_at(layer, seq, idx / B) : m.raw_at(layer, seq, idx / B);
      LCA_CUDA_OK(where, cudaMemcpyAsync(m.row_address(block, idx % B), static_cast<const char*>(rows) + r * row_bytes,
                                         run * row_bytes, cudaMemcpyDeviceToDevice, stream));
      r += run;
    }
  };
  put(reps, count, 0, true);
  put(raw, n - first_raw, first_raw, false);
  for (int64_t r = 0; r < ring_rows; ++r) {
    const int64_t pos = n - ring_rows + r;
    LCA_CUDA_OK(where, cudaMemcpyAsync(m.d_ring + (m.tr(layer, seq) * m.g + pos % m.g) * m.ring_width,
                                       ring + r * m.ring_width, m.ring_width * sizeof(float), cudaMemcpyDeviceToDevice,
                                       stream));
  }
  if (open)
    LCA_CUDA_OK(where, cudaMemcpyAsync(m.d_open + m.tr(layer, seq) * m.cfg.mla.d_latent, open_sum,
                                       m.cfg.mla.d_latent * sizeof(float), cudaMemcpyDeviceToDevice, stream));
}

PagedLayerContents PagedKvCache::read_layer(int64_t seq, int64_t layer) const {
  const char* where = "PagedKvCache::read_layer";
  const Impl& m = *impl_;
  m.check_seq(where, seq);
  m.check_layer(where, layer);
  LCA_CUDA_OK(where, cudaDeviceSynchronize());
  const int64_t n = m.seqs[static_cast<size_t>(seq)].n, reps = m.groups(n), first_raw = m.raw_from(n);
  const int64_t B = m.cfg.block_rows, dsize = dtype_size(m.cfg.dtype);
  auto get = [&](int64_t count, int64_t first, bool rep) {
    Tensor<float> out({count, m.row_elems});
    std::vector<unsigned char> bytes(static_cast<size_t>(count * m.row_elems * dsize));
    for (int64_t r = 0; r < count;) {
      const int64_t idx = first + r, run = std::min(count - r, B - idx % B);
      const int64_t t = m.tr(layer, seq);
      const int32_t block = rep ? m.rep_table[t * m.rep_stride + idx / B] : m.raw_table[t * m.raw_stride + idx / B];
      LCA_CUDA_OK(where, cudaMemcpy(bytes.data() + r * m.row_elems * dsize, m.row_address(block, idx % B),
                                    run * m.row_elems * dsize, cudaMemcpyDeviceToHost));
      r += run;
    }
    decode(m.cfg.dtype, bytes.data(), count * m.row_elems, out.data());
    return out;
  };
  PagedLayerContents c;
  c.representatives = get(reps, 0, true);
  c.raw = get(n - first_raw, first_raw, false);
  if (m.mtla_s > 0 && n % m.mtla_s != 0) {
    c.open_sum = Tensor<float>({m.cfg.mla.d_latent});
    LCA_CUDA_OK(where, cudaMemcpy(c.open_sum.data(), m.d_open + m.tr(layer, seq) * m.cfg.mla.d_latent,
                                  c.open_sum.numel() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  if (!m.full) {
    const int64_t ring_rows = std::min(n, m.g - 1);
    c.summary_ring = Tensor<float>({ring_rows, m.ring_width});
    for (int64_t r = 0; r < ring_rows; ++r) {
      const int64_t pos = n - ring_rows + r;
      LCA_CUDA_OK(where, cudaMemcpy(c.summary_ring.row(r), m.d_ring + (m.tr(layer, seq) * m.g + pos % m.g) * m.ring_width,
                                    m.ring_width * sizeof(float), cudaMemcpyDeviceToHost));
    }
  }
  return c;
}

// ---- Prefill in chunks ---------------------------------------------------------------

int64_t PagedKvCache::extend_blocks(int64_t seq, int64_t L, int64_t chunk) const {
  const char* where = "PagedKvCache::extend_blocks";
  const Impl& m = *impl_;
  m.check_seq(where, seq);
  LCA_CHECK(L >= 0 && chunk >= 1, where, ": L must be >= 0 and chunk >= 1, got L = ", L, ", chunk = ", chunk);
  chunk = std::min(chunk, std::max<int64_t>(L, 1));  // a + chunk stays in range
  // Per layer: blocks taken so far net of those returned, and its peak.
  int64_t net = 0, peak = 0;
  const int64_t n = m.seqs[static_cast<size_t>(seq)].n;
  for (int64_t a = n; a < n + L; a += chunk) {
    const int64_t b = std::min(a + chunk, n + L);
    const int64_t take = m.extend_blocks(a, b).count();
    peak = std::max(peak, net + take);
    net += take - m.extend_releases(a, b);
  }
  return peak * m.cfg.layers;
}

void PagedKvCache::begin_extend(int64_t seq, int64_t L, cudaStream_t stream) {
  const char* where = "PagedKvCache::begin_extend";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  Impl::Seq& s = m.seqs[static_cast<size_t>(seq)];
  LCA_CHECK(!m.in_step, where, ": a step is in progress; call end_step first");
  LCA_CHECK(s.extending == 0, where, ": sequence ", seq, " is already being extended (call end_extend first)");
  LCA_CHECK(L >= 1, where, ": L must be >= 1, got ", L);
  LCA_CHECK(L <= m.cfg.max_context - s.n, where, ": sequence ", seq, " holds ", s.n, " tokens; ", L,
            " more exceed max_context (", m.cfg.max_context, ")");
  const Impl::ExtendBlocks e = m.extend_blocks(s.n, s.n + L);
  m.require_blocks(where, e.count() * m.cfg.layers);
  for (int64_t layer = 0; layer < m.cfg.layers; ++layer) {
    for (int64_t i = e.rep_lo; i < e.rep_hi; ++i) {
      m.rep_at(layer, seq, i) = m.take();
      m.upload_entry(where, m.d_rep_table, m.rep_table, m.tr(layer, seq) * m.rep_stride + i, stream);
    }
    for (int64_t i = e.raw_lo; i < e.raw_hi; ++i) {
      m.raw_at(layer, seq, i) = m.take();
      m.upload_entry(where, m.d_raw_table, m.raw_table, m.tr(layer, seq) * m.raw_stride + i, stream);
    }
  }
  s.extending = L;
}

void PagedKvCache::read_layer_device(int64_t seq, int64_t layer, void* reps, void* raw, float* ring,
                                     float* open_sum, cudaStream_t stream) const {
  const char* where = "PagedKvCache::read_layer_device";
  const Impl& m = *impl_;
  m.check_seq(where, seq);
  m.check_layer(where, layer);
  const int64_t n = m.seqs[static_cast<size_t>(seq)].n, count = m.groups(n), first_raw = m.raw_from(n);
  const int64_t ring_rows = m.full ? 0 : std::min(n, m.g - 1);
  LCA_CHECK(count == 0 || reps, where, ": reps is null but sequence ", seq, " holds ", count, " representatives");
  LCA_CHECK(n == first_raw || raw, where, ": raw is null but sequence ", seq, " holds ", n - first_raw, " raw rows");
  LCA_CHECK(ring_rows == 0 || ring, where, ": ring is null but sequence ", seq, " holds ", ring_rows,
            " summary rows");
  const bool open = m.mtla_s > 0 && n % m.mtla_s != 0;
  LCA_CHECK(!open || open_sum, where, ": open_sum is null but sequence ", seq, " holds an open MTLA row");
  m.copy_rows(where, layer, seq, true, 0, count, reps, false, stream);
  m.copy_rows(where, layer, seq, false, first_raw, n - first_raw, raw, false, stream);
  m.copy_ring(where, layer, seq, n - ring_rows, ring_rows, ring, false, stream);
  if (open)
    LCA_CUDA_OK(where, cudaMemcpyAsync(open_sum, m.d_open + m.tr(layer, seq) * m.cfg.mla.d_latent,
                                       m.cfg.mla.d_latent * sizeof(float), cudaMemcpyDeviceToDevice, stream));
}

void PagedKvCache::write_extend_device(int64_t seq, int64_t layer, const void* reps, const void* raw,
                                       const float* ring, const float* open_sum, cudaStream_t stream) {
  const char* where = "PagedKvCache::write_extend_device";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  m.check_layer(where, layer);
  const Impl::Seq& s = m.seqs[static_cast<size_t>(seq)];
  LCA_CHECK(s.extending > 0, where, ": sequence ", seq, " is not being extended (call begin_extend first)");
  const int64_t n0 = s.n, n1 = s.n + s.extending;
  // MTLA rewrites the row open at n0 (floor(n0/s), completed or merged into), then appends.
  const int64_t rep_lo = m.mtla_s > 0 ? n0 / m.mtla_s : m.groups(n0), rep_hi = m.groups(n1);
  const int64_t raw_lo = std::max(m.raw_from(n1), n0);
  const int64_t ring_rows = m.full ? 0 : std::min(n1, m.g - 1);
  const bool open = m.mtla_s > 0 && n1 % m.mtla_s != 0;
  LCA_CHECK(rep_hi == rep_lo || reps, where, ": reps is null but ", rep_hi - rep_lo, " new representatives are due");
  LCA_CHECK(!open || open_sum, where, ": open_sum is null but an MTLA row stays open");
  LCA_CHECK(n1 == raw_lo || raw, where, ": raw is null but ", n1 - raw_lo, " new raw rows are due");
  LCA_CHECK(ring_rows == 0 || ring, where, ": ring is null but ", ring_rows, " summary rows are due");
  m.copy_rows(where, layer, seq, true, rep_lo, rep_hi - rep_lo, const_cast<void*>(reps), true, stream);
  m.copy_rows(where, layer, seq, false, raw_lo, n1 - raw_lo, const_cast<void*>(raw), true, stream);
  m.copy_ring(where, layer, seq, n1 - ring_rows, ring_rows, const_cast<float*>(ring), true, stream);
  if (open)
    LCA_CUDA_OK(where, cudaMemcpyAsync(m.d_open + m.tr(layer, seq) * m.cfg.mla.d_latent, open_sum,
                                       m.cfg.mla.d_latent * sizeof(float), cudaMemcpyDeviceToDevice, stream));
}

void PagedKvCache::end_extend(int64_t seq) {
  const char* where = "PagedKvCache::end_extend";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  Impl::Seq& s = m.seqs[static_cast<size_t>(seq)];
  LCA_CHECK(s.extending > 0, where, ": sequence ", seq, " is not being extended (call begin_extend first)");
  s.n += s.extending;
  s.extending = 0;
  m.release_condensed_raw(seq);
}

void PagedKvCache::cancel_extend(int64_t seq) {
  const char* where = "PagedKvCache::cancel_extend";
  Impl& m = *impl_;
  m.check_seq(where, seq);
  Impl::Seq& s = m.seqs[static_cast<size_t>(seq)];
  LCA_CHECK(s.extending > 0, where, ": sequence ", seq, " is not being extended");
  const Impl::ExtendBlocks e = m.extend_blocks(s.n, s.n + s.extending);
  for (int64_t layer = 0; layer < m.cfg.layers; ++layer) {
    for (int64_t i = e.rep_lo; i < e.rep_hi; ++i) {
      int32_t& b = m.rep_at(layer, seq, i);
      if (b >= 0) m.free_list.push_back(b), b = -1;
    }
    for (int64_t i = e.raw_lo; i < e.raw_hi; ++i) {
      int32_t& b = m.raw_at(layer, seq, i);
      if (b >= 0) m.free_list.push_back(b), b = -1;
    }
  }
  s.extending = 0;
}

void PagedKvCache::begin_step(std::span<const int64_t> seqs, cudaStream_t stream, int64_t splits) {
  const char* where = "PagedKvCache::begin_step";
  Impl& m = *impl_;
  LCA_CHECK(!m.in_step, where, ": the previous step has not ended (call end_step)");
  LCA_CHECK(!seqs.empty(), where, ": seqs is empty");
  LCA_CHECK(splits >= 0 && splits <= m.cfg.max_splits, where, ": splits = ", splits, " is outside [0, max_splits = ",
            m.cfg.max_splits, "]");
  std::vector<char> seen(static_cast<size_t>(m.cfg.max_seqs), 0);
  const int64_t B = m.cfg.block_rows;
  int64_t need = 0, longest = 0;
  for (int64_t seq : seqs) {
    m.check_seq(where, seq);
    LCA_CHECK(!seen[static_cast<size_t>(seq)], where, ": sequence ", seq, " appears twice in seqs");
    LCA_CHECK(m.seqs[static_cast<size_t>(seq)].extending == 0, where, ": sequence ", seq,
              " is being extended (call end_extend first)");
    seen[static_cast<size_t>(seq)] = 1;
    const int64_t t = m.seqs[static_cast<size_t>(seq)].n;
    LCA_CHECK(t < m.cfg.max_context, where, ": sequence ", seq, " is at max_context (", m.cfg.max_context,
              " tokens); it cannot take another");
    if (t % B == 0 && m.mtla_s == 0) need += m.cfg.layers;  // a raw block opens
    const int64_t closed = m.groups(t + 1);
    if (closed > m.groups(t) && (closed - 1) % B == 0) need += m.cfg.layers;  // a representative block opens
    longest = std::max(longest, m.entries(t + 1));
  }
  m.require_blocks(where, need);

  m.step_seqs.clear();
  m.step_positions.clear();
  for (int64_t seq : seqs) {
    const int64_t t = m.seqs[static_cast<size_t>(seq)].n;
    const int64_t closed = m.groups(t + 1);
    for (int64_t layer = 0; layer < m.cfg.layers; ++layer) {
      if (t % B == 0 && m.mtla_s == 0) {
        m.raw_at(layer, seq, t / B) = m.take();
        m.upload_entry(where, m.d_raw_table, m.raw_table, m.tr(layer, seq) * m.raw_stride + t / B, stream);
      }
      if (closed > m.groups(t) && (closed - 1) % B == 0) {
        m.rep_at(layer, seq, (closed - 1) / B) = m.take();
        m.upload_entry(where, m.d_rep_table, m.rep_table, m.tr(layer, seq) * m.rep_stride + (closed - 1) / B, stream);
      }
    }
    m.step_seqs.push_back(static_cast<int32_t>(seq));
    m.step_positions.push_back(t);
  }
  const int64_t batch = static_cast<int64_t>(seqs.size());
  if (splits == 0) {
    const int64_t per_split_item =
        batch * m.shape.kv_heads * ceil_div(m.shape.q_heads / m.shape.kv_heads, detail::decode_heads_per_block(m.shape));
    // At most one wave of attention blocks (a second, partly filled wave would
    // cost a whole one), and at least two tiles per split where the rows allow
    // (a block's latency is mostly its first tile; more splits, more to combine).
    const int64_t tiles = ceil_div(longest, detail::decode_tile_rows(m.shape));
    splits = std::clamp<int64_t>(m.split_target / per_split_item, 1,
                                 std::min<int64_t>(m.cfg.max_splits, std::max<int64_t>(1, tiles / 2)));
  }
  m.splits = splits;
  if (batch * splits > m.part_capacity) {
    m.part_out_mem = detail::DeviceArray();
    m.part_lse_mem = detail::DeviceArray();
    m.part_capacity = 0;
    m.part_out_mem = detail::DeviceArray("the split workspace", batch * splits * m.shape.q_heads * m.shape.d_v * 4);
    m.part_lse_mem = detail::DeviceArray("the split workspace", batch * splits * m.shape.q_heads * 4);
    m.d_part_out = m.part_out_mem.as<void>();
    m.d_part_lse = m.part_lse_mem.as<float>();
    m.part_capacity = batch * splits;
  }
  LCA_CUDA_OK(where, cudaMemcpyAsync(m.d_step_seqs, m.step_seqs.data(), batch * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, stream));
  LCA_CUDA_OK(where, cudaMemcpyAsync(m.d_step_positions, m.step_positions.data(), batch * sizeof(int64_t),
                                     cudaMemcpyHostToDevice, stream));
  m.in_step = true;
}

void PagedKvCache::decode_layer(int64_t layer, const void* rows, const void* queries, void* out, cudaStream_t stream) {
  const char* where = "PagedKvCache::decode_layer";
  Impl& m = *impl_;
  LCA_CHECK(m.in_step, where, ": no step in progress (call begin_step first)");
  m.check_layer(where, layer);
  LCA_CHECK(rows && queries && out, where, ": rows, queries and out must be device pointers, got a null one");
  const detail::PagedView v = m.view(layer);
  detail::StepView s;
  s.seqs = m.d_step_seqs;
  s.positions = m.d_step_positions;
  s.batch = static_cast<int>(m.step_seqs.size());
  if (m.mtla_s > 0)
    detail::decode_append_mtla(v, s, m.shape, rows, m.cfg.dtype, stream);
  else
    detail::decode_append_condense(v, s, m.shape, rows, queries, m.cfg.scale, m.lca, m.cfg.rope, m.cfg.dtype, stream);
  detail::decode_attention(v, s, m.shape, queries, rows, m.d_part_out, m.d_part_lse, static_cast<int>(m.splits),
                           m.cfg.scale, m.lca, m.cfg.dtype, stream);
  detail::decode_combine(s, m.shape, m.d_part_out, m.d_part_lse, static_cast<int>(m.splits), out, m.cfg.dtype,
                         stream);
}

void PagedKvCache::end_step() {
  const char* where = "PagedKvCache::end_step";
  Impl& m = *impl_;
  LCA_CHECK(m.in_step, where, ": no step in progress");
  for (int32_t seq : m.step_seqs) {
    m.seqs[static_cast<size_t>(seq)].n += 1;
    m.release_condensed_raw(seq);
  }
  m.in_step = false;
}

}  // namespace lca::cuda
