// ceco tune-exits: trains exit heads on a frozen model by distilling its
// final layer, on text or on text the model generates itself.

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/calibration_report.hpp"
#include "apps/commands.hpp"
#include "model/exit_training.hpp"
#include "model/loader.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct tune_args {
  std::string model;
  std::string tokenizer;
  std::vector<int> exits{2, 3};
  std::string text;
  int64_t self_generated = 80000;
  std::vector<float> temperatures{1.0f, 0.0f};  // of the self-generated text
  int seq_len = 128;
  double holdout = 0.1;
  std::string out = "exit-heads.gguf";
  exit_training_options train;
  int min_exit_layer = 1;
  int threads = 0;
  bool force = false;  // write --out even over a file when agreement got worse
  double target_agreement = 0.99;  // > 0: calibrate per-exit thresholds after tuning
  int64_t min_tokens = 100;
  bool lookahead = false;  // calibration: jointly (calibrate-exits --lookahead)
};

const std::vector<float> report_thresholds = {0.5f, 0.8f, 0.9f};

void print_quality(const std::string& title, const std::vector<exit_quality>& q) {
  fmt::print("\n{}\n", title);
  fmt::print("{:>8}  {:>9}", "exit", "agreement");
  for (float t : report_thresholds)
    fmt::print("  {:>20}", fmt::format("θ={}: exits / agree", t));
  fmt::print("\n");
  for (auto& e : q) {
    fmt::print("{:>8}  {:>9}", e.layer == 0 ? "combined" : std::to_string(e.layer),
               e.layer == 0 ? "-" : fmt::format("{:.1f}%", 100 * e.agreement));
    for (auto& t : e.thresholds)
      fmt::print("  {:>20}", fmt::format("{:.1f}% / {:.1f}%", 100 * t.exit_rate, 100 * t.agreement));
    fmt::print("\n");
  }
}

