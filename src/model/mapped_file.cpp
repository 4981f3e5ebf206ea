#include "mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "text_file.hpp"
#include "lca/error.hpp"

namespace lca::model {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::~MappedFile() {
  if (data != nullptr && size > 0) ::munmap(const_cast<std::byte*>(data), size);
}

void MappedFile::map(const std::string& path, const char* kind, int64_t min_size, const char* what_needs_it,
                     MappedFile& out) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) {
    const int err = errno;
    ::lca::detail::fail(kind, " ", in_quotes(path), ": cannot open: ", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) {
    const int err = errno;
    ::lca::detail::fail(kind, " ", in_quotes(path), ": cannot stat: ", std::strerror(err));
  }
  LCA_CHECK(S_ISREG(st.st_mode), kind, " ", in_quotes(path), ": not a regular file");
  LCA_CHECK(st.st_size >= min_size, kind, " ", in_quotes(path), ": ", static_cast<int64_t>(st.st_size),
            " bytes, shorter than ", what_needs_it);
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::lca::detail::fail(kind, " ", in_quotes(path), ": cannot map ", static_cast<int64_t>(st.st_size), " bytes: ", std::strerror(err));
  }
  out.data = static_cast<const std::byte*>(p);
  out.size = static_cast<size_t>(st.st_size);
}

void check_disjoint(const char* kind, const std::string& path, std::vector<ByteRange> ranges) {
  std::erase_if(ranges, [](const ByteRange& r) { return r.bytes == 0; });
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const ByteRange& a = ranges[i - 1];
    const ByteRange& b = ranges[i];
    LCA_CHECK(b.offset >= a.offset + a.bytes, kind, " ", in_quotes(path), ": tensors ", in_quotes(*a.name), " (bytes ",
              a.offset, "..", a.offset + a.bytes, ") and ", in_quotes(*b.name), " (bytes ", b.offset, "..",
              b.offset + b.bytes, ") overlap");
  }
}

}  // namespace lca::model
