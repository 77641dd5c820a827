#pragma once

// Calibrated per-exit thresholds (CALM-style): on held-out positions, each
// exit gets the smallest threshold at which the tokens it would emit agree
// with the final layer's argmax at least at a target rate.
//
// The exits are calibrated in order, as the exit rule runs them
// (decide_exit): exit i is calibrated only on the positions that no earlier
// exit takes at its already chosen threshold, so each threshold is judged on
// exactly the tokens that exit would emit. A threshold qualifies only when
// at least `min_tokens` positions fire at it; an exit for which none
// qualifies never fires (never_fire_threshold), and the result says why.
//
// Greedy, each exit takes its smallest qualifying threshold. That can cost
// exits in all: a shallow exit taking marginal positions leaves the deeper
// ones the hard rest. With `lookahead` every exit but the last
// takes, among its qualifying thresholds (and never firing), the one under
// which it and the exits after it (each calibrated greedily) emit the most
// tokens in all; every exit still meets the target on its own, and the last
// one takes its smallest qualifying threshold. Its thresholds hold only for
// the exits calibrated together (an exit may even never fire, leaving its
// positions to a later one), so a heads file says so and a load of other
// exits does not use them; greedy thresholds stay valid for a prefix of the
// exits.
//
// Plain data, no torch: the confidences and agreements come from
// model/exit_training.hpp (calibration_data) or from a test.

#include <cstdint>
#include <string>
#include <vector>

namespace ceco {

/// Above any softmax probability: an exit with this threshold never fires.
constexpr float never_fire_threshold = 1.01f;

/// Per exit and position: the head's confidence (exit_head::confidence)
/// and whether its argmax equals the final layer's.
struct exit_calibration_data {
  std::vector<int> layers;                    // the exits, ascending
  std::vector<std::vector<float>> confidence; // [exit][position]
  std::vector<std::vector<uint8_t>> agrees;   // [exit][position], 0 or 1
  int64_t positions() const { return confidence.empty() ? 0 : int64_t(confidence[0].size()); }
  /// Throws model_error when the shapes disagree.
  void check() const;
};

struct exit_calibration_options {
  double target_agreement = 0.99;  // in (0, 1]
  int64_t min_tokens = 100;        // fewest firing positions a threshold may rest on
  int min_exit_layer = 1;          // exits before it never fire (as the exit rule)
  bool lookahead = false;          // true: jointly, see above
};

struct calibrated_exit {
  int layer = 0;
  float threshold = never_fire_threshold;
  int64_t reaching = 0;  // positions no earlier exit took
  int64_t fired = 0;     // of those, positions at or above the threshold
  int64_t agreed = 0;    // of those, positions whose token equals the final's
  double agreement() const { return fired ? double(agreed) / double(fired) : 0.0; }
  /// Wilson score 95% lower bound of the agreement (0 when nothing fired).
  double agreement_lower_95() const;
  std::string note;  // why it never fires, or why above its smallest qualifying threshold
};

struct exit_calibration {
  exit_calibration_options options;
  int64_t positions = 0;
  std::vector<calibrated_exit> exits;
  std::vector<float> thresholds() const;
};

exit_calibration calibrate_exit_thresholds(const exit_calibration_data& data,
                                           const exit_calibration_options& opts);

/// What the exit rule (decide_exit) does over every position with
/// `thresholds`: per exit the positions it emits and of those the ones that
/// agree with the final layer, and in all.
struct exit_rule_outcome {
  std::vector<int64_t> fired, agreed;  // per exit
  int64_t positions = 0, total_fired = 0, total_agreed = 0;
  double exit_rate() const { return positions ? double(total_fired) / double(positions) : 0.0; }
  double agreement() const {
    return total_fired ? double(total_agreed) / double(total_fired) : 0.0;
  }
};
exit_rule_outcome apply_exit_rule(const exit_calibration_data& data,
                                  const std::vector<float>& thresholds, int min_exit_layer);

/// The smallest single θ on a grid of `step` whose exit-rule agreement over
/// `data` reaches `target` with at least `min_tokens` exits in all
/// (never_fire_threshold when none does): the single-threshold baseline.
float best_single_threshold(const exit_calibration_data& data, double target, int64_t min_tokens,
                            int min_exit_layer, float step = 0.001f);

} // namespace ceco
