#include "model/gguf.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace ceco {

using namespace gguf_format;

namespace {


/// Bounds-checked little-endian reader over the mapped file.
struct cursor {
  const uint8_t* base;
  size_t size;
  size_t pos;
  const std::string& path;

  void need(size_t n, const char* what) const {
    if (n > size - pos)
      throw model_error(fmt::format(
        "{}: truncated or corrupt GGUF: reading {} at byte {} needs {} bytes, "
        "but the file has {} bytes",
        path, what, pos, n, size));
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    auto n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(base + pos), n);
    pos += n;
    return s;
  }
};

gguf_scalar read_scalar(cursor& c, uint32_t type, const std::string& key) {
  switch (type) {
    case t_u8: return uint64_t{c.read<uint8_t>(key.c_str())};
    case t_i8: return int64_t{c.read<int8_t>(key.c_str())};
    case t_u16: return uint64_t{c.read<uint16_t>(key.c_str())};
    case t_i16: return int64_t{c.read<int16_t>(key.c_str())};
    case t_u32: return uint64_t{c.read<uint32_t>(key.c_str())};
    case t_i32: return int64_t{c.read<int32_t>(key.c_str())};
    case t_f32: return double{c.read<float>(key.c_str())};
    case t_bool: return c.read<uint8_t>(key.c_str()) != 0;
    case t_string: return c.read_string(key.c_str());
    case t_u64: return c.read<uint64_t>(key.c_str());
    case t_i64: return c.read<int64_t>(key.c_str());
    case t_f64: return c.read<double>(key.c_str());
    default:
      throw model_error(fmt::format(
        "{}: metadata key '{}' has unknown value type {} at byte {}", c.path,
        key, type, c.pos));
  }
}

const char* type_name(const gguf_scalar& v) {
  switch (v.index()) {
    case 0: return "unsigned integer";
    case 1: return "signed integer";
    case 2: return "float";
    case 3: return "bool";
    default: return "string";
  }
}

} // namespace

// -- gguf_tensor --------------------------------------------------------------

int64_t gguf_tensor::n_elements() const {
  int64_t n = 1;
  for (auto d : ne)
    n *= d;
  return n;
}

std::string gguf_tensor::shape_string() const {
  return fmt::format("[{}]", fmt::join(ne, ", "));
}

// -- gguf_file ----------------------------------------------------------------

gguf_file::gguf_file(const std::string& path)
    : path_(path), map_(path), base_(map_.data()), size_(map_.size()) {
  if (size_ < 4)
    throw model_error(fmt::format(
      "{}: truncated GGUF: {} bytes, not even the 4-byte magic", path, size_));
  parse();
}

gguf_file::~gguf_file() = default;

