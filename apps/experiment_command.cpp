// ceco experiment: runs what an experiment file describes (strategies,
// samples of a dataset, sweeps, repetitions) through the simulation and
// writes results.jsonl, summary.csv, summary.md and plots to a folder.
// An interrupted run resumes where it stopped.

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "actors/simulation.hpp"
#include "apps/commands.hpp"
#include "apps/datasets.hpp"
#include "apps/report.hpp"
#include "model/metrics.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

struct experiment_args {
  std::string file;
  std::string out;
  std::vector<std::string> sets;
  bool plots = true;
};

/// One point of the sweep: overrides on top of the base settings.
struct combo {
  std::vector<std::string> overrides;
  json keys = json::object();  // threshold, split, exits, upload_dtype, link
  std::string label;           // e.g. "θ=0.8 split=3"
  settings s;
};

std::string exits_text(const std::vector<int>& e) {
  return fmt::format("{}", fmt::join(e, ","));
}

std::vector<combo> make_combos(const settings& base) {
  combo first;
  first.keys["threshold"] = base.policy.threshold;
  first.keys["split"] = base.split.layer;
  first.keys["exit_layers"] = base.model.exits;
  first.keys["upload_dtype"] = base.upload.dtype;
  first.keys["link"] = base.link.profile.empty() ? "custom" : base.link.profile;
  std::vector<combo> out{first};
  auto expand = [&](const char* key, const std::string& setting, const std::vector<json>& values,
                    const std::vector<std::string>& texts, const char* label) {
    if (values.empty())
      return;
    std::vector<combo> next;
    for (auto& c : out)
      for (size_t i = 0; i < values.size(); ++i) {
        combo x = c;
        x.overrides.push_back(setting + "=" + texts[i]);
        x.keys[key] = values[i];
        x.label += fmt::format("{}{}={}", x.label.empty() ? "" : " ", label, texts[i]);
        next.push_back(x);
      }
    out = next;
  };
  std::vector<json> v;
  std::vector<std::string> t;
  auto reset = [&] { v.clear(); t.clear(); };
  for (auto x : base.sweep.threshold) v.push_back(x), t.push_back(fmt::format("{}", x));
  expand("threshold", "policy.threshold", v, t, "θ");
  reset();
  for (auto x : base.sweep.split) v.push_back(x), t.push_back(std::to_string(x));
  expand("split", "split.layer", v, t, "split");
  reset();
  for (auto& x : base.sweep.exits) v.push_back(x), t.push_back("[" + exits_text(x) + "]");
  expand("exit_layers", "model.exits", v, t, "exits");
  reset();
  for (auto& x : base.sweep.upload_dtype) v.push_back(x), t.push_back(x);
  expand("upload_dtype", "upload.dtype", v, t, "dtype");
  reset();
  for (auto& x : base.sweep.link) v.push_back(x), t.push_back(x);
  expand("link", "link.profile", v, t, "link");

  for (auto& c : out) {
    c.s = base;
    for (auto& o : c.overrides)
      apply_override(c.s, o);
    apply_link_profile(c.s);
    // A split sweep without an exits sweep keeps the exits that still fit;
    // with none left, the edge exits at the split itself, untrained.
    if (!base.sweep.split.empty() && base.sweep.exits.empty()) {
      std::vector<int> fit;
      for (int e : c.s.model.exits)
        if (e <= c.s.split.layer)
          fit.push_back(e);
      if (fit.empty()) {
        fit = {c.s.split.layer};
        c.s.model.exit_heads = "none";
      }
      c.s.model.exits = fit;
      c.keys["exit_layers"] = fit;
    }
    if (c.label.empty())
      c.label = "base";
  }
  return out;
}

std::string model_key(const settings& s) {
  return fmt::format("{}|{}|{}|{}|{}", s.model.path, s.model.tokenizer, s.model.exit_heads,
                     exits_text(s.model.exits), s.model.device);
}

std::string duration_text(double seconds) {
  if (seconds < 60)
    return fmt::format("{:.0f}s", seconds);
  if (seconds < 3600)
    return fmt::format("{:.0f}m{:02.0f}s", std::floor(seconds / 60), std::fmod(seconds, 60));
  return fmt::format("{:.0f}h{:02.0f}m", std::floor(seconds / 3600), std::fmod(seconds / 60, 60));
}

// -- summaries ------------------------------------------------------------------

