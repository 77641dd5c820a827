#include "apps/experiments/summary.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <random>
#include <set>

#include <fmt/format.h>

namespace ceco::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::vector<std::pair<const char*, const char*>> summary_metrics = {
  {"total_ms", "total ms"},   {"edge_ms", "edge ms"},     {"cloud_ms", "cloud ms"},
  {"comm_ms", "comm ms"},     {"bytes_up", "bytes up"},   {"bytes_down", "bytes down"},
  {"ttft_ms", "TTFT ms"},     {"itl_p95_ms", "ITL p95 ms"},
  {"cloud_ms_per_token", "cloud ms/token"}, {"rollbacks", "rollbacks"},
  {"ms_per_token", "ms/token"}, {"p95_ms_per_token", "p95 ms/token"},
  {"aggregate_tokens_per_s", "tokens/s, all edges"},
  {"cloud_request_rate", "cloud req rate"},
  {"agreement_with_cloud", "agree w/ cloud"}, {"rouge_l_with_cloud", "ROUGE-L w/ cloud"},
  {"em", "EM"}, {"f1", "F1"}, {"rouge_l", "ROUGE-L"},
};

} // namespace

metric_stat cell_stat(const std::vector<std::vector<double>>& values,
                      const bootstrap_options& options) {
  metric_stat out;
  std::vector<double> sample_means;
  for (const auto& reps : values) {
    if (reps.empty())
      continue;
    double sum = 0;
    for (double x : reps)
      sum += x;
    sample_means.push_back(sum / double(reps.size()));
    out.values += int(reps.size());
  }
  const estimate e = bootstrap_mean(sample_means, options);
  out.mean = e.value;
  out.ci = e.ci;
  out.samples = e.units;
  return out;
}

estimate ratio_of_means(const group_summary& g, const group_summary& base,
                        const std::string& metric, const bootstrap_options& options) {
  auto mine = g.sample_means.find(metric), theirs = base.sample_means.find(metric);
  if (mine == g.sample_means.end() || theirs == base.sample_means.end())
    return {};
  std::vector<std::pair<double, double>> pairs;
  for (auto [sample, value] : mine->second) {
    auto other = theirs->second.find(sample);
    if (other != theirs->second.end())
      pairs.emplace_back(value, other->second);
  }
  return bootstrap_ratio_of_means(pairs, options);
}

/// The strategy's name; exact with f16 uploads says it is exact only to the
/// f16 split (docs/design.md §5).
std::string strategy_cell(const group_summary& g) {
  std::string name = to_string(g.strategy);
  if (g.strategy == strategy::exact && g.keys.is_object()
      && g.keys.value("upload_dtype", std::string()) == "f16")
    name += " (exact to the f16 split)";
  return name;
}

std::vector<group_summary> summarize(const std::vector<json>& lines,
                                     const std::vector<combo>& combos,
                                     const std::vector<strategy>& strategies) {
  std::vector<group_summary> out;
  for (size_t c = 0; c < combos.size(); ++c)
    for (auto& strategy : strategies) {
      group_summary g;
      g.combo = int(c);
      g.strategy = strategy;
      g.keys = combos[c].keys;
      g.label = combos[c].label;
      // metric -> sample -> one value per repetition
      std::map<std::string, std::map<int, std::vector<double>>> values;
      std::set<int> samples, repetitions;
      double tokens = 0;
      for (auto& j : lines) {
        if (j["combo"] != int(c) || j["mode"] != to_string(strategy))
          continue;
        ++g.responses;
        const int sample = j.value("sample", 0);
        samples.insert(sample);
        repetitions.insert(j.value("repetition", 0));
        for (auto& [m, name] : summary_metrics)
          if (j.contains(m) && j[m].is_number())  // ttft_ms is null without tokens
            values[m][sample].push_back(j[m].get<double>());
        for (auto& [k, v] : j["exits"].items())
          g.exit_share[k] += v.get<double>();
        tokens += j["n_generated"].get<double>();
      }
      if (g.responses == 0)
        continue;
      g.samples = int(samples.size());
      g.repetitions = int(repetitions.size());
      for (auto& [k, v] : g.exit_share)
        v = tokens > 0 ? v / tokens : 0.0;
      for (auto& [m, per_sample] : values) {
        std::vector<std::vector<double>> table;
        for (auto& [sample, reps] : per_sample) {
          table.push_back(reps);
          double sum = 0;
          for (double x : reps)
            sum += x;
          g.sample_means[m][sample] = sum / double(reps.size());
        }
        g.stats[m] = cell_stat(table);
      }
      out.push_back(g);
    }
  return out;
}

std::string exit_share_text(const group_summary& g) {
  std::string out;
  for (auto& [k, v] : g.exit_share)
    if (v > 0)
      out += fmt::format("{}{}:{:.0f}%", out.empty() ? "" : " ", k, 100 * v);
  return out;
}

