#pragma once

// Summaries of an experiment's results: per combination and strategy, each
// metric's mean over samples (each sample the mean of its repetitions) with a
// 95% bootstrap interval that resamples the samples (apps/experiments/
// bootstrap.hpp says why), and each strategy against the cloud strategy as a
// ratio of means over paired samples with its own interval; written as CSV
// and markdown.

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/experiments/bootstrap.hpp"
#include "apps/experiments/combos.hpp"
#include "config/strategy.hpp"

namespace ceco::app {

/// One metric of one cell.
struct metric_stat {
  double mean = 0;
  std::optional<interval> ci;  // 95% bootstrap interval of the mean; none with one sample
  int samples = 0;             // samples with a value
  int values = 0;              // responses with a value (samples x repetitions)
  /// The interval's ends, or the mean where there is none (an error bar of no length).
  double lo() const { return ci ? ci->lo : mean; }
  double hi() const { return ci ? ci->hi : mean; }
};

/// Mean and 95% interval of values[sample][repetition]: each sample the mean
/// of its repetitions, the interval over samples (see the file's comment);
/// deterministic: the resampling has a fixed seed.
metric_stat cell_stat(const std::vector<std::vector<double>>& values,
                      const bootstrap_options& options = {});

struct group_summary {
  int combo = 0;
  ceco::strategy strategy = ceco::strategy::cloud;
  nlohmann::json keys;
  std::string label;
  int responses = 0;
  int samples = 0;      // distinct samples among the responses
  int repetitions = 0;  // distinct repetitions among the responses
  std::map<std::string, metric_stat> stats;
  std::map<std::string, std::map<int, double>> sample_means;  // metric -> sample -> mean of its repetitions
  std::map<std::string, double> exit_share;                // exit -> share of tokens
};

std::vector<group_summary> summarize(const std::vector<nlohmann::json>& lines,
                                     const std::vector<combo>& combos,
                                     const std::vector<strategy>& strategies);
/// `g`'s mean of `metric` over `base`'s, over the samples both hold, with
/// an interval that resamples those samples in pairs.
estimate ratio_of_means(const group_summary& g, const group_summary& base,
                        const std::string& metric, const bootstrap_options& options = {});

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
