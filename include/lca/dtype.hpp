// Storage dtypes of the cache. Compute is always fp32 (or fp64 in tests);
// values are rounded once, round-to-nearest-even, when stored.
#pragma once

#include <cstdint>
#include <string>

namespace lca {

enum class DType { f32, bf16, f16 };

int64_t dtype_size(DType t);
std::string dtype_name(DType t);
DType parse_dtype(const std::string& name);  // "f32"|"fp32"|"float32", "bf16", "f16"|"fp16"

uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t x);
uint16_t float_to_f16(float x);
float f16_to_float(uint16_t x);

// x rounded to `t` and back: what storing x in a cache of dtype t keeps.
float round_to(DType t, float x);

// Encode n floats into dst (n * dtype_size(t) bytes) and decode back.
void encode(DType t, const float* src, int64_t n, void* dst);
void decode(DType t, const void* src, int64_t n, float* dst);

}  // namespace lca
