// The safetensors reader (lca/safetensors.hpp) against files written here by a
// small writer that follows the format description, independently of the
// library: 8 bytes little-endian header length N, N bytes of JSON, data.
// Every test works in its own temporary folder, removed afterwards.
#include <gtest/gtest.h>

#include <unistd.h>

#include <bit>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <ostream>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "lca/dtype.hpp"
#include "lca/error.hpp"
#include "lca/safetensors.hpp"
#include "lca/tensor.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using lca::Checkpoint;
using lca::DType;
using lca::SafetensorsFile;
using lca::Shape;
using lca::Tensor;
using lca_test::Rng;

// ---- A writer from the format description ---------------------------------------------

using Bytes = std::string;  // raw bytes

Bytes le64(uint64_t v) {
  Bytes b(8, '\0');
  for (int i = 0; i < 8; ++i) b[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return b;
}

void write_file(const fs::path& p, const Bytes& content) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr) << p;
  if (!content.empty()) ASSERT_EQ(std::fwrite(content.data(), 1, content.size(), f), content.size());
  ASSERT_EQ(std::fclose(f), 0);
}

// A file whose length field says `length` (default: the header's size).
void write_raw(const fs::path& p, const std::string& header, const Bytes& data,
               std::optional<uint64_t> length = std::nullopt) {
  write_file(p, le64(length.value_or(header.size())) + header + data);
}

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string json_shape(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

struct Entry {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "I8", ...
  Shape shape;
  Bytes bytes;
};

// Entries packed in the given order; the header is padded with spaces to a
// multiple of 8 unless `pad` is false.
void write_safetensors(const fs::path& p, const std::vector<Entry>& entries,
                       const std::map<std::string, std::string>& metadata = {}, bool pad = true) {
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata) {
      h += (f2 ? "" : ",") + json_str(k) + ":" + json_str(v);
      f2 = false;
    }
    h += "}";
    first = false;
  }
  Bytes data;
  for (const auto& e : entries) {
    const size_t begin = data.size();
    data += e.bytes;
    h += (first ? "" : ",") + json_str(e.name) + ":{\"dtype\":" + json_str(e.dtype) +
         ",\"shape\":" + json_shape(e.shape) + ",\"data_offsets\":[" + std::to_string(begin) + "," +
         std::to_string(data.size()) + "]}";
    first = false;
  }
  h += "}";
  if (pad)
    while (h.size() % 8) h += ' ';
  write_raw(p, h, data);
}

// Little-endian encodings of float values in each dtype.
Bytes encode(const std::string& dtype, const std::vector<float>& v) {
  Bytes b;
  for (float x : v) {
    uint32_t u;
    int n;
    if (dtype == "F32") {
      u = std::bit_cast<uint32_t>(x);
      n = 4;
    } else if (dtype == "F16") {
      u = lca::float_to_f16(x);
      n = 2;
    } else {
      u = lca::float_to_bf16(x);
      n = 2;
    }
    for (int i = 0; i < n; ++i) b += static_cast<char>((u >> (8 * i)) & 0xff);
  }
  return b;
}

DType dtype_of(const std::string& s) { return s == "F32" ? DType::f32 : s == "F16" ? DType::f16 : DType::bf16; }

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::vector<float> random_values(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal() * 3.0);
  return v;
}

// The message of the lca::Error that f throws; a test failure (and "") when none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lca::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no lca::Error thrown";
  return "";
}

#define EXPECT_HAS(msg, needle) \
  EXPECT_NE((msg).find(needle), std::string::npos) << "message \"" << (msg) << "\" lacks \"" << (needle) << "\""

// ---- Fixture: a fresh temporary folder per test ------------------------------------------

