// PagedKvCache: the condensed KV cache on the GPU, for a batch of sequences
// of different lengths and every layer of a model, in one pool of blocks.
//
// It holds what lca-spec.md section 6 says, per (layer, sequence): m(n)
// representatives, the raw rows [g m(n), n) and the head-summed summary
// queries of the last g positions (a ring of g fp32 rows). With an MTLA policy
// (mtla-spec.md section 4, MLA only) it holds ceil(n/s) rows in the
// representative segment, the open one the rounding of an fp32 running sum
// kept beside it, and no raw rows. Rows live in
// blocks of `block_rows` rows (a multiple of g, so a group never straddles
// two blocks) drawn from one pool; each (layer, sequence) has two block
// tables, one for the representative segment (append-only) and one for the
// raw segment (indexed by position / block_rows; a raw block returns to the
// pool once every group in it is condensed). With LcaParams::full() it is a
// plain paged cache: no representatives, no ring, nothing released.
//
// Decode step (every sequence of the step appends one token):
//   cache.begin_step(seqs, stream);                 // blocks for the new tokens, positions
//   for each layer: cache.decode_layer(layer, rows, queries, out, stream);
//   cache.end_step();                               // n += 1, release condensed raw blocks
// decode_layer launches three kernels (append the row and the summary query
// and condense the group that closes at this step; split-KV attention over
// [representatives ; raw window]; combine) that read the step's positions and
// the block tables from device memory, so a graph captured over the
// decode_layer calls of one step replays for later steps of the same batch
// (begin_step copies what changes before each replay).
//
// Prefill chunk (L tokens appended at positions [n0, n0 + L) of a sequence
// holding n0 >= 0 tokens: a prompt's chunk, or a later turn after decode steps):
//   cache.begin_extend(seq, L, stream);             // blocks for the chunk's rows
//   for each layer:
//     cache.read_layer_device(seq, layer, reps, raw, ring, open_sum, stream);  // the state at n0
//     ... the chunk's rows, condense groups [m(n0), m(n0 + L)), attention ...
//     cache.write_extend_device(seq, layer, new_reps, new_raw, ring, open_sum, stream);
//   cache.end_extend(seq);                           // n = n0 + L, release condensed raw blocks
// The old raw blocks stay held until end_extend (later layers still read
// them), so a chunk holds at most two windows of raw blocks per layer; the
// default pool has room for one sequence doing so. MTLA extends the same way:
// its rows are the representative segment (mtla_rows computes them), the row
// open at n0 is rewritten, and the open row's fp32 sum goes in and out beside.
//
// Running out of blocks is an lca::Error thrown before anything changes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lca/cache.hpp"
#include "lca/dtype.hpp"
#include "lca/params.hpp"
#include "lca/tensor.hpp"

typedef struct CUstream_st* cudaStream_t;

