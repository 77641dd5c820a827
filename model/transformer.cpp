#include "model/transformer.hpp"

#include <cmath>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/cpu_kernels.hpp"

// OpenBLAS's own thread count is not governed by at::set_num_threads.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace ceco {

void set_compute_threads(int n) {
  if (n <= 0)
    n = int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  // The decode kernels parallelise over OpenMP threads, which spin between
  // regions; OpenBLAS threads on the same cores would fight them and made
  // 2-thread prefill 5x slower here. Batched products stay single-threaded.
  if (openblas_set_num_threads)
    openblas_set_num_threads(1);
}

void set_blas_threads(int n) {
  at::set_num_threads(n);
  if (openblas_set_num_threads)
    openblas_set_num_threads(n);
}

// -- kv_cache -------------------------------------------------------------------

kv_cache::kv_cache(const model_config& cfg, int first_layer, int last_layer, int capacity,
                   c10::Device device)
  : first_(first_layer), last_(last_layer), capacity_(capacity) {
  if (first_layer < 0 || last_layer < first_layer || last_layer > cfg.n_layer)
    throw model_error(fmt::format(
      "kv_cache: layer range [{}, {}) is not inside the model's {} layers", first_layer,
      last_layer, cfg.n_layer));
  if (capacity <= 0)
    throw model_error(fmt::format("kv_cache: capacity must be positive, got {}", capacity));
  auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  for (int il = first_layer; il < last_layer; ++il) {
    k_.push_back(at::zeros({capacity, cfg.n_embd_kv()}, opts));
    v_.push_back(at::zeros({capacity, cfg.n_embd_kv()}, opts));
  }
  length_.assign(size_t(last_layer - first_layer), 0);
  scratch_.xb.resize(size_t(cfg.n_embd));
  scratch_.q.resize(size_t(cfg.n_embd));
  scratch_.att.resize(size_t(cfg.n_embd));
  scratch_.hb.resize(size_t(cfg.n_ff));
  scratch_.hb2.resize(size_t(cfg.n_ff));
  scratch_.scores.resize(size_t(capacity));
}

int kv_cache::length() const {
  if (length_.empty())
    return 0;
  return *std::min_element(length_.begin(), length_.end());
}

void kv_cache::truncate(int n) {
  for (auto& l : length_)
    l = std::min(l, std::max(n, 0));
}

int64_t kv_cache::bytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < k_.size(); ++i)
    total += k_[i].nbytes() + v_[i].nbytes();
  return total;
}

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
  move(w_.tok_embd);
  move(w_.output_norm);
  move(w_.output);
  for (auto& l : w_.layers)
    for (auto* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w1, &l.w2, &l.w3})
      move(*t);

  // llama2.c's table: angle(pos, i) = pos * theta^(-2i / head_dim), in fp32.
  const int half = cfg_.head_dim() / 2;
  auto cos = at::empty({cfg_.max_seq, half}, at::kFloat);
  auto sin = at::empty({cfg_.max_seq, half}, at::kFloat);
  auto pc = cos.data_ptr<float>();
  auto ps = sin.data_ptr<float>();
  for (int p = 0; p < cfg_.max_seq; ++p)
    for (int i = 0; i < half; ++i) {
      float freq = 1.0f / std::pow(cfg_.rope_theta, float(2 * i) / float(cfg_.head_dim()));
      float angle = float(p) * freq;
      pc[p * half + i] = std::cos(angle);
      ps[p * half + i] = std::sin(angle);
    }
  rope_cos_ = cos.to(device_);
  rope_sin_ = sin.to(device_);
}

kv_cache transformer::make_cache(int first, int last, int capacity) const {
  return kv_cache(cfg_, first, last, capacity > 0 ? capacity : cfg_.max_seq, device_);
}

