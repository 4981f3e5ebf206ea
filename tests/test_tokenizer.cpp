// The tokenizer (lca/tokenizer.hpp): UTF-8 and NFC, the pre-tokenizer splits
// on hand-worked examples, BPE against a naive merge-by-rank oracle on random
// vocabularies, round trips on arbitrary UTF-8, SentencePiece byte fallback and
// score-ranked merges, tokenizer.json reading, and every error naming its field.
// Agreement with Hugging Face `tokenizers` is tests/tokenizer_agreement.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lca/error.hpp"
#include "lca/tokenizer.hpp"
#include "model/pretokenize.hpp"
#include "model/unicode.hpp"
#include "model/unicode_tables.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lca::BpeVocab;
using lca::Tokenizer;
using lca_test::Rng;

using lca_test::error_of;

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  const std::string msg = error_of(f);
  ASSERT_FALSE(msg.empty()) << "no lca::Error thrown";
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

std::string utf8(char32_t cp) {
  std::string s;
  lca::model::unicode::append_utf8(s, cp);
  return s;
}

// GPT-2's bytes_to_unicode, written out here independently of the library.
std::vector<std::string> gpt2_byte_chars() {
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
  std::vector<std::string> out(256);
  std::set<int> is_printable(printable.begin(), printable.end());
  int extra = 0;
  for (int b = 0; b < 256; ++b) out[b] = utf8(is_printable.count(b) ? b : 256 + extra++);
  return out;
}

std::string map_bytes(std::string_view s) {
  static const auto chars = gpt2_byte_chars();
  std::string out;
  for (const char c : s) out += chars[static_cast<unsigned char>(c)];
  return out;
}

// The characters of a UTF-8 string.
std::vector<std::string> chars_of(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto d = lca::model::unicode::decode_utf8(s, i);
    out.push_back(s.substr(i, d.len));
    i += d.len;
  }
  return out;
}

// Naive BPE: repeatedly merge the adjacent pair of lowest rank, leftmost first.
std::vector<std::string> naive_bpe(std::vector<std::string> sym,
                                   const std::map<std::pair<std::string, std::string>, int>& rank) {
  for (;;) {
    int best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank.find({sym[i], sym[i + 1]});
      if (it != rank.end() && (best < 0 || it->second < best)) {
        best = it->second;
        at = i;
      }
    }
    if (best < 0) return sym;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + static_cast<ptrdiff_t>(at) + 1);
  }
}

// A random byte-level vocabulary: the 256 byte characters, then tokens made by
// random merges of tokens over a small alphabet (some merges repeat a token
// another merge already makes, which BPE must handle).
struct RandomVocab {
  BpeVocab vocab;
  std::map<std::pair<std::string, std::string>, int> rank;
  std::map<std::string, int64_t> id;
};

RandomVocab random_byte_level(Rng& rng, const std::string& pre, int n_merges) {
  RandomVocab r;
  r.vocab.pre_tokenizer = pre;
  r.vocab.tokens = gpt2_byte_chars();
  for (size_t i = 0; i < r.vocab.tokens.size(); ++i) r.id[r.vocab.tokens[i]] = static_cast<int64_t>(i);
  std::vector<std::string> pool;
  for (const char* s : {"a", "b", "c", "d", "e", " ", "1", "2", "\n", "'", "\xC3", "\xA9", "\xE6", "\x97", "\xA5"})
    pool.push_back(map_bytes(s));
  while (static_cast<int>(r.vocab.merges.size()) < n_merges) {
    const std::string a = rng.pick(pool), b = rng.pick(pool);
    if (r.rank.count({a, b})) continue;
    const std::string merged = a + b;
    if (!r.id.count(merged)) {
      r.id[merged] = static_cast<int64_t>(r.vocab.tokens.size());
      r.vocab.tokens.push_back(merged);
      pool.push_back(merged);
    }
    r.rank[{a, b}] = static_cast<int>(r.vocab.merges.size());
    r.vocab.merges.push_back(a + " " + b);
  }
  return r;
}

// Random text over characters every pattern treats differently.
std::string random_text(Rng& rng, int n) {
  static const std::vector<std::string> pool = {
      "a", "b", "c", "d", "e", "A", "Z", " ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\x0B", "1", "2", "9",
      "0", "'", "'s", "'LL", "!", ".", ",", "-", "(", "é", "日", "本", "ä", "\xC2\xA0", "\xE3\x80\x80",
      "\xE2\x80\xA8", "\xF0\x9F\x91\x8D", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "\xE2\x80\x8D", "\xCC\x81", "²", "Ⅻ",
      "\xD9\xA3", "\xEF\xBC\x91", "\xC5\xBF", "\xF0\x9F\x87\xA9\xF0\x9F\x87\xAA", "\xE1\x84\x80", "カ", "$",
      "+", "(", "\xE2\x80\x8B", "\x01"};
  std::string s;
  for (int i = 0; i < n; ++i) s += rng.pick(pool);
  return s;
}

