// The GGUF reader (lca/gguf.hpp) against files written here by the test's own
// writer (gguf_writer.hpp). Dequantised values are computed in the test from
// the block layouts, with an f16 decoder of its own; every error path is hit
// and must name the file (and the tensor or key).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "gguf_writer.hpp"
#include "lca/error.hpp"
#include "lca/gguf.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using lca::GgufFile;
using lca::Shape;
using lca_test::Bytes;
using lca_test::GgufWriter;
using lca_test::le;
using lca_test::Rng;

class GgufTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lca_gguf_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path path(const std::string& name) const { return dir_ / name; }

  // open() must throw lca::Error whose message holds every one of `parts`.
  void expect_open_error(const Bytes& content, const std::vector<std::string>& parts) {
    const fs::path p = path("bad.gguf");
    lca_test::write_bytes(p, content);
    try {
      GgufFile::open(p.string());
      ADD_FAILURE() << "open() did not throw; expected " << ::testing::PrintToString(parts);
    } catch (const lca::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
      for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    }
  }

  fs::path dir_;
};

// IEEE half to double, from the bit layout (1 sign, 5 exponent, 10 mantissa).
double half_to_double(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
  double v;
  if (exp == 0) v = std::ldexp(static_cast<double>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(1.0 + mant / 1024.0, exp - 15);
  return sign ? -v : v;
}

// A random finite half in roughly [-2, 2] (exponent 1..15).
uint16_t random_half(Rng& rng) {
  const uint16_t exp = static_cast<uint16_t>(rng.uniform_int(1, 15));
  return static_cast<uint16_t>((rng.coin() ? 0x8000 : 0) | exp << 10 | rng.uniform_int(0, 1023));
}

uint16_t u16_at(const Bytes& b, size_t i) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[i]) | static_cast<uint8_t>(b[i + 1]) << 8);
}

Bytes random_bytes(Rng& rng, size_t n) {
  Bytes b(n, '\0');
  for (auto& c : b) c = static_cast<char>(rng.uniform_int(0, 255));
  return b;
}

// Blocks of a quantised type with random scales and quants; the expected
// floats are derived here from the documented layout.
struct Quantised {
  Bytes bytes;
  std::vector<double> values;
};

Quantised random_blocks(uint32_t type, int64_t blocks, Rng& rng) {
  Quantised q;
  for (int64_t b = 0; b < blocks; ++b) {
    if (type == lca_test::kTQ8_0) {
      const uint16_t d = random_half(rng);
      const Bytes qs = random_bytes(rng, 32);
      q.bytes += le(d) + qs;
      for (int j = 0; j < 32; ++j) q.values.push_back(half_to_double(d) * static_cast<int8_t>(qs[j]));
    } else if (type == lca_test::kTQ4_0) {
      const uint16_t d = random_half(rng);
      const Bytes qs = random_bytes(rng, 16);
      q.bytes += le(d) + qs;
      std::vector<double> v(32);
      for (int j = 0; j < 16; ++j) {
        const int byte = static_cast<uint8_t>(qs[j]);
        v[j] = half_to_double(d) * ((byte % 16) - 8);
        v[j + 16] = half_to_double(d) * ((byte / 16) - 8);
      }
      q.values.insert(q.values.end(), v.begin(), v.end());
    } else if (type == lca_test::kTQ4_1) {
      const uint16_t d = random_half(rng), m = random_half(rng);
      const Bytes qs = random_bytes(rng, 16);
      q.bytes += le(d) + le(m) + qs;
      std::vector<double> v(32);
      for (int j = 0; j < 16; ++j) {
        const int byte = static_cast<uint8_t>(qs[j]);
        v[j] = half_to_double(d) * (byte % 16) + half_to_double(m);
        v[j + 16] = half_to_double(d) * (byte / 16) + half_to_double(m);
      }
      q.values.insert(q.values.end(), v.begin(), v.end());
    }
  }
  return q;
}