void write_csv(const fs::path& path, const std::vector<group_summary>& groups) {
  std::ofstream out(path);
  out << "combo,label,threshold,split,exits,upload_dtype,link,strategy,responses,samples,"
         "repetitions";
  for (auto& [m, name] : summary_metrics)
    out << "," << m << "_mean," << m << "_ci95_lo," << m << "_ci95_hi";
  out << ",exit_distribution\n";
  for (auto& g : groups) {
    out << fmt::format("{},\"{}\",{},{},\"{}\",{},{},{},{}", g.combo, g.label,
                       g.keys["threshold"].dump(), g.keys["split"].dump(),
                       exits_text(g.keys["exit_layers"].get<std::vector<int>>()),
                       g.keys["upload_dtype"].get<std::string>(), g.keys["link"].get<std::string>(),
                       to_string(g.strategy), g.responses);
    out << fmt::format(",{},{}", g.samples, g.repetitions);
    for (auto& [m, name] : summary_metrics) {
      auto i = g.stats.find(m);
      if (i == g.stats.end())
        out << ",,,";
      else if (!i->second.ci)  // one sample: a mean, no interval
        out << fmt::format(",{:.6g},,", i->second.mean);
      else
        out << fmt::format(",{:.6g},{:.6g},{:.6g}", i->second.mean, i->second.ci->lo,
                           i->second.ci->hi);
    }
    out << ",\"" << exit_share_text(g) << "\"\n";
  }
}

/// Below this many samples summary.md warns that the intervals are rough.
constexpr int few_samples = 10;

/// "0.862 [0.841, 0.880]": a value and its interval, each through `show`;
/// "0.862 [n/a]" without an interval (one sample); the bare value where the
/// interval has no width at the cell's precision (every sample the same).
template <class Show>
std::string with_interval(double value, const std::optional<interval>& ci, Show show) {
  if (!ci)
    return show(value) + " [n/a]";
  const std::string lo = show(ci->lo), hi = show(ci->hi);
  if (lo == hi && lo == show(value))
    return lo;
  return fmt::format("{} [{}, {}]", show(value), lo, hi);
}

std::string cell(const group_summary& g, const char* m, int precision, double scale = 1.0) {
  auto i = g.stats.find(m);
  if (i == g.stats.end())
    return "-";
  return with_interval(i->second.mean, i->second.ci,
                       [&](double x) { return fmt::format("{:.{}f}", x * scale, precision); });
}

/// Each strategy against the cloud strategy of the same setting, beside the
/// experiment's reference result when it gives one.
void write_relative_to_cloud(std::ostream& out, const settings& base,
                             const std::vector<group_summary>& groups) {
  const auto& ref = base.experiment.reference;
  const bool with_ref = !ref.name.empty() || !ref.total_vs_cloud.empty()
                        || !ref.cloud_compute_vs_cloud.empty();
  auto given = [](const std::map<std::string, double>& m, const std::string& strategy,
                  bool as_change) {
    auto i = m.find(strategy);
    if (i == m.end())
      return std::string("-");
    return as_change ? fmt::format("{:+.1f}%", 100.0 * i->second) : fmt::format("{:.3f}", i->second);
  };
  std::string rows;
  for (const auto& g : groups) {
    if (g.strategy == strategy::cloud)
      continue;
    auto cloud = std::find_if(groups.begin(), groups.end(), [&](const group_summary& c) {
      return c.strategy == strategy::cloud && c.combo == g.combo;
    });
    if (cloud == groups.end())
      continue;
    const estimate total = ratio_of_means(g, *cloud, "total_ms");
    const estimate compute = ratio_of_means(g, *cloud, "cloud_ms");
    std::string total_ratio =
      total.units ? with_interval(total.value, total.ci,
                                  [](double r) { return fmt::format("{:.3f}", r); })
                  : "-";
    std::string compute_change =
      compute.units ? with_interval(compute.value, compute.ci,
                                    [](double r) { return fmt::format("{:+.1f}%", 100.0 * (r - 1.0)); })
                    : "-";
    rows += fmt::format("| {} | {} | {} | {} | {} |", to_string(g.strategy), g.label, total.units,
                        total_ratio, compute_change);
    if (with_ref)
      rows += fmt::format(" {} | {} |", given(ref.total_vs_cloud, to_string(g.strategy), false),
                          given(ref.cloud_compute_vs_cloud, to_string(g.strategy), true));
    rows += "\n";
  }
  if (rows.empty())
    return;
  out << "\nRelative to the cloud strategy of the same setting (total time as a ratio, the "
         "cloud's compute time as a change)";
  if (with_ref)
    out << fmt::format(", beside {}", ref.name.empty() ? "the reference" : ref.name);
  out << ". Each is the ratio of the two strategies' means over the samples both ran "
         "(`pairs`), with a 95% bootstrap interval that resamples those samples in pairs, so a "
         "prompt that is slow for both moves both sides of the ratio together:\n\n"
         "| strategy | setting | pairs | total / cloud | cloud compute vs cloud |";
  if (with_ref)
    out << " reference total / cloud | reference cloud compute |";
  out << (with_ref ? "\n|---|---|---|---|---|---|---|\n" : "\n|---|---|---|---|---|\n") << rows;
}

