#include "apps/openai_server.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <filesystem>
#include <functional>
#include <random>
#include <thread>

#include <malloc.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>
#include <fmt/format.h>

#include "apps/generation.hpp"
#include "apps/http_front.hpp"
#include "apps/json_text.hpp"
#include "apps/openai_api.hpp"
#include "apps/report.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

using nlohmann::json;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Tokens the full model never checked: in exact mode those the cloud could
/// not verify (it was lost); otherwise every exit's token (cloud and naive
/// tokens, and drafts the cloud accepted, are the full model's).
int64_t unverified_tokens(const response_report& r) {
  if (r.mode == strategy::exact)
    return r.unverified_tokens;
  return int64_t(r.tokens.size()) - r.cloud_tokens;
}

/// ceco's figures of one response, as `ceco sim --json` gives them, less
/// the prompt and text the response already carries.
json ceco_json(const response_report& r, const sampler_options& sampling) {
  auto j = report_json(r, {}, {}, 0);
  for (const char* key : {"prompt", "text", "tokens", "formula_bytes_up"})
    j.erase(key);
  j["tokens_per_exit"] = j["exits"];
  j.erase("exits");
  j["unverified_tokens"] = unverified_tokens(r);
  // What losing the cloud did to this response (policy.on_cloud_loss).
  j["cloud_loss"] = r.degraded_tokens > 0 ? "degraded" : r.resumed > 0 ? "resumed" : "none";
  if (samples(sampling))
    j["sampling"] = {{"temperature", sampling.temperature}, {"top_k", sampling.top_k},
                     {"top_p", sampling.top_p}, {"seed", sampling.seed}};
  else
    j["sampling"] = "greedy";
  return j;
}

/// What the access log says of the request this thread serves, beyond what
/// httplib's request and response carry (a stream's tokens come after its
/// handler returned, on the same thread).
struct request_note {
  clock_type::time_point start{};
  bool completion = false;
  int prompt_tokens = -1;
  int completion_tokens = -1;
  int status = 0;  // overrides the response's (a stream its client left: 499)
};
thread_local request_note note;

/// The endpoint label of a path in the metrics: a route, or "other".
std::string endpoint_of(const std::string& path) {
  for (const char* known : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                            "/metrics"})
    if (path == known)
      return known;
  if (path.rfind("/v1/models/", 0) == 0)
    return "/v1/models";
  return "other";
}

/// A client that hung up while its request waited in the queue.
struct client_left {};

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}", prefix, rng());
}

/// A request checked and tokenized, ready to run.
struct prepared {
  completion_request req;
  std::vector<int32_t> prompt;
  int max_tokens = 0;
  std::vector<std::string> stop;
  sampler_options sampling;
  clock_type::time_point received;
};

} // namespace

bool bearer_matches(const std::string& header, const std::string& key) {
  static const std::string scheme = "Bearer ";
  if (key.empty())
    return false;
  bool ok = header.size() == scheme.size() + key.size();
  // Every byte of the key is looked at whatever the header holds, so the
  // time tells nothing of how much of a guess was right.
  unsigned diff = 0;
  for (size_t i = 0; i < scheme.size(); ++i)
    diff |= unsigned(uint8_t(i < header.size() ? header[i] : 0) ^ uint8_t(scheme[i]));
  for (size_t i = 0; i < key.size(); ++i) {
    const size_t at = scheme.size() + i;
    diff |= unsigned(uint8_t(at < header.size() ? header[at] : 0) ^ uint8_t(key[i]));
  }
  return ok && diff == 0;
}

chat_format choose_chat_format(const serve_options& o, const tokenizer& vocab, std::string& why) {
  if (!o.chat_template.empty()) {
    auto f = parse_chat_format(o.chat_template);
    if (!f)
      throw config_error(fmt::format("--chat-template {}: not a built-in template (expected {})",
                                     o.chat_template, chat_format_names()));
    why = "chosen by --chat-template";
    return *f;
  }
  if (vocab.chat_template().empty()) {
    why = "the model has no tokenizer.chat_template";
    return chat_format::plain;
  }
  if (auto f = recognise_chat_template(vocab.chat_template())) {
    why = "recognised in the model's tokenizer.chat_template";
    return *f;
  }
  why = "the model's tokenizer.chat_template is none of the built-in ones (--chat-template "
        "chooses one)";
  return chat_format::plain;
}

