#include "model/safetensors.hpp"
#include "model/json_input.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace ceco {

namespace fs = std::filesystem;

namespace {

/// Bytes per element of the format's dtypes; 0 for a name outside it.
int dtype_size(const std::string& dtype) {
  static const std::map<std::string, int> sizes = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2}, {"U8", 1},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto i = sizes.find(dtype);
  return i == sizes.end() ? 0 : i->second;
}

/// Header lengths beyond this are corruption (real headers are kilobytes to
/// a few megabytes; parsed, a header takes about 16 times its text).
constexpr uint64_t max_header_bytes = uint64_t(100) << 20;

} // namespace

int64_t safetensors_tensor::n_elements() const {
  int64_t n = 1;
  for (auto d : shape)
    n *= d;
  return n;
}

std::string safetensors_tensor::describe() const {
  return fmt::format("{} [{}]", dtype, fmt::join(shape, ", "));
}

quant::ggml_type safetensors_tensor::weight_type() const {
  if (dtype == "F32")
    return quant::ggml_type::f32;
  if (dtype == "F16")
    return quant::ggml_type::f16;
  if (dtype == "BF16")
    return quant::ggml_type::bf16;
  throw model_error(fmt::format("{}: tensor '{}' has dtype {}; ceco reads weights in F32, F16 "
                                "and BF16",
                                file ? file->path() : std::string("safetensors"), name, dtype));
}

// -- safetensors_file ---------------------------------------------------------

safetensors_file::safetensors_file(const std::string& path)
    : path_(path), map_(path), base_(map_.data()), size_(map_.size()) {
  if (size_ < 8)
    throw model_error(fmt::format(
      "{}: truncated safetensors file: {} bytes, not even the 8-byte header length", path,
      size_));
  try {
    parse();
  } catch (const nlohmann::json::exception& e) {  // a header value of the wrong JSON type
    throw model_error(fmt::format("{}: corrupt safetensors header: {}", path, e.what()));
  }
}

safetensors_file::~safetensors_file() = default;

void safetensors_file::parse() {
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i)
    header_bytes = header_bytes << 8 | base_[i];
  if (header_bytes > size_ - 8)
    throw model_error(fmt::format(
      "{}: truncated or corrupt safetensors file: the header length is {} bytes, but only {} "
      "bytes follow it",
      path_, header_bytes, size_ - 8));
  if (header_bytes > max_header_bytes)
    throw model_error(fmt::format("{}: corrupt safetensors file: a header of {} bytes (at most {} "
                                  "are accepted)",
                                  path_, header_bytes, max_header_bytes));
  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_size = size_ - data_start;
  const nlohmann::json header =
    parse_json_input(reinterpret_cast<const char*>(base_ + 8),
                     reinterpret_cast<const char*>(base_ + data_start), path_ + " (header)");
  if (!header.is_object())
    throw model_error(fmt::format("{}: the safetensors header should be a JSON object, found {}",
                                  path_, header.type_name()));
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw model_error(fmt::format("{}: __metadata__ should be an object of strings", path_));
      for (auto& [k, v] : entry.items())
        if (v.is_string())
          metadata_[k] = v.get<std::string>();
      continue;
    }
    auto bad = [&](const std::string& what) {
      return model_error(fmt::format("{}: tensor '{}': {} (header entry {})", path_, name, what,
                                     json_excerpt(entry)));
    };
    if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string()
        || !entry.contains("shape") || !entry["shape"].is_array()
        || !entry.contains("data_offsets") || !entry["data_offsets"].is_array()
        || entry["data_offsets"].size() != 2)
      throw bad("expected an object with a string dtype, a shape array and two data_offsets");
    safetensors_tensor t;
    t.name = name;
    t.file = this;
    t.dtype = entry["dtype"].get<std::string>();
    const int elem = dtype_size(t.dtype);
    if (elem == 0)
      throw model_error(fmt::format(
        "{}: tensor '{}' has unknown dtype '{}' (the format's dtypes: F64, F32, F16, BF16, "
        "I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2)",
        path_, name, t.dtype));
    uint64_t n_elements = 1;
    for (auto& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40))
        throw bad(fmt::format("impossible dimension {}", json_excerpt(d)));
      t.shape.push_back(d.get<int64_t>());
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && n_elements > (uint64_t{1} << 50) / dim)
        throw bad("more elements than any file holds");
      n_elements *= dim;
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad("data_offsets should be two non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size)
      throw model_error(fmt::format(
        "{}: tensor '{}' ({}) has data_offsets [{}, {}], outside the {} bytes of data after "
        "the header (truncated file?)",
        path_, name, t.describe(), begin, end, data_size));
    t.n_bytes = end - begin;
    if (t.n_bytes != n_elements * uint64_t(elem))
      throw model_error(fmt::format(
        "{}: tensor '{}' holds {} bytes (data_offsets [{}, {}]), but {} needs {} x {} = {} "
        "bytes",
        path_, name, t.n_bytes, begin, end, t.describe(), n_elements, elem,
        n_elements * uint64_t(elem)));
    t.data = base_ + data_start + begin;
    tensors_.push_back(std::move(t));
  }
  // No two tensors share bytes.
  std::vector<const safetensors_tensor*> order;
  for (const auto& t : tensors_)
    order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->data < b->data; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->data < order[i - 1]->data + order[i - 1]->n_bytes)
      throw model_error(fmt::format("{}: tensors '{}' and '{}' overlap in the data", path_,
                                    order[i - 1]->name, order[i]->name));
}

