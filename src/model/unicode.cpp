// UTF-8 handling, character classes and NFC over the generated tables.
#include "model/unicode.hpp"

#include <algorithm>
#include <array>
#include <vector>

#include "model/unicode_tables.hpp"

namespace lca::model::unicode {

namespace {

CharClass class_by_search(char32_t cp) {
  const ClassRange* end = kClassRanges + kClassRangeCount;
  const ClassRange* it =
      std::upper_bound(kClassRanges, end, cp, [](char32_t c, const ClassRange& r) { return c < r.first; });
  if (it == kClassRanges) return CharClass::other;
  --it;
  return cp <= it->last ? static_cast<CharClass>(it->cls) : CharClass::other;
}

// The BMP in one byte per code point (64 KiB, built once): the patterns ask for
// the class of every character of the text.
const std::array<CharClass, 0x10000>& bmp_classes() {
  static const auto table = [] {
    std::array<CharClass, 0x10000> t{};
    for (size_t i = 0; i < kClassRangeCount; ++i) {
      const ClassRange& r = kClassRanges[i];
      for (char32_t c = r.first; c <= r.last && c < 0x10000; ++c) t[c] = static_cast<CharClass>(r.cls);
    }
    return t;
  }();
  return table;
}

// Length of the maximal valid prefix of a UTF-8 sequence at s[i] (1 for a bad
// lead byte), and whether the whole sequence is valid: the rule by which
// from_utf8_lossy emits one U+FFFD per maximal invalid subpart.
struct Sequence {
  bool valid;
  uint32_t len;
};
Sequence utf8_sequence(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {true, 1};
  uint32_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {false, 1};
  }
  uint32_t len = 1;
  for (uint32_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return {false, len};
    const auto b = static_cast<unsigned char>(s[i + k]);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b & 0xC0) == 0x80;
    if (!ok) return {false, len};
    ++len;
  }
  return {true, len};
}

// NFC data.
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const CccRange* end = kCccRanges + kCccRangeCount;
  const CccRange* it = std::upper_bound(kCccRanges, end, cp, [](char32_t c, const CccRange& r) { return c < r.first; });
  if (it == kCccRanges) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* end = kDecompositions + kDecompositionCount;
  const Decomposition* it =
      std::lower_bound(kDecompositions, end, cp, [](const Decomposition& d, char32_t c) { return d.cp < c; });
  if (it != end && it->cp == cp) {
    out.insert(out.end(), kDecompositionParts + it->offset, kDecompositionParts + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const Composition* end = kCompositions + kCompositionCount;
  const Composition* it = std::lower_bound(kCompositions, end, std::pair{a, b}, [](const Composition& c, auto key) {
    return c.first != key.first ? c.first < key.first : c.second < key.second;
  });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

CharClass char_class(char32_t cp) {
  if (cp < 0x10000) return bmp_classes()[cp];
  return class_by_search(cp);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

size_t first_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Sequence q = utf8_sequence(s, i);
    if (!q.valid) return i;
    i += q.len;
  }
  return s.size();
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const Sequence q = utf8_sequence(s, i);
    if (q.valid)
      out.append(s.data() + i, q.len);
    else
      out += "\xEF\xBF\xBD";
    i += q.len;
  }
  return out;
}

std::string nfc(std::string_view s) {
  // Text below U+0300 is its own NFC (no combining marks, nothing recomposes
  // differently): the common case costs one scan.
  bool simple = true;
  for (size_t i = 0; i < s.size() && simple; ++i) {
    const auto b = static_cast<unsigned char>(s[i]);
    simple = b < 0xCC;  // lead bytes >= 0xCC start code points >= U+0300
  }
  if (simple) return std::string(s);

  std::vector<char32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const Decoded d = decode_utf8(s, i);
    decompose(d.cp, cps);
    i += d.len;
  }
  // Canonical ordering: a stable sort by combining class of each run of non-starters.
  for (size_t i = 0; i < cps.size();) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition: each character joins the last starter unless blocked
  // (a character between them has class 0 or a class >= its own).
  std::vector<char32_t> out;
  out.reserve(cps.size());
  ptrdiff_t starter = -1;
  uint8_t last_class = 0;
  for (const char32_t c : cps) {
    const uint8_t cc = combining_class(c);
    if (starter >= 0) {
      const bool adjacent = out.size() == static_cast<size_t>(starter) + 1;
      if (adjacent || (last_class != 0 && last_class < cc)) {
        if (const char32_t composite = compose(out[starter], c)) {
          out[starter] = composite;
          continue;
        }
      }
    }
    out.push_back(c);
    if (cc == 0)
      starter = static_cast<ptrdiff_t>(out.size()) - 1;
    else
      last_class = cc;
  }
  std::string result;
  result.reserve(s.size());
  for (const char32_t c : out) append_utf8(result, c);
  return result;
}

}  // namespace lca::model::unicode
