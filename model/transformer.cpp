#include "model/transformer.hpp"

#include <cmath>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/cpu_kernels.hpp"
#include "model/kv_f16.hpp"
#include "model/layer.hpp"

namespace ceco {

// -- transformer ----------------------------------------------------------------

transformer::transformer(model_config cfg, model_weights weights, c10::Device device)
  : cfg_(cfg), w_(std::move(weights)), device_(device) {
  cfg_.validate("transformer");
  if (int(w_.layers.size()) != cfg_.n_layer)
    throw model_error(fmt::format("transformer: {} layer slots for a {}-layer model",
                                  w_.layers.size(), cfg_.n_layer));
  c10::InferenceMode guard;
  auto move = [&](at::Tensor& t) {
    if (t.defined())
      t = t.to(device_).contiguous();
  };
  auto move_matrix = [&](weight_matrix& m) {
    if (m.is_tensor())
      m = weight_matrix(m.tensor("transformer").to(device_).contiguous());
    else if (m.defined() && !device_.is_cpu())
      throw model_error(fmt::format(
        "transformer: {} weights compute on the CPU only, not on {}; use --device cpu",
        quant::type_name(m.type()), device_.str()));
  };
  const bool tied = w_.output.same_as(w_.tok_embd);
  move_matrix(w_.tok_embd);
  move(w_.output_norm);
  if (tied)
    w_.output = w_.tok_embd;
  else
    move_matrix(w_.output);
  for (auto& l : w_.layers) {
    move(l.attn_norm);
    move(l.ffn_norm);
    move(l.bq);
    move(l.bk);
    move(l.bv);
    for (auto* m : l.matrices())
      move_matrix(*m);
  }

  auto table = rope_table::build(cfg_);
  rope_.cos = table.cos.to(device_);
  rope_.sin = table.sin.to(device_);
  rope_.halves = table.halves;
}

void transformer::set_reference_numerics(bool on) {
  reference_numerics_ = on;
  auto table = rope_table::build(cfg_, on);
  rope_.cos = table.cos.to(device_);
  rope_.sin = table.sin.to(device_);
  rope_.halves = table.halves;
}

kv_cache transformer::make_cache(int first, int last, int capacity) const {
  return kv_cache(cfg_, first, last, capacity > 0 ? capacity : cfg_.max_seq, device_,
                  cache_dtype());
}

at::Tensor transformer::embed(const std::vector<int32_t>& ids) const {
  c10::InferenceMode guard;
  for (auto id : ids)
    if (id < 0 || id >= cfg_.vocab_size)
      throw model_error(fmt::format("embed: token id {} outside the vocabulary [0, {})", id,
                                    cfg_.vocab_size));
  if (!w_.tok_embd.is_tensor()) {
    auto x = at::empty({int64_t(ids.size()), cfg_.n_embd}, at::kFloat);
    for (size_t i = 0; i < ids.size(); ++i)
      w_.tok_embd.row_into(ids[i], x.data_ptr<float>() + int64_t(i) * cfg_.n_embd);
    return x;
  }
  auto idx = at::from_blob(const_cast<int32_t*>(ids.data()), {int64_t(ids.size())}, at::kInt)
               .to(at::kLong)
               .to(device_);
  return w_.tok_embd.tensor("embed").index_select(0, idx).contiguous();
}

void transformer::embed_into(int32_t id, at::Tensor& x) const {
  if (id < 0 || id >= cfg_.vocab_size)
    throw model_error(fmt::format("embed: token id {} outside the vocabulary [0, {})", id,
                                  cfg_.vocab_size));
  c10::InferenceMode guard;
  if (x.is_cpu()) {
    w_.tok_embd.row_into(id, x.data_ptr<float>());
  } else {
    x[0].copy_(w_.tok_embd.tensor("embed")[id]);
  }
}

void transformer::check_forward(const at::Tensor& x, int64_t pos, int first, int last,
                                const kv_cache& cache) const {
  if (first < 0 || last < first || last > cfg_.n_layer)
    throw model_error(fmt::format("forward: layer range [{}, {}) is not inside [0, {})", first,
                                  last, cfg_.n_layer));
  if (first < cache.first_layer() || last > cache.last_layer())
    throw model_error(fmt::format(
      "forward: layers [{}, {}) are not all held by the cache for [{}, {})", first, last,
      cache.first_layer(), cache.last_layer()));
  if (x.dim() != 2 || x.size(1) != cfg_.n_embd || x.scalar_type() != at::kFloat
      || !x.is_contiguous())
    throw model_error(fmt::format(
      "forward: hidden states must be contiguous fp32 [T, {}], got {} of {}", cfg_.n_embd,
      fmt::join(x.sizes(), "x"), std::string(c10::toString(x.scalar_type()))));
  const int64_t n = x.size(0);
  if (pos < 0 || pos + n > cache.capacity())
    throw model_error(fmt::format(
      "forward: positions [{}, {}) exceed the cache capacity of {} positions", pos, pos + n,
      cache.capacity()));
  for (int il = first; il < last; ++il)
    if (pos > cache.length(il))
      throw model_error(fmt::format(
        "forward: layer {} has {} positions cached, so position {} would leave a gap", il,
        cache.length(il), pos));
}

void transformer::check_exits(const std::vector<int>& exits, int first, int last) const {
  for (size_t i = 0; i < exits.size(); ++i)
    if (exits[i] <= (i ? exits[i - 1] : first) || exits[i] > last)
      throw model_error(fmt::format(
        "forward: exits {} must be strictly ascending and inside ({}, {}]",
        fmt::join(exits, ","), first, last));
}

void transformer::forward_layers(at::Tensor& x, int64_t pos, int first, int last,
                                 kv_cache& cache) const {
  check_forward(x, pos, first, last, cache);
  c10::InferenceMode guard;
  const int64_t n = x.size(0);
  const sequence_step step{&x, pos, &cache};
  if ((fast_decode_ && n == 1 && x.is_cpu()) || (reference_numerics_ && x.is_cpu())) {
    // One position at a time (f16 attention has only this path).
    for (int64_t t = 0; t < n; ++t) {
      auto row = x.narrow(0, t, 1);
      const sequence_step one{&row, pos + t, &cache};
      for (int il = first; il < last; ++il) {
        forward_rows_cpu(row.data_ptr<float>(), &one, 1, il);
        cache.set_length(il, int(pos + t + 1));
      }
    }
    return;
  }
  auto h = x;  // each layer makes new hidden states; x takes the last
  for (int il = first; il < last; ++il) {
    forward_stacked(h, &step, 1, il);
    cache.set_length(il, int(pos + n));
  }
  if (!h.is_same(x))
    x.copy_(h);
}

namespace {

/// Whether the steps' inputs are consecutive rows of one contiguous f32
/// tensor, in step order (each step's first row right after the previous
/// step's last), so that together they are one [sum T_i, n_embd] tensor.
bool stacked_in_order(const std::vector<transformer::sequence_step>& steps) {
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& x = *steps[i].x;
    if (!x.is_contiguous() || x.scalar_type() != at::kFloat)
      return false;
    if (i == 0)
      continue;
    const auto& prev = *steps[i - 1].x;
    if (!x.is_alias_of(prev) || x.device() != prev.device()
        || x.data_ptr<float>() != prev.data_ptr<float>() + prev.numel())
      return false;
  }
  return true;
}

} // namespace