// ---- UTF-8 and Unicode ---------------------------------------------------------

TEST(TokenizerUnicode, Utf8DecodeEncodeRoundTripEveryScalarValue) {
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    const std::string s = utf8(cp);
    const auto d = lca::model::unicode::decode_utf8(s, 0);
    ASSERT_EQ(d.cp, cp);
    ASSERT_EQ(d.len, s.size());
    ASSERT_EQ(lca::model::unicode::first_invalid_utf8(s), s.size());
  }
}

TEST(TokenizerUnicode, InvalidUtf8IsFoundAndReplacedByMaximalSubparts) {
  using lca::model::unicode::first_invalid_utf8;
  using lca::model::unicode::utf8_lossy;
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(first_invalid_utf8("ab\xC3"), 2u);
  EXPECT_EQ(first_invalid_utf8("\xED\xA0\x80"), 0u);  // a surrogate
  EXPECT_EQ(first_invalid_utf8("\xC0\xAF"), 0u);      // overlong
  EXPECT_EQ(first_invalid_utf8("x\xF4\x90\x80\x80"), 1u);  // beyond U+10FFFF
  // A truncated sequence is one U+FFFD; a bad lead or lone continuation is one each.
  EXPECT_EQ(utf8_lossy("a\xF0\x9F\x91" "b"), "a" + fffd + "b");
  EXPECT_EQ(utf8_lossy("\x80\x80"), fffd + fffd);
  EXPECT_EQ(utf8_lossy("\xE0\x80"), fffd + fffd);  // E0 needs A0..BF next
  EXPECT_EQ(utf8_lossy("\xC3\xA9\xC3"), "\xC3\xA9" + fffd);
}

TEST(TokenizerUnicode, CharacterClasses) {
  using lca::model::unicode::char_class;
  using C = lca::model::unicode::CharClass;
  auto expect_class = [&](std::initializer_list<char32_t> cps, C want) {
    for (const char32_t c : cps) EXPECT_EQ(char_class(c), want) << "U+" << std::hex << static_cast<uint32_t>(c);
  };
  expect_class({U'a', U'Z', U'é', U'Ω', U'Ж', U'日', U'ſ', U'ǅ', U'ʰ', U'ㄱ', U'\U00020000'}, C::letter);
  expect_class({U'0', U'9', U'²', U'½', U'Ⅻ', U'①', U'٣', U'１', U'\U0001D7CE'}, C::number);
  expect_class({U' ', U'\t', U'\n', U'\r', U'\v', U'\f', U'\u0085', U'\u00A0', U'\u2028', U'\u2029', U'\u3000'},
               C::whitespace);
  // Not \s in Oniguruma or Rust: U+001C..U+001F (Python's isspace), U+180E, U+200B.
  expect_class({U'\x1C', U'\x1F', U'\u180E', U'\u200B', U'\x7F', U'\uE000', U'\U000E0001'}, C::other);
  expect_class({U'!', U'(', U'\'', U'、', U'「', U'\u00BF'}, C::punctuation);
  expect_class({U'$', U'+', U'^', U'`', U'€', U'©', U'👍', U'\uFFFD'}, C::symbol);
  expect_class({U'\u0301', U'\u094D', U'\u20DD', U'\U000E0100'}, C::mark);
  // Oniguruma in tokenizers 0.23.3 has Unicode 16.0 classes: characters assigned
  // after Unicode 14 (Egyptian hieroglyphs U+13460.., Cyrillic U+1C89, Garay digits, ...).
  EXPECT_STREQ(lca::model::unicode::kClassUnicodeVersion, "16.0.0");
  expect_class({U'\U00013EAA', U'\u1C89', U'\uA7CB'}, C::letter);
  expect_class({U'\U00010D40'}, C::number);
  expect_class({U'\u0897', U'\u0CF3'}, C::mark);
  expect_class({U'\u1B4E', U'\U000113D4'}, C::punctuation);
  expect_class({U'\u2427', U'\u2FFC'}, C::symbol);
}

