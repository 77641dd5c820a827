#include "actors/messages.hpp"

#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/half.hpp"

namespace ceco {

namespace {

const caf::atom_value ceco_category = caf::atom("ceco");

} // namespace

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
  }
  return "unknown_error";
}

bool is(const caf::error& err, ceco_errc code) {
  return err.category() == ceco_category && err.code() == static_cast<uint8_t>(code);
}

caf::error make_error(ceco_errc code, std::string what) {
  return caf::error(static_cast<uint8_t>(code), ceco_category, caf::make_message(std::move(what)));
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  if (err.category() == ceco_category) {
    std::string what;
    if (err.context().match_elements<std::string>())
      what = err.context().get_as<std::string>(0);
    return fmt::format("{}: {}", to_string(static_cast<ceco_errc>(err.code())), what);
  }
  return caf::to_string(err);
}

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
      "cloud {} / {}", edge.threshold, edge.min_exit_layer, cloud.threshold, cloud.min_exit_layer));
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

void register_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<hello_msg>("hello_msg");
  cfg.add_message_type<std::vector<int32_t>>("ceco_ids");
  cfg.add_message_type<tensor_blob>("tensor_blob");
  cfg.add_message_type<upload_msg>("upload_msg");
  cfg.add_message_type<draft_upload>("draft_upload");
  cfg.add_message_type<verdict>("verdict");
  cfg.add_message_type<infer_request>("infer_request");
  cfg.add_message_type<infer_reply>("infer_reply");
  cfg.add_message_type<naive_request>("naive_request");
  cfg.add_message_type<generate_request>("generate_request");
  cfg.add_message_type<generate_reply>("generate_reply");
  cfg.add_message_type<session_summary>("session_summary");
  cfg.add_message_type<edge_output>("edge_output");
  cfg.add_message_type<exit_decision>("exit_decision");
  cfg.add_message_type<link_counters>("link_counters");
  cfg.add_message_type<response_report>("response_report");
  cfg.add_error_category(ceco_category, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string what = ctx.match_elements<std::string>() ? ctx.get_as<std::string>(0) : "";
    return fmt::format("ceco::{}: {}", to_string(static_cast<ceco_errc>(code)), what);
  });
}

} // namespace ceco
