#pragma once

// One response's figures as JSON (`ceco sim --json`, `results.jsonl`) and
// the byte formulas of docs/design.md §2.

#include <string>

#include <nlohmann/json.hpp>

#include "actors/messages.hpp"
#include "config/settings.hpp"

namespace ceco {
class exit_heads;
}

namespace ceco::app {

/// Bytes up the formulas predict for a response of `mode` under `s`
/// (upload.dtype, upload.prompt), payload only: collaborative
/// (p + n - 1)·d·dtype, or with the prompt's tokens 4p + n·d·dtype;
/// naive Σ_{i<n} (p + i)·d·4, cloud 4p, standalone 0; speculative and exact
/// as collaborative when nothing is rolled back (each rollback uploads the
/// positions after it again).
int64_t formula_bytes_up(const settings& s, strategy mode, int64_t p, int64_t n, int64_t d);

/// The fields of `ceco sim --json` (README "ceco sim").
nlohmann::json report_json(const response_report& r, const std::string& prompt,
                           const std::string& text, int64_t formula_up);

/// Adds, for a strategy that uses exits, the θ the response's exits used:
/// threshold (policy.threshold's number, or "auto"), thresholds (one per
/// exit) and thresholds_from ("set", "calibrated", "default").
void add_thresholds(nlohmann::json& j, strategy mode, const settings& s, const exit_heads& heads);

/// Adds agreement_with_cloud and rouge_l_with_cloud.
void add_cloud_agreement(nlohmann::json& j, const std::vector<int32_t>& tokens,
                         const std::vector<int32_t>& cloud_tokens);

/// The delay the link simulates on top of the network, for the start line
/// and /health of `ceco serve`: "none simulated", or "simulated 5 ms one way,
/// 30 Mbit/s" (with jitter where set).
std::string describe_link_delay(const settings& s);

} // namespace ceco::app