std::string model_id_of(const std::string& path) {
  std::filesystem::path p(path);
  auto stem = p.stem().string();
  if ((stem == "model" || stem.empty()) && p.has_parent_path())
    return p.parent_path().filename().string();
  return stem;
}

struct openai_server::impl {
  caf::actor_system& sys;
  deployment& edge;
  settings s;
  const site_model& m;
  serve_options o;
  chat_format chat;
  std::shared_ptr<edge_metrics> metrics;
  std::string id;
  int64_t created = int64_t(std::time(nullptr));
  std::atomic<int> in_flight{0};
  // The places of --max-concurrent and the queue before them, first come
  // first served: a waiting request holds a ticket until its turn.
  std::mutex place_mutex;
  std::condition_variable place_cv;
  std::deque<uint64_t> waiting;
  uint64_t next_ticket = 0;
  std::atomic<bool> draining{false};   // SIGTERM: new requests get 503
  std::atomic<bool> aborting{false};   // the drain's time is up: end what still runs
  std::mutex log_mutex;
  FILE* access_log = nullptr;
  http_front http;
  socket_t listen_socket = INVALID_SOCKET;
  size_t longest_token = 4;  // bytes of text one token can stand for, at most

  impl(caf::actor_system& sys, deployment& edge, const settings& s, const site_model& m,
       serve_options o, chat_format chat, std::shared_ptr<edge_metrics> metrics)
    : sys(sys), edge(edge), s(s), m(m), o(std::move(o)), chat(chat), metrics(std::move(metrics)),
      http(limits_of(this->o)) {
    id = this->o.model_id.empty() ? model_id_of(m.path) : this->o.model_id;
    // Memory of a large request goes back when it is freed: blocks of 256 KiB
    // or more are mapped and unmapped, and a thread's arena keeps at most
    // 1 MiB free at its top. glibc's defaults adapt upwards to the largest
    // block freed (up to 32 MiB mapped, 64 MiB kept per arena), so 8 MiB
    // bodies on a few worker threads stayed resident request after request.
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
    // A piece is never shorter than the text it matches ("\xe2\x96\x81" for a space,
    // byte-level BPE's characters for bytes, "<0x41>" for a byte, "<unk>" for a
    // character of up to 4 bytes).
    for (int32_t t = 0; t < m.vocab.vocab_size(); ++t)
      longest_token = std::max(longest_token, m.vocab.piece(t).size());
    if (this->o.access_log == "-") {
      access_log = stderr;
    } else if (!this->o.access_log.empty()) {
      access_log = std::fopen(this->o.access_log.c_str(), "a");
      if (!access_log)
        throw config_error(fmt::format("--access-log {}: cannot open for appending: {}",
                                       this->o.access_log, std::strerror(errno)));
    }
  }
  ~impl() {
    if (access_log && access_log != stderr)
      std::fclose(access_log);
  }

  static http_limits limits_of(const serve_options& o) {
    http_limits l;
    l.header_timeout_ms = o.header_timeout_ms;
    l.body_timeout_ms = o.body_timeout_ms;
    l.max_connections = o.max_connections;
    l.max_body_bytes = max_request_bytes;
    // A streamed response holds its thread for its whole length, and a
    // queued one while it waits: room for every completion, every queued
    // one and the quick requests beside them.
    l.workers = o.max_concurrent * 2 + o.queue + 8;
    return l;
  }

  int max_seq() const { return m.model->config().max_seq; }

  int queued() {
    std::lock_guard<std::mutex> lock(place_mutex);
    return int(waiting.size());
  }

