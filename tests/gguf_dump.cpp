// gguf_dump FILE OUT_DIR [TENSOR...]: what lca's GGUF reader sees, for
// gguf_crosscheck.py to compare with the gguf Python package. Prints JSON
// (version, alignment, metadata, tensor infos) and writes each readable
// tensor (all, or those named) dequantised to OUT_DIR/<name>.f32.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "lca/gguf.hpp"

namespace {

nlohmann::json to_json(const lca::GgufValue& v) {
  using T = lca::GgufValueType;
  switch (v.type) {
    case T::uint8: case T::uint16: case T::uint32: case T::uint64: return v.u;
    case T::int8: case T::int16: case T::int32: case T::int64: return v.i;
    case T::float32: case T::float64: return v.f;
    case T::boolean: return v.i != 0;
    case T::string: return v.s;
    case T::array: {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& e : v.array) a.push_back(to_json(e));
      return a;
    }
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: gguf_dump FILE OUT_DIR [TENSOR...]\n");
    return 2;
  }
  try {
    const lca::GgufFile f = lca::GgufFile::open(argv[1]);
    const std::set<std::string> wanted(argv + 3, argv + argc);
    nlohmann::json out;
    out["version"] = f.version();
    out["alignment"] = f.alignment();
    for (const auto& [k, v] : f.metadata()) out["metadata"][k] = to_json(v);
    out["tensors"] = nlohmann::json::array();
    for (const auto& name : f.names()) {
      const lca::GgufTensorInfo& t = f.info(name);
      out["tensors"].push_back({{"name", name}, {"type", lca::ggml_type_name(t.type)}, {"ne", t.ne},
                                {"shape", t.shape}, {"bytes", t.bytes}, {"offset", t.offset}});
      if (!lca::ggml_type_readable(t.type) || (!wanted.empty() && !wanted.count(name))) continue;
      const lca::Tensor<float> x = f.read(name, t.shape);
      const std::string path = (std::filesystem::path(argv[2]) / (name + ".f32")).string();
      std::FILE* o = std::fopen(path.c_str(), "wb");
      if (!o || std::fwrite(x.data(), sizeof(float), static_cast<size_t>(x.numel()), o) != static_cast<size_t>(x.numel()))
        throw std::runtime_error("cannot write " + path);
      std::fclose(o);
    }
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gguf_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
