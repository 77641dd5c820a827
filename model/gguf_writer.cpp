#include "model/gguf_writer.hpp"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <cerrno>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <unistd.h>

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

void gguf_writer::set_encoded(const std::string& key, uint32_t type, const uint8_t* value,
                              size_t n_bytes) {
  kv_.push_back({key, type, std::vector<uint8_t>(value, value + n_bytes)});
}

void gguf_writer::add_tensor(const std::string& name, std::vector<int64_t> ne,
                             const float* data, bool as_f16) {
  tensor t{name, std::move(ne), as_f16 ? ggml_type::f16 : ggml_type::f32, {}, 0, {}};
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
  t.n_bytes = t.bytes.size();
  tensors_.push_back(std::move(t));
}

void gguf_writer::add_tensor(const std::string& name, std::vector<int64_t> ne, ggml_type type,
                             tensor_fill fill) {
  int64_t n = 1;
  for (auto d : ne)
    n *= d;
  const size_t n_bytes =
    quant::tensor_bytes(type, n, ne.empty() ? 1 : ne[0], fmt::format("tensor '{}'", name));
  tensors_.push_back({name, std::move(ne), type, {}, n_bytes, std::move(fill)});
}

uint64_t gguf_writer::alignment() const {
  for (const auto& e : kv_) {
    if (e.key != "general.alignment")
      continue;
    uint64_t v = 0;
    const size_t width = e.type == t_u8 ? 1 : e.type == t_u16 ? 2 : e.type == t_u32 ? 4 : e.type == t_u64 ? 8 : 0;
    if (width == 0 || e.bytes.size() != width)
      throw model_error(fmt::format("general.alignment must be an unsigned integer, found "
                                    "value type {}", e.type));
    std::memcpy(&v, e.bytes.data(), width);  // little-endian
    if (v == 0 || (v & (v - 1)) != 0)
      throw model_error(fmt::format("general.alignment must be a power of two, found {}", v));
    return v;
  }
  return default_alignment;
}

void gguf_writer::write_to(std::FILE* out, const std::string& path) const {
  const uint64_t align = alignment();
  auto padded = [align](uint64_t n) { return (n + align - 1) / align * align; };
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
  size_t largest_fill = 0;
  for (auto& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (auto d : t.ne)
      put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    offset += padded(t.n_bytes);
    if (t.fill)
      largest_fill = std::max(largest_fill, t.n_bytes);
  }
  head.resize(padded(head.size()), 0);

  auto put_bytes = [&](const void* p, size_t n) {
    if (n > 0 && std::fwrite(p, 1, n, out) != n)
      throw model_error(fmt::format("{}: write failed: {}", path, std::strerror(errno)));
  };
  put_bytes(head.data(), head.size());
  const std::vector<uint8_t> zeros(align, 0);
  std::vector<uint8_t> filled(largest_fill);
  for (auto& t : tensors_) {
    if (t.fill) {
      t.fill(filled.data(), t.n_bytes);
      put_bytes(filled.data(), t.n_bytes);
    } else {
      put_bytes(t.bytes.data(), t.n_bytes);
    }
    put_bytes(zeros.data(), padded(t.n_bytes) - t.n_bytes);
  }
}

void gguf_writer::write(const std::string& requested) const {
  // An existing link is written through, to the file it names; anything
  // else that is not a regular file (a device, a pipe) is refused, since
  // the rename below would replace it.
  std::string path = requested;
  std::error_code ec;
  for (int links = 0; std::filesystem::is_symlink(std::filesystem::symlink_status(path, ec));
       ++links) {
    auto target = std::filesystem::read_symlink(path, ec);
    if (ec || links == 40)
      throw model_error(fmt::format("{}: cannot resolve the link: {}", requested,
                                    ec ? ec.message() : "too many levels"));
    if (target.is_relative())
      target = std::filesystem::path(path).parent_path() / target;
    path = target.string();
  }
  const auto status = std::filesystem::status(path, ec);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status))
    throw model_error(fmt::format("{}: exists and is not a regular file; give a file name", path));
  // A name of this process's own, in the same folder, so that the rename
  // replaces `path` at once.
  static std::atomic<unsigned> serial{0};
  const std::string temp = fmt::format("{}.{}-{}.partial", path, ::getpid(), serial++);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0)
    throw model_error(fmt::format("{}: cannot open for writing: {}", path, std::strerror(errno)));
  std::FILE* out = ::fdopen(fd, "wb");
  if (!out) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw model_error(fmt::format("{}: cannot open for writing: {}", path, std::strerror(errno)));
  }
  try {
    write_to(out, path);
    if (std::fflush(out) != 0)
      throw model_error(fmt::format("{}: write failed: {}", path, std::strerror(errno)));
  } catch (...) {
    std::fclose(out);
    ::unlink(temp.c_str());
    throw;
  }
  if (std::fclose(out) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw model_error(fmt::format("{}: write failed: {}", path, std::strerror(err)));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    throw model_error(fmt::format("{}: cannot write: {}", path, std::strerror(err)));
  }
}

} // namespace ceco