at::Tensor transformer::embed(const std::vector<int32_t>& ids) const {
  c10::InferenceMode guard;
  for (auto id : ids)
    if (id < 0 || id >= cfg_.vocab_size)
      throw model_error(fmt::format("embed: token id {} outside the vocabulary [0, {})", id,
                                    cfg_.vocab_size));
  auto idx = at::from_blob(const_cast<int32_t*>(ids.data()), {int64_t(ids.size())}, at::kInt)
               .to(at::kLong)
               .to(device_);
  return w_.tok_embd.index_select(0, idx).contiguous();
}

void transformer::embed_into(int32_t id, at::Tensor& x) const {
  if (id < 0 || id >= cfg_.vocab_size)
    throw model_error(fmt::format("embed: token id {} outside the vocabulary [0, {})", id,
                                  cfg_.vocab_size));
  c10::InferenceMode guard;
  if (x.is_cpu()) {
    std::copy_n(w_.tok_embd.data_ptr<float>() + int64_t(id) * cfg_.n_embd, cfg_.n_embd,
                x.data_ptr<float>());
  } else {
    x[0].copy_(w_.tok_embd[id]);
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

void transformer::forward_layers(at::Tensor& x, int64_t pos, int first, int last,
                                 kv_cache& cache) const {
  check_forward(x, pos, first, last, cache);
  c10::InferenceMode guard;
  const int64_t n = x.size(0);
  const bool one_cpu = fast_decode_ && n == 1 && x.is_cpu();
  for (int il = first; il < last; ++il) {
    if (one_cpu)
      forward_one_cpu(x.data_ptr<float>(), pos, il, cache);
    else
      forward_stacked(x, {{&x, pos, &cache}}, il);
    cache.set_length(il, int(pos + n));
  }
}

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
  bool decode_rows = fast_decode_;
  for (const auto& s : steps)
    decode_rows = decode_rows && s.x->size(0) == 1 && s.x->is_cpu();
  if (decode_rows) {
    // The cloud's steady state: one new position per session.
    const int64_t d = cfg_.n_embd;
    thread_local std::vector<float> x;
    x.resize(steps.size() * size_t(d));
    for (size_t i = 0; i < steps.size(); ++i)
      std::copy_n(steps[i].x->data_ptr<float>(), d, x.data() + int64_t(i) * d);
    for (int il = first; il < last; ++il) {
      forward_rows_cpu(x.data(), steps, il);
      for (const auto& s : steps)
        s.cache->set_length(il, int(s.pos + 1));
    }
    for (size_t i = 0; i < steps.size(); ++i)
      std::copy_n(x.data() + int64_t(i) * d, d, steps[i].x->data_ptr<float>());
    return;
  }
  std::vector<at::Tensor> rows;
  rows.reserve(steps.size());
  for (const auto& s : steps)
    rows.push_back(*s.x);
  auto x = at::cat(rows, 0);  // [sum T_i, n_embd]
  for (int il = first; il < last; ++il) {
    forward_stacked(x, steps, il);
    for (const auto& s : steps)
      s.cache->set_length(il, int(s.pos + s.x->size(0)));
  }
  int64_t row = 0;
  for (const auto& s : steps) {
    s.x->copy_(x.narrow(0, row, s.x->size(0)));
    row += s.x->size(0);
  }
}

at::Tensor transformer::rope(const at::Tensor& x, int64_t pos, int64_t n_heads) const {
  const int64_t n = x.size(0);
  const int64_t half = cfg_.head_dim() / 2;
  auto v = x.view({n, n_heads, half, 2});
  auto c = rope_cos_.narrow(0, pos, n).view({n, 1, half});
  auto s = rope_sin_.narrow(0, pos, n).view({n, 1, half});
  auto a = v.select(3, 0);
  auto b = v.select(3, 1);
  return at::stack({a * c - b * s, a * s + b * c}, 3).view({n, n_heads * cfg_.head_dim()});
}

namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, float eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

} // namespace

