#include "model/bpe_vocab.hpp"

#include <queue>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/unicode.hpp"

namespace ceco {

bpe_vocab::bpe_vocab(const std::vector<std::string>& tokens,
                     const std::vector<std::string>& merges, pre_split split, bool ignore_merges,
                     const std::string& source)
    : split_(split), ignore_merges_(ignore_merges) {
  ids_.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i)
    ids_.emplace(tokens[i], int32_t(i));  // the first of duplicates
  ranks_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& m = merges[i];
    // The separator is the first space after the first character: a side
    // is never empty, and byte-level pieces hold no raw space.
    auto sep = m.find(' ', 1);
    if (sep == std::string::npos || sep + 1 >= m.size())
      throw model_error(fmt::format(
        "{}: tokenizer.ggml.merges[{}] is {:?}, expected two pieces separated by a space",
        source, i, m));
    ranks_.emplace(m, int32_t(i));
  }
}

int32_t bpe_vocab::lookup(std::string_view text) const {
  auto it = ids_.find(std::string(text));
  return it == ids_.end() ? -1 : it->second;
}

std::string bpe_vocab::piece_bytes(std::string_view piece) {
  std::string out;
  auto cps = unicode::decode_utf8(piece);
  for (size_t i = 0; i < cps.cpts.size(); ++i) {
    int b = unicode::piece_cpt_to_byte(cps.cpts[i]);
    if (b >= 0)
      out += char(b);
    else
      out.append(piece.substr(cps.offsets[i], cps.offsets[i + 1] - cps.offsets[i]));
  }
  return out;
}

void bpe_vocab::encode(std::string_view text, std::vector<int32_t>& out) const {
  for (auto word : pre_tokenize(split_, text))
    encode_word(word, out);
}

void bpe_vocab::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  // The word in the byte alphabet; one symbol per byte to start with.
  std::string text;
  text.reserve(word.size() * 2);
  struct symbol {
    size_t start, len;
    int prev, next;
  };
  std::vector<symbol> symbols;
  symbols.reserve(word.size());
  for (unsigned char b : word) {
    const auto& p = unicode::byte_to_piece(b);
    int index = int(symbols.size());
    symbols.push_back({text.size(), p.size(), index - 1, index + 1});
    text += p;
  }
  if (symbols.empty())
    return;
  symbols.back().next = -1;
  if (ignore_merges_) {
    if (auto id = lookup(text); id >= 0) {
      out.push_back(id);
      return;
    }
  }

  struct bigram {
    int32_t rank;
    int left, right;
    size_t left_len, right_len;  // to tell a pair that merges have since changed
  };
  auto later = [](const bigram& a, const bigram& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<bigram, std::vector<bigram>, decltype(later)> queue(later);
  std::string key;
  auto add_pair = [&](int left, int right) {
    if (left < 0 || right < 0)
      return;
    const auto& l = symbols[size_t(left)];
    const auto& r = symbols[size_t(right)];
    key.assign(text, l.start, l.len);
    key += ' ';
    key.append(text, r.start, r.len);
    auto it = ranks_.find(key);
    if (it != ranks_.end())
      queue.push({it->second, left, right, l.len, r.len});
  };
  for (int i = 1; i < int(symbols.size()); ++i)
    add_pair(i - 1, i);

  while (!queue.empty()) {
    auto b = queue.top();
    queue.pop();
    auto& l = symbols[size_t(b.left)];
    auto& r = symbols[size_t(b.right)];
    if (l.len != b.left_len || r.len != b.right_len || l.next != b.right)
      continue;  // one side has merged since
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0)
      symbols[size_t(r.next)].prev = b.left;
    add_pair(l.prev, b.left);
    add_pair(b.left, l.next);
  }

  for (int i = 0; i >= 0; i = symbols[size_t(i)].next) {
    const auto& s = symbols[size_t(i)];
    std::string_view piece(text.data() + s.start, s.len);
    if (auto id = lookup(piece); id >= 0) {
      out.push_back(id);
      continue;
    }
    // Not a token: fall back to its single bytes, skipping any the
    // vocabulary lacks (as the reference does).
    auto cps = unicode::decode_utf8(piece);
    for (size_t j = 0; j < cps.cpts.size(); ++j)
      if (auto id = lookup(piece.substr(cps.offsets[j], cps.offsets[j + 1] - cps.offsets[j]));
          id >= 0)
        out.push_back(id);
  }
}

} // namespace ceco
