#include "model/exit_calibration.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/exit_heads.hpp"

namespace ceco {

void exit_calibration_data::check() const {
  if (layers.empty())
    throw model_error("exit calibration: no exits");
  if (confidence.size() != layers.size() || agrees.size() != layers.size())
    throw model_error(fmt::format(
      "exit calibration: {} exits, but confidences for {} and agreements for {}", layers.size(),
      confidence.size(), agrees.size()));
  for (size_t i = 0; i < layers.size(); ++i)
    if (confidence[i].size() != confidence[0].size() || agrees[i].size() != confidence[0].size())
      throw model_error(fmt::format(
        "exit calibration: exit {} has {} confidences and {} agreements, expected {} positions",
        layers[i], confidence[i].size(), agrees[i].size(), confidence[0].size()));
}

double calibrated_exit::agreement_lower_95() const {
  if (fired == 0)
    return 0.0;
  const double z = 1.959964, n = double(fired), p = agreement();
  const double centre = p + z * z / (2 * n);
  const double spread = z * std::sqrt(p * (1 - p) / n + z * z / (4 * n * n));
  return std::max(0.0, (centre - spread) / (1 + z * z / n));
}

std::vector<float> exit_calibration::thresholds() const {
  std::vector<float> out;
  for (auto& e : exits)
    out.push_back(e.threshold);
  return out;
}

namespace {

/// The position's confidences of exits [0, n).
std::vector<float> confidences_at(const exit_calibration_data& d, size_t n, int64_t pos) {
  std::vector<float> c(n);
  for (size_t i = 0; i < n; ++i)
    c[i] = d.confidence[i][size_t(pos)];
  return c;
}

} // namespace

namespace {

struct candidate {
  float threshold;
  int64_t fired, agreed;
};

/// Exit i over the positions the exits before it leave under `chosen`: how
/// many reach it, and every threshold that qualifies there (at least
/// min_tokens exits agreeing at the target rate), largest first.
struct exit_scan {
  int64_t reaching = 0;
  std::vector<candidate> qualifying;
};

exit_scan scan_exit(const exit_calibration_data& data, size_t i, const std::vector<float>& chosen,
                    const exit_calibration_options& opts) {
  exit_scan out;
  std::vector<int64_t> reach;
  const std::vector<int> earlier(data.layers.begin(), data.layers.begin() + std::ptrdiff_t(i));
  for (int64_t p = 0; p < data.positions(); ++p)
    if (i == 0 || first_confident_exit(earlier, confidences_at(data, i, p), chosen,
                                       opts.min_exit_layer) < 0)
      reach.push_back(p);
  out.reaching = int64_t(reach.size());
  if (data.layers[i] < opts.min_exit_layer)
    return out;
  // Most confident first; a threshold is a confidence seen, taking every
  // position at or above it (ties together).
  const auto& conf = data.confidence[i];
  const auto& ok = data.agrees[i];
  std::sort(reach.begin(), reach.end(),
            [&](int64_t a, int64_t b) { return conf[size_t(a)] > conf[size_t(b)]; });
  int64_t fired = 0, agreed = 0;
  for (size_t k = 0; k < reach.size();) {
    const float t = conf[size_t(reach[k])];
    for (; k < reach.size() && conf[size_t(reach[k])] == t; ++k) {
      ++fired;
      agreed += ok[size_t(reach[k])] ? 1 : 0;
    }
    // Agreement is not monotone in the threshold: every threshold that
    // meets the target qualifies, not only those above the first miss.
    if (fired >= opts.min_tokens && double(agreed) >= opts.target_agreement * double(fired))
      out.qualifying.push_back({t, fired, agreed});
  }
  return out;
}

calibrated_exit exit_at(const exit_calibration_data& data, size_t i, const exit_scan& scan,
                        const candidate* pick, const exit_calibration_options& opts) {
  calibrated_exit e;
  e.layer = data.layers[i];
  e.reaching = scan.reaching;
  if (pick) {
    e.threshold = pick->threshold;
    e.fired = pick->fired;
    e.agreed = pick->agreed;
  }
  if (e.layer < opts.min_exit_layer)
    e.note = fmt::format("before min_exit_layer {}: never fires", opts.min_exit_layer);
  else if (scan.qualifying.empty())
    e.note = e.reaching < opts.min_tokens
               ? fmt::format("only {} positions reach it, fewer than {}: never fires", e.reaching,
                             opts.min_tokens)
               : fmt::format("no threshold with at least {} exits reaches {:.2f}% agreement: "
                             "never fires",
                             opts.min_tokens, 100 * opts.target_agreement);
  else if (!pick)
    e.note = fmt::format("never fires, so that the exits after it fire more (its smallest "
                         "qualifying threshold is {:.4f})",
                         scan.qualifying.back().threshold);
  else if (pick->threshold != scan.qualifying.back().threshold)
    e.note = fmt::format("above its smallest qualifying threshold {:.4f}, so that the exits "
                         "after it fire more",
                         scan.qualifying.back().threshold);
  return e;
}

/// Calibrates exits [i, n) after the thresholds `chosen` of the exits
/// before them.
std::vector<calibrated_exit> calibrate_from(const exit_calibration_data& data, size_t i,
                                            std::vector<float> chosen,
                                            const exit_calibration_options& opts,
                                            bool lookahead) {
  std::vector<calibrated_exit> out;
  for (; i < data.layers.size(); ++i) {
    const auto scan = scan_exit(data, i, chosen, opts);
    const candidate* pick = scan.qualifying.empty() ? nullptr : &scan.qualifying.back();
    const bool last = i + 1 == data.layers.size();
    if (lookahead && !last && !scan.qualifying.empty()) {
      // Each qualifying threshold (up to 256 of them, the smallest always)
      // and never firing, judged by the exits it and the later ones
      // (calibrated in order) emit in all; a tie keeps the smaller one.
      std::vector<const candidate*> tries;
      const size_t n = scan.qualifying.size(), step = std::max<size_t>(1, n / 256);
      for (size_t k = n; k-- > 0;)
        if ((n - 1 - k) % step == 0 || k == 0)
          tries.push_back(&scan.qualifying[k]);
      tries.push_back(nullptr);
      int64_t best = -1;
      for (auto* c : tries) {
        auto next = chosen;
        next.push_back(c ? c->threshold : never_fire_threshold);
        int64_t total = c ? c->fired : 0;
        for (auto& e : calibrate_from(data, i + 1, next, opts, false))
          total += e.fired;
        if (total > best) {
          best = total;
          pick = c;
        }
      }
    }
    out.push_back(exit_at(data, i, scan, pick, opts));
    chosen.push_back(out.back().threshold);
  }
  return out;
}

} // namespace

exit_calibration calibrate_exit_thresholds(const exit_calibration_data& data,
                                           const exit_calibration_options& opts) {
  data.check();
  if (!(opts.target_agreement > 0.0 && opts.target_agreement <= 1.0))
    throw model_error(fmt::format("exit calibration: target agreement must be in (0, 1], got {}",
                                  opts.target_agreement));
  if (opts.min_tokens < 1)
    throw model_error(fmt::format("exit calibration: min_tokens must be >= 1, got {}",
                                  opts.min_tokens));
  exit_calibration out;
  out.options = opts;
  out.positions = data.positions();
  out.exits = calibrate_from(data, 0, {}, opts, opts.lookahead);
  return out;
}

exit_rule_outcome apply_exit_rule(const exit_calibration_data& data,
                                  const std::vector<float>& thresholds, int min_exit_layer) {
  data.check();
  const size_t n_exits = data.layers.size();
  exit_rule_outcome r;
  r.fired.assign(n_exits, 0);
  r.agreed.assign(n_exits, 0);
  r.positions = data.positions();
  std::vector<int32_t> which(n_exits);
  std::iota(which.begin(), which.end(), 0);  // an exit's "token" is its index
  for (int64_t p = 0; p < r.positions; ++p) {
    auto c = decide_exit(data.layers, confidences_at(data, n_exits, p), which, thresholds,
                         min_exit_layer);
    if (c.index < 0)
      continue;
    const auto i = size_t(c.index);
    ++r.fired[i];
    ++r.total_fired;
    if (data.agrees[i][size_t(p)]) {
      ++r.agreed[i];
      ++r.total_agreed;
    }
  }
  return r;
}

float best_single_threshold(const exit_calibration_data& data, double target, int64_t min_tokens,
                            int min_exit_layer, float step) {
  if (!(step > 0.0f))
    throw model_error(fmt::format("best single threshold: step must be > 0, got {}", step));
  float best = never_fire_threshold;
  const int n = int(std::ceil(1.0f / step));
  for (int k = n; k >= 0; --k) {
    const float t = std::min(1.0f, float(k) * step);
    auto r = apply_exit_rule(data, std::vector<float>(data.layers.size(), t), min_exit_layer);
    if (r.total_fired >= min_tokens && double(r.total_agreed) >= target * double(r.total_fired))
      best = t;
  }
  return best;
}

} // namespace ceco