at::Tensor transformer::attend(const at::Tensor& q_raw, const at::Tensor& k_raw,
                              const at::Tensor& v, int64_t pos, int il, kv_cache& cache) const {
  const int64_t n = q_raw.size(0);
  const int64_t n_kv = cfg_.n_head_kv, group = cfg_.kv_group(), hd = cfg_.head_dim();
  const int64_t total = pos + n;  // positions attended to by the last row
  auto q = rope(q_raw, pos, cfg_.n_head);  // [T, d]
  cache.keys(il).narrow(0, pos, n).copy_(rope(k_raw, pos, n_kv));
  cache.values(il).narrow(0, pos, n).copy_(v);
  auto keys = cache.keys(il).narrow(0, 0, total).view({total, n_kv, hd}).permute({1, 2, 0});
  auto vals = cache.values(il).narrow(0, 0, total).view({total, n_kv, hd}).permute({1, 0, 2});
  // Query heads h = kv * group + g share key/value head kv.
  auto qg = q.view({n, n_kv, group, hd}).permute({1, 2, 0, 3}).reshape({n_kv, group * n, hd});
  auto scores = at::bmm(qg, keys).mul_(1.0 / std::sqrt(double(hd)));  // [n_kv, g*T, total]
  if (n > 1) {
    // Row t (absolute position pos + t) sees columns 0 .. pos + t.
    auto col = at::arange(total, q.options().dtype(at::kLong));
    auto row = at::arange(pos, total, q.options().dtype(at::kLong)).unsqueeze(1);
    auto future = col.unsqueeze(0) > row;  // [T, total]
    scores = scores.view({n_kv, group, n, total})
               .masked_fill(future, -std::numeric_limits<float>::infinity())
               .view({n_kv, group * n, total});
  }
  auto att = at::bmm(at::softmax(scores, -1), vals);  // [n_kv, g*T, hd]
  return att.view({n_kv, group, n, hd}).permute({2, 0, 1, 3}).reshape({n, cfg_.n_embd});
}

void transformer::attend_one_cpu(float* out, float* q, int64_t pos, int il,
                                 kv_cache& cache) const {
  const int64_t d_kv = cfg_.n_embd_kv(), hd = cfg_.head_dim();
  const float* cos = rope_cos_.data_ptr<float>() + pos * (hd / 2);
  const float* sin = rope_sin_.data_ptr<float>() + pos * (hd / 2);
  float* k_row = cache.keys(il).data_ptr<float>() + pos * d_kv;
  kernels::rope(q, cfg_.n_head, hd, cos, sin);
  kernels::rope(k_row, cfg_.n_head_kv, hd, cos, sin);
  kernels::attention(out, q, cache.keys(il).data_ptr<float>(), cache.values(il).data_ptr<float>(),
                     pos + 1, cfg_.n_head, cfg_.n_head_kv, hd,
                     cache.scratch_space().scores.data());
}

// The rows of one or more sequences stacked in x: one product per weight,
// attention per sequence.
void transformer::forward_stacked(at::Tensor& x, const std::vector<sequence_step>& steps,
                                  int il) const {
  const auto& w = w_.layers[size_t(il)];
  const int64_t d = cfg_.n_embd, d_kv = cfg_.n_embd_kv();
  auto h = rms_norm(x, w.attn_norm, cfg_.norm_eps);  // [N, d]
  auto q = at::matmul(h, w.wq.t()).contiguous();     // [N, d]
  auto k = at::matmul(h, w.wk.t()).contiguous();     // [N, d_kv]
  auto v = at::matmul(h, w.wv.t()).contiguous();     // [N, d_kv]
  auto att = at::empty_like(q);                      // [N, d]
  int64_t row = 0;
  for (const auto& s : steps) {
    const int64_t n = s.x->size(0);
    auto& cache = *s.cache;
    if (fast_decode_ && n == 1 && x.is_cpu()) {
      // One decode position: plain loops, no per-op dispatch.
      std::copy_n(k.data_ptr<float>() + row * d_kv, d_kv,
                  cache.keys(il).data_ptr<float>() + s.pos * d_kv);
      std::copy_n(v.data_ptr<float>() + row * d_kv, d_kv,
                  cache.values(il).data_ptr<float>() + s.pos * d_kv);
      attend_one_cpu(att.data_ptr<float>() + row * d, q.data_ptr<float>() + row * d, s.pos, il,
                     cache);
    } else {
      att.narrow(0, row, n).copy_(attend(q.narrow(0, row, n), k.narrow(0, row, n),
                                         v.narrow(0, row, n), s.pos, il, cache));
    }
    row += n;
  }
  x.add_(at::matmul(att, w.wo.t()));

  h = rms_norm(x, w.ffn_norm, cfg_.norm_eps);
  auto gate = at::silu(at::matmul(h, w.w1.t())) * at::matmul(h, w.w3.t());
  x.add_(at::matmul(gate, w.w2.t()));
}

