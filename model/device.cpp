#include "model/device.hpp"

#include <ATen/Context.h>
#include <fmt/format.h>

#include "model/config.hpp"

namespace ceco {

c10::Device parse_device(const std::string& name) {
  c10::Device dev = c10::kCPU;
  try {
    dev = c10::Device(name);
  } catch (const std::exception&) {
    throw model_error(fmt::format("--device: '{}' is not a device; expected cpu, cuda or cuda:N",
                                  name));
  }
  if (dev.is_cuda() && !at::hasCUDA())
    throw model_error(fmt::format(
      "--device {}: this ceco is built against a libtorch without CUDA (Debian's libtorch is "
      "CPU-only); rebuild with CMAKE_PREFIX_PATH pointing at a CUDA build of libtorch",
      name));
  if (!dev.is_cpu() && !dev.is_cuda())
    throw model_error(fmt::format("--device: '{}' is not supported; expected cpu or cuda", name));
  return dev;
}

} // namespace ceco
