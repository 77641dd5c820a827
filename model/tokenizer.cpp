#include "model/tokenizer.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <queue>

#include <fmt/format.h>

#include "model/bpe_vocab.hpp"
#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/unicode.hpp"

namespace ceco {

namespace {

/// "<0x1F>" -> 0x1F, else -1.
int parse_byte_piece(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>')
    return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xe) return 3;
  if ((lead >> 3) == 0x1e) return 4;
  return 1;  // stray continuation byte: treat alone, it falls back to bytes
}

} // namespace

tokenizer tokenizer::from_llama2c(const std::string& path, int vocab_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw model_error(fmt::format("{}: cannot open tokenizer", path));
  in.seekg(0, std::ios::end);
  auto file_size = int64_t(in.tellg());
  in.seekg(0);
  auto fail = [&](const std::string& what) {
    return model_error(fmt::format(
      "{}: truncated or corrupt llama2.c tokenizer: {} (file has {} bytes, "
      "the model expects {} tokens)",
      path, what, file_size, vocab_size));
  };
  int32_t max_len = 0;
  if (!in.read(reinterpret_cast<char*>(&max_len), 4))
    throw fail("missing the max_token_length header");
  if (max_len <= 0 || max_len > 1024)
    throw model_error(fmt::format(
      "{}: not a llama2.c tokenizer: max_token_length is {}, expected 1..1024", path, max_len));
  tokenizer t;
  t.pieces_.resize(size_t(vocab_size));
  t.scores_.resize(size_t(vocab_size));
  t.kinds_.resize(size_t(vocab_size), token_kind::normal);
  for (int i = 0; i < vocab_size; ++i) {
    int32_t len = 0;
    if (!in.read(reinterpret_cast<char*>(&t.scores_[size_t(i)]), 4)
        || !in.read(reinterpret_cast<char*>(&len), 4))
      throw fail(fmt::format("it ends at token {}", i));
    if (len < 0 || len > max_len)
      throw model_error(fmt::format(
        "{}: token {} has length {}, outside 0..{} (max_token_length)", path, i, len, max_len));
    std::string p(size_t(len), '\0');
    if (!in.read(p.data(), len))
      throw fail(fmt::format("it ends inside token {}", i));
    t.pieces_[size_t(i)] = std::move(p);
  }
  // llama2.c's convention: 0 <unk>, 1 BOS, 2 EOS, then <0xNN> byte pieces.
  t.bos_ = 1;
  t.eos_ = 2;
  if (vocab_size > 2) {
    t.kinds_[0] = token_kind::unknown;
    t.kinds_[1] = token_kind::control;
    t.kinds_[2] = token_kind::control;
  }
  for (int i = 0; i < vocab_size; ++i)
    if (parse_byte_piece(t.pieces_[size_t(i)]) >= 0)
      t.kinds_[size_t(i)] = token_kind::byte;
  t.index();
  return t;
}

