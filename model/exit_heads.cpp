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

  exit_heads h;
  h.norm_eps_ = cfg.norm_eps;
  h.source_ = path;
  const auto dev = model.device();
  for (int l : layers) {
    auto n = [&](const char* s) { return fmt::format("exit.{}.{}", l, s); };
    exit_head e;
    e.layer = l;
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
  }
  w.write(path);
}

int first_confident_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                         float threshold, int min_layer) {
  for (size_t i = 0; i < layers.size() && i < confidence.size(); ++i)
    if (layers[i] >= min_layer && confidence[i] >= threshold)
      return int(i);
  return -1;
}

exit_choice decide_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                        const std::vector<int32_t>& tokens, float threshold, int min_layer) {
  if (layers.empty() || tokens.size() != layers.size())
    throw model_error(fmt::format("exit decision: {} tokens for {} exits", tokens.size(),
                                  layers.size()));
  exit_choice c;
  c.index = first_confident_exit(layers, confidence, threshold, min_layer);
  const size_t chosen = c.index >= 0 ? size_t(c.index) : layers.size() - 1;
  c.layer = c.index >= 0 ? layers[chosen] : -1;
  c.token = tokens[chosen];
  return c;
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

at::Tensor exit_heads::logits(size_t i, const at::Tensor& h) const {
  c10::InferenceMode guard;
  return heads_.at(i).logits(h, norm_eps_);
}

exit_reading exit_heads::read(size_t i, const at::Tensor& h) const {
  auto z = logits(i, h).to(at::kCPU).contiguous();
  const int n = int(z.numel());
  return {max_probability(z.data_ptr<float>(), n), argmax(z.data_ptr<float>(), n)};
}

} // namespace ceco
