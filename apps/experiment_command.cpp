// ceco experiment: runs what an experiment file describes (strategies,
// samples of a dataset, sweeps, repetitions) on the edge and cloud sites in
// one process and writes results.jsonl, summary.csv, summary.md and plots to
// a folder. An interrupted run resumes where it stopped. The pieces live in
// apps/experiments/: combinations, the resume ledger, summaries, plots.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/deployment.hpp"
#include "actors/sim_clock.hpp"
#include "apps/commands.hpp"
#include "apps/datasets.hpp"
#include "apps/experiments/combos.hpp"
#include "apps/experiments/ledger.hpp"
#include "apps/experiments/plots.hpp"
#include "apps/experiments/summary.hpp"
#include "apps/report.hpp"
#include "model/metrics.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;  // the run's own progress, in real time

struct experiment_args {
  std::string file;
  std::string out;
  std::vector<std::string> sets;
  bool plots = true;
  bool check = false;  // --check: validate every combination, run nothing
};

std::string duration_text(double seconds) {
  if (seconds < 60)
    return fmt::format("{:.0f}s", seconds);
  if (seconds < 3600)
    return fmt::format("{:.0f}m{:02.0f}s", std::floor(seconds / 60), std::fmod(seconds, 60));
  return fmt::format("{:.0f}h{:02.0f}m", std::floor(seconds / 3600), std::fmod(seconds / 60, 60));
}