tokenizer tokenizer::from_gguf(const gguf_file& f) {
  auto model = f.get_string_or("tokenizer.ggml.model", "llama");
  if (model != "llama" && model != "gpt2")
    throw model_error(fmt::format(
      "{}: tokenizer.ggml.model is '{}'; ceco reads 'llama' (SentencePiece) and 'gpt2' "
      "(byte-level BPE) vocabularies",
      f.path(), model));
  const bool spm = model == "llama";
  auto pieces = f.get_string_array("tokenizer.ggml.tokens");
  std::vector<float> scores(pieces.size(), 0.0f);
  if (spm && f.has("tokenizer.ggml.scores")) {
    auto s = f.get_float_array("tokenizer.ggml.scores");
    if (s.size() != pieces.size())
      throw model_error(fmt::format(
        "{}: tokenizer.ggml.scores has {} entries, expected {} (one per token)",
        f.path(), s.size(), pieces.size()));
    for (size_t i = 0; i < s.size(); ++i)
      scores[i] = float(s[i]);
  }
  std::vector<token_kind> kinds(pieces.size(), token_kind::normal);
  if (f.has("tokenizer.ggml.token_type")) {
    auto types = f.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != pieces.size())
      throw model_error(fmt::format(
        "{}: tokenizer.ggml.token_type has {} entries, expected {} (one per token)",
        f.path(), types.size(), pieces.size()));
    // llama.cpp: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    for (size_t i = 0; i < types.size(); ++i) {
      switch (types[i]) {
        case 2: kinds[i] = token_kind::unknown; break;
        case 3: kinds[i] = token_kind::control; break;
        case 4: kinds[i] = token_kind::user_defined; break;
        case 5: kinds[i] = token_kind::unused; break;
        case 6: kinds[i] = token_kind::byte; break;
        default: kinds[i] = token_kind::normal;
      }
    }
  }
  const char* bos_key = "tokenizer.ggml.bos_token_id";
  const char* eos_key = "tokenizer.ggml.eos_token_id";
  // Read as stored (64 bits), checked before it becomes a token id.
  auto special_id = [&](const char* key, uint64_t fallback) {
    const uint64_t id = f.get_uint_or(key, fallback);
    if (id >= pieces.size())
      throw model_error(fmt::format("{}: {} is {}, outside the vocabulary of {} tokens "
                                    "(expected 0..{})",
                                    f.path(), key, id, pieces.size(),
                                    pieces.empty() ? 0 : pieces.size() - 1));
    return int(id);
  };
  int bos = 1, eos = 2;
  if (spm) {
    for (auto& p : pieces)
      p = unicode::replace_all(std::move(p), "\xe2\x96\x81", " ");  // U+2581 "▁"
    bos = special_id(bos_key, 1);
    eos = special_id(eos_key, 2);
  } else {
    // GPT-2 style vocabularies often name one token for both.
    if (!f.has(bos_key) && !f.has(eos_key))
      throw model_error(fmt::format("{}: a 'gpt2' vocabulary needs {} or {}", f.path(), bos_key,
                                    eos_key));
    const char* bos_from = f.has(bos_key) ? bos_key : eos_key;
    const char* eos_from = f.has(eos_key) ? eos_key : bos_key;
    bos = special_id(bos_from, 0);
    eos = special_id(eos_from, 0);
  }
  auto bpe_pieces = spm ? std::vector<std::string>{} : pieces;
  auto t = from_pieces(std::move(pieces), std::move(scores), std::move(kinds), bos, eos);
  t.add_bos_ = f.get_bool_or("tokenizer.ggml.add_bos_token", spm);
  t.add_eos_ = f.get_bool_or("tokenizer.ggml.add_eos_token", false);
  t.add_space_prefix_ = f.get_bool_or("tokenizer.ggml.add_space_prefix", spm);
  t.chat_template_ = f.get_string_or("tokenizer.chat_template", "");
  if (!spm) {
    t.type_ = vocab_type::byte_level_bpe;
    t.pre_name_ = f.get_string_or("tokenizer.ggml.pre", "");
    auto split = pre_split_from_name(t.pre_name_, f.path());
    if (t.pre_name_.empty())
      t.pre_name_ = "gpt-2";
    if (!f.has("tokenizer.ggml.merges"))
      throw model_error(fmt::format(
        "{}: metadata key 'tokenizer.ggml.merges' is missing (a 'gpt2' vocabulary needs its "
        "merges)",
        f.path()));
    t.bpe_ = std::make_shared<const bpe_vocab>(
      bpe_pieces, f.get_string_array("tokenizer.ggml.merges"), split,
      pre_split_ignores_merges(t.pre_name_), f.path());
  }
  return t;
}

