#pragma once

// A `ceco` command run as its own process by a test (two-node and serve tests).

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

namespace ceco::test {

/// Ends a test that cannot run on this machine. Under CTest (which sets
/// CECO_SKIP_STATUS and treats that exit status as "skipped") the process
/// exits with it; run by hand, the test passes with the reason.
inline void skip_test(const std::string& why) {
  if (const char* status = std::getenv("CECO_SKIP_STATUS")) {
    std::fprintf(stderr, "skipped: %s\n", why.c_str());
    std::fflush(nullptr);
    std::_Exit(std::atoi(status));
  }
  MESSAGE("skipped: " << why);
}

/// A `ceco <args>` process whose stdout (with its stderr when `with_stderr`,
/// else stderr goes nowhere) is read line by line as it comes; killed when
/// the object goes.
struct ceco_process {
  pid_t pid = -1;

  explicit ceco_process(const std::string& args, bool with_stderr = false) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      dup2(fds[1], 1);
      if (with_stderr)
        dup2(fds[1], 2);
      close(fds[0]);
      std::string cmd = std::string("exec ") + CECO_BINARY + " " + args
                        + (with_stderr ? "" : " 2>/dev/null");
      execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
      _exit(127);
    }
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
  ceco_process(const ceco_process&) = delete;
  ceco_process& operator=(const ceco_process&) = delete;

  /// The next line of its output ("" at its end, or once not reading).
  std::string line() {
    char buf[2048] = {};
    return out_ && fgets(buf, sizeof buf, out_) ? std::string(buf) : std::string();
  }
  /// Its further output goes nowhere.
  void stop_reading() {
    if (out_)
      fclose(out_);
    out_ = nullptr;
  }
  void signal(int sig) {
    if (pid > 0)
      ::kill(pid, sig);
  }
  void kill_now() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
    stop_reading();
  }
  ~ceco_process() { kill_now(); }

private:
  FILE* out_ = nullptr;
};

} // namespace ceco::test
