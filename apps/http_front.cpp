#include "apps/http_front.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <netdb.h>
#include <malloc.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace ceco::app {

namespace {

using clock_type = std::chrono::steady_clock;

thread_local socket_t current_client = INVALID_SOCKET;

int ms_until(clock_type::time_point t, clock_type::time_point now) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
  return int(std::max<int64_t>(0, std::min<int64_t>(ms, 1'000'000)));
}

bool iequals_prefix(const std::string& s, size_t at, const char* name) {
  const size_t n = std::strlen(name);
  if (at + n > s.size())
    return false;
  for (size_t i = 0; i < n; ++i)
    if (std::tolower(static_cast<unsigned char>(s[at + i])) != name[i])
      return false;
  return true;
}

/// The value of header `name` (lower case, with the colon) in the head
/// [0, end), or npos-marked empty when absent.
bool header_value(const std::string& head, size_t end, const char* name, std::string& value) {
  size_t line = head.find("\r\n");
  while (line != std::string::npos && line < end) {
    line += 2;
    if (iequals_prefix(head, line, name)) {
      size_t from = line + std::strlen(name);
      size_t to = head.find("\r\n", from);
      if (to == std::string::npos || to > end)
        to = end;
      value = head.substr(from, to - from);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t") + 1);
      return true;
    }
    line = head.find("\r\n", line);
  }
  return false;
}

void send_all_nonblocking(socket_t fd, const std::string& text) {
  size_t at = 0;
  while (at < text.size()) {
    auto n = ::send(fd, text.data() + at, text.size() - at, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0)
      return;
    at += size_t(n);
  }
}

/// The stream httplib reads a request from and writes its response to: the
/// bytes the gate read first, then the socket, every read bounded by the
/// request's deadline and every write by the write timeout.
class deadline_stream : public httplib::Stream {
public:
  deadline_stream(socket_t fd, std::string buf, clock_type::time_point deadline,
                  int write_timeout_ms)
    : fd_(fd), buf_(std::move(buf)), deadline_(deadline), write_timeout_ms_(write_timeout_ms),
      bytes_read_(buf_.size()) {}

  bool is_readable() const override { return pos_ < buf_.size() || wait(POLLIN, deadline_); }
  bool is_writable() const override {
    return wait(POLLOUT, clock_type::now() + std::chrono::milliseconds(write_timeout_ms_));
  }
  ssize_t read(char* ptr, size_t size) override {
    if (pos_ >= buf_.size()) {
      if (!wait(POLLIN, deadline_))
        return -1;
      buf_.resize(16 * 1024);
      pos_ = 0;
      auto n = ::recv(fd_, &buf_[0], buf_.size(), 0);
      if (n <= 0) {
        buf_.clear();
        return n < 0 ? -1 : 0;
      }
      buf_.resize(size_t(n));
      bytes_read_ += size_t(n);
    }
    size_t n = std::min(size, buf_.size() - pos_);
    std::memcpy(ptr, buf_.data() + pos_, n);
    pos_ += n;
    return ssize_t(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    size_t at = 0;
    while (at < size) {
      if (!is_writable())
        return -1;
      auto n = ::send(fd_, ptr + at, size - at, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR))
        continue;
      if (n <= 0)
        return -1;
      at += size_t(n);
    }
    return ssize_t(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    address(::getpeername, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    address(::getsockname, ip, port);
  }
  socket_t socket() const override { return fd_; }

  /// Read and not yet parsed: the start of a pipelined next request.
  std::string rest() const { return buf_.substr(std::min(pos_, buf_.size())); }
  /// Bytes received on this request (a pipelined next one's included).
  size_t bytes_read() const { return bytes_read_; }

private:
  bool wait(short events, clock_type::time_point until) const {
    for (;;) {
      pollfd p{fd_, events, 0};
      int r = ::poll(&p, 1, ms_until(until, clock_type::now()));
      if (r < 0 && errno == EINTR)
        continue;
      return r > 0 && (p.revents & events);
    }
  }
  template <typename F>
  void address(F f, std::string& ip, int& port) const {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    ip.clear();
    port = -1;
    if (f(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return;
    char text[INET6_ADDRSTRLEN] = {};
    if (a.ss_family == AF_INET) {
      auto* in = reinterpret_cast<sockaddr_in*>(&a);
      inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
      port = ntohs(in->sin_port);
    } else if (a.ss_family == AF_INET6) {
      auto* in = reinterpret_cast<sockaddr_in6*>(&a);
      inet_ntop(AF_INET6, &in->sin6_addr, text, sizeof text);
      port = ntohs(in->sin6_port);
    }
    ip = text;
  }

  socket_t fd_;
  std::string buf_;
  size_t pos_ = 0;
  clock_type::time_point deadline_;
  int write_timeout_ms_;
  size_t bytes_read_;
};

/// httplib's accept loop hands each socket over at once, on its own thread.
struct inline_queue : httplib::TaskQueue {
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

} // namespace

http_front::http_front(http_limits limits) : limits_(limits) {
  if (::pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0)
    throw std::runtime_error(std::string("http front: pipe: ") + std::strerror(errno));
  new_task_queue = [] { return new inline_queue; };
  set_payload_max_length(limits_.max_body_bytes);
  set_keep_alive_max_count(size_t(std::max(1, limits_.max_requests_per_connection)));
  gate_ = std::thread([this] { gate_loop(); });
  for (int i = 0; i < std::max(1, limits_.workers); ++i)
    workers_.emplace_back([this] { worker_loop(); });
}

http_front::~http_front() {
  shut_down();
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
}

void http_front::shut_down() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && !gate_.joinable())
      return;
    stopping_ = true;
  }
  wake();
  work_cv_.notify_all();
  if (gate_.joinable())
    gate_.join();
  for (auto& w : workers_)
    if (w.joinable())
      w.join();
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto* q : {&inbox_, &ready_})
    for (auto& c : *q)
      ::close(c->fd);
  inbox_.clear();
  ready_.clear();
}

