// Hand-coded matchers for the pre-tokenizer regexes (pretokenize.hpp). Each
// match function returns where the regex's leftmost-first match starting at
// character i ends, reproducing the backtracking the regex engine would do.
#include "model/pretokenize.hpp"

#include <cstdint>
#include <string>

#include "model/unicode.hpp"

namespace lca::model {

namespace {

using unicode::CharClass;

constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// As tokenizer.json holds them once JSON-decoded: the third has a CR and an LF
// character in its classes (an escaped "\r\n" is recognised too).
constexpr const char* kDeepseek3DigitsRegex = R"(\p{N}{1,3})";
constexpr const char* kDeepseek3CjkRegex =
    "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-\xE3\x83\xBF]+";
constexpr const char* kDeepseek3Regex =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
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
  // [^\s\p{L}\p{N}]: what the GPT-2 and Llama-3 patterns lump together.
  bool is_rest(size_t i) const {
    return i < cp.size() && cls[i] != CharClass::letter && cls[i] != CharClass::number &&
           cls[i] != CharClass::whitespace;
  }
  size_t run_rest(size_t i) const {
    while (is_rest(i)) ++i;
    return i;
  }
  bool is_any(size_t i, CharClass a, CharClass b) const { return i < cp.size() && (cls[i] == a || cls[i] == b); }
  size_t run_any(size_t i, CharClass a, CharClass b) const {
    while (is_any(i, a, b)) ++i;
    return i;
  }
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

// \s*[\r\n]+|\s+(?!\S)|\s+ at a whitespace character i: the run up to and
// including its last \r or \n, else as match_whitespace.
size_t match_newlines_or_whitespace(const Chars& t, size_t i) {
  const size_t e = t.run(i, CharClass::whitespace);
  for (size_t k = e; k > i; --k)
    if (t.is_newline(k - 1)) return k;
  return match_whitespace(t, i);
}

// \p{N}{1,max} at a number i.
size_t match_digits(const Chars& t, size_t i, size_t max_digits) {
  size_t e = i;
  while (e < t.size() && e - i < max_digits && t.cls[e] == CharClass::number) ++e;
  return e;
}

size_t match_gpt2(const Chars& t, size_t i) {
  if (size_t e = match_contraction(t, i, false); e != i) return e;
  const size_t j = t.cp[i] == ' ' ? i + 1 : i;                         // the optional leading space
  if (t.is(j, CharClass::letter)) return t.run(j, CharClass::letter);  //  ?\p{L}+
  if (t.is(j, CharClass::number)) return t.run(j, CharClass::number);  //  ?\p{N}+
  if (t.is_rest(j)) return t.run_rest(j);                              //  ?[^\s\p{L}\p{N}]+
  // The space matched none of them with the next character.
  if (t.is(i, CharClass::whitespace)) return match_whitespace(t, i);
  return i + 1;  // unreachable: every character is a letter, number, space or the rest
}

size_t match_llama3(const Chars& t, size_t i, size_t max_digits) {
  if (size_t e = match_contraction(t, i, true); e != i) return e;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.is(i, CharClass::letter)) return t.run(i, CharClass::letter);
  if (!t.is_newline(i) && !t.is(i, CharClass::number) && t.is(i + 1, CharClass::letter))
    return t.run(i + 1, CharClass::letter);
  if (t.is(i, CharClass::number)) return match_digits(t, i, max_digits);  // \p{N}{1,max}
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t j = t.cp[i] == ' ' && t.is_rest(i + 1) ? i + 1 : i;
  if (t.is_rest(j)) {
    size_t e = t.run_rest(j);
    while (t.is_newline(e)) ++e;
    return e;
  }
  if (t.is(i, CharClass::whitespace)) return match_newlines_or_whitespace(t, i);
  return i + 1;
}

// DeepSeek-V3's third split:
//   [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
//   | ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Returns i where nothing matches (a number, a control or format character).
size_t match_deepseek3(const Chars& t, size_t i) {
  auto ascii_letter = [&](size_t k) {
    return k < t.size() && ((t.cp[k] >= 'a' && t.cp[k] <= 'z') || (t.cp[k] >= 'A' && t.cp[k] <= 'Z'));
  };
  const char32_t c = t.cp[i];
  const bool ascii_punct =
      (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
  if (ascii_punct && ascii_letter(i + 1)) {
    size_t e = i + 1;
    while (ascii_letter(e)) ++e;
    return e;
  }
  using C = CharClass;
  if (t.is_any(i, C::letter, C::mark)) return t.run_any(i, C::letter, C::mark);
  if (!t.is_newline(i) && !t.is_any(i, C::punctuation, C::symbol) && t.is_any(i + 1, C::letter, C::mark))
    return t.run_any(i + 1, C::letter, C::mark);
  const size_t j = c == ' ' && t.is_any(i + 1, C::punctuation, C::symbol) ? i + 1 : i;
  if (t.is_any(j, C::punctuation, C::symbol)) {
    size_t e = t.run_any(j, C::punctuation, C::symbol);
    while (t.is_newline(e)) ++e;
    return e;
  }
  if (t.is(i, C::whitespace)) return match_newlines_or_whitespace(t, i);
  return i;
}

// [\x{4e00}-\x{9fa5}\x{3040}-\x{309f}\x{30a0}-\x{30ff}]+ (DeepSeek-V3's second split).
size_t match_deepseek3_cjk(const Chars& t, size_t i) {
  auto cjk = [&](size_t k) {
    if (k >= t.size()) return false;
    const char32_t c = t.cp[k];
    return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF);
  };
  size_t e = i;
  while (cjk(e)) ++e;
  return e;
}

thread_local Chars tls_chars;

}  // namespace

