// CondensedKvCache: the KV cache of one layer of one sequence on the CPU,
// holding exactly what lca-spec.md section 6 says: m(n) representatives, the
// raw rows [g m(n), n), and the head-summed summary queries of the last g-1
// positions. Rows are stored in the cache's dtype (rounded once); every score,
// softmax and pooled sum is fp32 through the CPU reference.
//
// With LcaParams::full() the same object is a plain full cache.
//
// With MtlaParams (mtla-spec.md section 4) the merge rule is MTLA's: after n
// tokens the cache holds ceil(n/s) rows, floor(n/s) complete ones (the
// "representatives") and, when s does not divide n, the open chunk's running
// row (the one "raw" row), stored as the rounding of an fp32 running sum kept
// beside it; no summary queries. Any chunking gives bitwise the same cache
// and outputs in every dtype.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "lca/dtype.hpp"
#include "lca/params.hpp"
#include "lca/tensor.hpp"

namespace lca {

enum class KvLayout { mla, gqa };

class CondensedKvCache {
 public:
  // MLA: rows [c ; k^R], queries absorbed [q~ ; q^R] (ref::mla_absorb_queries).
  static CondensedKvCache mla(const MlaDims& dims, double scale, const LcaParams& params,
                              DType storage = DType::f32);
  // GQA: rows per kv head [k (rotated) ; v] (ref::gqa_pack_rows), queries rotated.
  static CondensedKvCache gqa(const GqaDims& dims, const RopeParams& rope, double scale,
                              const LcaParams& params, DType storage = DType::f32);
  // MTLA over MLA rows [c ; k^R] and absorbed queries, with the layer's hyper-network.
  static CondensedKvCache mtla(const MlaDims& dims, double scale, const MtlaParams& params,
                               MtlaHyperNet<float> hyper, DType storage = DType::f32);

  // Fill without attention: append L >= 1 tokens' rows [L, row_width()] and
  // their summary queries, L rows of summary_width() values in any trailing
  // shape (ref::mla_summary_queries gives [L, d_c], ref::gqa_summary_queries
  // [L, kv_heads, d]); condenses every group whose condensation time falls
  // among the L new positions and releases its raw rows. On an error the
  // cache is left as it was.
  void append(const Tensor<float>& rows, const Tensor<float>& summary);
  // MTLA: fill without attention (MTLA needs no summary queries). Merges the L
  // tokens into the open row and closes every chunk that completes.
  void append(const Tensor<float>& rows);

  // A prefill chunk (any L >= 1) or a decode step (L = 1): append, condense, and
  // return each new position's attention output. queries [L, H, query_width()]
  // -> [L, H, output_width()]. Equal to one whole prefill for any chunking.
  Tensor<float> forward(const Tensor<float>& rows, const Tensor<float>& queries);

  // Queries [B, H, query_width()] attending as the last position n - 1 does,
  // against the cache as it is (the attention half of a decode step).
  Tensor<float> attend(const Tensor<float>& queries) const;

  // ---- What the cache holds --------------------------------------------------
  int64_t tokens() const { return n_; }                       // n
  int64_t representatives() const;                            // m(n); MTLA: floor(n/s) complete rows
  int64_t raw_entries() const;                                // n - g m(n); MTLA: 1 if a row is open, else 0
  int64_t entries() const { return representatives() + raw_entries(); }  // MTLA: ceil(n/s)
  int64_t first_raw_position() const;                         // g m(n); MTLA: s floor(n/s)
  int64_t summary_entries() const;                            // min(n, g - 1); MTLA: 0
  int64_t row_bytes() const;      // entries * row_width * dtype size
  int64_t summary_bytes() const;  // fp32 side state: the summary ring; MTLA: the open row's sum
  int64_t bytes() const { return row_bytes() + summary_bytes(); }

  KvLayout layout() const { return layout_; }
  DType dtype() const { return dtype_; }
  const Policy& policy() const { return policy_; }
  bool is_mtla() const { return std::holds_alternative<MtlaParams>(policy_); }
  const LcaParams& params() const;        // the LCA policy; throws for an MTLA cache
  const MtlaParams& mtla_params() const;  // throws for an LCA cache
  int64_t row_width() const;
  int64_t summary_width() const;
  int64_t query_heads() const;
  int64_t query_width() const;
  int64_t output_width() const;

  // Decoded copies, for tests and inspection.
  Tensor<float> representative_rows() const;  // [m(n), row_width]
  Tensor<float> raw_rows() const;             // [n - g m(n), row_width], positions g m(n)..n-1
  Tensor<float> summary_ring() const;         // [summary_entries(), summary_width()], oldest first
  Tensor<float> open_row_sum() const;         // MTLA: the open row's fp32 latent sum [d_c], [0] if none is open

  CondensedKvCache(CondensedKvCache&&) noexcept;
  CondensedKvCache& operator=(CondensedKvCache&&) noexcept;
  ~CondensedKvCache();

 private:
  class RowStore;
  CondensedKvCache(KvLayout layout, const Policy& policy, DType dtype, double scale);
  void check_rows(const char* where, const Tensor<float>& rows) const;
  Tensor<float> summaries_of(const Tensor<float>& queries) const;
  // Appends rows and condenses; leaves raw rows of newly condensed groups in
  // place so the chunk's queries can still see them (forward releases after).
  void ingest(const Tensor<float>& rows, const Tensor<float>& summary);
  void release_condensed_raw();
  // MTLA: merges the rows into the open row, stores every chunk that
  // completes and the new open row; returns the unrounded running rows of the
  // new positions (each query's own row, before rounding to the cache dtype).
  Tensor<float> ingest_mtla(const Tensor<float>& rows);
  // Queries at positions [q_start, q_start + L) over decoded representatives and raw rows.
  Tensor<float> attend_positions(const Tensor<float>& queries, int64_t q_start, const Tensor<float>& reps,
                                 const Tensor<float>& raw) const;

  KvLayout layout_;
  Policy policy_;
  DType dtype_;
  double scale_;
  MlaDims mla_{};
  GqaDims gqa_{};
  RopeParams rope_{};
  int64_t n_ = 0;
  std::unique_ptr<RowStore> reps_;   // representatives 0..m(n)-1
  std::unique_ptr<RowStore> raw_;    // raw rows, positions raw_start_..n-1
  int64_t raw_start_ = 0;
  std::vector<float> ring_;          // summary queries of the last summary_entries() positions
  MtlaHyperNet<float> hyper_;        // MTLA only
  std::vector<float> open_sum_;      // MTLA: fp32 latent sum of the open row (empty when none is open)
};

}  // namespace lca
