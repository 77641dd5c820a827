#pragma once

// The resume ledger of an experiment folder: experiment.json (the settings
// the results belong to) and results.jsonl (one line per response, flushed
// as it is written). Opening a folder keeps the valid lines of an earlier
// run with the same settings, so an interrupted experiment resumes where it
// stopped; a folder of other settings is refused.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/strategy.hpp"

namespace ceco::app {

/// "combo/repetition/sample/strategy": one response of the experiment.
std::string result_key(int combo, int rep, size_t sample, const std::string& strategy);

class result_ledger {
public:
  /// Opens `dir` for the settings `identity`; throws config_error when the
  /// folder holds results of other settings.
  result_ledger(const std::filesystem::path& dir, const nlohmann::json& identity);

  bool done(int combo, int rep, size_t sample, strategy mode) const;
  size_t done_count() const { return done_.size(); }
  /// The cloud strategy's tokens of a cell (combo, repetition, sample), or null.
  const std::vector<int32_t>* cloud_tokens(int combo, int rep, size_t sample) const;
  /// Appends one response (with its "combo", "repetition", "sample", "mode"
  /// and "tokens") and flushes it: an interruption loses at most this line.
  void add(nlohmann::json line);
  const std::vector<nlohmann::json>& lines() const { return lines_; }

private:
  void remember(const nlohmann::json& j);

  std::vector<nlohmann::json> lines_;
  std::set<std::string> done_;
  std::map<std::string, std::vector<int32_t>> cloud_tokens_;  // combo/rep/sample -> tokens
  std::ofstream results_;
};

} // namespace ceco::app
