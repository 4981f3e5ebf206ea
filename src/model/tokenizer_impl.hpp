// The tokenizer's internals, shared by the tokenizer.json reader and the
// in-memory builder: a pipeline of the Hugging Face `tokenizers` steps that
// lca supports, each step a small tagged struct.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "lca/tokenizer.hpp"
#include "model/pretokenize.hpp"

namespace lca {

namespace model {

struct NormalizerStep {
  enum class Kind { prepend, replace, nfc };
  Kind kind{};
  std::string text{};     // prepend: what goes first; replace: the pattern
  std::string content{};  // replace: what replaces it
};

// Metaspace's prepend_scheme.
enum class PrependScheme { always, first, never };

struct PreTokenizerStep {
  enum class Kind { split, digits, byte_level, metaspace };
  Kind kind{};
  SplitPattern pattern = SplitPattern::gpt2;  // split
  bool keep_gaps = true;                      // split: Isolated (true) or Removed + invert (false)
  bool individual_digits = false;             // digits
  bool add_prefix_space = false;              // byte_level
  bool use_regex = true;                      // byte_level
  std::string replacement{};                  // metaspace
  PrependScheme prepend_scheme = PrependScheme::always;
  bool split = true;  // metaspace
};

struct DecoderStep {
  enum class Kind { byte_level, replace, byte_fallback, fuse, strip, metaspace };
  Kind kind{};
  std::string pattern{}, content{};                      // replace; strip: content; metaspace: replacement
  int64_t start = 0, stop = 0;                           // strip
  PrependScheme prepend_scheme = PrependScheme::always;  // metaspace
};

struct AddedToken {
  std::string content;
  int64_t id;
  bool special;
  bool normalized;  // matched in the normalized text (else in the raw text)
};

// Leftmost-longest literal matching of added tokens (what Hugging Face's
// Aho-Corasick with MatchKind::LeftmostLongest finds).
class LiteralMatcher {
 public:
  void add(std::string text, int64_t id);
  void finish();  // call after the last add
  bool empty() const { return count_ == 0; }
  struct Match {
    size_t pos = std::string_view::npos, len = 0;
    int64_t id = -1;
  };
  Match find(std::string_view text, size_t from) const;

 private:
  std::array<std::vector<std::pair<std::string, int64_t>>, 256> by_first_byte_;
  size_t count_ = 0;
};

// String-keyed maps looked up by string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>>;

struct Merge {
  int32_t rank;
  int32_t new_id;
};

}  // namespace model

struct Tokenizer::Impl {
  std::string source;  // for messages

  // Vocabulary: every id, the model's and the added tokens'.
  enum class IdKind : uint8_t { none, model, added, special };
  std::vector<std::string> id_to_token;
  std::vector<IdKind> id_kind;
  model::TokenMap vocab;       // the BPE model's tokens
  model::TokenMap all_tokens;  // model and added (added win)

  // The BPE model.
  std::unordered_map<uint64_t, model::Merge> merges;  // (left id << 32 | right id)
  bool byte_level_input = false;  // the pieces reach BPE byte-to-unicode mapped (ByteLevel pre-tokenizer)
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool fuse_unk = false;
  int64_t unk_id = -1;
  std::array<int64_t, 256> byte_char_id{};      // byte-level: id of each byte's mapped character, or -1
  std::array<int64_t, 256> byte_fallback_id{};  // id of "<0xNN>", or -1

  std::vector<model::NormalizerStep> normalizers;
  std::vector<model::PreTokenizerStep> pre_tokenizers;
  bool has_decoder = false;
  std::vector<model::DecoderStep> decoders;

  std::vector<model::AddedToken> added;
  model::LiteralMatcher raw_matcher, normalized_matcher;

  std::vector<int64_t> prefix_ids, suffix_ids;  // the post-processor's, with add_special
  int64_t bos = -1, eos = -1;

  // Steps of construction, in order (tokenizer.cpp).
  void set_vocab(std::vector<std::string> tokens_by_id);  // model tokens; gaps are ""
  void add_merge(int64_t left, int64_t right, int32_t rank, const std::string& where);
  // Call once everything above is set: builds the byte tables and the matchers.
  void finish();

  // Encoding (tokenizer.cpp).
  std::string normalize(std::string_view text) const;
  void encode_segment(std::string_view text, bool at_start, std::vector<int64_t>& out) const;
  void encode_normalized(std::string_view text, bool at_start, std::vector<int64_t>& out) const;
  std::vector<std::string> pre_tokenize(std::string_view text, bool at_start) const;
  void bpe(std::string_view piece, std::vector<int64_t>& out) const;
  std::string decode_tokens(std::vector<std::string> tokens, bool streaming) const;
};

// The GPT-2 byte-to-unicode map: byte -> its printable stand-in, as UTF-8.
const std::array<std::string, 256>& byte_level_chars();

}  // namespace lca
