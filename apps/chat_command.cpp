// ceco chat: a conversation in the terminal, as `llama-cli -cnv` and
// `ollama run` offer. Each line read from stdin is a user turn; the reply is
// one edge session (policy.mode, changed with /mode) over the whole history
// rendered by the chat template, its text printed as its tokens come. Works
// the same piped (`printf 'hi\n/quit\n' | ceco chat --local-cloud`) and in a
// terminal (a "> " prompt then).
//
//   /reset           forget the conversation (the system prompt stays)
//   /mode STRATEGY   cloud, naive, standalone, collaborative, speculative, exact
//   /quit            (or end of input)

#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/deployment.hpp"
#include "actors/edge_session.hpp"
#include "actors/network.hpp"
#include "apps/chat_templates.hpp"
#include "apps/commands.hpp"
#include "apps/generation.hpp"
#include "apps/openai_api.hpp"
#include "apps/openai_server.hpp"
#include "apps/sessions.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct chat_args : edge_front_args {
  std::string mode;
  std::string chat_template;
  std::string system;
  int max_tokens = 0;
  bool quiet = false;
};

std::string modes_list() {
  std::string out;
  for (auto& n : strategy_names())
    out += (out.empty() ? "" : ", ") + n;
  return out;
}

/// The prompt tokens of `history` ending where the reply starts, the oldest
/// turns (after a system prompt) left out until `room` tokens are left for
/// the reply; empty when even the last turn alone does not leave them.
std::vector<int32_t> fit_history(chat_format chat, const tokenizer& vocab,
                                 std::vector<chat_message>& history, int max_seq, int room,
                                 int& dropped) {
  dropped = 0;
  const size_t first = !history.empty() && history.front().role == "system" ? 1 : 0;
  for (;;) {
    auto tokens = vocab.encode(render_chat(chat, history), true, true);
    if (int(tokens.size()) + room <= max_seq)
      return tokens;
    if (history.size() <= first + 1)
      return {};
    // A user turn and the reply to it go together.
    history.erase(history.begin() + long(first));
    ++dropped;
    if (history.size() > first + 1 && history[first].role == "assistant") {
      history.erase(history.begin() + long(first));
      ++dropped;
    }
  }
}