TEST_F(GgufTest, MetadataOfEveryTypeRoundTrips) {
  GgufWriter w;
  w.version = 2;
  w.add("u8", lca_test::kU8, le<uint8_t>(200));
  w.add("i8", lca_test::kI8, le<int8_t>(-100));
  w.add("u16", lca_test::kU16, le<uint16_t>(60000));
  w.add("i16", lca_test::kI16, le<int16_t>(-30000));
  w.add_u32("u32", 4000000000u);
  w.add_i32("i32", -2000000000);
  w.add_u64("u64", 1ull << 62);
  w.add("i64", lca_test::kI64, le<int64_t>(-(1ll << 60)));
  w.add_f32("f32", 1.5f);
  w.add_f64("f64", -0.1);
  w.add_bool("yes", true);
  w.add_bool("no", false);
  w.add_string("name", "Smol \xc3\xa9");
  const std::vector<std::string> tokens = {"<s>", "", "\xc4\xa0the", "a b"};
  w.add_string_array("tokens", tokens);
  w.add_i32_array("types", {1, -2, 3});
  // An array of arrays of uint8.
  w.add("nested", lca_test::kArr,
        le<uint32_t>(lca_test::kArr) + le<uint64_t>(2) + le<uint32_t>(lca_test::kU8) + le<uint64_t>(1) + le<uint8_t>(7) +
            le<uint32_t>(lca_test::kU8) + le<uint64_t>(0));
  w.write(path("m.gguf"));

  const GgufFile f = GgufFile::open(path("m.gguf").string());
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.alignment(), 32);
  EXPECT_EQ(f.get_int("u8"), 200);
  EXPECT_EQ(f.get_int("i8"), -100);
  EXPECT_EQ(f.get_int("u16"), 60000);
  EXPECT_EQ(f.get_int("i16"), -30000);
  EXPECT_EQ(f.get_int("u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("i32"), -2000000000);
  EXPECT_EQ(f.get_int("u64"), 1ll << 62);
  EXPECT_EQ(f.get_int("i64"), -(1ll << 60));
  EXPECT_EQ(f.get_float("f32"), 1.5);
  EXPECT_EQ(f.get_float("f64"), -0.1);
  EXPECT_EQ(f.get_float("u16"), 60000.0);
  EXPECT_TRUE(f.get_bool("yes"));
  EXPECT_FALSE(f.get_bool("no"));
  EXPECT_EQ(f.get_string("name"), "Smol \xc3\xa9");
  EXPECT_EQ(f.get_string_array("tokens"), tokens);
  EXPECT_EQ(f.get_int_array("types"), (std::vector<int64_t>{1, -2, 3}));
  const lca::GgufValue& nested = f.value("nested");
  ASSERT_EQ(nested.array.size(), 2u);
  EXPECT_EQ(nested.array[0].array.at(0).u, 7u);
  EXPECT_TRUE(nested.array[1].array.empty());
  EXPECT_EQ(f.metadata().size(), 16u);
  EXPECT_TRUE(f.names().empty());

  // Asking for the wrong kind, or an absent key, names the key.
  for (auto call : std::vector<std::function<void()>>{
           [&] { f.get_int("name"); }, [&] { f.get_string("u8"); }, [&] { f.get_bool("u8"); },
           [&] { f.get_float("tokens"); }, [&] { f.get_string_array("types"); }, [&] { f.get_int_array("tokens"); }}) {
    EXPECT_THROW(call(), lca::Error);
  }
  try {
    f.get_int("absent.key");
    ADD_FAILURE();
  } catch (const lca::Error& e) {
    EXPECT_NE(std::string(e.what()).find("absent.key"), std::string::npos);
  }
}

TEST_F(GgufTest, DequantisesEveryReadableType) {
  Rng rng(0x66756631);
  GgufWriter w;
  const int64_t rows = 3, cols = 64;  // two blocks per row
  std::vector<std::vector<double>> expected;
  std::vector<std::string> names;

  {  // F32, F16, BF16: random finite values.
    std::vector<double> v32, v16, vbf;
    Bytes b32, b16, bbf;
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float x = static_cast<float>(rng.normal() * 3.0);
      b32 += le(x);
      v32.push_back(x);
      const uint16_t h = random_half(rng);
      b16 += le(h);
      v16.push_back(half_to_double(h));
      const uint16_t bf = static_cast<uint16_t>(std::bit_cast<uint32_t>(x) >> 16);
      bbf += le(bf);
      vbf.push_back(std::bit_cast<float>(static_cast<uint32_t>(bf) << 16));
    }
    w.add_tensor("t.f32", {rows, cols}, lca_test::kTF32, b32);
    w.add_tensor("t.f16", {rows, cols}, lca_test::kTF16, b16);
    w.add_tensor("t.bf16", {rows, cols}, lca_test::kTBF16, bbf);
    names = {"t.f32", "t.f16", "t.bf16"};
    expected = {v32, v16, vbf};
  }
  for (uint32_t type : {lca_test::kTQ8_0, lca_test::kTQ4_0, lca_test::kTQ4_1}) {
    Quantised q = random_blocks(type, rows * cols / 32, rng);
    const std::string name = "t.q" + std::to_string(type);
    w.add_tensor(name, {rows, cols}, type, q.bytes);
    names.push_back(name);
    expected.push_back(q.values);
  }
  w.write(path("q.gguf"));

  const GgufFile f = GgufFile::open(path("q.gguf").string());
  EXPECT_EQ(f.names(), names);
  for (size_t t = 0; t < names.size(); ++t) {
    SCOPED_TRACE(names[t]);
    EXPECT_EQ(f.info(names[t]).ne, (std::vector<int64_t>{cols, rows}));
    const lca::Tensor<float> x = f.read(names[t], {rows, cols});
    ASSERT_EQ(x.shape(), (Shape{rows, cols}));
    for (int64_t i = 0; i < x.numel(); ++i) {
      // Products of a half and a small integer are exact in float, except
      // Q4_1's d q + m, rounded once to float.
      const double e = expected[t][static_cast<size_t>(i)];
      ASSERT_NEAR(x.data()[i], e, std::abs(e) * 1e-7 + 1e-12) << "element " << i;
    }
  }
  EXPECT_EQ(f.info("t.q8").bytes, rows * cols / 32 * 34);
  EXPECT_EQ(f.info("t.q3").bytes, rows * cols / 32 * 20);
}

