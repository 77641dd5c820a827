#pragma once

// A whole file memory-mapped read-only (the checkpoint readers' storage):
// weights are paged in from the file on first use and never copied.

#include <cstddef>
#include <cstdint>
#include <string>

namespace ceco {

class mapped_file {
public:
  /// Throws model_error naming `path` when it cannot be opened or mapped or
  /// is not a regular file. An empty file maps to size() 0.
  explicit mapped_file(const std::string& path);
  ~mapped_file();
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

} // namespace ceco
