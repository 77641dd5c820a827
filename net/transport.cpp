#include "net/transport.hpp"

#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <fmt/format.h>
#include <openssl/x509.h>

#include "net/auth.hpp"

namespace ceco::wire {

namespace {

using asio::ip::tcp;
using std::chrono::milliseconds;

wire_error io_error(const asio::error_code& ec) {
  if (ec == asio::error::eof || ec == asio::error::connection_reset ||
      ec == asio::ssl::error::stream_truncated)  // TCP closed under TLS without close_notify
    return {wire_errc::closed, "the peer closed the connection"};
  return {wire_errc::io, ec.message()};
}

/// One TCP connection carrying frames: reads a header, checks it, reads the
/// payload into a reused buffer, decodes it; writes queued frames in order.
/// Lives on its io_context's thread only.
class channel : public std::enable_shared_from_this<channel> {
 public:
  /// With `tls`, frames go through the TLS stream once its handshake is done;
  /// without, straight through its TCP socket.
  channel(tcp::socket socket, asio::ssl::context& tls_context, bool tls, wire_limits limits,
          int frame_timeout_ms, int max_queued)
      : stream_(std::move(socket), tls_context), tls_(tls), timer_(stream_.get_executor()),
        limits_(limits), frame_timeout_(frame_timeout_ms),
        max_queued_(size_t(std::max(max_queued, 1))) {
    asio::error_code ec;
    stream_.next_layer().set_option(tcp::no_delay(true), ec);
  }
  virtual ~channel() = default;

  bool closed() const { return closed_; }

  void send(uint32_t request_id, const message& msg) {
    if (closed_)
      return;
    auto bytes = encode(request_id, msg, limits_);
    if (!ok(bytes)) {
      auto& err = std::get<wire_error>(bytes);
      bytes = encode(request_id, error_frame{uint8_t(err.code), err.text}, limits_);
    }
    queue(std::move(std::get<std::vector<uint8_t>>(bytes)));
  }

  /// The frame of `msg`, or, when it cannot be encoded, why (not_encodable):
  /// the connection stays as it was.
  result<std::vector<uint8_t>> encode_or_refuse(uint32_t request_id, const message& msg) {
    auto bytes = encode(request_id, msg, limits_);
    if (!ok(bytes)) {
      const auto& err = std::get<wire_error>(bytes);
      return wire_error{wire_errc::not_encodable,
                        fmt::format("not sent: a {} frame this side cannot encode ({}: {})",
                                    to_string(type_of(msg)), to_string(err.code), err.text)};
    }
    return bytes;
  }

  void queue(std::vector<uint8_t> bytes) {
    if (out_.size() >= max_queued_)
      return fail({wire_errc::too_many_requests,
                   fmt::format("{} frames queued for a peer that does not read them",
                               out_.size())});
    out_.push_back(std::move(bytes));
    if (!writing_)
      write_next();
  }

  /// Closes the connection; with `tell_peer` after an error frame saying why.
  void fail(wire_error why, bool tell_peer = false) {
    if (closed_)
      return;
    closed_ = true;
    ++timer_generation_;
    on_close(why);
    if (tell_peer) {
      auto bytes = encode(0, error_frame{uint8_t(why.code), why.text}, limits_);
      if (ok(bytes)) {
        // Keep a frame being written (its buffer is in use), drop the rest.
        out_.erase(writing_ ? out_.begin() + 1 : out_.begin(), out_.end());
        out_.push_back(std::move(std::get<std::vector<uint8_t>>(bytes)));
        if (!writing_)
          write_next();
        // A peer that does not read the error gets closed anyway.
        timer_.expires_after(milliseconds(1000));
        timer_.async_wait([self = shared_from_this()](const asio::error_code&) {
          self->close_socket();
        });
        return;
      }
    }
    close_socket();
  }

  /// Reads the next frame.
  void read_next() {
    if (closed_ || reading_)
      return;
    reading_ = true;
    arm(header_timeout(), "the next frame");
    read_exactly(asio::buffer(header_), [self = shared_from_this()](const asio::error_code& ec, size_t) {
      self->on_header(ec);
    });
  }