void gguf_file::parse() {
  cursor c{base_, size_, 0, path_};
  auto found = c.read<uint32_t>("magic");
  if (found != gguf_format::magic)
    throw model_error(fmt::format(
      "{}: not a GGUF file: expected magic 0x{:08x} (\"GGUF\"), found 0x{:08x}",
      path_, gguf_format::magic, found));
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    throw model_error(fmt::format(
      "{}: GGUF version {} is not supported (expected 2 or 3)", path_, version_));
  auto n_tensors = c.read<uint64_t>("tensor count");
  auto n_kv = c.read<uint64_t>("metadata count");
  // Each entry takes at least 8 bytes, so larger counts mean corruption.
  if (n_tensors > size_ / 8 || n_kv > size_ / 8)
    throw model_error(fmt::format(
      "{}: corrupt GGUF header: {} tensors and {} metadata entries cannot fit "
      "in {} bytes",
      path_, n_tensors, n_kv, size_));

  for (uint64_t i = 0; i < n_kv; ++i) {
    auto key = c.read_string("metadata key");
    auto type = c.read<uint32_t>(key.c_str());
    const size_t value_at = c.pos;
    gguf_value v;
    if (type == t_array) {
      v.is_array = true;
      auto elem_type = c.read<uint32_t>(key.c_str());
      auto n = c.read<uint64_t>(key.c_str());
      if (n > size_ - c.pos)
        throw model_error(fmt::format(
          "{}: corrupt GGUF: array '{}' claims {} elements at byte {}, "
          "beyond the end of the {}-byte file",
          path_, key, n, c.pos, size_));
      v.array.reserve(n);
      for (uint64_t j = 0; j < n; ++j)
        v.array.push_back(read_scalar(c, elem_type, key));
    } else {
      v.scalar = read_scalar(c, type, key);
    }
    encoded_.push_back({key, type, base_ + value_at, c.pos - value_at});
    kv_[key] = std::move(v);
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    gguf_tensor t;
    t.name = c.read_string("tensor name");
    auto n_dims = c.read<uint32_t>(t.name.c_str());
    if (n_dims == 0 || n_dims > 4)
      throw model_error(fmt::format(
        "{}: tensor '{}' has {} dimensions (expected 1 to 4)", path_, t.name, n_dims));
    for (uint32_t d = 0; d < n_dims; ++d) {
      auto n = c.read<uint64_t>(t.name.c_str());
      if (n == 0 || n > (uint64_t{1} << 40))
        throw model_error(fmt::format(
          "{}: tensor '{}' has impossible dimension {} = {}", path_, t.name, d, n));
      t.ne.push_back(int64_t(n));
    }
    t.type = ggml_type(c.read<uint32_t>(t.name.c_str()));
    t.offset = c.read<uint64_t>(t.name.c_str());
    t.n_bytes = quant::tensor_bytes(t.type, t.n_elements(), t.ne.empty() ? 1 : t.ne[0],
                                    fmt::format("{}: tensor '{}'", path_, t.name));
    tensors_.push_back(std::move(t));
  }

  uint64_t alignment = get_uint_or("general.alignment", default_alignment);
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    throw model_error(fmt::format(
      "{}: general.alignment must be a power of two, found {}", path_, alignment));
  uint64_t data_start = (c.pos + alignment - 1) / alignment * alignment;
  for (auto& t : tensors_) {
    uint64_t begin = data_start + t.offset;
    if (t.offset > size_ || begin > size_ || t.n_bytes > size_ - begin)
      throw model_error(fmt::format(
        "{}: truncated GGUF: tensor '{}' ({} bytes at offset {}) ends at byte {}, "
        "but the file has {} bytes",
        path_, t.name, t.n_bytes, begin, begin + t.n_bytes, size_));
    t.data = base_ + begin;
  }
  check_layout(alignment);
}

void gguf_file::check_layout(uint64_t alignment) const {
  // Each tensor's data starts aligned, and where the one before it ends (its
  // type times its dimensions, padded to the alignment): a wrong offset or a
  // type that disagrees with the data it was written with shows as an
  // unaligned start, an overlap or a gap.
  std::vector<const gguf_tensor*> by_offset;
  for (const auto& t : tensors_)
    by_offset.push_back(&t);
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](auto* a, auto* b) { return a->offset < b->offset; });
  auto describe = [](const gguf_tensor& t) {
    return fmt::format("'{}' ({} {}, {} bytes from data offset {})", t.name,
                       quant::type_name(t.type), t.shape_string(), t.n_bytes, t.offset);
  };
  const gguf_tensor* prev = nullptr;
  for (const auto* t : by_offset) {
    if (t->offset % alignment != 0)
      throw model_error(fmt::format(
        "{}: tensor '{}' starts at data offset {}, not a multiple of general.alignment = {}",
        path_, t->name, t->offset, alignment));
    if (prev) {
      const uint64_t end = prev->offset + prev->n_bytes;  // within the file (checked)
      const uint64_t padded = (end + alignment - 1) / alignment * alignment;
      if (t->offset < end)
        throw model_error(fmt::format(
          "{}: tensors overlap: {} runs into tensor {} (a wrong offset, or a type that "
          "disagrees with the data)",
          path_, describe(*prev), describe(*t)));
      if (t->offset > padded)
        throw model_error(fmt::format(
          "{}: tensor {} ends {} bytes before tensor '{}' starts at data offset {}: its type "
          "disagrees with the data it holds (or an offset is wrong)",
          path_, describe(*prev), t->offset - end, t->name, t->offset));
    }
    prev = t;
  }
}

bool gguf_file::has(const std::string& key) const {
  return kv_.count(key) != 0;
}

