// The decode kernels' view of the paged cache and their launchers (internal:
// PagedKvCache is the public face). Plain C++, so the host-side cache
// (src/cache/paged_kv_cache.cpp) includes it without a CUDA compiler.
#pragma once

#include <cstdint>

#include "lca/dtype.hpp"
#include "lca/params.hpp"

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda::detail {

// Where the rows of one layer live. Table row of sequence s: layer * max_seqs + s.
struct PagedView {
  void* pool = nullptr;             // blocks of block_rows rows of row_elems values
  int64_t row_elems = 0;
  int64_t block_rows = 0;
  const int32_t* rep_table = nullptr;  // [table rows, rep_stride] block ids, representative j in block j / B
  const int32_t* raw_table = nullptr;  // [table rows, raw_stride] block ids, position p in block p / B
  int64_t rep_stride = 0, raw_stride = 0;
  float* ring = nullptr;            // [table rows, g, ring_width] fp32, position p in slot p % g
  int64_t ring_width = 0;
  int64_t table_base = 0;           // layer * max_seqs
  int64_t window = 0, group = 1;
  bool full = false;
  int64_t mtla_s = 0;               // MTLA's down rate s (0: LCA or full)
  float* open_sum = nullptr;        // MTLA: [table rows, d_c] fp32 running sums of the open rows
  const float* hyper = nullptr;     // MTLA: this layer's fc_c W, b, fc_p W, b (fp32, nn.Linear layout)
};

// The step: batch entry b appends position positions[b] to sequence seqs[b].
struct StepView {
  const int32_t* seqs = nullptr;
  const int64_t* positions = nullptr;
  int batch = 0;
};

// Layout of rows and queries. MLA: one kv head, key = row[0 : d_qk] (= [c ; k^R]),
// value = row[0 : d_v] (= c). GQA: kv head k's key at row[2 d k :], value after it.
struct DecodeShape {
  bool mla = true;
  int q_heads = 0, kv_heads = 1;
  int d_qk = 0, d_v = 0;            // MLA: d_c + d_r and d_c; GQA: head_dim twice
  int summary_width = 0;            // per kv head: MLA d_c or d_c + d_r, GQA head_dim
};

// Copies each new row into its raw block and its head-summed query into the
// ring, then condenses, per sequence and kv head, the group that closes at this
// step (if any).
void decode_append_condense(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* rows,
                            const void* queries, double scale, const LcaParams& params, const RopeParams& rope,
                            DType dtype, cudaStream_t stream);
// MTLA (mtla-spec.md section 4): merge weight of each new token, its running
// sum into the open row's fp32 sum, and the stored row [round(sum) ; k^R_t].
void decode_append_mtla(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* rows,
                        DType dtype, cudaStream_t stream);
// Split-KV attention: partial outputs (fp32, or the storage dtype where the
// wgmma kernel serves the shape; room for fp32 either way) and log-sum-exps
// per split, then the combine. Launched to overlap the append kernel before
// it (programmatic dependent launch); new_rows are the rows that append stores.
void decode_attention(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* queries,
                      const void* new_rows, void* part_out, float* part_lse, int splits, double scale,
                      const LcaParams& params, DType dtype, cudaStream_t stream);
void decode_combine(const StepView& s, const DecodeShape& sh, const void* part_out, const float* part_lse,
                    int splits, void* out, DType dtype, cudaStream_t stream);

// The Hopper (wgmma) attention for MiniCPM3's shape (decode_attention_sm90.cu):
// whether it serves a shape on this device and build; decode_attention calls
// it then. decode_use_sm90(false) makes every shape take the mma.sync kernel
// (for tests and comparisons).
bool decode_sm90_supports(const DecodeShape& sh);
void decode_use_sm90(bool on);
int decode_sm90_ctas_per_sm(DType dtype);
int decode_sm90_tile_rows();
void decode_attention_sm90(const PagedView& v, const StepView& s, const DecodeShape& sh, const void* queries,
                           const void* new_rows, void* part_out, float* part_lse, int splits, float scale_log2,
                           float bias_log2, DType dtype, cudaStream_t stream);

// Head dims the decode attention is built for: (d_qk, d_v) of MLA or GQA.
bool decode_supports(bool mla, int64_t d_qk, int64_t d_v);
// Query heads one attention block serves (16; MiniCPM3's shape: 48, or all 40 on sm_90a).
int decode_heads_per_block(const DecodeShape& sh);
// Rows per tile of the attention kernel for a shape (32 or 64).
int decode_tile_rows(const DecodeShape& sh);
// CTAs of the attention kernel one multiprocessor holds, for choosing splits.
int decode_ctas_per_sm(const DecodeShape& sh, DType dtype);
int device_sm_count();

}  // namespace lca::cuda::detail