void transformer::forward_sequences(const std::vector<sequence_step>& steps, int first,
                                    int last) const {
  for (size_t i = 0; i < steps.size(); ++i) {
    for (size_t j = 0; j < i; ++j)
      if (steps[j].cache == steps[i].cache)
        throw model_error(fmt::format(
          "forward: steps {} and {} share one cache; a sequence takes one step at a time", j, i));
    check_forward(*steps[i].x, steps[i].pos, first, last, *steps[i].cache);
  }
  if (steps.size() == 1) {
    forward_layers(*steps[0].x, steps[0].pos, first, last, *steps[0].cache);
    return;
  }
  if (steps.empty())
    return;
  c10::InferenceMode guard;
  if (reference_numerics_ && device_.is_cpu()) {
    for (const auto& s : steps)
      forward_layers(*s.x, s.pos, first, last, *s.cache);
    return;
  }
  // Inputs already stacked (consecutive rows of one tensor, in step order,
  // as the cloud layers decode uploads) are computed where they are: no
  // gathering into one tensor and no copying back.
  const bool stacked = stacked_in_order(steps);
  bool decode_rows = fast_decode_;
  for (const auto& s : steps)
    decode_rows = decode_rows && s.x->size(0) == 1 && s.x->is_cpu();
  if (decode_rows) {
    // The cloud's steady state: one new position per session.
    const int64_t d = cfg_.n_embd;
    thread_local std::vector<float> gathered;
    float* x = steps[0].x->data_ptr<float>();
    if (!stacked) {
      gathered.resize(steps.size() * size_t(d));
      for (size_t i = 0; i < steps.size(); ++i)
        std::copy_n(steps[i].x->data_ptr<float>(), d, gathered.data() + int64_t(i) * d);
      x = gathered.data();
    }
    for (int il = first; il < last; ++il) {
      forward_rows_cpu(x, steps.data(), steps.size(), il);
      for (const auto& s : steps)
        s.cache->set_length(il, int(s.pos + 1));
    }
    if (!stacked)
      for (size_t i = 0; i < steps.size(); ++i)
        std::copy_n(gathered.data() + int64_t(i) * d, d, steps[i].x->data_ptr<float>());
    return;
  }
  int64_t total_rows = 0;
  for (const auto& s : steps)
    total_rows += s.x->size(0);
  at::Tensor x;       // [sum T_i, n_embd]
  at::Tensor inputs;  // stacked: the steps' own rows, where the result goes
  if (stacked) {
    inputs = steps[0].x->as_strided({total_rows, cfg_.n_embd}, {cfg_.n_embd, 1});
    x = inputs;
  } else {
    std::vector<at::Tensor> rows;
    rows.reserve(steps.size());
    for (const auto& s : steps)
      rows.push_back(*s.x);
    x = at::cat(rows, 0);
  }
  for (int il = first; il < last; ++il) {
    forward_stacked(x, steps.data(), steps.size(), il);
    for (const auto& s : steps)
      s.cache->set_length(il, int(s.pos + s.x->size(0)));
  }
  if (stacked) {
    inputs.copy_(x);
    return;
  }
  int64_t row = 0;
  for (const auto& s : steps) {
    s.x->copy_(x.narrow(0, row, s.x->size(0)));
    row += s.x->size(0);
  }
}