http_front_counts http_front::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto c = counts_;
  c.open = open_;
  return c;
}

bool http_front::client_connected() {
  const socket_t fd = current_client;
  if (fd == INVALID_SOCKET)
    return true;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0)
    return true;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
    return false;
  if (p.revents & POLLIN) {
    char byte;
    auto n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      return false;
  }
  return true;
}

void http_front::wake() {
  char byte = 1;
  [[maybe_unused]] auto n = ::write(wake_pipe_[1], &byte, 1);
}

bool http_front::process_and_close_socket(socket_t sock) {
  auto c = std::make_unique<connection>();
  c->fd = sock;
  c->since = clock_type::now();
  c->deadline = c->since + std::chrono::milliseconds(limits_.idle_timeout_ms);
  admit(std::move(c));
  return true;
}

void http_front::admit(std::unique_ptr<connection> c) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      ::close(c->fd);
      return;
    }
    if (c->served == 0)
      ++open_;
    inbox_.push_back(std::move(c));
  }
  wake();
}

void http_front::close_connection(socket_t fd) {
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
  std::lock_guard<std::mutex> lock(mutex_);
  --open_;
}

http_front::readiness http_front::check(connection& c, clock_type::time_point now) {
  if (c.buf.empty())
    return readiness::wait;
  if (!c.started) {
    c.started = true;
    c.deadline = now + std::chrono::milliseconds(limits_.header_timeout_ms);
  }
  const size_t end = c.buf.find("\r\n\r\n");
  if (end == std::string::npos)
    // A head past the bound: httplib answers it (400 or 414).
    return c.buf.size() > limits_.max_header_bytes ? readiness::ready : readiness::wait;
  if (!c.headers_in) {
    c.headers_in = true;
    c.deadline = now + std::chrono::milliseconds(limits_.body_timeout_ms);
  }
  std::string value;
  if (header_value(c.buf, end, "transfer-encoding:", value)
      || (header_value(c.buf, end, "expect:", value) && !value.empty()))
    return readiness::ready;  // the body is streamed by the worker, under the same deadline
  if (!header_value(c.buf, end, "content-length:", value))
    return readiness::ready;
  char* stop = nullptr;
  errno = 0;
  const unsigned long long length = std::strtoull(value.c_str(), &stop, 10);
  if (errno != 0 || stop == value.c_str() || *stop != '\0' || length > limits_.max_body_bytes)
    return readiness::ready;  // httplib refuses it (400 or 413) without reading the body
  return c.buf.size() - (end + 4) >= length ? readiness::ready : readiness::wait;
}

