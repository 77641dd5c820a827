// ceco serve: the edge as an OpenAI-compatible HTTP endpoint. Each
// completion is one edge session in policy.mode, against `ceco cloud` at
// cloud.host:cloud.port, or against a cloud site in this process
// (--local-cloud). Serves until SIGINT or SIGTERM.
//
//   ceco serve --local-cloud --port 8080
//   curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json'
//        -d '{"model": "kjv", "messages": [{"role": "user", "content": "And God said"}]}'

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/deployment.hpp"
#include "actors/edge_session.hpp"
#include "actors/network.hpp"
#include "apps/commands.hpp"
#include "apps/openai_server.hpp"
#include "apps/report.hpp"
#include "apps/sessions.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct serve_args : edge_front_args {
  std::string api_key_file;
  serve_options server;
};

/// The API key: --api-key, else the first line of --api-key-file, else
/// $CECO_API_KEY; "" for none.
std::string api_key_of(const serve_args& a) {
  std::string key = a.server.api_key;
  const char* origin = "--api-key";
  if (!a.api_key_file.empty()) {
    std::ifstream in(a.api_key_file);
    if (!in)
      throw config_error(fmt::format("--api-key-file {}: cannot be read", a.api_key_file));
    std::getline(in, key);
    origin = "--api-key-file";
  } else if (key.empty()) {
    if (const char* env = std::getenv("CECO_API_KEY"))
      key = env;
    origin = "CECO_API_KEY";
  }
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t'))
    key.pop_back();
  if (key.empty() && origin != std::string("CECO_API_KEY"))
    throw config_error(fmt::format("{}{}: the key is empty", origin,
                                   a.api_key_file.empty() ? "" : " " + a.api_key_file));
  for (char c : key)
    if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e)
      throw config_error(fmt::format("{}: the key holds a space or a control character; it is "
                                     "sent in an HTTP header as 'Bearer KEY'",
                                     origin));
  return key;
}

