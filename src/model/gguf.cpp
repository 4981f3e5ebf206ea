// The GGUF reader: one read-only mapping per file, the header parsed through a
// bounds-checked cursor at open(), so read() only converts bytes known to lie
// inside the data section. Messages are built with lca::detail::fail.
#include "lca/gguf.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

#include "lca/dtype.hpp"
#include "lca/error.hpp"
#include "model/mapped_file.hpp"
#include "model/text_file.hpp"

namespace lca {

namespace {

using model::in_quotes;
using model::MappedFile;

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr int64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;         // arrays of arrays: deeper nesting is refused
constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
// Array elements over all metadata: each costs a GgufValue in memory, so a
// header claiming more is refused rather than allowed to exhaust memory.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 24;

struct TypeEntry {
  GgmlType type;
  const char* name;
  int64_t block;        // elements per block
  int64_t block_bytes;  // bytes per block
};

// Every ggml type a GGUF file may hold, with its block geometry as gguf-py's
// GGML_QUANT_SIZES gives it (the cross-check test compares the two).
constexpr TypeEntry kTypes[] = {
    {GgmlType::f32, "F32", 1, 4},          {GgmlType::f16, "F16", 1, 2},
    {GgmlType::q4_0, "Q4_0", 32, 18},      {GgmlType::q4_1, "Q4_1", 32, 20},
    {GgmlType::q5_0, "Q5_0", 32, 22},      {GgmlType::q5_1, "Q5_1", 32, 24},
    {GgmlType::q8_0, "Q8_0", 32, 34},      {GgmlType::q8_1, "Q8_1", 32, 40},
    {GgmlType::q2_k, "Q2_K", 256, 84},     {GgmlType::q3_k, "Q3_K", 256, 110},
    {GgmlType::q4_k, "Q4_K", 256, 144},    {GgmlType::q5_k, "Q5_K", 256, 176},
    {GgmlType::q6_k, "Q6_K", 256, 210},    {GgmlType::q8_k, "Q8_K", 256, 292},
    {GgmlType::iq2_xxs, "IQ2_XXS", 256, 66}, {GgmlType::iq2_xs, "IQ2_XS", 256, 74},
    {GgmlType::iq3_xxs, "IQ3_XXS", 256, 98}, {GgmlType::iq1_s, "IQ1_S", 256, 50},
    {GgmlType::iq4_nl, "IQ4_NL", 32, 18},  {GgmlType::iq3_s, "IQ3_S", 256, 110},
    {GgmlType::iq2_s, "IQ2_S", 256, 82},   {GgmlType::iq4_xs, "IQ4_XS", 256, 136},
    {GgmlType::i8, "I8", 1, 1},            {GgmlType::i16, "I16", 1, 2},
    {GgmlType::i32, "I32", 1, 4},          {GgmlType::i64, "I64", 1, 8},
    {GgmlType::f64, "F64", 1, 8},          {GgmlType::iq1_m, "IQ1_M", 256, 56},
    {GgmlType::bf16, "BF16", 1, 2},        {GgmlType::tq1_0, "TQ1_0", 256, 54},
    {GgmlType::tq2_0, "TQ2_0", 256, 66},   {GgmlType::mxfp4, "MXFP4", 32, 17},
    {GgmlType::nvfp4, "NVFP4", 64, 36},    {GgmlType::q1_0, "Q1_0", 128, 18},
};

const TypeEntry* find_type(uint32_t id) {
  for (const auto& e : kTypes)
    if (static_cast<uint32_t>(e.type) == id) return &e;
  return nullptr;
}

bool mul_ok(int64_t a, int64_t b, int64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

template <class T>
T load_le(const std::byte* p) {
  using U = std::conditional_t<sizeof(T) == 1, uint8_t,
                               std::conditional_t<sizeof(T) == 2, uint16_t,
                                                  std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
  U v = 0;
  for (int i = static_cast<int>(sizeof(T)) - 1; i >= 0; --i) v = static_cast<U>((v << 8) | static_cast<U>(p[i]));
  return std::bit_cast<T>(v);
}

// Reads the header front to back; every read checks that it stays inside the file.
class Cursor {
 public:
  Cursor(const std::string& path, const std::byte* data, size_t size) : path_(path), data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  void need(size_t n, const std::string& what) const {
    LCA_CHECK(n <= left(), "gguf file ", in_quotes(path_), ": truncated: ", what, " needs ", static_cast<uint64_t>(n),
              " bytes at offset ", static_cast<uint64_t>(pos_), ", but the file has ", static_cast<uint64_t>(left()),
              " left");
  }
  template <class T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    const T v = load_le<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    const uint64_t n = get<uint64_t>(what + " length");
    LCA_CHECK(n <= left(), "gguf file ", in_quotes(path_), ": truncated: ", what, " of ", n, " bytes at offset ",
              static_cast<uint64_t>(pos_), " runs past the end of the file (", static_cast<uint64_t>(left()),
              " bytes left)");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }

 private:
  const std::string& path_;
  const std::byte* data_;
  size_t size_;
  size_t pos_ = 0;
};

// The smallest number of bytes one element of type t can take in the file:
// bounds an array's count before anything is allocated.
size_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8: case GgufValueType::int8: case GgufValueType::boolean: return 1;
    case GgufValueType::uint16: case GgufValueType::int16: return 2;
    case GgufValueType::uint32: case GgufValueType::int32: case GgufValueType::float32: return 4;
    case GgufValueType::uint64: case GgufValueType::int64: case GgufValueType::float64: return 8;
    case GgufValueType::string: return 8;
    case GgufValueType::array: return 12;
  }
  return 1;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::float64); }

}  // namespace

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8: return "uint8";
    case GgufValueType::int8: return "int8";
    case GgufValueType::uint16: return "uint16";
    case GgufValueType::int16: return "int16";
    case GgufValueType::uint32: return "uint32";
    case GgufValueType::int32: return "int32";
    case GgufValueType::float32: return "float32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::uint64: return "uint64";
    case GgufValueType::int64: return "int64";
    case GgufValueType::float64: return "float64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::uint8: case GgufValueType::int8: case GgufValueType::uint16: case GgufValueType::int16:
    case GgufValueType::uint32: case GgufValueType::int32: case GgufValueType::uint64: case GgufValueType::int64:
      return true;
    default:
      return false;
  }
}