void http_front::gate_loop() {
  std::vector<pollfd> polls;
  std::vector<connection*> order;
  std::vector<char> chunk(64 * 1024);
  for (;;) {
    auto now = clock_type::now();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_)
        break;
      while (!inbox_.empty()) {
        waiting_.push_back(std::move(inbox_.front()));
        inbox_.pop_front();
      }
    }
    // Over the bound: the connection that has waited longest goes; one that
    // never sent a byte is told why.
    for (;;) {
      int64_t open;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        open = open_;
      }
      if (open <= limits_.max_connections || waiting_.empty())
        break;
      auto oldest = std::min_element(waiting_.begin(), waiting_.end(), [](auto& a, auto& b) {
        return a->since < b->since;
      });
      const bool is_new = !(*oldest)->started && (*oldest)->served == 0;
      if (is_new)
        send_all_nonblocking(
          (*oldest)->fd,
          "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: "
          "application/json\r\nContent-Length: 115\r\n\r\n"
          "{\"error\": {\"message\": \"too many connections\", \"type\": \"server_error\", "
          "\"param\": null, \"code\": \"too_many_connections\"}}");
      close_connection((*oldest)->fd);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ++(is_new ? counts_.refused : counts_.evicted);
      }
      waiting_.erase(oldest);
    }
    // Requests that came whole with their connection, or were pipelined.
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (check(**it, now) == readiness::ready) {
        std::lock_guard<std::mutex> lock(mutex_);
        ready_.push_back(std::move(*it));
        it = waiting_.erase(it);
        work_cv_.notify_one();
      } else {
        ++it;
      }
    }
    polls.assign(1, pollfd{wake_pipe_[0], POLLIN, 0});
    order.clear();
    auto next = now + std::chrono::seconds(1);
    for (auto& c : waiting_) {
      polls.push_back(pollfd{c->fd, POLLIN, 0});
      order.push_back(c.get());
      next = std::min(next, c->deadline);
    }
    int r = ::poll(polls.data(), polls.size(), ms_until(next, now) + 1);
    if (r < 0 && errno != EINTR)
      break;
    if (polls[0].revents & POLLIN) {
      char drain[256];
      while (::read(wake_pipe_[0], drain, sizeof drain) > 0) {
      }
    }
    now = clock_type::now();
    std::vector<connection*> gone;
    for (size_t i = 1; i < polls.size(); ++i) {
      auto* c = order[i - 1];
      if (polls[i].revents & POLLIN) {
        // At most the head's bound plus the body's ahead of the parser.
        auto n = ::recv(c->fd, chunk.data(), chunk.size(), MSG_DONTWAIT);
        if (n > 0) {
          c->buf.append(chunk.data(), size_t(n));
          continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
          continue;
        gone.push_back(c);  // closed by the client
      } else if (polls[i].revents & (POLLHUP | POLLERR | POLLNVAL)) {
        gone.push_back(c);
      } else if (now >= c->deadline) {
        if (c->started) {
          std::lock_guard<std::mutex> lock(mutex_);
          ++counts_.timed_out;
        }
        gone.push_back(c);
      }
    }
    for (auto* c : gone) {
      close_connection(c->fd);
      waiting_.remove_if([c](auto& p) { return p.get() == c; });
    }
  }
  for (auto& c : waiting_)
    ::close(c->fd);
  waiting_.clear();
}

void http_front::worker_loop() {
  for (;;) {
    std::unique_ptr<connection> c;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
      if (ready_.empty())
        return;
      c = std::move(ready_.front());
      ready_.pop_front();
    }
    serve(std::move(c));
  }
}

void http_front::serve(std::unique_ptr<connection> c) {
  ++c->served;
  const bool last = c->served >= limits_.max_requests_per_connection;
  bool closed = false;
  bool ok = false;
  size_t bytes = 0;
  {
    deadline_stream strm(c->fd, std::move(c->buf), c->deadline, limits_.write_timeout_ms);
    current_client = c->fd;
    try {
      ok = process_request(strm, last, closed, nullptr);
    } catch (...) {
      ok = false;
    }
    current_client = INVALID_SOCKET;
    c->buf = strm.rest();
    bytes = strm.bytes_read();
  }
  // A large request leaves its bytes and its parse freed but kept by the
  // allocator, in many threads' arenas: give them back to the system.
  if (bytes >= limits_.trim_after_bytes)
    ::malloc_trim(0);
  bool stopping;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping = stopping_;
  }
  if (!ok || closed || last || stopping || svr_sock_ == INVALID_SOCKET) {
    close_connection(c->fd);
    return;
  }
  // Keep-alive: back to the gate until its next request is in.
  c->buf.shrink_to_fit();
  c->started = false;
  c->headers_in = false;
  c->since = clock_type::now();
  c->deadline = c->since + std::chrono::milliseconds(limits_.idle_timeout_ms);
  admit(std::move(c));
}

void set_listen_options(int sock) {
  int yes = 1;
  ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
}

std::string bind_failure(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0)
    return fmt::format("cannot resolve '{}': {}", host, ::gai_strerror(rc));
  std::string why = "unknown reason";
  for (auto* ai = found; ai; ai = ai->ai_next) {
    int sock = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (sock < 0) {
      why = std::strerror(errno);
      continue;
    }
    set_listen_options(sock);
    if (::bind(sock, ai->ai_addr, ai->ai_addrlen) != 0)
      why = std::strerror(errno);
    else if (::listen(sock, 1) != 0)
      why = std::strerror(errno);
    ::close(sock);
  }
  ::freeaddrinfo(found);
  return why;
}

} // namespace ceco::app