std::string sanitized(std::string s) {
  for (auto& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("lca_safetensors_" + sanitized(std::string(t->test_suite_name()) + "_" + t->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    ASSERT_TRUE(fs::create_directories(dir_)) << dir_;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path file(const std::string& name) const { return dir_ / name; }
  fs::path dir_;
};

// ---- Round trips --------------------------------------------------------------------------

static_assert(!std::is_copy_constructible_v<SafetensorsFile> && std::is_nothrow_move_constructible_v<SafetensorsFile>);
static_assert(!std::is_copy_constructible_v<Checkpoint> && std::is_nothrow_move_constructible_v<Checkpoint>);

TEST_F(SafetensorsTest, RoundTripF32F16Bf16) {
  Rng rng(101);
  struct Want {
    std::string dtype;
    Shape shape;
    std::vector<float> values;
  };
  std::map<std::string, Want> want;
  std::vector<Entry> entries;
  const std::vector<std::string> dtypes = {"F32", "F16", "BF16"};
  for (int i = 0; i < 9; ++i) {
    const std::string dt = dtypes[static_cast<size_t>(i % 3)];
    Shape shape;
    const int64_t rank = rng.uniform_int(1, 3);
    for (int64_t r = 0; r < rank; ++r) shape.push_back(rng.uniform_int(1, 7));
    const auto values = random_values(numel(shape), rng);
    const std::string name = "model.layers." + std::to_string(i) + ".w_" + dt;
    entries.push_back({name, dt, shape, encode(dt, values)});
    want[name] = {dt, shape, values};
  }
  const fs::path p = file("model.safetensors");
  write_safetensors(p, entries, {}, /*pad=*/false);  // odd header length: unaligned data

  SafetensorsFile f = SafetensorsFile::open(p.string());
  EXPECT_EQ(f.path(), p.string());
  ASSERT_EQ(f.names().size(), want.size());
  int64_t offset = 0;
  for (const auto& e : entries) {
    SCOPED_TRACE(e.name);
    const Want& w = want[e.name];
    const DType dt = dtype_of(w.dtype);
    ASSERT_TRUE(f.contains(e.name));
    const lca::TensorInfo& info = f.info(e.name);
    EXPECT_EQ(info.name, e.name);
    EXPECT_EQ(info.dtype_name, w.dtype);
    EXPECT_EQ(info.dtype, std::optional<DType>(dt));
    EXPECT_EQ(info.shape, w.shape);
    EXPECT_EQ(info.offset, offset);
    EXPECT_EQ(info.bytes, numel(w.shape) * lca::dtype_size(dt));
    offset += info.bytes;
    const auto raw = f.raw(e.name);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(raw.data()), raw.size()), e.bytes);

    const Tensor<float> t = f.read(e.name, w.shape);
    Tensor<float> expect(w.shape);
    for (int64_t k = 0; k < expect.numel(); ++k) expect.data()[k] = lca::round_to(dt, w.values[static_cast<size_t>(k)]);
    EXPECT_TRUE(lca_test::bitwise_equal(t, expect));
    if (dt != DType::f32) {  // the 16-bit values really are rounded, not the originals
      bool any_rounded = false;
      for (int64_t k = 0; k < t.numel(); ++k) any_rounded = any_rounded || t.data()[k] != w.values[static_cast<size_t>(k)];
      EXPECT_TRUE(any_rounded);
    }
  }
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(SafetensorsTest, KnownBitPatterns) {
  // Bytes written out by hand, little-endian: F32 0.5 = 0x3F000000, -3 = 0xC0400000;
  // F16 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, 2^-24 = 0x0001;
  // BF16 1.0 = 0x3F80, -0.15625 = 0xBE20, 3 * 2^100 = 0x7240 (f32 0x72400000).
  const Bytes f32 = Bytes("\x00\x00\x00\x3f\x00\x00\x40\xc0", 8);
  const Bytes f16 = Bytes("\x00\x3c\x00\xc0\xff\x7b\x01\x00", 8);
  const Bytes bf16 = Bytes("\x80\x3f\x20\xbe\x40\x72", 6);
  const fs::path p = file("bits.safetensors");
  write_safetensors(p, {{"a", "F32", {2}, f32}, {"b", "F16", {2, 2}, f16}, {"c", "BF16", {3}, bf16}}, {}, false);
  SafetensorsFile f = SafetensorsFile::open(p.string());
  const auto a = f.read("a", {2});
  EXPECT_EQ(a.vec(), (std::vector<float>{0.5f, -3.0f}));
  const auto b = f.read("b", {2, 2});
  EXPECT_EQ(b.vec(), (std::vector<float>{1.0f, -2.0f, 65504.0f, 0x1p-24f}));
  const auto c = f.read("c", {3});
  EXPECT_EQ(c.vec(), (std::vector<float>{1.0f, -0.15625f, std::bit_cast<float>(0x72400000u)}));
}

TEST_F(SafetensorsTest, ScalarAndZeroSizeTensors) {
  const fs::path p = file("s.safetensors");
  // A zero-size tensor may sit at the same offset as a non-empty one.
  const std::string h =
      "{\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
      "\"empty\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[4,4]},"
      "\"empty3\":{\"dtype\":\"F16\",\"shape\":[3,0,2],\"data_offsets\":[4,4]},"
      "\"after\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}";
  write_raw(p, h, encode("F32", {-7.25f}) + encode("F16", {0.5f}));
  SafetensorsFile f = SafetensorsFile::open(p.string());
  const auto s = f.read("scalar", {});
  EXPECT_EQ(s.shape(), Shape{});
  ASSERT_EQ(s.numel(), 1);
  EXPECT_EQ(s.data()[0], -7.25f);
  EXPECT_EQ(f.info("scalar").bytes, 4);

  const auto e = f.read("empty", {0});
  EXPECT_EQ(e.shape(), Shape{0});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(f.info("empty").bytes, 0);
  EXPECT_EQ(f.raw("empty").size(), 0u);
  const auto e3 = f.read("empty3", {3, 0, 2});
  EXPECT_EQ(e3.shape(), (Shape{3, 0, 2}));
  EXPECT_EQ(e3.numel(), 0);
  EXPECT_EQ(f.read("after", {1}).data()[0], 0.5f);

  // [] is a scalar, not a wildcard; [1] is not [].
  const std::string m1 = error_of([&] { f.read("scalar", {1}); });
  EXPECT_HAS(m1, p.string());
  EXPECT_HAS(m1, "'scalar'");
  EXPECT_HAS(m1, "[]");
  EXPECT_HAS(m1, "[1]");
  const std::string m2 = error_of([&] { f.read("after", {}); });
  EXPECT_HAS(m2, "'after'");
  EXPECT_HAS(m2, "has shape [1], expected []");
}

TEST_F(SafetensorsTest, MetadataAndSortedNames) {
  const fs::path p = file("m.safetensors");
  // Written in unsorted order, data in that order too.
  write_safetensors(p,
                    {{"zeta", "F32", {1}, encode("F32", {1})},
                     {"alpha", "BF16", {2}, encode("BF16", {2, 3})},
                     {"Mid", "F16", {1}, encode("F16", {4})},
                     {"caf\xc3\xa9", "F32", {1}, encode("F32", {5})}},
                    {{"format", "pt"}, {"note", "a \"quoted\" word"}});
  SafetensorsFile f = SafetensorsFile::open(p.string());
  EXPECT_EQ(f.names(), (std::vector<std::string>{"Mid", "alpha", "caf\xc3\xa9", "zeta"}));
  const std::map<std::string, std::string> md = {{"format", "pt"}, {"note", "a \"quoted\" word"}};
  EXPECT_EQ(f.metadata(), md);
  EXPECT_FALSE(f.contains("__metadata__"));
  EXPECT_FALSE(f.contains("beta"));
  EXPECT_EQ(f.read("caf\xc3\xa9", {1}).data()[0], 5.0f);
  EXPECT_EQ(f.read("alpha", {2}).vec(), (std::vector<float>{2, 3}));
}

TEST_F(SafetensorsTest, MovedFileStillReads) {
  const fs::path p = file("mv.safetensors");
  write_safetensors(p, {{"w", "F32", {3}, encode("F32", {1, 2, 3})}});
  SafetensorsFile a = SafetensorsFile::open(p.string());
  const lca::TensorInfo* info = &a.info("w");
  SafetensorsFile b = std::move(a);
  EXPECT_EQ(&b.info("w"), info);  // infos live as long as the mapping, not the handle
  SafetensorsFile c = SafetensorsFile::open(p.string());
  c = std::move(b);
  EXPECT_EQ(c.read("w", {3}).vec(), (std::vector<float>{1, 2, 3}));
}

TEST_F(SafetensorsTest, OtherKnownDtypesOpenButDoNotRead) {
  const fs::path p = file("q.safetensors");
  write_safetensors(p, {{"q", "I8", {4}, Bytes("\x01\x02\x03\x04", 4)},
                        {"d", "F64", {1}, Bytes(8, '\0')},
                        {"e", "F8_E4M3", {2}, Bytes(2, '\0')},
                        {"b", "BOOL", {1}, Bytes(1, '\1')},
                        {"u", "U8", {2}, Bytes(2, '\0')},
                        {"w", "F32", {1}, encode("F32", {9})}});
  SafetensorsFile f = SafetensorsFile::open(p.string());
  EXPECT_EQ(f.info("q").dtype_name, "I8");
  EXPECT_FALSE(f.info("q").dtype.has_value());
  EXPECT_EQ(f.info("d").bytes, 8);
  EXPECT_EQ(f.raw("q")[2], std::byte{3});
  for (const std::string& name : {"q", "d", "e", "b", "u"}) {
    const std::string m = error_of([&] { f.read(name, f.info(name).shape); });
    EXPECT_HAS(m, p.string());
    EXPECT_HAS(m, "'" + name + "'");
    EXPECT_HAS(m, f.info(name).dtype_name);
  }
  EXPECT_EQ(f.read("w", {1}).data()[0], 9.0f);
}

// ---- Errors about the file as a whole -------------------------------------------------------

TEST_F(SafetensorsTest, MissingFile) {
  const std::string p = file("absent.safetensors").string();
  const std::string m = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "No such file");
  const std::string d = error_of([&] { SafetensorsFile::open(dir_.string()); });  // a folder
  EXPECT_HAS(d, dir_.string());
  EXPECT_HAS(d, "not a regular file");
}

TEST_F(SafetensorsTest, FileShorterThanEightBytes) {
  for (size_t n : {0, 1, 7}) {
    const fs::path p = file("short" + std::to_string(n) + ".safetensors");
    write_file(p, Bytes(n, '\x02'));
    const std::string m = error_of([&] { SafetensorsFile::open(p.string()); });
    EXPECT_HAS(m, p.string());
    EXPECT_HAS(m, "shorter than");
  }
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOrAbsurd) {
  const std::string h = "{}";
  const fs::path past = file("past.safetensors");
  write_raw(past, h, "", h.size() + 1);
  const std::string m1 = error_of([&] { SafetensorsFile::open(past.string()); });
  EXPECT_HAS(m1, past.string());
  EXPECT_HAS(m1, "past the end of the file");

  for (uint64_t n : {uint64_t{100'000'001}, uint64_t{1} << 40, ~uint64_t{0}}) {
    const fs::path p = file("absurd" + std::to_string(n) + ".safetensors");
    write_raw(p, h, "", n);
    const std::string m = error_of([&] { SafetensorsFile::open(p.string()); });
    EXPECT_HAS(m, p.string());
    EXPECT_HAS(m, "absurd");
  }

  // The header may end exactly at the end of the file (no data), and {} is valid.
  const fs::path ok = file("empty.safetensors");
  write_raw(ok, h, "");
  EXPECT_TRUE(SafetensorsFile::open(ok.string()).names().empty());
}

// ---- Errors in the header, one case each ----------------------------------------------------

struct BadHeader {
  const char* label;
  std::string header;
  size_t data_bytes;
  std::string tensor;  // the tensor the message must name ("" when none)
  std::string says;    // and a phrase it must contain
};

// gtest names a failing case by its label rather than dumping its bytes.
void PrintTo(const BadHeader& c, std::ostream* os) { *os << c.label; }

std::string entry(const std::string& name, const std::string& body) { return json_str(name) + ":{" + body + "}"; }

const std::vector<BadHeader>& bad_headers() {
  static const std::vector<BadHeader> cases = {
      {"NotJson", "{\"w\": {\"dtype\": \"F32\",", 0, "", "not valid JSON"},
      {"TrailingGarbage", "{} x", 0, "", "not valid JSON"},
      {"NotUtf8", "{\"w\xff\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "", "not valid JSON"},
      {"NotAnObject", "[1, 2, 3]", 0, "", "expected a JSON object"},
      {"StringRoot", "\"w\"", 0, "", "expected a JSON object"},
      {"EntryNotObject", "{\"w\": [1]}", 0, "w", "expected an object"},
      {"MissingDtype", "{" + entry("w1", "\"shape\":[1],\"data_offsets\":[0,4]") + "}", 4, "w1", "\"dtype\""},
      {"MissingShape", "{" + entry("w2", "\"dtype\":\"F32\",\"data_offsets\":[0,4]") + "}", 4, "w2", "\"shape\""},
      {"MissingOffsets", "{" + entry("w3", "\"dtype\":\"F32\",\"shape\":[1]") + "}", 4, "w3", "\"data_offsets\""},
      {"DtypeNotString", "{" + entry("w", "\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]") + "}", 4, "w",
       "\"dtype\" is a number"},
      {"UnknownDtype", "{" + entry("w", "\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]") + "}", 4, "w",
       "unknown dtype 'F17'"},
      {"LowercaseDtype", "{" + entry("w", "\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]") + "}", 4, "w",
       "unknown dtype 'f32'"},
      {"ShapeNotArray", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]") + "}", 4, "w",
       "\"shape\" is a string"},
      {"ShapeElementString", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]") + "}", 4,
       "w", "\"shape\" element 0"},
      {"ShapeElementFloat", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]") + "}", 12,
       "w", "\"shape\" element 1"},
      {"ShapeElementHuge",
       "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,4]") + "}", 4, "w",
       "\"shape\" element 0"},
      {"NegativeDim", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]") + "}", 4, "w",
       "negative dimension -1"},
      {"ShapeOverflow",
       "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,4]") + "}", 4, "w",
       "overflows"},
      {"OffsetsNotArray", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}") + "}", 4, "w",
       "\"data_offsets\" is an object"},
      {"OffsetsThree", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]") + "}", 8, "w",
       "array of 3 elements"},
      {"OffsetsStrings", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]") + "}", 4,
       "w", "two integers"},
      {"OffsetsNegative", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]") + "}", 4, "w",
       "negative"},
      {"OffsetsReversed", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]") + "}", 4, "w",
       "begin > end"},
      {"OffsetsPastBuffer", "{" + entry("w", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]") + "}", 8, "w",
       "past the data buffer (8 bytes)"},
      {"OffsetsFarPastBuffer",
       "{" + entry("w", "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[9223372036854775803,9223372036854775807]") +
           "}",
       8, "w", "past the data buffer"},
      {"SizeMismatch", "{" + entry("w", "\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,8]") + "}", 16, "w",
       "needs 12"},
      {"SizeMismatchScalar", "{" + entry("w", "\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,0]") + "}", 4, "w",
       "needs 2"},
      {"Overlap",
       "{" + entry("first", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") + "," +
           entry("second", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]") + "}",
       12, "second", "overlap"},
      {"SameRange",
       "{" + entry("x", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]") + "," +
           entry("y", "\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]") + "}",
       4, "x", "overlap"},
      {"DuplicateName",
       "{" + entry("twin", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]") + "," +
           entry("twin", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]") + "}",
       8, "twin", "twice"},
      {"MetadataNotObject", "{\"__metadata__\": [\"a\"]}", 0, "", "\"__metadata__\" is an array"},
      {"MetadataValueNotString", "{\"__metadata__\": {\"step\": 3}}", 0, "step", "expected a string"},
  };
  return cases;
}