void write_markdown(const fs::path& path, const settings& base, const std::string& dataset,
                    size_t n_samples, const std::vector<group_summary>& groups,
                    const std::vector<std::string>& plots, const profile_fit& fit) {
  std::ofstream out(path);
  out << fmt::format("# {}\n\n", base.experiment.name.empty() ? "experiment" : base.experiment.name);
  const bootstrap_options bootstrap;
  out << fmt::format("{} sample{} of {}, up to {} new tokens, {} repetition(s). Each cell: the mean "
                     "over samples (each sample first the mean of its repetitions) and, in "
                     "brackets, a {:.0f}% bootstrap confidence interval of that mean (percentile "
                     "interval of {} resamples of the samples, fixed seed): the spread across "
                     "prompts, with each prompt's repetitions folded into its value. `[n/a]`: one "
                     "sample, no interval; a bare value: an interval of no width at the precision "
                     "shown (every sample gave the same). `n` is the row's samples x repetitions.\n\n",
                     n_samples, n_samples == 1 ? "" : "s", dataset.empty() ? "the prompt" : dataset,
                     base.generation.max_tokens, base.experiment.repetitions,
                     100 * bootstrap.level, bootstrap.resamples);
  const bool few = std::any_of(groups.begin(), groups.end(), [](const group_summary& g) {
    return g.samples > 1 && g.samples < few_samples;
  });
  if (few)
    out << fmt::format("**Few samples:** a row of fewer than {} samples has a rough interval that "
                       "tends to be too narrow (a resample can only repeat the few values there "
                       "are); more samples (experiment.samples) give a trustworthy one.\n\n",
                       few_samples);
  if (base.compute.mode == "profile") {
    out << fmt::format("**Compute: device profile `{}`.** Edge and cloud times are the profile's "
                       "costs for the work each response did, not measurements on this machine; "
                       "tokens, exits and bytes are real.", base.compute.profile);
    if (base.compute.clock == "virtual")
      out << " Run on virtual time (compute.clock): the host's own work took no time, so the "
             "times are exactly the profile's costs and the link's delays.\n\n";
    else if (fit.overruns == 0)
      out << " Every piece of work fitted in its profiled cost.\n\n";
    else
      out << fmt::format(" **{} piece(s) of work took longer on this host than the profile's cost** "
                         "(worst by {:.2f} ms), so some times are late by up to that much; "
                         "compute.clock = \"virtual\" avoids it.\n\n",
                         fit.overruns, fit.worst_ms);
  } else
    out << "Compute: measured on this machine.\n\n";
  out << "| strategy | setting | n | total ms | TTFT ms | p95 ms/token | tokens/s, all edges | edge ms "
         "| cloud ms | cloud ms/token | comm ms | bytes up | bytes down | cloud req % | rollbacks "
         "| exits | agree w/ cloud % | ROUGE-L w/ cloud | EM | F1 | ROUGE-L |\n";
  out << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (auto& g : groups)
    out << fmt::format("| {} | {} | {} x {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} "
                       "| {} | {} | {} | {} | {} | {} | {} |\n",
                       strategy_cell(g), g.label, g.samples, g.repetitions, cell(g, "total_ms", 1), cell(g, "ttft_ms", 1),
                       cell(g, "p95_ms_per_token", 2), cell(g, "aggregate_tokens_per_s", 0),
                       cell(g, "edge_ms", 1), cell(g, "cloud_ms", 1),
                       cell(g, "cloud_ms_per_token", 3), cell(g, "comm_ms", 1), cell(g, "bytes_up", 0),
                       cell(g, "bytes_down", 0), cell(g, "cloud_request_rate", 1, 100.0),
                       cell(g, "rollbacks", 1), exit_share_text(g), cell(g, "agreement_with_cloud", 1, 100.0),
                       cell(g, "rouge_l_with_cloud", 3), cell(g, "em", 3), cell(g, "f1", 3),
                       cell(g, "rouge_l", 3));
  write_relative_to_cloud(out, base, groups);
  if (!plots.empty()) {
    out << "\nPlots: ";
    for (size_t i = 0; i < plots.size(); ++i)
      out << (i ? ", " : "") << "`" << plots[i] << "`";
    out << "\n";
  }
}

} // namespace ceco::app
