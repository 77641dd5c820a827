#pragma once

// Shared by the test files. Torch headers come before doctest: c10 defines
// glog's CHECK, which doctest's must replace, not the other way round.

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "model/generation.hpp"
#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"
#include "model/loader.hpp"
#include "model/transformer.hpp"

namespace ceco::test {

inline std::string shared_dir() {
  return CECO_SHARED_DIR;
}
inline std::string stories_dir() {
  return shared_dir() + "/models/stories260K";
}
inline std::string stories_gguf() {
  return stories_dir() + "/stories260K.gguf";
}
inline std::string stories_bin() {
  return stories_dir() + "/stories260K.bin";
}
inline std::string stories_tok() {
  return stories_dir() + "/tok512.bin";
}

/// stories260K's SentencePiece vocabulary (tokens, scores, types) into w.
inline void copy_stories_vocabulary(gguf_writer& w) {
  gguf_file f(stories_gguf());
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", f.get_string_array("tokenizer.ggml.tokens"));
  std::vector<float> scores;
  for (auto s : f.get_float_array("tokenizer.ggml.scores"))
    scores.push_back(float(s));
  w.set_float32_array("tokenizer.ggml.scores", scores);
  std::vector<int32_t> types;
  for (auto t : f.get_int_array("tokenizer.ggml.token_type"))
    types.push_back(int32_t(t));
  w.set_int32_array("tokenizer.ggml.token_type", types);
}

/// Loaded once per process: "gguf" or "bin".
struct stories {
  loaded_model files;
  std::shared_ptr<transformer> model;
};
const stories& load_stories(const std::string& format);

/// A fresh folder under the system temp dir, removed at exit of scope.
struct temp_dir {
  std::filesystem::path path;
  temp_dir();
  ~temp_dir();
  std::string file(const std::string& name) const { return (path / name).string(); }
};

/// Every byte of a file.
inline std::vector<char> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

/// The first n bytes (at most all) of `bytes` as a file.
inline void write_all(const std::string& path, const std::vector<char>& bytes, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(std::min(n, bytes.size())));
}

/// The message of the model_error that `f` throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const model_error& e) {
    return e.what();
  }
  return {};
}

/// Exit status and output of a shell command (the command decides whether
/// stderr is included).
struct run_result {
  int status;
  std::string out;
};
run_result run_shell(const std::string& command);
/// Allocations (operator new) made on the calling thread so far.
int64_t allocations_on_this_thread();
/// `ceco <args>`, stdout and stderr together.
inline run_result run_ceco(const std::string& args) {
  return run_shell(std::string(CECO_BINARY) + " " + args + " 2>&1");
}

/// Tokens, early exits and agreeing early exits over exit traces.
struct exit_tally {
  int tokens = 0;
  int exited = 0;
  int agree = 0;
  void add(const std::vector<exit_step>& trace) {
    for (auto& s : trace) {
      ++tokens;
      if (s.exit_layer >= 0) {
        ++exited;
        agree += s.agrees;
      }
    }
  }
};

/// stories260K reference values: "Once upon a time" and llama2.c's documented greedy sample.
inline const std::vector<int32_t> once_upon_a_time = {1, 403, 407, 261, 378};
inline const std::vector<int32_t> greedy_40 = {
  432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396,
  267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
  328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426};

} // namespace ceco::test
