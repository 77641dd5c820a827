// ceco: the program users run. It answers --help and --version itself,
// from the texts the engine wrote as ceco was built (apps/help_texts.hpp),
// and runs every other command line in ceco-engine, the program beside it
// (apps/main.cpp), in this same process (execv: same pid, same argv, so
// signals, exit codes and `ps` are as before).
//
// Why two programs: the engine links libtorch, whose ~290 libraries take
// about 0.4 s to load and register their operators before main starts;
// a help text should not wait for that. This program links no ceco library,
// only libc and libdl.

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <dlfcn.h>
#include <signal.h>
#include <unistd.h>

#include "apps/help_texts.hpp"
#include "model/blas_coretype.hpp"

namespace {

/// The table's text for this command line, or nullptr when the engine must
/// answer: `ceco --version`, `ceco --help` and `ceco WORDS... --help` (or
/// -h) for a command the table has, with nothing else on the line.
const char* stored_text(int argc, char** argv) {
  if (argc < 2)
    return nullptr;
  std::string flag = argv[argc - 1];
  if (flag == "-h")
    flag = "--help";
  if (flag != "--help" && flag != "--version")
    return nullptr;
  std::string command;
  for (int i = 1; i < argc - 1; ++i) {
    if (argv[i][0] == '-' || argv[i][0] == '\0')
      return nullptr;  // an option: the engine knows what it means here
    command += (command.empty() ? "" : " ") + std::string(argv[i]);
  }
  for (size_t i = 0; i < ceco::help::entry_count; ++i) {
    const auto& e = ceco::help::entries[i];
    if (command == e.command && flag == e.flag)
      return e.text;
  }
  return nullptr;
}

/// Writes `text` with the program placeholder replaced by `program`.
void print_text(const std::string& text, const char* program) {
  const std::string placeholder = ceco::help::program_placeholder;
  std::string out;
  out.reserve(text.size() + 64);
  size_t from = 0;
  for (size_t at; (at = text.find(placeholder, from)) != std::string::npos;) {
    out.append(text, from, at - from).append(program);
    from = at + placeholder.size();
  }
  out.append(text, from);
  std::fwrite(out.data(), 1, out.size(), stdout);
}

/// Whether the command line runs a model, whose batched products need
/// OpenBLAS's fast kernels: not `tokenize` or `quantize`, nor a line that
/// only asks for help.
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

/// Sets OPENBLAS_CORETYPE for the engine where OpenBLAS, loaded as the
/// engine will load it, would fall back to its generic kernels on this CPU
/// (model/blas_coretype.hpp). Loading OpenBLAS alone takes a few
/// milliseconds. A value the user set is left alone.
void choose_blas_kernels() {
  if (std::getenv("OPENBLAS_CORETYPE"))
    return;
  for (const char* library : {"libopenblas.so.0", "libblas.so.3"}) {
    void* handle = dlopen(library, RTLD_LAZY | RTLD_LOCAL);
    if (!handle)
      continue;
    using corename_fn = char* (*)();
    auto corename = reinterpret_cast<corename_fn>(dlsym(handle, "openblas_get_corename"));
    const bool generic = corename && std::strcmp(corename(), ceco::openblas_generic_core) == 0;
    dlclose(handle);
    if (!corename)
      continue;  // another BLAS, without OpenBLAS's CPU models
    if (generic)
      if (const char* core = ceco::openblas_coretype_for_cpu())
        setenv("OPENBLAS_CORETYPE", core, 0);
    return;
  }
}

/// ceco-engine in the folder this program's file is in.
std::string engine_path() {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0)
    return "ceco-engine";
  self[n] = '\0';
  std::string path = self;
  return path.substr(0, path.find_last_of('/') + 1) + "ceco-engine";
}

} // namespace

int main(int argc, char** argv) {
  if (const char* text = stored_text(argc, argv)) {
    print_text(text, argv[0]);
    return 0;
  }
  if (needs_blas(argc, argv))
    choose_blas_kernels();
  // libtorch's ops run on OpenMP threads, which by default spin for a while
  // after each parallel region, on the cores the compute threads' chunks
  // then need: passive waiting measured 155-162 -> 179-187 tokens/s of
  // 2-thread prefill (TinyLlama-1.1B Q4_K_M, 2 cores), decode unchanged.
  // libgomp reads it as it loads, so it is set here; a value the user set
  // is kept.
  setenv("OMP_WAIT_POLICY", "passive", 0);
  // SIGINT and SIGTERM stay blocked across execv, so the threads that
  // libraries start while the engine loads, before its main, never take
  // them. `ceco cloud` and `ceco serve` wait for them on their main thread;
  // one taken by such a thread ends the process at once, without its
  // shutdown (an exit by SIGTERM, seen in the soak). The engine's main takes
  // them back for its own thread first thing.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &stop_signals, nullptr);
  const std::string engine = engine_path();
  execv(engine.c_str(), argv);
  std::fprintf(stderr,
               "ceco: error: cannot run the engine %s: %s (it is built beside ceco: "
               "`cmake --build build` builds both)\n",
               engine.c_str(), std::strerror(errno));
  return 2;
}
