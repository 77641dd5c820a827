#include "actors/hidden_rows.hpp"

#include <algorithm>

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

void decode_rows(const uploaded_rows& rows, float* out) {
  for (const auto& part : rows.parts) {
    read_blob(part, out);
    out += size_t(part.rows) * size_t(part.cols);
  }
}

void append_rows(tensor_blob& rows, const tensor_blob& more) {
  if (rows.rows == 0) {
    rows.dtype = more.dtype;
    rows.cols = more.cols;
    rows.bytes.clear();
  }
  if (more.dtype == rows.dtype) {
    rows.bytes.insert(rows.bytes.end(), more.bytes.begin(), more.bytes.end());
  } else {
    // No path of the runtime mixes dtypes in one session: converted through f32.
    std::vector<float> values(size_t(more.rows) * size_t(more.cols));
    read_blob(more, values.data());
    auto converted = make_blob(values.data(), more.rows, more.cols, wire_dtype(rows.dtype));
    rows.bytes.insert(rows.bytes.end(), converted.bytes.begin(), converted.bytes.end());
  }
  rows.rows += more.rows;
}

void keep_rows(tensor_blob& rows, int32_t n) {
  if (n >= rows.rows)
    return;
  rows.rows = std::max(n, 0);
  rows.bytes.resize(size_t(rows.rows) * size_t(rows.cols) * element_size(rows.dtype));
}

void drop_rows(tensor_blob& rows, int32_t n) {
  n = std::clamp(n, 0, rows.rows);
  const size_t row_bytes = size_t(rows.cols) * element_size(rows.dtype);
  rows.bytes.erase(rows.bytes.begin(), rows.bytes.begin() + std::ptrdiff_t(size_t(n) * row_bytes));
  rows.rows -= n;
}

tensor_blob transcode(tensor_blob b, wire_dtype dtype, std::vector<float>& scratch) {
  if (b.dtype == uint8_t(dtype))
    return b;
  scratch.resize(size_t(b.rows) * size_t(b.cols));
  read_blob(b, scratch.data());
  return make_blob(scratch.data(), b.rows, b.cols, dtype);
}

} // namespace ceco
