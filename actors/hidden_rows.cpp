#include "actors/hidden_rows.hpp"

#include <ATen/ATen.h>

namespace ceco {

hidden_rows hidden_rows::from_tensor(const at::Tensor& x) {
  auto cpu = x.to(at::kCPU).contiguous();
  hidden_rows out;
  out.rows = int32_t(cpu.size(0));
  out.cols = int32_t(cpu.size(1));
  out.data.assign(cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel());
  return out;
}

hidden_rows hidden_rows::decode(const tensor_blob& b) {
  hidden_rows out;
  out.append(b);
  return out;
}

void hidden_rows::append(const tensor_blob& b) {
  const size_t at = data.size();
  data.resize(at + size_t(b.rows) * size_t(b.cols));
  read_blob(b, data.data() + at);
  rows += b.rows;
  cols = b.cols;
}

void hidden_rows::truncate(int32_t n) {
  if (n >= rows)
    return;
  rows = std::max(n, 0);
  data.resize(size_t(rows) * size_t(cols));
}

tensor_blob hidden_rows::encode(wire_dtype dtype) const {
  return make_blob(data.data(), rows, cols, dtype);
}

tensor_blob encode_tensor(const at::Tensor& x, wire_dtype dtype) {
  auto cpu = x.to(at::kCPU).contiguous();
  return make_blob(cpu.data_ptr<float>(), int32_t(cpu.size(0)), int32_t(cpu.size(1)), dtype);
}

at::Tensor to_tensor(const tensor_blob& b) {
  auto x = at::empty({b.rows, b.cols}, at::kFloat);
  read_blob(b, x.data_ptr<float>());
  return x;
}

tensor_blob transcode(tensor_blob b, wire_dtype dtype, std::vector<float>& scratch) {
  if (b.dtype == uint8_t(dtype))
    return b;
  scratch.resize(size_t(b.rows) * size_t(b.cols));
  read_blob(b, scratch.data());
  return make_blob(scratch.data(), b.rows, b.cols, dtype);
}

} // namespace ceco