 protected:
  /// Whether a frame of this type may come now (checked before its payload is read).
  virtual bool accepts(frame_type type) const = 0;
  virtual void on_frame(uint32_t request_id, message msg) = 0;
  virtual void on_close(const wire_error& why) = 0;
  /// How long to wait for the next frame's header; 0 = no limit.
  virtual milliseconds header_timeout() const = 0;
  /// Whether a deadline runs between reads (false while a handshake deadline runs).
  virtual bool rearm() const { return true; }
  /// Whether a bad frame is answered with an error frame before closing.
  virtual bool tells_errors() const { return true; }

  /// Starts a deadline; a passed deadline closes the connection.
  void arm(milliseconds timeout, const char* waiting_for) {
    if (!rearm())
      return;
    ++timer_generation_;
    if (timeout.count() <= 0) {
      timer_.cancel();
      return;
    }
    start_deadline(timeout, waiting_for);
  }

  void start_deadline(milliseconds timeout, const char* waiting_for) {
    uint64_t generation = ++timer_generation_;
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this(), generation, timeout,
                       waiting_for](const asio::error_code& ec) {
      if (ec || generation != self->timer_generation_ || self->closed_)
        return;
      self->fail({wire_errc::timed_out,
                  fmt::format("no {} within {} ms", waiting_for, timeout.count())});
    });
  }

  tcp::socket& socket() { return stream_.next_layer(); }
  /// The payload size of the frame on_frame() is handed.
  size_t frame_payload_size() const { return header_info_.payload_size; }

  /// The TLS handshake (when TLS is on), then `next`; a failed one closes.
  void secure(asio::ssl::stream_base::handshake_type side, std::function<void()> next) {
    if (!tls_)
      return next();
    stream_.async_handshake(side, [self = shared_from_this(), next = std::move(next)](
                                    const asio::error_code& ec) {
      if (self->closed_)
        return;
      if (ec)
        return self->fail({wire_errc::auth_failed, fmt::format("TLS handshake: {}", ec.message())});
      next();
    });
  }

  asio::ssl::stream<tcp::socket> stream_;
  bool tls_;
  asio::steady_timer timer_;
  wire_limits limits_;

 private:
  void on_header(const asio::error_code& ec) {
    if (closed_)
      return;
    if (ec)
      return fail(io_error(ec));
    auto parsed = parse_header(header_.data(), limits_);
    if (!ok(parsed))
      return fail(std::get<wire_error>(parsed), tells_errors());
    auto h = std::get<frame_header>(parsed);
    if (!accepts(h.type))
      return fail({wire_errc::not_allowed,
                   fmt::format("a {} frame is not expected here", to_string(h.type))},
                  tells_errors());
    header_info_ = h;
    payload_.resize(h.payload_size);  // within the type's cap: parse_header checked it
    arm(frame_timeout_, "rest of the frame");
    read_exactly(asio::buffer(payload_), [self = shared_from_this()](const asio::error_code& ec, size_t) {
      self->on_payload(ec);
    });
  }

  void on_payload(const asio::error_code& ec) {
    reading_ = false;
    if (closed_)
      return;
    if (ec)
      return fail(io_error(ec));
    auto decoded = decode_payload(header_info_.type, payload_.data(), payload_.size(), limits_);
    if (!ok(decoded))
      return fail(std::get<wire_error>(decoded), tells_errors());
    on_frame(header_info_.request_id, std::move(std::get<message>(decoded)));
    read_next();
  }

  template <class Buffer, class Handler>
  void read_exactly(Buffer buffer, Handler handler) {
    if (tls_)
      asio::async_read(stream_, buffer, std::move(handler));
    else
      asio::async_read(socket(), buffer, std::move(handler));
  }
  template <class Buffer, class Handler>
  void write_all(Buffer buffer, Handler handler) {
    if (tls_)
      asio::async_write(stream_, buffer, std::move(handler));
    else
      asio::async_write(socket(), buffer, std::move(handler));
  }

  void write_next() {
    if (out_.empty()) {
      writing_ = false;
      if (closed_)
        close_socket();
      return;
    }
    writing_ = true;
    write_all(asio::buffer(out_.front()), [self = shared_from_this()](const asio::error_code& ec, size_t) {
                        self->out_.pop_front();
                        if (ec) {
                          self->writing_ = false;
                          self->fail(io_error(ec));
                          self->close_socket();
                          return;
                        }
                        self->write_next();
                      });
  }

  void close_socket() {
    asio::error_code ignored;
    timer_.cancel();
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
  }

