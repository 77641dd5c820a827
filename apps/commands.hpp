#pragma once

// Each subcommand of `ceco` registers its options and its action here.

#include <stdexcept>

#include <CLI/CLI.hpp>

namespace ceco::app {

void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_sim_command(CLI::App& app);
void add_tune_exits_command(CLI::App& app);
void add_calibrate_exits_command(CLI::App& app);
void add_experiment_command(CLI::App& app);
void add_cloud_command(CLI::App& app);
void add_cluster_command(CLI::App& app);
void add_edge_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_quantize_command(CLI::App& app);

/// A server that cannot go on (an actor of the cloud died): `ceco` exits
/// with status 3, so that a supervisor restarts it.
struct fatal_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
constexpr int fatal_failure_status = 3;

/// The model a command reads when --model is not given: $CECO_MODEL, else
/// the built-in model in config/models/kjv/.
std::string default_model_path();
/// The exit heads of the built-in model, trained with it.
std::string default_exit_heads_path();

} // namespace ceco::app
