// The pre-tokenizer splits of the tokenizers lca supports, hand-coded: the
// patterns use \p{L}, \p{N}, \s and a lookahead, which std::regex cannot do.
// Each function appends the pieces of `text` to `out` in order; the pieces
// cover the text exactly (a pattern's matches and any gaps between them, as
// Hugging Face's Split with behavior "Isolated" gives them).
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace lca::model {

enum class SplitPattern {
  gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  llama3,  // (?i:'s|...|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  qwen2,   // as llama3 with \p{N} (one digit) for \p{N}{1,3}
  // DeepSeek-V3's three splits, in this order:
  deepseek3_digits,  // \p{N}{1,3}
  deepseek3_cjk,     // [一-龥぀-ゟ゠-ヿ]+ (U+4E00-9FA5, U+3040-30FF)
  deepseek3,         // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
                     // | ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
};

// The pattern whose regex source is exactly `regex` (as tokenizer.json stores it), if any.
std::optional<SplitPattern> recognise_pattern(std::string_view regex);
const char* pattern_regex(SplitPattern p);

// text must be valid UTF-8. Without keep_gaps, text no match covers is dropped
// (Split with behavior "Removed" and invert true).
void split_pattern(std::string_view text, SplitPattern pattern, std::vector<std::string_view>& out,
                   bool keep_gaps = true);

// Hugging Face's Digits pre-tokenizer: numbers (\p{N}) apart from the rest,
// each digit alone (individual) or in runs.
void split_digits(std::string_view text, bool individual, std::vector<std::string_view>& out);

}  // namespace lca::model
