#pragma once

// The connections of `ceco serve`'s HTTP server, bounded: cpp-httplib parses
// and routes, this front decides which connection gets a thread and when.
// One thread (the gate) holds every connection that is idle or still
// sending its request; a worker thread is taken only once a request's head
// and body are in (or once a body must be streamed: chunked, or after
// `Expect: 100-continue`). So a slow client holds a few bytes, never a
// thread, and is closed at its deadline:
//
//   - the request line and headers within header_timeout_ms of their first
//     byte, the body within body_timeout_ms of the headers;
//   - an idle keep-alive connection closed after idle_timeout_ms;
//   - at most max_connections open: the next one closes the connection that
//     has waited longest for its request, or is refused (503) when every
//     connection is being served.
//
// A handler may ask whether its client is still connected (client_connected).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

namespace ceco::app {

struct http_limits {
  int header_timeout_ms = 10'000;  // request line and headers, from their first byte
  int body_timeout_ms = 30'000;    // the body, from the end of the headers
  int idle_timeout_ms = 5'000;     // a keep-alive connection between requests
  int write_timeout_ms = 10'000;   // each write of a response to a client that does not read
  int max_connections = 512;       // open at once, waiting or served
  int workers = 40;                // requests handled at once
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 8u << 20;
  int max_requests_per_connection = 100;
  size_t trim_after_bytes = 1u << 20;  // malloc_trim after a request this large
};

/// Counts since the start, for /metrics and tests.
struct http_front_counts {
  int64_t open = 0;            // connections now open
  int64_t timed_out = 0;       // closed at a header, body or idle deadline while sending
  int64_t evicted = 0;         // closed to make room for a new connection
  int64_t refused = 0;         // refused with 503: every connection was being served
};

class http_front : public httplib::Server {
public:
  explicit http_front(http_limits limits);
  ~http_front() override;

  /// Stops the gate and the workers (after httplib's stop(): listen returned).
  void shut_down();
  http_front_counts counts() const;

  /// In a handler: false once the client of the request this thread serves
  /// has closed its connection (or reset it). True outside a handler.
  static bool client_connected();

private:
  struct connection {
    socket_t fd;
    std::string buf;        // bytes read and not yet parsed
    bool started = false;   // a request's first byte is in
    bool headers_in = false;
    std::chrono::steady_clock::time_point deadline;
    std::chrono::steady_clock::time_point since;  // when it began to wait
    int served = 0;          // requests served on it
  };
  enum class readiness { wait, ready, bad };

  bool process_and_close_socket(socket_t sock) override;
  void gate_loop();
  void worker_loop();
  void admit(std::unique_ptr<connection> c);
  readiness check(connection& c, std::chrono::steady_clock::time_point now);
  void serve(std::unique_ptr<connection> c);
  void close_connection(socket_t fd);
  void wake();

  http_limits limits_;
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;
  std::deque<std::unique_ptr<connection>> inbox_;  // to the gate
  std::deque<std::unique_ptr<connection>> ready_;  // to the workers
  std::list<std::unique_ptr<connection>> waiting_; // the gate's own (its thread only)
  int64_t open_ = 0;
  http_front_counts counts_;
  bool stopping_ = false;
  int wake_pipe_[2] = {-1, -1};
  std::thread gate_;
  std::vector<std::thread> workers_;
};

/// A listening socket's options for ceco's HTTP servers: SO_REUSEADDR only.
/// The library's default adds SO_REUSEPORT, with which a second server on the
/// same port starts and the kernel splits the connections between the two.
void set_listen_options(int sock);
/// Why binding host:port fails ("Address already in use"), found by trying it
/// as the servers do.
std::string bind_failure(const std::string& host, int port);

} // namespace ceco::app
