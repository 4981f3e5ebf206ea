// DeepSeek's mixture-of-experts feed-forward on the GPU (internal to the GPU
// runtime): the function model::moe computes on the CPU (src/model/mla.hpp),
// with bf16 weights and activations and fp32 routing. One GpuMoe per MoE
// layer; one MoeWorkspace shared by all layers of a session.
//
// forward() is capturable in a CUDA graph (no host synchronisation, no
// allocation) for any rows <= the workspace's max_rows. A workspace made with
// blas_min_rows > 0 switches forward, for rows >= blas_min_rows on a stream
// that is not capturing, to one cuBLAS GEMM per expert (gate and up, then
// down) instead of the grouped kernels: one host synchronisation (the
// experts' row counts). Prefill chunks may be faster that way; measure
// (bench_moe_kernels).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "model/mla.hpp"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace lca::cuda {

// Scratch for the routing and the expert products of up to max_rows tokens.
class MoeWorkspace {
 public:
  // blas_min_rows: 0, the grouped kernels always; else the per-expert cuBLAS
  // path from that many rows (and [max_rows * (per_token + shared), 2 F] bf16
  // more scratch).
  MoeWorkspace(const model::MlaArch& arch, int64_t hidden, int64_t max_rows, int64_t blas_min_rows = 0);
  MoeWorkspace(MoeWorkspace&&) noexcept;
  MoeWorkspace& operator=(MoeWorkspace&&) noexcept;
  ~MoeWorkspace();
  int64_t max_rows() const;
  int64_t blas_min_rows() const;
  int64_t bytes() const;
  // The rows of each expert in the last forward of rows > 0 on this
  // workspace: the E routed ones, then the shared units (every token's).
  // Copies from the device: synchronises it.
  std::vector<int64_t> expert_rows() const;

 private:
  friend class GpuMoe;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class GpuMoe {
 public:
  // One MoE layer's router (and V3 correction bias), experts and shared
  // experts, rounded to bf16 (lw.is_moe() must hold).
  static GpuMoe upload(const model::MlaArch& arch, const LayerWeights& lw, int64_t hidden);
  // Random weights at the arch's sizes (uniform, scale 1/sqrt(fan-in)): benchmarks.
  static GpuMoe random(const model::MlaArch& arch, int64_t hidden, uint64_t seed);

  GpuMoe(GpuMoe&&) noexcept;
  GpuMoe& operator=(GpuMoe&&) noexcept;
  ~GpuMoe();

  // x[rows, hidden] += moe(h[rows, hidden]); h and x bf16 on the device.
  // rows must be <= ws.max_rows(); blas must be bound to `stream`. one_row
  // (a batch-1 decode step, rows == 1): the one-row path, no dispatch and no
  // cuBLAS (gpu_moe.cpp).
  void forward(const void* h, int64_t rows, void* x, MoeWorkspace& ws, cudaStream_t stream, cublasHandle_t blas,
               bool one_row = false) const;
  int64_t weight_bytes() const;

 private:
  struct Impl;
  explicit GpuMoe(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lca::cuda
