// ceco: cloud-edge collaborative LLM inference.
//
//   ceco generate --prompt "Once upon a time" --exits 2,3
//   ceco bench --shape 15M --threads 1
//   ceco sim --mode all
//   ceco serve --local-cloud --port 8080
//   ceco tokenize --model M --text "Hello world" --pieces
//   ceco quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M
//   ceco <command> --help
//
// This is the engine, ceco-engine: `ceco` (apps/launcher.cpp) answers
// --help and --version from texts this program wrote at build time and
// runs every other command line here.

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>
#include <iostream>

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "apps/help_texts.hpp"
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

/// The whole command line interface: every command with its options.
std::unique_ptr<CLI::App> make_app() {
  auto app = std::make_unique<CLI::App>(
    "ceco " CECO_VERSION ": cloud-edge collaborative inference of early-exit LLaMA models");
  app->set_version_flag("--version", CECO_VERSION);
  app->require_subcommand(1);
  app->fallthrough(false);
  ceco::app::add_generate_command(*app);
  ceco::app::add_bench_command(*app);
  ceco::app::add_sim_command(*app);
  ceco::app::add_tune_exits_command(*app);
  ceco::app::add_calibrate_exits_command(*app);
  ceco::app::add_experiment_command(*app);
  ceco::app::add_cloud_command(*app);
  ceco::app::add_cluster_command(*app);
  ceco::app::add_edge_command(*app);
  ceco::app::add_serve_command(*app);
  ceco::app::add_chat_command(*app);
  ceco::app::add_train_command(*app);
  ceco::app::add_tokenize_command(*app);
  ceco::app::add_quantize_command(*app);
  return app;
}

/// What this program writes to stdout for `PROGRAM words... flag`, parsed
/// as any command line is (a fresh interface each time: CLI11 keeps what
/// it parsed). Throws std::runtime_error where that is not a text and exit
/// status 0, which would be a bug in a command's options.
std::string text_of(const std::vector<std::string>& words, const std::string& flag) {
  auto app = make_app();
  std::vector<std::string> args{ceco::help::program_placeholder};
  args.insert(args.end(), words.begin(), words.end());
  args.push_back(flag);
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  std::ostringstream out, err;
  try {
    app->parse(int(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    if (app->exit(e, out, err) == 0 && err.str().empty())
      return out.str();
  }
  std::string line;
  for (auto& a : args)
    line += a + " ";
  throw std::runtime_error(fmt::format("'{}' gave no text with status 0 ({})", line, err.str()));
}

/// Writes apps/help_texts.hpp's table as C++ to `path`: --help of the
/// program and of every command and subcommand, and --version.
int write_help_texts(const std::string& path) {
  auto app = make_app();
  std::vector<std::vector<std::string>> commands{{}};
  std::function<void(const CLI::App&, std::vector<std::string>)> walk =
    [&](const CLI::App& parent, std::vector<std::string> words) {
      for (const auto* sub : parent.get_subcommands([](const CLI::App*) { return true; })) {
        auto path = words;
        path.push_back(sub->get_name());
        commands.push_back(path);
        walk(*sub, path);
      }
    };
  walk(*app, {});
  constexpr const char* delimiter = "ceco_help";
  auto literal = [&](const std::string& text) {
    if (text.find(std::string(")") + delimiter + "\"") != std::string::npos)
      throw std::runtime_error("a help text holds the raw string delimiter");
    return fmt::format("R\"{}({}){}\"", delimiter, text, delimiter);
  };
  std::string body;
  auto add = [&](const std::vector<std::string>& words, const std::string& flag) {
    std::string command;
    for (const auto& w : words)
      command += (command.empty() ? "" : " ") + w;
    body += fmt::format("  {{\"{}\", \"{}\",\n   {}}},\n", command, flag,
                        literal(text_of(words, flag)));
  };
  add({}, "--version");
  for (const auto& words : commands)
    add(words, "--help");
  std::ofstream file(path, std::ios::trunc);
  file << "// Written by `ceco-engine --write-help-texts` as ceco builds: do not edit.\n"
          "#include \"apps/help_texts.hpp\"\n\n"
          "namespace ceco::help {\n\n"
          "const entry entries[] = {\n"
       << body
       << "};\n"
          "const size_t entry_count = sizeof entries / sizeof entries[0];\n\n"
          "} // namespace ceco::help\n";
  file.close();
  if (!file) {
    std::cerr << "ceco-engine: error: cannot write " << path << "\n";
    return 1;
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-help-texts") {
    try {
      return write_help_texts(argv[2]);
    } catch (const std::exception& e) {
      std::cerr << "ceco-engine: error: " << e.what() << "\n";
      return 1;
    }
  }
  // Run as `ceco`, the launcher has set OPENBLAS_CORETYPE where it matters
  // and this returns at once; run as itself, it may restart with it.
  ceco::use_fast_blas_kernels(argv);
  // The launcher blocked SIGINT and SIGTERM for the threads started while
  // the engine loaded (apps/launcher.cpp); this thread takes them again, so
  // Ctrl-C ends a command as ever. `ceco cloud` and `ceco serve` block them
  // again before starting threads of their own, and wait for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &stop_signals, nullptr);
  auto app_owner = make_app();
  CLI::App& app = *app_owner;
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