void run_chat(const chat_args& a) {
  auto s = load_settings(a.config, a.sets, real_network_defaults());
  if (!a.mode.empty()) {
    auto parsed = parse_strategy(a.mode);
    if (!parsed)
      throw config_error(fmt::format("--mode {}: not a strategy (expected {})", a.mode,
                                     modes_list()));
    s.policy.mode = *parsed;
  }
  std::signal(SIGPIPE, SIG_IGN);
  set_compute_threads(1);
  check_clock(s, false);  // a person waits for the reply in real time
  auto m = load_site_model(s, default_model_path(), default_exit_heads_path());
  serve_options o;
  o.chat_template = a.chat_template;
  std::string why;
  const auto chat = choose_chat_format(o, m.vocab, why);
  caf::actor_system_config cfg;
  configure_edge_front(cfg, s, a);
  caf::actor_system sys{cfg};
  auto edge = start_edge_front(sys, s, m, a);
  const int max_seq = m.model->config().max_seq;
  const bool terminal = ::isatty(0) && ::isatty(1);
  strategy mode = s.policy.mode;
  if (!a.quiet)
    fmt::print(stderr,
               "ceco chat: model {}, mode {}, cloud {}, chat template {} ({}); /reset, /mode "
               "STRATEGY, /quit\n",
               m.path, to_string(mode),
               cloud_location(s, a),
               to_string(chat), why);
  std::vector<chat_message> history;
  auto reset = [&] {
    history.clear();
    if (!a.system.empty())
      history.push_back({"system", a.system});
  };
  reset();
  const auto stops = chat_stop_strings(chat);
  std::string line;
  for (;;) {
    if (terminal) {
      fmt::print("> ");
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line))
      break;
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    if (line.empty())
      continue;
    if (line == "/quit" || line == "/exit" || line == "/bye")
      break;
    if (line == "/reset") {
      reset();
      fmt::print("(the conversation is forgotten)\n");
      std::fflush(stdout);
      continue;
    }
    if (line == "/mode" || line.rfind("/mode ", 0) == 0) {
      auto name = line.size() > 6 ? line.substr(6) : std::string();
      name.erase(0, name.find_first_not_of(' '));
      name.erase(name.find_last_not_of(' ') + 1);
      if (name.empty())
        fmt::print("(mode {}; /mode STRATEGY with one of {})\n", to_string(mode), modes_list());
      else if (auto parsed = parse_strategy(name); !parsed)
        fmt::print("(/mode {}: not a strategy; expected one of {})\n", name, modes_list());
      else
        fmt::print("(mode {})\n", to_string(mode = *parsed));
      std::fflush(stdout);
      continue;
    }
    if (line[0] == '/') {
      fmt::print("({}: not a command; /reset, /mode STRATEGY, /quit)\n", line);
      std::fflush(stdout);
      continue;
    }
    history.push_back({"user", line});
    int dropped = 0;
    const int room = a.max_tokens > 0 ? a.max_tokens : 1;
    auto prompt = fit_history(chat, m.vocab, history, max_seq, room, dropped);
    if (prompt.empty()) {
      history.pop_back();
      fmt::print("(that message leaves no room for a reply in the model's context of {} "
                 "tokens)\n",
                 max_seq);
      std::fflush(stdout);
      continue;
    }
    if (dropped > 0 && !a.quiet)
      fmt::print(stderr, "ceco chat: {} oldest messages left out to fit the context of {} "
                         "tokens\n",
                 dropped, max_seq);
    const int max_tokens = a.max_tokens > 0 ? a.max_tokens : max_seq - int(prompt.size());
    generation g(sys, *edge, prompt, mode, max_tokens);
    text_stream text(m.vocab, prompt.back(), stops);
    while (!g.done()) {
      auto e = g.next(std::chrono::milliseconds(200));
      if (e.what != generation::event::kind::token || text.stopped())
        continue;
      auto piece = text.push(e.token);
      fmt::print("{}", piece);
      std::fflush(stdout);
      if (text.stopped())
        g.cancel();  // the end of the turn: the session need not go on
    }
    if (!text.stopped())
      fmt::print("{}", text.finish());
    fmt::print("\n");
    std::fflush(stdout);
    const auto& r = g.report();
    if (!r.error.empty() && !g.cancelled()) {
      fmt::print(stderr, "ceco chat: the reply failed: {}\n", r.error);
      history.pop_back();
      continue;
    }
    history.push_back({"assistant", text.sent()});
    if (!a.quiet)
      fmt::print(stderr, "[{} tokens, {} from the cloud, {} degraded, {:.0f} ms, mode {}]\n",
                 r.tokens.size(), r.cloud_tokens, r.degraded_tokens, double(r.total_us) / 1e3,
                 to_string(mode));
  }
}

} // namespace

void add_chat_command(CLI::App& app) {
  auto a = std::make_shared<chat_args>();
  auto* cmd = app.add_subcommand(
    "chat", "chat in the terminal: each line of stdin is a message, the reply streams as its "
            "tokens come (history kept, the model's chat template; /reset, /mode STRATEGY, "
            "/quit); each reply is one edge session against `ceco cloud` or a cloud in this "
            "process (--local-cloud)");
  add_edge_front_options(cmd, *a);
  cmd->add_option("--mode", a->mode,
                  "the strategy of the first reply (default: policy.mode); /mode changes it");
  cmd->add_option("--chat-template", a->chat_template,
                  "chat prompt format: " + chat_format_names() +
                    " (default: recognised from the model's tokenizer.chat_template, else plain)");
  cmd->add_option("--system", a->system, "a system message opening the conversation (kept by /reset)");
  cmd->add_option("--max-tokens", a->max_tokens,
                  "tokens per reply at most (default: the rest of the context)")
    ->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("-q,--quiet", a->quiet,
                "no start line and no figures after each reply on stderr");
  cmd->callback([a] { run_chat(*a); });
}

} // namespace ceco::app
