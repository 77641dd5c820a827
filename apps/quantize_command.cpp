// ceco quantize: a GGUF model in another weight type, as llama-quantize
// makes it (model/gguf_quantize.hpp).
//
//   ceco quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M --threads 4

#include <chrono>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apps/commands.hpp"
#include "model/compute_threads.hpp"
#include "model/gguf_quantize.hpp"

namespace ceco::app {

namespace {

struct quantize_args {
  std::string input;
  std::string output;
  std::string type;
  int threads = 0;
  bool allow_requantize = false;
};

double mib(uint64_t bytes) {
  return double(bytes) / (1 << 20);
}

void run_quantize(const quantize_args& a) {
  gguf_quantize_options options;
  options.type = quant::parse_file_type(a.type, "TYPE");
  options.allow_requantize = a.allow_requantize;
  options.on_tensor = [](const quantized_tensor& t) {
    fmt::print(stderr, "[{:>4}/{:>4}] {:<32} {:<18} {:>5} -> {:<5} {:>9.3f} MiB -> {:.3f} MiB\n",
               t.index, t.count, t.name, fmt::format("[{}]", fmt::join(t.ne, ", ")),
               quant::type_name(t.from), quant::type_name(t.to), mib(t.bytes_in), mib(t.bytes_out));
  };
  set_compute_threads(a.threads);
  const auto start = std::chrono::steady_clock::now();
  const auto summary = quantize_gguf(a.input, a.output, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string types;
  for (const auto& [name, n] : summary.types)
    types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, name);
  fmt::print("{} -> {} ({}): {:.2f} MiB -> {:.2f} MiB in {:.2f} s, {} tensors ({})\n", a.input,
             a.output, options.type.name, mib(summary.input_bytes), mib(summary.output_bytes),
             seconds, summary.tensors, types);
}

} // namespace

void add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<quantize_args>();
  auto* cmd = app.add_subcommand(
    "quantize",
    "write a GGUF model in another weight type, as llama-quantize does: metadata and tokenizer "
    "copied, matrices quantized per llama-quantize's rules, norms kept");
  cmd->add_option("INPUT", a->input, "GGUF model with F32, F16 or BF16 matrices")->required();
  cmd->add_option("OUTPUT", a->output,
                  "GGUF file to write (written under a temporary name, renamed when complete)")
    ->required();
  cmd->add_option("TYPE", a->type,
                  "weight type, case-blind: " + quant::file_type_names() +
                    " (the _S/_M/_L and Q2_K mixes assign types per matrix as llama-quantize)")
    ->required();
  cmd->add_option("--threads", a->threads, "threads quantizing rows; 0 = all cores")
    ->capture_default_str();
  cmd->add_flag("--allow-requantize", a->allow_requantize,
                "accept matrices already quantized (Q8_0, Q4_K, ...): dequantize and quantize them "
                "again, adding the errors of both");
  cmd->callback([a] { run_quantize(*a); });
}

} // namespace ceco::app