namespace {

const gguf_value& lookup(const std::map<std::string, gguf_value>& kv,
                         const std::string& path, const std::string& key) {
  auto i = kv.find(key);
  if (i == kv.end())
    throw model_error(fmt::format("{}: metadata key '{}' is missing", path, key));
  return i->second;
}

[[noreturn]] void wrong_type(const std::string& path, const std::string& key,
                             const char* expected, const gguf_value& v) {
  throw model_error(fmt::format(
    "{}: metadata key '{}' should be {}, found {}{}", path, key, expected,
    v.is_array ? "an array" : "a ", v.is_array ? "" : type_name(v.scalar)));
}

} // namespace

uint64_t gguf_file::get_uint(const std::string& key) const {
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array) {
    if (auto p = std::get_if<uint64_t>(&v.scalar))
      return *p;
    if (auto p = std::get_if<int64_t>(&v.scalar); p && *p >= 0)
      return uint64_t(*p);
  }
  wrong_type(path_, key, "a non-negative integer", v);
}

uint64_t gguf_file::get_uint_or(const std::string& key, uint64_t fallback) const {
  return has(key) ? get_uint(key) : fallback;
}

bool gguf_file::get_bool_or(const std::string& key, bool fallback) const {
  if (!has(key))
    return fallback;
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array)
    if (auto p = std::get_if<bool>(&v.scalar))
      return *p;
  wrong_type(path_, key, "a bool", v);
}

double gguf_file::get_float_or(const std::string& key, double fallback) const {
  if (!has(key))
    return fallback;
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array) {
    if (auto p = std::get_if<double>(&v.scalar))
      return *p;
    if (auto p = std::get_if<uint64_t>(&v.scalar))
      return double(*p);
    if (auto p = std::get_if<int64_t>(&v.scalar))
      return double(*p);
  }
  wrong_type(path_, key, "a number", v);
}

std::string gguf_file::get_string(const std::string& key) const {
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array)
    if (auto p = std::get_if<std::string>(&v.scalar))
      return *p;
  wrong_type(path_, key, "a string", v);
}

std::string gguf_file::get_string_or(const std::string& key, std::string fallback) const {
  return has(key) ? get_string(key) : fallback;
}

std::vector<std::string> gguf_file::get_string_array(const std::string& key) const {
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array)
    wrong_type(path_, key, "an array of strings", v);
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (auto& e : v.array) {
    auto p = std::get_if<std::string>(&e);
    if (!p)
      wrong_type(path_, key, "an array of strings", v);
    out.push_back(*p);
  }
  return out;
}

std::vector<double> gguf_file::get_float_array(const std::string& key) const {
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array)
    wrong_type(path_, key, "an array of numbers", v);
  std::vector<double> out;
  out.reserve(v.array.size());
  for (auto& e : v.array) {
    if (auto p = std::get_if<double>(&e))
      out.push_back(*p);
    else if (auto p = std::get_if<int64_t>(&e))
      out.push_back(double(*p));
    else if (auto p = std::get_if<uint64_t>(&e))
      out.push_back(double(*p));
    else
      wrong_type(path_, key, "an array of numbers", v);
  }
  return out;
}

std::vector<int64_t> gguf_file::get_int_array(const std::string& key) const {
  const auto& v = lookup(kv_, path_, key);
  if (!v.is_array)
    wrong_type(path_, key, "an array of integers", v);
  std::vector<int64_t> out;
  out.reserve(v.array.size());
  for (auto& e : v.array) {
    if (auto p = std::get_if<int64_t>(&e))
      out.push_back(*p);
    else if (auto p = std::get_if<uint64_t>(&e))
      out.push_back(int64_t(*p));
    else
      wrong_type(path_, key, "an array of integers", v);
  }
  return out;
}

const gguf_tensor* gguf_file::find(const std::string& name) const {
  for (auto& t : tensors_)
    if (t.name == name)
      return &t;
  return nullptr;
}

const gguf_tensor& gguf_file::get(const std::string& name) const {
  if (auto t = find(name))
    return *t;
  throw model_error(fmt::format("{}: tensor '{}' is missing", path_, name));
}

void gguf_file::dequantize(const gguf_tensor& t, float* out) const {
  quant::dequantize_row(t.type, t.data, out, t.n_elements());
}

} // namespace ceco