  milliseconds frame_timeout_;
  size_t max_queued_;
  std::array<uint8_t, header_size> header_{};
  frame_header header_info_;
  std::vector<uint8_t> payload_;
  std::deque<std::vector<uint8_t>> out_;
  bool writing_ = false;
  bool reading_ = false;
  bool closed_ = false;
  uint64_t timer_generation_ = 0;
};

/// Runs `close_all` on the I/O thread (waiting at most two seconds), then
/// stops the thread and completes the aborted operations, which release
/// their connections.
void shut_down(asio::io_context& io, std::thread& thread, std::function<void()> close_all) {
  std::promise<void> done;
  asio::post(io, [&] {
    close_all();
    done.set_value();
  });
  done.get_future().wait_for(std::chrono::seconds(2));
  io.stop();
  thread.join();
  io.restart();
  io.poll();
}

/// Our certificate and key, the CA that signs the peer's, and the peer's
/// role: its certificate's common name must be `peer_name`.
void configure_tls(asio::ssl::context& ctx, const tls_options& tls, const char* who) {
  if (tls.certificate.empty() || tls.key.empty() || tls.ca_file.empty() || tls.peer_name.empty())
    throw std::runtime_error(fmt::format(
      "{}: TLS needs a certificate, its key, the CA file and the peer's name", who));
  asio::error_code ec;
  ctx.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                  asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                  asio::ssl::context::no_tlsv1_1);
  auto load = [&](const char* what, const std::string& path, auto&& fn) {
    fn(ec);
    if (ec)
      throw std::runtime_error(fmt::format("{}: cannot load the {} '{}': {}", who, what, path,
                                           ec.message()));
  };
  load("certificate", tls.certificate, [&](auto& e) { ctx.use_certificate_chain_file(tls.certificate, e); });
  load("key", tls.key, [&](auto& e) { ctx.use_private_key_file(tls.key, asio::ssl::context::pem, e); });
  load("CA file", tls.ca_file, [&](auto& e) { ctx.load_verify_file(tls.ca_file, e); });
  ctx.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
  ctx.set_verify_callback([peer = tls.peer_name](bool preverified, asio::ssl::verify_context& vc) {
    if (!preverified)
      return false;
    X509_STORE_CTX* store = vc.native_handle();
    if (X509_STORE_CTX_get_error_depth(store) > 0)
      return true;  // a CA of the chain; the role is the leaf's
    X509* cert = X509_STORE_CTX_get_current_cert(store);
    char name[256] = {};
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name, sizeof(name));
    return n > 0 && size_t(n) < sizeof(name) && peer == name;
  });
}

} // namespace

// -- server -------------------------------------------------------------------

struct server::impl : std::enable_shared_from_this<server::impl> {
  class connection;

  /// Failed proofs of one address: a bucket of tries, refilled over time.
  struct failures {
    double tries_left = 0;
    std::chrono::steady_clock::time_point refilled;
  };

  server_options opts;
  request_handler on_request;
  close_handler on_closed;
  asio::io_context io;
  // Keeps the I/O thread up until stop(), so shut_down's work always runs.
  asio::executor_work_guard<asio::io_context::executor_type> keep_running{io.get_executor()};
  asio::ssl::context tls_context{asio::ssl::context::tls_server};
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
  std::unordered_map<connection_id, std::shared_ptr<connection>> connections;
  // Connections not yet past the secret, by remote address.
  std::unordered_map<std::string, int> unauthenticated_by_address;
  int unauthenticated = 0;
  std::unordered_map<std::string, failures> failed;
  connection_id next_id = 1;
  std::thread thread;
  std::atomic<bool> stopped{false};
  mutable std::mutex stats_mutex;
  server_stats counters;
  std::unordered_map<connection_id, std::string> peers;  // under stats_mutex

  void count(int64_t server_stats::*field, int64_t delta = 1) {
    std::lock_guard<std::mutex> lock(stats_mutex);
    counters.*field += delta;
  }

