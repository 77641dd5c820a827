#include "model/bpe_learner.hpp"

#include <algorithm>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "model/config.hpp"

namespace ceco {

namespace {

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
    n = std::min(n, s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

/// " word" units, as SentencePiece sees a line after its dummy prefix.
void count_words(const std::string& line, std::map<std::string, int64_t>& counts) {
  std::string text = " " + line;
  size_t start = 0;
  for (size_t i = 1; i <= text.size(); ++i)
    if (i == text.size() || text[i] == ' ') {
      if (i > start)
        ++counts[text.substr(start, i - start)];
      start = i;
    }
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    if (!line.empty())
      out.push_back(line);
  }
  return out;
}

} // namespace

tokenizer train_bpe(const std::string& text, int vocab_size, int min_char_count) {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  std::vector<token_kind> kinds = {token_kind::unknown, token_kind::control, token_kind::control};
  for (int b = 0; b < 256; ++b) {
    pieces.push_back(fmt::format("<0x{:02X}>", b));
    kinds.push_back(token_kind::byte);
  }
  std::vector<float> scores(pieces.size(), 0.0f);
  std::map<std::string, int64_t> words;
  std::map<std::string, int64_t> char_counts;
  for (auto& line : lines_of(text))
    count_words(line, words);
  for (auto& [w, n] : words)
    for (auto& c : utf8_chars(w))
      char_counts[c] += n;
  char_counts["\n"] += min_char_count;  // lines end with it in the training stream
  std::map<std::string, int> id;
  for (auto& [c, n] : char_counts)
    if (n >= min_char_count) {
      id[c] = int(pieces.size());
      pieces.push_back(c);
      kinds.push_back(token_kind::normal);
      scores.push_back(-1e6f);
    }
  if (int(pieces.size()) > vocab_size)
    throw model_error(fmt::format("train_bpe: {} base pieces already exceed the vocabulary of {}",
                                  pieces.size(), vocab_size));
  // Words as symbol sequences; characters without a piece stay out of merges.
  std::vector<std::pair<std::vector<int>, int64_t>> seqs;
  for (auto& [w, n] : words) {
    std::vector<int> s;
    for (auto& c : utf8_chars(w))
      s.push_back(id.count(c) ? id[c] : -1);
    seqs.push_back({std::move(s), n});
  }
  int merge = 0;
  while (int(pieces.size()) < vocab_size) {
    std::map<std::pair<int, int>, int64_t> pairs;
    for (auto& [s, n] : seqs)
      for (size_t i = 0; i + 1 < s.size(); ++i)
        if (s[i] >= 0 && s[i + 1] >= 0)
          pairs[{s[i], s[i + 1]}] += n;
    if (pairs.empty())
      break;
    // Most frequent pair; ties by the merged text, for determinism.
    auto best = pairs.begin();
    for (auto i = pairs.begin(); i != pairs.end(); ++i)
      if (i->second > best->second
          || (i->second == best->second
              && pieces[size_t(i->first.first)] + pieces[size_t(i->first.second)]
                   < pieces[size_t(best->first.first)] + pieces[size_t(best->first.second)]))
        best = i;
    if (best->second < 2)
      break;
    auto [a, b] = best->first;
    int merged = int(pieces.size());
    pieces.push_back(pieces[size_t(a)] + pieces[size_t(b)]);
    kinds.push_back(token_kind::normal);
    scores.push_back(-float(merge++));  // earlier merges score higher
    for (auto& [s, n] : seqs) {
      std::vector<int> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = std::move(out);
    }
  }
  return tokenizer::from_pieces(std::move(pieces), std::move(scores), std::move(kinds), 1, 2);
}

std::vector<int32_t> encode_corpus(const tokenizer& vocab, const std::string& text) {
  auto newline = vocab.encode("\n", false);
  newline.erase(newline.begin());  // the dummy-prefix space
  std::vector<int32_t> out;
  for (auto& line : lines_of(text)) {
    auto ids = vocab.encode(line, true);
    out.insert(out.end(), ids.begin(), ids.end());
    out.insert(out.end(), newline.begin(), newline.end());
  }
  return out;
}

} // namespace ceco
