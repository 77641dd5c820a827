#include "model/layer.hpp"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>

namespace ceco {

rope_table rope_table::build(const model_config& cfg, bool stepwise) {
  const int half = cfg.head_dim() / 2;
  rope_table t{at::empty({cfg.max_seq, half}, at::kFloat), at::empty({cfg.max_seq, half}, at::kFloat),
               cfg.rope_halves};
  const auto& factors = cfg.rope_freq_factors;
  auto pc = t.cos.data_ptr<float>();
  auto ps = t.sin.data_ptr<float>();
  // stepwise: the angle made as the reference implementation makes it, p
  // times the ratio theta^(-2 / head_dim) once per pair, in fp32.
  const float ratio = std::pow(cfg.rope_theta, -2.0f / float(cfg.head_dim()));
  for (int p = 0; p < cfg.max_seq; ++p) {
    float stepped = float(p);
    for (int i = 0; i < half; ++i) {
      const float freq = 1.0f / std::pow(cfg.rope_theta, float(2 * i) / float(cfg.head_dim()));
      float angle = stepwise ? stepped : float(p) * freq;
      if (!factors.empty())
        angle /= factors[size_t(i)];
      pc[p * half + i] = std::cos(angle);
      ps[p * half + i] = std::sin(angle);
      stepped *= ratio;
    }
  }
  return t;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, float eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

at::Tensor project(const at::Tensor& x, const weight_matrix& w) {
  return w.project(x);
}

at::Tensor rope(const at::Tensor& x, const rope_table& table, int64_t pos, int64_t n_heads) {
  const int64_t n = x.size(-2);
  const int64_t half = x.size(-1) / n_heads / 2;
  auto sizes = x.sizes().vec();
  sizes.back() = n_heads;
  auto c = table.cos.narrow(0, pos, n).view({n, 1, half});
  auto s = table.sin.narrow(0, pos, n).view({n, 1, half});
  if (table.halves) {
    sizes.push_back(2);
    sizes.push_back(half);
    auto v = x.reshape(sizes);  // [..., T, H, 2, half]
    auto a = v.select(-2, 0);
    auto b = v.select(-2, 1);
    return at::stack({a * c - b * s, a * s + b * c}, -2).reshape(x.sizes());
  }
  sizes.push_back(half);
  sizes.push_back(2);
  auto v = x.reshape(sizes);  // [..., T, H, half, 2]
  auto a = v.select(-1, 0);
  auto b = v.select(-1, 1);
  return at::stack({a * c - b * s, a * s + b * c}, -1).reshape(x.sizes());
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            int64_t pos, const model_config& cfg) {
  const int64_t n = q.size(-2), total = keys.size(-2);
  const int64_t n_kv = cfg.n_head_kv, group = cfg.kv_group(), hd = cfg.head_dim();
  const int64_t batch = q.numel() / (n * cfg.n_embd);
  // Query heads h = kv * group + g share key/value head kv: one product per
  // key/value head over all its query heads' rows.
  auto k = keys.reshape({batch, total, n_kv, hd}).permute({0, 2, 3, 1}).reshape({batch * n_kv, hd, total});
  auto v = values.reshape({batch, total, n_kv, hd}).permute({0, 2, 1, 3}).reshape({batch * n_kv, total, hd});
  auto qg = q.reshape({batch, n, n_kv, group, hd})
              .permute({0, 2, 3, 1, 4})
              .reshape({batch * n_kv, group * n, hd});
  auto scores = at::bmm(qg, k).mul_(1.0 / std::sqrt(double(hd)));  // [B·n_kv, g·T, S]
  if (n > 1) {
    // Row t (absolute position pos + t) sees columns 0 .. pos + t.
    auto col = at::arange(total, q.options().dtype(at::kLong));
    auto row = at::arange(pos, pos + n, q.options().dtype(at::kLong)).unsqueeze(1);
    auto future = col.unsqueeze(0) > row;  // [T, S]
    scores = scores.view({batch * n_kv, group, n, total})
               .masked_fill(future, -std::numeric_limits<float>::infinity())
               .view({batch * n_kv, group * n, total});
  }
  auto att = at::bmm(at::softmax(scores, -1), v);  // [B·n_kv, g·T, hd]
  auto sizes = q.sizes().vec();
  return att.view({batch, n_kv, group, n, hd}).permute({0, 3, 1, 2, 4}).reshape(sizes);
}

at::Tensor layer_forward(const at::Tensor& x, const layer_weights& w, float eps,
                         const attention_fn& attend) {
  auto h = rms_norm(x, w.attn_norm, eps);
  auto with_bias = [](at::Tensor y, const at::Tensor& b) {
    return (b.defined() ? y + b : y).contiguous();
  };
  auto att = attend(with_bias(project(h, w.wq), w.bq), with_bias(project(h, w.wk), w.bk),
                    with_bias(project(h, w.wv), w.bv));
  auto mid = x + project(att, w.wo);
  h = rms_norm(mid, w.ffn_norm, eps);
  return mid + project(at::silu(project(h, w.w1)) * project(h, w.w3), w.w2);
}

} // namespace ceco
