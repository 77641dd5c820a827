#pragma once

// JSON that comes with a checkpoint (safetensors headers and indexes,
// config.json, tokenizer.json) is untrusted input: parsed with a nesting
// limit, since copying or printing a value recurses once per level, and
// with every parse error a model_error naming the file.

#include <string>

#include <nlohmann/json.hpp>

namespace ceco {

/// Nesting deeper than this is refused: real files nest a few levels.
constexpr int max_json_depth = 64;

/// The JSON text [first, last) of `what` (a file name, or a file and the part of it).
nlohmann::json parse_json_input(const char* first, const char* last, const std::string& what);
/// The JSON file at `path`; throws model_error when it cannot be read.
nlohmann::json read_json_file(const std::string& path);
/// `value` printed for an error message, at most 200 characters.
std::string json_excerpt(const nlohmann::json& value);

} // namespace ceco