void run_tune(const tune_args& a) {
  set_compute_threads(a.threads);
  auto m = load_model(a.model.empty() ? default_model_path() : a.model, a.tokenizer);
  transformer model(m.config, std::move(m.weights), c10::Device(c10::kCPU));
  exit_heads::check_layers(a.exits, m.config.n_layer, "--exits");
  const int seq_len = std::min(a.seq_len, m.config.max_seq - 2);

  std::vector<std::vector<int32_t>> seqs;
  if (!a.text.empty()) {
    seqs = text_file_sequences(m.vocab, a.text, seq_len, "--text");
    fmt::print(stderr, "tune-exits: {} sequences of up to {} tokens from {}\n", seqs.size(),
               seq_len, a.text);
  } else {
    fmt::print(stderr, "tune-exits: sampling {} tokens from the model itself (temperature {})...\n",
               a.self_generated, fmt::join(a.temperatures, ","));
    seqs = self_generated_sequences(model, a.self_generated, seq_len, m.vocab.bos(), a.train.seed,
                                   a.temperatures);
  }
  if (seqs.size() < 2)
    throw model_error("tune-exits: need at least two sequences of data");
  // Hold out the last sequences, whole, for evaluation.
  size_t n_eval = std::max<size_t>(1, size_t(double(seqs.size()) * a.holdout));
  std::vector<std::vector<int32_t>> train_seqs(seqs.begin(), seqs.end() - std::ptrdiff_t(n_eval));
  std::vector<std::vector<int32_t>> eval_seqs(seqs.end() - std::ptrdiff_t(n_eval), seqs.end());
  auto train = collect_exit_data(model, train_seqs, a.exits);
  auto eval = collect_exit_data(model, eval_seqs, a.exits);
  fmt::print(stderr, "tune-exits: {} training positions, {} held out\n", train.size(), eval.size());

  const auto before = evaluate_exit_heads(exit_heads::untrained(model, a.exits), eval,
                                         report_thresholds, a.min_exit_layer);
  print_quality("before tuning (untrained heads: the model's final norm and classifier), held-out positions:",
                before);

  auto progress = [&](size_t i, int step, float loss) {
    const int width = 30;
    int done = int(double(width) * step / a.train.steps);
    fmt::print(stderr, "\rexit {:>2} [{}{}] step {:>5}/{} loss {:.4f}", a.exits[i],
               std::string(size_t(done), '#'), std::string(size_t(width - done), '.'), step,
               a.train.steps, loss);
    if (step == a.train.steps)
      fmt::print(stderr, "\n");
  };
  auto heads = train_exit_heads(model, train, a.train, progress);
  // The distribution an exit samples from, matched to the final layer's.
  const auto overlap = fit_sampling_temperatures(heads, train);
  fmt::print("\nsampling temperature (the head's logits are divided by it before an exit's "
             "token or draft is sampled; overlap Σ min(p, q) with the final layer's "
             "distribution on the training positions, at 1 and at it: the share of drafts "
             "exact accepts at temperature 1):\n");
  for (size_t i = 0; i < heads.size(); ++i)
    fmt::print("  exit {}: {:.2f}  overlap {:.1f}% -> {:.1f}%\n", heads[i].layer,
               heads[i].sampling_temperature, 100 * overlap[i].first,
               100 * overlap[i].second);
  const auto after = evaluate_exit_heads(heads, eval, report_thresholds, a.min_exit_layer);
  print_quality(a.train.confidence_units > 0
                  ? "after tuning, held-out positions (θ now on the confidence classifiers' "
                    "scale, their estimate of agreement, not the max softmax above):"
                  : "after tuning, held-out positions:",
                after);
  // Heads worse than the untrained ones: said, and not written over a file
  // that may hold better ones unless --force.
  std::string worse;
  for (size_t i = 0; i < before.size() && i < after.size(); ++i)
    if (before[i].layer != 0 && after[i].agreement < before[i].agreement)
      worse += fmt::format("{}exit {} {:.1f}% -> {:.1f}%", worse.empty() ? "" : ", ",
                           after[i].layer, 100 * before[i].agreement, 100 * after[i].agreement);
  if (!worse.empty()) {
    fmt::print(stderr, "tune-exits: WARNING: agreement with the final layer got worse by tuning "
                       "({}); more --steps, another --lr or --loss may help\n", worse);
    if (std::filesystem::exists(a.out) && !a.force)
      throw model_error(fmt::format("tune-exits: --out {} exists and the tuned heads are worse "
                                    "than untrained ones ({}): kept the file; --force writes "
                                    "over it", a.out, worse));
  }
  if (a.target_agreement > 0) {
    // Calibrated on the first half of the held-out sequences, checked on
    // the second: neither half was trained on.
    const size_t half = eval_seqs.size() / 2;
    exit_calibration_options opts;
    opts.target_agreement = a.target_agreement;
    opts.min_tokens = a.min_tokens;
    opts.min_exit_layer = a.min_exit_layer;
    opts.lookahead = a.lookahead;
    if (half == 0) {
      calibrate_and_report(heads, eval, {}, opts, "the held-out sequence");
    } else {
      std::vector<std::vector<int32_t>> cal_seqs(eval_seqs.begin(),
                                                 eval_seqs.begin() + std::ptrdiff_t(half));
      std::vector<std::vector<int32_t>> test_seqs(eval_seqs.begin() + std::ptrdiff_t(half),
                                                  eval_seqs.end());
      calibrate_and_report(heads, collect_exit_data(model, cal_seqs, a.exits),
                           collect_exit_data(model, test_seqs, a.exits), opts,
                           fmt::format("half of tune-exits' held-out sequences ({})",
                                       a.text.empty() ? "self-generated" : a.text));
    }
  }
  heads.save(a.out);
  fmt::print("\nsaved {} heads to {} (use: ceco generate --exit-heads {})\n", heads.size(), a.out,
             a.out);
}

} // namespace