  /// The error object with its status.
  void reply_error(httplib::Response& res, const api_error& e, const std::string& endpoint) {
    res.status = e.status;
    if (e.status == 429)
      res.set_header("Retry-After", "1");
    res.set_content(json_text(error_json(e)), "application/json");
    metrics->request(endpoint_of(endpoint), e.status);
  }

  static api_error shutting_down() {
    return api_error(503, "server_error",
                     "the server is shutting down and takes no new requests", {},
                     "shutting_down");
  }

  /// Holds one of the --max-concurrent places while a completion runs.
  struct place {
    impl* server;
    explicit place(impl* s) : server(s) {}
    ~place() {
      std::lock_guard<std::mutex> lock(server->place_mutex);
      server->metrics->in_flight(--server->in_flight);
      server->place_cv.notify_all();
    }
  };

  /// A place now, else a turn in the queue (first come, first served),
  /// else 429. A queued request whose client hangs up leaves the queue
  /// (client_left); one still queued when the server drains gets 503.
  std::unique_ptr<place> take_place() {
    std::unique_lock<std::mutex> lock(place_mutex);
    if (draining)
      throw shutting_down();
    if (in_flight < o.max_concurrent && waiting.empty()) {
      metrics->in_flight(++in_flight);
      return std::make_unique<place>(this);
    }
    if (int(waiting.size()) >= o.queue)
      throw api_error(429, "rate_limit_error",
                      fmt::format("{} completions are being generated (--max-concurrent {}) and "
                                  "{} wait for a place (--queue {}); retry later",
                                  in_flight.load(), o.max_concurrent, waiting.size(), o.queue),
                      {}, "rate_limit_exceeded");
    const uint64_t ticket = next_ticket++;
    waiting.push_back(ticket);
    metrics->queued(int(waiting.size()));
    auto leave = [&] {
      waiting.erase(std::find(waiting.begin(), waiting.end(), ticket));
      metrics->queued(int(waiting.size()));
      place_cv.notify_all();
    };
    while (!(waiting.front() == ticket && in_flight < o.max_concurrent)) {
      place_cv.wait_for(lock, std::chrono::milliseconds(100));
      if (draining) {
        leave();
        throw shutting_down();
      }
      if (!http_front::client_connected()) {
        leave();
        metrics->cancelled("disconnect");
        throw client_left{};
      }
    }
    leave();
    metrics->in_flight(++in_flight);
    return std::make_unique<place>(this);
  }

  /// Text past the context is refused before it is tokenized: a token stands
  /// for at most `longest_token` bytes, so a longer text has more tokens
  /// than the context holds.
  std::vector<int32_t> encode_bounded(const std::string& text, bool special,
                                      const char* param) const {
    const size_t bound = size_t(max_seq()) * longest_token;
    if (text.size() > bound)
      throw bad_request(fmt::format("This model's maximum context length is {} tokens; the "
                                    "prompt has {} bytes, so at least {} tokens (a token is at "
                                    "most {} bytes)",
                                    max_seq(), text.size(), text.size() / longest_token,
                                    longest_token),
                        param, "context_length_exceeded");
    return m.vocab.encode(text, true, special);
  }

