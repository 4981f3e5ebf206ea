// The model runtime's tokenizer: byte-level BPE (GPT-2, Llama-3, Qwen2,
// SmolLM2) and SentencePiece-style BPE with byte fallback (Llama-2, MiniCPM),
// read from a Hugging Face tokenizer.json or built from a vocabulary in memory
// (e.g. a GGUF file's tokenizer.ggml.* metadata).
//
// Encoding follows Hugging Face `tokenizers` step by step: added tokens are
// matched literally first, the rest is normalized, pre-tokenized (the GPT-2,
// Llama-3, Qwen2 and DeepSeek-V3 split patterns and Digits, hand-coded), byte-mapped where
// the tokenizer is byte-level, and merged by rank. Anything a file asks for
// that is not supported throws lca::Error naming the file and the field.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lca {

// What a tokenizer is built from, independent of the file format.
struct BpeVocab {
  // byte_level: GPT-2-style BPE over bytes mapped to printable characters.
  // sentencepiece: BPE over characters, spaces as U+2581, bytes of unknown
  // characters as <0xNN> tokens (byte fallback).
  enum class Kind { byte_level, sentencepiece };
  Kind kind = Kind::byte_level;
  // byte_level only, GGUF's tokenizer.ggml.pre: "gpt2" (or "gpt-2"), "llama3"
  // (or "llama-v3", "llama-bpe"; merges ignored for a piece that is a token),
  // "qwen2" (no NFC, as llama.cpp), "smollm" (each number alone, then gpt2),
  // "deepseek-v3".
  std::string pre_tokenizer = "gpt2";
  std::vector<std::string> tokens;  // id -> token as stored (byte_level: GPT-2 byte-to-unicode mapped)
  std::vector<std::string> merges;  // "a b", rank = index
  // sentencepiece only, used when merges is empty: one score per token; a pair
  // merges when its concatenation is a token, higher score first (GGUF's
  // tokenizer.ggml.scores for SentencePiece models).
  std::vector<float> scores;
  std::vector<int64_t> special_ids;       // control tokens: matched literally before BPE, skipped by skip_special
  std::vector<int64_t> user_defined_ids;  // matched literally before BPE, kept by skip_special
  int64_t bos_id = -1, eos_id = -1;
  int64_t unk_id = -1;           // sentencepiece: for characters with neither a token nor byte tokens
  bool add_bos = false;          // encode(add_special = true) puts bos_id first
  bool add_eos = false;          // ... and eos_id last
  bool add_space_prefix = true;  // sentencepiece: "▁" before the text (and after each literal token)
};

// Immutable once built: copies share it, and every method may be called from
// several threads at once.
class Tokenizer {
 public:
  // A Hugging Face tokenizer.json (model BPE).
  static Tokenizer from_tokenizer_json(const std::string& path);
  // The same from the file's contents; `source` names it in messages.
  static Tokenizer from_tokenizer_json_text(std::string_view json_text, const std::string& source);
  static Tokenizer from_vocab(BpeVocab vocab);

  // text must be valid UTF-8. add_special adds what the tokenizer's post-processor
  // (tokenizer.json) or add_bos/add_eos (BpeVocab) ask for.
  std::vector<int64_t> encode(std::string_view text, bool add_special = true) const;
  // Tokens' text, decoded as the tokenizer's decoder does; invalid UTF-8 (a cut
  // multi-byte character) comes out as U+FFFD, as Hugging Face's decode gives it.
  std::string decode(std::span<const int64_t> ids, bool skip_special = false) const;
  // For streaming: the bytes one token contributes inside a text (may be part
  // of a UTF-8 sequence). The decoder's start-of-text rules (strip the leading
  // space a SentencePiece tokenizer added) are not applied: see decode.
  std::string token(int64_t id) const;
  // For tests and inspection: the pieces BPE sees for `text` taken as one
  // segment (no literal tokens matched): normalized and pre-tokenized,
  // byte-level pieces in their mapped form (Hugging Face's pre_tokenize_str).
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  // The token's string as stored in the vocabulary (byte-level: mapped characters).
  const std::string& token_string(int64_t id) const;
  // The id of a token's stored string, or -1.
  int64_t token_id(std::string_view token_string) const;
  bool is_special(int64_t id) const;

  int64_t vocab_size() const;  // one more than the largest id, added tokens included
  int64_t bos_id() const;      // -1 when unknown
  int64_t eos_id() const;      // -1 when unknown

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace lca
