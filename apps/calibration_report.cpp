#include "apps/calibration_report.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "model/exit_heads.hpp"
#include "model/exit_training.hpp"

namespace ceco::app {

namespace {

std::string threshold_text(float t) {
  return t > 1.0f ? std::string("never") : fmt::format("{:.4f}", t);
}

std::string percent(int64_t part, int64_t whole) {
  return whole ? fmt::format("{:.2f}%", 100.0 * double(part) / double(whole)) : std::string("-");
}

void print_outcome(const std::string& label, const exit_rule_outcome& r) {
  fmt::print("{:<44} {:>8} of {:>6} ({:>7})  agreement {:>7}\n", label, r.total_fired,
             r.positions, percent(r.total_fired, r.positions),
             percent(r.total_agreed, r.total_fired));
}

} // namespace

exit_calibration calibrate_and_report(exit_heads& heads, const exit_dataset& calibration,
                                      const exit_dataset& test,
                                      const exit_calibration_options& opts,
                                      const std::string& data_note) {
  const auto data = calibration_data(heads, calibration);
  auto cal = calibrate_exit_thresholds(data, opts);
  fmt::print("\ncalibration: {} positions ({}), target {:.2f}% agreement with the final layer, "
             "each threshold resting on at least {} exits\n",
             cal.positions, data_note, 100 * opts.target_agreement, opts.min_tokens);
  fmt::print("{:>6}  {:>9}  {:>9}  {:>8}  {:>9}  {:>11}\n", "exit", "reaching", "threshold",
             "exits", "agreement", "95% lower");
  std::vector<int64_t> counts;
  for (auto& e : cal.exits) {
    fmt::print("{:>6}  {:>9}  {:>9}  {:>8}  {:>9}  {:>11}{}\n", e.layer, e.reaching,
               threshold_text(e.threshold), e.fired, percent(e.agreed, e.fired),
               e.fired ? fmt::format("{:.2f}%", 100 * e.agreement_lower_95()) : "-",
               e.note.empty() ? "" : "  " + e.note);
    counts.push_back(e.fired);
  }
  const auto thresholds = cal.thresholds();
  const auto single = best_single_threshold(data, opts.target_agreement, opts.min_tokens,
                                            opts.min_exit_layer);
  print_outcome("calibration positions, calibrated thresholds",
                apply_exit_rule(data, thresholds, opts.min_exit_layer));
  print_outcome(fmt::format("calibration positions, best single θ = {}", threshold_text(single)),
                apply_exit_rule(data, std::vector<float>(thresholds.size(), single),
                                opts.min_exit_layer));
  if (test.size() > 0) {
    const auto held = calibration_data(heads, test);
    fmt::print("held-out check: {} positions not used to calibrate\n", held.positions());
    print_outcome("held out, calibrated thresholds",
                  apply_exit_rule(held, thresholds, opts.min_exit_layer));
    print_outcome(fmt::format("held out, single θ = {}", threshold_text(single)),
                  apply_exit_rule(held, std::vector<float>(thresholds.size(), single),
                                  opts.min_exit_layer));
  }
  for (auto& e : cal.exits)
    if (!e.note.empty() && e.threshold > 1.0f && e.note.find("so that") == std::string::npos)
      fmt::print("note: exit {}: {}; more calibration text (--text, --self-generated) or a "
                 "lower --min-tokens may give it a threshold\n",
                 e.layer, e.note);
  heads.set_calibration(thresholds, counts,
                        {opts.target_agreement, opts.min_exit_layer, data_note, opts.lookahead});
  return cal;
}

void add_temperature_option(CLI::App& cmd, std::vector<float>& temperatures) {
  cmd.add_option("--temperature", temperatures,
                 fmt::format("with --self-generated: sampling temperatures, sequences alternating "
                             "between them, e.g. 1,0; 0 = greedy, each greedy sequence continuing "
                             "an opening of {} to seq-len/4 tokens sampled at temperature 1, so "
                             "that they differ. Thresholds hold for the decoding they were "
                             "chosen on: text sampled at 1 alone makes exits agree less on greedy "
                             "text",
                             greedy_opening_tokens))
    ->delimiter(',')->capture_default_str()->check(CLI::Range(0.0, 100.0));
}

void check_temperature_option(const CLI::App& cmd) {
  // Checked here rather than by CLI11's excludes: --text would then list two
  // exclusions in an order that varies from run to run in its --help.
  if (cmd.count("--text") > 0 && cmd.count("--temperature") > 0)
    throw model_error("--temperature applies to --self-generated text; --text is read as it is");
}

} // namespace ceco::app