TEST(TokenizerUnicode, NfcComposesReordersAndLeavesComposedTextAlone) {
  using lca::model::unicode::nfc;
  EXPECT_EQ(nfc("e\xCC\x81"), "é");                        // e + U+0301
  EXPECT_EQ(nfc("a\xCC\x82\xCC\xA3"), "\xE1\xBA\xAD");     // a + circumflex + dot below -> U+1EAD (reordered)
  EXPECT_EQ(nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "각");  // Hangul L V T -> U+AC01
  EXPECT_EQ(nfc("\xE2\x84\xAB"), "Å");                      // Angstrom sign -> U+00C5 (singleton)
  EXPECT_EQ(nfc("\xE0\xA4\x95\xE0\xA4\xBC"), "\xE0\xA4\x95\xE0\xA4\xBC");  // U+0958 is excluded from composition
  EXPECT_EQ(nfc("\xCC\x81" "a"), "\xCC\x81" "a");          // no starter before the mark
  EXPECT_EQ(nfc("e\xCC\x81\xCC\x81"), "é\xCC\x81");
  EXPECT_EQ(nfc("e\xCC\xB8\xCC\x81"), "é\xCC\xB8");  // U+0338 (class 1) does not block U+0301 (230)
  EXPECT_EQ(nfc("x" "\xF0\x9F\x91\x8D" "日本"), "x" "\xF0\x9F\x91\x8D" "日本");
  Rng rng(1);
  for (int i = 0; i < 200; ++i) {  // NFC is idempotent
    const std::string s = random_text(rng, 30);
    EXPECT_EQ(nfc(nfc(s)), nfc(s));
  }
}

// Hugging Face tokenizers' NFC has Unicode 9.0 data (tables' kNfcUnicodeVersion):
// a mark assigned later is a starter to it (class 0, nothing to reorder or
// compose), while the same pattern with a 9.0 mark is reordered.
TEST(TokenizerUnicode, NfcUsesUnicode9DataAsHuggingFaceTokenizers) {
  using lca::model::unicode::nfc;
  EXPECT_STREQ(lca::model::unicode::kNfcUnicodeVersion, "9.0.0");
  // U+06E2 (class 230) then a class-9 virama: U+094D (Unicode 1.1) moves first;
  // U+A82C (Syloti Nagri, Unicode 13.0) is a starter and stays.
  EXPECT_EQ(nfc("x\u06E2\u094D"), "x\u094D\u06E2");
  EXPECT_EQ(nfc("x\u06E2\u06EC\uA82C"), "x\u06E2\u06EC\uA82C");
  // U+10D27 (Hanifi Rohingya, class 230, Unicode 11.0) before U+0316 (220):
  // not reordered; U+0301 (230, Unicode 1.1) in its place is.
  EXPECT_EQ(nfc("x\U00010D27\u0316"), "x\U00010D27\u0316");
  EXPECT_EQ(nfc("x\u0301\u0316"), "x\u0316\u0301");
  // U+07FD (N'Ko, 220, Unicode 11.0) and U+11D42 (Masaram Gondi nukta, 7,
  // Unicode 10.0) do not move before U+0301 (230).
  EXPECT_EQ(nfc("x\u0301\u07FD"), "x\u0301\u07FD");
  EXPECT_EQ(nfc("x\u0301\U00011D42"), "x\u0301\U00011D42");
  // U+11935 U+11930 is U+11938's canonical decomposition (Dives Akuru, Unicode
  // 13.0), which 9.0 does not have: nothing composes.
  EXPECT_EQ(nfc("\U00011938"), "\U00011938");
  EXPECT_EQ(nfc("\U00011935\U00011930"), "\U00011935\U00011930");
}

// ---- pre-tokenizer splits ----------------------------------------------------------

std::vector<std::string> split(std::string_view text, lca::model::SplitPattern p, bool keep_gaps = true) {
  std::vector<std::string_view> v;
  lca::model::split_pattern(text, p, v, keep_gaps);
  return {v.begin(), v.end()};
}

TEST(TokenizerPreTokenize, Gpt2Pattern) {
  using P = lca::model::SplitPattern;
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello world's  test\n\n x", P::gpt2), (V{"Hello", " world", "'s", " ", " test", "\n\n", " x"}));
  EXPECT_EQ(split("IT'S 123abc  ", P::gpt2), (V{"IT", "'", "S", " 123", "abc", "  "}));
  EXPECT_EQ(split(" !?x\t\ty", P::gpt2), (V{" !?", "x", "\t", "\t", "y"}));
  EXPECT_EQ(split("I'll we're they've 'd", P::gpt2), (V{"I", "'ll", " we", "'re", " they", "'ve", " '", "d"}));
  // U+13EAA is a letter (Unicode 16.0), so it splits from the U+FFFD symbols around it.
  EXPECT_EQ(split("e\uFFFD\U00013EAA\uFFFD\"", P::gpt2), (V{"e", "\uFFFD", "\U00013EAA", "\uFFFD\""}));
}

