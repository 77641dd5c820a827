#include "apps/experiments/ledger.hpp"

#include <fmt/format.h>

#include "config/settings.hpp"
#include "apps/json_text.hpp"

namespace ceco::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string result_key(int combo, int rep, size_t sample, const std::string& strategy) {
  return fmt::format("{}/{}/{}/{}", combo, rep, sample, strategy);
}

result_ledger::result_ledger(const fs::path& dir, const json& identity) {
  auto identity_path = dir / "experiment.json";
  auto results_path = dir / "results.jsonl";
  if (fs::exists(identity_path) && fs::exists(results_path)) {
    json before;
    std::ifstream(identity_path) >> before;
    if (before["settings"] != identity["settings"])
      throw config_error(fmt::format(
        "{} holds results of different settings; use another --out or delete the folder",
        dir.string()));
    std::ifstream in(results_path);
    std::string line;
    while (std::getline(in, line)) {
      try {
        lines_.push_back(json::parse(line));
      } catch (const json::exception&) {
        // a line cut short by the interruption: run it again
      }
    }
  }
  std::ofstream(identity_path) << json_text(identity, 2) << "\n";
  {
    std::ofstream rewrite(results_path, std::ios::trunc);
    for (auto& j : lines_)
      rewrite << json_text(j) << "\n";
  }
  for (auto& j : lines_)
    remember(j);
  results_.open(results_path, std::ios::app);
}

void result_ledger::remember(const json& j) {
  done_.insert(result_key(j["combo"], j["repetition"], j["sample"], j["mode"]));
  if (j["mode"] == to_string(strategy::cloud))
    cloud_tokens_[result_key(j["combo"], j["repetition"], j["sample"], "")] =
      j["tokens"].get<std::vector<int32_t>>();
}

bool result_ledger::done(int combo, int rep, size_t sample, strategy mode) const {
  return done_.count(result_key(combo, rep, sample, to_string(mode))) > 0;
}

const std::vector<int32_t>* result_ledger::cloud_tokens(int combo, int rep, size_t sample) const {
  auto i = cloud_tokens_.find(result_key(combo, rep, sample, ""));
  return i == cloud_tokens_.end() ? nullptr : &i->second;
}

void result_ledger::add(json line) {
  results_ << json_text(line) << std::endl;
  remember(line);
  lines_.push_back(std::move(line));
}

} // namespace ceco::app
