// The safetensors reader: one read-only mapping per file, the header checked
// completely at open(), so read() only converts bytes known to lie inside the
// data buffer. Messages are built with lca::detail::fail (no iostreams).
#include "lca/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "lca/error.hpp"
#include "model/json_fields.hpp"
#include "model/mapped_file.hpp"
#include "model/text_file.hpp"

namespace lca {

namespace {

using json = nlohmann::json;
using model::in_quotes;
using model::MappedFile;
using model::json_int64;
using model::json_kind;
namespace fs = std::filesystem;

// A header longer than this is refused before it is parsed (the reference
// implementation uses the same bound).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeEntry {
  const char* name;
  int bits;  // bits per element
  std::optional<DType> dtype;
};

// Every dtype the safetensors format defines; only F32, F16 and BF16 are read.
constexpr DTypeEntry kDTypes[] = {
    {"BOOL", 8, std::nullopt},     {"U8", 8, std::nullopt},         {"I8", 8, std::nullopt},
    {"F8_E5M2", 8, std::nullopt},  {"F8_E4M3", 8, std::nullopt},    {"F8_E8M0", 8, std::nullopt},
    {"F4", 4, std::nullopt},       {"F6_E2M3", 6, std::nullopt},    {"F6_E3M2", 6, std::nullopt},
    {"I16", 16, std::nullopt},     {"U16", 16, std::nullopt},       {"F16", 16, DType::f16},
    {"BF16", 16, DType::bf16},     {"I32", 32, std::nullopt},       {"U32", 32, std::nullopt},
    {"F32", 32, DType::f32},       {"F64", 64, std::nullopt},       {"I64", 64, std::nullopt},
    {"U64", 64, std::nullopt},     {"C64", 64, std::nullopt},
};

const DTypeEntry* find_dtype(const std::string& name) {
  for (const auto& e : kDTypes)
    if (name == e.name) return &e;
  return nullptr;
}

// a * b into out, false on int64 overflow (a, b >= 0).
bool mul_ok(int64_t a, int64_t b, int64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

uint64_t load_le64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}

}  // namespace

// ---- SafetensorsFile ----------------------------------------------------------------

struct SafetensorsFile::Impl {
  std::string path;
  MappedFile map;
  int64_t data_begin = 0;  // 8 + header length
  int64_t data_size = 0;
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;

  [[noreturn]] void fail_tensor(const std::string& name, const std::string& what) const {
    detail::fail("safetensors file ", in_quotes(path), ": tensor ", in_quotes(name), ": ", what);
  }
  void parse_header();
  TensorInfo parse_entry(const std::string& name, const json& v) const;
};

TensorInfo SafetensorsFile::Impl::parse_entry(const std::string& name, const json& v) const {
  if (!v.is_object()) fail_tensor(name, "header entry is " + json_kind(v) + ", expected an object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!v.contains(key)) fail_tensor(name, std::string("header entry has no \"") + key + "\"");

  TensorInfo info;
  info.name = name;

  const json& jd = v["dtype"];
  if (!jd.is_string()) fail_tensor(name, "\"dtype\" is " + json_kind(jd) + ", expected a string");
  info.dtype_name = jd.get<std::string>();
  const DTypeEntry* dt = find_dtype(info.dtype_name);
  if (!dt) fail_tensor(name, "unknown dtype " + in_quotes(info.dtype_name));
  info.dtype = dt->dtype;

  const json& js = v["shape"];
  if (!js.is_array()) fail_tensor(name, "\"shape\" is " + json_kind(js) + ", expected an array");
  bool has_zero = false;
  for (size_t i = 0; i < js.size(); ++i) {
    int64_t d = 0;
    if (!json_int64(js[i], d))
      fail_tensor(name, "\"shape\" element " + std::to_string(i) + " is " + json_kind(js[i]) +
                            ", expected an integer in int64 range");
    if (d < 0) fail_tensor(name, "\"shape\" has a negative dimension " + std::to_string(d));
    has_zero = has_zero || d == 0;
    info.shape.push_back(d);
  }
  int64_t numel = 1;
  if (has_zero) {
    numel = 0;
  } else {
    for (int64_t d : info.shape)
      if (!mul_ok(numel, d, numel)) fail_tensor(name, "shape " + shape_str(info.shape) + " overflows int64");
  }
  int64_t bits = 0;
  if (!mul_ok(numel, dt->bits, bits))
    fail_tensor(name, "shape " + shape_str(info.shape) + " of " + info.dtype_name + " overflows int64 bytes");
  if (bits % 8 != 0)
    fail_tensor(name, "shape " + shape_str(info.shape) + " of " + info.dtype_name + " is not a whole number of bytes");
  const int64_t need = bits / 8;

  const json& jo = v["data_offsets"];
  if (!jo.is_array() || jo.size() != 2)
    fail_tensor(name, "\"data_offsets\" is " + (jo.is_array() ? "an array of " + std::to_string(jo.size()) + " elements"
                                                               : json_kind(jo)) +
                          ", expected [begin, end]");
  int64_t begin = 0, end = 0;
  if (!json_int64(jo[0], begin) || !json_int64(jo[1], end))
    fail_tensor(name, "\"data_offsets\" must hold two integers in int64 range");
  const std::string offs = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
  if (begin < 0 || end < 0) fail_tensor(name, offs + " are negative");
  if (begin > end) fail_tensor(name, offs + " have begin > end");
  if (end > data_size)
    fail_tensor(name, offs + " run past the data buffer (" + std::to_string(data_size) + " bytes)");
  if (end - begin != need)
    fail_tensor(name, offs + " span " + std::to_string(end - begin) + " bytes, but shape " + shape_str(info.shape) +
                          " of " + info.dtype_name + " needs " + std::to_string(need));
  info.offset = begin;
  info.bytes = need;
  return info;
}

