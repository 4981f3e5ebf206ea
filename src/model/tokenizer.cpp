// The tokenizer (lca/tokenizer.hpp): encoding, decoding and the in-memory
// builder. The tokenizer.json reader is tokenizer_json.cpp.
#include "lca/tokenizer.hpp"

#include <algorithm>
#include <cstdio>
#include <queue>
#include <utility>

#include "lca/error.hpp"
#include "model/text_file.hpp"
#include "model/tokenizer_impl.hpp"
#include "model/unicode.hpp"

namespace lca {

using model::AddedToken;
using model::DecoderStep;
using model::NormalizerStep;
using model::PrependScheme;
using model::PreTokenizerStep;

namespace {

// U+2581, SentencePiece's stand-in for a space.
constexpr std::string_view kMetaspace = "\xE2\x96\x81";

uint64_t pair_key(int64_t left, int64_t right) {
  return (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
}

void replace_all(std::string& s, std::string_view pattern, std::string_view with) {
  if (pattern.empty() || s.find(pattern) == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  for (size_t at; (at = s.find(pattern, i)) != std::string::npos; i = at + pattern.size()) {
    out.append(s, i, at - i);
    out += with;
  }
  out.append(s, i);
  s = std::move(out);
}

std::string byte_token_name(unsigned b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// Inverse of byte_level_chars: code point -> byte, -1 for characters outside the map.
const std::array<int16_t, 512>& byte_level_inverse() {
  static const auto table = [] {
    std::array<int16_t, 512> t;
    t.fill(-1);
    const auto& chars = byte_level_chars();
    for (int b = 0; b < 256; ++b) t[model::unicode::decode_utf8(chars[b], 0).cp] = static_cast<int16_t>(b);
    return t;
  }();
  return table;
}

// One token through the ByteLevel decoder: its bytes, or its text unchanged
// when a character is not one of the 256 stand-ins (as Hugging Face does).
void append_byte_level_token(std::string& out, const std::string& token) {
  const auto& inverse = byte_level_inverse();
  const size_t start = out.size();
  for (size_t i = 0; i < token.size();) {
    const auto d = model::unicode::decode_utf8(token, i);
    if (d.cp >= inverse.size() || inverse[d.cp] < 0) {
      out.resize(start);
      out += token;
      return;
    }
    out += static_cast<char>(inverse[d.cp]);
    i += d.len;
  }
}

// "<0xNN>" -> NN, else -1.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

const std::array<std::string, 256>& byte_level_chars() {
  // Printable Latin-1 bytes stand for themselves; the rest map to U+0100 on, in byte order.
  static const auto table = [] {
    std::array<std::string, 256> t;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      model::unicode::append_utf8(t[b], printable ? static_cast<char32_t>(b) : next++);
    }
    return t;
  }();
  return table;
}

namespace model {

void LiteralMatcher::add(std::string text, int64_t id) {
  if (text.empty()) return;
  const auto first = static_cast<unsigned char>(text[0]);
  by_first_byte_[first].emplace_back(std::move(text), id);
  ++count_;
}

void LiteralMatcher::finish() {
  for (auto& list : by_first_byte_)
    std::stable_sort(list.begin(), list.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

LiteralMatcher::Match LiteralMatcher::find(std::string_view text, size_t from) const {
  for (size_t i = from; i < text.size(); ++i) {
    const auto& list = by_first_byte_[static_cast<unsigned char>(text[i])];
    for (const auto& [s, id] : list)
      if (text.compare(i, s.size(), s) == 0) return {i, s.size(), id};
  }
  return {};
}

}  // namespace model

// ---- construction --------------------------------------------------------

void Tokenizer::Impl::set_vocab(std::vector<std::string> tokens_by_id) {
  id_to_token = std::move(tokens_by_id);
  id_kind.assign(id_to_token.size(), IdKind::none);
  vocab.reserve(id_to_token.size());
  for (size_t id = 0; id < id_to_token.size(); ++id) {
    if (id_to_token[id].empty()) continue;
    id_kind[id] = IdKind::model;
    vocab.emplace(id_to_token[id], static_cast<int64_t>(id));  // a repeated string keeps its first id
  }
}

void Tokenizer::Impl::add_merge(int64_t left, int64_t right, int32_t rank, const std::string& where) {
  const std::string merged = id_to_token[left] + id_to_token[right];
  auto it = vocab.find(merged);
  LCA_CHECK(it != vocab.end(), where, ": merge '", id_to_token[left], " ", id_to_token[right], "' makes '", merged,
            "', which is not in the vocabulary");
  merges[pair_key(left, right)] = {rank, static_cast<int32_t>(it->second)};
}

void Tokenizer::Impl::finish() {
  LCA_CHECK(id_to_token.size() < (size_t{1} << 31), source, ": the vocabulary has more than 2^31 tokens");
  // Added tokens: literal matching, ids beyond the model's, specials.
  for (const AddedToken& t : added) {
    const auto id = static_cast<size_t>(t.id);
    if (id >= id_to_token.size()) {
      id_to_token.resize(id + 1);
      id_kind.resize(id + 1, IdKind::none);
    }
    id_kind[id] = t.special ? IdKind::special : IdKind::added;
    if (t.normalized && !normalizers.empty()) {
      // Matched in the normalized text, and decoded from that form too (what
      // Hugging Face's decoder is given for such a token).
      id_to_token[id] = normalize(t.content);
      normalized_matcher.add(id_to_token[id], t.id);
    } else {
      id_to_token[id] = t.content;
      raw_matcher.add(t.content, t.id);
    }
  }
  raw_matcher.finish();
  normalized_matcher.finish();
  all_tokens = vocab;
  for (const AddedToken& t : added) all_tokens[t.content] = t.id;

  const auto& chars = byte_level_chars();
  for (unsigned b = 0; b < 256; ++b) {
    auto it = vocab.find(chars[b]);
    byte_char_id[b] = it == vocab.end() ? -1 : it->second;
    auto fb = vocab.find(byte_token_name(b));
    byte_fallback_id[b] = fb == vocab.end() ? -1 : fb->second;
  }
  byte_level_input = false;
  for (const PreTokenizerStep& p : pre_tokenizers)
    if (p.kind == PreTokenizerStep::Kind::byte_level) byte_level_input = true;
}

// ---- encoding ------------------------------------------------------------

std::string Tokenizer::Impl::normalize(std::string_view text) const {
  std::string s(text);
  for (const NormalizerStep& n : normalizers) {
    switch (n.kind) {
      case NormalizerStep::Kind::prepend:
        if (!s.empty()) s.insert(0, n.text);
        break;
      case NormalizerStep::Kind::replace: replace_all(s, n.text, n.content); break;
      case NormalizerStep::Kind::nfc: s = model::unicode::nfc(s); break;
    }
  }
  return s;
}

void Tokenizer::Impl::encode_segment(std::string_view text, bool at_start, std::vector<int64_t>& out) const {
  if (normalizers.empty()) return encode_normalized(text, at_start, out);
  const std::string norm = normalize(text);
  const std::string_view s = norm;
  size_t pos = 0;
  if (!normalized_matcher.empty()) {
    for (auto m = normalized_matcher.find(s, 0); m.id >= 0; m = normalized_matcher.find(s, pos)) {
      if (m.pos > pos) encode_normalized(s.substr(pos, m.pos - pos), at_start && pos == 0, out);
      out.push_back(m.id);
      pos = m.pos + m.len;
    }
  }
  if (pos < s.size()) encode_normalized(s.substr(pos), at_start && pos == 0, out);
}

void Tokenizer::Impl::encode_normalized(std::string_view text, bool at_start, std::vector<int64_t>& out) const {
  if (text.empty()) return;
  if (pre_tokenizers.empty()) return bpe(text, out);
  for (const std::string& piece : pre_tokenize(text, at_start)) bpe(piece, out);
}

std::vector<std::string> Tokenizer::Impl::pre_tokenize(std::string_view text, bool at_start) const {
  if (text.empty()) return {};
  // Pieces after each pre-tokenizer; only the first piece can be at the start of the text.
  std::vector<std::string> pieces{std::string(text)}, next;
  std::vector<std::string_view> views;
  for (const PreTokenizerStep& p : pre_tokenizers) {
    next.clear();
    for (size_t k = 0; k < pieces.size(); ++k) {
      std::string& piece = pieces[k];
      views.clear();
      switch (p.kind) {
        case PreTokenizerStep::Kind::split: model::split_pattern(piece, p.pattern, views, p.keep_gaps); break;
        case PreTokenizerStep::Kind::digits: model::split_digits(piece, p.individual_digits, views); break;
        case PreTokenizerStep::Kind::byte_level:
          if (p.add_prefix_space && piece[0] != ' ') piece.insert(0, " ");
          if (p.use_regex)
            model::split_pattern(piece, model::SplitPattern::gpt2, views);
          else
            views.push_back(piece);
          break;
        case PreTokenizerStep::Kind::metaspace: {
          replace_all(piece, " ", p.replacement);
          const bool starts = piece.compare(0, p.replacement.size(), p.replacement) == 0;
          const bool prepend = p.prepend_scheme == PrependScheme::always ||
                               (p.prepend_scheme == PrependScheme::first && at_start && k == 0);
          if (prepend && !starts) piece.insert(0, p.replacement);
          if (!p.split) {
            views.push_back(piece);
            break;
          }
          // Each replacement character starts a piece (Hugging Face's MergedWithNext).
          std::string_view v = piece;
          size_t start = 0;
          for (size_t at = v.find(p.replacement, 1); at != std::string_view::npos;
               at = v.find(p.replacement, at + p.replacement.size())) {
            views.push_back(v.substr(start, at - start));
            start = at;
          }
          views.push_back(v.substr(start));
          break;
        }
      }
      for (std::string_view v : views)
        if (!v.empty()) next.emplace_back(v);
    }
    pieces.swap(next);
  }
  return pieces;
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int64_t>& out) const {
  if (piece.empty()) return;
  const auto& chars = byte_level_chars();
  if (ignore_merges) {
    std::string word;
    if (byte_level_input)
      for (const char c : piece) word += chars[static_cast<unsigned char>(c)];
    auto it = vocab.find(byte_level_input ? std::string_view(word) : piece);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }

  // The symbols: one per character of the word (the mapped bytes when byte-level),
  // a character without a token as its <0xNN> byte tokens or as unk.
  struct Symbol {
    int64_t id;
    int32_t prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(piece.size());
  // Hugging Face's unk handling: an unknown character leaves an unk pending,
  // emitted before the next known character (fuse_unk: one unk for a run);
  // byte-fallback tokens go straight in.
  bool pending_unk = false;
  auto push = [&](int64_t id) {
    if (pending_unk) {
      pending_unk = false;
      sym.push_back({unk_id, 0, 0});
    }
    sym.push_back({id, 0, 0});
  };
  auto unknown = [&](std::string_view ch) {
    if (byte_fallback) {
      bool all = true;
      for (const char c : ch) all = all && byte_fallback_id[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (const char c : ch) sym.push_back({byte_fallback_id[static_cast<unsigned char>(c)], 0, 0});
        return;
      }
    }
    if (unk_id < 0) return;  // no unk token: the character is dropped, as in Hugging Face
    if (pending_unk && !fuse_unk) sym.push_back({unk_id, 0, 0});
    pending_unk = true;
  };
  if (byte_level_input) {
    for (const char c : piece) {
      const auto b = static_cast<unsigned char>(c);
      if (byte_char_id[b] >= 0)
        push(byte_char_id[b]);
      else
        unknown(chars[b]);
    }
  } else {
    for (size_t i = 0; i < piece.size();) {
      const auto d = model::unicode::decode_utf8(piece, i);
      const std::string_view ch = piece.substr(i, d.len);
      auto it = vocab.find(ch);
      if (it != vocab.end())
        push(it->second);
      else
        unknown(ch);
      i += d.len;
    }
  }
  if (pending_unk) sym.push_back({unk_id, 0, 0});
  const auto n = static_cast<int32_t>(sym.size());
  for (int32_t i = 0; i < n; ++i) {
    sym[i].prev = i - 1;
    sym[i].next = i + 1 < n ? i + 1 : -1;
  }

  // Merge the lowest-ranked pair, leftmost first, until none is left.
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t pos) {
    const int32_t nx = sym[pos].next;
    if (nx < 0) return;
    auto it = merges.find(pair_key(sym[pos].id, sym[nx].id));
    if (it != merges.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = sym[c.pos];
    if (left.id < 0 || left.next < 0) continue;  // merged into its left neighbour, or last
    auto it = merges.find(pair_key(left.id, sym[left.next].id));
    if (it == merges.end() || it->second.new_id != c.new_id) continue;  // stale
    Symbol& right = sym[left.next];
    left.id = c.new_id;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = c.pos;
    right.id = -1;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = sym[i].next) out.push_back(sym[i].id);
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  const Impl& t = *impl_;
  const size_t bad = model::unicode::first_invalid_utf8(text);
  LCA_CHECK(bad == text.size(), "Tokenizer::encode: text is not valid UTF-8 (at byte ", static_cast<int64_t>(bad), ")");
  std::vector<int64_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special) out.insert(out.end(), t.prefix_ids.begin(), t.prefix_ids.end());
  size_t pos = 0;
  if (!t.raw_matcher.empty()) {
    for (auto m = t.raw_matcher.find(text, 0); m.id >= 0; m = t.raw_matcher.find(text, pos)) {
      if (m.pos > pos) t.encode_segment(text.substr(pos, m.pos - pos), pos == 0, out);
      out.push_back(m.id);
      pos = m.pos + m.len;
    }
  }
  if (pos < text.size()) t.encode_segment(text.substr(pos), pos == 0, out);
  if (add_special) out.insert(out.end(), t.suffix_ids.begin(), t.suffix_ids.end());
  return out;
}

// ---- decoding ------------------------------------------------------------

std::string Tokenizer::Impl::decode_tokens(std::vector<std::string> tokens, bool streaming) const {
  if (!has_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  for (const DecoderStep& d : decoders) {
    switch (d.kind) {
      case DecoderStep::Kind::byte_level: {
        std::string bytes;
        for (const std::string& t : tokens) append_byte_level_token(bytes, t);
        tokens.assign(1, streaming ? std::move(bytes) : model::unicode::utf8_lossy(bytes));
        break;
      }
      case DecoderStep::Kind::replace:
        for (std::string& t : tokens) replace_all(t, d.pattern, d.content);
        break;
      case DecoderStep::Kind::byte_fallback: {
        // Runs of <0xNN> tokens become their bytes; a run that is not valid
        // UTF-8 becomes one U+FFFD per byte (Hugging Face's rule).
        std::vector<std::string> next;
        std::string run;
        size_t run_tokens = 0;
        auto flush = [&] {
          if (run_tokens == 0) return;
          if (streaming || model::unicode::first_invalid_utf8(run) == run.size()) {
            next.push_back(run);
          } else {
            for (size_t k = 0; k < run_tokens; ++k) next.emplace_back("\xEF\xBF\xBD");
          }
          run.clear();
          run_tokens = 0;
        };
        for (std::string& t : tokens) {
          const int b = parse_byte_token(t);
          if (b >= 0) {
            run += static_cast<char>(b);
            ++run_tokens;
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(next);
        break;
      }
      case DecoderStep::Kind::fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecoderStep::Kind::strip: {
        if (streaming) break;
        for (std::string& t : tokens) {
          const std::string& c = d.content;
          size_t b = 0, e = t.size();
          for (int64_t k = 0; k < d.start && e - b >= c.size() && t.compare(b, c.size(), c) == 0; ++k) b += c.size();
          for (int64_t k = 0; k < d.stop && e - b >= c.size() && t.compare(e - c.size(), c.size(), c) == 0; ++k)
            e -= c.size();
          t = t.substr(b, e - b);
        }
        break;
      }
      case DecoderStep::Kind::metaspace: {
        // The first token loses every replacement character (Hugging Face's rule
        // for a prefix it added); elsewhere they become spaces.
        for (size_t i = 0; i < tokens.size(); ++i) {
          const bool first = i == 0 && !streaming && d.prepend_scheme != PrependScheme::never;
          replace_all(tokens[i], d.pattern, first ? "" : " ");
        }
        break;
      }
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

std::string Tokenizer::decode(std::span<const int64_t> ids, bool skip_special) const {
  const Impl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    LCA_CHECK(id >= 0 && id < vocab_size() && t.id_kind[id] != Impl::IdKind::none, "Tokenizer::decode: ids[",
              static_cast<int64_t>(i), "] = ", id, " is not a token id (vocabulary size ", vocab_size(), ")");
    if (skip_special && t.id_kind[id] == Impl::IdKind::special) continue;
    tokens.push_back(t.id_to_token[id]);
  }
  return t.decode_tokens(std::move(tokens), false);
}

std::string Tokenizer::token(int64_t id) const {
  const Impl& t = *impl_;
  LCA_CHECK(id >= 0 && id < vocab_size() && t.id_kind[id] != Impl::IdKind::none, "Tokenizer::token: id ", id,
            " is not a token id (vocabulary size ", vocab_size(), ")");
  return t.decode_tokens({t.id_to_token[id]}, true);
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  const Impl& t = *impl_;
  const size_t bad = model::unicode::first_invalid_utf8(text);
  LCA_CHECK(bad == text.size(), "Tokenizer::pre_tokenize: text is not valid UTF-8 (at byte ", static_cast<int64_t>(bad),
            ")");
  std::vector<std::string> pieces = t.pre_tokenize(t.normalize(text), true);
  if (t.byte_level_input) {
    const auto& chars = byte_level_chars();
    for (std::string& p : pieces) {
      std::string mapped;
      for (const char c : p) mapped += chars[static_cast<unsigned char>(c)];
      p = std::move(mapped);
    }
  }
  return pieces;
}

const std::string& Tokenizer::token_string(int64_t id) const {
  const Impl& t = *impl_;
  LCA_CHECK(id >= 0 && id < vocab_size() && t.id_kind[id] != Impl::IdKind::none, "Tokenizer::token_string: id ", id,
            " is not a token id (vocabulary size ", vocab_size(), ")");
  return t.id_to_token[id];
}

int64_t Tokenizer::token_id(std::string_view token_string) const {
  auto it = impl_->all_tokens.find(token_string);
  return it == impl_->all_tokens.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int64_t id) const {
  return id >= 0 && id < vocab_size() && impl_->id_kind[id] == Impl::IdKind::special;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }
int64_t Tokenizer::bos_id() const { return impl_->bos; }
int64_t Tokenizer::eos_id() const { return impl_->eos; }

// ---- from a vocabulary in memory -------------------------------------------

Tokenizer Tokenizer::from_vocab(BpeVocab v) {
  auto impl = std::make_shared<Impl>();
  Impl& t = *impl;
  t.source = "Tokenizer::from_vocab";
  const char* fn = "Tokenizer::from_vocab";
  const auto n = static_cast<int64_t>(v.tokens.size());
  LCA_CHECK(n > 0, fn, ": tokens is empty");
  auto check_id = [&](int64_t id, const char* what) {
    LCA_CHECK(id >= -1 && id < n, fn, ": ", what, " = ", id, " is not a token id (", n, " tokens) or -1");
  };
  check_id(v.bos_id, "bos_id");
  check_id(v.eos_id, "eos_id");
  check_id(v.unk_id, "unk_id");
  LCA_CHECK(!v.add_bos || v.bos_id >= 0, fn, ": add_bos is set but bos_id is -1");
  LCA_CHECK(!v.add_eos || v.eos_id >= 0, fn, ": add_eos is set but eos_id is -1");
  for (int64_t i = 0; i < n; ++i) LCA_CHECK(!v.tokens[i].empty(), fn, ": tokens[", i, "] is empty");

  for (const auto* list : {&v.special_ids, &v.user_defined_ids})
    for (const int64_t id : *list)
      LCA_CHECK(id >= 0 && id < n, fn, ": ", list == &v.special_ids ? "special_ids" : "user_defined_ids", " holds ", id,
                ", not a token id (", n, " tokens)");
  std::vector<char> literal(n, 0);
  for (const int64_t id : v.special_ids) literal[id] = 2;
  for (const int64_t id : v.user_defined_ids)
    if (!literal[id]) literal[id] = 1;
  t.set_vocab(v.tokens);  // literal tokens stay in the model's vocabulary too, as in Hugging Face
  for (int64_t id = 0; id < n; ++id)
    if (literal[id]) t.added.push_back({v.tokens[id], id, literal[id] == 2, false});

  std::string where = fn;
  if (v.kind == BpeVocab::Kind::byte_level) {
    PreTokenizerStep byte_level{.kind = PreTokenizerStep::Kind::byte_level};
    const std::string& pre = v.pre_tokenizer;
    if (pre == "gpt2" || pre == "gpt-2") {
      t.pre_tokenizers = {byte_level};
    } else if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "qwen2") {
      byte_level.use_regex = false;
      const auto pattern = pre == "qwen2" ? model::SplitPattern::qwen2 : model::SplitPattern::llama3;
      t.pre_tokenizers = {{.kind = PreTokenizerStep::Kind::split, .pattern = pattern}, byte_level};
      t.ignore_merges = pre != "qwen2";  // Llama-3's tokenizer.json sets ignore_merges
    } else if (pre == "smollm") {
      t.pre_tokenizers = {{.kind = PreTokenizerStep::Kind::digits, .individual_digits = true}, byte_level};
    } else if (pre == "deepseek-v3") {
      byte_level.use_regex = false;
      auto split = [](model::SplitPattern p) {
        return PreTokenizerStep{.kind = PreTokenizerStep::Kind::split, .pattern = p};
      };
      t.pre_tokenizers = {split(model::SplitPattern::deepseek3_digits), split(model::SplitPattern::deepseek3_cjk),
                          split(model::SplitPattern::deepseek3), byte_level};
    } else {
      detail::fail(fn, ": pre_tokenizer '", pre,
                   "' is not supported (gpt2, gpt-2, llama3, llama-v3, llama-bpe, qwen2, smollm, deepseek-v3)");
    }
    t.has_decoder = true;
    t.decoders = {{.kind = DecoderStep::Kind::byte_level}};
  } else {
    if (v.add_space_prefix) t.normalizers.push_back({NormalizerStep::Kind::prepend, std::string(kMetaspace), ""});
    t.normalizers.push_back({NormalizerStep::Kind::replace, " ", std::string(kMetaspace)});
    t.byte_fallback = true;
    t.fuse_unk = true;  // as Llama-2's tokenizer.json
    t.unk_id = v.unk_id;
    t.has_decoder = true;
    t.decoders = {{.kind = DecoderStep::Kind::replace, .pattern = std::string(kMetaspace), .content = " "},
                  {.kind = DecoderStep::Kind::byte_fallback},
                  {.kind = DecoderStep::Kind::fuse}};
    if (v.add_space_prefix) t.decoders.push_back({.kind = DecoderStep::Kind::strip, .content = " ", .start = 1});
  }

  if (!v.merges.empty()) {
    for (size_t r = 0; r < v.merges.size(); ++r) {
      const std::string& m = v.merges[r];
      const size_t sp = m.find(' ');
      const std::string here = where + ": merges[" + std::to_string(r) + "]";
      LCA_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < m.size(), here, " = '", m,
                "' is not two tokens separated by a space");
      auto a = t.vocab.find(m.substr(0, sp)), b = t.vocab.find(m.substr(sp + 1));
      LCA_CHECK(a != t.vocab.end(), here, ": '", m.substr(0, sp), "' is not in the vocabulary");
      LCA_CHECK(b != t.vocab.end(), here, ": '", m.substr(sp + 1), "' is not in the vocabulary");
      t.add_merge(a->second, b->second, static_cast<int32_t>(r), here);
    }
  } else if (v.kind == BpeVocab::Kind::sentencepiece) {
    LCA_CHECK(static_cast<int64_t>(v.scores.size()) == n, fn,
              ": sentencepiece with no merges needs scores, one per token; got ", static_cast<int64_t>(v.scores.size()),
              " scores for ", n, " tokens");
    // SentencePiece's BPE: merge the adjacent pair whose concatenation is the
    // highest-scoring token, leftmost first. Rank tokens by score; every split
    // of a token into two tokens is a merge of that token's rank.
    std::vector<int64_t> order;
    for (int64_t id = 0; id < n; ++id)
      if (!literal[id] && parse_byte_token(v.tokens[id]) < 0) order.push_back(id);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v.scores[a] > v.scores[b]; });
    int32_t rank = 0;
    for (size_t k = 0; k < order.size(); ++k) {
      if (k > 0 && v.scores[order[k]] != v.scores[order[k - 1]]) ++rank;
      const std::string& s = v.tokens[order[k]];
      for (size_t cut = 1; cut < s.size(); ++cut) {
        if ((static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) continue;  // inside a character
        auto a = t.vocab.find(s.substr(0, cut)), b = t.vocab.find(s.substr(cut));
        if (a == t.vocab.end() || b == t.vocab.end()) continue;
        const uint64_t key = pair_key(a->second, b->second);
        if (!t.merges.count(key)) t.merges[key] = {rank, static_cast<int32_t>(t.vocab.at(s))};
      }
    }
  }

  if (v.add_bos) t.prefix_ids.push_back(v.bos_id);
  if (v.add_eos) t.suffix_ids.push_back(v.eos_id);
  t.bos = v.bos_id;
  t.eos = v.eos_id;
  t.finish();
  return Tokenizer(std::move(impl));
}

}  // namespace lca