TEST(TokenizerPreTokenize, Llama3AndQwen2Patterns) {
  using P = lca::model::SplitPattern;
  using V = std::vector<std::string>;
  EXPECT_EQ(split("abc 12345 !!\n\nx", P::llama3), (V{"abc", " ", "123", "45", " !!\n\n", "x"}));
  EXPECT_EQ(split("abc 12345", P::qwen2), (V{"abc", " ", "1", "2", "3", "4", "5"}));
  EXPECT_EQ(split("IT'S I'Ll 'ſ", P::llama3), (V{"IT", "'S", " I", "'Ll", " '", "ſ"}));
  EXPECT_EQ(split("!hello \thi \n\n  \n x  ", P::llama3), (V{"!hello", " ", "\thi", " \n\n  \n", " x", "  "}));
  EXPECT_EQ(split("a\r\n\r\nb", P::llama3), (V{"a", "\r\n\r\n", "b"}));
}

TEST(TokenizerPreTokenize, DeepSeekV3Patterns) {
  using P = lca::model::SplitPattern;
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello, world! 12345", P::deepseek3_digits), (V{"Hello, world! ", "123", "45"}));
  EXPECT_EQ(split("ab日本語cdカタカナ한", P::deepseek3_cjk), (V{"ab", "日本語", "cd", "カタカナ", "한"}));
  EXPECT_EQ(split("'s (hello) don't\n\n  x", P::deepseek3),
            (V{"'s", " (", "hello", ")", " don", "'t", "\n\n", " ", " x"}));
  // What matches nothing (numbers, format characters) stays as gap pieces.
  EXPECT_EQ(split("12", P::deepseek3), (V{"12"}));
  EXPECT_EQ(split("x\u200b\u200by 1b", P::deepseek3), (V{"x", "\u200b", "\u200by", " ", "1b"}));
  EXPECT_EQ(split("x\u200b\u200by 12", P::deepseek3, false), (V{"x", "\u200by", " "}));  // Removed + invert
  EXPECT_EQ(split("e\u0301\u0301!!\r\n", P::deepseek3), (V{"e\u0301\u0301", "!!\r\n"}));
}

TEST(TokenizerPreTokenize, DigitsAndCoverage) {
  using V = std::vector<std::string>;
  auto digits = [](std::string_view t, bool individual) {
    std::vector<std::string_view> v;
    lca::model::split_digits(t, individual, v);
    return V(v.begin(), v.end());
  };
  EXPECT_EQ(digits("ab12c３４", true), (V{"ab", "1", "2", "c", "３", "４"}));
  EXPECT_EQ(digits("ab12c３４", false), (V{"ab", "12", "c", "３４"}));
  EXPECT_EQ(digits("", true), V{});
  // Every split covers its text exactly, with no empty piece.
  Rng rng(2);
  for (int i = 0; i < 300; ++i) {
    const std::string s = random_text(rng, static_cast<int>(rng.uniform_int(0, 40)));
    for (auto p : {lca::model::SplitPattern::gpt2, lca::model::SplitPattern::llama3, lca::model::SplitPattern::qwen2,
                   lca::model::SplitPattern::deepseek3_digits, lca::model::SplitPattern::deepseek3_cjk,
                   lca::model::SplitPattern::deepseek3}) {
      std::string joined;
      for (const auto& piece : split(s, p)) {
        EXPECT_FALSE(piece.empty());
        joined += piece;
      }
      EXPECT_EQ(joined, s);
    }
  }
}

// ---- byte-level BPE --------------------------------------------------------------

TEST(TokenizerBpe, MatchesNaiveMergeByRankOnRandomVocabularies) {
  Rng rng(3);
  for (const char* pre : {"gpt2", "llama3", "qwen2", "smollm", "deepseek-v3"}) {
    for (int trial = 0; trial < 4; ++trial) {
      RandomVocab r = random_byte_level(rng, pre, static_cast<int>(rng.uniform_int(20, 200)));
      const Tokenizer tok = Tokenizer::from_vocab(r.vocab);
      for (int i = 0; i < 60; ++i) {
        const std::string text = random_text(rng, static_cast<int>(rng.uniform_int(1, 60)));
        std::vector<int64_t> want;
        for (const std::string& piece : tok.pre_tokenize(text))
          for (const std::string& t : naive_bpe(chars_of(piece), r.rank)) want.push_back(r.id.at(t));
        ASSERT_EQ(tok.encode(text), want) << pre << " text '" << text << "'";
      }
    }
  }
}