  /// The tries `address` has left now (refilled since it last failed).
  failures* refill(const std::string& address) {
    auto it = failed.find(address);
    if (it == failed.end())
      return nullptr;
    auto now = std::chrono::steady_clock::now();
    auto& f = it->second;
    const double per_ms = 1.0 / double(std::max(1, opts.failed_handshake_refill_ms));
    // In fractions of a millisecond: an address knocking faster than once a
    // millisecond still gets its tries back.
    const std::chrono::duration<double, std::milli> since = now - f.refilled;
    f.tries_left = std::min(double(opts.max_failed_handshakes), f.tries_left + per_ms * since.count());
    f.refilled = now;
    return &f;
  }
  bool must_wait(const std::string& address) {
    if (opts.max_failed_handshakes <= 0)
      return false;
    auto* f = refill(address);
    return f && f->tries_left < 1.0;
  }
  void proof_failed(const std::string& address) {
    if (opts.max_failed_handshakes <= 0)
      return;
    if (failed.size() >= 4096)  // forget the addresses that may try again in full
      for (auto it = failed.begin(); it != failed.end();) {
        refill(it->first);
        it = it->second.tries_left >= double(opts.max_failed_handshakes) ? failed.erase(it)
                                                                         : std::next(it);
      }
    auto* f = refill(address);
    if (!f) {
      f = &failed[address];
      f->tries_left = double(opts.max_failed_handshakes);
      f->refilled = std::chrono::steady_clock::now();
    }
    f->tries_left -= 1.0;
  }

  void unauthenticated_came(const std::string& address) {
    ++unauthenticated;
    ++unauthenticated_by_address[address];
  }
  void unauthenticated_gone(const std::string& address) {
    --unauthenticated;
    auto it = unauthenticated_by_address.find(address);
    if (it != unauthenticated_by_address.end() && --it->second <= 0)
      unauthenticated_by_address.erase(it);
  }
  void authenticated_now(const std::string& address) { unauthenticated_gone(address); }

  void accept_next();
  /// Makes room for an unauthenticated connection from `address`.
  void evict_for(const std::string& address);
  void stop_on_io();
};

class server::impl::connection : public channel {
 public:
  connection(std::shared_ptr<server::impl> srv, connection_id id, tcp::socket s, std::string address,
             std::string peer)
      : channel(std::move(s), srv->tls_context, srv->opts.tls.enabled(), srv->opts.limits,
                srv->opts.frame_timeout_ms, srv->opts.max_queued_frames),
        srv_(std::move(srv)), id_(id), address_(std::move(address)), peer_(std::move(peer)) {}

  connection_id id() const { return id_; }
  const std::string& address() const { return address_; }
  bool authenticated() const { return authenticated_; }

  void start() {
    challenge_.server_nonce = random_nonce();
    start_deadline(milliseconds(srv_->opts.handshake_timeout_ms), "proof of the secret");
    auto self = std::static_pointer_cast<connection>(shared_from_this());
    secure(asio::ssl::stream_base::server, [self] {
      self->send(0, self->challenge_);
      self->read_next();
    });
  }

  /// A reply left the handler: one request fewer is pending, and the
  /// oldest waiting one is handed on.
  void replied(uint32_t request_id, message msg) {
    if (pending_ > 0)
      --pending_;
    send(request_id, msg);
    while (!closed() && !parked_.empty() && pending_ < srv_->opts.max_pending_requests) {
      auto next = std::move(parked_.front());
      parked_.pop_front();
      parked_bytes_ -= next.bytes;
      hand_on(next.request_id, std::move(next.msg));
    }
  }

 protected:
  bool accepts(frame_type type) const override {
    return authenticated_ ? is_request(type) : type == frame_type::auth_response;
  }
  bool rearm() const override { return authenticated_; }
  bool tells_errors() const override { return authenticated_; }
  milliseconds header_timeout() const override { return milliseconds(srv_->opts.idle_timeout_ms); }

  void on_frame(uint32_t request_id, message msg) override {
    if (!authenticated_) {
      auto& response = std::get<auth_response>(msg);
      auto expected = auth_mac(srv_->opts.secret, auth_role::client, challenge_.server_nonce,
                               response.client_nonce);
      if (!same_mac(expected, response.client_mac)) {
        return fail({wire_errc::auth_failed, "the client did not prove the shared secret"});
      }
      authenticated_ = true;
      srv_->authenticated_now(address_);
      srv_->count(&server_stats::authenticated);
      send(0, auth_ok{auth_mac(srv_->opts.secret, auth_role::server, challenge_.server_nonce,
                               response.client_nonce)});
      arm(header_timeout(), "the next frame");
      return;
    }
    // Pings never wait: they say the connection is alive, however busy.
    if (auto* p = std::get_if<ping>(&msg))
      return send(request_id, pong{p->stamp});
    const auto& o = srv_->opts;
    if (pending_ < o.max_pending_requests)
      return hand_on(request_id, std::move(msg));
    const auto bytes = int64_t(frame_payload_size());
    if (int(parked_.size()) < o.max_pending_requests && parked_bytes_ + bytes <= o.max_parked_bytes) {
      srv_->count(&server_stats::parked);
      parked_bytes_ += bytes;
      parked_.push_back({request_id, std::move(msg), bytes});
      return;
    }
    srv_->count(&server_stats::refused_busy);
    send(request_id,
         error_frame{uint8_t(wire_errc::too_many_requests),
                     fmt::format("{} requests of this connection await replies and {} ({} bytes) "
                                 "wait behind them, the most it may have (max_pending_requests = "
                                 "{}, as many waiting, {} bytes): wait for replies first",
                                 pending_, parked_.size(), parked_bytes_, o.max_pending_requests,
                                 o.max_parked_bytes)});
  }

