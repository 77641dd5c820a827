#include "model/exit_heads.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"
#include "model/layer.hpp"
#include "model/sampler.hpp"
#include "model/loader.hpp"
#include "model/transformer.hpp"

namespace ceco {

void exit_heads::check_layers(const std::vector<int>& layers, int n_layer,
                              const std::string& what) {
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 1 || layers[i] >= n_layer)
      throw model_error(fmt::format(
        "{}: exit after layer {} is outside 1..{} (the model has {} layers; an exit after "
        "the last one is the model itself)",
        what, layers[i], n_layer - 1, n_layer));
    if (i > 0 && layers[i] <= layers[i - 1])
      throw model_error(fmt::format("{}: exits must be strictly ascending, got {} after {}",
                                    what, layers[i], layers[i - 1]));
  }
}

exit_heads exit_heads::untrained(const transformer& model, std::vector<int> layers) {
  check_layers(layers, model.config().n_layer, "exits");
  exit_heads h;
  h.norm_eps_ = model.config().norm_eps;
  for (int l : layers) {
    exit_head e;
    e.layer = l;
    e.norm = model.weights().output_norm;
    e.output = model.weights().output;
    h.heads_.push_back(std::move(e));
  }
  return h;
}

namespace {

at::Tensor read_head_tensor(const gguf_file& f, const std::string& name, std::vector<int64_t> shape,
                c10::Device device) {
  return read_gguf_tensor(f, name, shape).to(device);
}

/// The float array `key`: one value per exit of the file (`in_file`), each
/// one `valid` accepts (`range` says which, in the error).
std::vector<double> per_exit_floats(const gguf_file& f, const std::string& key,
                                    const std::vector<int>& in_file, const std::string& path,
                                    bool (*valid)(double), const char* range) {
  auto values = f.get_float_array(key);
  if (values.size() != in_file.size())
    throw model_error(fmt::format(
      "{}: {} has {} values, expected one per exit in ceco.exit_heads.layers ({})", path, key,
      values.size(), in_file.size()));
  for (size_t i = 0; i < values.size(); ++i)
    if (!valid(values[i]))
      throw model_error(fmt::format(
        "{}: {}[{}] (exit after layer {}) is {}, expected a number in {}", path, key, i,
        in_file[i], values[i], range));
  return values;
}

} // namespace

