#include "config/compute_profile.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include "config/settings.hpp"

namespace ceco {

namespace fs = std::filesystem;

namespace {

fs::path profiles_dir() {
  if (const char* env = std::getenv("CECO_PROFILES"); env && *env)
    return env;
  return CECO_PROFILES_DIR;
}

double number(const toml::table& t, const std::string& file, const char* key, double lo, double hi) {
  auto node = t.at_path(key);
  auto v = node.value<double>();
  if (!v)
    throw config_error(fmt::format("{}: {} must be a number, {}", file, key,
                                   node ? "got something else" : "it is missing"));
  if (!std::isfinite(*v) || *v < lo || *v > hi)
    throw config_error(fmt::format("{}: {} must be in {}..{}, got {}", file, key, lo, hi, *v));
  return *v;
}

std::string text(const toml::table& t, const char* key) {
  return t.at_path(key).value<std::string>().value_or("");
}

side_costs side(const toml::table& t, const std::string& file, const std::string& name) {
  side_costs c;
  c.layer_ms = number(t, file, (name + ".layer_ms").c_str(), 0.0, 1e5);
  c.layer_row_ms = number(t, file, (name + ".layer_row_ms").c_str(), 0.0, 1e5);
  c.head_ms = number(t, file, (name + ".head_ms").c_str(), 0.0, 1e5);
  // Optional: without it every further row costs a whole head_ms.
  const auto row_key = name + ".head_row_ms";
  c.head_row_ms = t.at_path(row_key) ? number(t, file, row_key.c_str(), 0.0, 1e5) : c.head_ms;
  return c;
}

} // namespace

int64_t compute_profile::layers_us(const side_costs& s, int layers, int64_t rows,
                                   int model_layers) const {
  const double per_layer = s.layer_ms + s.layer_row_ms * double(rows);
  const double target = double(layers) * double(target_layers) / double(std::max(model_layers, 1));
  return int64_t(std::llround(target * per_layer * 1000.0));
}

int64_t compute_profile::heads_us(const side_costs& s, int64_t rows) const {
  if (rows <= 0)
    return 0;
  return int64_t(std::llround((s.head_ms + s.head_row_ms * double(rows - 1)) * 1000.0));
}

std::vector<std::string> compute_profile_names() {
  std::vector<std::string> names;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(profiles_dir(), ec))
    if (e.path().extension() == ".toml")
      names.push_back(e.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

compute_profile load_compute_profile(const std::string& name_or_file) {
  const bool is_file = name_or_file.size() > 5
                       && name_or_file.compare(name_or_file.size() - 5, 5, ".toml") == 0;
  const fs::path file = is_file ? fs::path(name_or_file) : profiles_dir() / (name_or_file + ".toml");
  if (!fs::exists(file))
    throw config_error(
      is_file ? fmt::format("compute.profile: no such profile file '{}'", name_or_file)
              : fmt::format("compute.profile: no profile named '{}' (shipped: {}; or give a "
                            "file ending in .toml)",
                            name_or_file, fmt::join(compute_profile_names(), ", ")));
  toml::table t;
  try {
    t = toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    throw config_error(fmt::format("{}:{}:{}: {}", file.string(), e.source().begin.line,
                                   e.source().begin.column, e.description()));
  }
  const auto where = file.string();
  compute_profile p;
  p.name = is_file ? file.stem().string() : name_or_file;
  p.description = text(t, "profile.description");
  p.source = text(t, "profile.source");
  p.target_layers = int(number(t, where, "target.layers", 1, 10'000));
  p.target_dim = int(number(t, where, "target.dim", 1, 1'000'000));
  p.edge = side(t, where, "edge");
  p.cloud = side(t, where, "cloud");
  return p;
}

} // namespace ceco
