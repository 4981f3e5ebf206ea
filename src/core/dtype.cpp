#include "lca/dtype.hpp"

#include <bit>
#include <cstring>

#include "lca/error.hpp"

namespace lca {

int64_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

std::string dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
  }
  return "?";
}

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "fp32" || name == "float32") return DType::f32;
  if (name == "bf16" || name == "bfloat16") return DType::bf16;
  if (name == "f16" || name == "fp16" || name == "float16") return DType::f16;
  detail::fail("unknown dtype '", name, "' (expected f32, bf16 or f16)");
}

uint16_t float_to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_float(uint16_t x) { return std::bit_cast<float>(static_cast<uint32_t>(x) << 16); }

uint16_t float_to_f16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u));
  const int exp = static_cast<int>(abs >> 23) - 127 + 15;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to infinity
  uint32_t half, rem, halfway;
  if (exp >= 1) {  // normal: keep 10 mantissa bits, round the 13 dropped ones
    half = (static_cast<uint32_t>(exp) << 10) | ((abs & 0x7fffffu) >> 13);
    rem = abs & 0x1fffu;
    halfway = 0x1000u;
  } else {  // subnormal or zero in half precision
    if (exp < -10) return static_cast<uint16_t>(sign);
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 14 - exp;
    half = mant >> shift;
    rem = mant & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1);
  }
  if (rem > halfway || (rem == halfway && (half & 1u))) ++half;  // carries into the exponent as it should
  return static_cast<uint16_t>(sign | half);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

float round_to(DType t, float x) {
  switch (t) {
    case DType::f32: return x;
    case DType::bf16: return bf16_to_float(float_to_bf16(x));
    case DType::f16: return f16_to_float(float_to_f16(x));
  }
  return x;
}

void encode(DType t, const float* src, int64_t n, void* dst) {
  if (n <= 0) return;
  if (t == DType::f32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  auto* out = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) out[i] = t == DType::bf16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
}

void decode(DType t, const void* src, int64_t n, float* dst) {
  if (n <= 0) return;
  if (t == DType::f32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  const auto* in = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = t == DType::bf16 ? bf16_to_float(in[i]) : f16_to_float(in[i]);
}

}  // namespace lca
