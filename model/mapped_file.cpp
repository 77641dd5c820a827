#include "model/mapped_file.hpp"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "model/config.hpp"

namespace ceco {

mapped_file::mapped_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0)
    throw model_error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw model_error(fmt::format("{}: not a regular file", path));
  }
  size_ = size_t(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    return;
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED)
    throw model_error(fmt::format("{}: cannot map: {}", path, std::strerror(errno)));
  data_ = static_cast<const uint8_t*>(p);
}

mapped_file::~mapped_file() {
  if (data_)
    ::munmap(const_cast<uint8_t*>(data_), size_);
}

} // namespace ceco
