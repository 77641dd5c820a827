#include "apps/experiments/plots.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

namespace ceco::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

/// Mean and 95% interval of a metric (zeros where absent; lo() == hi() ==
/// mean where there is no interval, an error bar of no length).
metric_stat stat_of(const group_summary& g, const char* m) {
  auto i = g.stats.find(m);
  return i == g.stats.end() ? metric_stat{} : i->second;
}

struct sweep_plot {
  const char* metric;
  const char* title;
  const char* ylabel;
  const char* file;
};

/// Data (one gnuplot index per series, ordered by the swept key) and the
/// script of plots of `metrics` against the swept key; adds the images to `made`.
/// A series is a strategy, or a strategy and its value of `series_key` when
/// another key is swept too ("exact, 64 edges").
std::string sweep_plots(const fs::path& dir, const std::vector<group_summary>& groups,
                        const char* key, const char* xlabel, bool log_x,
                        const std::vector<sweep_plot>& plots, std::vector<std::string>& made,
                        const char* series_key = nullptr, const char* series_unit = "") {
  const std::string data = std::string("plot_") + key + ".dat";
  std::ofstream d(dir / data);
  auto series_of = [&](const group_summary& g) {
    if (!series_key || !g.keys.contains(series_key))
      return std::string(to_string(g.strategy));
    return fmt::format("{}, {} {}", to_string(g.strategy), g.keys.at(series_key).dump(), series_unit);
  };
  std::vector<std::string> strategies;
  for (auto& g : groups)
    if (std::find(strategies.begin(), strategies.end(), series_of(g)) == strategies.end())
      strategies.push_back(series_of(g));
  for (auto& s : strategies) {
    d << "# " << s << ": " << key;
    for (auto& p : plots)
      d << " " << p.metric << " lo hi";
    d << "\n";
    std::vector<const group_summary*> rows;
    for (auto& g : groups)
      if (series_of(g) == s)
        rows.push_back(&g);
    std::sort(rows.begin(), rows.end(), [&](auto* a, auto* b) {
      return a->keys.at(key).template get<double>() < b->keys.at(key).template get<double>();
    });
    for (auto* g : rows) {
      d << g->keys.at(key).get<double>();
      for (auto& p : plots) {
        auto x = stat_of(*g, p.metric);
        d << " " << x.mean << " " << x.lo() << " " << x.hi();
      }
      d << "\n";
    }
    d << "\n\n";
  }
  std::string script;
  for (auto [term, ext] : {std::pair{"pngcairo size 900,600", "png"}, std::pair{"svg size 900,600", "svg"}}) {
    script += fmt::format("\nset terminal {}\nset key top left\nset xlabel \"{}\"\nset logscale y\n{}",
                          term, xlabel, log_x ? "set logscale x 2\n" : "");
    for (size_t i = 0; i < plots.size(); ++i) {
      std::string curves;
      for (size_t k = 0; k < strategies.size(); ++k)
        curves += fmt::format("{}\"{}\" index {} using 1:{}:{}:{} with yerrorlines pt 7 title \"{}\"",
                              k ? ", " : "", data, k, 3 * i + 2, 3 * i + 3, 3 * i + 4,
                              strategies[k]);
      script += fmt::format("set title \"{}\"\nset ylabel \"{}\"\nset output \"{}.{}\"\nplot {}\n",
                            plots[i].title, plots[i].ylabel, plots[i].file, ext, curves);
      made.push_back(fmt::format("{}.{}", plots[i].file, ext));
    }
    script += fmt::format("unset logscale y\n{}", log_x ? "unset logscale x\n" : "");
  }
  return script;
}

} // namespace