  /// Checks the request and tokenizes its prompt; the cheap checks (the
  /// model, the cloud) come before the tokenizer.
  prepared prepare(const std::string& body, bool is_chat) {
    prepared p;
    p.received = clock_type::now();
    p.req = parse_completion_request(body, is_chat);
    if (p.req.model != id)
      throw api_error(404, "invalid_request_error",
                      fmt::format("The model '{}' does not exist; this server serves '{}'",
                                  p.req.model, id),
                      "model", "model_not_found");
    if (needs_cloud(s.policy.mode) && edge.link_epoch() < 0)
      throw api_error(503, "server_error",
                      fmt::format("the cloud is unreachable and mode '{}' has every token from "
                                  "it; retry once it is back",
                                  to_string(s.policy.mode)),
                      {}, "cloud_unavailable");
    const auto& vocab = m.vocab;
    if (is_chat) {
      p.prompt = encode_bounded(render_chat(chat, p.req.messages), true, "messages");
      p.stop = chat_stop_strings(chat);
    } else if (p.req.prompt) {
      p.prompt = encode_bounded(*p.req.prompt, false, "prompt");
    } else {
      for (size_t i = 0; i < p.req.prompt_tokens.size(); ++i) {
        auto t = p.req.prompt_tokens[i];
        if (t < 0 || t >= vocab.vocab_size())
          throw bad_request(fmt::format("prompt[{}] is token {}, the vocabulary has ids 0..{}", i,
                                        t, vocab.vocab_size() - 1),
                            "prompt");
      }
      p.prompt.assign(p.req.prompt_tokens.begin(), p.req.prompt_tokens.end());
    }
    p.stop.insert(p.stop.end(), p.req.stop.begin(), p.req.stop.end());
    if (p.prompt.empty())
      throw bad_request("the prompt has no tokens", is_chat ? "messages" : "prompt");
    const int n = int(p.prompt.size());
    if (n >= max_seq())
      throw bad_request(fmt::format("This model's maximum context length is {} tokens; the "
                                    "prompt has {}, which leaves no room for a completion",
                                    max_seq(), n),
                        is_chat ? "messages" : "prompt", "context_length_exceeded");
    if (p.req.max_tokens && *p.req.max_tokens > max_seq() - n)
      throw bad_request(fmt::format("This model's maximum context length is {} tokens. However, "
                                    "you requested {} tokens ({} in the prompt, {} for the "
                                    "completion)",
                                    max_seq(), uint64_t(n) + uint64_t(*p.req.max_tokens), n,
                                    *p.req.max_tokens),
                        "max_tokens", "context_length_exceeded");
    p.max_tokens = p.req.max_tokens ? int(*p.req.max_tokens) : max_seq() - n;
    p.sampling = sampling_of(p.req);
    return p;
  }

  /// A request's sampling: each field it sets, else the server's
  /// sampling.*. The seed: the request's, else the server's when set
  /// (non-zero), else a new one per response, as OpenAI's API does.
  sampler_options sampling_of(const completion_request& r) const {
    const auto& d = s.sampling;
    sampler_options o{float(r.temperature.value_or(d.temperature)), d.top_k,
                      float(r.top_p.value_or(d.top_p)), uint64_t(d.seed)};
    if (r.top_k)  // -1 and 0: no limit
      o.top_k = int(std::clamp<int64_t>(*r.top_k, 0, m.vocab.vocab_size()));
    if (r.seed)
      o.seed = uint64_t(*r.seed);
    else if (d.seed == 0 && samples(o))
      o.seed = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
    return o;
  }