const char* ggml_type_name(GgmlType t) {
  const TypeEntry* e = find_type(static_cast<uint32_t>(t));
  return e ? e->name : "unknown";
}

bool ggml_type_readable(GgmlType t) {
  switch (t) {
    case GgmlType::f32: case GgmlType::f16: case GgmlType::bf16:
    case GgmlType::q8_0: case GgmlType::q4_0: case GgmlType::q4_1:
      return true;
    default:
      return false;
  }
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// ---- GgufFile -------------------------------------------------------------------------

struct GgufFile::Impl {
  std::string path;
  MappedFile map;
  uint32_t version = 0;
  int64_t alignment = kDefaultAlignment;
  int64_t data_begin = 0;
  int64_t data_size = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensors;           // file order
  std::map<std::string, size_t> tensor_index;    // name -> index into tensors
  uint64_t array_elements = 0;                   // read so far, against kMaxArrayElements

  [[noreturn]] void fail_key(const std::string& key, const std::string& what) const {
    detail::fail("gguf file ", in_quotes(path), ": metadata key ", in_quotes(key), ": ", what);
  }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& what) const {
    detail::fail("gguf file ", in_quotes(path), ": tensor ", in_quotes(name), ": ", what);
  }
  GgufValue read_value(Cursor& c, GgufValueType type, const std::string& key, int depth);
  void parse();
};

GgufValue GgufFile::Impl::read_value(Cursor& c, GgufValueType type, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  const std::string what = "value of metadata key " + in_quotes(key);
  switch (type) {
    case GgufValueType::uint8: v.u = c.get<uint8_t>(what); break;
    case GgufValueType::int8: v.i = c.get<int8_t>(what); break;
    case GgufValueType::uint16: v.u = c.get<uint16_t>(what); break;
    case GgufValueType::int16: v.i = c.get<int16_t>(what); break;
    case GgufValueType::uint32: v.u = c.get<uint32_t>(what); break;
    case GgufValueType::int32: v.i = c.get<int32_t>(what); break;
    case GgufValueType::uint64: v.u = c.get<uint64_t>(what); break;
    case GgufValueType::int64: v.i = c.get<int64_t>(what); break;
    case GgufValueType::float32: v.f = c.get<float>(what); break;
    case GgufValueType::float64: v.f = c.get<double>(what); break;
    case GgufValueType::boolean: {
      const uint8_t b = c.get<uint8_t>(what);
      if (b > 1) fail_key(key, "bool value is " + std::to_string(b) + ", expected 0 or 1");
      v.i = b;
      break;
    }
    case GgufValueType::string: v.s = c.str(what); break;
    case GgufValueType::array: {
      if (depth >= kMaxArrayDepth) fail_key(key, "arrays nested deeper than " + std::to_string(kMaxArrayDepth));
      const uint32_t et = c.get<uint32_t>("array element type of metadata key " + in_quotes(key));
      if (!valid_value_type(et)) fail_key(key, "array element type " + std::to_string(et) + " is unknown");
      v.element_type = static_cast<GgufValueType>(et);
      const uint64_t n = c.get<uint64_t>("array length of metadata key " + in_quotes(key));
      if (n > c.left() / min_value_bytes(v.element_type))
        fail_key(key, "array of " + std::to_string(n) + " " + gguf_value_type_name(v.element_type) +
                          " elements runs past the end of the file");
      array_elements += n;
      if (array_elements > kMaxArrayElements)
        fail_key(key, "arrays hold more than " + std::to_string(kMaxArrayElements) + " elements in all");
      v.array.reserve(static_cast<size_t>(n));
      for (uint64_t i = 0; i < n; ++i) v.array.push_back(read_value(c, v.element_type, key, depth + 1));
      break;
    }
  }
  return v;
}