TEST_F(GgufTest, HonoursTheAlignment) {
  Rng rng(77);
  for (uint32_t alignment : {8u, 64u, 256u}) {
    SCOPED_TRACE(alignment);
    GgufWriter w;
    w.add_alignment(alignment);
    std::vector<std::vector<float>> vals;
    for (int t = 0; t < 3; ++t) {
      std::vector<float> v(static_cast<size_t>(5 + t));
      for (auto& x : v) x = static_cast<float>(rng.normal());
      w.add_tensor("t" + std::to_string(t), {static_cast<int64_t>(v.size())}, lca_test::kTF32, lca_test::f32_bytes(v));
      vals.push_back(v);
    }
    w.write(path("a.gguf"));
    const GgufFile f = GgufFile::open(path("a.gguf").string());
    EXPECT_EQ(f.alignment(), alignment);
    for (int t = 0; t < 3; ++t) {
      EXPECT_EQ(f.info("t" + std::to_string(t)).offset % alignment, 0);
      EXPECT_EQ(f.read("t" + std::to_string(t), {5 + t}).vec(), vals[static_cast<size_t>(t)]);
    }
  }
}

GgufWriter one_tensor_file() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_tensor("blk.0.w", {2, 32}, lca_test::kTF32, lca_test::f32_bytes(std::vector<float>(64, 1.0f)));
  return w;
}

