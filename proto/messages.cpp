#include "proto/messages.hpp"

#include <cstring>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/half.hpp"

namespace ceco {

const char* to_string(ceco_errc code) {
  switch (code) {
    case ceco_errc::unknown_session: return "unknown_session";
    case ceco_errc::bad_tensor: return "bad_tensor";
    case ceco_errc::position_gap: return "position_gap";
    case ceco_errc::bad_position: return "bad_position";
    case ceco_errc::compute_failed: return "compute_failed";
    case ceco_errc::session_limit: return "session_limit";
    case ceco_errc::handshake_failed: return "handshake_failed";
    case ceco_errc::cloud_unreachable: return "cloud_unreachable";
    case ceco_errc::not_placed_here: return "not_placed_here";
    case ceco_errc::unknown_message: return "unknown_message";
    case ceco_errc::handshake_timeout: return "handshake_timeout";
    case ceco_errc::bad_request: return "bad_request";
    case ceco_errc::session_lost: return "session_lost";
    case ceco_errc::bad_header: return "bad_header";
    case ceco_errc::too_large: return "too_large";
    case ceco_errc::bad_field: return "bad_field";
    case ceco_errc::truncated: return "truncated";
    case ceco_errc::trailing_bytes: return "trailing_bytes";
    case ceco_errc::not_allowed: return "not_allowed";
    case ceco_errc::too_many_requests: return "too_many_requests";
    case ceco_errc::closed: return "closed";
    case ceco_errc::timed_out: return "timed_out";
    case ceco_errc::auth_failed: return "auth_failed";
    case ceco_errc::io: return "io";
    case ceco_errc::not_encodable: return "not_encodable";
  }
  return "unknown_error";
}

bool is_known(uint8_t code) {
  return std::string_view(to_string(ceco_errc(code))) != "unknown_error";
}

bool is_link_error(ceco_errc code) {
  switch (code) {
    case ceco_errc::bad_header:
    case ceco_errc::too_large:
    case ceco_errc::bad_field:
    case ceco_errc::truncated:
    case ceco_errc::trailing_bytes:
    case ceco_errc::not_allowed:
    case ceco_errc::too_many_requests:
    case ceco_errc::closed:
    case ceco_errc::timed_out:
    case ceco_errc::auth_failed:
    case ceco_errc::io:
    case ceco_errc::not_encodable:
      return true;
    case ceco_errc::unknown_session:
    case ceco_errc::bad_tensor:
    case ceco_errc::position_gap:
    case ceco_errc::bad_position:
    case ceco_errc::compute_failed:
    case ceco_errc::session_limit:
    case ceco_errc::handshake_failed:
    case ceco_errc::cloud_unreachable:
    case ceco_errc::not_placed_here:
    case ceco_errc::unknown_message:
    case ceco_errc::handshake_timeout:
    case ceco_errc::bad_request:
    case ceco_errc::session_lost:
      return false;
  }
  return false;
}

std::string draft_distributions::check(size_t entries, int32_t vocab) const {
  if (!counts.empty() && counts.size() != entries)
    return fmt::format("{} draft distributions for {} drafts (expected one per draft, or none)",
                       counts.size(), entries);
  size_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0 || counts[i] > proto::max_candidates)
      return fmt::format("draft distribution {} has {} candidates; expected 0..{}", i, counts[i],
                         proto::max_candidates);
    total += size_t(counts[i]);
  }
  if (tokens.size() != total || weights.size() != total)
    return fmt::format("draft distributions count {} candidates, but carry {} tokens and {} "
                       "weights", total, tokens.size(), weights.size());
  size_t at = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    double sum = 0.0;
    for (int32_t j = 0; j < counts[i]; ++j, ++at) {
      if (tokens[at] < 0 || tokens[at] >= vocab)
        return fmt::format("draft distribution {}: candidate {} is id {}; the vocabulary holds "
                           "0..{}", i, j, tokens[at], vocab - 1);
      if (!(weights[at] >= 0.0f && weights[at] <= 1.0f))
        return fmt::format("draft distribution {}: candidate {} has weight {}; expected 0..1", i,
                           j, weights[at]);
      sum += weights[at];
    }
    if (counts[i] > 0 && !(sum > 0.0))
      return fmt::format("draft distribution {} has no weight", i);
  }
  return {};
}

void draft_distributions::append(const draft_distributions& from, size_t i) {
  if (from.counts.empty())
    return append_none();
  size_t first = 0;
  for (size_t k = 0; k < i; ++k)
    first += size_t(from.counts[k]);
  const auto n = size_t(from.counts[i]);
  counts.push_back(int32_t(n));
  tokens.insert(tokens.end(), from.tokens.begin() + std::ptrdiff_t(first),
                from.tokens.begin() + std::ptrdiff_t(first + n));
  weights.insert(weights.end(), from.weights.begin() + std::ptrdiff_t(first),
                 from.weights.begin() + std::ptrdiff_t(first + n));
}

void draft_distributions::append_none() { counts.push_back(0); }

std::string tensor_blob::check(int32_t expected_cols) const {
  size_t elem;
  if (dtype == uint8_t(wire_dtype::f32))
    elem = 4;
  else if (dtype == uint8_t(wire_dtype::f16))
    elem = 2;
  else
    return fmt::format("dtype {} is neither f32 (0) nor f16 (1)", dtype);
  if (rows <= 0 || cols <= 0)
    return fmt::format("shape [{}, {}] is empty or negative", rows, cols);
  if (expected_cols > 0 && cols != expected_cols)
    return fmt::format("rows have {} values, expected {} (the model's n_embd)", cols,
                       expected_cols);
  size_t expected = size_t(rows) * size_t(cols) * elem;
  if (bytes.size() != expected)
    return fmt::format("shape [{}, {}] of {} needs {} bytes, the payload has {}", rows, cols,
                       elem == 4 ? "f32" : "f16", expected, bytes.size());
  return {};
}

