#pragma once

// The combinations of an experiment: the base settings crossed with every
// sweep.* list (threshold, split, exits, upload dtype, link profile).

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/settings.hpp"

namespace ceco::app {

/// One point of the sweep: overrides on top of the base settings.
struct combo {
  std::vector<std::string> overrides;
  nlohmann::json keys = nlohmann::json::object();  // threshold, split, exits, upload_dtype, link
  std::string label;           // e.g. "θ=0.8 split=3"
  settings s;
};

/// "2,3"
std::string exits_text(const std::vector<int>& e);

/// Every combination, in sweep order; each with its settings applied and
/// checked (link profile, exits that fit the split).
std::vector<combo> make_combos(const settings& base);

/// What identifies the model a combination loads: combinations that agree
/// share one.
std::string model_key(const settings& s);

} // namespace ceco::app
