#include "apps/experiments/combos.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace ceco::app {

using json = nlohmann::json;

std::string exits_text(const std::vector<int>& e) {
  return fmt::format("{}", fmt::join(e, ","));
}

std::vector<combo> make_combos(const settings& base) {
  combo first;
  first.keys["threshold"] = base.policy.threshold ? nlohmann::json(*base.policy.threshold)
                                                 : nlohmann::json("auto");
  first.keys["split"] = base.split.layer;
  first.keys["exit_layers"] = base.model.exits;
  first.keys["upload_dtype"] = base.upload.dtype;
  first.keys["link"] = base.link.profile.empty() ? "custom" : base.link.profile;
  first.keys["latency_ms"] = base.link.latency_ms;
  first.keys["sessions"] = base.experiment.sessions;
  first.keys["workers"] = base.cluster.local_workers;
  std::vector<combo> out{first};
  auto expand = [&](const char* key, const std::string& setting, const std::vector<json>& values,
                    const std::vector<std::string>& texts, const char* label) {
    if (values.empty())
      return;
    std::vector<combo> next;
    for (auto& c : out)
      for (size_t i = 0; i < values.size(); ++i) {
        combo x = c;
        x.overrides.push_back(setting + "=" + texts[i]);
        x.keys[key] = values[i];
        x.label += fmt::format("{}{}={}", x.label.empty() ? "" : " ", label, texts[i]);
        next.push_back(x);
      }
    out = next;
  };
  std::vector<json> v;
  std::vector<std::string> t;
  auto reset = [&] { v.clear(); t.clear(); };
  for (auto x : base.sweep.threshold) v.push_back(x), t.push_back(fmt::format("{}", x));
  expand("threshold", "policy.threshold", v, t, "θ");
  reset();
  for (auto x : base.sweep.split) v.push_back(x), t.push_back(std::to_string(x));
  expand("split", "split.layer", v, t, "split");
  reset();
  for (auto& x : base.sweep.exits) v.push_back(x), t.push_back("[" + exits_text(x) + "]");
  expand("exit_layers", "model.exits", v, t, "exits");
  reset();
  for (auto& x : base.sweep.upload_dtype) v.push_back(x), t.push_back(x);
  expand("upload_dtype", "upload.dtype", v, t, "dtype");
  reset();
  for (auto& x : base.sweep.link) v.push_back(x), t.push_back(x);
  expand("link", "link.profile", v, t, "link");
  reset();
  for (auto x : base.sweep.latency_ms) v.push_back(x), t.push_back(fmt::format("{}", x));
  expand("latency_ms", "link.latency_ms", v, t, "latency");
  reset();
  for (auto x : base.sweep.sessions) v.push_back(x), t.push_back(std::to_string(x));
  expand("sessions", "experiment.sessions", v, t, "edges");
  reset();
  for (auto x : base.sweep.workers) v.push_back(x), t.push_back(std::to_string(x));
  expand("workers", "cluster.local_workers", v, t, "workers");

  for (auto& c : out) {
    c.s = base;
    for (auto& o : c.overrides)
      if (o.rfind("link.latency_ms=", 0) != 0)
        apply_override(c.s, o);
    apply_link_profile(c.s);
    for (auto& o : c.overrides)  // a swept latency replaces the profile's
      if (o.rfind("link.latency_ms=", 0) == 0)
        apply_override(c.s, o);
    // A split sweep without an exits sweep keeps the exits that still fit;
    // with none left, the edge exits at the split itself, untrained.
    if (!base.sweep.split.empty() && base.sweep.exits.empty()) {
      std::vector<int> fit;
      for (int e : c.s.model.exits)
        if (e <= c.s.split.layer)
          fit.push_back(e);
      if (fit.empty()) {
        fit = {c.s.split.layer};
        c.s.model.exit_heads = "none";
      }
      c.s.model.exits = fit;
      c.keys["exit_layers"] = fit;
    }
    if (c.label.empty())
      c.label = "base";
  }
  return out;
}

std::string model_key(const settings& s) {
  return fmt::format("{}|{}|{}|{}|{}", s.model.path, s.model.tokenizer, s.model.exit_heads,
                     exits_text(s.model.exits), s.model.device);
}

} // namespace ceco::app
