// A whole file mapped read-only: what the checkpoint readers (safetensors,
// GGUF) parse in place. Errors name the kind of file and its path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lca::model {

struct MappedFile {
  const std::byte* data = nullptr;
  size_t size = 0;

  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  // Maps `path` into `out`. Throws lca::Error "<kind> '<path>': ..." when the
  // file cannot be opened, is not a regular file, is shorter than min_size
  // bytes (`what_needs_it` says what those bytes are), or cannot be mapped.
  static void map(const std::string& path, const char* kind, int64_t min_size, const char* what_needs_it,
                  MappedFile& out);
};

// A tensor's bytes within a file, for check_disjoint.
struct ByteRange {
  const std::string* name;
  int64_t offset, bytes;
};
// Throws "<kind> '<path>': tensors 'a' (bytes x..y) and 'b' (...) overlap" when
// two ranges share a byte (empty ranges occupy none).
void check_disjoint(const char* kind, const std::string& path, std::vector<ByteRange> ranges);

}  // namespace lca::model
