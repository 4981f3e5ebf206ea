// Errors: every failed check throws lca::Error with a message that names the
// function and the offending argument, so a user sees what to fix.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lca {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  os << "lca: ";
  (os << ... << parts);
  throw Error(os.str());
}
}  // namespace detail

}  // namespace lca

// LCA_CHECK(cond, "where", ": message ", value, ...) throws lca::Error when cond is false.
#define LCA_CHECK(cond, ...)                 \
  do {                                       \
    if (!(cond)) ::lca::detail::fail(__VA_ARGS__); \
  } while (0)
