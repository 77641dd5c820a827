#define DOCTEST_CONFIG_IMPLEMENT
#include "test/support.hpp"

#include <cstdlib>
#include <map>
#include <new>
#include <random>

#include <sys/wait.h>

#include "model/compute_threads.hpp"

namespace {
thread_local int64_t thread_allocations = 0;
}

// Counts this thread's allocations (allocations_on_this_thread), so a test can
// show that a hot path allocates nothing.
void* operator new(std::size_t n) {
  ++thread_allocations;
  if (void* p = std::malloc(n ? n : 1))
    return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace ceco::test {

int64_t allocations_on_this_thread() { return thread_allocations; }

const stories& load_stories(const std::string& format) {
  static std::map<std::string, stories> cache;
  auto i = cache.find(format);
  if (i != cache.end())
    return i->second;
  stories s;
  s.files = format == "gguf" ? load_model(stories_gguf()) : load_model(stories_bin(), stories_tok());
  s.model = std::make_shared<transformer>(s.files.config, s.files.weights, c10::Device(c10::kCPU));
  return cache.emplace(format, std::move(s)).first->second;
}

temp_dir::temp_dir() {
  std::random_device rd;
  path = std::filesystem::temp_directory_path() / ("ceco-test-" + std::to_string(rd()));
  std::filesystem::create_directories(path);
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

run_result run_shell(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0)
    out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

} // namespace ceco::test

int main(int argc, char** argv) {
  ceco::use_fast_blas_kernels(argv);
  ceco::set_compute_threads(1);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
