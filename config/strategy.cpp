#include "config/strategy.hpp"

#include <fmt/format.h>

#include "config/settings.hpp"

namespace ceco {

const std::vector<strategy>& all_strategies() {
  static const std::vector<strategy> all = {strategy::cloud,         strategy::naive,
                                            strategy::standalone,    strategy::collaborative,
                                            strategy::speculative,   strategy::exact};
  return all;
}

const char* to_string(strategy s) {
  switch (s) {
    case strategy::cloud: return "cloud";
    case strategy::naive: return "naive";
    case strategy::standalone: return "standalone";
    case strategy::collaborative: return "collaborative";
    case strategy::speculative: return "speculative";
    case strategy::exact: return "exact";
  }
  return "unknown";
}

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (auto s : all_strategies())
      out.emplace_back(to_string(s));
    return out;
  }();
  return names;
}

std::optional<strategy> parse_strategy(std::string_view name) {
  for (auto s : all_strategies())
    if (name == to_string(s))
      return s;
  return std::nullopt;
}

strategy strategy_of(std::string_view name, std::string_view what) {
  if (auto s = parse_strategy(name))
    return *s;
  throw config_error(fmt::format("{} '{}' is not a strategy: expected one of {}", what, name,
                                 fmt::join(strategy_names(), ", ")));
}

} // namespace ceco
