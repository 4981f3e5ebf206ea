// DeepSeek's mixture-of-experts feed-forward on the GPU (internal to the GPU
// runtime): the function model::moe computes on the CPU (src/model/mla.hpp),
// with bf16 weights and activations and fp32 routing. One GpuMoe per MoE
// layer; one MoeWorkspace shared by all layers of a session.
//
// forward() is capturable in a CUDA graph (no host synchronisation, no
// allocation) for any rows <= the workspace's max_rows.
#pragma once

#include <cstdint>
#include <memory>

#include "model/mla.hpp"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace lca::cuda {

// Scratch for the routing and the expert products of up to max_rows tokens.
class MoeWorkspace {
 public:
  MoeWorkspace(const model::MlaArch& arch, int64_t hidden, int64_t max_rows);
  MoeWorkspace(MoeWorkspace&&) noexcept;
  MoeWorkspace& operator=(MoeWorkspace&&) noexcept;
  ~MoeWorkspace();
  int64_t max_rows() const;
  int64_t bytes() const;

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
  // rows must be <= ws.max_rows(); blas must be bound to `stream`.
  void forward(const void* h, int64_t rows, void* x, MoeWorkspace& ws, cudaStream_t stream,
               cublasHandle_t blas) const;
  int64_t weight_bytes() const;

 private:
  struct Impl;
  explicit GpuMoe(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lca::cuda