namespace lca::cuda {

struct PagedCacheConfig {
  KvLayout layout = KvLayout::mla;
  MlaDims mla{};          // layout mla: rows [c ; k^R], queries absorbed [q~ ; q^R]
  GqaDims gqa{};          // layout gqa: rows [k ; v] per kv head, queries rotated
  RopeParams rope{};      // gqa with key_mode = pooled
  double scale = 0;       // softmax scale (the model's, with its corrections)
  Policy policy = LcaParams{};  // LCA, LcaParams::full() (a plain paged full cache) or MTLA
  std::vector<MtlaHyperNet<float>> mtla_hyper;  // MTLA: one hyper-network per layer
  DType dtype = DType::bf16;
  int64_t layers = 1;
  int64_t max_seqs = 1;       // sequence slots
  int64_t max_context = 0;    // tokens per sequence at most
  int64_t block_rows = 64;    // rows per block, a multiple of g (LCA)
  int64_t pool_bytes = 0;     // 0: room for max_seqs sequences of max_context tokens in every layer,
                              // one of them extending by a prefill chunk (begin_extend)
  int64_t max_splits = 1024;  // KV splits per (sequence, kv head) in decode attention, at most
  // Throws lca::Error naming the bad field.
  void validate() const;
  std::string describe() const;
};

// One layer of one sequence, decoded to float (for tests and inspection).
struct PagedLayerContents {
  Tensor<float> representatives;  // [m(n), row_width]; MTLA: the ceil(n/s) rows, the open one last
  Tensor<float> raw;              // [n - g m(n), row_width], positions g m(n) .. n-1; MTLA: [0, row_width]
  Tensor<float> summary_ring;     // [min(n, g-1), summary_width], oldest first (empty for full and MTLA)
  Tensor<float> open_sum;         // MTLA: the open row's fp32 latent sum [d_c], empty when none is open
};

class PagedKvCache {
 public:
  // Allocates the pool, tables and ring on the current device. Throws
  // lca::Error when the config is invalid, no CUDA device is present, or the
  // device cannot hold the pool.
  explicit PagedKvCache(const PagedCacheConfig& config);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const PagedCacheConfig& config() const;
  int64_t row_width() const;       // values per row
  int64_t query_heads() const;
  int64_t query_width() const;     // MLA d_c + d_r, GQA head_dim
  int64_t output_width() const;    // MLA d_c, GQA head_dim
  int64_t summary_width() const;   // ring row: MLA d_c (or d_c + d_r), GQA kv_heads * head_dim

  // ---- Sequences ------------------------------------------------------------
  // A free slot, empty (n = 0). Throws when all max_seqs slots are in use.
  int64_t add_sequence();
  // Returns the slot's blocks to the pool.
  void release_sequence(int64_t seq);
  int64_t tokens(int64_t seq) const;
  int64_t active_sequences() const;

  // Sets an empty sequence to n tokens in every layer, taking the blocks they
  // need (throws before any change when the pool is short). Rows and ring are
  // zeros until write_layer fills them: this is how a prefill computed
  // elsewhere (the CPU cache, or the prefill kernels) enters the cache.
  void set_tokens(int64_t seq, int64_t n);
  // Writes one layer of a sequence: shapes as PagedLayerContents for its n
  // (the ring's rows are the last min(n, g-1) positions). Rounds to the dtype.
  void write_layer(int64_t seq, int64_t layer, const PagedLayerContents& contents);
  PagedLayerContents read_layer(int64_t seq, int64_t layer) const;
  // write_layer from device memory, in the cache dtype (rows) and fp32 (ring,
  // open_sum), enqueued on `stream`: reps [m(n), row_width], raw rows of
  // positions [g m(n), n) (MTLA: none, raw may be null), ring [min(n, g-1),
  // summary_width] (null for full and MTLA), open_sum [d_c] (MTLA with an open
  // row; else null). This is how a prefill computed on the GPU enters the cache.
  void write_layer_device(int64_t seq, int64_t layer, const void* reps, const void* raw, const float* ring,
                          const float* open_sum, cudaStream_t stream = nullptr);

