#pragma once

// Quality of one output against a reference, on token ids or on words.

#include <cstdint>
#include <string>
#include <vector>

namespace ceco {

/// Share of positions where both sequences hold the same token, over the
/// longer length (1 when both are empty).
double token_agreement(const std::vector<int32_t>& a, const std::vector<int32_t>& reference);

/// ROUGE-L F1: from the longest common subsequence.
double rouge_l(const std::vector<std::string>& candidate, const std::vector<std::string>& reference);
double rouge_l(const std::vector<int32_t>& candidate, const std::vector<int32_t>& reference);

/// SQuAD-style normalisation: lower case, no punctuation, no articles,
/// single spaces; then split into words.
std::vector<std::string> normalized_words(const std::string& text);
/// 1 if the normalised texts are equal.
double exact_match(const std::string& candidate, const std::string& reference);
/// Word-overlap F1 of the normalised texts.
double token_f1(const std::string& candidate, const std::string& reference);

} // namespace ceco
