#pragma once

#include <string>

#include <c10/core/Device.h>

namespace ceco {

/// "cpu", "cuda" or "cuda:N"; throws model_error when this build's libtorch
/// cannot run there (Debian's libtorch is CPU-only).
c10::Device parse_device(const std::string& name);

} // namespace ceco
