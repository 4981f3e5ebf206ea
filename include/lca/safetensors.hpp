// Reading safetensors checkpoints (the Hugging Face weight format).
//
// A .safetensors file is 8 bytes of little-endian unsigned N, then N bytes of
// UTF-8 JSON (an object: tensor name -> {"dtype", "shape", "data_offsets"},
// plus an optional "__metadata__" object of string -> string), then the data
// buffer. data_offsets = [begin, end) are byte offsets into the data buffer.
//
// SafetensorsFile maps one file read-only and checks its whole header at
// open(): every bad input throws lca::Error naming the file (and the tensor,
// where one is at fault), and no later call reads outside the mapping.
// Checkpoint is a model folder: model.safetensors, or
// model.safetensors.index.json ("weight_map": tensor -> shard file) + shards.
//
// Weights are read as float: F32, F16 and BF16 are converted; the other
// safetensors dtypes (I8, U8, BOOL, F64, F8_E4M3, ...) are accepted in a header
// but read() of such a tensor throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lca/dtype.hpp"
#include "lca/tensor.hpp"

namespace lca {

struct TensorInfo {
  std::string name;
  std::string dtype_name;       // as spelled in the file: "F32", "BF16", "I8", ...
  std::optional<DType> dtype;   // f32 / f16 / bf16 for the dtypes read() converts; empty otherwise
  Shape shape;                  // [] is a scalar (one element)
  int64_t offset = 0;           // byte offset within the data buffer
  int64_t bytes = 0;            // byte length
};

class SafetensorsFile {
 public:
  // Maps `path` and validates its header. Throws lca::Error naming the file.
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const;
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throws naming the file and the tensor when absent.
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const;

  // The tensor converted to float. Its shape must equal `expected` exactly
  // (Shape{} means a scalar, not "any shape"); a mismatch throws naming the
  // file, the tensor and both shapes. Throws for dtypes other than F32/F16/BF16.
  Tensor<float> read(const std::string& name, const Shape& expected) const;

  // The tensor's stored bytes (little-endian, info(name).bytes long), a view
  // into the mapping valid while this object lives. No alignment is promised.
  std::span<const std::byte> raw(const std::string& name) const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Checkpoint {
 public:
  // `dir` holds model.safetensors (used when present, as Hugging Face does) or
  // model.safetensors.index.json and the shards it names. Opens and validates
  // every shard; throws naming the folder, the index or the shard at fault.
  static Checkpoint open(const std::string& dir);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  ~Checkpoint();

  const std::string& dir() const;
  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  // The shard holding `name` (throws naming the folder and the tensor when absent).
  const SafetensorsFile& file_of(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  // As SafetensorsFile::read on the tensor's shard (errors name the shard file).
  Tensor<float> read(const std::string& name, const Shape& expected) const;

 private:
  struct Impl;
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lca
