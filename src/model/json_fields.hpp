// JSON helpers shared by the model-folder readers (config.json, safetensors
// headers, checkpoint indexes).
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

namespace lca::model {

// What a JSON value is, for messages: "a string", "an array", ...
inline std::string json_kind(const nlohmann::json& v) {
  if (v.is_number_float()) return "a non-integer number";
  if (v.is_null()) return "null";
  const std::string t = v.type_name();
  return (t == "object" || t == "array" ? "an " : "a ") + t;
}

// A JSON integer as int64 (negative values returned, for the caller to judge).
// Returns false for non-integers and for integers beyond int64.
inline bool json_int64(const nlohmann::json& v, int64_t& out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    out = v.get<int64_t>();
    return true;
  }
  return false;
}

}  // namespace lca::model