tensor_blob make_blob(const float* data, int32_t rows, int32_t cols, wire_dtype dtype) {
  tensor_blob b;
  b.dtype = uint8_t(dtype);
  b.rows = rows;
  b.cols = cols;
  const size_t n = size_t(rows) * size_t(cols);
  if (dtype == wire_dtype::f32) {
    b.bytes.resize(n * 4);
    std::memcpy(b.bytes.data(), data, n * 4);
  } else {
    b.bytes.resize(n * 2);
    for (size_t i = 0; i < n; ++i) {
      uint16_t h = float_to_half(data[i]);
      std::memcpy(b.bytes.data() + 2 * i, &h, 2);
    }
  }
  return b;
}

void read_blob(const tensor_blob& b, float* out) {
  const size_t n = size_t(b.rows) * size_t(b.cols);
  if (b.dtype == uint8_t(wire_dtype::f32)) {
    std::memcpy(out, b.bytes.data(), n * 4);
  } else {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, b.bytes.data() + 2 * i, 2);
      out[i] = half_to_float(h);
    }
  }
}

namespace {

std::string threshold_text(float t) {
  return t == hello_msg::threshold_auto ? std::string("auto") : fmt::format("{}", t);
}

} // namespace

std::string compare_hello(const hello_msg& edge, const hello_msg& cloud) {
  std::vector<std::string> diffs;
  if (edge.protocol != cloud.protocol)
    diffs.push_back(fmt::format("protocol version: edge {}, cloud {}", edge.protocol, cloud.protocol));
  if (edge.shape_fingerprint != cloud.shape_fingerprint)
    diffs.push_back(fmt::format(
      "model shape and tokenizer: edge {:016x}, cloud {:016x} (different models)",
      edge.shape_fingerprint, cloud.shape_fingerprint));
  else if (edge.fingerprint != cloud.fingerprint && edge.weight_types == cloud.weight_types)
    diffs.push_back(fmt::format(
      "model fingerprint: edge {:016x}, cloud {:016x} (different {} weights of one shape)",
      edge.fingerprint, cloud.fingerprint, edge.weight_types));
  else if (edge.fingerprint != cloud.fingerprint && !cloud.allow_mixed_quantization)
    diffs.push_back(fmt::format(
      "model weights: edge {}, cloud {} (one model, two quantizations; the cloud accepts that "
      "with cloud.allow_mixed_quantization = true)",
      edge.weight_types, cloud.weight_types));
  if (edge.n_layer != cloud.n_layer)
    diffs.push_back(fmt::format("layers: edge {}, cloud {}", edge.n_layer, cloud.n_layer));
  if (edge.split != cloud.split)
    diffs.push_back(fmt::format("split.layer: edge {}, cloud {}", edge.split, cloud.split));
  if (edge.exits != cloud.exits)
    diffs.push_back(fmt::format("model.exits: edge [{}], cloud [{}]", fmt::join(edge.exits, ", "),
                                fmt::join(cloud.exits, ", ")));
  auto where = [](bool on_cloud) { return on_cloud ? "cloud" : "edge"; };
  if (edge.evaluator_on_cloud != cloud.evaluator_on_cloud)
    diffs.push_back(fmt::format("placement.exit_evaluator: edge \"{}\", cloud \"{}\"",
                                where(edge.evaluator_on_cloud), where(cloud.evaluator_on_cloud)));
  else if (edge.evaluator_on_cloud && (edge.threshold != cloud.threshold
                                       || edge.min_exit_layer != cloud.min_exit_layer))
    diffs.push_back(fmt::format(
      "policy.threshold / min_exit_layer of the exit evaluator on the cloud: edge {} / {}, "
      "cloud {} / {}", threshold_text(edge.threshold), edge.min_exit_layer,
      threshold_text(cloud.threshold), cloud.min_exit_layer));
  if (edge.uploader_on_cloud != cloud.uploader_on_cloud)
    diffs.push_back(fmt::format("placement.uploader: edge \"{}\", cloud \"{}\"",
                                where(edge.uploader_on_cloud), where(cloud.uploader_on_cloud)));
  else if (edge.uploader_on_cloud && edge.upload_dtype != cloud.upload_dtype)
    diffs.push_back(fmt::format("upload.dtype of the uploader on the cloud: edge {}, cloud {}",
                                edge.upload_dtype == 0 ? "f32" : "f16",
                                cloud.upload_dtype == 0 ? "f32" : "f16"));
  if (edge.secret != cloud.secret)
    diffs.push_back("cloud.secret differs");
  return fmt::format("{}", fmt::join(diffs, "; "));
}

std::string mixed_quantization_note(const hello_msg& edge, const hello_msg& cloud) {
  if (edge.fingerprint == cloud.fingerprint || edge.shape_fingerprint != cloud.shape_fingerprint
      || edge.weight_types == cloud.weight_types)
    return {};
  return fmt::format("the edge holds {} weights and this cloud {} of one model "
                     "(cloud.allow_mixed_quantization): their logits differ by quantization",
                     edge.weight_types, cloud.weight_types);
}

} // namespace ceco
