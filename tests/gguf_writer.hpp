// A small GGUF writer for the tests, written from the format description
// (independently of src/model/gguf.cpp): header, metadata, tensor infos,
// padding to the alignment, data. Fields can be corrupted on purpose.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "lca/tensor.hpp"

namespace lca_test {

using Bytes = std::string;  // raw bytes

template <class T>
Bytes le(T v) {
  using U = std::conditional_t<sizeof(T) == 1, uint8_t,
                               std::conditional_t<sizeof(T) == 2, uint16_t,
                                                  std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
  const U u = std::bit_cast<U>(v);
  Bytes b(sizeof(T), '\0');
  for (size_t i = 0; i < sizeof(T); ++i) b[i] = static_cast<char>((static_cast<uint64_t>(u) >> (8 * i)) & 0xff);
  return b;
}

inline Bytes gguf_str(const std::string& s) { return le<uint64_t>(s.size()) + s; }

inline void write_bytes(const std::filesystem::path& p, const Bytes& content) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr) << p;
  if (!content.empty()) ASSERT_EQ(std::fwrite(content.data(), 1, content.size(), f), content.size());
  ASSERT_EQ(std::fclose(f), 0);
}

// Value type numbers of the format.
enum : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kStr = 8, kArr = 9,
  kU64 = 10, kI64 = 11, kF64 = 12,
};
// ggml type numbers used by the tests.
enum : uint32_t { kTF32 = 0, kTF16 = 1, kTQ4_0 = 2, kTQ4_1 = 3, kTQ8_0 = 8, kTQ4_K = 12, kTBF16 = 30 };

class GgufWriter {
 public:
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  uint64_t alignment = 32;  // the padding used; general.alignment is written only by add_alignment

  // A metadata entry from its type number and encoded value.
  void add(const std::string& key, uint32_t type, const Bytes& value) {
    kv_ += gguf_str(key) + le<uint32_t>(type) + value;
    ++n_kv_;
  }
  void add_u32(const std::string& k, uint32_t v) { add(k, kU32, le(v)); }
  void add_i32(const std::string& k, int32_t v) { add(k, kI32, le(v)); }
  void add_u64(const std::string& k, uint64_t v) { add(k, kU64, le(v)); }
  void add_f32(const std::string& k, float v) { add(k, kF32, le(v)); }
  void add_f64(const std::string& k, double v) { add(k, kF64, le(v)); }
  void add_bool(const std::string& k, bool v) { add(k, kBool, le<uint8_t>(v ? 1 : 0)); }
  void add_string(const std::string& k, const std::string& v) { add(k, kStr, gguf_str(v)); }
  void add_string_array(const std::string& k, const std::vector<std::string>& v) {
    Bytes b = le<uint32_t>(kStr) + le<uint64_t>(v.size());
    for (const auto& s : v) b += gguf_str(s);
    add(k, kArr, b);
  }
  void add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    Bytes b = le<uint32_t>(kI32) + le<uint64_t>(v.size());
    for (int32_t x : v) b += le(x);
    add(k, kArr, b);
  }
  void add_alignment(uint32_t a) {
    alignment = a;
    add_u32("general.alignment", a);
  }

  // A tensor of row-major `shape` (written reversed, fastest first) with its
  // encoded bytes; `offset` overrides the packed offset.
  void add_tensor(const std::string& name, const lca::Shape& shape, uint32_t type, const Bytes& data,
                  std::optional<uint64_t> offset = std::nullopt) {
    tensors_.push_back({name, shape, type, data, offset});
  }

  // The whole file; `truncate_to` cuts it.
  Bytes build() const {
    Bytes out = le(magic) + le(version) + le<uint64_t>(tensors_.size()) + le<uint64_t>(n_kv_) + kv_;
    std::vector<uint64_t> offsets;
    uint64_t at = 0;
    for (const auto& t : tensors_) {
      at = (at + alignment - 1) / alignment * alignment;
      offsets.push_back(t.offset.value_or(at));
      at += t.data.size();
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const auto& t = tensors_[i];
      out += gguf_str(t.name) + le<uint32_t>(static_cast<uint32_t>(t.shape.size()));
      for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) out += le<uint64_t>(static_cast<uint64_t>(*it));
      out += le<uint32_t>(t.type) + le<uint64_t>(offsets[i]);
    }
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (offsets[i] > (1u << 20)) continue;  // an absurd offset on purpose: no data
      const size_t end = data_start + offsets[i] + tensors_[i].data.size();
      if (out.size() < end) out.resize(end, '\0');
      out.replace(data_start + offsets[i], tensors_[i].data.size(), tensors_[i].data);
    }
    return out;
  }
  void write(const std::filesystem::path& p) const { write_bytes(p, build()); }

 private:
  struct TensorEntry {
    std::string name;
    lca::Shape shape;
    uint32_t type;
    Bytes data;
    std::optional<uint64_t> offset;
  };
  Bytes kv_;
  uint64_t n_kv_ = 0;
  std::vector<TensorEntry> tensors_;
};

inline Bytes f32_bytes(const std::vector<float>& v) {
  Bytes b;
  b.reserve(v.size() * 4);
  for (float x : v) b += le(x);
  return b;
}

}  // namespace lca_test
