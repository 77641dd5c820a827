#include "apps/experiments/bootstrap.hpp"

#include <algorithm>
#include <cmath>
#include <random>

namespace ceco::app {

namespace {

/// The percentile interval of `stats` (one statistic per resample).
interval percentile_interval(std::vector<double> stats, double level) {
  std::sort(stats.begin(), stats.end());
  const double tail = (1.0 - level) / 2.0;
  return {quantile_of_sorted(stats, tail), quantile_of_sorted(stats, 1.0 - tail)};
}

} // namespace

double quantile_of_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty())
    return 0;
  const double at = std::clamp(q, 0.0, 1.0) * double(sorted.size() - 1);
  const size_t below = size_t(std::floor(at));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double frac = at - double(below);
  return sorted[below] + frac * (sorted[above] - sorted[below]);
}

estimate bootstrap_mean(const std::vector<double>& units, const bootstrap_options& options) {
  estimate out;
  out.units = int(units.size());
  if (units.empty())
    return out;
  double sum = 0;
  for (double x : units)
    sum += x;
  out.value = sum / double(units.size());
  if (units.size() < 2 || options.resamples < 1)
    return out;
  std::mt19937_64 rng(options.seed);
  const size_t n = units.size();
  std::vector<double> means(size_t(options.resamples));
  for (auto& mean : means) {
    double total = 0;
    for (size_t i = 0; i < n; ++i)
      total += units[rng() % n];
    mean = total / double(n);
  }
  out.ci = percentile_interval(std::move(means), options.level);
  return out;
}

estimate bootstrap_ratio_of_means(const std::vector<std::pair<double, double>>& pairs,
                                  const bootstrap_options& options) {
  estimate out;
  double num = 0, den = 0;
  for (auto [a, b] : pairs) {
    num += a;
    den += b;
  }
  if (pairs.empty() || !(den > 0))
    return out;
  out.units = int(pairs.size());
  out.value = num / den;
  if (pairs.size() < 2 || options.resamples < 1)
    return out;
  std::mt19937_64 rng(options.seed);
  const size_t n = pairs.size();
  std::vector<double> ratios(size_t(options.resamples));
  for (auto& ratio : ratios) {
    double a = 0, b = 0;
    for (size_t i = 0; i < n; ++i) {
      const auto& p = pairs[rng() % n];
      a += p.first;
      b += p.second;
    }
    if (!(b > 0))
      return out;  // a resample without a denominator: no interval
    ratio = a / b;
  }
  out.ci = percentile_interval(std::move(ratios), options.level);
  return out;
}

} // namespace ceco::app