tokenizer tokenizer::from_pieces(std::vector<std::string> pieces, std::vector<float> scores,
                                 std::vector<token_kind> kinds, int bos, int eos) {
  if (scores.size() != pieces.size() || kinds.size() != pieces.size())
    throw model_error(fmt::format(
      "tokenizer: {} pieces but {} scores and {} kinds", pieces.size(), scores.size(),
      kinds.size()));
  auto n = int(pieces.size());
  if (bos < 0 || bos >= n || eos < 0 || eos >= n)
    throw model_error(fmt::format(
      "tokenizer: BOS {} / EOS {} outside the vocabulary of {}", bos, eos, n));
  tokenizer t;
  t.pieces_ = std::move(pieces);
  t.scores_ = std::move(scores);
  t.kinds_ = std::move(kinds);
  t.bos_ = bos;
  t.eos_ = eos;
  t.index();
  return t;
}

void tokenizer::index() {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  ids_.clear();
  ids_.reserve(pieces_.size());
  special_ids_.clear();
  for (size_t i = 0; i < pieces_.size(); ++i) {
    if (kinds_[i] == token_kind::byte) {
      int b = parse_byte_piece(pieces_[i]);
      if (b >= 0 && byte_ids_[b] < 0)
        byte_ids_[b] = int32_t(i);
    } else if (kinds_[i] == token_kind::normal || kinds_[i] == token_kind::user_defined) {
      ids_.emplace(pieces_[i], int32_t(i));  // keeps the first of duplicates
    }
    auto k = kinds_[i];
    if ((k == token_kind::control || k == token_kind::user_defined || k == token_kind::unknown)
        && !pieces_[i].empty())
      special_ids_.push_back(int32_t(i));
  }
  std::stable_sort(special_ids_.begin(), special_ids_.end(), [&](int32_t a, int32_t b) {
    return pieces_[size_t(a)].size() > pieces_[size_t(b)].size();
  });
}

int32_t tokenizer::lookup(std::string_view piece) const {
  auto i = ids_.find(std::string(piece));
  return i == ids_.end() ? -1 : i->second;
}

namespace {

/// A stretch of the text to encode, or a special token cut out of it.
struct fragment {
  int32_t token;  // -1: text
  size_t offset, length;
};

} // namespace

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<int32_t> tokens;
  tokens.reserve(text.size() + 2);
  if (add_special && add_bos_)
    tokens.push_back(bos_);

  // Cut special tokens out, longest first: each one splits every text
  // fragment at its occurrences, left to right.
  std::vector<fragment> fragments;
  if (!text.empty())
    fragments.push_back({-1, 0, text.size()});
  std::vector<fragment> next;
  for (auto id : special_ids_) {
    auto k = kinds_[size_t(id)];
    if (!parse_special && k != token_kind::user_defined)
      continue;
    const auto& special = pieces_[size_t(id)];
    bool found = false;
    next.clear();
    for (const auto& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t pos = f.offset, end = f.offset + f.length;
      for (;;) {
        auto at = text.substr(0, end).find(special, pos);
        if (at == std::string_view::npos)
          break;
        found = true;
        if (at > pos)
          next.push_back({-1, pos, at - pos});
        next.push_back({id, at, special.size()});
        pos = at + special.size();
      }
      if (pos < end)
        next.push_back({-1, pos, end - pos});
    }
    if (found)
      fragments.swap(next);
  }

  bool after_special = true;  // SentencePiece: a dummy prefix on the first text
  for (const auto& f : fragments) {
    if (f.token >= 0) {
      tokens.push_back(f.token);
      after_special = true;
      continue;
    }
    auto part = text.substr(f.offset, f.length);
    if (type_ == vocab_type::byte_level_bpe)
      bpe_->encode(part, tokens);
    else
      encode_sentencepiece(part, add_space_prefix_ && after_special, tokens);
    after_special = false;
  }
  if (add_special && add_eos_)
    tokens.push_back(eos_);
  return tokens;
}