// -- safetensors_checkpoint ---------------------------------------------------

namespace {

const char* index_name = "model.safetensors.index.json";

} // namespace

safetensors_checkpoint::safetensors_checkpoint(const std::string& path) {
  fs::path index;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / index_name))
      index = fs::path(path) / index_name;
    else if (fs::exists(fs::path(path) / "model.safetensors"))
      add((fs::path(path) / "model.safetensors").string());
    else {
      std::vector<std::string> found;
      for (auto& e : fs::directory_iterator(path))
        if (e.path().extension() == ".safetensors")
          found.push_back(e.path().string());
      if (found.size() != 1)
        throw model_error(fmt::format(
          "{}: expected model.safetensors, {} or a single .safetensors file; found {} "
          ".safetensors files",
          path, index_name, found.size()));
      add(found.front());
    }
  } else if (fs::path(path).extension() == ".json") {
    index = path;
  } else {
    add(path);
  }
  if (!index.empty()) {
    nlohmann::json j;
    {
      j = read_json_file(index.string());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw model_error(fmt::format("{}: expected an object with a 'weight_map' object",
                                    index.string()));
    std::vector<std::string> shards;
    for (auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string())
        throw model_error(fmt::format("{}: weight_map['{}'] should be a file name, found {}",
                                      index.string(), name, json_excerpt(shard)));
      const auto file_name = shard.get<std::string>();
      if (file_name.empty() || file_name.find('/') != std::string::npos || file_name == "." ||
          file_name == ".." || file_name.find('\0') != std::string::npos)
        throw model_error(fmt::format("{}: weight_map['{}'] is '{}', expected a file name in the "
                                      "index's folder",
                                      index.string(), name,
                                      file_name.size() <= 200
                                        ? file_name
                                        : file_name.substr(0, 200) + "..."));
      if (file_name.size() > 255)  // NAME_MAX: no file can have it
        throw model_error(fmt::format("{}: weight_map['{}'] is a file name of {} characters ({}), "
                                      "at most 255 are possible",
                                      index.string(), name, file_name.size(),
                                      json_excerpt(shard)));
      if (std::find(shards.begin(), shards.end(), shard.get<std::string>()) == shards.end())
        shards.push_back(shard.get<std::string>());
    }
    std::sort(shards.begin(), shards.end());
    for (const auto& shard : shards) {
      const auto file = index.parent_path() / shard;
      std::error_code ec;
      const auto st = fs::status(file, ec);
      if (!fs::exists(st))
        throw model_error(fmt::format("{}: shard '{}' is missing (expected {}{})", index.string(),
                                      shard, file.string(),
                                      ec && ec != std::errc::no_such_file_or_directory
                                        ? ": " + ec.message()
                                        : std::string()));
      if (fs::is_directory(st))
        throw model_error(fmt::format("{}: shard '{}' is a folder, expected a .safetensors file",
                                      index.string(), shard));
      add(file.string());
    }
    for (auto& [name, shard] : j["weight_map"].items()) {
      auto t = find(name);
      if (!t || fs::path(t->file->path()).filename() != shard.get<std::string>())
        throw model_error(fmt::format("{}: weight_map puts tensor '{}' in '{}', but that shard "
                                      "does not hold it",
                                      index.string(), name, shard.get<std::string>()));
    }
  }
}

void safetensors_checkpoint::add(const std::string& path) {
  auto file = std::make_shared<const safetensors_file>(path);
  for (const auto& t : file->tensors()) {
    auto [at, fresh] = by_name_.emplace(t.name, &t);
    if (!fresh)
      throw model_error(fmt::format("{}: tensor '{}' is also in {}", path, t.name,
                                    at->second->file->path()));
  }
  describe_ += (describe_.empty() ? "" : ", ") + path;
  files_.push_back(std::move(file));
}

const safetensors_tensor* safetensors_checkpoint::find(const std::string& name) const {
  auto i = by_name_.find(name);
  return i == by_name_.end() ? nullptr : i->second;
}

const safetensors_tensor& safetensors_checkpoint::get(const std::string& name) const {
  if (auto t = find(name))
    return *t;
  throw model_error(fmt::format("{}: tensor '{}' is missing", describe_, name));
}

std::shared_ptr<const safetensors_file>
safetensors_checkpoint::owner(const safetensors_tensor& t) const {
  for (const auto& f : files_)
    if (f.get() == t.file)
      return f;
  throw model_error(fmt::format("tensor '{}' belongs to no file of {}", t.name, describe_));
}

bool is_safetensors_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    const auto p = fs::path(path);
    return p.extension() == ".safetensors" || p.filename() == index_name;
  }
  if (fs::exists(fs::path(path) / "model.safetensors") || fs::exists(fs::path(path) / index_name))
    return true;
  for (auto& e : fs::directory_iterator(path, ec))
    if (e.path().extension() == ".safetensors")
      return true;
  return false;
}

} // namespace ceco
