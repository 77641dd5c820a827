#include "model/config.hpp"

#include <fmt/format.h>

namespace ceco {

void model_config::validate(const std::string& source) const {
  auto bad = [&](const char* field, long value, const std::string& expected) {
    return model_error(
      fmt::format("{}: model {} is {}, expected {}", source, field, value, expected));
  };
  if (n_embd <= 0) throw bad("n_embd", n_embd, "> 0");
  if (n_ff <= 0) throw bad("n_ff", n_ff, "> 0");
  if (n_layer <= 0) throw bad("n_layer", n_layer, "> 0");
  if (n_head <= 0 || n_embd % n_head != 0)
    throw bad("n_head", n_head, fmt::format("a divisor of n_embd = {}", n_embd));
  if (head_dim() % 2 != 0)
    throw bad("head_dim", head_dim(), "even (RoPE rotates pairs)");
  if (n_head_kv <= 0 || n_head % n_head_kv != 0)
    throw bad("n_head_kv", n_head_kv, fmt::format("a divisor of n_head = {}", n_head));
  if (vocab_size <= 0) throw bad("vocab_size", vocab_size, "> 0");
  // The context sizes every KV cache and the RoPE table: a file's claim is
  // bounded before anything is allocated for it.
  if (max_seq <= 0 || max_seq > max_context_length)
    throw bad("context length", max_seq, fmt::format("1..{}", max_context_length));
  if (!(norm_eps > 0)) throw model_error(fmt::format("{}: norm_eps must be > 0", source));
  if (!(rope_theta > 0)) throw model_error(fmt::format("{}: rope_theta must be > 0", source));
  if (!rope_freq_factors.empty() && n_head > 0 && n_embd % n_head == 0 &&
      int(rope_freq_factors.size()) != head_dim() / 2)
    throw model_error(fmt::format("{}: {} RoPE frequency factors, expected head_dim / 2 = {}",
                                  source, rope_freq_factors.size(), head_dim() / 2));
  for (float f : rope_freq_factors)
    if (!(f > 0))
      throw model_error(fmt::format("{}: a RoPE frequency factor is {}, expected > 0", source, f));
}

} // namespace ceco
