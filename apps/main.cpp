// ceco: cloud-edge collaborative LLM inference.
//
//   ceco generate --prompt "Once upon a time" --exits 2,3
//   ceco bench --shape 15M --threads 1
//   ceco sim --mode all
//   ceco serve --local-cloud --port 8080
//   ceco tokenize --model M --text "Hello world" --pieces
//   ceco quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M
//   ceco <command> --help

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>
#include <iostream>

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "config/settings.hpp"
#include "model/compute_threads.hpp"
#include "model/config.hpp"

namespace ceco::app {

std::string default_model_path() {
  if (const char* env = std::getenv("CECO_MODEL"); env && *env)
    return env;
  return CECO_DEFAULT_MODEL;
}

std::string default_exit_heads_path() {
  if (const char* env = std::getenv("CECO_MODEL"); env && *env)
    return {};  // another model: its heads are not ours
  return CECO_DEFAULT_EXIT_HEADS;
}

} // namespace ceco::app

namespace {

/// The first argument when it is meant as a command but names none: a
/// message with the nearest command, else "".
std::string unknown_command(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-' || argv[1][0] == '\0')
    return {};
  const std::string word = argv[1];
  std::vector<std::string> names;
  for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names.push_back(sub->get_name());
  if (std::find(names.begin(), names.end(), word) != names.end())
    return {};
  std::string best;
  size_t best_distance = 0;
  for (const auto& n : names) {
    size_t d = ceco::edit_distance(word, n);
    if (best.empty() || d < best_distance)
      best = n, best_distance = d;
  }
  std::string all;
  for (const auto& n : names)
    all += (all.empty() ? "" : ", ") + n;
  if (!best.empty() && best_distance <= std::max<size_t>(2, word.size() / 3))
    return fmt::format("unknown command '{}'; did you mean '{}'? (commands: {})", word, best, all);
  return fmt::format("unknown command '{}' (commands: {})", word, all);
}

/// Whether the command line runs a model, whose batched products need
/// OpenBLAS's fast kernels (and so may restart the process once, see
/// use_fast_blas_kernels): not `--help`, `--version`, no command at all,
/// `tokenize` or `quantize`, which start in a fraction of the time so.
bool needs_blas(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-')
    return false;
  const std::string command = argv[1];
  if (command == "tokenize" || command == "quantize")
    return false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "--version")
      return false;
  }
  return true;
}

} // namespace

int main(int argc, char** argv) {
  if (needs_blas(argc, argv))
    ceco::use_fast_blas_kernels(argv);
  CLI::App app{"ceco " CECO_VERSION ": cloud-edge collaborative inference of early-exit LLaMA models"};
  app.set_version_flag("--version", CECO_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);
  ceco::app::add_generate_command(app);
  ceco::app::add_bench_command(app);
  ceco::app::add_sim_command(app);
  ceco::app::add_tune_exits_command(app);
  ceco::app::add_calibrate_exits_command(app);
  ceco::app::add_experiment_command(app);
  ceco::app::add_cloud_command(app);
  ceco::app::add_cluster_command(app);
  ceco::app::add_edge_command(app);
  ceco::app::add_serve_command(app);
  ceco::app::add_chat_command(app);
  ceco::app::add_train_command(app);
  ceco::app::add_tokenize_command(app);
  ceco::app::add_quantize_command(app);
  if (auto message = unknown_command(app, argc, argv); !message.empty()) {
    std::cerr << "ceco: error: " << message << "\n";
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every error in the flags exits 1, as an
    // error in the settings does (CLI11's own codes are 100 and up).
    return app.exit(e) == 0 ? 0 : 1;
  } catch (const ceco::app::fatal_failure& e) {
    std::cerr << "ceco: fatal: " << e.what() << "\n";
    return ceco::app::fatal_failure_status;
  } catch (const ceco::model_error& e) {
    std::cerr << "ceco: error: " << e.what() << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // A file or folder the command was given: the user's to fix, as a setting.
    std::cerr << "ceco: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ceco: internal error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