void GgufFile::Impl::parse() {
  Cursor c(path, map.data, map.size);
  const uint32_t magic = c.get<uint32_t>("magic");
  LCA_CHECK(magic == kMagic, "gguf file ", in_quotes(path), ": bad magic (the file does not start with \"GGUF\")");
  version = c.get<uint32_t>("version");
  LCA_CHECK(version == 2 || version == 3, "gguf file ", in_quotes(path), ": unsupported GGUF version ", version,
            " (supported: 2 and 3, little-endian)");
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  // Each metadata entry takes >= 8 + 4 bytes, each tensor info >= 8 + 4 + 4 + 8.
  LCA_CHECK(n_kv <= c.left() / 12, "gguf file ", in_quotes(path), ": metadata count ", n_kv,
            " cannot fit in the file");
  LCA_CHECK(n_tensors <= c.left() / 24, "gguf file ", in_quotes(path), ": tensor count ", n_tensors,
            " cannot fit in the file");

  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string key = c.str("metadata key " + std::to_string(k));
    const uint32_t t = c.get<uint32_t>("value type of metadata key " + in_quotes(key));
    if (!valid_value_type(t)) fail_key(key, "value type " + std::to_string(t) + " is unknown");
    if (metadata.count(key)) fail_key(key, "appears twice");
    metadata.emplace(key, read_value(c, static_cast<GgufValueType>(t), key, 0));
  }

  auto it = metadata.find("general.alignment");
  if (it != metadata.end()) {
    const GgufValue& a = it->second;
    if (!a.is_integer()) fail_key("general.alignment", std::string("is ") + gguf_value_type_name(a.type) + ", expected an integer");
    const int64_t al = a.type == GgufValueType::uint64 || a.type == GgufValueType::uint32 ||
                               a.type == GgufValueType::uint16 || a.type == GgufValueType::uint8
                           ? static_cast<int64_t>(std::min<uint64_t>(a.u, 1u << 30))
                           : a.i;
    if (al <= 0 || (al & (al - 1)) != 0 || al > (1 << 20))
      fail_key("general.alignment", "is " + std::to_string(al) + ", expected a power of two");
    alignment = al;
  }

  tensors.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo info;
    info.name = c.str("name of tensor " + std::to_string(k));
    if (tensor_index.count(info.name)) fail_tensor(info.name, "appears twice");
    const uint32_t nd = c.get<uint32_t>("dimension count of tensor " + in_quotes(info.name));
    if (nd > kMaxDims) fail_tensor(info.name, "has " + std::to_string(nd) + " dimensions, more than 4");
    int64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t dim = c.get<uint64_t>("dimensions of tensor " + in_quotes(info.name));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          !mul_ok(numel, static_cast<int64_t>(dim), numel))
        fail_tensor(info.name, "dimensions overflow int64");
      info.ne.push_back(static_cast<int64_t>(dim));
    }
    info.shape.assign(info.ne.rbegin(), info.ne.rend());
    const uint32_t type = c.get<uint32_t>("type of tensor " + in_quotes(info.name));
    const TypeEntry* te = find_type(type);
    if (!te) fail_tensor(info.name, "unknown ggml type " + std::to_string(type));
    info.type = te->type;
    if (!info.ne.empty() && info.ne[0] % te->block != 0)
      fail_tensor(info.name, std::string("first dimension ") + std::to_string(info.ne[0]) + " is not a multiple of the " +
                                 te->name + " block size " + std::to_string(te->block));
    if (info.ne.empty() && te->block != 1)
      fail_tensor(info.name, std::string("a scalar cannot be of block type ") + te->name);
    if (!mul_ok(numel / te->block, te->block_bytes, info.bytes)) fail_tensor(info.name, "byte size overflows int64");
    const uint64_t off = c.get<uint64_t>("offset of tensor " + in_quotes(info.name));
    if (off > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 2))
      fail_tensor(info.name, "offset " + std::to_string(off) + " is out of range");
    info.offset = static_cast<int64_t>(off);
    if (info.offset % alignment != 0)
      fail_tensor(info.name, "offset " + std::to_string(off) + " is not a multiple of the alignment " +
                                 std::to_string(alignment));
    tensor_index.emplace(info.name, tensors.size());
    tensors.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment.
  const int64_t header_end = static_cast<int64_t>(c.pos());
  data_begin = (header_end + alignment - 1) / alignment * alignment;
  const int64_t file_size = static_cast<int64_t>(map.size);
  data_size = data_begin <= file_size ? file_size - data_begin : 0;
  for (const GgufTensorInfo& t : tensors) {
    if (t.bytes > 0 && data_begin > file_size)
      fail_tensor(t.name, "data section would start at byte " + std::to_string(data_begin) +
                              ", past the end of the file (" + std::to_string(file_size) + " bytes)");
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      fail_tensor(t.name, "data (bytes " + std::to_string(t.offset) + ".." + std::to_string(t.offset + t.bytes) +
                              " of the data section) runs past the end of the file (data section of " +
                              std::to_string(data_size) + " bytes): truncated");
  }
  // No two tensors may share a byte.
  std::vector<model::ByteRange> ranges;
  for (const auto& t : tensors) ranges.push_back({&t.name, t.offset, t.bytes});
  model::check_disjoint("gguf file", path, std::move(ranges));
}

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  MappedFile::map(path, "gguf file", 24, "the 24-byte GGUF header", impl->map);
  impl->parse();
  return GgufFile(std::move(impl));
}

