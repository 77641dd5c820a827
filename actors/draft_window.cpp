#include "actors/draft_window.hpp"

#include <algorithm>

#include <algorithm>

namespace ceco {

draft_window::draft_window(std::vector<int32_t> prompt)
    : tokens_(std::move(prompt)), prompt_(int32_t(tokens_.size())) {
  // nop
}

int32_t draft_window::final_size() const {
  return to_verify_.empty() ? size() : to_verify_.front();
}

void draft_window::draft(int32_t token, int origin, bool verify) {
  if (verify)
    to_verify_.push_back(size());
  tokens_.push_back(token);
  origins_.push_back(origin);
}

int32_t draft_window::accept(int32_t last) {
  auto end = std::upper_bound(to_verify_.begin(), to_verify_.end(), last);
  auto n = int32_t(end - to_verify_.begin());
  to_verify_.erase(to_verify_.begin(), end);
  return n;
}

int32_t draft_window::correct(int32_t index, int32_t token) {
  const int32_t dropped = std::max(size() - index, 0);
  tokens_.resize(size_t(std::min(index, size())));
  origins_.resize(tokens_.size() - size_t(prompt_));
  to_verify_.erase(std::lower_bound(to_verify_.begin(), to_verify_.end(), index),
                   to_verify_.end());
  draft(token, cloud, false);
  return dropped;
}

int32_t draft_window::give_up(int fallback) {
  auto n = int32_t(to_verify_.size());
  for (auto i : to_verify_)
    if (origins_[size_t(i - prompt_)] == uncertain)
      origins_[size_t(i - prompt_)] = fallback;
  to_verify_.clear();
  return n;
}

bool draft_window::awaits_verdict(int32_t index) const {
  return std::binary_search(to_verify_.begin(), to_verify_.end(), index);
}

} // namespace ceco
