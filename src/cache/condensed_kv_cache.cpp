// The CPU CondensedKvCache. Order of work for a chunk of L new tokens at
// positions [n, n + L):
//   1. store the rows (rounded to the cache dtype: from here on every use of a
//      row, condensing or attending, sees the stored value, which is what makes
//      any chunking give bitwise the same cache and outputs);
//   2. condense the groups whose time tau_j falls in [n, n + L), from the
//      stored rows and the summary ring + the chunk's summary queries;
//   3. (forward only) attend the chunk's queries;
//   4. release the raw rows of condensed groups; keep the last g - 1 summaries.
// MTLA (mtla-spec.md section 4) follows the same order with its own rule:
//   1-2. merge the chunk into the fp32 open-row sum, store every chunk that
//        completes and the rounding of the new open row;
//   3. attend: each query over the complete rows before its chunk and its own
//      running row, rounded to the cache dtype as if it had been stored.
#include <algorithm>
#include <cmath>

#include "lca/cache.hpp"
#include "lca/reference.hpp"

namespace lca {

// Rows of one width stored in one dtype, appended at the back, released from
// the front (amortised O(1): the buffer compacts once half of it is released).
class CondensedKvCache::RowStore {
 public:
  RowStore(DType dtype, int64_t width) : dtype_(dtype), width_(width), row_bytes_(width * dtype_size(dtype)) {}

  int64_t size() const { return rows_; }
  int64_t bytes() const { return rows_ * row_bytes_; }

  void push(const float* rows, int64_t n) {
    bytes_.resize(static_cast<size_t>((head_ + rows_ + n) * row_bytes_));
    encode(dtype_, rows, n * width_, bytes_.data() + (head_ + rows_) * row_bytes_);
    rows_ += n;
  }

  void pop_front(int64_t n) {
    head_ += n;
    rows_ -= n;
    if (head_ > rows_) {
      bytes_.erase(bytes_.begin(), bytes_.begin() + head_ * row_bytes_);
      head_ = 0;
    }
  }

  Tensor<float> decode_all() const {
    Tensor<float> out({rows_, width_});
    decode(dtype_, bytes_.data() + head_ * row_bytes_, rows_ * width_, out.data());
    return out;
  }