const std::string& GgufFile::path() const { return impl_->path; }
uint32_t GgufFile::version() const { return impl_->version; }
int64_t GgufFile::alignment() const { return impl_->alignment; }
const std::map<std::string, GgufValue>& GgufFile::metadata() const { return impl_->metadata; }
bool GgufFile::has(const std::string& key) const { return impl_->metadata.count(key) != 0; }

const GgufValue& GgufFile::value(const std::string& key) const {
  auto it = impl_->metadata.find(key);
  if (it == impl_->metadata.end()) detail::fail("gguf file ", in_quotes(impl_->path), ": no metadata key ", in_quotes(key));
  return it->second;
}

namespace {

bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::uint8 || t == GgufValueType::uint16 || t == GgufValueType::uint32 ||
         t == GgufValueType::uint64;
}

// An integer value as int64; false when it does not fit.
bool as_int64(const GgufValue& v, int64_t& out) {
  if (is_unsigned(v.type)) {
    if (v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    out = static_cast<int64_t>(v.u);
    return true;
  }
  out = v.i;
  return true;
}

}  // namespace

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = value(key);
  if (!v.is_integer()) impl_->fail_key(key, std::string("is ") + gguf_value_type_name(v.type) + ", expected an integer");
  int64_t out = 0;
  if (!as_int64(v, out)) impl_->fail_key(key, "value " + std::to_string(v.u) + " does not fit int64");
  return out;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type == GgufValueType::float32 || v.type == GgufValueType::float64) return v.f;
  if (v.is_integer()) return is_unsigned(v.type) ? static_cast<double>(v.u) : static_cast<double>(v.i);
  impl_->fail_key(key, std::string("is ") + gguf_value_type_name(v.type) + ", expected a number");
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type != GgufValueType::boolean)
    impl_->fail_key(key, std::string("is ") + gguf_value_type_name(v.type) + ", expected a bool");
  return v.i != 0;
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type != GgufValueType::string)
    impl_->fail_key(key, std::string("is ") + gguf_value_type_name(v.type) + ", expected a string");
  return v.s;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = value(key);
  if (v.type != GgufValueType::array || v.element_type != GgufValueType::string)
    impl_->fail_key(key, std::string("is ") + gguf_value_type_name(v.type) +
                             (v.type == GgufValueType::array ? std::string(" of ") + gguf_value_type_name(v.element_type)
                                                             : std::string()) +
                             ", expected an array of strings");
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (const GgufValue& e : v.array) out.push_back(e.s);
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = value(key);
  GgufValue probe;
  probe.type = v.element_type;
  if (v.type != GgufValueType::array || !probe.is_integer())
    impl_->fail_key(key, std::string("is ") + gguf_value_type_name(v.type) +
                             (v.type == GgufValueType::array ? std::string(" of ") + gguf_value_type_name(v.element_type)
                                                             : std::string()) +
                             ", expected an array of integers");
  std::vector<int64_t> out;
  out.reserve(v.array.size());
  for (const GgufValue& e : v.array) {
    int64_t x = 0;
    if (!as_int64(e, x)) impl_->fail_key(key, "element " + std::to_string(e.u) + " does not fit int64");
    out.push_back(x);
  }
  return out;
}

