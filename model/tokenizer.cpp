#include "model/tokenizer.hpp"

#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/gguf.hpp"

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

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
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
  if (model != "llama")
    throw model_error(fmt::format(
      "{}: tokenizer.ggml.model is '{}'; ceco reads SentencePiece-style 'llama' vocabularies",
      f.path(), model));
  auto pieces = f.get_string_array("tokenizer.ggml.tokens");
  std::vector<float> scores(pieces.size(), 0.0f);
  if (f.has("tokenizer.ggml.scores")) {
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
        case 5: kinds[i] = token_kind::unused; break;
        case 6: kinds[i] = token_kind::byte; break;
        default: kinds[i] = token_kind::normal;
      }
    }
  }
  for (auto& p : pieces)
    p = replace_all(std::move(p), "\xe2\x96\x81", " ");  // U+2581 "▁"
  auto bos = int(f.get_uint_or("tokenizer.ggml.bos_token_id", 1));
  auto eos = int(f.get_uint_or("tokenizer.ggml.eos_token_id", 2));
  return from_pieces(std::move(pieces), std::move(scores), std::move(kinds), bos, eos);
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
  for (size_t i = 0; i < pieces_.size(); ++i) {
    if (kinds_[i] == token_kind::byte) {
      int b = parse_byte_piece(pieces_[i]);
      if (b >= 0 && byte_ids_[b] < 0)
        byte_ids_[b] = int32_t(i);
    } else if (kinds_[i] == token_kind::normal) {
      ids_.emplace(pieces_[i], int32_t(i));  // keeps the first of duplicates
    }
  }
}

int32_t tokenizer::lookup(std::string_view piece) const {
  auto i = ids_.find(std::string(piece));
  return i == ids_.end() ? -1 : i->second;
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> tokens;
  tokens.reserve(text.size() + 2);
  if (add_bos)
    tokens.push_back(bos_);
  if (text.empty())
    return tokens;
  size_t first = tokens.size();
  if (auto space = lookup(" "); space >= 0)
    tokens.push_back(space);  // SentencePiece's dummy prefix

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

  // Greedy merges, best score first; ties go to the leftmost pair.
  std::string merged;
  for (;;) {
    float best_score = -1e30f;
    int32_t best_id = -1;
    size_t best_at = 0;
    for (size_t i = first; i + 1 < tokens.size(); ++i) {
      merged = pieces_[size_t(tokens[i])];
      merged += pieces_[size_t(tokens[i + 1])];
      auto id = lookup(merged);
      if (id >= 0 && scores_[size_t(id)] > best_score) {
        best_score = scores_[size_t(id)];
        best_id = id;
        best_at = i;
      }
    }
    if (best_id < 0)
      break;
    tokens[best_at] = best_id;
    tokens.erase(tokens.begin() + std::ptrdiff_t(best_at) + 1);
  }
  return tokens;
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
  if (prev == bos_ && !p.empty() && p[0] == ' ')
    return p.substr(1);
  return p;
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