class SafetensorsBadHeader : public SafetensorsTest, public ::testing::WithParamInterface<BadHeader> {};

TEST_P(SafetensorsBadHeader, OpenFailsNamingFileAndTensor) {
  const BadHeader& c = GetParam();
  const fs::path p = file(std::string("bad_") + c.label + ".safetensors");
  write_raw(p, c.header, Bytes(c.data_bytes, '\0'));
  const std::string m = error_of([&] { SafetensorsFile::open(p.string()); });
  EXPECT_HAS(m, p.string());
  if (!c.tensor.empty()) EXPECT_HAS(m, "'" + c.tensor + "'");
  EXPECT_HAS(m, c.says);
}

INSTANTIATE_TEST_SUITE_P(Cases, SafetensorsBadHeader, ::testing::ValuesIn(bad_headers()),
                         [](const ::testing::TestParamInfo<BadHeader>& i) { return std::string(i.param.label); });

TEST_F(SafetensorsTest, OverlapNamesBothTensors) {
  const fs::path p = file("ov.safetensors");
  write_raw(p,
            "{" + entry("late", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]") + "," +
                entry("early", "\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]") + "}",
            Bytes(16, '\0'));
  const std::string m = error_of([&] { SafetensorsFile::open(p.string()); });
  EXPECT_HAS(m, "'early'");
  EXPECT_HAS(m, "'late'");
  EXPECT_HAS(m, "overlap");
}

