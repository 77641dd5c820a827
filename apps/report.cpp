#include "apps/report.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "actors/deployment.hpp"
#include "model/exit_heads.hpp"
#include "model/metrics.hpp"

namespace ceco::app {

std::string describe_link_delay(const settings& s) {
  const auto& l = s.link;
  if (l.latency_ms <= 0 && l.bandwidth_mbps <= 0 && l.jitter_ms <= 0)
    return "no simulated delay";
  std::string out = fmt::format("simulated {:g} ms one way", l.latency_ms);
  if (l.bandwidth_mbps > 0)
    out += fmt::format(", {:g} Mbit/s", l.bandwidth_mbps);
  if (l.jitter_ms > 0)
    out += fmt::format(", up to {:g} ms jitter", l.jitter_ms);
  return out + " (link.*)";
}

int64_t formula_bytes_up(const settings& s, strategy mode, int64_t p, int64_t n, int64_t d) {
  const int64_t dtype_bytes = upload_dtype_of(s, mode) == "f32" ? 4 : 2;
  switch (mode) {
    case strategy::collaborative:
    case strategy::speculative:
    case strategy::exact: {
      if (n == 0)
        return 0;
      // The last token's state is never needed. With the prompt's tokens
      // the cloud computes the prompt itself, and the uploads begin at its
      // last row (which carries the first draft).
      if (prompt_to_cloud_of(s, mode))
        return 4 * p + n * d * dtype_bytes;
      return (p + n - 1) * d * dtype_bytes;
    }
    case strategy::naive: {
      int64_t total = 0;
      for (int64_t i = 0; i < n; ++i)
        total += (p + i) * d * 4;
      return total;
    }
    case strategy::cloud:
      return p * 4;
    case strategy::standalone:
      return 0;
  }
  return 0;
}

nlohmann::json report_json(const response_report& x, const std::string& prompt,
                           const std::string& text, int64_t formula_up) {
  nlohmann::json j;
  j["mode"] = to_string(x.mode);
  j["prompt"] = prompt;
  j["text"] = text;
  j["tokens"] = x.tokens;
  j["n_prompt"] = x.prompt.size();
  j["n_generated"] = x.tokens.size();
  nlohmann::json exits = nlohmann::json::object();
  for (size_t i = 0; i < x.exit_layers.size(); ++i)
    exits[std::to_string(x.exit_layers[i])] = x.exit_counts[i];
  exits["cloud"] = x.cloud_tokens;
  j["exits"] = exits;
  j["cloud_requests"] = x.cloud_requests;
  j["degraded_tokens"] = x.degraded_tokens;
  j["resumed"] = x.resumed;
  j["cloud_request_rate"] =
    x.tokens.empty() ? 0.0 : double(x.cloud_tokens) / double(x.tokens.size());
  j["uploads"] = x.uploads;
  j["uploaded_positions"] = x.uploaded_positions;
  j["bytes_up"] = x.traffic.bytes_up;
  j["bytes_down"] = x.traffic.bytes_down;
  j["messages_up"] = x.traffic.messages_up;
  j["messages_down"] = x.traffic.messages_down;
  j["formula_bytes_up"] = formula_up;
  j["edge_ms"] = double(x.edge_us) / 1000.0;
  j["cloud_ms"] = double(x.cloud_us) / 1000.0;
  j["comm_ms"] = double(x.comm_us) / 1000.0;
  j["total_ms"] = double(x.total_us) / 1000.0;
  j["cloud_ms_per_token"] = x.tokens.empty() ? 0.0 : double(x.cloud_us) / 1000.0 / double(x.tokens.size());
  j["ttft_ms"] = x.first_token_us >= 0 ? nlohmann::json(double(x.first_token_us) / 1000.0)
                                       : nlohmann::json(nullptr);
  j["itl_p50_ms"] = double(x.itl_p50_us) / 1000.0;
  j["itl_p95_ms"] = double(x.itl_p95_us) / 1000.0;
  if (drafts(x.mode)) {
    j["drafts"] = x.drafts;
    j["accepted_drafts"] = x.accepted_drafts;
    j["rollbacks"] = x.rollbacks;
    j["discarded_tokens"] = x.discarded_tokens;
    j["unverified_tokens"] = x.unverified_tokens;
    j["verdicts"] = x.verdicts;
    j["verify_bytes"] = x.verify_bytes;
  }
  if (!x.error.empty())
    j["error"] = x.error;
  return j;
}

void add_thresholds(nlohmann::json& j, strategy mode, const settings& s, const exit_heads& heads) {
  if (!uses_exits(mode))
    return;
  const auto theta = threshold_override(s);
  j["threshold"] = theta ? nlohmann::json(*theta) : nlohmann::json("auto");
  j["thresholds"] = heads.thresholds(theta);
  j["thresholds_from"] = heads.threshold_origin(theta);
}

void add_cloud_agreement(nlohmann::json& j, const std::vector<int32_t>& tokens,
                         const std::vector<int32_t>& cloud_tokens) {
  j["agreement_with_cloud"] = token_agreement(tokens, cloud_tokens);
  j["rouge_l_with_cloud"] = rouge_l(tokens, cloud_tokens);
}

} // namespace ceco::app
