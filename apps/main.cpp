// ceco: cloud-edge collaborative LLM inference.
//
//   ceco generate --prompt "Once upon a time" --exits 2,3
//   ceco bench --shape 15M --threads 1
//   ceco sim --mode all
//   ceco serve --local-cloud --port 8080
//   ceco tokenize --model M --text "Hello world" --pieces
//   ceco quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M
//   ceco <command> --help

#include <cstdlib>
#include <iostream>

#include <fmt/format.h>

#include "apps/commands.hpp"
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

int main(int argc, char** argv) {
  ceco::use_fast_blas_kernels(argv);
  CLI::App app{"ceco " CECO_VERSION ": cloud-edge collaborative inference of early-exit LLaMA models"};
  app.set_version_flag("--version", CECO_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);
  ceco::app::add_generate_command(app);
  ceco::app::add_bench_command(app);
  ceco::app::add_sim_command(app);
  ceco::app::add_tune_exits_command(app);
  ceco::app::add_experiment_command(app);
  ceco::app::add_cloud_command(app);
  ceco::app::add_edge_command(app);
  ceco::app::add_serve_command(app);
  ceco::app::add_train_command(app);
  ceco::app::add_tokenize_command(app);
  ceco::app::add_quantize_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ceco::app::fatal_failure& e) {
    std::cerr << "ceco: fatal: " << e.what() << "\n";
    return ceco::app::fatal_failure_status;
  } catch (const ceco::model_error& e) {
    std::cerr << "ceco: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ceco: internal error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