TEST_F(GgufTest, MalformedHeadersAreErrorsNamingTheFile) {
  {
    GgufWriter w = one_tensor_file();
    w.magic = 0x46554746;
    expect_open_error(w.build(), {"bad magic"});
  }
  for (uint32_t v : {1u, 4u, 0x03000000u}) {
    GgufWriter w = one_tensor_file();
    w.version = v;
    expect_open_error(w.build(), {"unsupported GGUF version", std::to_string(v)});
  }
  expect_open_error("GGUF", {"shorter than the 24-byte"});
  {  // Every cut inside the header is an error, never a crash.
    const Bytes full = one_tensor_file().build();
    const size_t header_end = full.size() - 64 * 4;
    for (size_t cut = 24; cut < header_end; ++cut) {
      SCOPED_TRACE(cut);
      const fs::path p = path("cut.gguf");
      lca_test::write_bytes(p, full.substr(0, cut));
      EXPECT_THROW(GgufFile::open(p.string()), lca::Error);
    }
  }
  {
    GgufWriter w;
    w.add("k", 13, le<uint32_t>(0));
    expect_open_error(w.build(), {"'k'", "value type 13 is unknown"});
  }
  {
    GgufWriter w;
    w.add("arr", lca_test::kArr, le<uint32_t>(lca_test::kU32) + le<uint64_t>(1ull << 60));
    expect_open_error(w.build(), {"'arr'", "runs past the end"});
  }
  {
    GgufWriter w;
    w.add("flag", lca_test::kBool, le<uint8_t>(2));
    expect_open_error(w.build(), {"'flag'", "expected 0 or 1"});
  }
  {
    GgufWriter w;
    w.add_u32("k", 1);
    w.add_u32("k", 2);
    expect_open_error(w.build(), {"'k'", "twice"});
  }
  {
    GgufWriter w = one_tensor_file();
    w.add_u32("general.alignment", 24);
    expect_open_error(w.build(), {"general.alignment", "power of two"});
  }
  {
    GgufWriter w;
    w.add_string("general.alignment", "32");
    expect_open_error(w.build(), {"general.alignment", "expected an integer"});
  }
}

TEST_F(GgufTest, MalformedTensorsAreErrorsNamingFileAndTensor) {
  const Bytes f64 = lca_test::f32_bytes(std::vector<float>(64, 0.5f));
  {
    GgufWriter w;
    w.add_tensor("blk.0.odd", {2, 32}, 5, f64);  // a retired type number
    expect_open_error(w.build(), {"'blk.0.odd'", "unknown ggml type 5"});
  }
  {
    GgufWriter w;
    w.add_tensor("blk.0.q", {2, 48}, lca_test::kTQ8_0, Bytes(3 * 34, '\0'));
    expect_open_error(w.build(), {"'blk.0.q'", "not a multiple", "Q8_0"});
  }
  {
    GgufWriter w;
    w.add_tensor("blk.0.w", {2, 32}, lca_test::kTF32, f64, 1024);
    Bytes b = w.build();
    b.resize(b.size() - 200);
    expect_open_error(b, {"'blk.0.w'", "runs past the end"});
  }
  {
    GgufWriter w;
    w.add_tensor("blk.0.w", {2, 32}, lca_test::kTF32, f64, 4);
    expect_open_error(w.build(), {"'blk.0.w'", "not a multiple of the alignment"});
  }
  {
    GgufWriter w;
    w.add_tensor("blk.0.w", {2, 32}, lca_test::kTF32, f64, uint64_t{1} << 63);
    expect_open_error(w.build(), {"'blk.0.w'", "out of range"});
  }
  {
    GgufWriter w;
    w.add_tensor("a", {2, 32}, lca_test::kTF32, f64, 0);
    w.add_tensor("b", {2, 32}, lca_test::kTF32, f64, 128);
    expect_open_error(w.build(), {"'a'", "'b'", "overlap"});
  }
  {
    GgufWriter w;
    w.add_tensor("a", {2, 32}, lca_test::kTF32, f64);
    w.add_tensor("a", {2, 32}, lca_test::kTF32, f64);
    expect_open_error(w.build(), {"'a'", "twice"});
  }
  {
    GgufWriter w;
    w.add_tensor("big", {1, 1, 1, 1, 32}, lca_test::kTF32, Bytes(128, '\0'));
    expect_open_error(w.build(), {"'big'", "more than 4"});
  }
  {  // Data cut short.
    GgufWriter w = one_tensor_file();
    Bytes b = w.build();
    b.resize(b.size() - 1);
    expect_open_error(b, {"'blk.0.w'", "truncated"});
  }
  {
    GgufWriter w;
    w.add_tensor("huge", {int64_t{1} << 40, int64_t{1} << 40}, lca_test::kTF32, Bytes());
    expect_open_error(w.build(), {"'huge'", "overflow"});
  }
}