  // ---- Prefill in chunks (LCA, full attention and MTLA) ---------------------
  // Blocks the pool must have free to append L tokens to `seq` in chunks of
  // `chunk` tokens (the peak over the chunks, every layer): what a caller
  // checks against free_blocks() before a multi-chunk prefill changes anything.
  int64_t extend_blocks(int64_t seq, int64_t L, int64_t chunk) const;
  // Starts appending L >= 1 tokens to a sequence holding n0 tokens: takes the
  // blocks of the new representatives [m(n0), m(n0 + L)) and of the new raw rows
  // [max(g m(n0 + L), n0), n0 + L) in every layer (throws before any change
  // when the pool is short, n0 + L > max_context, a decode step is in progress
  // or the sequence is already extending) and copies the new table entries
  // to the device on `stream`. tokens(seq) stays n0 until end_extend.
  void begin_extend(int64_t seq, int64_t L, cudaStream_t stream = nullptr);
  // One layer of a sequence as it is (n = tokens(seq)), copied on `stream`
  // into device buffers: reps [m(n), row_width] and raw [n - g m(n), row_width]
  // (positions g m(n) .. n-1) in the cache dtype, ring [min(n, g-1),
  // summary_width] fp32, oldest first (LCA only), and MTLA's open-row sum
  // [d_c] fp32 (when s does not divide n). A pointer may be null only where
  // its count is 0. MTLA: reps are the ceil(n/s) rows, the open one last.
  void read_layer_device(int64_t seq, int64_t layer, void* reps, void* raw, float* ring, float* open_sum = nullptr,
                         cudaStream_t stream = nullptr) const;
  // Writes one layer's part of the extension begun by begin_extend (n0 ->
  // n1 = n0 + L), from device buffers on `stream`: the new representatives
  // [m(n1) - m(n0), row_width], the raw rows of positions [max(g m(n1), n0), n1)
  // (the older ones are stored already, the ones below g m(n1) are condensed)
  // and the ring of n1, [min(n1, g-1), summary_width] fp32 (LCA only). A
  // pointer may be null only where its count is 0. MTLA: reps are the rows
  // [floor(n0/s), ceil(n1/s)) (the one open at n0 rewritten, the open one
  // last), raw and ring null, open_sum the fp32 sum of the row open at n1
  // [d_c] (when s does not divide n1).
  void write_extend_device(int64_t seq, int64_t layer, const void* reps, const void* raw, const float* ring,
                           const float* open_sum = nullptr, cudaStream_t stream = nullptr);
  // Ends the extension: n = n0 + L; raw blocks whose groups are all condensed
  // return to the pool (work on them already enqueued on the caller's stream
  // runs before any later reuse enqueued on that stream).
  void end_extend(int64_t seq);
  // Abandons an extension (a failed chunk): returns the blocks begin_extend
  // took; n stays n0. Rows or ring slots a write_extend_device already
  // changed are not restored: a layer written before the failure may hold a
  // ring that no longer matches n0 (release such a sequence).
  void cancel_extend(int64_t seq);

  // ---- Decode ---------------------------------------------------------------
  // Starts a step in which each of `seqs` (distinct active slots) appends one
  // token at position tokens(seq). Takes the blocks the step needs in every
  // layer (throws before any change when the pool is short or a sequence is
  // at max_context) and copies positions and new table entries to the device.
  // splits: KV splits per (sequence, kv head) of the attention, 0 = chosen
  // from the batch and the longest sequence (fix it when capturing a graph
  // that later steps replay).
  void begin_step(std::span<const int64_t> seqs, cudaStream_t stream = nullptr, int64_t splits = 0);
  // One layer of the step, on device pointers in the cache dtype:
  // rows [B, row_width], queries [B, query_heads, query_width] -> out
  // [B, query_heads, output_width] (B = the step's sequences, in its order).
  void decode_layer(int64_t layer, const void* rows, const void* queries, void* out,
                    cudaStream_t stream = nullptr);
  // Ends the step: n += 1 for its sequences; raw blocks whose groups are all
  // condensed return to the pool.
  void end_step();
  int64_t step_splits() const;  // the splits of the current or last step

  // ---- Memory ---------------------------------------------------------------
  int64_t block_bytes() const;
  int64_t total_blocks() const;
  int64_t free_blocks() const;
  int64_t blocks_in_use() const { return total_blocks() - free_blocks(); }
  int64_t bytes_in_use() const { return blocks_in_use() * block_bytes(); }
  // Rows a sequence of n tokens holds per layer (lca-spec.md section 6 count).
  int64_t entries(int64_t seq) const;
  // The pool's device memory, total_blocks() * block_bytes() bytes (for tools
  // that fill or inspect it, such as the benchmark's random contents).
  void* device_pool() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lca::cuda
