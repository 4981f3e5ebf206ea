// Hand-coded matchers for the pre-tokenizer regexes (pretokenize.hpp). Each
// match function returns where the regex's leftmost-first match starting at
// character i ends, reproducing the backtracking the regex engine would do.
#include "model/pretokenize.hpp"

#include <cstdint>

#include "model/unicode.hpp"

namespace lca::model {

namespace {

using unicode::CharClass;

constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text as characters: code point, class, byte offset (offsets has one more entry: the end).
struct Chars {
  std::vector<char32_t> cp;
  std::vector<CharClass> cls;
  std::vector<uint32_t> offset;

  void load(std::string_view text) {
    cp.clear();
    cls.clear();
    offset.clear();
    for (size_t i = 0; i < text.size();) {
      const unicode::Decoded d = unicode::decode_utf8(text, i);
      cp.push_back(d.cp);
      cls.push_back(unicode::char_class(d.cp));
      offset.push_back(static_cast<uint32_t>(i));
      i += d.len;
    }
    offset.push_back(static_cast<uint32_t>(text.size()));
  }
  size_t size() const { return cp.size(); }
  bool is(size_t i, CharClass c) const { return i < cp.size() && cls[i] == c; }
  bool is_newline(size_t i) const { return i < cp.size() && (cp[i] == '\r' || cp[i] == '\n'); }
  size_t run(size_t i, CharClass c) const {
    while (i < cp.size() && cls[i] == c) ++i;
    return i;
  }
};

// The character as the case-insensitive contractions compare it: ASCII lower
// case, and U+017F (long s), which case-folds to 's'.
char32_t fold(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
  if (c == 0x17F) return 's';
  return c;
}

// 's|'t|'re|'ve|'m|'ll|'d at i; returns i when none matches.
size_t match_contraction(const Chars& t, size_t i, bool ignore_case) {
  if (t.cp[i] != '\'' || i + 1 >= t.size()) return i;
  auto at = [&](size_t k) -> char32_t {
    if (k >= t.size()) return 0;
    return ignore_case ? fold(t.cp[k]) : t.cp[k];
  };
  const char32_t c1 = at(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
  const char32_t c2 = at(i + 2);
  if ((c1 == 'r' || c1 == 'v') && c2 == 'e') return i + 3;
  if (c1 == 'l' && c2 == 'l') return i + 3;
  return i;
}

// \s+(?!\S)|\s+ at a whitespace character i: the run, less its last character
// when a non-space follows and the run is longer than one.
size_t match_whitespace(const Chars& t, size_t i) {
  const size_t e = t.run(i, CharClass::whitespace);
  if (e == t.size() || e - i < 2) return e;
  return e - 1;
}

size_t match_gpt2(const Chars& t, size_t i) {
  if (size_t e = match_contraction(t, i, false); e != i) return e;
  const size_t j = t.cp[i] == ' ' ? i + 1 : i;  // the optional leading space
  for (const CharClass c : {CharClass::letter, CharClass::number, CharClass::other}) {
    if (t.is(j, c)) return t.run(j, c);  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
  }
  // The space matched none of them with the next character.
  if (t.is(i, CharClass::whitespace)) return match_whitespace(t, i);
  // Unreachable: every character is a letter, number, space or other.
  return i + 1;
}

size_t match_llama3(const Chars& t, size_t i, size_t max_digits) {
  if (size_t e = match_contraction(t, i, true); e != i) return e;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.is(i, CharClass::letter)) return t.run(i, CharClass::letter);
  if (!t.is_newline(i) && !t.is(i, CharClass::number) && t.is(i + 1, CharClass::letter))
    return t.run(i + 1, CharClass::letter);
  // \p{N}{1,max}
  if (t.is(i, CharClass::number)) {
    size_t e = i;
    while (e < t.size() && e - i < max_digits && t.cls[e] == CharClass::number) ++e;
    return e;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t j = t.cp[i] == ' ' && t.is(i + 1, CharClass::other) ? i + 1 : i;
  if (t.is(j, CharClass::other)) {
    size_t e = t.run(j, CharClass::other);
    while (t.is_newline(e)) ++e;
    return e;
  }
  if (t.is(i, CharClass::whitespace)) {
    // \s*[\r\n]+: the whitespace run up to and including its last \r or \n.
    const size_t e = t.run(i, CharClass::whitespace);
    for (size_t k = e; k > i; --k)
      if (t.is_newline(k - 1)) return k;
    return match_whitespace(t, i);
  }
  return i + 1;
}

thread_local Chars tls_chars;

}  // namespace

std::optional<SplitPattern> recognise_pattern(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::gpt2;
  if (regex == kLlama3Regex) return SplitPattern::llama3;
  if (regex == kQwen2Regex) return SplitPattern::qwen2;
  return std::nullopt;
}

const char* pattern_regex(SplitPattern p) {
  switch (p) {
    case SplitPattern::gpt2: return kGpt2Regex;
    case SplitPattern::llama3: return kLlama3Regex;
    case SplitPattern::qwen2: return kQwen2Regex;
  }
  return "";
}

void split_pattern(std::string_view text, SplitPattern pattern, std::vector<std::string_view>& out) {
  Chars& t = tls_chars;
  t.load(text);
  size_t i = 0;
  while (i < t.size()) {
    size_t e = i + 1;
    switch (pattern) {
      case SplitPattern::gpt2: e = match_gpt2(t, i); break;
      case SplitPattern::llama3: e = match_llama3(t, i, 3); break;
      case SplitPattern::qwen2: e = match_llama3(t, i, 1); break;
    }
    out.push_back(text.substr(t.offset[i], t.offset[e] - t.offset[i]));
    i = e;
  }
}

void split_digits(std::string_view text, bool individual, std::vector<std::string_view>& out) {
  size_t start = 0;  // byte offset where the current piece starts
  bool in_number = false;
  for (size_t i = 0; i < text.size();) {
    const unicode::Decoded d = unicode::decode_utf8(text, i);
    const bool number = unicode::char_class(d.cp) == CharClass::number;
    if (i > start && (number != in_number || (number && individual))) {
      out.push_back(text.substr(start, i - start));
      start = i;
    }
    in_number = number;
    i += d.len;
  }
  if (start < text.size()) out.push_back(text.substr(start));
}

}  // namespace lca::model