void SafetensorsFile::Impl::parse_header() {
  const uint64_t n = load_le64(map.data);
  LCA_CHECK(n <= kMaxHeaderBytes, "safetensors file ", in_quotes(path), ": header length ", n,
            " bytes is absurd (the limit is ", kMaxHeaderBytes, ")");
  LCA_CHECK(n <= map.size - 8, "safetensors file ", in_quotes(path), ": header length ", n,
            " bytes runs past the end of the file (", static_cast<uint64_t>(map.size), " bytes)");
  data_begin = static_cast<int64_t>(8 + n);
  data_size = static_cast<int64_t>(map.size) - data_begin;

  const char* text = reinterpret_cast<const char*>(map.data + 8);
  // Duplicate tensor names would be silently merged by the parser; catch them.
  std::string duplicate;
  std::set<std::string> seen;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      if (!seen.insert(parsed.get<std::string>()).second && duplicate.empty()) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text, text + n, cb);
  } catch (const json::exception& e) {
    detail::fail("safetensors file ", in_quotes(path), ": header is not valid JSON: ", e.what());
  }
  LCA_CHECK(root.is_object(), "safetensors file ", in_quotes(path), ": header is ", json_kind(root),
            ", expected a JSON object");
  LCA_CHECK(duplicate.empty(), "safetensors file ", in_quotes(path), ": header names ", in_quotes(duplicate), " twice");

  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      LCA_CHECK(value.is_object(), "safetensors file ", in_quotes(path), ": \"__metadata__\" is ", json_kind(value),
                ", expected an object of strings");
      for (const auto& [mk, mv] : value.items()) {
        LCA_CHECK(mv.is_string(), "safetensors file ", in_quotes(path), ": \"__metadata__\" value ", in_quotes(mk),
                  " is ", json_kind(mv), ", expected a string");
        metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    tensors.emplace(key, parse_entry(key, value));
  }

  // No two tensors may share a byte (zero-size tensors occupy none).
  std::vector<model::ByteRange> ranges;
  for (const auto& [name, t] : tensors) ranges.push_back({&t.name, t.offset, t.bytes});
  model::check_disjoint("safetensors file", path, std::move(ranges));
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  MappedFile::map(path, "safetensors file", 8, "the 8-byte header length", impl->map);
  impl->parse_header();
  return SafetensorsFile(std::move(impl));
}

const std::string& SafetensorsFile::path() const { return impl_->path; }

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensors.size());
  for (const auto& kv : impl_->tensors) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return impl_->tensors.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end())
    detail::fail("safetensors file ", in_quotes(impl_->path), ": no tensor named ", in_quotes(name));
  return it->second;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }

std::span<const std::byte> SafetensorsFile::raw(const std::string& name) const {
  const TensorInfo& t = info(name);
  return {impl_->map.data + impl_->data_begin + t.offset, static_cast<size_t>(t.bytes)};
}