TEST_F(SafetensorsTest, HolesAndTrailingBytesAreAccepted) {
  // Gaps between tensors and bytes after the last one are not errors.
  const fs::path p = file("gaps.safetensors");
  write_raw(p,
            "{" + entry("a", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]") + "," +
                entry("b", "\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[10,12]") + "}",
            Bytes(4, '\x55') + encode("F32", {2.5f}) + Bytes(2, '\x55') + encode("BF16", {-1.0f}) + Bytes(5, '\x55'));
  SafetensorsFile f = SafetensorsFile::open(p.string());
  EXPECT_EQ(f.read("a", {1}).data()[0], 2.5f);
  EXPECT_EQ(f.read("b", {1}).data()[0], -1.0f);
}

// ---- Errors when looking tensors up ----------------------------------------------------------

TEST_F(SafetensorsTest, AbsentTensorAndShapeMismatch) {
  const fs::path p = file("w.safetensors");
  write_safetensors(p, {{"proj.weight", "BF16", {4, 6}, encode("BF16", std::vector<float>(24, 1.0f))}});
  SafetensorsFile f = SafetensorsFile::open(p.string());
  for (const auto& call : std::vector<std::function<void()>>{[&] { f.info("proj.bias"); },
                                                             [&] { f.read("proj.bias", {6}); },
                                                             [&] { f.raw("proj.bias"); }}) {
    const std::string m = error_of(call);
    EXPECT_HAS(m, p.string());
    EXPECT_HAS(m, "'proj.bias'");
  }
  for (const Shape& wrong : {Shape{6, 4}, Shape{24}, Shape{4, 6, 1}, Shape{}, Shape{4, -1}}) {
    const std::string m = error_of([&] { f.read("proj.weight", wrong); });
    EXPECT_HAS(m, p.string());
    EXPECT_HAS(m, "'proj.weight'");
    EXPECT_HAS(m, "has shape [4, 6], expected " + lca::shape_str(wrong));
  }
  EXPECT_EQ(f.read("proj.weight", {4, 6}).numel(), 24);
}