const std::vector<std::pair<const char*, const char*>> summary_metrics = {
  {"total_ms", "total ms"},   {"edge_ms", "edge ms"},     {"cloud_ms", "cloud ms"},
  {"comm_ms", "comm ms"},     {"bytes_up", "bytes up"},   {"bytes_down", "bytes down"},
  {"cloud_request_rate", "cloud req rate"},
  {"agreement_with_cloud", "agree w/ cloud"}, {"rouge_l_with_cloud", "ROUGE-L w/ cloud"},
  {"em", "EM"}, {"f1", "F1"}, {"rouge_l", "ROUGE-L"},
};

struct group_summary {
  int combo = 0;
  std::string strategy;
  json keys;
  std::string label;
  int responses = 0;
  std::map<std::string, std::pair<double, double>> stats;  // metric -> mean, std over repetitions
  std::map<std::string, double> exit_share;                // exit -> share of tokens
};

std::vector<group_summary> summarize(const std::vector<json>& lines,
                                     const std::vector<combo>& combos,
                                     const std::vector<std::string>& strategies) {
  std::vector<group_summary> out;
  for (size_t c = 0; c < combos.size(); ++c)
    for (auto& strategy : strategies) {
      group_summary g;
      g.combo = int(c);
      g.strategy = strategy;
      g.keys = combos[c].keys;
      g.label = combos[c].label;
      std::map<int, std::map<std::string, std::vector<double>>> per_rep;
      double tokens = 0;
      for (auto& j : lines) {
        if (j["combo"] != int(c) || j["mode"] != strategy)
          continue;
        ++g.responses;
        int rep = j["repetition"];
        for (auto& [m, name] : summary_metrics)
          if (j.contains(m))
            per_rep[rep][m].push_back(j[m].get<double>());
        for (auto& [k, v] : j["exits"].items())
          g.exit_share[k] += v.get<double>();
        tokens += j["n_generated"].get<double>();
      }
      if (g.responses == 0)
        continue;
      for (auto& [k, v] : g.exit_share)
        v = tokens > 0 ? v / tokens : 0.0;
      for (auto& [m, name] : summary_metrics) {
        std::vector<double> means;
        for (auto& [rep, metrics] : per_rep)
          if (auto i = metrics.find(m); i != metrics.end() && !i->second.empty()) {
            double sum = 0;
            for (double x : i->second)
              sum += x;
            means.push_back(sum / double(i->second.size()));
          }
        if (means.empty())
          continue;
        double mean = 0, var = 0;
        for (double x : means)
          mean += x;
        mean /= double(means.size());
        for (double x : means)
          var += (x - mean) * (x - mean);
        double sd = means.size() > 1 ? std::sqrt(var / double(means.size() - 1)) : 0.0;
        g.stats[m] = {mean, sd};
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
  out << "combo,label,threshold,split,exits,upload_dtype,link,strategy,responses";
  for (auto& [m, name] : summary_metrics)
    out << "," << m << "_mean," << m << "_std";
  out << ",exit_distribution\n";
  for (auto& g : groups) {
    out << fmt::format("{},\"{}\",{},{},\"{}\",{},{},{},{}", g.combo, g.label,
                       g.keys["threshold"].dump(), g.keys["split"].dump(),
                       exits_text(g.keys["exit_layers"].get<std::vector<int>>()),
                       g.keys["upload_dtype"].get<std::string>(), g.keys["link"].get<std::string>(),
                       g.strategy, g.responses);
    for (auto& [m, name] : summary_metrics) {
      auto i = g.stats.find(m);
      if (i == g.stats.end())
        out << ",,";
      else
        out << fmt::format(",{:.6g},{:.6g}", i->second.first, i->second.second);
    }
    out << ",\"" << exit_share_text(g) << "\"\n";
  }
}

std::string cell(const group_summary& g, const char* m, int precision, double scale = 1.0) {
  auto i = g.stats.find(m);
  if (i == g.stats.end())
    return "-";
  return fmt::format("{:.{}f} ± {:.{}f}", i->second.first * scale, precision,
                     i->second.second * scale, precision);
}

void write_markdown(const fs::path& path, const settings& base, const std::string& dataset,
                    size_t n_samples, const std::vector<group_summary>& groups,
                    const std::vector<std::string>& plots) {
  std::ofstream out(path);
  out << fmt::format("# {}\n\n", base.experiment.name.empty() ? "experiment" : base.experiment.name);
  out << fmt::format("{} samples of {}, up to {} new tokens, {} repetition(s); mean ± std over "
                     "repetitions of the per-response means.\n\n",
                     n_samples, dataset.empty() ? "the prompt" : dataset,
                     base.generation.max_tokens, base.experiment.repetitions);
  out << "| strategy | setting | total ms | edge ms | cloud ms | comm ms | bytes up | bytes down "
         "| cloud req % | exits | agree w/ cloud % | ROUGE-L w/ cloud | EM | F1 | ROUGE-L |\n";
  out << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (auto& g : groups)
    out << fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                       g.strategy, g.label, cell(g, "total_ms", 1), cell(g, "edge_ms", 1),
                       cell(g, "cloud_ms", 1), cell(g, "comm_ms", 1), cell(g, "bytes_up", 0),
                       cell(g, "bytes_down", 0), cell(g, "cloud_request_rate", 1, 100.0),
                       exit_share_text(g), cell(g, "agreement_with_cloud", 1, 100.0),
                       cell(g, "rouge_l_with_cloud", 3), cell(g, "em", 3), cell(g, "f1", 3),
                       cell(g, "rouge_l", 3));
  if (!plots.empty()) {
    out << "\nPlots: ";
    for (size_t i = 0; i < plots.size(); ++i)
      out << (i ? ", " : "") << "`" << plots[i] << "`";
    out << "\n";
  }
}

// -- plots (gnuplot) ------------------------------------------------------------

std::vector<std::string> write_plots(const fs::path& dir, const std::vector<group_summary>& groups,
                                     size_t n_combos, bool threshold_sweep) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    fmt::print(stderr, "experiment: gnuplot is not installed (deploy/install-deps.sh installs "
                       "gnuplot-nox); skipping plots\n");
    return {};
  }
  auto label = [&](const group_summary& g) {
    return n_combos > 1 ? g.strategy + " " + g.label : g.strategy;
  };
  auto mean = [](const group_summary& g, const char* m) {
    auto i = g.stats.find(m);
    return i == g.stats.end() ? 0.0 : i->second.first;
  };
  {
    std::ofstream d(dir / "plot_groups.dat");
    d << "# label edge_ms cloud_ms comm_ms total_ms bytes_up cloud_request_rate\n";
    for (auto& g : groups)
      d << fmt::format("\"{}\" {} {} {} {} {} {}\n", label(g), mean(g, "edge_ms"),
                       mean(g, "cloud_ms"), mean(g, "comm_ms"), mean(g, "total_ms"),
                       std::max(1.0, mean(g, "bytes_up")), mean(g, "cloud_request_rate"));
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
plot "plot_groups.dat" using 2:xtic(1) title "edge", "" using 3 title "cloud", "" using 4 title "communication"
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
plot "plot_groups.dat" using 0:6:xtic(1) with boxes title "bytes up", "" using 0:7 axes x1y2 with points pt 7 ps 2 title "cloud request rate"
unset logscale y
unset y2label
unset y2tics
set ytics mirror
)gp", term, ext);
  }
  if (threshold_sweep) {
    std::ofstream d(dir / "plot_tradeoff.dat");
    d << "# threshold total_ms agreement_with_cloud\n";
    for (auto& g : groups)
      if (g.strategy == "collaborative")
        d << fmt::format("{} {} {}\n", g.keys["threshold"].get<double>(), mean(g, "total_ms"),
                         100 * mean(g, "agreement_with_cloud"));
    for (auto [term, ext] : {std::pair{"pngcairo size 900,600", "png"}, std::pair{"svg size 900,600", "svg"}})
      script += fmt::format(R"gp(
set terminal {0}
set title "Collaborative: agreement with the cloud against latency, by threshold"
set xlabel "total ms per response"
set ylabel "token agreement with the cloud (%)"
set key off
set output "threshold_tradeoff.{1}"
plot "plot_tradeoff.dat" using 2:3 with linespoints pt 7 ps 1.5, "" using 2:3:(sprintf("θ=%g", $1)) with labels offset 0,1
)gp", term, ext);
    made.push_back("threshold_tradeoff.png");
    made.push_back("threshold_tradeoff.svg");
  }
  std::ofstream(dir / "plots.gp") << script;
  auto cmd = fmt::format("cd '{}' && gnuplot plots.gp > gnuplot.log 2>&1", dir.string());
  if (std::system(cmd.c_str()) != 0) {
    fmt::print(stderr, "experiment: gnuplot failed; see {}\n", (dir / "gnuplot.log").string());
    return {};
  }
  return made;
}

