// tokenizer::from_tokenizer_json: a Hugging Face `tokenizer.json` (the
// `tokenizers` library's file) as one of ceco's two vocabulary types.
//
//  - Byte-level BPE (a ByteLevel pre-tokenizer): the vocabulary map, the
//    merges ("a b" strings or [a, b] pairs, in rank order) and the closest
//    named pre-tokenizer split (pretokenizer.hpp), recognised from the
//    pre-tokenizer's passes: Llama 3's Split regex -> llama-bpe, Qwen2's ->
//    qwen2, GPT-2's (or ByteLevel's own regex) -> gpt-2, individual Digits
//    then ByteLevel -> smollm. Any other pre-tokenizer takes the gpt-2 split
//    with a warning on stderr: its ids may differ from the original's.
//  - SentencePiece-style BPE (Llama 2, TinyLlama: byte_fallback, the
//    normalizer writes spaces as "▁"): ceco's SentencePiece encoder, which
//    merges the pair whose result scores best; a piece's score is minus the
//    rank of the first merge that makes it, so merges apply in rank order.
// Added tokens become control tokens when `special` (the model's unk_token
// an unknown token), user-defined ones otherwise. Ids up to `vocab_size`
// that the file leaves out (Qwen2 pads its embedding) become unused "[PADn]"
// pieces, as the reference's converter names them. BOS is added when the
// post-processor's template starts with a special token, EOS when it ends
// with one.

#include "model/tokenizer.hpp"
#include "model/json_input.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/bpe_vocab.hpp"
#include "model/config.hpp"
#include "model/unicode.hpp"

namespace ceco {

namespace {

using json = nlohmann::json;

const char* llama3_regex =
  R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* qwen2_regex =
  R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* gpt2_regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// The passes of a pre-tokenizer (a Sequence flattened), each as a short
/// signature: "split:<regex>", "bytelevel", "bytelevel+regex", "digits",
/// "digits1" (individual digits), or the type.
void pre_passes(const json& p, std::vector<std::string>& out) {
  if (!p.is_object())
    return;
  const auto type = p.value("type", std::string());
  if (type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (const auto& q : p["pretokenizers"])
      pre_passes(q, out);
  } else if (type == "Split") {
    std::string regex;
    if (p.contains("pattern") && p["pattern"].is_object()) {
      const auto& pat = p["pattern"];
      if (pat.contains("Regex") && pat["Regex"].is_string())
        regex = pat["Regex"].get<std::string>();
      else if (pat.contains("String") && pat["String"].is_string())
        regex = "string:" + pat["String"].get<std::string>();
    }
    out.push_back("split:" + regex);
  } else if (type == "ByteLevel") {
    out.push_back(p.value("use_regex", true) ? "bytelevel+regex" : "bytelevel");
  } else if (type == "Digits") {
    out.push_back(p.value("individual_digits", false) ? "digits1" : "digits");
  } else {
    out.push_back(type);
  }
}

/// The named split closest to a byte-level pre-tokenizer; "" when unknown.
std::string pre_split_name(const std::vector<std::string>& passes) {
  using v = std::vector<std::string>;
  const std::string split = "split:";
  if (passes == v{split + llama3_regex, "bytelevel"})
    return "llama-bpe";
  if (passes == v{split + qwen2_regex, "bytelevel"})
    return "qwen2";
  if (passes == v{split + gpt2_regex, "bytelevel"} || passes == v{"bytelevel+regex"})
    return "gpt-2";
  if (passes == v{"digits1", "bytelevel+regex"})
    return "smollm";
  return {};
}

bool has_pass(const std::vector<std::string>& passes, const std::string& kind) {
  for (const auto& p : passes)
    if (p.rfind(kind, 0) == 0)
      return true;
  return false;
}

/// Whether the normalizer writes spaces as "▁" (SentencePiece style), and
/// whether it prepends one.
void spm_normalizer(const json& n, bool& replaces_space, bool& prepends) {
  if (!n.is_object())
    return;
  const auto type = n.value("type", std::string());
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (const auto& m : n["normalizers"])
      spm_normalizer(m, replaces_space, prepends);
  } else if (type == "Replace" && n.value("content", std::string()) == "\xe2\x96\x81") {
    replaces_space = true;
  } else if (type == "Prepend" && n.value("prepend", std::string()) == "\xe2\x96\x81") {
    prepends = true;
  }
}

/// The single-sequence template of a TemplateProcessing post-processor
/// (inside a Sequence too); empty when there is none.
json single_template(const json& p) {
  if (!p.is_object())
    return json::array();
  if (p.value("type", std::string()) == "TemplateProcessing" && p.contains("single")
      && p["single"].is_array())
    return p["single"];
  if (p.contains("processors") && p["processors"].is_array())
    for (const auto& q : p["processors"]) {
      auto t = single_template(q);
      if (!t.empty())
        return t;
    }
  return json::array();
}

} // namespace