TEST(TokenizerBpe, HandBuiltMergesGiveKnownTokens) {
  BpeVocab v;
  v.tokens = gpt2_byte_chars();  // ids 0..255
  const std::vector<std::string> merged = {"he", "ll", "hell", "hello", "\xC4\xA0w", "or", "\xC4\xA0wor", "ld"};
  v.tokens.insert(v.tokens.end(), merged.begin(), merged.end());  // ids 256..263
  v.merges = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "o r", "\xC4\xA0w or", "l d"};
  const Tokenizer tok = Tokenizer::from_vocab(v);
  // "hello" -> hello; " world" -> Ġwor ld; "!" -> its byte's token (id = byte value here).
  EXPECT_EQ(tok.encode("hello world!"), (std::vector<int64_t>{259, 262, 263, '!'}));
  EXPECT_EQ(tok.decode(tok.encode("hello world!")), "hello world!");
  EXPECT_EQ(tok.token(262), " wor");
  EXPECT_EQ(tok.vocab_size(), 264);
  EXPECT_EQ(tok.token_id("hell"), 258);
  EXPECT_EQ(tok.token_id("nope"), -1);
}

TEST(TokenizerBpe, RoundTripsArbitraryUtf8AndStreamsByteExact) {
  Rng rng(4);
  for (const char* pre : {"gpt2", "llama3", "qwen2", "smollm", "deepseek-v3"}) {
    RandomVocab r = random_byte_level(rng, pre, 150);
    const Tokenizer tok = Tokenizer::from_vocab(r.vocab);
    for (int i = 0; i < 200; ++i) {
      std::string text = random_text(rng, static_cast<int>(rng.uniform_int(0, 80)));
      if (i % 10 == 0) {  // random code points of every plane
        for (int k = 0; k < 20; ++k) {
          char32_t cp = static_cast<char32_t>(rng.uniform_int(1, 0x10FFFF));
          if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xE000;
          text += utf8(cp);
        }
      }
      const std::vector<int64_t> ids = tok.encode(text);
      ASSERT_EQ(tok.decode(ids), text) << pre;
      std::string streamed;
      for (const int64_t id : ids) streamed += tok.token(id);
      ASSERT_EQ(streamed, text) << pre;
    }
  }
}

TEST(TokenizerBpe, SpecialTokensMatchLiterallyAndBosEos) {
  Rng rng(5);
  RandomVocab r = random_byte_level(rng, "gpt2", 50);
  BpeVocab v = r.vocab;
  const int64_t base = static_cast<int64_t>(v.tokens.size());
  v.tokens.push_back("<|im_start|>");
  v.tokens.push_back("<|im_end|>");
  v.tokens.push_back("<|im");  // a shorter literal: the longest match wins
  v.tokens.push_back("<tool>");
  v.special_ids = {base, base + 1, base + 2};
  v.user_defined_ids = {base + 3};
  v.bos_id = base;
  v.eos_id = base + 1;
  v.add_bos = true;
  v.add_eos = true;
  const Tokenizer tok = Tokenizer::from_vocab(v);
  EXPECT_EQ(tok.bos_id(), base);
  EXPECT_EQ(tok.eos_id(), base + 1);
  const std::vector<int64_t> ids = tok.encode("<|im_start|>a<|im<tool><|im_end|>");
  const std::vector<int64_t> want = {base, base, r.id.at("a"), base + 2, base + 3, base + 1, base + 1};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok.decode(ids), "<|im_start|><|im_start|>a<|im<tool><|im_end|><|im_end|>");
  EXPECT_EQ(tok.decode(ids, true), "a<tool>");
  EXPECT_TRUE(tok.is_special(base));
  EXPECT_FALSE(tok.is_special(base + 3));
  EXPECT_EQ(tok.encode("a", false), (std::vector<int64_t>{r.id.at("a")}));
}

TEST(TokenizerBpe, EncodesAQuarterMegabyteQuickly) {
  Rng rng(6);
  RandomVocab r = random_byte_level(rng, "llama3", 400);
  const Tokenizer tok = Tokenizer::from_vocab(r.vocab);
  std::string text;
  while (text.size() < (256u << 10)) text += random_text(rng, 100);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int64_t> ids = tok.encode(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(tok.decode(ids), text);
  std::printf("[ info     ] %zu bytes -> %zu ids in %.3f s (%.1f MB/s)\n", text.size(), ids.size(), s,
              text.size() / s / 1e6);
}

// ---- SentencePiece-style BPE ----------------------------------------------------------

// <unk> <s> </s>, the 256 byte tokens, "▁", letters and merges over them.
BpeVocab sentencepiece_vocab(bool byte_tokens) {
  BpeVocab v;
  v.kind = BpeVocab::Kind::sentencepiece;
  v.tokens = {"<unk>", "<s>", "</s>"};
  if (byte_tokens) {
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      v.tokens.push_back(buf);
    }
  }
  for (const char* t : {"\xE2\x96\x81", "a", "b", "c", "\xE2\x96\x81" "a", "ab", "\xE2\x96\x81" "ab", "bc"})
    v.tokens.push_back(t);
  v.merges = {"\xE2\x96\x81 a", "a b", "\xE2\x96\x81" "a b", "b c"};
  v.special_ids = {0, 1, 2};
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  return v;
}

