#pragma once

// Percentile bootstrap intervals for experiment summaries.
//
// The unit resampled is a sample (a prompt): samples are what an experiment
// draws from its dataset and what its conclusions generalise over. A
// sample's repetitions are averaged into one value before resampling, so
// their noise is carried by that value; they are not resampled on their
// own, because repetitions of one prompt are not independent draws
// (resampling (sample, repetition) pairs would treat them as such and give
// too narrow an interval, and resampling repetitions again inside each
// sample counts their noise twice). With fewer than two samples there is
// nothing to resample and no interval is given.
//
// Deterministic: the generator has a fixed seed and indices are drawn as
// `mt19937_64() % n`, which the standard fixes on every platform (unlike
// std::uniform_int_distribution), so a summary is reproducible.

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace ceco::app {

struct interval {
  double lo = 0, hi = 0;
};

struct bootstrap_options {
  int resamples = 2000;
  double level = 0.95;       // the interval's coverage
  uint64_t seed = 0x5eed;
};

/// A statistic of some units and, where it can be estimated, its interval.
struct estimate {
  double value = 0;
  std::optional<interval> ci;  // none with fewer than two units
  int units = 0;
};

/// The mean of `units` with a percentile bootstrap interval of the mean.
estimate bootstrap_mean(const std::vector<double>& units, const bootstrap_options& options = {});

/// The ratio of means sum(first) / sum(second) of paired units (a
/// strategy's and the cloud's value on the same sample), with a percentile
/// bootstrap interval that resamples the pairs together, so what the two
/// share (a long prompt is slow for both) cancels in the ratio. No value
/// (units = 0) when the second mean is not positive; no interval when a
/// resample's second mean is not positive.
estimate bootstrap_ratio_of_means(const std::vector<std::pair<double, double>>& pairs,
                                  const bootstrap_options& options = {});

/// The q-quantile (0..1) of sorted values, interpolated between the two
/// nearest order statistics.
double quantile_of_sorted(const std::vector<double>& sorted, double q);

} // namespace ceco::app