void run_experiment(const experiment_args& a) {
  auto base = load_settings(a.file, a.sets);
  auto combos = make_combos(base);
  auto strategies = base.experiment.strategies;
  if (strategies.empty())
    throw config_error("experiment.strategies is empty");
  // The cloud runs first in each cell, so the others can be compared to it.
  std::stable_sort(strategies.begin(), strategies.end(),
                   [](auto x, auto y) { return x == strategy::cloud && y != strategy::cloud; });
  fs::path dir = a.out.empty() ? fs::path("results") / (base.experiment.name.empty()
                                                          ? fs::path(a.file).stem().string()
                                                          : base.experiment.name)
                               : fs::path(a.out);

  // Load and check every combination's model before running anything.
  std::map<std::string, std::shared_ptr<site_model>> models;
  for (auto& c : combos) {
    auto key = model_key(c.s);
    if (!models.count(key))
      models[key] = std::make_shared<site_model>(
        load_site_model(c.s, default_model_path(), default_exit_heads_path()));
    check_against_model(c.s, models[key]->model->config());
    // One actor system runs every combination, on one clock.
    if (c.s.compute.clock != base.compute.clock)
      throw config_error(fmt::format(
        "experiment setting '{}' has compute.clock = \"{}\", the experiment's is \"{}\": the "
        "clock cannot be swept",
        c.label, c.s.compute.clock, base.compute.clock));
    check_clock(c.s, true);
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
  if (a.check) {
    fmt::print("{}: {} combination(s) x {} repetition(s) x {} sample(s) x {} strategies valid "
               "(model {}{})\n",
               a.file, combos.size(), base.experiment.repetitions, samples.size(),
               strategies.size(), first.path,
               models.size() > 1 ? fmt::format(" and {} more", models.size() - 1) : "");
    return;
  }
  if (std::error_code ec; !fs::create_directories(dir, ec) && ec)
    throw config_error(fmt::format("--out {}: cannot create the folder: {}", dir.string(),
                                   ec.message()));

  // Resume: keep the valid lines of an earlier run with the same settings.
  json identity;
  // Every setting but the reference result, which only changes how
  // summary.md presents the results.
  std::string run_settings;
  std::istringstream described(describe_settings(base));
  for (std::string line; std::getline(described, line);)
    if (line.rfind("experiment.reference.", 0) != 0)
      run_settings += line + "\n";
  identity["settings"] = run_settings;
  identity["file"] = fs::absolute(a.file).string();
  result_ledger ledger(dir, identity);

  const size_t total = combos.size() * size_t(base.experiment.repetitions) * samples.size() *
                       strategies.size();
  size_t finished = ledger.done_count();
  fmt::print(stderr, "experiment: {} combination(s) x {} repetition(s) x {} sample(s) x {} "
                     "strategies = {} responses{}\n",
             combos.size(), base.experiment.repetitions, samples.size(), strategies.size(), total,
             finished ? fmt::format(" ({} done before, resuming)", finished) : "");

  set_compute_threads(1);
  caf::actor_system_config sys_cfg;
  configure_simulation(sys_cfg, base);
  caf::actor_system sys{sys_cfg};
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
    std::unique_ptr<deployment> sim;
    for (int rep = 0; rep < base.experiment.repetitions; ++rep)
      for (size_t si = 0; si < samples.size(); ++si)
        for (auto mode : strategies) {
          if (ledger.done(int(c), rep, si, mode))
            continue;
          if (!sim)
            sim = std::make_unique<deployment>(sys, combos[c].s, m);
          const auto& sample = samples[si];
          auto ids = m.vocab.encode(sample.prompt);
          // experiment.sessions edges run this response at once against one cloud.
          const int n_sessions = combos[c].s.experiment.sessions;
          sim_clock::take_overruns();
          auto batch_start = sim_clock::now();  // simulated time, as the responses' own times
          auto batch = sim->run_concurrently(
            std::vector<std::vector<int32_t>>(size_t(n_sessions), ids), mode,
            base.generation.max_tokens);
          const double batch_ms =
            std::chrono::duration<double, std::milli>(sim_clock::now() - batch_start).count();
          const auto overruns = sim_clock::take_overruns();
          int64_t batch_tokens = 0;
          std::vector<double> ms_per_token;
          for (auto& r : batch) {
            batch_tokens += int64_t(r.tokens.size());
            ms_per_token.push_back(double(r.total_us) / 1000.0
                                   / double(std::max<size_t>(1, r.tokens.size())));
          }
          std::sort(ms_per_token.begin(), ms_per_token.end());
          const double p95 = ms_per_token[std::min(ms_per_token.size() - 1,
                                                   size_t(0.95 * double(ms_per_token.size())))];
          for (size_t k = 0; k < batch.size(); ++k) {
            const auto& r = batch[k];
            auto text = m.vocab.decode(r.tokens, ids.back());
            auto j = report_json(r, sample.prompt, text,
                                 formula_bytes_up(combos[c].s, mode, int64_t(ids.size()),
                                                  int64_t(r.tokens.size()), cfg.n_embd));
            j["experiment"] = base.experiment.name;
            if (auto e = exactness_of(combos[c].s, mode); !e.empty())
              j["exactness"] = e;
            j["compute"] = compute_label(combos[c].s);
            add_thresholds(j, mode, combos[c].s, m.heads);
            if (combos[c].s.compute.mode == "profile") {
              j["clock"] = combos[c].s.compute.clock;
              // Counted once per batch of concurrent sessions, on its first line.
              j["profile_overruns"] = k == 0 ? overruns.count : 0;
              j["profile_overrun_worst_ms"] = k == 0 ? overruns.worst_ms : 0.0;
            }
            j["combo"] = int(c);
            j["setting"] = combos[c].label;
            for (auto& [key, v] : combos[c].keys.items())
              j[key] = v;
            j["repetition"] = rep;
            j["sample"] = si;
            j["dataset_index"] = sample.index;
            j["session_index"] = k;
            j["ms_per_token"] = ms_per_token.empty() ? 0.0 : double(r.total_us) / 1000.0
                                / double(std::max<size_t>(1, r.tokens.size()));
            j["aggregate_tokens_per_s"] = batch_ms > 0 ? double(batch_tokens) / batch_ms * 1000.0 : 0.0;
            j["p95_ms_per_token"] = p95;
            const auto* cloud = mode == strategy::cloud ? &batch.front().tokens
                                                    : ledger.cloud_tokens(int(c), rep, si);
            if (cloud)
              add_cloud_agreement(j, r.tokens, *cloud);
            if (!sample.reference.empty()) {
              auto answer = text.substr(0, text.find('\n'));
              j["reference"] = sample.reference;
              j["em"] = exact_match(answer, sample.reference);
              j["f1"] = token_f1(answer, sample.reference);
              j["rouge_l"] = rouge_l(normalized_words(text), normalized_words(sample.reference));
            }
            ledger.add(std::move(j));
          }
          ++finished;
          ++ran;
          progress();
        }
  }
  fmt::print(stderr, "\n");

  auto groups = summarize(ledger.lines(), combos, strategies);
  write_csv(dir / "summary.csv", groups);
  std::vector<std::string> plots;
  if (a.plots)
    plots = write_plots(dir, groups, combos.size(), base.sweep.threshold.size() > 1,
                        base.sweep.latency_ms.size() > 1, base.sweep.sessions.size() > 1,
                        base.sweep.workers.size() > 1);
  profile_fit fit;
  for (const auto& line : ledger.lines()) {
    fit.overruns += line.value("profile_overruns", int64_t(0));
    fit.worst_ms = std::max(fit.worst_ms, line.value("profile_overrun_worst_ms", 0.0));
  }
  write_markdown(dir / "summary.md", base, base.experiment.dataset, samples.size(), groups, plots,
                 fit);
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
  cmd->add_flag("--check", a->check,
                "check the file: settings, every combination against its model, the dataset; "
                "run nothing and write nothing");
  cmd->callback([a] { run_experiment(*a); });
}

} // namespace ceco::app
