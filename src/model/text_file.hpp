// Small helpers shared by the model-folder readers (no iostreams: see error.hpp).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace lca::model {

// 'text', as error messages quote paths and names.
std::string in_quotes(std::string_view s);

// The whole file as a string; lca::Error "<what> '<path>': ..." when it cannot
// be opened or read, or is larger than max_bytes.
std::string read_text_file(const std::string& path, const char* what, size_t max_bytes);

}  // namespace lca::model