  void on_close(const wire_error& why) override {
    if (why.code == wire_errc::timed_out)
      srv_->count(&server_stats::timed_out);
    else if (why.code == wire_errc::auth_failed)
      srv_->count(&server_stats::auth_failed);  // a wrong MAC, a refused certificate
    else if (why.code != wire_errc::closed && why.code != wire_errc::io)
      srv_->count(&server_stats::bad_frames);
    if (!authenticated_) {
      srv_->unauthenticated_gone(address_);
      if (why.code == wire_errc::auth_failed)
        srv_->proof_failed(address_);
    }
    srv_->count(&server_stats::open, -1);
    parked_.clear();
    {
      std::lock_guard<std::mutex> lock(srv_->stats_mutex);
      srv_->peers.erase(id_);
    }
    const bool peer_fault = !authenticated_ || (why.code != wire_errc::closed &&
                                                why.code != wire_errc::io &&
                                                why.code != wire_errc::timed_out);
    if (peer_fault && srv_->opts.on_refused && !srv_->stopped)
      srv_->opts.on_refused(peer_, why);
    auto self = srv_->connections.find(id_);
    if (self != srv_->connections.end())
      srv_->connections.erase(self);
    if (authenticated_ && srv_->on_closed)
      srv_->on_closed(id_, why);
  }

 private:
  void hand_on(uint32_t request_id, message msg) {
    ++pending_;
    if (!srv_->on_request)
      return;
    try {
      srv_->on_request(id_, request_id, std::move(msg));
    } catch (const std::exception& e) {
      replied(request_id, error_frame{uint8_t(ceco_errc::compute_failed),
                                      fmt::format("the request failed: {}", e.what())});
    }
  }

  struct parked_request {
    uint32_t request_id;
    message msg;
    int64_t bytes;
  };

  std::shared_ptr<server::impl> srv_;
  connection_id id_;
  std::string address_;  // the peer's IP address: per-address limits
  std::string peer_;     // address:port, for the log
  auth_challenge challenge_;
  bool authenticated_ = false;
  int pending_ = 0;
  std::deque<parked_request> parked_;
  int64_t parked_bytes_ = 0;
};

void server::impl::evict_for(const std::string& address) {
  const auto per_address = std::max(1, opts.max_unauthenticated_per_address);
  std::string from = address;
  auto mine = unauthenticated_by_address.find(address);
  if (mine == unauthenticated_by_address.end() || mine->second < per_address) {
    if (unauthenticated < std::max(1, opts.max_unauthenticated))
      return;  // room enough
    int most = 0;  // the pool is full: the address holding the most gives one up
    for (auto& [a, n] : unauthenticated_by_address)
      if (n > most)
        most = n, from = a;
  }
  std::shared_ptr<connection> oldest;
  for (auto& [id, c] : connections)
    if (!c->authenticated() && c->address() == from && (!oldest || id < oldest->id()))
      oldest = c;
  if (!oldest)
    return;
  count(&server_stats::evicted);
  oldest->fail({wire_errc::closed, "evicted: newer unauthenticated connections came"});
}

