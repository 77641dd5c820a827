#pragma once

// Summaries of an experiment's results: per combination and strategy, the
// mean and spread of each metric over repetitions and samples, written as
// CSV and markdown.

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/experiments/combos.hpp"

namespace ceco::app {

struct group_summary {
  int combo = 0;
  std::string strategy;
  nlohmann::json keys;
  std::string label;
  int responses = 0;
  std::map<std::string, std::pair<double, double>> stats;  // metric -> mean, std over repetitions
  std::map<std::string, double> exit_share;                // exit -> share of tokens
};

std::vector<group_summary> summarize(const std::vector<nlohmann::json>& lines,
                                     const std::vector<combo>& combos,
                                     const std::vector<std::string>& strategies);
void write_csv(const std::filesystem::path& path, const std::vector<group_summary>& groups);
/// How well profile mode on the host's clock followed its profile: pieces
/// of work for which the host took longer than the profile's cost, and the
/// largest excess in ms.
struct profile_fit {
  int64_t overruns = 0;
  double worst_ms = 0;
};
void write_markdown(const std::filesystem::path& path, const settings& base,
                    const std::string& dataset, size_t samples,
                    const std::vector<group_summary>& groups, const std::vector<std::string>& plots,
                    const profile_fit& fit);

} // namespace ceco::app
