// Hugging Face tokenizer.json (model BPE) -> the tokenizer pipeline. Every
// field lca reads is checked; a field asking for something lca does not do
// throws lca::Error naming the file and the field, never a silent difference.
#include <filesystem>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "lca/error.hpp"
#include "lca/tokenizer.hpp"
#include "model/json_fields.hpp"
#include "model/text_file.hpp"
#include "model/tokenizer_impl.hpp"

namespace lca {

using model::DecoderStep;
using model::NormalizerStep;
using model::PrependScheme;
using model::PreTokenizerStep;

namespace {

using json = nlohmann::json;
using model::in_quotes;
using model::json_int64;
using model::json_kind;

constexpr size_t kMaxTokenizerBytes = size_t{512} << 20;

// One JSON value and its path ("pre_tokenizer.pretokenizers[1]"), for messages.
class Field {
 public:
  Field(const json& v, const std::string& source, std::string path) : v_(v), source_(source), path_(std::move(path)) {}

  const json& value() const { return v_; }
  const std::string& path() const { return path_; }

  [[noreturn]] void fail(std::string_view what) const {
    detail::fail("tokenizer ", in_quotes(source_), ": \"", path_, "\" ", what);
  }
  [[noreturn]] void fail_kind(const char* expected) const { fail("is " + json_kind(v_) + ", expected " + expected); }

  Field at(std::string_view key) const {
    if (!v_.is_object()) fail_kind("an object");
    auto it = v_.find(key);
    if (it == v_.end()) child(key, null_).fail("is missing");
    return child(key, *it);
  }
  // The member, or nullptr when absent or null.
  const json* find(std::string_view key) const {
    if (!v_.is_object()) fail_kind("an object");
    auto it = v_.find(key);
    return it == v_.end() || it->is_null() ? nullptr : &*it;
  }
  Field member(std::string_view key, const json& v) const { return child(key, v); }
  Field element(size_t i) const {
    std::string p = path_ + "[";
    detail::append(p, static_cast<int64_t>(i));
    return Field(v_[i], source_, p + "]");
  }

  std::string str() const {
    if (!v_.is_string()) fail_kind("a string");
    return v_.get<std::string>();
  }
  bool boolean() const {
    if (!v_.is_boolean()) fail_kind("a boolean");
    return v_.get<bool>();
  }
  int64_t integer(int64_t min) const {
    int64_t x = 0;
    if (!json_int64(v_, x)) fail_kind("an integer");
    if (x < min) {
      std::string msg = "must be >= ";
      detail::append(msg, min);
      msg += ", got ";
      detail::append(msg, x);
      fail(msg);
    }
    return x;
  }
  const json& array() const {
    if (!v_.is_array()) fail_kind("an array");
    return v_;
  }

  std::string opt_str(std::string_view key, std::string dflt) const {
    const json* v = find(key);
    return v ? child(key, *v).str() : dflt;
  }
  bool opt_bool(std::string_view key, bool dflt) const {
    const json* v = find(key);
    return v ? child(key, *v).boolean() : dflt;
  }
  // The "type" tag of a component.
  std::string type() const { return at("type").str(); }