at::Tensor transformer::attend(const at::Tensor& q_raw, const at::Tensor& k_raw,
                              const at::Tensor& v, int64_t pos, int il, kv_cache& cache) const {
  const int64_t n = q_raw.size(0);
  // copy_ rounds into an f16 cache; attention reads every position as it
  // was stored, the new ones too, so that a prefill sees what decoding will.
  cache.keys(il).narrow(0, pos, n).copy_(rope(k_raw, rope_, pos, cfg_.n_head_kv));
  cache.values(il).narrow(0, pos, n).copy_(v);
  auto keys = cache.keys(il).narrow(0, 0, pos + n);
  auto values = cache.values(il).narrow(0, 0, pos + n);
  if (keys.scalar_type() != at::kFloat) {
    keys = keys.to(at::kFloat);
    values = values.to(at::kFloat);
  }
  return causal_attention(rope(q_raw, rope_, pos, cfg_.n_head), keys, values, pos, cfg_);
}

namespace {

/// Floats of scratch that grow once per thread: the one-token path
/// allocates nothing per token.
float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> scratch;
  if (int64_t(scratch.size()) < floats)
    scratch.resize(size_t(floats));
  return scratch.data();
}

/// The IEEE half bits of an f16 cache tensor.
uint16_t* f16_rows(at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::Half>());
}

} // namespace

