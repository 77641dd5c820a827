// ceco calibrate-exits: per-exit thresholds for trained heads, chosen on
// held-out text so that each exit's emitted tokens agree with the final
// layer at a target rate (model/exit_calibration.hpp), written into the
// heads file.

#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/calibration_report.hpp"
#include "apps/commands.hpp"
#include "model/compute_threads.hpp"
#include "model/exit_training.hpp"
#include "model/loader.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct calibrate_args {
  std::string model;
  std::string tokenizer;
  std::string heads;  // "" = the built-in heads with the built-in model
  std::vector<int> exits;
  std::string text;
  int64_t self_generated = 40000;
  std::vector<float> temperatures{1.0f, 0.0f};  // of the self-generated text
  int seq_len = 128;
  uint64_t seed = 7;  // tune-exits samples with seed 1: other sequences
  double test_share = 0.3;
  exit_calibration_options calib;
  std::string out;  // "" = over the heads file
  bool dry_run = false;
  int threads = 0;
};

void run_calibrate(const calibrate_args& a) {
  set_compute_threads(a.threads);
  auto m = load_model(a.model.empty() ? default_model_path() : a.model, a.tokenizer);
  transformer model(m.config, std::move(m.weights), c10::Device(c10::kCPU));
  std::string heads_file = a.heads;
  if (heads_file.empty() && a.model.empty())
    heads_file = default_exit_heads_path();
  if (heads_file.empty())
    throw model_error("calibrate-exits: --exit-heads is needed with --model (the built-in heads "
                      "fit only the built-in model); thresholds mean something only for "
                      "trained heads (ceco tune-exits)");
  auto heads = exit_heads::load(heads_file, model, a.exits);
  const std::string out = a.out.empty() ? heads_file : a.out;
  const int seq_len = std::min(a.seq_len, m.config.max_seq - 2);

  std::vector<std::vector<int32_t>> seqs;
  std::string note;
  if (!a.text.empty()) {
    seqs = text_file_sequences(m.vocab, a.text, seq_len, "--text");
    note = fmt::format("text {}", a.text);
  } else {
    fmt::print(stderr,
               "calibrate-exits: sampling {} tokens from the model itself (seed {}, temperature "
               "{})...\n",
               a.self_generated, a.seed, fmt::join(a.temperatures, ","));
    seqs = self_generated_sequences(model, a.self_generated, seq_len, m.vocab.bos(), a.seed,
                                   a.temperatures);
    note = fmt::format("{} tokens sampled from the model, seed {}, temperature {}",
                       a.self_generated, a.seed, fmt::join(a.temperatures, ","));
  }
  if (seqs.size() < 2)
    throw model_error(fmt::format("calibrate-exits: {} sequence(s) of data, need at least two "
                                  "(one to calibrate on, one to check)",
                                  seqs.size()));
  // The last sequences, whole, check the thresholds; the rest calibrate them.
  const size_t n_test = a.test_share > 0
                          ? std::max<size_t>(1, size_t(double(seqs.size()) * a.test_share))
                          : 0;
  std::vector<std::vector<int32_t>> cal_seqs(seqs.begin(), seqs.end() - std::ptrdiff_t(n_test));
  std::vector<std::vector<int32_t>> test_seqs(seqs.end() - std::ptrdiff_t(n_test), seqs.end());
  const auto layers = heads.layers();
  auto cal = collect_exit_data(model, cal_seqs, layers);
  exit_dataset test;
  if (!test_seqs.empty())
    test = collect_exit_data(model, test_seqs, layers);
  fmt::print(stderr, "calibrate-exits: heads {}, {} positions to calibrate on, {} to check\n",
             heads_file, cal.size(), test.size());
  calibrate_and_report(heads, cal, test, a.calib, note);
  if (a.dry_run) {
    fmt::print("\n--dry-run: {} left as it was\n", heads_file);
    return;
  }
  heads.save(out);
  fmt::print("\nsaved {} heads with their thresholds to {}: ceco sim, edge, serve and generate "
             "use them unless policy.threshold / --threshold is set\n",
             heads.size(), out);
}

} // namespace

void add_calibrate_exits_command(CLI::App& app) {
  auto a = std::make_shared<calibrate_args>();
  auto* cmd = app.add_subcommand(
    "calibrate-exits",
    "per-exit thresholds for trained exit heads: on held-out text, each exit (in order, on the "
    "positions no earlier exit takes) gets the smallest threshold whose emitted tokens agree "
    "with the final layer at --target-agreement; written into the heads file");
  cmd->add_option("--model", a->model,
                  "checkpoint (default: $CECO_MODEL, else " + default_model_path() + ")");
  cmd->add_option("--tokenizer", a->tokenizer, "llama2.c tokenizer.bin for a .bin model");
  cmd->add_option("--exit-heads", a->heads,
                  "the trained heads to calibrate (GGUF, from ceco tune-exits); default: the "
                  "built-in model's (" + default_exit_heads_path() + ") when --model is not given")
    ->check(CLI::ExistingFile);
  cmd->add_option("--exits", a->exits, "calibrate only these exits of the file (default: all)")
    ->delimiter(',');
  auto* text = cmd->add_option("--text", a->text, "calibrate on this text file")
                 ->check(CLI::ExistingFile);
  cmd->add_option("--self-generated", a->self_generated,
                  "calibrate on this many tokens sampled from the model itself (the default; "
                  "needs no data)")
    ->capture_default_str()->excludes(text)->check(CLI::PositiveNumber);
  add_temperature_option(*cmd, a->temperatures);
  cmd->add_option("--seed", a->seed, "seed of the self-generated text")->capture_default_str();
  cmd->add_option("--seq-len", a->seq_len, "tokens per sequence")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--test-share", a->test_share,
                  "share of the sequences held back to check the thresholds on positions they "
                  "were not chosen on (0 = none)")
    ->capture_default_str()->check(CLI::Range(0.0, 0.9));
  cmd->add_option("--target-agreement", a->calib.target_agreement,
                  "share of an exit's emitted tokens that must equal the final layer's argmax")
    ->capture_default_str()->check(CLI::Range(0.5, 1.0));
  cmd->add_option("--min-tokens", a->calib.min_tokens,
                  "fewest calibration tokens a threshold may rest on; an exit with fewer at "
                  "every threshold that meets the target never fires (threshold 1.01)")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--min-exit-layer", a->calib.min_exit_layer,
                  "exits before this layer never fire (as policy.min_exit_layer)")
    ->capture_default_str();
  cmd->add_flag("--lookahead", a->calib.lookahead,
                "calibrate the exits jointly: an exit but the last may take a higher threshold, "
                "or none, when the exits after it then emit more tokens in all (each still "
                "meets the target); such thresholds hold only for these exits together, and a "
                "run selecting other exits ignores them (default: each exit, in order, its "
                "smallest qualifying threshold)");
  cmd->add_option("--out", a->out, "where to write the heads (default: over --exit-heads)");
  cmd->add_flag("--dry-run", a->dry_run, "print the thresholds, write nothing");
  cmd->add_option("--threads", a->threads, "compute threads; 0 = all cores")->capture_default_str();
  cmd->callback([a, cmd] {
    check_temperature_option(*cmd);
    run_calibrate(*a);
  });
}

} // namespace ceco::app
