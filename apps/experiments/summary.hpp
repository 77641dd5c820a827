#pragma once

// Summaries of an experiment's results: per combination and strategy, each
// metric's mean over samples (each sample the mean of its repetitions) with a
// 95% bootstrap interval that resamples samples and, within each, its
// repetitions, so the spread over both shows; written as CSV and markdown.

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/experiments/combos.hpp"
#include "config/strategy.hpp"

namespace ceco::app {

/// One metric of one cell.
struct metric_stat {
  double mean = 0;
  double lo = 0, hi = 0;  // 95% bootstrap interval; lo == hi == mean for a single value
  int samples = 0;        // samples with a value
  int values = 0;         // responses with a value (samples x repetitions)
};

/// Mean and 95% interval of values[sample][repetition] (see the file's
/// comment); deterministic: the resampling has a fixed seed.
metric_stat bootstrap(const std::vector<std::vector<double>>& values, int resamples = 2000);

struct group_summary {
  int combo = 0;
  ceco::strategy strategy = ceco::strategy::cloud;
  nlohmann::json keys;
  std::string label;
  int responses = 0;
  int samples = 0;      // distinct samples among the responses
  int repetitions = 0;  // distinct repetitions among the responses
  std::map<std::string, metric_stat> stats;
  std::map<std::string, double> exit_share;                // exit -> share of tokens
};

std::vector<group_summary> summarize(const std::vector<nlohmann::json>& lines,
                                     const std::vector<combo>& combos,
                                     const std::vector<strategy>& strategies);
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