void server::impl::accept_next() {
  acceptor.async_accept([self = shared_from_this()](const asio::error_code& ec, tcp::socket s) {
    if (self->stopped)
      return;
    if (ec) {
      // Out of descriptors, say: wait instead of spinning on the error.
      self->accept_retry.expires_after(milliseconds(100));
      self->accept_retry.async_wait([self](const asio::error_code& e) {
        if (!e && !self->stopped)
          self->accept_next();
      });
      return;
    }
    self->count(&server_stats::accepted);
    asio::error_code peer_ec;
    auto peer = s.remote_endpoint(peer_ec);
    const std::string address = peer_ec ? std::string("?") : peer.address().to_string();
    asio::error_code ignored;
    if (self->must_wait(address)) {
      self->count(&server_stats::refused_rate);
      s.close(ignored);
    } else if (int(self->connections.size()) >= self->opts.max_connections) {
      self->count(&server_stats::refused_full);
      s.close(ignored);
    } else {
      self->evict_for(address);
      auto id = self->next_id++;
      std::string peer_name = peer_ec ? std::string("an unknown peer")
                                      : fmt::format("{}:{}", address, peer.port());
      {
        std::lock_guard<std::mutex> lock(self->stats_mutex);
        self->peers[id] = peer_name;
      }
      auto c = std::make_shared<connection>(self, id, std::move(s), address, std::move(peer_name));
      self->connections.emplace(id, c);
      self->unauthenticated_came(address);
      self->count(&server_stats::open);
      c->start();
    }
    self->accept_next();
  });
}

void server::impl::stop_on_io() {
  stopped = true;
  asio::error_code ignored;
  acceptor.close(ignored);
  accept_retry.cancel();
  auto all = connections;
  for (auto& [id, c] : all)
    c->fail({wire_errc::closed, "the server stopped"});
}

server::server(server_options opts, request_handler on_request, close_handler on_close)
    : impl_(std::make_shared<impl>()) {
  if (opts.secret.empty() && !opts.insecure)
    throw std::runtime_error("the wire server needs a shared secret (or an explicit insecure)");
  if (opts.limits.width <= 0 || opts.limits.context <= 0 || opts.limits.vocab <= 0 ||
      opts.limits.layers <= 0)
    throw std::runtime_error("the wire server needs the model's limits (width, context, vocab, layers)");
  if (opts.tls.enabled())
    configure_tls(impl_->tls_context, opts.tls, "wire server");
  impl_->opts = std::move(opts);
  impl_->on_request = std::move(on_request);
  impl_->on_closed = std::move(on_close);
  auto& o = impl_->opts;
  asio::error_code ec;
  auto address = asio::ip::make_address(o.host, ec);
  if (ec)
    throw std::runtime_error(fmt::format("wire server: '{}' is not an IP address", o.host));
  tcp::endpoint ep(address, o.port);
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec)
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec)
    impl_->acceptor.bind(ep, ec);
  if (!ec)
    impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error(fmt::format("wire server: cannot listen on {}:{}: {}", o.host,
                                         o.port, ec.message()));
  impl_->accept_next();
  impl_->thread = std::thread([p = impl_] { p->io.run(); });
}

server::~server() { stop(); }