  /// Runs `p`: `emit` gets each piece of text as it may be sent and says
  /// whether the client still listens; `idle` is asked after a second without
  /// a token (false: the client is gone). Returns the response; a failed
  /// session is an api_error in `failure`.
  completion_result run(const prepared& p, const std::function<bool(const std::string&)>& emit,
                        const std::function<bool()>& idle, std::optional<api_error>& failure) {
    completion_result out;
    out.id = random_id(p.req.chat ? "chatcmpl-" : "cmpl-");
    out.created = int64_t(std::time(nullptr));
    out.model = id;
    out.prompt_tokens = int(p.prompt.size());
    generation g(sys, edge, p.prompt, s.policy.mode, p.max_tokens, p.sampling);
    text_stream text(m.vocab, p.prompt.back(), p.stop);
    bool first = true, gone = false;
    int used = 0;  // tokens up to the end of the response (a stop included)
    auto client_gone = [&] {
      gone = true;
      g.cancel();
      metrics->cancelled("disconnect");
    };
    auto last_event = clock_type::now();
    bool shut = false;
    while (!g.done()) {
      auto e = g.next(std::chrono::milliseconds(200));
      if (!shut && !gone && aborting) {  // the drain's time is up
        shut = true;
        g.cancel();
        metrics->cancelled("shutdown");
      }
      // A client that hung up is seen within 200 ms, streamed or not.
      if (!gone && !http_front::client_connected()) {
        client_gone();
        continue;
      }
      if (e.what == generation::event::kind::idle) {
        if (!gone && seconds_since(last_event) >= 1.0) {
          last_event = clock_type::now();
          if (!idle())
            client_gone();
        }
        continue;
      }
      last_event = clock_type::now();
      if (e.what != generation::event::kind::token)
        continue;
      if (first) {
        metrics->first_token(seconds_since(p.received));
        first = false;
      }
      if (e.rtt_us >= 0)
        metrics->cloud_round_trip(double(e.rtt_us) / 1e6);
      if (gone || text.stopped())
        continue;
      ++used;
      auto piece = text.push(e.token);
      if (!piece.empty() && !emit(piece)) {
        client_gone();
        continue;
      }
      if (text.stopped()) {
        g.cancel();
        metrics->cancelled("stop");
      }
    }
    const auto& r = g.report();
    metrics->response(r);
    if (!text.stopped() && !gone) {
      auto rest = text.finish();
      if (!rest.empty())
        emit(rest);
    }
    out.text = text.sent();
    out.completion_tokens = text.stopped() ? used : int(r.tokens.size());
    if (text.stopped())
      out.finish_reason = "stop";
    else if (int(r.tokens.size()) >= p.max_tokens
             || int(p.prompt.size() + r.tokens.size()) >= max_seq())
      out.finish_reason = "length";
    else
      out.finish_reason = "stop";
    out.ceco = ceco_json(r, p.sampling);
    note.prompt_tokens = out.prompt_tokens;
    note.completion_tokens = out.completion_tokens;
    if (shut)
      failure = api_error(503, "server_error",
                          fmt::format("the server shut down before the response was complete "
                                      "({} tokens generated)",
                                      out.completion_tokens),
                          {}, "shutting_down");
    else if (!r.error.empty() && !g.cancelled())
      failure = api_error(503, "server_error", "the response failed: " + r.error, {},
                          r.error.find("cloud_unreachable") != std::string::npos
                            ? "cloud_unavailable"
                            : "generation_failed");
    return out;
  }