Tensor<float> SafetensorsFile::read(const std::string& name, const Shape& expected) const {
  const TensorInfo& t = info(name);
  if (!t.dtype)
    impl_->fail_tensor(name, "dtype " + t.dtype_name + " cannot be read as float (read converts F32, F16 and BF16)");
  if (t.shape != expected)
    impl_->fail_tensor(name, "has shape " + shape_str(t.shape) + ", expected " + shape_str(expected));

  Tensor<float> out(t.shape);
  const int64_t n = out.numel();
  const unsigned char* src = reinterpret_cast<const unsigned char*>(impl_->map.data + impl_->data_begin + t.offset);
  float* dst = out.data();
  // Byte-wise little-endian loads: the data need not be aligned, and the
  // compiler turns these into plain loads on little-endian machines.
  switch (*t.dtype) {
    case DType::f32:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) {
        const unsigned char* p = src + 4 * i;
        const uint32_t u = static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                           static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
        dst[i] = std::bit_cast<float>(u);
      }
      break;
    case DType::f16:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i)
        dst[i] = f16_to_float(static_cast<uint16_t>(src[2 * i] | src[2 * i + 1] << 8));
      break;
    case DType::bf16:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i)
        dst[i] = bf16_to_float(static_cast<uint16_t>(src[2 * i] | src[2 * i + 1] << 8));
      break;
  }
  return out;
}

// ---- Checkpoint -------------------------------------------------------------------------

struct Checkpoint::Impl {
  std::string dir;
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> where;  // tensor -> index into files
};

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

namespace {

// True when `p` names a regular file; no exceptions.
bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// A shard name from an index must stay inside the folder.
bool plain_relative(const std::string& s) {
  if (s.empty()) return false;
  const fs::path p(s);
  if (p.is_absolute()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  const fs::path d(dir);
  const fs::path single = d / "model.safetensors";
  const fs::path index = d / "model.safetensors.index.json";

  std::error_code ec;
  LCA_CHECK(fs::is_directory(d, ec), "checkpoint ", in_quotes(dir), ": not a folder");
  if (is_file(single)) {
    impl->files.push_back(SafetensorsFile::open(single.string()));
    for (const auto& name : impl->files[0].names()) impl->where.emplace(name, 0);
    return Checkpoint(std::move(impl));
  }
  LCA_CHECK(is_file(index), "checkpoint ", in_quotes(dir),
            ": holds neither model.safetensors nor model.safetensors.index.json");

  const std::string ipath = index.string();
  const std::string text = model::read_text_file(ipath, "checkpoint index", kMaxHeaderBytes);
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    detail::fail("checkpoint index ", in_quotes(ipath), ": not valid JSON: ", e.what());
  }
  LCA_CHECK(root.is_object(), "checkpoint index ", in_quotes(ipath), ": is ", json_kind(root),
            ", expected a JSON object");
  LCA_CHECK(root.contains("weight_map"), "checkpoint index ", in_quotes(ipath), ": has no \"weight_map\"");
  const json& wm = root["weight_map"];
  LCA_CHECK(wm.is_object(), "checkpoint index ", in_quotes(ipath), ": \"weight_map\" is ", json_kind(wm),
            ", expected an object");

  std::map<std::string, size_t> shard_index;  // shard file name -> index into files
  for (const auto& [name, v] : wm.items()) {
    LCA_CHECK(v.is_string(), "checkpoint index ", in_quotes(ipath), ": \"weight_map\" entry for tensor ", in_quotes(name),
              " is ", json_kind(v), ", expected a shard file name");
    const std::string shard = v.get<std::string>();
    LCA_CHECK(plain_relative(shard), "checkpoint index ", in_quotes(ipath), ": tensor ", in_quotes(name), " names shard ",
              in_quotes(shard), ", not a file name inside the folder");
    auto it = shard_index.find(shard);
    if (it == shard_index.end()) {
      const fs::path sp = d / shard;
      LCA_CHECK(is_file(sp), "checkpoint index ", in_quotes(ipath), ": shard ", in_quotes(shard), " (holding tensor ",
                in_quotes(name), ") is missing: no file ", in_quotes(sp.string()));
      impl->files.push_back(SafetensorsFile::open(sp.string()));
      it = shard_index.emplace(shard, impl->files.size() - 1).first;
    }
    const SafetensorsFile& f = impl->files[it->second];
    LCA_CHECK(f.contains(name), "checkpoint index ", in_quotes(ipath), ": tensor ", in_quotes(name), " is listed in shard ",
              in_quotes(f.path()), ", which does not hold it");
    impl->where.emplace(name, it->second);
  }
  return Checkpoint(std::move(impl));
}

const std::string& Checkpoint::dir() const { return impl_->dir; }

bool Checkpoint::contains(const std::string& name) const { return impl_->where.count(name) != 0; }

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->where.size());
  for (const auto& kv : impl_->where) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  auto it = impl_->where.find(name);
  if (it == impl_->where.end()) detail::fail("checkpoint ", in_quotes(impl_->dir), ": no tensor named ", in_quotes(name));
  return impl_->files[it->second];
}

const TensorInfo& Checkpoint::info(const std::string& name) const { return file_of(name).info(name); }

Tensor<float> Checkpoint::read(const std::string& name, const Shape& expected) const {
  return file_of(name).read(name, expected);
}

}  // namespace lca