std::optional<SplitPattern> recognise_pattern(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::gpt2;
  if (regex == kLlama3Regex) return SplitPattern::llama3;
  if (regex == kQwen2Regex) return SplitPattern::qwen2;
  if (regex == kDeepseek3DigitsRegex) return SplitPattern::deepseek3_digits;
  if (regex == kDeepseek3CjkRegex) return SplitPattern::deepseek3_cjk;
  std::string escaped;  // the main regex with its CR and LF written as \r and \n
  for (const char c : std::string_view(kDeepseek3Regex))
    escaped += c == '\r' ? "\\r" : c == '\n' ? "\\n" : std::string(1, c);
  if (regex == kDeepseek3Regex || regex == escaped) return SplitPattern::deepseek3;
  return std::nullopt;
}

const char* pattern_regex(SplitPattern p) {
  switch (p) {
    case SplitPattern::gpt2: return kGpt2Regex;
    case SplitPattern::llama3: return kLlama3Regex;
    case SplitPattern::qwen2: return kQwen2Regex;
    case SplitPattern::deepseek3_digits: return kDeepseek3DigitsRegex;
    case SplitPattern::deepseek3_cjk: return kDeepseek3CjkRegex;
    case SplitPattern::deepseek3: return kDeepseek3Regex;
  }
  return "";
}

void split_pattern(std::string_view text, SplitPattern pattern, std::vector<std::string_view>& out,
                   bool keep_gaps) {
  Chars& t = tls_chars;
  t.load(text);
  size_t i = 0, gap = 0;  // characters [gap, i) matched nothing
  auto piece = [&](size_t a, size_t b) {
    if (b > a) out.push_back(text.substr(t.offset[a], t.offset[b] - t.offset[a]));
  };
  while (i < t.size()) {
    size_t e = i + 1;
    switch (pattern) {
      case SplitPattern::gpt2: e = match_gpt2(t, i); break;
      case SplitPattern::llama3: e = match_llama3(t, i, 3); break;
      case SplitPattern::qwen2: e = match_llama3(t, i, 1); break;
      case SplitPattern::deepseek3_digits: e = t.is(i, CharClass::number) ? match_digits(t, i, 3) : i; break;
      case SplitPattern::deepseek3_cjk: e = match_deepseek3_cjk(t, i); break;
      case SplitPattern::deepseek3: e = match_deepseek3(t, i); break;
    }
    if (e == i) {  // no match here: the character joins the gap before the next match
      ++i;
      continue;
    }
    if (keep_gaps) piece(gap, i);
    piece(i, e);
    i = gap = e;
  }
  if (keep_gaps) piece(gap, t.size());
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
