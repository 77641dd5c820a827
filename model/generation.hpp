#pragma once

// The whole model's token loop on one node: prefill the prompt, then decode
// one token at a time with the KV cache. With exit heads it also records,
// per generated token, what each exit would have said, measured along the
// full model's own output (the exits never change what is generated here).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "model/sampler.hpp"

namespace ceco {

class transformer;
class exit_heads;

struct generation_options {
  int max_tokens = 128;
  sampler_options sampling;
  bool stop_at_eos = true;
  int32_t eos = 2;
  const exit_heads* exits = nullptr;  // record an exit trace when set
  std::optional<float> threshold;     // θ of every exit; unset: exit_heads::thresholds
  int min_exit_layer = 1;             // exits before this layer never fire
};

/// What the exits said about one generated token.
struct exit_step {
  int exit_layer = -1;            // first exit that fires, -1 if none
  bool agrees = false;            // that exit's token (the deepest exit's
                                  // when none fires) equals the final token
  std::vector<float> confidence;  // per exit, exit_head::confidence
  std::vector<int32_t> tokens;    // per exit, argmax
};

struct generation_result {
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;  // generated ids, without a final EOS
  std::vector<exit_step> exit_trace;
  std::string stop_reason;      // "eos", "max_tokens" or "context_full"
  double prefill_ms = 0;        // prompt forward, first token included
  double decode_ms = 0;         // the one-token steps after it
  int decode_steps = 0;

  double prefill_tokens_per_s() const;
  double decode_tokens_per_s() const;
};

/// Generates up to opts.max_tokens after `prompt` (which must not be empty).
/// `on_token` sees each generated id as soon as it is chosen.
generation_result generate(const transformer& model, const std::vector<int32_t>& prompt,
                           const generation_options& opts,
                           const std::function<void(int32_t)>& on_token = {});

} // namespace ceco