exit_heads exit_heads::load(const std::string& path, const transformer& model,
                            std::vector<int> layers) {
  c10::InferenceMode guard;
  gguf_file f(path);
  const auto& cfg = model.config();
  auto n_embd = int(f.get_uint("ceco.exit_heads.n_embd"));
  auto vocab = int(f.get_uint("ceco.exit_heads.vocab_size"));
  if (n_embd != cfg.n_embd || vocab != cfg.vocab_size)
    throw model_error(fmt::format(
      "{}: heads are for n_embd={} vocab={}, but the model has n_embd={} vocab={}", path,
      n_embd, vocab, cfg.n_embd, cfg.vocab_size));
  std::vector<int> in_file;
  for (auto l : f.get_int_array("ceco.exit_heads.layers"))
    in_file.push_back(int(l));
  check_layers(in_file, cfg.n_layer, path);
  if (layers.empty())
    layers = in_file;
  check_layers(layers, cfg.n_layer, "exits");
  for (int l : layers)
    if (std::find(in_file.begin(), in_file.end(), l) == in_file.end())
      throw model_error(fmt::format("{}: no head for the exit after layer {} (the file has {})",
                                    path, l, fmt::join(in_file, ",")));
  const auto version = f.get_uint_or("ceco.exit_heads.version", 1);
  if (version < 1 || version > exit_heads_file_version)
    throw model_error(fmt::format(
      "{}: ceco.exit_heads.version is {}, expected 1..{} (written by a newer ceco?)", path,
      version, exit_heads_file_version));
  // Calibrated thresholds (version 2, optional): one per exit of the file,
  // in its order, each in [0, {never_fire}].
  std::vector<double> in_file_thresholds;
  std::vector<int64_t> in_file_counts;
  if (f.has("ceco.exit_heads.thresholds")) {
    in_file_thresholds = per_exit_floats(f, "ceco.exit_heads.thresholds", in_file, path,
                                         [](double t) { return t >= 0.0 && t <= 2.0; }, "[0, 2]");
    if (f.has("ceco.exit_heads.calibration.tokens")) {
      in_file_counts = f.get_int_array("ceco.exit_heads.calibration.tokens");
      if (in_file_counts.size() != in_file.size())
        throw model_error(fmt::format(
          "{}: ceco.exit_heads.calibration.tokens has {} values, expected one per exit ({})",
          path, in_file_counts.size(), in_file.size()));
    }
  } else if (f.has("ceco.exit_heads.calibration.tokens")) {
    throw model_error(fmt::format("{}: ceco.exit_heads.calibration.tokens without "
                                  "ceco.exit_heads.thresholds",
                                  path));
  }

  // Sampling temperatures (optional): one per exit of the file, each > 0.
  std::vector<double> in_file_sampling;
  if (f.has("ceco.exit_heads.sampling_temperatures"))
    in_file_sampling = per_exit_floats(f, "ceco.exit_heads.sampling_temperatures", in_file, path,
                                       [](double t) { return t > 0.0 && t <= 100.0; }, "(0, 100]");

  exit_heads h;
  h.norm_eps_ = cfg.norm_eps;
  h.source_ = path;
  if (!in_file_thresholds.empty()
      && f.get_uint_or("ceco.exit_heads.calibration.joint", 0) != 0 && layers != in_file) {
    // Calibrated jointly: an exit's threshold depends on the exits after it.
    h.threshold_note_ = fmt::format(
      "its thresholds were calibrated for exits {} together, not for {}",
      fmt::join(in_file, ","), fmt::join(layers, ","));
    in_file_thresholds.clear();
    in_file_counts.clear();
  }
  if (!in_file_thresholds.empty()) {
    h.calibration_.joint = f.get_uint_or("ceco.exit_heads.calibration.joint", 0) != 0;
    h.calibration_.target_agreement = f.get_float_or("ceco.exit_heads.calibration.target_agreement", 0.0);
    h.calibration_.data = f.get_string_or("ceco.exit_heads.calibration.data", "");
    h.calibration_.min_exit_layer = int(f.get_uint_or("ceco.exit_heads.calibration.min_exit_layer", 1));
  }
  const auto dev = model.device();
  for (int l : layers) {
    auto n = [&](const char* s) { return fmt::format("exit.{}.{}", l, s); };
    exit_head e;
    e.layer = l;
    const auto at = size_t(std::find(in_file.begin(), in_file.end(), l) - in_file.begin());
    if (!in_file_thresholds.empty())
      e.threshold = float(in_file_thresholds[at]);
    if (!in_file_counts.empty())
      e.calibration_tokens = in_file_counts[at];
    if (!in_file_sampling.empty())
      e.sampling_temperature = float(in_file_sampling[at]);
    e.norm = read_head_tensor(f, n("norm.weight"), {cfg.n_embd}, dev);
    if (f.find(n("output.weight"))) {
      e.output = read_head_tensor(f, n("output.weight"), {cfg.vocab_size, cfg.n_embd}, dev);
      e.own_output = true;
    } else {
      e.output = model.weights().output;
    }
    if (auto a = f.find(n("adapter_a.weight"))) {
      if (a->ne.size() != 2)
        throw model_error(fmt::format("{}: tensor '{}' must be 2-D, has shape {}", path,
                                      n("adapter_a.weight"), a->shape_string()));
      int64_t hidden = a->ne[1];
      e.adapter_a = read_head_tensor(f, n("adapter_a.weight"), {hidden, cfg.n_embd}, dev);
      e.adapter_c = read_head_tensor(f, n("adapter_a.bias"), {hidden}, dev);
      e.adapter_b = read_head_tensor(f, n("adapter_b.weight"), {cfg.n_embd, hidden}, dev);
    }
    if (auto a = f.find(n("confidence_a.weight"))) {
      const int64_t features = cfg.n_embd + confidence_extra_features;
      if (a->ne.size() != 2 || a->ne[0] != features)
        throw model_error(fmt::format(
          "{}: tensor '{}' has shape {}, expected [{}, units] (n_embd + {} features)", path,
          n("confidence_a.weight"), a->shape_string(), features, confidence_extra_features));
      int64_t units = a->ne[1];
      e.confidence_a = read_head_tensor(f, n("confidence_a.weight"), {units, features}, dev);
      e.confidence_c = read_head_tensor(f, n("confidence_a.bias"), {units}, dev);
      e.confidence_b = read_head_tensor(f, n("confidence_b.weight"), {units}, dev);
      e.confidence_d = read_head_tensor(f, n("confidence_b.bias"), {1}, dev);
    }
    h.heads_.push_back(std::move(e));
  }
  return h;
}