  void completion(const httplib::Request& req, httplib::Response& res, bool is_chat) {
    const std::string endpoint = is_chat ? "/v1/chat/completions" : "/v1/completions";
    prepared p;
    std::unique_ptr<place> held;
    note.completion = true;
    try {
      held = take_place();  // before any work on the request
      p = prepare(req.body, is_chat);
      note.prompt_tokens = int(p.prompt.size());
    } catch (const client_left&) {
      res.status = 499;  // nobody reads it: the connection is gone
      metrics->request(endpoint, 499);
      return;
    } catch (const api_error& e) {
      return reply_error(res, e, endpoint);
    } catch (const model_error& e) {  // the deployment refused the session's options
      return reply_error(res, bad_request(e.what()), endpoint);
    }
    if (!p.req.stream) {
      std::optional<api_error> failure;
      std::string text;
      auto r = run(p, [&](const std::string& piece) { return text += piece, true; },
                   [] { return true; }, failure);
      if (failure)
        return reply_error(res, *failure, endpoint);
      res.set_content(json_text(completion_json(is_chat, r)), "application/json");
      metrics->request(endpoint, 200);
      return;
    }
    // Streamed: the session starts once the headers are out, on this thread.
    auto shared = std::make_shared<std::pair<prepared, std::unique_ptr<place>>>(std::move(p),
                                                                               std::move(held));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
      "text/event-stream", [this, shared, is_chat, endpoint](size_t, httplib::DataSink& sink) {
        const auto& p = shared->first;
        bool ok = true;
        auto send = [&](const json& j) {
          auto event = "data: " + json_text(j) + "\n\n";
          return ok = ok && sink.write(event.data(), event.size());
        };
        completion_result head;
        head.id = random_id(is_chat ? "chatcmpl-" : "cmpl-");
        head.created = int64_t(std::time(nullptr));
        head.model = id;
        bool first = true;
        std::optional<api_error> failure;
        completion_result r;
        try {
          r = run(
            p,
            [&](const std::string& piece) {
              bool sent = send(chunk_json(is_chat, head, piece, first, std::nullopt));
              first = false;
              return sent;
            },
            [&] {
              static const std::string ping = ": ping\n\n";  // an SSE comment
              return ok = ok && sink.write(ping.data(), ping.size());
            },
            failure);
        } catch (const std::exception& e) {  // the headers are out: an error event
          failure = api_error(500, "server_error", std::string("internal error: ") + e.what());
        }
        shared->second.reset();  // the session is over: its place is free before the client hears
        if (failure) {
          send(error_json(*failure));
        } else {
          r.id = head.id;
          r.created = head.created;
          auto last = chunk_json(is_chat, r, {}, first, r.finish_reason);
          last["usage"] = usage_json(r);
          last["ceco"] = r.ceco;
          send(last);
          if (p.req.include_usage) {
            auto usage = chunk_json(is_chat, r, {}, false, std::nullopt);
            usage["choices"] = json::array();
            usage["usage"] = usage_json(r);
            send(usage);
          }
        }
        static const std::string done = "data: [DONE]\n\n";
        if (ok && sink.write(done.data(), done.size()))
          sink.done();
        metrics->request(endpoint, ok ? 200 : 499);
        if (!ok)
          note.status = 499;
        return ok;
      });
  }

  json model_json() const {
    return {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "ceco"}};
  }

  void routes() {
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      completion(req, res, true);
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      completion(req, res, false);
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(json_text({{"object", "list"}, {"data", json::array({model_json()})}}),
                      "application/json");
      metrics->request("/v1/models", 200);
    });
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.matches[1] != id)
        return reply_error(res,
                           api_error(404, "invalid_request_error",
                                     fmt::format("The model '{}' does not exist; this server "
                                                 "serves '{}'",
                                                 req.matches[1].str(), id),
                                     "model", "model_not_found"),
                           "/v1/models");
      res.set_content(json_text(model_json()), "application/json");
      metrics->request("/v1/models", 200);
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const bool local = bool(edge.contexts());
      const auto epoch = edge.link_epoch();
      const bool ok = !(needs_cloud(s.policy.mode) && epoch < 0);
      res.status = ok ? 200 : 503;
      res.set_content(json_text({{"status", ok ? "ok" : "unavailable"},
                                 {"model", id},
                                 {"mode", to_string(s.policy.mode)},
                                 {"cloud", local ? "local" : epoch >= 0 ? "up" : "down"},
                                 {"in_flight", in_flight.load()},
                                 {"queued", queued()},
                                 {"max_concurrent", o.max_concurrent},
                                 {"chat_template", to_string(chat)},
                                 {"link_delay", describe_link_delay(s)}}),
                      "application/json");
    });
    // The API key, and a server shutting down, before any route.
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      note = request_note{};
      note.start = clock_type::now();
      const bool open = !o.protect_health && (req.path == "/health" || req.path == "/metrics");
      if (!o.api_key.empty() && !open) {
        const auto header = req.get_header_value("Authorization");
        if (!bearer_matches(header, o.api_key)) {
          res.set_header("WWW-Authenticate", "Bearer");
          reply_error(res,
                      api_error(401, "invalid_request_error",
                                header.empty()
                                  ? "You didn't provide an API key: send it in the "
                                    "Authorization header as 'Bearer KEY'"
                                  : "Incorrect API key provided in the Authorization header",
                                {}, "invalid_api_key"),
                      req.path);
          return httplib::Server::HandlerResponse::Handled;
        }
      }
      if (draining && req.path != "/metrics") {
        reply_error(res, shutting_down(), req.path);
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // One line per request, once its response (a whole stream) is written.
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      auto n = note;
      note = request_note{};
      if (!access_log)
        return;
      const double ms = n.start == clock_type::time_point{}
                          ? 0.0
                          : seconds_since(n.start) * 1000.0;
      auto count = [](int v) { return v < 0 ? std::string("-") : std::to_string(v); };
      char when[32] = {};
      const std::time_t t = std::time(nullptr);
      std::tm utc{};
      gmtime_r(&t, &utc);
      std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &utc);
      auto line = fmt::format(
        "{} client={}:{} method={} path={} status={} prompt_tokens={} completion_tokens={} "
        "ms={:.1f} mode={}\n",
        when, req.remote_addr, req.remote_port, req.method, req.path,
        n.status ? n.status : res.status, count(n.prompt_tokens), count(n.completion_tokens), ms,
        n.completion ? to_string(s.policy.mode) : "-");
      std::lock_guard<std::mutex> lock(log_mutex);
      std::fputs(line.c_str(), access_log);
      std::fflush(access_log);
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      metrics->link(edge.link_epoch());
      res.set_content(metrics->text(), "text/plain; version=0.0.4; charset=utf-8");
    });
    // Anything else, and a body the routes left empty: an OpenAI error object.
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty())
        return;
      const bool missing = res.status == 404;
      res.set_content(
        json_text(error_json(api_error(
          res.status, "invalid_request_error",
          missing ? fmt::format("no route {} {}", req.method, req.path)
                  : fmt::format("{} {}: HTTP status {}", req.method, req.path, res.status)))),
        "application/json");
    });
    http.set_exception_handler(
      [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        reply_error(res, api_error(500, "server_error", "internal error: " + what), req.path);
      });
    // The library listens with a backlog of 5: a burst of clients would wait
    // a second for a SYN retransmit. Keep the socket to listen again, longer.
    http.set_socket_options([this](socket_t sock) {
      set_listen_options(sock);
      listen_socket = sock;
    });
  }
};