 private:
  DType dtype_;
  int64_t width_, row_bytes_;
  std::vector<unsigned char> bytes_;
  int64_t head_ = 0, rows_ = 0;
};

CondensedKvCache::CondensedKvCache(KvLayout layout, const Policy& policy, DType dtype, double scale)
    : layout_(layout), policy_(policy), dtype_(dtype), scale_(scale) {
  std::visit([](const auto& p) { p.validate(); }, policy_);
  LCA_CHECK(scale > 0 && std::isfinite(scale), "CondensedKvCache: scale must be finite and > 0, got ", scale);
}

CondensedKvCache CondensedKvCache::mla(const MlaDims& dims, double scale, const LcaParams& params, DType storage) {
  dims.validate();
  CondensedKvCache c(KvLayout::mla, params, storage, scale);
  c.mla_ = dims;
  c.reps_ = std::make_unique<RowStore>(storage, c.row_width());
  c.raw_ = std::make_unique<RowStore>(storage, c.row_width());
  return c;
}

CondensedKvCache CondensedKvCache::gqa(const GqaDims& dims, const RopeParams& rope, double scale,
                                       const LcaParams& params, DType storage) {
  dims.validate();
  rope.validate();
  CondensedKvCache c(KvLayout::gqa, params, storage, scale);
  c.gqa_ = dims;
  c.rope_ = rope;
  c.reps_ = std::make_unique<RowStore>(storage, c.row_width());
  c.raw_ = std::make_unique<RowStore>(storage, c.row_width());
  return c;
}

CondensedKvCache CondensedKvCache::mtla(const MlaDims& dims, double scale, const MtlaParams& params,
                                        MtlaHyperNet<float> hyper, DType storage) {
  dims.validate();
  hyper.validate(dims);
  CondensedKvCache c(KvLayout::mla, params, storage, scale);
  c.mla_ = dims;
  c.hyper_ = std::move(hyper);
  c.reps_ = std::make_unique<RowStore>(storage, c.row_width());
  c.raw_ = std::make_unique<RowStore>(storage, c.row_width());
  return c;
}

const LcaParams& CondensedKvCache::params() const {
  LCA_CHECK(!is_mtla(), "CondensedKvCache::params: an MTLA cache has no LcaParams (use mtla_params() or policy())");
  return std::get<LcaParams>(policy_);
}

const MtlaParams& CondensedKvCache::mtla_params() const {
  LCA_CHECK(is_mtla(), "CondensedKvCache::mtla_params: this is an LCA cache (use params() or policy())");
  return std::get<MtlaParams>(policy_);
}

CondensedKvCache::CondensedKvCache(CondensedKvCache&&) noexcept = default;
CondensedKvCache& CondensedKvCache::operator=(CondensedKvCache&&) noexcept = default;
CondensedKvCache::~CondensedKvCache() = default;

// ---- Sizes --------------------------------------------------------------------

int64_t CondensedKvCache::representatives() const { return reps_->size(); }
int64_t CondensedKvCache::raw_entries() const { return raw_->size(); }
int64_t CondensedKvCache::first_raw_position() const { return raw_start_; }
int64_t CondensedKvCache::summary_entries() const {
  return static_cast<int64_t>(ring_.size()) / std::max<int64_t>(1, summary_width());
}
int64_t CondensedKvCache::row_bytes() const { return reps_->bytes() + raw_->bytes(); }
int64_t CondensedKvCache::summary_bytes() const {
  return static_cast<int64_t>((ring_.size() + open_sum_.size()) * sizeof(float));
}

int64_t CondensedKvCache::row_width() const {
  return layout_ == KvLayout::mla ? mla_.row_width() : gqa_.row_width();
}
int64_t CondensedKvCache::summary_width() const {
  if (is_mtla()) return 0;
  if (layout_ == KvLayout::gqa) return gqa_.kv_heads * gqa_.head_dim;
  return params().score == ScoreMode::full ? mla_.row_width() : mla_.d_latent;
}
int64_t CondensedKvCache::query_heads() const { return layout_ == KvLayout::mla ? mla_.heads : gqa_.q_heads; }
int64_t CondensedKvCache::query_width() const {
  return layout_ == KvLayout::mla ? mla_.row_width() : gqa_.head_dim;
}
int64_t CondensedKvCache::output_width() const {
  return layout_ == KvLayout::mla ? mla_.d_latent : gqa_.head_dim;
}

Tensor<float> CondensedKvCache::representative_rows() const { return reps_->decode_all(); }
Tensor<float> CondensedKvCache::raw_rows() const { return raw_->decode_all(); }
Tensor<float> CondensedKvCache::summary_ring() const {
  Tensor<float> out({summary_entries(), summary_width()});
  std::copy(ring_.begin(), ring_.end(), out.data());
  return out;
}
Tensor<float> CondensedKvCache::open_row_sum() const {
  Tensor<float> out({static_cast<int64_t>(open_sum_.size())});
  std::copy(open_sum_.begin(), open_sum_.end(), out.data());
  return out;
}

// ---- Appending and condensing -----------------------------------------------------

void CondensedKvCache::check_rows(const char* where, const Tensor<float>& rows) const {
  expect_shape(where, "rows", rows, {-1, row_width()});
  LCA_CHECK(rows.dim(0) >= 1, where, ": rows holds no tokens");
  expect_finite(where, "rows", rows);
}

Tensor<float> CondensedKvCache::summaries_of(const Tensor<float>& queries) const {
  if (layout_ == KvLayout::mla) return ref::mla_summary_queries(queries, mla_, params().score);
  return ref::gqa_summary_queries(queries, gqa_);
}

void CondensedKvCache::append(const Tensor<float>& rows, const Tensor<float>& summary) {
  const char* where = "CondensedKvCache::append";
  LCA_CHECK(!is_mtla(), where, ": summary queries are not used by an MTLA cache (call append(rows))");
  check_rows(where, rows);
  LCA_CHECK(summary.rank() >= 2 && summary.dim(0) == rows.dim(0) && summary.row_stride() == summary_width(), where,
            ": summary queries have shape ", shape_str(summary.shape()), ", expected ", rows.dim(0), " rows (one per ",
            "token in rows) of ", summary_width(), " values");
  expect_finite(where, "summary queries", summary);
  ingest(rows, summary);
  release_condensed_raw();
}

void CondensedKvCache::append(const Tensor<float>& rows) {
  const char* where = "CondensedKvCache::append";
  LCA_CHECK(is_mtla(), where, ": an LCA cache needs the summary queries of the rows (call append(rows, summary))");
  check_rows(where, rows);
  ingest_mtla(rows);
}

Tensor<float> CondensedKvCache::ingest_mtla(const Tensor<float>& rows) {
  const MtlaParams& p = mtla_params();
  const int64_t n0 = n_, L = rows.dim(0), s = p.down_rate, dc = mla_.d_latent;
  const Tensor<float> weights = ref::mtla_merge_weights(rows, n0, mla_, p, hyper_);
  Tensor<float> open({static_cast<int64_t>(open_sum_.size())});
  std::copy(open_sum_.begin(), open_sum_.end(), open.data());
  Tensor<float> running = ref::mtla_running_rows(rows, weights, n0, open, mla_, p);
  raw_->pop_front(raw_->size());  // the old open row is superseded by a running row below
  for (int64_t l = 0; l < L; ++l)
    if ((n0 + l + 1) % s == 0) reps_->push(running.row(l), 1);
  n_ = n0 + L;
  open_sum_.clear();
  if (n_ % s != 0) {
    raw_->push(running.row(L - 1), 1);
    open_sum_.assign(running.row(L - 1), running.row(L - 1) + dc);
  }
  raw_start_ = s * mtla_complete_rows(n_, p);
  return running;
}

void CondensedKvCache::ingest(const Tensor<float>& rows, const Tensor<float>& summary) {
  const LcaParams& p = params();
  const int64_t n0 = n_, L = rows.dim(0), sw = summary_width();
  raw_->push(rows.data(), L);
  const int64_t first = condensed_groups(n0, p), last = condensed_groups(n0 + L, p);
  if (last > first) {
    // Summary rows at positions [n0 - ring, n0 + L): the ring, then the chunk's.
    const int64_t ring = summary_entries();
    Shape shape = layout_ == KvLayout::gqa ? Shape{ring + L, gqa_.kv_heads, gqa_.head_dim} : Shape{ring + L, sw};
    Tensor<float> sums(shape);
    std::copy(ring_.begin(), ring_.end(), sums.data());
    std::copy(summary.data(), summary.data() + L * sw, sums.data() + ring * sw);
    const Tensor<float> kv = raw_->decode_all();  // stored values, positions [raw_start_, n0 + L)
    const ref::Condensed<float> reps =
        layout_ == KvLayout::mla
            ? ref::condense_groups_mla(kv, raw_start_, sums, n0 - ring, first, last - first, scale_, mla_, p)
            : ref::condense_groups_gqa(kv, raw_start_, sums, n0 - ring, first, last - first, scale_, gqa_, rope_,
                                       p);
    reps_->push(reps.rows.data(), last - first);
  }
  n_ = n0 + L;
  // Keep the summaries of the last g - 1 positions.
  const int64_t keep = std::min<int64_t>(n_, p.group - 1);
  std::vector<float> next(static_cast<size_t>(keep * sw));
  for (int64_t k = 0; k < keep; ++k) {
    const int64_t pos = n_ - keep + k;
    const float* src = pos >= n0 ? summary.data() + (pos - n0) * sw : ring_.data() + (pos - (n0 - summary_entries())) * sw;
    std::copy(src, src + sw, next.data() + k * sw);
  }
  ring_ = std::move(next);
}

void CondensedKvCache::release_condensed_raw() {
  const int64_t lo = lca::first_raw_position(n_, params());
  if (lo > raw_start_) {
    raw_->pop_front(lo - raw_start_);
    raw_start_ = lo;
  }
}

// ---- Attention -------------------------------------------------------------------

Tensor<float> CondensedKvCache::attend_positions(const Tensor<float>& queries, int64_t q_start,
                                                 const Tensor<float>& reps, const Tensor<float>& raw) const {
  if (is_mtla()) return ref::mtla_attention_mla(queries, q_start, reps, raw, q_start, scale_, mla_, mtla_params());
  if (layout_ == KvLayout::mla) return ref::lca_attention_mla(queries, q_start, reps, raw, raw_start_, scale_, mla_, params());
  return ref::lca_attention_gqa(queries, q_start, reps, raw, raw_start_, scale_, gqa_, params());
}

Tensor<float> CondensedKvCache::forward(const Tensor<float>& rows, const Tensor<float>& queries) {
  const char* where = "CondensedKvCache::forward";
  check_rows(where, rows);
  expect_shape(where, "queries", queries, {rows.dim(0), query_heads(), query_width()});
  expect_finite(where, "queries", queries);
  const int64_t q_start = n_;
  if (is_mtla()) {
    Tensor<float> running = ingest_mtla(rows);
    for (float& x : running.vec()) x = round_to(dtype_, x);  // what storing each row would keep
    return attend_positions(queries, q_start, reps_->decode_all(), running);
  }
  ingest(rows, summaries_of(queries));
  Tensor<float> out = attend_positions(queries, q_start, reps_->decode_all(), raw_->decode_all());
  release_condensed_raw();
  return out;
}

Tensor<float> CondensedKvCache::attend(const Tensor<float>& queries) const {
  const char* where = "CondensedKvCache::attend";
  LCA_CHECK(n_ > 0, where, ": the cache is empty (append tokens first)");
  expect_shape(where, "queries", queries, {-1, query_heads(), query_width()});
  const int64_t B = queries.dim(0), per_query = query_heads() * query_width();
  Tensor<float> out({B, query_heads(), output_width()});
  const Tensor<float> reps = reps_->decode_all();
  // MTLA: position n - 1 sees its own running row, the open row or, when its
  // chunk just completed, the last complete row.
  Tensor<float> raw = raw_->decode_all();
  if (is_mtla() && raw.dim(0) == 0) {
    raw = Tensor<float>({1, row_width()});
    std::copy(reps.row(reps.dim(0) - 1), reps.row(reps.dim(0) - 1) + row_width(), raw.data());
  }
  for (int64_t b = 0; b < B; ++b) {
    Tensor<float> one({1, query_heads(), query_width()});
    std::copy(queries.row(b), queries.row(b) + per_query, one.data());
    const Tensor<float> o = attend_positions(one, n_ - 1, reps, raw);
    std::copy(o.data(), o.data() + o.numel(), out.row(b));
  }
  return out;
}

}  // namespace lca
