#include "model/text_file.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "lca/error.hpp"

namespace lca::model {

std::string in_quotes(std::string_view s) {
  std::string out = "'";
  out += s;
  out += "'";
  return out;
}

std::string read_text_file(const std::string& path, const char* what, size_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    detail::fail(what, " ", in_quotes(path), ": cannot open: ", std::strerror(err));
  }
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    out.append(buf, n);
    if (out.size() > max_bytes) {
      std::fclose(f);
      detail::fail(what, " ", in_quotes(path), ": larger than ", static_cast<int64_t>(max_bytes), " bytes");
    }
  }
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  LCA_CHECK(!bad, what, " ", in_quotes(path), ": read error");
  return out;
}

}  // namespace lca::model
