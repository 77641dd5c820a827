#pragma once

// JSON output of the commands (`--json`, results.jsonl).

#include <string>

#include <nlohmann/json.hpp>

namespace ceco::app {

/// One JSON value as text. Generated text can end inside a UTF-8 character
/// (a model may stop at max_tokens between the bytes of one) and a prompt may
/// hold any bytes, so invalid sequences become U+FFFD rather than failing the
/// whole output; the token ids beside the text stay exact.
inline std::string json_text(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

} // namespace ceco::app
