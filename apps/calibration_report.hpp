#pragma once

// What `ceco calibrate-exits` and `ceco tune-exits --target-agreement`
// share: calibrating heads' thresholds on one set of positions, checking
// them on another, and printing both; the temperatures of their
// self-generated text.

#include <vector>

#include "model/exit_calibration.hpp"

namespace CLI {
class App;
}

namespace ceco {
class exit_heads;
struct exit_dataset;
}

namespace ceco::app {

/// Calibrates `heads` on `calibration` (model/exit_calibration.hpp), prints
/// the thresholds with the positions each rests on, then, on `test`
/// (positions not used to calibrate; may be empty), the exit rate and
/// agreement of the best single θ on the calibration positions against the
/// calibrated thresholds. Stores the thresholds in `heads`; `data_note`
/// says what the positions were (kept in the heads file).
exit_calibration calibrate_and_report(exit_heads& heads, const exit_dataset& calibration,
                                      const exit_dataset& test,
                                      const exit_calibration_options& opts,
                                      const std::string& data_note);

/// `--temperature` of the self-generated text (model/exit_training.hpp:
/// self_generated_sequences); check_temperature_option, in the command's
/// callback, refuses it beside --text.
void add_temperature_option(CLI::App& cmd, std::vector<float>& temperatures);
void check_temperature_option(const CLI::App& cmd);

} // namespace ceco::app