void tokenizer::encode_sentencepiece(std::string_view text, bool dummy_prefix,
                                     std::vector<int32_t>& tokens) const {
  if (text.empty())
    return;
  size_t first = tokens.size();
  if (auto space = lookup(" "); space >= 0 && dummy_prefix)
    tokens.push_back(space);

  for (size_t i = 0; i < text.size();) {
    size_t n = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
    auto id = lookup(text.substr(i, n));
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (size_t j = 0; j < n; ++j) {
        auto b = byte_ids_[static_cast<unsigned char>(text[i + j])];
        tokens.push_back(b >= 0 ? b : 0);  // 0 is <unk> by convention
      }
    }
    i += n;
  }

  // Greedy merges, best score first; ties go to the leftmost pair. A queue
  // of candidate pairs over a linked list of symbols keeps this O(n log n).
  struct symbol {
    int32_t id;
    int prev, next;
  };
  std::vector<symbol> symbols;
  symbols.reserve(tokens.size() - first);
  for (size_t i = first; i < tokens.size(); ++i) {
    int index = int(symbols.size());
    symbols.push_back({tokens[i], index - 1, index + 1});
  }
  if (symbols.empty())
    return;
  symbols.back().next = -1;
  struct pair {
    float score;
    int left, right;
    int32_t left_id, right_id, merged;  // ids when queued, to skip stale pairs
  };
  auto worse = [](const pair& a, const pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<pair, std::vector<pair>, decltype(worse)> queue(worse);
  std::string merged;
  auto add_pair = [&](int left, int right) {
    if (left < 0 || right < 0)
      return;
    const auto& l = symbols[size_t(left)];
    const auto& r = symbols[size_t(right)];
    merged = pieces_[size_t(l.id)];
    merged += pieces_[size_t(r.id)];
    if (auto id = lookup(merged); id >= 0)
      queue.push({scores_[size_t(id)], left, right, l.id, r.id, id});
  };
  for (int i = 1; i < int(symbols.size()); ++i)
    add_pair(i - 1, i);
  while (!queue.empty()) {
    auto p = queue.top();
    queue.pop();
    auto& l = symbols[size_t(p.left)];
    auto& r = symbols[size_t(p.right)];
    if (l.id != p.left_id || r.id != p.right_id || l.next != p.right)
      continue;  // a side has merged since
    l.id = p.merged;
    r.id = -1;
    l.next = r.next;
    if (r.next >= 0)
      symbols[size_t(r.next)].prev = p.left;
    add_pair(l.prev, p.left);
    add_pair(p.left, l.next);
  }
  tokens.resize(first);
  for (int i = 0; i >= 0; i = symbols[size_t(i)].next)
    tokens.push_back(symbols[size_t(i)].id);
}

std::string tokenizer::decode_piece(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size())
    return {};
  auto k = kinds_[size_t(token)];
  const auto& p = pieces_[size_t(token)];
  if (k == token_kind::control || k == token_kind::unused)
    return {};
  if (k == token_kind::byte) {
    int b = parse_byte_piece(p);
    return b >= 0 ? std::string(1, char(b)) : std::string{};
  }
  if (type_ == vocab_type::byte_level_bpe)
    return k == token_kind::normal ? bpe_vocab::piece_bytes(p) : p;
  if (prev == bos_ && !p.empty() && p[0] == ' ')
    return p.substr(1);
  return p;
}

std::string tokenizer::token_text(int32_t token) const {
  if (token < 0 || token >= vocab_size())
    return {};
  auto k = kinds_[size_t(token)];
  if (k == token_kind::control || k == token_kind::unused || k == token_kind::unknown)
    return pieces_[size_t(token)];
  return decode_piece(-1, token);
}

std::string tokenizer::decode(const std::vector<int32_t>& tokens, int32_t prev) const {
  std::string out;
  for (auto t : tokens) {
    out += decode_piece(prev, t);
    prev = t;
  }
  return out;
}

} // namespace ceco
