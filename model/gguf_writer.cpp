#include "model/gguf_writer.hpp"

#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/half.hpp"

namespace ceco {

using namespace gguf_format;

namespace {

template <class T>
void put(std::vector<uint8_t>& buf, T v) {
  size_t at = buf.size();
  buf.resize(at + sizeof(T));
  std::memcpy(buf.data() + at, &v, sizeof(T));
}

void put_string(std::vector<uint8_t>& buf, const std::string& s) {
  put<uint64_t>(buf, s.size());
  buf.insert(buf.end(), s.begin(), s.end());
}

} // namespace

void gguf_writer::set_uint32(const std::string& key, uint32_t v) {
  entry e{key, t_u32, {}};
  put(e.bytes, v);
  kv_.push_back(std::move(e));
}

void gguf_writer::set_float32(const std::string& key, float v) {
  entry e{key, t_f32, {}};
  put(e.bytes, v);
  kv_.push_back(std::move(e));
}

void gguf_writer::set_string(const std::string& key, const std::string& v) {
  entry e{key, t_string, {}};
  put_string(e.bytes, v);
  kv_.push_back(std::move(e));
}

void gguf_writer::set_string_array(const std::string& key,
                                   const std::vector<std::string>& v) {
  entry e{key, t_array, {}};
  put<uint32_t>(e.bytes, t_string);
  put<uint64_t>(e.bytes, v.size());
  for (auto& s : v)
    put_string(e.bytes, s);
  kv_.push_back(std::move(e));
}

namespace {

/// An array of scalars of one GGUF value type.
template <class T>
std::vector<uint8_t> scalar_array(value_type type, const std::vector<T>& v) {
  std::vector<uint8_t> bytes;
  put<uint32_t>(bytes, type);
  put<uint64_t>(bytes, v.size());
  for (auto x : v)
    put(bytes, x);
  return bytes;
}

} // namespace

void gguf_writer::set_float32_array(const std::string& key, const std::vector<float>& v) {
  kv_.push_back({key, t_array, scalar_array(t_f32, v)});
}

void gguf_writer::set_int32_array(const std::string& key, const std::vector<int32_t>& v) {
  kv_.push_back({key, t_array, scalar_array(t_i32, v)});
}

void gguf_writer::add_tensor(const std::string& name, std::vector<int64_t> ne,
                             const float* data, bool as_f16) {
  tensor t{name, std::move(ne), as_f16 ? ggml_type::f16 : ggml_type::f32, {}};
  int64_t n = 1;
  for (auto d : t.ne)
    n *= d;
  if (as_f16) {
    t.bytes.resize(size_t(n) * 2);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h = float_to_half(data[i]);
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
    }
  } else {
    t.bytes.resize(size_t(n) * 4);
    std::memcpy(t.bytes.data(), data, t.bytes.size());
  }
  tensors_.push_back(std::move(t));
}

void gguf_writer::write(const std::string& path) const {
  std::vector<uint8_t> head;
  put<uint32_t>(head, magic);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (auto& e : kv_) {
    put_string(head, e.key);
    put<uint32_t>(head, e.type);
    head.insert(head.end(), e.bytes.begin(), e.bytes.end());
  }
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (auto& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (auto d : t.ne)
      put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    offsets.push_back(offset);
    offset += (t.bytes.size() + default_alignment - 1) / default_alignment * default_alignment;
  }
  head.resize((head.size() + default_alignment - 1) / default_alignment * default_alignment, 0);

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out)
    throw model_error(fmt::format("{}: cannot open for writing", path));
  out.write(reinterpret_cast<const char*>(head.data()), std::streamsize(head.size()));
  static const char zeros[default_alignment] = {};
  for (auto& t : tensors_) {
    out.write(reinterpret_cast<const char*>(t.bytes.data()), std::streamsize(t.bytes.size()));
    auto pad = (default_alignment - t.bytes.size() % default_alignment) % default_alignment;
    out.write(zeros, std::streamsize(pad));
  }
  if (!out)
    throw model_error(fmt::format("{}: write failed", path));
}

} // namespace ceco