TEST(TokenizerSentencePiece, MergesByteFallbackAndDecode) {
  const BpeVocab v = sentencepiece_vocab(true);
  const Tokenizer tok = Tokenizer::from_vocab(v);
  auto id = [&](const std::string& s) { return tok.token_id(s); };
  const std::string sp = "\xE2\x96\x81";
  // "ab abc" -> "▁ab▁abc": ▁ a first (leftmost of rank 0), then ▁a b twice.
  EXPECT_EQ(tok.encode("ab abc"), (std::vector<int64_t>{1, id(sp + "ab"), id(sp + "ab"), id("c")}));
  // é has no token: its UTF-8 bytes as <0xC3> <0xA9>.
  EXPECT_EQ(tok.encode("é", false), (std::vector<int64_t>{id(sp), id("<0xC3>"), id("<0xA9>")}));
  for (const std::string text : {"ab é", "  a  b ", "日本 abc\n", "x"}) {
    const auto ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids, true), text);  // the leading "▁" is stripped
  }
  EXPECT_EQ(tok.decode(tok.encode("ab")), "<s> ab");
  // Streaming: bytes pass through as bytes, spaces are kept.
  EXPECT_EQ(tok.token(id("<0xC3>")), "\xC3");
  EXPECT_EQ(tok.token(id(sp + "ab")), " ab");
  // A cut byte sequence decodes as one U+FFFD per byte, as Hugging Face's ByteFallback.
  const std::vector<int64_t> cut = {id("a"), id("<0xE6>"), id("<0x97>")};
  EXPECT_EQ(tok.decode(cut), "a\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerSentencePiece, UnknownCharactersWithoutByteTokensFuseIntoOneUnk) {
  const Tokenizer tok = Tokenizer::from_vocab(sentencepiece_vocab(false));
  const std::vector<int64_t> ids = tok.encode("a日本b", false);
  EXPECT_EQ(ids, (std::vector<int64_t>{tok.token_id("\xE2\x96\x81" "a"), 0, tok.token_id("b")}));
}

TEST(TokenizerSentencePiece, ScoreRankedMergesMatchNaiveHighestScoreFirst) {
  Rng rng(7);
  for (int trial = 0; trial < 6; ++trial) {
    BpeVocab v;
    v.kind = BpeVocab::Kind::sentencepiece;
    v.tokens = {"<unk>"};
    v.scores = {0};
    v.special_ids = {0};
    v.unk_id = 0;
    std::vector<std::string> pool = {"\xE2\x96\x81", "a", "b", "c", "d"};
    std::set<std::string> have(pool.begin(), pool.end());
    for (const auto& t : pool) {
      v.tokens.push_back(t);
      v.scores.push_back(0);
    }
    while (v.tokens.size() < 60) {
      const std::string t = rng.pick(pool) + rng.pick(pool);
      if (have.insert(t).second) {
        pool.push_back(t);
        v.tokens.push_back(t);
        v.scores.push_back(static_cast<float>(rng.uniform_int(-20, -1)));  // ties on purpose
      }
    }
    const Tokenizer tok = Tokenizer::from_vocab(v);
    std::map<std::string, float> score;
    for (size_t i = 1; i < v.tokens.size(); ++i) score[v.tokens[i]] = v.scores[i];
    for (int i = 0; i < 50; ++i) {
      std::string text;
      const std::vector<std::string> letters = {"a", "b", "c", "d", " "};
      for (int64_t k = rng.uniform_int(1, 30); k > 0; --k) text += rng.pick(letters);
      std::string norm = "\xE2\x96\x81";
      for (const char c : text) norm += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
      // SentencePiece: merge the pair making the highest-scoring token, leftmost first.
      std::vector<std::string> sym = chars_of(norm);
      for (;;) {
        int at = -1;
        for (size_t k = 0; k + 1 < sym.size(); ++k) {
          auto it = score.find(sym[k] + sym[k + 1]);
          if (it != score.end() && (at < 0 || it->second > score.at(sym[at] + sym[at + 1]))) at = static_cast<int>(k);
        }
        if (at < 0) break;
        sym[at] += sym[at + 1];
        sym.erase(sym.begin() + at + 1);
      }
      std::vector<int64_t> want;
      for (const auto& s : sym) want.push_back(tok.token_id(s));
      ASSERT_EQ(tok.encode(text), want) << text;
    }
  }
}

// ---- tokenizer.json ------------------------------------------------------------------

