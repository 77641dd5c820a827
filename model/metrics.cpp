#include "model/metrics.hpp"

#include <algorithm>
#include <cctype>
#include <map>

namespace ceco {

double token_agreement(const std::vector<int32_t>& a, const std::vector<int32_t>& reference) {
  size_t n = std::max(a.size(), reference.size());
  if (n == 0)
    return 1.0;
  size_t same = 0;
  for (size_t i = 0; i < std::min(a.size(), reference.size()); ++i)
    same += a[i] == reference[i];
  return double(same) / double(n);
}

namespace {

template <class T>
double lcs_f1(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.empty() || b.empty())
    return a.empty() && b.empty() ? 1.0 : 0.0;
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  double lcs = double(prev[b.size()]);
  if (lcs == 0)
    return 0.0;
  double p = lcs / double(a.size()), r = lcs / double(b.size());
  return 2 * p * r / (p + r);
}

} // namespace

double rouge_l(const std::vector<std::string>& c, const std::vector<std::string>& r) {
  return lcs_f1(c, r);
}

double rouge_l(const std::vector<int32_t>& c, const std::vector<int32_t>& r) {
  return lcs_f1(c, r);
}

std::vector<std::string> normalized_words(const std::string& text) {
  std::vector<std::string> words;
  std::string w;
  auto flush = [&] {
    if (!w.empty() && w != "a" && w != "an" && w != "the")
      words.push_back(w);
    w.clear();
  };
  for (unsigned char c : text) {
    if (std::isspace(c))
      flush();
    else if (!std::ispunct(c))
      w += char(std::tolower(c));
  }
  flush();
  return words;
}

double exact_match(const std::string& candidate, const std::string& reference) {
  return normalized_words(candidate) == normalized_words(reference) ? 1.0 : 0.0;
}

double token_f1(const std::string& candidate, const std::string& reference) {
  auto c = normalized_words(candidate), r = normalized_words(reference);
  if (c.empty() || r.empty())
    return c.empty() && r.empty() ? 1.0 : 0.0;
  std::map<std::string, int> counts;
  for (auto& w : r)
    ++counts[w];
  int common = 0;
  for (auto& w : c)
    if (counts[w]-- > 0)
      ++common;
  if (common == 0)
    return 0.0;
  double p = double(common) / double(c.size()), rc = double(common) / double(r.size());
  return 2 * p * rc / (p + rc);
}

} // namespace ceco