void transformer::attend_one_cpu(float* out, float* q, const float* k, const float* v,
                                 int64_t pos, int il, kv_cache& cache) const {
  const int64_t d_kv = cfg_.n_embd_kv(), hd = cfg_.head_dim();
  const float* cos = rope_.cos.data_ptr<float>() + pos * (hd / 2);
  const float* sin = rope_.sin.data_ptr<float>() + pos * (hd / 2);
  kernels::rope(q, cfg_.n_head, hd, cos, sin, cfg_.rope_halves);
  if (cache.dtype() == kv_dtype::f32) {
    if (reference_numerics_)
      throw model_error(
        "forward: reference numerics need an f16 cache, and this one holds f32 (a cache made "
        "before set_reference_numerics(true)?)");
    float* k_row = cache.keys(il).data_ptr<float>() + pos * d_kv;
    std::copy_n(k, d_kv, k_row);
    std::copy_n(v, d_kv, cache.values(il).data_ptr<float>() + pos * d_kv);
    kernels::rope(k_row, cfg_.n_head_kv, hd, cos, sin, cfg_.rope_halves);
    kernels::attention(out, q, cache.keys(il).data_ptr<float>(),
                       cache.values(il).data_ptr<float>(), pos + 1, cfg_.n_head, cfg_.n_head_kv,
                       hd, cache.scores());
    return;
  }
  // f16: the key rotated in f32, then both rows rounded into the cache.
  float* k_rotated = thread_scratch(d_kv + 2 * hd);
  std::copy_n(k, d_kv, k_rotated);
  kernels::rope(k_rotated, cfg_.n_head_kv, hd, cos, sin, cfg_.rope_halves);
  kernels::store_f16(f16_rows(cache.keys(il)) + pos * d_kv, k_rotated, d_kv);
  kernels::store_f16(f16_rows(cache.values(il)) + pos * d_kv, v, d_kv);
  const uint16_t* keys = f16_rows(cache.keys(il));
  const uint16_t* values = f16_rows(cache.values(il));
  if (reference_numerics_)
    kernels::attention_f16(out, q, keys, values, pos + 1, cfg_.n_head, cfg_.n_head_kv, hd,
                           k_rotated + d_kv);
  else
    kernels::attention(out, q, keys, values, pos + 1, cfg_.n_head, cfg_.n_head_kv, hd,
                       cache.scores());
}

// The rows of one or more sequences stacked in x: the reference layer, with
// one product per weight and attention per sequence. x is replaced by the
// layer's output.
void transformer::forward_stacked(at::Tensor& x, const sequence_step* steps, size_t n_steps,
                                  int il) const {
  const int64_t d = cfg_.n_embd, d_kv = cfg_.n_embd_kv();
  auto attend_steps = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    auto att = at::empty_like(q);  // [N, d]
    int64_t row = 0;
    for (size_t i = 0; i < n_steps; ++i) {
      const auto& s = steps[i];
      const int64_t n = s.x->size(0);
      auto& cache = *s.cache;
      if (fast_decode_ && n == 1 && x.is_cpu()) {
        // One decode position: plain loops, no per-op dispatch.
        attend_one_cpu(att.data_ptr<float>() + row * d, q.data_ptr<float>() + row * d,
                       k.data_ptr<float>() + row * d_kv, v.data_ptr<float>() + row * d_kv, s.pos,
                       il, cache);
      } else {
        att.narrow(0, row, n).copy_(attend(q.narrow(0, row, n), k.narrow(0, row, n),
                                           v.narrow(0, row, n), s.pos, il, cache));
      }
      row += n;
    }
    return att;
  };
  x = layer_forward(x, w_.layers[size_t(il)], cfg_.norm_eps, attend_steps);
}

namespace {

/// W [rows, cols] · x for each of n rows of x [n, cols] into y [n, rows]:
/// every weight matrix of the CPU decode path is applied here.
void project_rows(const weight_matrix& w, const float* x, float* y, int64_t n) {
  if (n == 1)
    w.matvec(x, y);
  else
    w.matvec_rows(x, y, n);
}

} // namespace