// A small GPT-2-style tokenizer.json: byte vocabulary, a few merges, one special token.
json gpt2_json() {
  json vocab = json::object();
  const auto chars = gpt2_byte_chars();
  for (int b = 0; b < 256; ++b) vocab[chars[b]] = b;
  vocab["he"] = 256;
  vocab["llo"] = 257;
  vocab["ll"] = 258;
  vocab["hello"] = 259;
  vocab["<|endoftext|>"] = 260;
  return {
      {"version", "1.0"},
      {"added_tokens",
       json::array({{{"id", 260}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}, {"trim_offsets", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
        {"vocab", vocab}, {"merges", json::array({"h e", "l l", json::array({"ll", "o"}), "he llo"})}}},
  };
}

Tokenizer load(const json& j) { return Tokenizer::from_tokenizer_json_text(j.dump(), "tok.json"); }

TEST(TokenizerJson, ReadsGpt2StyleFileWithBothMergeForms) {
  const Tokenizer tok = load(gpt2_json());
  EXPECT_EQ(tok.encode("hello<|endoftext|>hello"), (std::vector<int64_t>{259, 260, 259}));
  EXPECT_EQ(tok.decode(std::vector<int64_t>{259, 260, 259}, true), "hellohello");
  EXPECT_EQ(tok.eos_id(), 260);  // by its well-known name
  EXPECT_EQ(tok.bos_id(), -1);
  EXPECT_EQ(tok.vocab_size(), 261);
}

TEST(TokenizerJson, TemplateProcessingAddsBosAndTokenizerConfigNamesEos) {
  json j = gpt2_json();
  j["post_processor"] = json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "trim_offsets": false},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<bos>": {"id": "<bos>", "ids": [256], "tokens": ["he"]}}}]})");
  char tmpl[] = "/tmp/lca_tokenizer_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir(tmpl);
  std::ofstream(dir / "tokenizer.json") << j.dump();
  const Tokenizer plain = Tokenizer::from_tokenizer_json((dir / "tokenizer.json").string());
  EXPECT_EQ(plain.encode("hello"), (std::vector<int64_t>{256, 259}));
  EXPECT_EQ(plain.encode("hello", false), (std::vector<int64_t>{259}));
  EXPECT_EQ(plain.bos_id(), 256);
  EXPECT_EQ(plain.eos_id(), 260);
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": null, "eos_token": {"content": "hello"}})";
  const Tokenizer configured = Tokenizer::from_tokenizer_json((dir / "tokenizer.json").string());
  EXPECT_EQ(configured.bos_id(), 256);
  EXPECT_EQ(configured.eos_id(), 259);
  fs::remove_all(dir);
}

