#pragma once

// Device profiles: what each piece of work of a response would cost on named
// hardware, so the simulation can answer "what would collaboration buy with
// this edge device, this cloud GPU and this link?" while keeping its real
// exit decisions, protocol and byte counts. In profile mode (compute.mode =
// "profile") the edge layers, exit evaluator and cloud layers still compute
// (their tokens are real), but each takes the profile's time for its work
// instead of the time it measured, as the link takes its latency.
//
// Costs are for a target model shape (target_layers deep): one layer of the
// simulated model stands for target_layers / n_layer layers of the target.
// A step over `rows` rows costs, per layer, layer_ms + layer_row_ms * rows
// (a GPU computes a small batch in about the time of one row); a head (an
// exit head on the edge, the classifier on the cloud) costs head_ms for its
// first row and head_row_ms for each further row of the same step (by
// default head_ms again: rows one after another).

#include <cstdint>
#include <string>
#include <vector>

namespace ceco {

struct side_costs {
  double layer_ms = 0;      // one layer, any rows
  double layer_row_ms = 0;  // each row adds this, per layer
  double head_ms = 0;       // one head over one row
  double head_row_ms = 0;   // each further row of one step, for that head
};

struct compute_profile {
  std::string name;
  std::string description;
  std::string source;  // where the numbers come from
  int target_layers = 0;
  int target_dim = 0;
  side_costs edge;
  side_costs cloud;

  /// Microseconds for `layers` layers of a model of `model_layers` over `rows` rows.
  int64_t layers_us(const side_costs& side, int layers, int64_t rows, int model_layers) const;
  /// Microseconds for one head over `rows` rows of one step (several
  /// different heads cost one call each).
  int64_t heads_us(const side_costs& side, int64_t rows) const;
};

/// The shipped profiles (config/profiles/*.toml), by name.
std::vector<std::string> compute_profile_names();

/// A shipped profile by name, or a profile file (a path ending in .toml);
/// config_error naming the file and key when it is missing or malformed.
compute_profile load_compute_profile(const std::string& name_or_file);

} // namespace ceco