void add_tune_exits_command(CLI::App& app) {
  auto a = std::make_shared<tune_args>();
  auto* cmd = app.add_subcommand(
    "tune-exits", "train exit heads on a frozen model by distilling its final layer");
  cmd->add_option("--model", a->model,
                  "checkpoint (default: $CECO_MODEL, else " + default_model_path() + ")");
  cmd->add_option("--tokenizer", a->tokenizer, "llama2.c tokenizer.bin for a .bin model");
  cmd->add_option("--exits", a->exits, "exit layers to train heads for")
    ->delimiter(',')->capture_default_str();
  auto* text = cmd->add_option("--text", a->text, "train on this text file")->check(CLI::ExistingFile);
  cmd->add_option("--self-generated", a->self_generated,
                  "train on this many tokens sampled from the model itself (needs no data)")
    ->capture_default_str()->excludes(text)->check(CLI::PositiveNumber);
  add_temperature_option(*cmd, a->temperatures);
  cmd->add_option("--seq-len", a->seq_len, "tokens per training sequence")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--holdout", a->holdout, "share of sequences held out for the report")
    ->capture_default_str()->check(CLI::Range(0.01, 0.9));
  a->train.steps = 1500;
  cmd->add_option("--steps", a->train.steps, "optimizer steps per head")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--batch", a->train.batch, "positions per step")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--lr", a->train.lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--loss", a->train.loss,
                  "kl (distil the distribution), ce (to the final argmax), mix, or next "
                  "(true next token; needs --text)")
    ->capture_default_str()->check(CLI::IsMember({"kl", "ce", "mix", "next"}));
  cmd->add_option("--kl-weight", a->train.kl_weight, "weight of kl in mix")
    ->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--adapter-hidden", a->train.adapter_hidden,
                  "units of the residual adapter n + B·silu(A·n + c); 0 = none")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--confidence-units", a->train.confidence_units,
                  "units of each head's confidence classifier, trained after the head to "
                  "estimate whether its token equals the final layer's (CALM's early-exit "
                  "classifier; an exit then fires on that estimate); 0 = none: confidence is "
                  "the head's max softmax")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--confidence-steps", a->train.confidence_steps,
                  "optimizer steps of each confidence classifier")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("!--shared-output", a->train.own_output,
                "keep the model's classifier instead of training one per head");
  cmd->add_option("--min-exit-layer", a->min_exit_layer,
                  "exits before this layer never fire (for the combined report)")
    ->capture_default_str();
  cmd->add_option("--seed", a->train.seed, "seed of sampling, initialisation and batches")
    ->capture_default_str();
  cmd->add_option("--threads", a->threads, "compute threads; 0 = all cores")->capture_default_str();
  cmd->add_option("--out", a->out, "where to write the heads (GGUF)")->capture_default_str();
  cmd->add_option("--target-agreement", a->target_agreement,
                  "after tuning, calibrate a threshold per exit so that its emitted tokens agree "
                  "with the final layer at this rate (e.g. 0.99), on half of the held-out "
                  "sequences, checked on the other half, and store them in --out (see ceco "
                  "calibrate-exits; 0 = none: θ stays policy.threshold's, 0.8 by default, which on a "
                  "confidence classifier's scale lets exits agree far less than 99%)")
    ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-tokens", a->min_tokens,
                  "with --target-agreement: fewest held-out tokens a threshold may rest on; an "
                  "exit with fewer never fires (1.01)")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--lookahead", a->lookahead,
                "with --target-agreement: calibrate the exits jointly (see ceco calibrate-exits "
                "--help)");
  cmd->add_flag("--force", a->force,
                "write --out over an existing file even when the tuned heads agree with the "
                "final layer less than untrained ones (otherwise warned and kept)");
  cmd->callback([a, cmd] {
    check_temperature_option(*cmd);
    if (a->train.loss == "next" && a->text.empty())
      throw model_error("--loss next needs --text: self-generated data has no true next token "
                        "beyond the model's own");
    run_tune(*a);
  });
}

} // namespace ceco::app