openai_server::openai_server(caf::actor_system& sys, deployment& edge, const settings& s,
                             const site_model& m, serve_options o, chat_format chat,
                             std::shared_ptr<edge_metrics> metrics)
  : impl_(std::make_unique<impl>(sys, edge, s, m, std::move(o), chat, std::move(metrics))) {
  impl_->routes();
}

openai_server::~openai_server() = default;


int openai_server::bind() {
  const auto& o = impl_->o;
  int port = o.port == 0 ? impl_->http.bind_to_any_port(o.host)
                         : (impl_->http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port <= 0)
    throw config_error(fmt::format("serve: cannot listen on {}:{}: {}", o.host, o.port,
                                   bind_failure(o.host, o.port)));
  if (impl_->listen_socket != INVALID_SOCKET)
    ::listen(impl_->listen_socket, 1024);  // Linux takes the new backlog
  return port;
}

void openai_server::run() {
  impl_->http.listen_after_bind();
  impl_->http.shut_down();
}

int openai_server::drain(int timeout_s) {
  auto& i = *impl_;
  {
    std::lock_guard<std::mutex> lock(i.place_mutex);
    i.draining = true;
    i.place_cv.notify_all();  // the queued get 503
  }
  const auto until = clock_type::now() + std::chrono::seconds(timeout_s);
  auto busy = [&] {
    std::lock_guard<std::mutex> lock(i.place_mutex);
    return i.in_flight.load() + int(i.waiting.size());
  };
  while (busy() > 0 && clock_type::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int ended = i.in_flight.load();
  if (busy() > 0) {
    i.aborting = true;
    // A session ends within a step of being cancelled; its stream then
    // carries an error event.
    const auto last = clock_type::now() + std::chrono::seconds(5);
    while (busy() > 0 && clock_type::now() < last)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ended;
}

void openai_server::stop() {
  impl_->http.stop();
}

const std::string& openai_server::model_id() const {
  return impl_->id;
}

} // namespace ceco::app