std::vector<std::string> write_plot_script(const fs::path& dir,
                                           const std::vector<group_summary>& groups,
                                           size_t n_combos, bool threshold_sweep,
                                           bool latency_sweep, bool sessions_sweep,
                                           bool workers_sweep) {
  auto label = [&](const group_summary& g) {
    const std::string name = to_string(g.strategy);
    return n_combos > 1 ? name + " " + g.label : name;
  };
  auto mean = [](const group_summary& g, const char* m) { return stat_of(g, m).mean; };
  {
    std::ofstream d(dir / "plot_groups.dat");
    d << "# label edge_ms cloud_ms comm_ms total_ms bytes_up cloud_request_rate total_lo "
         "total_hi bytes_lo bytes_hi rate_lo rate_hi\n";
    for (auto& g : groups) {
      auto total = stat_of(g, "total_ms"), bytes = stat_of(g, "bytes_up"),
           rate = stat_of(g, "cloud_request_rate");
      d << fmt::format("\"{}\" {} {} {} {} {} {} {} {} {} {} {} {}\n", label(g), mean(g, "edge_ms"),
                       mean(g, "cloud_ms"), mean(g, "comm_ms"), total.mean,
                       std::max(1.0, bytes.mean), rate.mean, total.lo(), total.hi(),
                       std::max(1.0, bytes.lo()), std::max(1.0, bytes.hi()), rate.lo(), rate.hi());
    }
  }
  std::vector<std::string> made = {"time_breakdown.png", "time_breakdown.svg", "bytes.png", "bytes.svg"};
  std::string script;
  for (auto [term, ext] : {std::pair{"pngcairo size 1000,600", "png"}, std::pair{"svg size 1000,600", "svg"}}) {
    script += fmt::format(R"gp(
set terminal {0}
set datafile separator whitespace
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by -30
set key below
set ylabel "ms per response"
set title "Time per response: edge, cloud and communication"
set output "time_breakdown.{1}"
plot "plot_groups.dat" using 2:xtic(1) title "edge", "" using 3 title "cloud", "" using 4 title "communication", "" using 0:5:8:9 with yerrorbars lc rgb "black" pt 0 title "total, 95% interval"
unset style
set style fill solid 0.8 border -1
set logscale y
set ylabel "bytes up per response (log)"
set y2label "cloud request rate"
set y2range [0:1.05]
set y2tics
set ytics nomirror
set title "Bytes per response and cloud request rate"
set output "bytes.{1}"
plot "plot_groups.dat" using 0:6:xtic(1) with boxes title "bytes up", "" using 0:6:10:11 with yerrorbars lc rgb "black" pt 0 title "95% interval", "" using 0:7:12:13 axes x1y2 with yerrorbars pt 7 ps 2 title "cloud request rate, 95% interval"
unset logscale y
unset y2label
unset y2tics
set ytics mirror
)gp", term, ext);
  }
  if (threshold_sweep) {
    std::ofstream d(dir / "plot_tradeoff.dat");
    d << "# threshold total_ms agreement_with_cloud total_lo total_hi agreement_lo agreement_hi\n";
    for (auto& g : groups)
      if (g.strategy == strategy::collaborative) {
        auto total = stat_of(g, "total_ms"), agree = stat_of(g, "agreement_with_cloud");
        d << fmt::format("{} {} {} {} {} {} {}\n", g.keys["threshold"].get<double>(), total.mean,
                         100 * agree.mean, total.lo(), total.hi(), 100 * agree.lo(),
                         100 * agree.hi());
      }
    for (auto [term, ext] : {std::pair{"pngcairo size 900,600", "png"}, std::pair{"svg size 900,600", "svg"}})
      script += fmt::format(R"gp(
set terminal {0}
set title "Collaborative: agreement with the cloud against latency, by threshold"
set xlabel "total ms per response"
set ylabel "token agreement with the cloud (%)"
set key off
set output "threshold_tradeoff.{1}"
plot "plot_tradeoff.dat" using 2:3 with lines, "" using 2:3:4:5:6:7 with xyerrorbars pt 7 ps 1.5, "" using 2:3:(sprintf("θ=%g", $1)) with labels offset 0,1
)gp", term, ext);
    made.push_back("threshold_tradeoff.png");
    made.push_back("threshold_tradeoff.svg");
  }
  if (latency_sweep)
    script += sweep_plots(dir, groups, "latency_ms", "one-way link latency (ms)", false,
                          {{"total_ms", "Total time per response against link latency",
                            "total ms per response (log)", "latency_total"},
                           {"ttft_ms", "Time to first token against link latency",
                            "time to first token, ms (log)", "latency_ttft"}},
                          made);
  if (workers_sweep)
    script += sweep_plots(dir, groups, "workers", "cloud workers (each its own device)", true,
                          {{"aggregate_tokens_per_s", "Tokens per second of all edges against cloud workers",
                            "tokens/s (log)", "cluster_throughput"},
                           {"p95_ms_per_token", "p95 time per token against cloud workers",
                            "p95 ms per token (log)", "cluster_p95"}},
                          made, sessions_sweep ? "sessions" : nullptr, "edges");
  else if (sessions_sweep)
    script += sweep_plots(dir, groups, "sessions", "concurrent edges against one cloud", true,
                          {{"aggregate_tokens_per_s", "Tokens per second of all edges together",
                            "tokens/s (log)", "capacity_throughput"},
                           {"p95_ms_per_token", "p95 time per token against concurrent edges",
                            "p95 ms per token (log)", "capacity_p95"}},
                          made);
  std::ofstream(dir / "plots.gp") << script;
  return made;
}

std::vector<std::string> write_plots(const fs::path& dir, const std::vector<group_summary>& groups,
                                     size_t n_combos, bool threshold_sweep, bool latency_sweep,
                                     bool sessions_sweep, bool workers_sweep) {
  auto made = write_plot_script(dir, groups, n_combos, threshold_sweep, latency_sweep,
                                sessions_sweep, workers_sweep);
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    fmt::print(stderr, "experiment: gnuplot is not installed (deploy/install-deps.sh installs "
                       "gnuplot-nox); plots.gp is written, the plots are not\n");
    return {};
  }
  auto cmd = fmt::format("cd '{}' && gnuplot plots.gp > gnuplot.log 2>&1", dir.string());
  if (std::system(cmd.c_str()) != 0) {
    fmt::print(stderr, "experiment: gnuplot failed; see {}\n", (dir / "gnuplot.log").string());
    return {};
  }
  return made;
}

} // namespace ceco::app