void transformer::forward_rows_cpu(float* x, const std::vector<sequence_step>& steps,
                                   int il) const {
  const auto& w = w_.layers[size_t(il)];
  const int64_t n = int64_t(steps.size());
  const int64_t d = cfg_.n_embd, d_kv = cfg_.n_embd_kv(), ff = cfg_.n_ff;
  // Grown once per thread, reused by every later step.
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
  kernels::matmat(w.wq.data_ptr<float>(), xb.data(), q.data(), n, d, d);
  kernels::matmat(w.wk.data_ptr<float>(), xb.data(), k.data(), n, d_kv, d);
  kernels::matmat(w.wv.data_ptr<float>(), xb.data(), v.data(), n, d_kv, d);
  for (int64_t i = 0; i < n; ++i) {
    const auto& s = steps[size_t(i)];
    std::copy_n(k.data() + i * d_kv, d_kv, s.cache->keys(il).data_ptr<float>() + s.pos * d_kv);
    std::copy_n(v.data() + i * d_kv, d_kv, s.cache->values(il).data_ptr<float>() + s.pos * d_kv);
    attend_one_cpu(att.data() + i * d, q.data() + i * d, s.pos, il, *s.cache);
  }
  kernels::matmat(w.wo.data_ptr<float>(), att.data(), xb.data(), n, d, d);
  kernels::add(x, xb.data(), n * d);

  // -- feed-forward (SwiGLU)
  for (int64_t i = 0; i < n; ++i)
    kernels::rmsnorm(xb.data() + i * d, x + i * d, w.ffn_norm.data_ptr<float>(), d,
                     cfg_.norm_eps);
  kernels::matmat(w.w1.data_ptr<float>(), xb.data(), hb.data(), n, ff, d);
  kernels::matmat(w.w3.data_ptr<float>(), xb.data(), hb2.data(), n, ff, d);
  kernels::swiglu(hb.data(), hb2.data(), n * ff);
  kernels::matmat(w.w2.data_ptr<float>(), hb.data(), xb.data(), n, d, ff);
  kernels::add(x, xb.data(), n * d);
}

// One position on CPU, llama2.c style, into the cache's scratch buffers.
void transformer::forward_one_cpu(float* x, int64_t pos, int il, kv_cache& cache) const {
  const auto& w = w_.layers[size_t(il)];
  auto& s = cache.scratch_space();
  const int64_t d = cfg_.n_embd, d_kv = cfg_.n_embd_kv();
  float* k_row = cache.keys(il).data_ptr<float>() + pos * d_kv;
  float* v_row = cache.values(il).data_ptr<float>() + pos * d_kv;

  // -- attention
  kernels::rmsnorm(s.xb.data(), x, w.attn_norm.data_ptr<float>(), d, cfg_.norm_eps);
  kernels::matvec(w.wq.data_ptr<float>(), s.xb.data(), s.q.data(), d, d);
  kernels::matvec(w.wk.data_ptr<float>(), s.xb.data(), k_row, d_kv, d);
  kernels::matvec(w.wv.data_ptr<float>(), s.xb.data(), v_row, d_kv, d);
  attend_one_cpu(s.att.data(), s.q.data(), pos, il, cache);
  kernels::matvec(w.wo.data_ptr<float>(), s.att.data(), s.xb.data(), d, d);
  kernels::add(x, s.xb.data(), d);

  // -- feed-forward (SwiGLU)
  kernels::rmsnorm(s.xb.data(), x, w.ffn_norm.data_ptr<float>(), d, cfg_.norm_eps);
  kernels::matvec(w.w1.data_ptr<float>(), s.xb.data(), s.hb.data(), cfg_.n_ff, d);
  kernels::matvec(w.w3.data_ptr<float>(), s.xb.data(), s.hb2.data(), cfg_.n_ff, d);
  kernels::swiglu(s.hb.data(), s.hb2.data(), cfg_.n_ff);
  kernels::matvec(w.w2.data_ptr<float>(), s.hb.data(), s.xb.data(), d, cfg_.n_ff);
  kernels::add(x, s.xb.data(), d);
}