TEST_F(GgufTest, ReadRefusesUnsupportedTypesAndWrongShapes) {
  GgufWriter w;
  w.add_tensor("blk.3.ffn_down.weight", {1, 256}, lca_test::kTQ4_K, Bytes(144, '\0'));
  w.add_tensor("w", {2, 32}, lca_test::kTF32, lca_test::f32_bytes(std::vector<float>(64, 1.0f)));
  w.write(path("t.gguf"));
  const GgufFile f = GgufFile::open(path("t.gguf").string());
  auto expect_msg = [&](auto call, const std::vector<std::string>& parts) {
    try {
      call();
      ADD_FAILURE() << "no throw";
    } catch (const lca::Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { f.read("blk.3.ffn_down.weight", {1, 256}); }, {path("t.gguf").string(), "'blk.3.ffn_down.weight'", "Q4_K"});
  expect_msg([&] { f.read("w", {32, 2}); }, {"'w'", "[2, 32]", "[32, 2]"});
  expect_msg([&] { f.read("absent", {1}); }, {"'absent'"});
  EXPECT_EQ(f.raw("blk.3.ffn_down.weight").size(), 144u);
  expect_open_error("", {"shorter"});
  EXPECT_THROW(GgufFile::open(path("missing.gguf").string()), lca::Error);
  EXPECT_THROW(GgufFile::open(dir_.string()), lca::Error);
}

// Random corruption of a valid file's header: open() throws lca::Error or
// succeeds, and every tensor it then accepts can be read.
TEST_F(GgufTest, CorruptedHeadersNeverCrash) {
  Rng rng(4242);
  GgufWriter w = one_tensor_file();
  w.add_string_array("tokenizer.ggml.tokens", {"a", "bb", "ccc"});
  w.add_tensor("q", {1, 32}, lca_test::kTQ4_1, Bytes(20, '\x11'));
  const Bytes good = w.build();
  const size_t header = good.size() - 64 * 4 - 64;
  int opened = 0;
  for (int trial = 0; trial < 400; ++trial) {
    Bytes b = good;
    const int flips = static_cast<int>(rng.uniform_int(1, 3));
    for (int k = 0; k < flips; ++k)
      b[static_cast<size_t>(rng.uniform_int(4, static_cast<int64_t>(header) - 1))] =
          static_cast<char>(rng.uniform_int(0, 255));
    const fs::path p = path("c.gguf");
    lca_test::write_bytes(p, b);
    try {
      const GgufFile f = GgufFile::open(p.string());
      ++opened;
      for (const auto& name : f.names()) {
        const auto& info = f.info(name);
        if (lca::ggml_type_readable(info.type)) EXPECT_EQ(f.read(name, info.shape).numel(), info.numel());
      }
    } catch (const lca::Error&) {
    }
  }
  EXPECT_GT(opened, 0);  // some flips land in values, not structure
}

}  // namespace
