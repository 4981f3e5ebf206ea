// Reading GGUF files (llama.cpp's model format), versions 2 and 3.
//
// A GGUF file is: magic "GGUF", uint32 version, uint64 tensor count, uint64
// metadata count; the metadata (key string, uint32 value type, value; strings
// are uint64 length + UTF-8 bytes, arrays uint32 element type + uint64 count +
// elements); the tensor infos (name, uint32 n_dims, n_dims uint64 dims with
// the fastest-varying first, uint32 ggml type, uint64 offset); padding to
// general.alignment (default 32); then the data, where each tensor's offset is
// relative to the data start and a multiple of the alignment. Little-endian only.
//
// GgufFile maps one file read-only and checks the whole header at open():
// every malformed input throws lca::Error naming the file (and the tensor or
// key at fault), and no later call reads outside the mapping.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lca/tensor.hpp"

namespace lca {

// Metadata value types, numbered as in the file.
enum class GgufValueType : uint32_t {
  uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6,
  boolean = 7, string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);  // "uint32", "string", ...

// One metadata value. Integers are held in `i` (signed types, bool) or `u`
// (unsigned types), floats in `f`, strings in `s`, arrays in `array` (all
// elements of type `element_type`).
struct GgufValue {
  GgufValueType type = GgufValueType::uint8;
  GgufValueType element_type = GgufValueType::uint8;  // arrays only
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<GgufValue> array;
  bool is_integer() const;  // any of the eight integer types
};

// ggml tensor types, numbered as in the file (gaps are retired numbers).
enum class GgmlType : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9,
  q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, q8_k = 15,
  iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23,
  i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30, tq1_0 = 34, tq2_0 = 35, mxfp4 = 39,
  nvfp4 = 40, q1_0 = 41,
};
const char* ggml_type_name(GgmlType t);  // "F32", "Q4_1", ...
// True for the types GgufFile::read converts to float: F32, F16, BF16, Q8_0, Q4_0, Q4_1.
bool ggml_type_readable(GgmlType t);

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::f32;
  std::vector<int64_t> ne;  // dimensions as stored: ne[0] varies fastest
  Shape shape;              // row-major (PyTorch/Hugging Face) order: ne reversed
  int64_t offset = 0;       // byte offset within the data section
  int64_t bytes = 0;        // byte length
  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps `path` and validates its header. Throws lca::Error naming the file.
  static GgufFile open(const std::string& path);

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();

  const std::string& path() const;
  uint32_t version() const;
  int64_t alignment() const;

  // ---- Metadata ----------------------------------------------------------------
  const std::map<std::string, GgufValue>& metadata() const;
  bool has(const std::string& key) const;
  // Each throws naming the file and the key when it is absent or of another kind.
  const GgufValue& value(const std::string& key) const;
  int64_t get_int(const std::string& key) const;       // any integer type (uint64 must fit int64)
  double get_float(const std::string& key) const;      // float32/float64 or any integer type
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;

  // ---- Tensors -----------------------------------------------------------------
  std::vector<std::string> names() const;  // in file order
  bool contains(const std::string& name) const;
  const GgufTensorInfo& info(const std::string& name) const;  // throws naming file and tensor
  // The tensor dequantised to float, in row-major `shape` order. Its shape must
  // equal `expected` exactly; throws naming the file and the tensor for a
  // mismatch or a type ggml_type_readable() refuses.
  Tensor<float> read(const std::string& name, const Shape& expected) const;
  // The stored bytes of a tensor, a view into the mapping.
  std::span<const std::byte> raw(const std::string& name) const;

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lca