uint16_t server::port() const {
  asio::error_code ec;
  auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void server::reply(connection_id conn, uint32_t request_id, message msg) {
  asio::post(impl_->io, [p = impl_, conn, request_id, msg = std::move(msg)]() mutable {
    auto it = p->connections.find(conn);
    if (it == p->connections.end())
      return;
    auto c = it->second;  // a failing send erases the map's reference
    c->replied(request_id, std::move(msg));
  });
}

void server::close(connection_id conn) {
  asio::post(impl_->io, [p = impl_, conn] {
    auto it = p->connections.find(conn);
    if (it == p->connections.end())
      return;
    auto c = it->second;
    c->fail({wire_errc::closed, "closed by the server"});
  });
}

std::string server::peer(connection_id conn) const {
  std::lock_guard<std::mutex> lock(impl_->stats_mutex);
  auto it = impl_->peers.find(conn);
  return it == impl_->peers.end() ? std::string() : it->second;
}

server_stats server::stats() const {
  std::lock_guard<std::mutex> lock(impl_->stats_mutex);
  return impl_->counters;
}

void server::stop() {
  if (!impl_->thread.joinable())
    return;
  shut_down(impl_->io, impl_->thread, [p = impl_] { p->stop_on_io(); });
}

// -- client -------------------------------------------------------------------

struct client::impl {
  class connection;

  client_options opts;
  std::function<void(const wire_error&)> on_closed;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> keep_running{io.get_executor()};
  asio::ssl::context tls_context{asio::ssl::context::tls_client};
  std::shared_ptr<connection> conn;
  std::thread thread;
  std::atomic<bool> open{false};
  std::atomic<bool> closing{false};
  std::atomic<uint32_t> next_request{1};
};

class client::impl::connection : public channel {
 public:
  connection(client::impl& c, tcp::socket s)
      : channel(std::move(s), c.tls_context, c.opts.tls.enabled(), c.opts.limits,
                c.opts.frame_timeout_ms, c.opts.max_pending_requests + 1),
        client_(c) {}

  std::promise<wire_error> ready;  // an error with code closed and no text: connected

  /// Connects and authenticates within connect_timeout_ms.
  void start(const tcp::resolver::results_type& endpoints) {
    auto ms = client_.opts.connect_timeout_ms;
    start_deadline(milliseconds(ms), "authenticated connection");
    asio::async_connect(socket(), endpoints,
                        [self = std::static_pointer_cast<connection>(shared_from_this())](
                          const asio::error_code& ec, const tcp::endpoint&) {
                          if (self->closed())
                            return;
                          if (ec)
                            return self->fail({wire_errc::io, fmt::format("cannot connect: {}",
                                                                          ec.message())});
                          asio::error_code ignored;
                          self->socket().set_option(tcp::no_delay(true), ignored);
                          self->secure(asio::ssl::stream_base::client, [self] { self->read_next(); });
                        });
  }

  void request(uint32_t id, const message& msg, reply_handler on_reply) {
    if (closed())
      return on_reply(wire_error{wire_errc::closed, "the connection to the server is closed"});
    if (int(pending_.size()) >= client_.opts.max_pending_requests)
      return on_reply(wire_error{wire_errc::too_many_requests,
                                 fmt::format("{} requests already await replies", pending_.size())});
    auto bytes = encode_or_refuse(id, msg);
    if (!ok(bytes))
      return on_reply(std::get<wire_error>(std::move(bytes)));  // that request fails alone
    // Pings pass the requests that wait: they must come back within the heartbeat.
    const bool counted = !std::holds_alternative<ping>(msg);
    auto& w = pending_.emplace(id, waiting{std::move(on_reply), counted, false}).first->second;
    if (!counted || in_flight_ < std::max(1, client_.opts.max_in_flight)) {
      w.sent = true;
      in_flight_ += counted ? 1 : 0;
      queue(std::get<std::vector<uint8_t>>(std::move(bytes)));
    } else {
      held_.emplace_back(id, std::get<std::vector<uint8_t>>(std::move(bytes)));
    }
  }

 protected:
  bool accepts(frame_type type) const override {
    switch (state_) {
      case state::challenge: return type == frame_type::auth_challenge;
      case state::proof: return type == frame_type::auth_ok;
      case state::ready:
        return !is_request(type) && type != frame_type::auth_challenge &&
               type != frame_type::auth_response && type != frame_type::auth_ok;
    }
    return false;
  }
  bool rearm() const override { return state_ == state::ready; }
  bool tells_errors() const override { return false; }
  milliseconds header_timeout() const override { return milliseconds(0); }

  void on_frame(uint32_t request_id, message msg) override {
    switch (state_) {
      case state::challenge: {
        server_nonce_ = std::get<auth_challenge>(msg).server_nonce;
        client_nonce_ = random_nonce();
        state_ = state::proof;
        send(0, auth_response{client_nonce_, auth_mac(client_.opts.secret, auth_role::client,
                                                      server_nonce_, client_nonce_)});
        return;
      }
      case state::proof: {
        auto expected = auth_mac(client_.opts.secret, auth_role::server, server_nonce_, client_nonce_);
        if (!same_mac(expected, std::get<auth_ok>(msg).server_mac))
          return fail({wire_errc::auth_failed, "the server did not prove the shared secret"});
        state_ = state::ready;
        client_.open = true;
        arm(milliseconds(0), "");
        ready.set_value(wire_error{wire_errc::closed, ""});
        return;
      }
      case state::ready: {
        if (auto* err = std::get_if<error_frame>(&msg); err && request_id == 0)
          return fail({wire_errc::closed,
                       fmt::format("the server closed the connection: {}", err->text)});
        auto it = pending_.find(request_id);
        if (it == pending_.end() || !it->second.sent)
          return fail({wire_errc::not_allowed,
                       fmt::format("a {} frame answers request {}, which is not pending",
                                   to_string(type_of(msg)), request_id)});
        auto handler = std::move(it->second.on_reply);
        const bool counted = it->second.counted;
        pending_.erase(it);
        if (counted) {
          --in_flight_;
          send_held();
        }
        handler(std::move(msg));
        return;
      }
    }
  }

  void on_close(const wire_error& why) override {
    client_.open = false;
    if (state_ != state::ready) {
      ready.set_value(why.code == wire_errc::closed && state_ == state::proof
                        ? wire_error{wire_errc::auth_failed,
                                     "the server closed the connection during the handshake "
                                     "(a wrong secret?)"}
                        : why);
      state_ = state::ready;  // the promise is set once
      return;
    }
    auto pending = std::move(pending_);
    pending_.clear();
    held_.clear();
    for (auto& [id, w] : pending)
      w.on_reply(why);
    if (client_.on_closed)
      client_.on_closed(why);
  }

 private:
  enum class state { challenge, proof, ready };
  client::impl& client_;
  state state_ = state::challenge;
  nonce server_nonce_{};
  nonce client_nonce_{};
  /// A request awaiting its reply: sent, or held until fewer are in flight.
  struct waiting {
    reply_handler on_reply;
    bool counted;  // against max_in_flight (all but pings)
    bool sent;
  };

  /// Sends held requests, oldest first, while fewer than max_in_flight are out.
  void send_held() {
    while (!held_.empty() && in_flight_ < std::max(1, client_.opts.max_in_flight) && !closed()) {
      auto [id, bytes] = std::move(held_.front());
      held_.pop_front();
      auto it = pending_.find(id);
      if (it == pending_.end())
        continue;
      it->second.sent = true;
      ++in_flight_;
      queue(std::move(bytes));
    }
  }

  std::unordered_map<uint32_t, waiting> pending_;
  std::deque<std::pair<uint32_t, std::vector<uint8_t>>> held_;
  int in_flight_ = 0;
};

client::client(std::shared_ptr<impl> p) : impl_(std::move(p)) {}

result<std::unique_ptr<client>> client::connect(client_options opts,
                                                std::function<void(const wire_error&)> on_close) {
  auto p = std::make_shared<impl>();
  p->opts = std::move(opts);
  p->on_closed = std::move(on_close);
  auto& o = p->opts;
  if (o.tls.enabled()) {
    try {
      configure_tls(p->tls_context, o.tls, "wire client");
    } catch (const std::exception& e) {
      return wire_error{wire_errc::auth_failed, e.what()};
    }
  }
  asio::error_code ec;
  tcp::resolver resolver(p->io);
  auto endpoints = resolver.resolve(o.host, std::to_string(o.port), ec);
  if (ec)
    return wire_error{wire_errc::io, fmt::format("cannot resolve '{}': {}", o.host, ec.message())};
  p->conn = std::make_shared<impl::connection>(*p, tcp::socket(p->io));
  auto ready = p->conn->ready.get_future();
  asio::post(p->io, [conn = p->conn, endpoints] { conn->start(endpoints); });
  p->thread = std::thread([p] { p->io.run(); });
  auto why = ready.get();
  if (why.code != wire_errc::closed || !why.text.empty()) {
    auto c = std::unique_ptr<client>(new client(p));
    c->close();
    return why;
  }
  return std::unique_ptr<client>(new client(p));
}

client::~client() { close(); }

void client::request(message msg, reply_handler on_reply) {
  if (impl_->closing)
    return on_reply(wire_error{wire_errc::closed, "the client is closed"});
  uint32_t id = impl_->next_request++;
  if (id == 0)
    id = impl_->next_request++;
  asio::post(impl_->io, [p = impl_, id, msg = std::move(msg), on_reply = std::move(on_reply)]() mutable {
    p->conn->request(id, msg, std::move(on_reply));
  });
}

result<message> client::call(message msg, int timeout_ms) {
  auto promise = std::make_shared<std::promise<result<message>>>();
  auto future = promise->get_future();
  request(std::move(msg), [promise](result<message> r) { promise->set_value(std::move(r)); });
  if (future.wait_for(milliseconds(timeout_ms)) != std::future_status::ready)
    return wire_error{wire_errc::timed_out, fmt::format("no reply within {} ms", timeout_ms)};
  return future.get();
}

bool client::is_open() const { return impl_->open; }

void client::close() {
  if (!impl_->thread.joinable())
    return;
  impl_->closing = true;
  shut_down(impl_->io, impl_->thread, [p = impl_] {
    if (p->conn)
      p->conn->fail({wire_errc::closed, "closed by the client"});
  });
}

} // namespace ceco::wire
