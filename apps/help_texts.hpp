#pragma once

// What `ceco` prints for --help and --version, without loading the engine.
// The engine (apps/main.cpp, `ceco-engine --write-help-texts FILE`) writes
// the table at build time by parsing each of these command lines itself, so
// every text is the engine's own, option for option; apps/launcher.cpp
// answers from it. The program's name in a text is program_placeholder,
// replaced with argv[0] as it is printed, as CLI11 would print it.

#include <cstddef>

namespace ceco::help {

inline constexpr const char* program_placeholder = "@CECO_PROGRAM@";

struct entry {
  /// The words between the program and the flag: "" (the program itself),
  /// "bench", "cluster status".
  const char* command;
  /// "--help" (also answers -h) or "--version".
  const char* flag;
  /// Exactly what the engine writes to stdout for that command line; it
  /// exits 0.
  const char* text;
};

extern const entry entries[];
extern const size_t entry_count;

} // namespace ceco::help