// ---- Checkpoint folders ------------------------------------------------------------------------

std::string index_json(const std::map<std::string, std::string>& weight_map) {
  std::string s = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
  bool first = true;
  for (const auto& [t, shard] : weight_map) {
    s += (first ? "" : ", ") + json_str(t) + ": " + json_str(shard);
    first = false;
  }
  return s + "}}";
}

TEST_F(SafetensorsTest, CheckpointSingleFile) {
  write_safetensors(file("model.safetensors"), {{"b", "F16", {2}, encode("F16", {1, 2})},
                                                {"a", "F32", {1}, encode("F32", {3})}});
  Checkpoint ck = Checkpoint::open(dir_.string());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(ck.contains("a"));
  EXPECT_FALSE(ck.contains("c"));
  EXPECT_EQ(ck.read("b", {2}).vec(), (std::vector<float>{1, 2}));
  EXPECT_EQ(ck.file_of("a").path(), file("model.safetensors").string());
}

TEST_F(SafetensorsTest, CheckpointSharded) {
  Rng rng(7);
  const auto v1 = random_values(12, rng), v2 = random_values(5, rng), v3 = random_values(8, rng);
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  write_safetensors(file(s1), {{"model.embed_tokens.weight", "BF16", {3, 4}, encode("BF16", v1)},
                               {"model.norm.weight", "F32", {5}, encode("F32", v2)}},
                    {{"format", "pt"}});
  write_safetensors(file(s2), {{"lm_head.weight", "F16", {2, 4}, encode("F16", v3)},
                               {"unlisted", "F32", {1}, encode("F32", {0})}});
  write_file(file("model.safetensors.index.json"),
             index_json({{"model.embed_tokens.weight", s1}, {"model.norm.weight", s1}, {"lm_head.weight", s2}}));

  Checkpoint ck = Checkpoint::open(dir_.string());
  EXPECT_EQ(ck.dir(), dir_.string());
  // The index decides what the checkpoint holds.
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}));
  EXPECT_FALSE(ck.contains("unlisted"));
  EXPECT_EQ(ck.file_of("lm_head.weight").path(), file(s2).string());
  EXPECT_EQ(ck.file_of("model.norm.weight").path(), file(s1).string());
  EXPECT_EQ(ck.info("lm_head.weight").dtype, std::optional<DType>(DType::f16));

  auto check = [&](const std::string& name, const Shape& shape, DType dt, const std::vector<float>& v) {
    SCOPED_TRACE(name);
    const Tensor<float> t = ck.read(name, shape);
    Tensor<float> want(shape);
    for (int64_t k = 0; k < want.numel(); ++k) want.data()[k] = lca::round_to(dt, v[static_cast<size_t>(k)]);
    EXPECT_TRUE(lca_test::bitwise_equal(t, want));
  };
  check("model.embed_tokens.weight", {3, 4}, DType::bf16, v1);
  check("model.norm.weight", {5}, DType::f32, v2);
  check("lm_head.weight", {2, 4}, DType::f16, v3);

  const std::string m = error_of([&] { ck.read("lm_head.weight", {4, 2}); });
  EXPECT_HAS(m, s2);
  EXPECT_HAS(m, "'lm_head.weight'");
  EXPECT_HAS(m, "has shape [2, 4], expected [4, 2]");
  const std::string a = error_of([&] { ck.read("model.layers.0.mlp.weight", {1}); });
  EXPECT_HAS(a, dir_.string());
  EXPECT_HAS(a, "'model.layers.0.mlp.weight'");

  Checkpoint moved = std::move(ck);
  EXPECT_EQ(moved.read("model.norm.weight", {5}).numel(), 5);
}