TEST(TokenizerJson, ErrorsNameTheFileAndTheField) {
  auto with = [](const std::function<void(json&)>& edit) {
    json j = gpt2_json();
    edit(j);
    return j;
  };
  auto expect = [&](const std::function<void(json&)>& edit, const std::vector<std::string>& parts) {
    std::vector<std::string> all = parts;
    all.push_back("tok.json");
    expect_error([&] { load(with(edit)); }, all);
  };
  expect([](json& j) { j.erase("model"); }, {"\"model\"", "missing"});
  expect([](json& j) { j["model"]["type"] = "WordPiece"; }, {"\"model.type\"", "WordPiece", "BPE"});
  expect([](json& j) { j["model"]["vocab"] = json::array(); }, {"\"model.vocab\"", "an array"});
  expect([](json& j) { j["model"]["vocab"]["x"] = -1; }, {"\"model.vocab.x\"", ">= 0"});
  expect([](json& j) { j["model"]["merges"] = "h e"; }, {"\"model.merges\"", "expected an array"});
  expect([](json& j) { j["model"]["merges"][1] = "ll"; }, {"\"model.merges[1]\"", "'ll'", "separated by a space"});
  expect([](json& j) { j["model"]["merges"][0] = "h q q"; }, {"\"model.merges[0]\"", "'q q'", "not in the vocabulary"});
  expect([](json& j) { j["model"]["merges"][0] = json::array({"h"}); }, {"\"model.merges[0]\"", "expected 2"});
  expect([](json& j) { j["model"]["merges"].push_back("e h"); },
         {"\"model.merges[4]\"", "'eh'", "not in the vocabulary"});
  expect([](json& j) { j["model"]["merges"][2] = 7; }, {"\"model.merges[2]\"", "a number"});
  expect([](json& j) { j["model"]["dropout"] = 0.1; }, {"\"model.dropout\"", "not supported"});
  expect([](json& j) { j["model"]["unk_token"] = "<unk>"; }, {"\"model.unk_token\"", "'<unk>'"});
  expect([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }, {"\"model.continuing_subword_prefix\""});
  expect([](json& j) { j["pre_tokenizer"]["type"] = "Whitespace"; },
         {"\"pre_tokenizer.type\"", "'Whitespace'", "ByteLevel"});
  expect([](json& j) { j["pre_tokenizer"].erase("type"); }, {"\"pre_tokenizer.type\"", "missing"});
  expect(
      [](json& j) {
        j["pre_tokenizer"] = {{"type", "Sequence"},
                              {"pretokenizers", json::array({{{"type", "Split"},
                                                              {"pattern", {{"Regex", "\\w+|\\s+"}}},
                                                              {"behavior", "Isolated"},
                                                              {"invert", false}}})}};
      },
      {"\"pre_tokenizer.pretokenizers[0].pattern.Regex\"", "\\w+|\\s+", "not one of the supported"});
  expect(
      [](json& j) {
        j["pre_tokenizer"] = {{"type", "Split"},
                              {"pattern", {{"Regex", lca::model::pattern_regex(lca::model::SplitPattern::llama3)}}},
                              {"behavior", "Removed"},
                              {"invert", false}};
      },
      {"\"pre_tokenizer.behavior\"", "Removed", "invert false"});
  expect(
      [](json& j) {
        j["pre_tokenizer"] = {{"type", "Sequence"},
                              {"pretokenizers", json::array({{{"type", "ByteLevel"}}, {{"type", "Digits"}}})}};
      },
      {"\"pre_tokenizer.pretokenizers[1]\"", "follows a ByteLevel"});
  expect([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }, {"\"normalizer.type\"", "'Lowercase'"});
  expect([](json& j) { j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", "x"}}; },
         {"\"normalizer.pattern.Regex\"", "regex"});
  expect([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, {"\"decoder.type\"", "'WordPiece'"});
  expect([](json& j) { j["decoder"] = {{"type", "Strip"}, {"content", " "}, {"start", -1}, {"stop", 0}}; },
         {"\"decoder.start\"", ">= 0"});
  expect([](json& j) { j["post_processor"] = {{"type", "RobertaProcessing"}}; },
         {"\"post_processor.type\"", "'RobertaProcessing'"});
  expect([](json& j) { j["added_tokens"][0]["lstrip"] = true; }, {"\"added_tokens[0].lstrip\"", "not supported"});
  expect([](json& j) { j["added_tokens"][0].erase("id"); }, {"\"added_tokens[0].id\"", "missing"});
  expect([](json& j) { j = json::array(); }, {"an array", "expected an object"});
  expect_error([] { Tokenizer::from_tokenizer_json_text("{\"model\": ", "tok.json"); }, {"tok.json", "not valid JSON"});
  expect_error([] { Tokenizer::from_tokenizer_json("/nonexistent/tokenizer.json"); },
               {"/nonexistent/tokenizer.json", "cannot open"});
}

TEST(TokenizerErrors, BadVocabulariesAndArguments) {
  BpeVocab good;
  good.tokens = gpt2_byte_chars();
  good.tokens.push_back("he");
  good.merges = {"h e"};
  auto expect = [&](const std::function<void(BpeVocab&)>& edit, const std::vector<std::string>& parts) {
    BpeVocab v = good;
    edit(v);
    expect_error([&] { Tokenizer::from_vocab(v); }, parts);
  };
  expect([](BpeVocab& v) { v.tokens.clear(); }, {"from_vocab", "tokens is empty"});
  expect([](BpeVocab& v) { v.pre_tokenizer = "deepseek-llm"; }, {"pre_tokenizer 'deepseek-llm'", "smollm"});
  expect([](BpeVocab& v) { v.merges = {"he"}; }, {"merges[0]", "'he'"});
  expect([](BpeVocab& v) { v.merges = {"h x y"}; }, {"merges[0]", "'x y'", "not in the vocabulary"});
  expect([](BpeVocab& v) { v.merges = {"e h"}; }, {"merges[0]", "'eh'", "not in the vocabulary"});
  expect([](BpeVocab& v) { v.bos_id = 999; }, {"bos_id = 999"});
  expect([](BpeVocab& v) { v.add_bos = true; }, {"add_bos", "bos_id is -1"});
  expect([](BpeVocab& v) { v.special_ids = {-2}; }, {"special_ids", "-2"});
  expect([](BpeVocab& v) { v.tokens[3] = ""; }, {"tokens[3] is empty"});
  expect(
      [](BpeVocab& v) {
        v.kind = BpeVocab::Kind::sentencepiece;
        v.merges.clear();
      },
      {"scores"});

  const Tokenizer tok = Tokenizer::from_vocab(good);
  expect_error([&] { tok.encode("ok \xC3("); }, {"Tokenizer::encode", "not valid UTF-8", "byte 3"});
  expect_error([&] { tok.decode(std::vector<int64_t>{1, 257}); }, {"Tokenizer::decode", "ids[1] = 257", "257"});
  expect_error([&] { tok.decode(std::vector<int64_t>{-1}); }, {"ids[0] = -1"});
  expect_error([&] { tok.token(400); }, {"Tokenizer::token", "400"});
}

}  // namespace
