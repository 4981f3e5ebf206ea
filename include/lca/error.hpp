// Errors: every failed check throws lca::Error with a message that names the
// function and the offending argument, so a user sees what to fix.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace lca {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
// Messages are built without iostreams: a PyTorch extension may carry its own
// instantiation of the stream code, and formatting a number through it into
// the process's locale facets crashed (seen on the device, torch 2.11).
inline void append(std::string& s, std::string_view x) { s += x; }
inline void append(std::string& s, const char* x) { s += x; }  // before the pointer overload
inline void append(std::string& s, char x) { s += x; }
inline void append(std::string& s, const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  s += buf;
}
template <class T>
  requires std::is_arithmetic_v<T>
void append(std::string& s, T x) {
  if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));
    s += buf;
  } else {
    s += std::to_string(x);
  }
}
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::string s = "lca: ";
  (append(s, parts), ...);
  throw Error(s);
}
}  // namespace detail

}  // namespace lca

// LCA_CHECK(cond, "where", ": message ", value, ...) throws lca::Error when cond is false.
#define LCA_CHECK(cond, ...)                 \
  do {                                       \
    if (!(cond)) ::lca::detail::fail(__VA_ARGS__); \
  } while (0)