TEST_F(SafetensorsTest, CheckpointPrefersSingleFileOverIndex) {
  write_safetensors(file("model.safetensors"), {{"w", "F32", {1}, encode("F32", {1})}});
  write_file(file("model.safetensors.index.json"), "this index is never read");
  EXPECT_EQ(Checkpoint::open(dir_.string()).names(), std::vector<std::string>{"w"});
}

TEST_F(SafetensorsTest, CheckpointErrors) {
  const std::string index = file("model.safetensors.index.json").string();
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  auto open_msg = [&] { return error_of([&] { Checkpoint::open(dir_.string()); }); };

  {  // neither file
    const std::string m = open_msg();
    EXPECT_HAS(m, dir_.string());
    EXPECT_HAS(m, "neither model.safetensors nor model.safetensors.index.json");
    const std::string none = (dir_ / "no_such_folder").string();
    const std::string m2 = error_of([&] { Checkpoint::open(none); });
    EXPECT_HAS(m2, none);
    EXPECT_HAS(m2, "not a folder");
  }
  write_safetensors(file(s1), {{"a", "F32", {1}, encode("F32", {1})}});
  {  // a shard named in the index is missing
    write_file(index, index_json({{"a", s1}, {"b", s2}}));
    const std::string m = open_msg();
    EXPECT_HAS(m, index);
    EXPECT_HAS(m, s2);
    EXPECT_HAS(m, "'b'");
    EXPECT_HAS(m, "missing");
  }
  {  // a tensor named in the index is not in its shard
    write_file(index, index_json({{"a", s1}, {"ghost", s1}}));
    const std::string m = open_msg();
    EXPECT_HAS(m, file(s1).string());
    EXPECT_HAS(m, "'ghost'");
    EXPECT_HAS(m, "does not hold it");
  }
  {  // no weight_map
    write_file(index, "{\"metadata\": {\"total_size\": 4}}");
    const std::string m = open_msg();
    EXPECT_HAS(m, index);
    EXPECT_HAS(m, "no \"weight_map\"");
  }
  {  // weight_map of the wrong type, or an entry of the wrong type
    write_file(index, "{\"weight_map\": [\"a\"]}");
    EXPECT_HAS(open_msg(), "\"weight_map\" is an array");
    write_file(index, "{\"weight_map\": {\"a\": 1}}");
    const std::string m = open_msg();
    EXPECT_HAS(m, index);
    EXPECT_HAS(m, "'a'");
  }
  {  // index not JSON, not an object
    write_file(index, "{\"weight_map\": ");
    const std::string m = open_msg();
    EXPECT_HAS(m, index);
    EXPECT_HAS(m, "not valid JSON");
    write_file(index, "[]");
    EXPECT_HAS(open_msg(), "expected a JSON object");
  }
  {  // a shard outside the folder
    write_file(index, index_json({{"a", "../" + s1}}));
    const std::string m = open_msg();
    EXPECT_HAS(m, "'../" + s1 + "'");
    EXPECT_HAS(m, "'a'");
  }
  {  // a broken shard: the shard's own error, naming the shard
    write_file(file(s2), Bytes(3, '\0'));
    write_file(index, index_json({{"a", s1}, {"b", s2}}));
    const std::string m = open_msg();
    EXPECT_HAS(m, file(s2).string());
    EXPECT_HAS(m, "shorter than");
  }
}

}  // namespace