tokenizer tokenizer::from_tokenizer_json(const std::string& path, int vocab_size, int bos,
                                         int eos) {
  json j = read_json_file(path);
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw model_error(fmt::format("{}: expected an object with a 'model' object", path));
  const auto& model = j["model"];
  const auto model_type = model.value("type", std::string("BPE"));
  if (model_type != "BPE")
    throw model_error(fmt::format(
      "{}: model.type is '{}'; ceco reads BPE tokenizers (byte-level, or SentencePiece-style "
      "with byte_fallback)",
      path, model_type));
  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw model_error(fmt::format("{}: model.vocab should be an object (piece -> id)", path));
  if (!model.contains("merges") || !model["merges"].is_array())
    throw model_error(fmt::format("{}: model.merges should be an array", path));

  std::vector<std::string> passes;
  if (j.contains("pre_tokenizer"))
    pre_passes(j["pre_tokenizer"], passes);
  bool replaces_space = false, prepends = false;
  if (j.contains("normalizer"))
    spm_normalizer(j["normalizer"], replaces_space, prepends);
  const bool byte_level = has_pass(passes, "bytelevel");
  const bool spm = !byte_level && (model.value("byte_fallback", false) || replaces_space);
  if (!byte_level && !spm)
    throw model_error(fmt::format(
      "{}: neither a byte-level BPE (no ByteLevel pre-tokenizer) nor a SentencePiece-style BPE "
      "(no byte_fallback, no \"▁\" normalizer); ceco reads those two",
      path));

  // Pieces by id: the vocabulary, then the added tokens.
  std::vector<std::string> pieces;
  std::vector<token_kind> kinds;
  std::vector<bool> set;
  auto place = [&](const std::string& piece, const json& id_value, token_kind kind) {
    if (!id_value.is_number_unsigned() || id_value.get<uint64_t>() >= (uint64_t{1} << 24))
      throw model_error(fmt::format("{}: token '{}' has id {}, expected 0..{}", path, piece,
                                    json_excerpt(id_value), (1 << 24) - 1));
    const auto id = size_t(id_value.get<uint64_t>());
    if (id >= pieces.size()) {
      pieces.resize(id + 1);
      kinds.resize(id + 1, token_kind::unused);
      set.resize(id + 1, false);
    }
    pieces[id] = piece;
    kinds[id] = kind;
    set[id] = true;
  };
  for (auto& [piece, id] : model["vocab"].items())
    place(piece, id, token_kind::normal);
  const auto unk = model.contains("unk_token") && model["unk_token"].is_string()
                     ? model["unk_token"].get<std::string>()
                     : std::string();
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const auto& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string()
          || !a.contains("id"))
        throw model_error(fmt::format("{}: an added_tokens entry needs content and id: {}", path,
                                      json_excerpt(a)));
      const auto content = a["content"].get<std::string>();
      const auto kind = content == unk ? token_kind::unknown
                        : a.value("special", false) ? token_kind::control
                                                    : token_kind::user_defined;
      place(content, a["id"], kind);
    }
  if (vocab_size > 0 && int(pieces.size()) > vocab_size)
    throw model_error(fmt::format(
      "{}: the tokenizer has ids up to {}, but the model's vocab_size is {}", path,
      pieces.size() - 1, vocab_size));
  // Ids past the tokenizer's own are padding; far more of them than it has
  // is a corrupt vocab_size, not a model.
  if (vocab_size > int(pieces.size()) + std::max<int>(int(pieces.size()), 65536))
    throw model_error(fmt::format("{}: vocab_size {} is far beyond the tokenizer's {} ids", path,
                                  vocab_size, pieces.size()));
  if (vocab_size > int(pieces.size())) {
    pieces.resize(size_t(vocab_size));
    kinds.resize(size_t(vocab_size), token_kind::unused);
    set.resize(size_t(vocab_size), false);
  }
  for (size_t i = 0; i < pieces.size(); ++i)
    if (!set[i])
      pieces[i] = fmt::format("[PAD{}]", i);

  std::vector<std::string> merges;
  merges.reserve(model["merges"].size());
  for (const auto& m : model["merges"]) {
    if (m.is_string())
      merges.push_back(m.get<std::string>());
    else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
      merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    else
      throw model_error(fmt::format(
        "{}: merge {} is {}, expected \"left right\" or [\"left\", \"right\"]", path,
        merges.size(), json_excerpt(m)));
  }

  // The special tokens the post-processor puts around a sequence.
  const auto tmpl = j.contains("post_processor") ? single_template(j["post_processor"])
                                                 : json::array();
  auto template_special = [&](const json& item) -> int {
    if (!item.is_object() || !item.contains("SpecialToken"))
      return -1;
    const auto name = item["SpecialToken"].value("id", std::string());
    for (size_t i = 0; i < pieces.size(); ++i)
      if (set[i] && pieces[i] == name)
        return int(i);
    throw model_error(fmt::format("{}: post_processor names special token '{}', which is not "
                                  "in the vocabulary",
                                  path, name));
  };
  const int template_bos = tmpl.empty() ? -1 : template_special(tmpl.front());
  const int template_eos = tmpl.size() < 2 ? -1 : template_special(tmpl.back());
  auto id_of = [&](const char* piece) {
    for (size_t i = 0; i < pieces.size(); ++i)
      if (set[i] && pieces[i] == piece)
        return int(i);
    return -1;
  };
  if (bos < 0)
    bos = template_bos >= 0 ? template_bos : spm ? id_of("<s>") : -1;
  if (eos < 0)
    eos = template_eos >= 0 ? template_eos : spm ? id_of("</s>") : -1;
  if (bos < 0 && eos < 0)
    throw model_error(fmt::format(
      "{}: no BOS or EOS token: config.json names neither bos_token_id nor eos_token_id, and "
      "the post_processor adds none",
      path));
  if (bos < 0)
    bos = eos;
  if (eos < 0)
    eos = bos;
  for (int id : {bos, eos})
    if (id >= int(pieces.size()))
      throw model_error(fmt::format("{}: BOS/EOS id {} is outside the vocabulary of {} tokens",
                                    path, id, pieces.size()));

  std::vector<float> scores(pieces.size(), 0.0f);
  if (spm) {
    // A piece scores minus the rank of the first merge that makes it.
    std::unordered_map<std::string, size_t> id_of_piece;
    for (size_t i = 0; i < pieces.size(); ++i)
      if (set[i] && kinds[i] == token_kind::normal)
        id_of_piece.emplace(pieces[i], i);
    std::vector<bool> scored(pieces.size(), false);
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto space = merges[rank].find(' ');
      if (space == std::string::npos)
        throw model_error(fmt::format("{}: merge {} is '{}', expected \"left right\"", path,
                                      rank, merges[rank]));
      auto joined = merges[rank].substr(0, space) + merges[rank].substr(space + 1);
      auto i = id_of_piece.find(joined);
      if (i != id_of_piece.end() && !scored[i->second]) {
        scores[i->second] = -float(rank + 1);
        scored[i->second] = true;
      }
    }
    // A piece no merge makes ranks after every merge.
    for (size_t i = 0; i < pieces.size(); ++i)
      if (!scored[i])
        scores[i] = -float(merges.size() + 1);
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (kinds[i] == token_kind::normal && pieces[i].size() == 6
          && pieces[i].compare(0, 3, "<0x") == 0 && pieces[i][5] == '>')
        kinds[i] = token_kind::byte;
      pieces[i] = unicode::replace_all(std::move(pieces[i]), "\xe2\x96\x81", " ");
    }
  }
  auto bpe_pieces = spm ? std::vector<std::string>{} : pieces;
  auto t = from_pieces(std::move(pieces), std::move(scores), std::move(kinds), bos, eos);
  t.add_bos_ = template_bos >= 0;
  t.add_eos_ = template_eos >= 0;
  t.add_space_prefix_ = spm && prepends;
  if (!spm) {
    t.type_ = vocab_type::byte_level_bpe;
    t.pre_name_ = pre_split_name(passes);
    if (t.pre_name_.empty()) {
      std::cerr << fmt::format(
        "warning: {}: pre-tokenizer {} matches none of ceco's named splits; using gpt-2's "
        "(token ids may differ from the original tokenizer's)\n",
        path, json_excerpt(j["pre_tokenizer"]));
      t.pre_name_ = "gpt-2";
    }
    t.bpe_ = std::make_shared<const bpe_vocab>(
      bpe_pieces, merges, pre_split_from_name(t.pre_name_, path),
      model.value("ignore_merges", false), path);
  }
  // The chat template of tokenizer_config.json beside it, when it has one.
  const auto config = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (std::ifstream(config)) {
    try {
      const auto c = read_json_file(config.string());
      if (c.is_object() && c.contains("chat_template") && c["chat_template"].is_string())
        t.chat_template_ = c["chat_template"].get<std::string>();
    } catch (const model_error& e) {  // optional: the model works without it
      fmt::print(stderr, "warning: {} (the chat template is not used)\n", e.what());
    }
  }
  return t;
}

} // namespace ceco