at::Tensor transformer::logits(const at::Tensor& h) const {
  c10::InferenceMode guard;
  return at::matmul(rms_norm(h, w_.output_norm, cfg_.norm_eps), w_.output.t());
}

void transformer::logits_into(const at::Tensor& h, at::Tensor& out) const {
  c10::InferenceMode guard;
  auto last = h[h.size(0) - 1];
  if (fast_decode_ && h.is_cpu() && out.is_cpu()) {
    thread_local std::vector<float> normed;
    normed.resize(size_t(cfg_.n_embd));
    kernels::rmsnorm(normed.data(), last.data_ptr<float>(), w_.output_norm.data_ptr<float>(),
                     cfg_.n_embd, cfg_.norm_eps);
    kernels::matvec(w_.output.data_ptr<float>(), normed.data(), out.data_ptr<float>(),
                    cfg_.vocab_size, cfg_.n_embd);
    return;
  }
  out.copy_(at::mv(w_.output, rms_norm(last, w_.output_norm, cfg_.norm_eps)));
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
    kernels::matmat(w_.output.data_ptr<float>(), normed.data(), out.data_ptr<float>(), n,
                    cfg_.vocab_size, d);
    return;
  }
  out.copy_(logits(h));
}

// -- model_config ---------------------------------------------------------------

void model_config::validate(const std::string& source) const {
  auto bad = [&](const char* field, long value, const std::string& expected) {
    return model_error(
      fmt::format("{}: model {} is {}, expected {}", source, field, value, expected));
  };
  if (n_embd <= 0) throw bad("n_embd", n_embd, "> 0");
  if (n_ff <= 0) throw bad("n_ff", n_ff, "> 0");
  if (n_layer <= 0) throw bad("n_layer", n_layer, "> 0");
  if (n_head <= 0 || n_embd % n_head != 0)
    throw bad("n_head", n_head, fmt::format("a divisor of n_embd = {}", n_embd));
  if (head_dim() % 2 != 0)
    throw bad("head_dim", head_dim(), "even (RoPE rotates pairs)");
  if (n_head_kv <= 0 || n_head % n_head_kv != 0)
    throw bad("n_head_kv", n_head_kv, fmt::format("a divisor of n_head = {}", n_head));
  if (vocab_size <= 0) throw bad("vocab_size", vocab_size, "> 0");
  if (max_seq <= 0) throw bad("max_seq", max_seq, "> 0");
  if (!(norm_eps > 0)) throw model_error(fmt::format("{}: norm_eps must be > 0", source));
  if (!(rope_theta > 0)) throw model_error(fmt::format("{}: rope_theta must be > 0", source));
}

} // namespace ceco

namespace ceco {

c10::Device parse_device(const std::string& name) {
  c10::Device dev = c10::kCPU;
  try {
    dev = c10::Device(name);
  } catch (const std::exception&) {
    throw model_error(fmt::format("--device: '{}' is not a device; expected cpu, cuda or cuda:N",
                                  name));
  }
  if (dev.is_cuda() && !at::hasCUDA())
    throw model_error(fmt::format(
      "--device {}: this ceco is built against a libtorch without CUDA (Debian's libtorch is "
      "CPU-only); rebuild with CMAKE_PREFIX_PATH pointing at a CUDA build of libtorch",
      name));
  if (!dev.is_cpu() && !dev.is_cuda())
    throw model_error(fmt::format("--device: '{}' is not supported; expected cpu or cuda", name));
  return dev;
}

} // namespace ceco
