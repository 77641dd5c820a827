#include "model/json_input.hpp"

#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "model/config.hpp"

namespace ceco {

nlohmann::json parse_json_input(const char* first, const char* last, const std::string& what) {
  try {
    return nlohmann::json::parse(first, last, [&](int depth, nlohmann::json::parse_event_t,
                                                  nlohmann::json&) {
      if (depth > max_json_depth)
        throw model_error(fmt::format("{}: JSON nested more than {} levels deep", what,
                                      max_json_depth));
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    throw model_error(fmt::format("{}: not valid JSON: {}", what, e.what()));
  }
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw model_error(fmt::format("{}: cannot open", path));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad())
    throw model_error(fmt::format("{}: cannot read", path));
  return parse_json_input(text.data(), text.data() + text.size(), path);
}

std::string json_excerpt(const nlohmann::json& value) {
  std::string s = value.dump();
  if (s.size() > 200)
    s = s.substr(0, 197) + "...";
  return s;
}

} // namespace ceco