 private:
  Field child(std::string_view key, const json& v) const {
    std::string p = path_.empty() ? std::string(key) : path_ + "." + std::string(key);
    return Field(v, source_, p);
  }
  static inline const json null_ = nullptr;
  const json& v_;
  const std::string& source_;
  std::string path_;
};

[[noreturn]] void unsupported_type(const Field& f, const std::string& type, const char* what, const char* supported) {
  f.at("type").fail("is '" + type + "', not a supported " + what + " (" + supported + ")");
}

// {"String": s} -> s; a {"Regex": ...} pattern is only read by Split.
std::string string_pattern(const Field& f) {
  const Field p = f.at("pattern");
  if (const json* s = p.find("String")) return p.member("String", *s).str();
  if (p.find("Regex")) p.at("Regex").fail("is a regex; only a literal {\"String\": ...} pattern is supported here");
  p.fail("has neither \"String\" nor \"Regex\"");
}

PrependScheme prepend_scheme(const Field& f) {
  if (f.find("prepend_scheme")) {
    const std::string s = f.at("prepend_scheme").str();
    if (s == "always") return PrependScheme::always;
    if (s == "first") return PrependScheme::first;
    if (s == "never") return PrependScheme::never;
    f.at("prepend_scheme").fail("is '" + s + "', expected always, first or never");
  }
  return f.opt_bool("add_prefix_space", true) ? PrependScheme::always : PrependScheme::never;
}

std::string replacement(const Field& f) {
  const std::string r = f.opt_str("replacement", "\xE2\x96\x81");
  if (r.empty()) f.at("replacement").fail("is empty");
  return r;
}

void parse_normalizer(const Field& f, Tokenizer::Impl& t) {
  const std::string type = f.type();
  if (type == "Sequence") {
    const Field list = f.at("normalizers");
    for (size_t i = 0; i < list.array().size(); ++i) parse_normalizer(list.element(i), t);
  } else if (type == "Prepend") {
    t.normalizers.push_back({NormalizerStep::Kind::prepend, f.at("prepend").str(), ""});
  } else if (type == "Replace") {
    std::string pattern = string_pattern(f);
    if (pattern.empty()) f.at("pattern").fail("is empty");
    t.normalizers.push_back({NormalizerStep::Kind::replace, std::move(pattern), f.at("content").str()});
  } else if (type == "NFC") {
    t.normalizers.push_back({NormalizerStep::Kind::nfc, "", ""});
  } else {
    unsupported_type(f, type, "normalizer", "Sequence, Prepend, Replace, NFC");
  }
}

void parse_pre_tokenizer(const Field& f, Tokenizer::Impl& t) {
  const std::string type = f.type();
  if (type == "Sequence") {
    const Field list = f.at("pretokenizers");
    for (size_t i = 0; i < list.array().size(); ++i) parse_pre_tokenizer(list.element(i), t);
    return;
  }
  // After ByteLevel the pieces are byte-mapped text: nothing may split them further.
  if (!t.pre_tokenizers.empty() && t.pre_tokenizers.back().kind == PreTokenizerStep::Kind::byte_level)
    f.fail("follows a ByteLevel pre-tokenizer; only ByteLevel as the last step is supported");
  PreTokenizerStep step{};
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::byte_level;
    step.add_prefix_space = f.opt_bool("add_prefix_space", true);
    step.use_regex = f.opt_bool("use_regex", true);
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::split;
    const Field pattern = f.at("pattern");
    if (!pattern.find("Regex")) {
      if (pattern.find("String"))
        pattern.fail("is a literal string; only the GPT-2, Llama-3, Qwen2 and DeepSeek-V3 regexes are supported");
      pattern.fail("has no \"Regex\"");
    }
    const std::string regex = pattern.at("Regex").str();
    const auto known = model::recognise_pattern(regex);
    if (!known)
      pattern.at("Regex").fail("is '" + regex +
                               "', not one of the supported regexes (GPT-2, Llama-3, Qwen2, DeepSeek-V3's three)");
    step.pattern = *known;
    // Isolated keeps the matches and the text between them; Removed with invert
    // keeps the matches only.
    const std::string behavior = f.at("behavior").str();
    const bool invert = f.opt_bool("invert", false);
    if (behavior == "Isolated" && !invert) {
      step.keep_gaps = true;
    } else if (behavior == "Removed" && invert) {
      step.keep_gaps = false;
    } else {
      f.at("behavior").fail("is '" + behavior + "' with invert " + (invert ? "true" : "false") +
                            "; supported: Isolated (invert false), Removed (invert true)");
    }
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::digits;
    step.individual_digits = f.opt_bool("individual_digits", false);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::metaspace;
    step.replacement = replacement(f);
    step.prepend_scheme = prepend_scheme(f);
    step.split = f.opt_bool("split", true);
  } else {
    unsupported_type(f, type, "pre-tokenizer", "Sequence, ByteLevel, Split, Digits, Metaspace");
  }
  t.pre_tokenizers.push_back(std::move(step));
}

void parse_decoder(const Field& f, Tokenizer::Impl& t) {
  const std::string type = f.type();
  DecoderStep step{};
  if (type == "Sequence") {
    const Field list = f.at("decoders");
    for (size_t i = 0; i < list.array().size(); ++i) parse_decoder(list.element(i), t);
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::byte_level;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::replace;
    step.pattern = string_pattern(f);
    if (step.pattern.empty()) f.at("pattern").fail("is empty");
    step.content = f.at("content").str();
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::byte_fallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::fuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::strip;
    step.content = f.at("content").str();
    if (step.content.empty()) f.at("content").fail("is empty");
    step.start = f.at("start").integer(0);
    step.stop = f.at("stop").integer(0);
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::metaspace;
    step.pattern = replacement(f);
    step.prepend_scheme = prepend_scheme(f);
  } else {
    unsupported_type(f, type, "decoder", "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace");
  }
  t.decoders.push_back(std::move(step));
}

void parse_post_processor(const Field& f, Tokenizer::Impl& t) {
  const std::string type = f.type();
  if (type == "Sequence") {
    const Field list = f.at("processors");
    for (size_t i = 0; i < list.array().size(); ++i) parse_post_processor(list.element(i), t);
  } else if (type == "ByteLevel") {
    // Adjusts offsets only.
  } else if (type == "TemplateProcessing") {
    if (!t.prefix_ids.empty() || !t.suffix_ids.empty()) f.fail("is a second TemplateProcessing");
    const Field single = f.at("single");
    const Field specials = f.at("special_tokens");
    bool seen_sequence = false;
    for (size_t i = 0; i < single.array().size(); ++i) {
      const Field item = single.element(i);
      if (item.find("Sequence")) {
        const std::string id = item.at("Sequence").at("id").str();
        if (id != "A") item.at("Sequence").at("id").fail("is '" + id + "'; a single-sequence template uses A");
        if (seen_sequence) item.fail("is a second sequence in the template");
        seen_sequence = true;
      } else if (item.find("SpecialToken")) {
        const std::string name = item.at("SpecialToken").at("id").str();
        const json* entry = specials.find(name);
        if (!entry)
          item.at("SpecialToken").at("id").fail("is '" + name + "', which \"special_tokens\" does not define");
        const Field ids = specials.member(name, *entry).at("ids");
        for (size_t k = 0; k < ids.array().size(); ++k)
          (seen_sequence ? t.suffix_ids : t.prefix_ids).push_back(ids.element(k).integer(0));
      } else {
        item.fail("is neither {\"Sequence\": ...} nor {\"SpecialToken\": ...}");
      }
    }
    if (!seen_sequence) single.fail("has no {\"Sequence\": {\"id\": \"A\"}}");
  } else {
    unsupported_type(f, type, "post-processor", "TemplateProcessing, ByteLevel, Sequence");
  }
}

void parse_model(const Field& m, Tokenizer::Impl& t) {
  const std::string type = m.find("type") ? m.at("type").str() : (m.find("merges") ? "BPE" : "");
  if (type.empty()) m.at("type").fail("is missing");
  if (type != "BPE") m.at("type").fail("is '" + type + "', not a supported model (BPE)");

  const Field vocab = m.at("vocab");
  if (!vocab.value().is_object()) vocab.fail_kind("an object");
  std::vector<std::string> by_id;
  for (auto it = vocab.value().begin(); it != vocab.value().end(); ++it) {
    const int64_t id = vocab.member(it.key(), it.value()).integer(0);
    if (id >= (int64_t{1} << 31)) vocab.member(it.key(), it.value()).fail("is beyond 2^31");
    if (it.key().empty()) vocab.fail("holds an empty token");
    if (static_cast<size_t>(id) >= by_id.size()) by_id.resize(id + 1);
    if (!by_id[id].empty()) vocab.member(it.key(), it.value()).fail("repeats the id of '" + by_id[id] + "'");
    by_id[id] = it.key();
  }
  t.set_vocab(std::move(by_id));

  if (const json* d = m.find("dropout")) {
    const Field f = m.member("dropout", *d);
    if (!d->is_number()) f.fail_kind("a number or null");
    if (d->get<double>() != 0) f.fail("is set; BPE dropout (random merges) is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!m.opt_str(key, "").empty()) m.at(key).fail("is set; not supported");
  t.fuse_unk = m.opt_bool("fuse_unk", false);
  t.byte_fallback = m.opt_bool("byte_fallback", false);
  t.ignore_merges = m.opt_bool("ignore_merges", false);
  if (m.find("unk_token")) {
    const std::string unk = m.at("unk_token").str();
    auto it = t.vocab.find(unk);
    if (it == t.vocab.end()) m.at("unk_token").fail("is '" + unk + "', which is not in the vocabulary");
    t.unk_id = it->second;
  }

  const Field merges = m.at("merges");
  const json& list = merges.array();
  for (size_t r = 0; r < list.size(); ++r) {
    const Field e = merges.element(r);
    std::string a, b;
    if (e.value().is_string()) {
      const std::string s = e.str();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == s.size())
        e.fail("is '" + s + "', not two tokens separated by a space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.value().is_array()) {
      if (e.value().size() != 2) e.fail("is an array of " + std::to_string(e.value().size()) + ", expected 2 tokens");
      a = e.element(0).str();
      b = e.element(1).str();
    } else {
      e.fail_kind("a string \"a b\" or an array [a, b]");
    }
    auto ia = t.vocab.find(a), ib = t.vocab.find(b);
    if (ia == t.vocab.end()) e.fail("names '" + a + "', which is not in the vocabulary");
    if (ib == t.vocab.end()) e.fail("names '" + b + "', which is not in the vocabulary");
    t.add_merge(ia->second, ib->second, static_cast<int32_t>(r),
                "tokenizer " + in_quotes(t.source) + ": \"" + e.path() + "\"");
  }
}

void parse_added_tokens(const Field& f, Tokenizer::Impl& t) {
  for (size_t i = 0; i < f.array().size(); ++i) {
    const Field e = f.element(i);
    const int64_t id = e.at("id").integer(0);
    if (id >= (int64_t{1} << 31)) e.at("id").fail("is beyond 2^31");
    const std::string content = e.at("content").str();
    if (content.empty()) e.at("content").fail("is empty");
    for (const char* key : {"single_word", "lstrip", "rstrip"})
      if (e.opt_bool(key, false)) e.at(key).fail("is true; not supported");
    const bool special = e.opt_bool("special", false);
    t.added.push_back({content, id, special, e.opt_bool("normalized", !special)});
  }
}

// A token named by tokenizer_config.json ("<s>" or {"content": "<s>", ...}).
int64_t config_token(const json& cfg, const char* key, const model::TokenMap& tokens) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return -1;
  const json* name = &*it;
  if (name->is_object()) {
    auto c = name->find("content");
    if (c == name->end()) return -1;
    name = &*c;
  }
  if (!name->is_string()) return -1;
  auto t = tokens.find(name->get<std::string>());
  return t == tokens.end() ? -1 : t->second;
}

std::shared_ptr<Tokenizer::Impl> parse_tokenizer_json(std::string_view json_text, const std::string& source) {
  using Impl = Tokenizer::Impl;
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    detail::fail("tokenizer ", in_quotes(source), ": not valid JSON: ", e.what());
  }
  auto impl = std::make_shared<Impl>();
  Impl& t = *impl;
  t.source = source;
  const Field top(root, t.source, "");
  if (!root.is_object()) top.fail_kind("an object");

  parse_model(top.at("model"), t);
  if (const json* v = top.find("added_tokens")) parse_added_tokens(top.member("added_tokens", *v), t);
  if (const json* v = top.find("normalizer")) parse_normalizer(top.member("normalizer", *v), t);
  if (const json* v = top.find("pre_tokenizer")) parse_pre_tokenizer(top.member("pre_tokenizer", *v), t);
  if (const json* v = top.find("post_processor")) parse_post_processor(top.member("post_processor", *v), t);
  if (const json* v = top.find("decoder")) {
    t.has_decoder = true;
    parse_decoder(top.member("decoder", *v), t);
  }
  t.finish();
  for (const int64_t id : t.prefix_ids)
    if (id >= static_cast<int64_t>(t.id_to_token.size()) || t.id_kind[id] == Impl::IdKind::none)
      top.at("post_processor").fail("adds id " + std::to_string(id) + ", which is not in the vocabulary");
  for (const int64_t id : t.suffix_ids)
    if (id >= static_cast<int64_t>(t.id_to_token.size()) || t.id_kind[id] == Impl::IdKind::none)
      top.at("post_processor").fail("adds id " + std::to_string(id) + ", which is not in the vocabulary");

  // BOS and EOS: the template's single tokens, else the well-known names.
  if (t.prefix_ids.size() == 1) t.bos = t.prefix_ids[0];
  if (t.suffix_ids.size() == 1) t.eos = t.suffix_ids[0];
  auto named = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names) {
      auto it = t.all_tokens.find(n);
      if (it != t.all_tokens.end()) return it->second;
    }
    return -1;
  };
  if (t.bos < 0) t.bos = named({"<s>", "<|begin_of_text|>", "<|startoftext|>"});
  if (t.eos < 0) t.eos = named({"</s>", "<|end_of_text|>", "<|endoftext|>"});
  return impl;
}

}  // namespace

Tokenizer Tokenizer::from_tokenizer_json_text(std::string_view json_text, const std::string& source) {
  return Tokenizer(parse_tokenizer_json(json_text, source));
}

Tokenizer Tokenizer::from_tokenizer_json(const std::string& path) {
  const std::string text = model::read_text_file(path, "tokenizer", kMaxTokenizerBytes);
  std::shared_ptr<Impl> impl = parse_tokenizer_json(text, path);
  // tokenizer_config.json beside it names BOS and EOS where a model sets them.
  const std::filesystem::path config = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(config, ec)) {
    const std::string cfg_text = model::read_text_file(config.string(), "tokenizer config", size_t{64} << 20);
    const json cfg = json::parse(cfg_text, nullptr, false);
    if (cfg.is_object()) {
      if (const int64_t b = config_token(cfg, "bos_token", impl->all_tokens); b >= 0) impl->bos = b;
      if (const int64_t e = config_token(cfg, "eos_token", impl->all_tokens); e >= 0) impl->eos = e;
    }
  }
  return Tokenizer(std::move(impl));
}

}  // namespace lca
