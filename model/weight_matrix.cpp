#include "model/weight_matrix.hpp"

#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "model/config.hpp"
#include "model/cpu_kernels.hpp"

namespace ceco {

weight_matrix::weight_matrix(at::Tensor f32) : f32_(std::move(f32)) {}

weight_matrix::weight_matrix(quant::matrix blocks, std::shared_ptr<const void> owner)
    : blocks_(blocks), owner_(std::move(owner)) {}

int64_t weight_matrix::rows() const {
  return is_tensor() ? f32_.size(0) : blocks_.rows;
}

int64_t weight_matrix::cols() const {
  return is_tensor() ? f32_.size(1) : blocks_.cols;
}

size_t weight_matrix::n_bytes() const {
  return is_tensor() ? size_t(f32_.numel()) * f32_.element_size()
                     : size_t(blocks_.rows) * blocks_.row_bytes;
}

const at::Tensor& weight_matrix::tensor(const std::string& what) const {
  if (!is_tensor())
    throw model_error(fmt::format("{} needs fp32 weights, but they are held as {} blocks", what,
                                  quant::type_name(blocks_.type)));
  return f32_;
}

bool weight_matrix::same_as(const weight_matrix& other) const {
  if (is_tensor() || other.is_tensor())
    return is_tensor() && other.is_tensor() && f32_.is_same(other.f32_);
  return blocks_.data == other.blocks_.data && blocks_.type == other.blocks_.type;
}

namespace {

/// Per-thread scratch for quantized activations, grown once.
void* activation_scratch(size_t bytes) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < bytes)
    scratch.resize(bytes);
  return scratch.data();
}

} // namespace

void weight_matrix::matvec(const float* x, float* y) const {
  if (is_tensor()) {
    kernels::matvec(f32_.data_ptr<float>(), x, y, rows(), cols());
    return;
  }
  quant::matvec(blocks_, x, y, activation_scratch(quant::activation_bytes(blocks_.type, cols())));
}

void weight_matrix::matvec_rows(const float* x, float* y, int64_t n) const {
  if (is_tensor()) {
    kernels::matmat(f32_.data_ptr<float>(), x, y, n, rows(), cols());
    return;
  }
  quant::matvec_batch(
    blocks_, x, y, n,
    activation_scratch(size_t(n) * quant::activation_bytes(blocks_.type, cols())));
}

at::Tensor weight_matrix::project(const at::Tensor& x) const {
  if (is_tensor())
    return at::matmul(x, f32_.t());
  if (!x.is_cpu())
    throw model_error(fmt::format("{} weights compute on the CPU only, not on {}",
                                  quant::type_name(blocks_.type), x.device().str()));
  auto in = x.reshape({-1, cols()}).to(at::kFloat).contiguous();
  const int64_t n = in.size(0);
  auto out = at::empty({n, rows()}, in.options());
  if (n < (quant::matmat_is_integer(blocks_.type) ? integer_matmat_rows_min : integer_rows_max)) {
    matvec_rows(in.data_ptr<float>(), out.data_ptr<float>(), n);
  } else {
    thread_local std::vector<float> tile;
    tile.resize(std::max(tile.size(), quant::matmat_scratch_floats(blocks_)));
    quant::matmat(blocks_, in.data_ptr<float>(), out.data_ptr<float>(), n, tile.data());
  }
  auto shape = x.sizes().vec();
  shape.back() = rows();
  return out.view(shape);
}

void weight_matrix::row_into(int64_t r, float* out) const {
  if (is_tensor()) {
    if (f32_.is_cpu() && f32_.is_contiguous()) {
      std::copy_n(f32_.data_ptr<float>() + r * cols(), cols(), out);
    } else {
      auto row = f32_[r].to(at::kCPU).contiguous();
      std::copy_n(row.data_ptr<float>(), cols(), out);
    }
    return;
  }
  quant::dequantize_row(blocks_.type, blocks_.row(r), out, cols());
}

at::Tensor weight_matrix::to_tensor() const {
  if (is_tensor())
    return f32_;
  auto out = at::empty({rows(), cols()}, at::kFloat);
  for (int64_t r = 0; r < rows(); ++r)
    row_into(r, out.data_ptr<float>() + r * cols());
  return out;
}

} // namespace ceco