void exit_heads::save(const std::string& path) const {
  c10::InferenceMode guard;
  if (heads_.empty())
    throw model_error(fmt::format("{}: no exit heads to save", path));
  gguf_writer w;
  w.set_string("general.architecture", "ceco-exit-heads");
  auto exits = layers();
  w.set_int32_array("ceco.exit_heads.layers", std::vector<int32_t>(exits.begin(), exits.end()));
  w.set_uint32("ceco.exit_heads.n_embd", uint32_t(heads_[0].norm.size(0)));
  w.set_uint32("ceco.exit_heads.vocab_size", uint32_t(heads_[0].output.rows()));
  // Version 3 only where it is needed (a confidence classifier), so that
  // builds before it still read files without one.
  bool classifier = false;
  for (auto& e : heads_)
    classifier = classifier || e.has_confidence_classifier();
  w.set_uint32("ceco.exit_heads.version", classifier ? exit_heads_file_version : 2);
  if (calibrated()) {
    std::vector<float> t;
    std::vector<int32_t> counts;
    for (auto& e : heads_) {
      t.push_back(*e.threshold);
      counts.push_back(int32_t(std::min<int64_t>(e.calibration_tokens, INT32_MAX)));
    }
    w.set_float32_array("ceco.exit_heads.thresholds", t);
    w.set_int32_array("ceco.exit_heads.calibration.tokens", counts);
    w.set_float32("ceco.exit_heads.calibration.target_agreement",
                  float(calibration_.target_agreement));
    w.set_uint32("ceco.exit_heads.calibration.min_exit_layer",
                 uint32_t(std::max(0, calibration_.min_exit_layer)));
    w.set_uint32("ceco.exit_heads.calibration.joint", calibration_.joint ? 1 : 0);
    if (!calibration_.data.empty())
      w.set_string("ceco.exit_heads.calibration.data", calibration_.data);
  }
  {
    std::vector<float> temperatures;
    bool any = false;
    for (auto& e : heads_) {
      temperatures.push_back(e.sampling_temperature);
      any = any || e.sampling_temperature != 1.0f;
    }
    if (any)
      w.set_float32_array("ceco.exit_heads.sampling_temperatures", temperatures);
  }
  auto put = [&](const std::string& name, const at::Tensor& t) {
    auto c = t.to(at::kCPU).contiguous();
    std::vector<int64_t> ne(c.sizes().rbegin(), c.sizes().rend());
    w.add_tensor(name, ne, c.data_ptr<float>());
  };
  for (auto& e : heads_) {
    auto n = [&](const char* s) { return fmt::format("exit.{}.{}", e.layer, s); };
    put(n("norm.weight"), e.norm);
    if (e.own_output)
      put(n("output.weight"), e.output.tensor("saving exit heads"));
    if (e.adapter_a.defined()) {
      put(n("adapter_a.weight"), e.adapter_a);
      put(n("adapter_a.bias"), e.adapter_c);
      put(n("adapter_b.weight"), e.adapter_b);
    }
    if (e.confidence_a.defined()) {
      put(n("confidence_a.weight"), e.confidence_a);
      put(n("confidence_a.bias"), e.confidence_c);
      put(n("confidence_b.weight"), e.confidence_b);
      put(n("confidence_b.bias"), e.confidence_d);
    }
  }
  w.write(path);
}

namespace {

void check_thresholds(const std::vector<int>& layers, const std::vector<float>& thresholds) {
  if (thresholds.size() != layers.size())
    throw model_error(fmt::format("exit decision: {} thresholds for {} exits", thresholds.size(),
                                  layers.size()));
}

} // namespace

int first_confident_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                         const std::vector<float>& thresholds, int min_layer) {
  check_thresholds(layers, thresholds);
  for (size_t i = 0; i < layers.size() && i < confidence.size(); ++i)
    if (layers[i] >= min_layer && confidence[i] >= thresholds[i])
      return int(i);
  return -1;
}

exit_choice decide_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                        const std::vector<int32_t>& tokens, const std::vector<float>& thresholds,
                        int min_layer) {
  if (layers.empty() || tokens.size() != layers.size())
    throw model_error(fmt::format("exit decision: {} tokens for {} exits", tokens.size(),
                                  layers.size()));
  exit_choice c;
  c.index = first_confident_exit(layers, confidence, thresholds, min_layer);
  const size_t chosen = c.index >= 0 ? size_t(c.index) : layers.size() - 1;
  c.layer = c.index >= 0 ? layers[chosen] : -1;
  c.token = tokens[chosen];
  return c;
}

bool exit_heads::calibrated() const {
  if (heads_.empty())
    return false;
  for (auto& e : heads_)
    if (!e.threshold)
      return false;
  return true;
}

