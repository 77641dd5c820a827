#pragma once

// Plots of an experiment's summary with gnuplot, when it is installed.

#include <filesystem>
#include <string>
#include <vector>

#include "apps/experiments/summary.hpp"

namespace ceco::app {

/// Writes the plot data and scripts to `dir` and runs gnuplot; the names of
/// the images made (none without gnuplot). A threshold sweep adds the
/// quality/time trade-off; a latency sweep total time and time to first
/// token against latency, a sessions sweep aggregate tokens/s and p95 time
/// per token against concurrent edges, per strategy.
std::vector<std::string> write_plots(const std::filesystem::path& dir,
                                     const std::vector<group_summary>& groups, size_t combos,
                                     bool threshold_sweep, bool latency_sweep = false,
                                     bool sessions_sweep = false, bool workers_sweep = false);

} // namespace ceco::app