std::vector<std::string> GgufFile::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensors.size());
  for (const auto& t : impl_->tensors) out.push_back(t.name);
  return out;
}

bool GgufFile::contains(const std::string& name) const { return impl_->tensor_index.count(name) != 0; }

const GgufTensorInfo& GgufFile::info(const std::string& name) const {
  auto it = impl_->tensor_index.find(name);
  if (it == impl_->tensor_index.end())
    detail::fail("gguf file ", in_quotes(impl_->path), ": no tensor named ", in_quotes(name));
  return impl_->tensors[it->second];
}

std::span<const std::byte> GgufFile::raw(const std::string& name) const {
  const GgufTensorInfo& t = info(name);
  return {impl_->map.data + impl_->data_begin + t.offset, static_cast<size_t>(t.bytes)};
}

namespace {

float f16_at(const unsigned char* p) { return f16_to_float(static_cast<uint16_t>(p[0] | p[1] << 8)); }

// Block formats (ggml-common.h): Q8_0 = {f16 d; int8 q[32]}, x = d q;
// Q4_0 = {f16 d; uint8 q[16]}, x[j] = d ((q[j] & 15) - 8), x[j + 16] = d ((q[j] >> 4) - 8);
// Q4_1 = {f16 d; f16 m; uint8 q[16]}, x[j] = d (q[j] & 15) + m, x[j + 16] = d (q[j] >> 4) + m.
void dequant_block(GgmlType type, const unsigned char* b, float* out) {
  switch (type) {
    case GgmlType::q8_0: {
      const float d = f16_at(b);
      for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
      break;
    }
    case GgmlType::q4_0: {
      const float d = f16_at(b);
      for (int j = 0; j < 16; ++j) {
        out[j] = d * static_cast<float>((b[2 + j] & 15) - 8);
        out[j + 16] = d * static_cast<float>((b[2 + j] >> 4) - 8);
      }
      break;
    }
    case GgmlType::q4_1: {
      const float d = f16_at(b), m = f16_at(b + 2);
      for (int j = 0; j < 16; ++j) {
        out[j] = d * static_cast<float>(b[4 + j] & 15) + m;
        out[j + 16] = d * static_cast<float>(b[4 + j] >> 4) + m;
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace

Tensor<float> GgufFile::read(const std::string& name, const Shape& expected) const {
  const GgufTensorInfo& t = info(name);
  if (!ggml_type_readable(t.type))
    impl_->fail_tensor(name, std::string("type ") + ggml_type_name(t.type) +
                                 " cannot be read as float (read converts F32, F16, BF16, Q8_0, Q4_0 and Q4_1)");
  if (t.shape != expected)
    impl_->fail_tensor(name, "has shape " + shape_str(t.shape) + ", expected " + shape_str(expected));

  Tensor<float> out(t.shape);
  const int64_t n = out.numel();
  const unsigned char* src = reinterpret_cast<const unsigned char*>(impl_->map.data + impl_->data_begin + t.offset);
  float* dst = out.data();
  switch (t.type) {
    case GgmlType::f32:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) dst[i] = load_le<float>(reinterpret_cast<const std::byte*>(src + 4 * i));
      break;
    case GgmlType::f16:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_at(src + 2 * i);
      break;
    case GgmlType::bf16:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(static_cast<uint16_t>(src[2 * i] | src[2 * i + 1] << 8));
      break;
    default: {
      const TypeEntry* te = find_type(static_cast<uint32_t>(t.type));
      const int64_t blocks = n / te->block;
#pragma omp parallel for schedule(static) if (blocks > (1 << 12))
      for (int64_t b = 0; b < blocks; ++b) dequant_block(t.type, src + b * te->block_bytes, dst + b * te->block);
      break;
    }
  }
  return out;
}

}  // namespace lca