std::vector<float> exit_heads::thresholds(std::optional<float> theta) const {
  std::vector<float> out;
  const bool own = !theta && calibrated();
  for (auto& e : heads_)
    out.push_back(theta ? *theta : own ? *e.threshold : default_exit_threshold);
  return out;
}

std::string exit_heads::threshold_origin(std::optional<float> theta) const {
  return theta ? "set" : calibrated() ? "calibrated" : "default";
}

std::string exit_heads::describe_thresholds(std::optional<float> theta) const {
  if (theta)
    return fmt::format("θ = {} for every exit (set)", *theta);
  if (!calibrated())
    return fmt::format("θ = {} for every exit (default; the heads carry no calibrated "
                       "thresholds{})",
                       default_exit_threshold,
                       threshold_note_.empty() ? "" : ": " + threshold_note_);
  std::vector<std::string> parts;
  for (auto& e : heads_)
    parts.push_back(*e.threshold > 1.0f ? fmt::format("exit {} never", e.layer)
                                        : fmt::format("exit {} θ = {:.4f}", e.layer, *e.threshold));
  return fmt::format("calibrated: {} (to {:.2f}% agreement, from the heads file)",
                     fmt::join(parts, ", "), 100 * calibration_.target_agreement);
}

void exit_heads::set_calibration(const std::vector<float>& thresholds,
                                 const std::vector<int64_t>& tokens,
                                 const exit_heads_calibration& info) {
  if (thresholds.size() != heads_.size() || tokens.size() != heads_.size())
    throw model_error(fmt::format("exit heads: {} thresholds and {} token counts for {} exits",
                                  thresholds.size(), tokens.size(), heads_.size()));
  for (size_t i = 0; i < heads_.size(); ++i) {
    heads_[i].threshold = thresholds[i];
    heads_[i].calibration_tokens = tokens[i];
  }
  calibration_ = info;
}

std::vector<int> exit_heads::layers() const {
  std::vector<int> out;
  for (auto& e : heads_)
    out.push_back(e.layer);
  return out;
}

at::Tensor exit_head::logits(const at::Tensor& h, float norm_eps) const {
  auto n = rms_norm(h, norm, norm_eps);
  if (adapter_a.defined())
    n = n + project(at::silu(project(n, adapter_a) + adapter_c), adapter_b);
  return project(n, output);
}

at::Tensor exit_head::confidence_features(const at::Tensor& h, const at::Tensor& logits,
                                          float norm_eps) {
  auto z = logits.to(at::kFloat);
  auto logp = at::log_softmax(z, -1);
  auto top2 = std::get<0>(z.topk(2, -1));
  auto hf = h.to(at::kFloat);
  auto plain = hf * at::rsqrt(hf.pow(2).mean(-1, true) + norm_eps);
  return at::cat({plain, logp.amax(-1, true), top2.narrow(-1, 0, 1) - top2.narrow(-1, 1, 1),
                  -(logp.exp() * logp).sum(-1, true)},
                 -1);
}

at::Tensor exit_head::confidence(const at::Tensor& h, const at::Tensor& logits,
                                 float norm_eps) const {
  if (!confidence_a.defined())
    return at::softmax(logits.to(at::kFloat), -1).amax(-1);
  auto f = confidence_features(h, logits, norm_eps);
  auto units = at::silu(at::matmul(f, confidence_a.t()) + confidence_c);
  return at::sigmoid(at::matmul(units, confidence_b) + confidence_d);
}

at::Tensor exit_heads::confidence(size_t i, const at::Tensor& h, const at::Tensor& logits) const {
  c10::InferenceMode guard;
  return heads_.at(i).confidence(h, logits, norm_eps_);
}

sampler_options exit_heads::sampling_options(size_t i, sampler_options o) const {
  o.temperature *= heads_.at(i).sampling_temperature;
  return o;
}

at::Tensor exit_heads::logits(size_t i, const at::Tensor& h) const {
  c10::InferenceMode guard;
  return heads_.at(i).logits(h, norm_eps_);
}

exit_reading exit_heads::read(size_t i, const at::Tensor& h, at::Tensor* logits_out) const {
  auto z = logits(i, h);
  const bool classifier = heads_.at(i).has_confidence_classifier();
  const float c = classifier ? confidence(i, h, z).to(at::kCPU).item<float>() : 0.0f;
  z = z.to(at::kCPU).to(at::kFloat).contiguous();
  const int n = int(z.numel());
  exit_reading r{classifier ? c : max_probability(z.data_ptr<float>(), n),
                 argmax(z.data_ptr<float>(), n)};
  if (logits_out)
    *logits_out = z;
  return r;
}

} // namespace ceco