// -- the run --------------------------------------------------------------------

std::string result_key(int combo, int rep, size_t sample, const std::string& strategy) {
  return fmt::format("{}/{}/{}/{}", combo, rep, sample, strategy);
}

void run_experiment(const experiment_args& a) {
  auto base = load_settings(a.file, a.sets);
  auto combos = make_combos(base);
  auto strategies = base.experiment.strategies;
  if (strategies.empty())
    throw config_error("experiment.strategies is empty");
  // The cloud runs first in each cell, so the others can be compared to it.
  std::stable_sort(strategies.begin(), strategies.end(),
                   [](auto& x, auto& y) { return x == "cloud" && y != "cloud"; });
  fs::path dir = a.out.empty() ? fs::path("results") / (base.experiment.name.empty()
                                                          ? fs::path(a.file).stem().string()
                                                          : base.experiment.name)
                               : fs::path(a.out);
  fs::create_directories(dir);

  // Load and check every combination's model before running anything.
  std::map<std::string, std::shared_ptr<sim_model>> models;
  for (auto& c : combos) {
    auto key = model_key(c.s);
    if (!models.count(key))
      models[key] = std::make_shared<sim_model>(
        load_sim_model(c.s, default_model_path(), default_exit_heads_path()));
    check_against_model(c.s, models[key]->model->config());
  }
  const auto& first = *models.begin()->second;
  const auto& cfg = first.model->config();
  std::vector<dataset_sample> samples;
  if (base.experiment.dataset.empty())
    samples.push_back({0, base.generation.prompt, ""});
  else
    samples = load_dataset(base.experiment.dataset, base.experiment.format, base.experiment.samples,
                           uint64_t(base.experiment.seed), first.vocab,
                           cfg.max_seq - base.generation.max_tokens - 1);

  // Resume: keep the valid lines of an earlier run with the same settings.
  json identity;
  identity["settings"] = describe_settings(base);
  identity["file"] = fs::absolute(a.file).string();
  auto identity_path = dir / "experiment.json";
  auto results_path = dir / "results.jsonl";
  std::vector<json> lines;
  if (fs::exists(identity_path) && fs::exists(results_path)) {
    json before;
    std::ifstream(identity_path) >> before;
    if (before["settings"] != identity["settings"])
      throw config_error(fmt::format(
        "{} holds results of different settings; use another --out or delete the folder",
        dir.string()));
    std::ifstream in(results_path);
    std::string line;
    while (std::getline(in, line)) {
      try {
        lines.push_back(json::parse(line));
      } catch (const json::exception&) {
        // a line cut short by the interruption: run it again
      }
    }
  }
  std::ofstream(identity_path) << identity.dump(2) << "\n";
  {
    std::ofstream rewrite(results_path, std::ios::trunc);
    for (auto& j : lines)
      rewrite << j.dump() << "\n";
  }
  std::set<std::string> done;
  std::map<std::string, std::vector<int32_t>> cloud_tokens;  // combo/rep/sample -> tokens
  for (auto& j : lines) {
    done.insert(result_key(j["combo"], j["repetition"], j["sample"], j["mode"]));
    if (j["mode"] == "cloud")
      cloud_tokens[result_key(j["combo"], j["repetition"], j["sample"], "")] =
        j["tokens"].get<std::vector<int32_t>>();
  }

  const size_t total = combos.size() * size_t(base.experiment.repetitions) * samples.size() *
                       strategies.size();
  size_t finished = done.size();
  fmt::print(stderr, "experiment: {} combination(s) x {} repetition(s) x {} sample(s) x {} "
                     "strategies = {} responses{}\n",
             combos.size(), base.experiment.repetitions, samples.size(), strategies.size(), total,
             finished ? fmt::format(" ({} done before, resuming)", finished) : "");

  set_compute_threads(1);
  caf::actor_system_config sys_cfg;
  configure_actor_system(sys_cfg, base.runtime.threads);
  caf::actor_system sys{sys_cfg};
  std::ofstream results(results_path, std::ios::app);
  auto t0 = clock_type::now();
  size_t ran = 0;
  const bool tty = isatty(2);
  size_t last_line = 0;
  auto progress = [&] {
    // A bar redrawn in place on a terminal; a line per tenth in a log.
    if (!tty && finished != total && finished < last_line + std::max<size_t>(1, total / 10))
      return;
    last_line = finished;
    const int width = 30;
    int bar = total ? int(double(width) * double(finished) / double(total)) : width;
    double elapsed = std::chrono::duration<double>(clock_type::now() - t0).count();
    double eta = ran ? elapsed / double(ran) * double(total - finished) : 0.0;
    fmt::print(stderr, "{}[{}{}] {}/{} responses, elapsed {}, left ~{}   {}", tty ? "\r" : "",
               std::string(size_t(bar), '#'), std::string(size_t(width - bar), '.'), finished,
               total, duration_text(elapsed), duration_text(eta), tty ? "" : "\n");
  };
  progress();
  for (size_t c = 0; c < combos.size(); ++c) {
    const auto& m = *models[model_key(combos[c].s)];
    std::unique_ptr<simulation> sim;
    for (int rep = 0; rep < base.experiment.repetitions; ++rep)
      for (size_t si = 0; si < samples.size(); ++si)
        for (auto& strategy : strategies) {
          if (done.count(result_key(int(c), rep, si, strategy)))
            continue;
          if (!sim)
            sim = std::make_unique<simulation>(sys, combos[c].s, m);
          const auto& sample = samples[si];
          auto ids = m.vocab.encode(sample.prompt);
          auto r = sim->run(ids, strategy, base.generation.max_tokens);
          auto text = m.vocab.decode(r.tokens, ids.back());
          auto j = report_json(r, sample.prompt, text,
                               formula_bytes_up(strategy, int64_t(ids.size()),
                                                int64_t(r.tokens.size()), cfg.n_embd,
                                                combos[c].s.upload.dtype == "f32" ? 4 : 2));
          j["experiment"] = base.experiment.name;
          j["combo"] = int(c);
          j["setting"] = combos[c].label;
          for (auto& [k, v] : combos[c].keys.items())
            j[k] = v;
          j["repetition"] = rep;
          j["sample"] = si;
          j["dataset_index"] = sample.index;
          auto cell_key = result_key(int(c), rep, si, "");
          if (strategy == "cloud")
            cloud_tokens[cell_key] = r.tokens;
          if (auto i = cloud_tokens.find(cell_key); i != cloud_tokens.end())
            add_cloud_agreement(j, r.tokens, i->second);
          if (!sample.reference.empty()) {
            auto answer = text.substr(0, text.find('\n'));
            j["reference"] = sample.reference;
            j["em"] = exact_match(answer, sample.reference);
            j["f1"] = token_f1(answer, sample.reference);
            j["rouge_l"] = rouge_l(normalized_words(text), normalized_words(sample.reference));
          }
          results << j.dump() << std::endl;  // flushed: an interruption loses at most this line
          lines.push_back(std::move(j));
          ++finished;
          ++ran;
          progress();
        }
  }
  fmt::print(stderr, "\n");

  auto groups = summarize(lines, combos, strategies);
  write_csv(dir / "summary.csv", groups);
  std::vector<std::string> plots;
  if (a.plots)
    plots = write_plots(dir, groups, combos.size(), base.sweep.threshold.size() > 1);
  write_markdown(dir / "summary.md", base, base.experiment.dataset, samples.size(), groups, plots);
  std::ifstream md(dir / "summary.md");
  std::cout << md.rdbuf();
  fmt::print("\nresults in {}/ (results.jsonl, summary.csv, summary.md{})\n", dir.string(),
             plots.empty() ? "" : ", plots");
}

} // namespace

void add_experiment_command(CLI::App& app) {
  auto a = std::make_shared<experiment_args>();
  auto* cmd = app.add_subcommand(
    "experiment", "run an experiment file (strategies x dataset samples x sweeps x repetitions) "
                  "through the simulation and write results, summaries and plots");
  cmd->add_option("file", a->file, "experiment file (TOML; see config/experiments/)")
    ->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out,
                  "results folder (default: results/<experiment.name or file name>); a folder "
                  "with results of the same settings is resumed");
  cmd->add_option("--set", a->sets, "override one setting, e.g. --set experiment.samples=5")
    ->take_all()->allow_extra_args(false);
  cmd->add_flag("!--no-plots", a->plots, "skip the gnuplot plots");
  cmd->callback([a] { run_experiment(*a); });
}

} // namespace ceco::app