// One decode position of each of n steps, the rows of x [n, n_embd]: the
// reference layer in plain loops. Buffers grow once per thread.
void transformer::forward_rows_cpu(float* x, const sequence_step* steps, size_t n_steps,
                                   int il) const {
  const auto& w = w_.layers[size_t(il)];
  const int64_t n = int64_t(n_steps);
  const int64_t d = cfg_.n_embd, d_kv = cfg_.n_embd_kv(), ff = cfg_.n_ff;
  thread_local std::vector<float> xb, q, k, v, att, hb, hb2;
  xb.resize(size_t(n * d));
  q.resize(size_t(n * d));
  k.resize(size_t(n * d_kv));
  v.resize(size_t(n * d_kv));
  att.resize(size_t(n * d));
  hb.resize(size_t(n * ff));
  hb2.resize(size_t(n * ff));

  // -- attention
  for (int64_t i = 0; i < n; ++i)
    kernels::rmsnorm(xb.data() + i * d, x + i * d, w.attn_norm.data_ptr<float>(), d,
                     cfg_.norm_eps);
  project_rows(w.wq, xb.data(), q.data(), n);
  project_rows(w.wk, xb.data(), k.data(), n);
  project_rows(w.wv, xb.data(), v.data(), n);
  for (auto [bias, y, width] : {std::tuple{&w.bq, q.data(), d}, std::tuple{&w.bk, k.data(), d_kv},
                                std::tuple{&w.bv, v.data(), d_kv}})
    if (bias->defined())
      for (int64_t i = 0; i < n; ++i)
        kernels::add(y + i * width, bias->data_ptr<float>(), width);
  for (int64_t i = 0; i < n; ++i) {
    const auto& s = steps[i];
    attend_one_cpu(att.data() + i * d, q.data() + i * d, k.data() + i * d_kv,
                   v.data() + i * d_kv, s.pos, il, *s.cache);
  }
  project_rows(w.wo, att.data(), xb.data(), n);
  kernels::add(x, xb.data(), n * d);

  // -- feed-forward (SwiGLU)
  for (int64_t i = 0; i < n; ++i)
    kernels::rmsnorm(xb.data() + i * d, x + i * d, w.ffn_norm.data_ptr<float>(), d,
                     cfg_.norm_eps);
  project_rows(w.w1, xb.data(), hb.data(), n);
  project_rows(w.w3, xb.data(), hb2.data(), n);
  kernels::swiglu(hb.data(), hb2.data(), n * ff);
  project_rows(w.w2, hb.data(), xb.data(), n);
  kernels::add(x, xb.data(), n * d);
}

at::Tensor transformer::logits(const at::Tensor& h) const {
  c10::InferenceMode guard;
  return project(rms_norm(h, w_.output_norm, cfg_.norm_eps), w_.output);
}

void transformer::logits_into(const at::Tensor& h, at::Tensor& out) const {
  c10::InferenceMode guard;
  auto last = h[h.size(0) - 1];
  if (fast_decode_ && h.is_cpu() && out.is_cpu()) {
    thread_local std::vector<float> normed;
    normed.resize(size_t(cfg_.n_embd));
    kernels::rmsnorm(normed.data(), last.data_ptr<float>(), w_.output_norm.data_ptr<float>(),
                     cfg_.n_embd, cfg_.norm_eps);
    project_rows(w_.output, normed.data(), out.data_ptr<float>(), 1);
    return;
  }
  auto normed = rms_norm(last, w_.output_norm, cfg_.norm_eps);
  if (w_.output.is_tensor())
    out.copy_(at::mv(w_.output.tensor("logits"), normed));
  else
    out.copy_(project(normed.unsqueeze(0), w_.output).squeeze(0));
}

void transformer::logits_rows_into(const at::Tensor& h, at::Tensor& out) const {
  c10::InferenceMode guard;
  if (fast_decode_ && h.is_cpu() && out.is_cpu() && h.is_contiguous() && out.is_contiguous()) {
    const int64_t n = h.size(0), d = cfg_.n_embd;
    thread_local std::vector<float> normed;
    normed.resize(size_t(n * d));
    for (int64_t i = 0; i < n; ++i)
      kernels::rmsnorm(normed.data() + i * d, h.data_ptr<float>() + i * d,
                       w_.output_norm.data_ptr<float>(), d, cfg_.norm_eps);
    project_rows(w_.output, normed.data(), out.data_ptr<float>(), n);
    return;
  }
  out.copy_(logits(h));
}

} // namespace ceco
