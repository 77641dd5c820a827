#pragma once

// Plots of an experiment's summary with gnuplot, when it is installed.

#include <filesystem>
#include <string>
#include <vector>

#include "apps/experiments/summary.hpp"

namespace ceco::app {

/// Writes the plot data (plot_*.dat) and the gnuplot script (plots.gp) to
/// `dir`; the names of the images the script makes. Every point that is a
/// mean carries its 95% interval as an error bar (of no length where the
/// summary has no interval); the stacked time breakdown carries the total's.
/// A threshold sweep adds the quality/time trade-off; a latency sweep total
/// time and time to first token against latency, a sessions sweep aggregate
/// tokens/s and p95 time per token against concurrent edges, per strategy.
std::vector<std::string> write_plot_script(const std::filesystem::path& dir,
                                           const std::vector<group_summary>& groups,
                                           size_t combos, bool threshold_sweep,
                                           bool latency_sweep = false, bool sessions_sweep = false,
                                           bool workers_sweep = false);

/// write_plot_script, then runs gnuplot; the names of the images made (none
/// without gnuplot or when it fails).
std::vector<std::string> write_plots(const std::filesystem::path& dir,
                                     const std::vector<group_summary>& groups, size_t combos,
                                     bool threshold_sweep, bool latency_sweep = false,
                                     bool sessions_sweep = false, bool workers_sweep = false);

} // namespace ceco::app