void run_serve(serve_args a) {
  a.server.api_key = api_key_of(a);
  // A server answers people: its link adds no simulated delay, against a
  // real cloud or one in this process, unless the file or --set asks.
  auto s = load_settings(a.config, a.sets, real_network_defaults());
  // Signals go to sigwait below, not to CAF's or the server's threads.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that goes away fails a write, not the server

  set_compute_threads(1);
  check_clock(s, false);  // a server answers in real time
  auto m = load_site_model(s, default_model_path(), default_exit_heads_path());
  std::string why;
  const auto chat = choose_chat_format(a.server, m.vocab, why);
  if (auto missing = missing_chat_markers(chat, m.vocab); !missing.empty()) {
    std::string list;
    for (auto& x : missing)
      list += (list.empty() ? "" : ", ") + x;
    fmt::print(stderr, "ceco serve: WARNING: chat template {}: {} {} of the model's vocabulary; "
                       "the template becomes plain text the model was not tuned on "
                       "(--chat-template plain, or a model of that family)\n",
               to_string(chat), list,
               missing.size() == 1 ? "is not a special token" : "are not special tokens");
  }
  caf::actor_system_config cfg;
  configure_edge_front(cfg, s, a);
  caf::actor_system sys{cfg};
  auto edge = start_edge_front(sys, s, m, a);
  auto metrics = std::make_shared<edge_metrics>(s.model.exits);
  if (a.local_cloud)
    metrics->add(std::make_shared<cloud_collector>(sys, edge->contexts()));
  openai_server server(sys, *edge, s, m, a.server, chat, metrics);
  const int port = server.bind();
  // The port ends the first line: scripts read it after the last ':'.
  fmt::print("ceco serve: listening on {}:{}\n", a.server.host, port);
  fmt::print("ceco serve: model '{}' ({}), mode {}, cloud {}, chat template {} ({}), at most {} "
             "completions at once and {} queued, link: {}, API key: {}\n",
             server.model_id(), m.path, to_string(s.policy.mode),
             cloud_location(s, a),
             to_string(chat), why, a.server.max_concurrent, a.server.queue,
             describe_link_delay(s),
             a.server.api_key.empty() ? "none (every request is served)"
             : a.server.protect_health ? "required on every path"
                                       : "required (/health and /metrics open)");
  std::cout.flush();
  std::thread http([&] { server.run(); });
  int sig = 0;
  sigwait(&stop, &sig);
  fmt::print("ceco serve: {} received: new requests get 503, completions in flight have {} s "
             "to finish\n",
             sig == SIGINT ? "SIGINT" : "SIGTERM", a.server.drain_timeout_s);
  std::cout.flush();
  const int ended = server.drain(a.server.drain_timeout_s);
  if (ended > 0)
    fmt::print("ceco serve: {} completions still running after {} s were ended\n", ended,
               a.server.drain_timeout_s);
  fmt::print("ceco serve: shut down\n");
  std::cout.flush();
  server.stop();
  http.join();
}

} // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<serve_args>();
  auto* cmd = app.add_subcommand(
    "serve", "serve the edge as an OpenAI-compatible HTTP endpoint (/v1/chat/completions, "
             "/v1/completions, /v1/models, /health, /metrics): each completion is one edge "
             "session in policy.mode, against `ceco cloud` at cloud.host:cloud.port or a cloud "
             "in this process (--local-cloud)");
  add_edge_front_options(cmd, *a);
  cmd->add_option("--host", a->server.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", a->server.port, "port to listen on (0: any free port, printed)")
    ->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--chat-template", a->server.chat_template,
                  "chat prompt format: " + chat_format_names() +
                    " (default: recognised from the model's tokenizer.chat_template, else plain)");
  cmd->add_option("--max-concurrent", a->server.max_concurrent,
                  "completions generated at once; more wait in the queue (--queue)")
    ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--queue", a->server.queue,
                  "completions that wait, first come first served, for a place beyond "
                  "--max-concurrent; past it a request is answered 429 with Retry-After "
                  "(0: no queue). A waiting client that hangs up leaves the queue")
    ->capture_default_str()->check(CLI::Range(0, 4096));
  auto* key = cmd->add_option("--api-key", a->server.api_key,
                              "every request must carry 'Authorization: Bearer KEY', else 401 "
                              "(default: $CECO_API_KEY; none: every request is served)");
  cmd->add_option("--api-key-file", a->api_key_file,
                  "as --api-key, the key being the file's first line (kept out of the "
                  "process list)")
    ->excludes(key);
  cmd->add_flag("--protect-health", a->server.protect_health,
                "with an API key, /health and /metrics need it too (default: they are open)");
  cmd->add_option("--access-log", a->server.access_log,
                  "one line per request (time, client address, method, path, status, prompt "
                  "and completion tokens, ms, mode) appended to FILE; '-' is stderr, '' none")
    ->capture_default_str();
  cmd->add_option("--drain-timeout-s", a->server.drain_timeout_s,
                  "on SIGTERM or SIGINT new requests get 503 and completions in flight have "
                  "this many seconds to finish; those still running are then ended")
    ->capture_default_str()->check(CLI::Range(0, 3600));
  cmd->add_option("--max-connections", a->server.max_connections,
                  "HTTP connections open at once; past it the one that has waited longest for "
                  "its request is closed, or the new one is answered 503")
    ->capture_default_str()->check(CLI::Range(1, 100000));
  cmd->add_option("--header-timeout-ms", a->server.header_timeout_ms,
                  "a request's line and headers must arrive within this many ms of their first "
                  "byte, else the connection is closed")
    ->capture_default_str()->check(CLI::Range(100, 3600000));
  cmd->add_option("--body-timeout-ms", a->server.body_timeout_ms,
                  "a request's body must arrive within this many ms of its headers")
    ->capture_default_str()->check(CLI::Range(100, 3600000));
  cmd->add_option("--model-id", a->server.model_id,
                  "the model's id in the API (default: the model file's name)");
  cmd->callback([a] { run_serve(*a); });
}

} // namespace ceco::app
