#include "model/kv_cache.hpp"

#include <algorithm>

#include <ATen/ops/zeros.h>
#include <fmt/format.h>

namespace ceco {

const char* kv_dtype_name(kv_dtype t) {
  return t == kv_dtype::f16 ? "f16" : "f32";
}

kv_dtype parse_kv_dtype(const std::string& text, const std::string& where) {
  if (text == "f16")
    return kv_dtype::f16;
  if (text == "f32")
    return kv_dtype::f32;
  throw model_error(fmt::format("{}: expected f16 or f32, got \"{}\"", where, text));
}

int64_t kv_cache::bytes_for(const model_config& cfg, int first_layer, int last_layer,
                            int capacity, kv_dtype dtype) {
  return 2 * int64_t(last_layer - first_layer) * capacity * cfg.n_embd_kv()
         * (dtype == kv_dtype::f16 ? 2 : 4);
}

kv_cache::kv_cache(const model_config& cfg, int first_layer, int last_layer, int capacity,
                   c10::Device device, kv_dtype dtype)
  : first_(first_layer), last_(last_layer), capacity_(capacity), dtype_(dtype) {
  if (first_layer < 0 || last_layer < first_layer || last_layer > cfg.n_layer)
    throw model_error(fmt::format(
      "kv_cache: layer range [{}, {}) is not inside the model's {} layers", first_layer,
      last_layer, cfg.n_layer));
  if (capacity <= 0)
    throw model_error(fmt::format("kv_cache: capacity must be positive, got {}", capacity));
  auto opts = at::TensorOptions()
                .dtype(dtype == kv_dtype::f16 ? at::kHalf : at::kFloat)
                .device(device);
  const double mib = double(bytes_for(cfg, first_layer, last_layer, capacity, dtype)) / 1048576;
  try {
    for (int il = first_layer; il < last_layer; ++il) {
      k_.push_back(at::zeros({capacity, cfg.n_embd_kv()}, opts));
      v_.push_back(at::zeros({capacity, cfg.n_embd_kv()}, opts));
    }
    scores_.resize(size_t(capacity) * size_t(cfg.n_head) + size_t(cfg.n_head));
  } catch (const std::exception&) {  // std::bad_alloc, or the allocator's c10::Error
    throw model_error(fmt::format(
      "kv_cache: {} positions of layers [{}, {}) need {:.0f} MiB in {}, which could not be "
      "allocated (the model's context length sizes the cache)",
      capacity, first_layer, last_layer, mib, kv_dtype_name(dtype)));
  }
  length_.assign(size_t(last_layer - first_layer), 0);
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

} // namespace ceco
