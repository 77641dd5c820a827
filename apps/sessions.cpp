#include "apps/sessions.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <csignal>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/edge_session.hpp"
#include "actors/network.hpp"
#include "actors/reconnect.hpp"
#include "actors/sim_clock.hpp"
#include "apps/commands.hpp"
#include "apps/report.hpp"
#include "model/metrics.hpp"
#include "model/transformer.hpp"
#include "apps/json_text.hpp"

namespace ceco::app {

namespace {


std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw config_error(fmt::format("--prompts {}: cannot open", path));
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos)
      out.push_back(line);
  if (out.empty())
    throw config_error(fmt::format("--prompts {}: no prompts (one per line)", path));
  return out;
}

struct row {
  const response_report* report;
  std::string prompt;
  std::string text;
  double agreement = -1;  // with the cloud strategy's tokens; -1 = not run
};

void print_table(const std::vector<row>& rows, const std::vector<strategy>& modes) {
  fmt::print("\n{:<14} {:>7} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} "
             "{:>8}  {}\n", "mode", "tokens", "cloud req", "bytes up", "bytes down", "edge ms",
             "cloud ms", "comm ms", "total ms", "ttft ms", "itl p50", "rollback", "agree",
             "tokens per exit");
  for (auto& mode : modes) {
    double n = 0, tokens = 0, cloud = 0, up = 0, down = 0, edge = 0, cl = 0, comm = 0, total = 0,
           agree = 0, agree_n = 0, ttft = 0, itl = 0, rollbacks = 0;
    std::map<std::string, double> exits;
    for (auto& r : rows) {
      const auto& x = *r.report;
      if (x.mode != mode)
        continue;
      ++n;
      tokens += double(x.tokens.size());
      cloud += double(x.cloud_tokens);
      up += double(x.traffic.bytes_up);
      down += double(x.traffic.bytes_down);
      edge += double(x.edge_us) / 1000.0;
      cl += double(x.cloud_us) / 1000.0;
      comm += double(x.comm_us) / 1000.0;
      total += double(x.total_us) / 1000.0;
      ttft += double(std::max<int64_t>(x.first_token_us, 0)) / 1000.0;
      itl += double(x.itl_p50_us) / 1000.0;
      rollbacks += x.rollbacks;
      if (r.agreement >= 0) {
        agree += r.agreement;
        ++agree_n;
      }
      for (size_t i = 0; i < x.exit_layers.size(); ++i)
        exits[std::to_string(x.exit_layers[i])] += x.exit_counts[i];
      exits["cloud"] += x.cloud_tokens;
    }
    if (n == 0)
      continue;
    // Means per response, as every other column (a whole number prints as one).
    std::string per_exit;
    for (auto& [k, v] : exits)
      if (v > 0) {
        const double mean = v / n;
        per_exit += mean == std::floor(mean) ? fmt::format("{}:{:.0f} ", k, mean)
                                             : fmt::format("{}:{:.1f} ", k, mean);
      }
    fmt::print("{:<14} {:>7.1f} {:>8.1f}% {:>11.0f} {:>10.0f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} "
               "{:>8.2f} {:>8.3f} {:>8.1f} {:>8}  {}\n",
               to_string(mode), tokens / n, tokens > 0 ? 100.0 * cloud / tokens : 0.0, up / n, down / n,
               edge / n, cl / n, comm / n, total / n, ttft / n, itl / n, rollbacks / n,
               agree_n > 0 ? fmt::format("{:.1f}%", 100.0 * agree / agree_n) : "-", per_exit);
  }
  fmt::print("(means per response over {} response(s) per mode; ttft = time to first token, "
             "itl p50 = median time between tokens, rollback = drafts the cloud corrected; agree = "
             "token agreement with the cloud strategy; tokens per exit = mean tokens per response "
             "from each exit layer and from the cloud)\n",
             rows.size() / std::max<size_t>(1, modes.size()));
}

/// `ceco sim --mode all` also runs the six strategies in the paper's regime:
/// device profile paper-a100 (a 7B model on A100s, about 37 ms per cloud
/// token) on virtual time over the paper's link, split 2 with its exit, as
/// config/experiments/paper-table1.toml. The clock is the process's, so it
/// runs in a forked process beside the measured run (which mostly waits on
/// its link), and its JSON lines are read at the end.
const std::vector<std::string> paper_regime = {
  "compute.mode=profile", "compute.profile=paper-a100", "compute.clock=virtual",
  "link.profile=paper",   "split.layer=2",              "model.exits=2"};

struct regime_run {
  pid_t pid = -1;
  int out = -1;

  /// Forked before this process starts threads or loads a model: the child
  /// skips libtorch's start-up, and its virtual clock is its own.
  explicit regime_run(const session_args& a) {
    int fds[2];
    if (::pipe(fds) != 0)
      return;
    std::cout.flush();
    std::fflush(nullptr);
    pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close(fds[1]);
      int status = 0;
      try {
        session_args c = a;
        c.mode = "all";
        c.json = true;
        c.regime = false;
        c.sessions = 1;
        c.print_config = false;
        c.sets.insert(c.sets.end(), paper_regime.begin(), paper_regime.end());
        run_sessions(c);
      } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        status = 1;
      }
      std::cout.flush();
      std::cerr.flush();
      std::fflush(nullptr);
      ::_exit(status);
    }
    ::close(fds[1]);
    if (pid < 0)
      ::close(fds[0]);
    else
      out = fds[0];
  }
  regime_run(const regime_run&) = delete;
  regime_run& operator=(const regime_run&) = delete;

  /// Everything it printed, and whether it exited 0.
  std::pair<std::string, bool> finish() {
    std::string text;
    if (out >= 0) {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(out, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0)
          text.append(buf, size_t(n));
      ::close(out);
      out = -1;
    }
    int status = 0;
    bool ok = pid > 0 && ::waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0;
    pid = -1;
    return {text, ok};
  }
  ~regime_run() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (out >= 0)
      ::close(out);
  }
};

/// The paper-regime table under the measured one, and when collaboration pays.
void print_regime(regime_run& run, const std::vector<row>& measured) {
  auto [text, ok] = run.finish();
  std::map<strategy, std::vector<nlohmann::json>> by_mode;
  std::vector<strategy> order;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("mode"))
      continue;
    auto named = j["mode"].is_string() ? parse_strategy(j["mode"].get<std::string>()) : std::nullopt;
    if (!named)
      continue;
    const strategy mode = *named;
    if (!by_mode.count(mode))
      order.push_back(mode);
    by_mode[mode].push_back(std::move(j));
  }
  if (!ok || order.empty()) {
    auto last = text.substr(text.rfind('\n', text.size() > 1 ? text.size() - 2 : 0) + 1);
    fmt::print("\n(the paper-regime table could not run: {})\n",
               last.empty() ? "no output" : last.substr(0, last.find('\n')));
    return;
  }
  auto mean = [&](strategy mode, const char* key) {
    double sum = 0;
    for (auto& j : by_mode[mode])
      sum += std::string(key) == "cloud_tokens" ? j["exits"].value("cloud", 0.0) : j.value(key, 0.0);
    return sum / double(std::max<size_t>(1, by_mode[mode].size()));
  };
  fmt::print("\nThe same strategies in the paper's regime (NOT measured: device profile paper-a100, "
             "a 7B model on A100s, on virtual time; the paper's 3 ms / 30 Mbit/s link; split 2 "
             "with its exit; tokens and bytes are real):\n");
  fmt::print("{:<14} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}\n", "mode", "cloud req",
             "bytes up", "edge ms", "cloud ms", "comm ms", "total ms", "vs cloud");
  const double cloud_total =
    by_mode.count(strategy::cloud) ? mean(strategy::cloud, "total_ms") : 0.0;
  std::string best;
  double best_total = 0;
  for (auto& mode : order) {
    const double tokens = mean(mode, "n_generated");
    const double total = mean(mode, "total_ms");
    // The strategies that keep the cloud's quality (standalone does not).
    if (uploads_split_states(mode) && (best.empty() || total < best_total))
      best = to_string(mode), best_total = total;
    fmt::print("{:<14} {:>8.1f}% {:>11.0f} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>9}\n",
               to_string(mode),
               tokens > 0 ? 100.0 * mean(mode, "cloud_tokens") / tokens : 0.0,
               mean(mode, "bytes_up"), mean(mode, "edge_ms"), mean(mode, "cloud_ms"),
               mean(mode, "comm_ms"), total,
               cloud_total > 0 ? fmt::format("{:.2f}x", total / cloud_total) : "-");
  }
  // Measured on this host: the fastest strategy against the cloud's.
  double measured_cloud = -1, measured_best = -1;
  std::string measured_name;
  for (auto& r : measured) {
    const double t = double(r.report->total_us) / 1000.0;
    if (r.report->mode == strategy::cloud)
      measured_cloud = measured_cloud < 0 ? t : std::min(measured_cloud, t);
    else if (uploads_split_states(r.report->mode) && (measured_best < 0 || t < measured_best))
      measured_best = t, measured_name = to_string(r.report->mode);
  }
  std::string here;
  if (measured_cloud > 0 && measured_best > 0)
    here = measured_best < measured_cloud
             ? fmt::format("here too {} beat the cloud ({:.0f} against {:.0f} ms)", measured_name,
                           measured_best, measured_cloud)
             : fmt::format("on this host the model's compute is tiny next to a round trip, so "
                           "the cloud strategy wins ({:.0f} ms; {} {:.0f} ms)",
                           measured_cloud, measured_name, measured_best);
  fmt::print("Collaboration pays when the cloud's compute per token is large against the link's "
             "round trip and many edges share one cloud: in the paper's regime {} takes {:.2f}x "
             "the cloud strategy's time{}{} (README \"Device profiles\"; "
             "config/experiments/paper-table1.toml, capacity.toml).\n",
             best, cloud_total > 0 ? best_total / cloud_total : 0.0,
             here.empty() ? "" : "; ", here);
}

/// Whether host:port answers a TLS ClientHello as a TLS server does (a
/// handshake record or an alert), within 2 s (a loaded cloud's answer). A
/// plain ceco cloud closes over these bytes at once, and a closed port
/// refuses the connection, so an edge whose handshake failed asks this,
/// and waits long only on a cloud that is hung anyway.
bool speaks_tls(const std::string& host, int port) {
  constexpr int answer_ms = 2000;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0)
    return false;
  int sock = ::socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  bool tls = false;
  if (sock >= 0 && ::connect(sock, found->ai_addr, found->ai_addrlen) == 0) {
    // TLS 1.2 ClientHello: one cipher suite, no extensions.
    std::vector<uint8_t> hello = {0x16, 0x03, 0x01, 0x00, 0x2d, 0x01, 0x00, 0x00, 0x29, 0x03, 0x03};
    for (int i = 0; i < 32; ++i)
      hello.push_back(uint8_t(i * 7 + 1));
    for (uint8_t b : {0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00})
      hello.push_back(b);
    if (::send(sock, hello.data(), hello.size(), MSG_NOSIGNAL) == ssize_t(hello.size())) {
      pollfd p{sock, POLLIN, 0};
      uint8_t reply[2] = {};
      if (::poll(&p, 1, answer_ms) == 1 && ::recv(sock, reply, 2, MSG_WAITALL) == 2)
        tls = (reply[0] == 0x15 || reply[0] == 0x16) && reply[1] == 0x03;
    }
  }
  if (sock >= 0)
    ::close(sock);
  ::freeaddrinfo(found);
  return tls;
}

/// Connects to the cloud that `s` names, with doubling backoff, and checks
/// the handshake; throws model_error when it cannot.
cloud_api connect_to_cloud(caf::actor_system& sys, const settings& s, const site_model& m) {
  std::string last_error;
  const backoff policy;
  for (int attempt = 1; attempt <= s.cloud.connect_tries; ++attempt) {
    auto remote = connect_to_front(sys, s, make_hello(s, m), wire_limits_of(m));
    if (remote)
      return *remote;
    if (is(remote.error(), ceco_errc::handshake_failed))
      throw model_error(describe(remote.error()));
    // A plain edge of a TLS cloud waits for a challenge that never comes,
    // until its handshake times out or the cloud's (2 s, sooner than the
    // edge's, on a loaded machine) closes the connection: no retry helps.
    const bool set_up_failed = is(remote.error(), ceco_errc::handshake_timeout) ||
                               is(remote.error(), ceco_errc::cloud_unreachable);
    if (set_up_failed && !s.cloud.tls && speaks_tls(s.cloud.host, s.cloud.port))
      throw model_error(fmt::format(
        "the cloud at {}:{} speaks TLS (its cloud.tls = true) and this edge has cloud.tls = "
        "false: both nodes must agree on cloud.tls; set cloud.tls = true with "
        "cloud.tls_certificate, cloud.tls_key and cloud.tls_ca_file (deploy/make-tls-certs.sh)",
        s.cloud.host, s.cloud.port));
    last_error = describe(remote.error());
    if (attempt < s.cloud.connect_tries) {
      const auto wait = policy.after(attempt - 1);
      fmt::print(stderr, "ceco: cannot reach the cloud at {}:{} ({}); retrying in {} ms\n",
                 s.cloud.host, s.cloud.port, last_error, wait.count());
      std::this_thread::sleep_for(wait);
    }
  }
  throw model_error(fmt::format("cannot reach the cloud at {}:{} after {} attempt(s): {}",
                                s.cloud.host, s.cloud.port, s.cloud.connect_tries, last_error));
}

} // namespace

std::unique_ptr<deployment> wire_to_remote_cloud(caf::actor_system& sys, const settings& s,
                                                 const site_model& m) {
  check_clock(s, false);  // before connecting: a real network runs in real time
  check_secret(s);
  // After a loss the link reconnects by itself, from a thread of its own.
  auto reconnect = [&sys, s, hello = make_hello(s, m), limits = wire_limits_of(m)] {
    return connect_to_front(sys, s, hello, limits);
  };
  return std::make_unique<deployment>(sys, s, m, connect_to_cloud(sys, s, m), reconnect);
}

void add_edge_front_options(CLI::App* cmd, edge_front_args& a) {
  cmd->add_option("--config", a.config, "TOML settings (the same schema as sim; see config/sim.toml)");
  cmd->add_option("--set", a.sets, "override one setting, e.g. --set policy.mode=standalone")
    ->take_all()->allow_extra_args(false);
  cmd->add_flag("--local-cloud", a.local_cloud,
                "run the cloud site in this process instead of connecting to `ceco cloud`");
}

void configure_edge_front(caf::actor_system_config& cfg, const settings& s,
                          const edge_front_args& a) {
  if (a.local_cloud)
    configure_actor_system(cfg, s.runtime.threads);
  else
    configure_deployment(cfg, s);
}

std::unique_ptr<deployment> start_edge_front(caf::actor_system& sys, const settings& s,
                                             const site_model& m, const edge_front_args& a) {
  return a.local_cloud ? std::make_unique<deployment>(sys, s, m) : wire_to_remote_cloud(sys, s, m);
}

std::string cloud_location(const settings& s, const edge_front_args& a) {
  return a.local_cloud ? std::string("in this process")
                       : fmt::format("{}:{}", s.cloud.host, s.cloud.port);
}

void run_sessions(session_args a, const remote_cloud_fn& remote) {
  const bool deployed = bool(remote);
  // A real network's link adds no delay unless the file or --set asks.
  auto s = load_settings(a.config, a.sets, deployed ? real_network_defaults() : settings{});
  if (a.max_tokens > 0)
    s.generation.max_tokens = a.max_tokens;
  std::vector<strategy> modes;
  if (a.mode == "all")
    modes = all_strategies();
  else if (!a.mode.empty())
    apply_override(s, "policy.mode=" + a.mode), modes = {s.policy.mode};
  else
    modes = {s.policy.mode};
  if (a.print_config) {
    fmt::print("{}", describe_settings(s));
    return;
  }
  // The paper's regime beside the measured table: `ceco sim --mode all`.
  std::unique_ptr<regime_run> regime;
  if (!deployed && a.mode == "all" && !a.json && s.compute.mode != "profile" && a.regime)
    regime = std::make_unique<regime_run>(a);
  std::vector<std::string> prompts;
  if (!a.prompts_file.empty())
    prompts = read_prompts(a.prompts_file);
  else
    prompts = {a.prompt.empty() ? s.generation.prompt : a.prompt};

  set_compute_threads(1);  // one compute thread per actor; the scheduler runs them side by side
  auto m = load_site_model(s, default_model_path(), default_exit_heads_path());
  caf::actor_system_config cfg;
  if (deployed)
    configure_deployment(cfg, s);
  else
    configure_simulation(cfg, s);
  caf::actor_system sys{cfg};
  std::vector<response_report> reports;
  reports.reserve(prompts.size() * modes.size() * size_t(a.sessions));
  struct throughput {
    strategy mode;
    double ms = 0;
    int64_t tokens = 0;
    int64_t cloud_tokens = 0;
  };
  std::vector<throughput> rates;
  std::vector<row> rows;
  cloud_stats cloud_seen;
  {
    std::unique_ptr<deployment> sim;
    if (deployed) {
      sim = remote(sys, s, m);
    } else {
      sim = std::make_unique<deployment>(sys, s, m);
    }
    bool lost = false;
    // As long as the first connection may take: the sum of its backoffs.
    const auto reconnect_budget = backoff{}.total(s.cloud.connect_tries);
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (!a.json && prompts.size() > 1)
        fmt::print(stderr, "\r[{}/{}] responses", i + 1, prompts.size());
      auto ids = m.vocab.encode(prompts[i]);
      const response_report* cloud = nullptr;
      for (auto& mode : modes) {
        if (lost) {
          // The cloud was lost during an earlier response and the link is
          // reconnecting: give it time before this response. If it is not
          // back, a collaborative response starts on the edge alone and
          // resumes with the cloud once the link reconnects.
          if (sim->wait_for_cloud(reconnect_budget)) {
            lost = false;
            fmt::print(stderr, "ceco edge: the cloud is back\n");
          } else {
            fmt::print(stderr, "ceco edge: the cloud is still unreachable after {} ms\n",
                       reconnect_budget.count());
          }
        }
        const auto& run_mode = mode;
        // --sessions N: N edge sessions of this prompt at the same time.
        auto t0 = sim_clock::now();  // simulated time, as the responses' own times
        auto batch = sim->run_concurrently(std::vector<std::vector<int32_t>>(size_t(a.sessions), ids),
                                           run_mode);
        throughput t{mode, std::chrono::duration<double, std::milli>(sim_clock::now() - t0).count()};
        for (auto& r : batch) {
          t.tokens += int64_t(r.tokens.size());
          t.cloud_tokens += r.cloud_tokens;
        }
        rates.push_back(t);
        for (auto& b : batch) {
          reports.push_back(std::move(b));
          const auto& r = reports.back();
          if (r.degraded_tokens > 0 || r.error.find("cloud_unreachable") != std::string::npos)
            lost = deployed;
          row x{&r, prompts[i], m.vocab.decode(r.tokens, ids.back())};
          auto j = report_json(r, x.prompt, x.text,
                               formula_bytes_up(s, mode, int64_t(ids.size()), int64_t(r.tokens.size()),
                                                m.model->config().n_embd));
          j["compute"] = compute_label(s);
          add_thresholds(j, mode, s, m.heads);
          if (auto e = exactness_of(s, mode); !e.empty())
            j["exactness"] = e;
          if (mode == strategy::cloud && !cloud)
            cloud = &r;
          if (cloud) {
            x.agreement = token_agreement(r.tokens, cloud->tokens);
            add_cloud_agreement(j, r.tokens, cloud->tokens);
          }
          if (a.json)
            std::cout << json_text(j) << std::endl;
          rows.push_back(x);
        }
      }
    }
    if (!deployed)
      cloud_seen = sim->cloud_state();
  }
  // A response that failed fails the command, after every figure is printed.
  const response_report* failed = nullptr;
  size_t n_failed = 0;
  for (auto& r : reports)
    if (!r.error.empty() && n_failed++ == 0)
      failed = &r;
  auto fail_if_any = [&] {
    if (failed)
      throw model_error(fmt::format("{} of {} responses failed; the first ({}): {}", n_failed,
                                    reports.size(), to_string(failed->mode), failed->error));
  };
  if (a.json)
    return fail_if_any();
  if (prompts.size() > 1)
    fmt::print(stderr, "\n");
  for (auto& r : rows) {
    fmt::print("[{}] {}{}\n", to_string(r.report->mode), r.prompt, r.text);
    if (r.report->degraded_tokens > 0)
      fmt::print("  ({} tokens produced on the edge alone after the cloud was lost{}{})\n",
                 r.report->degraded_tokens,
                 r.report->unverified_tokens > 0
                   ? fmt::format(", {} of them never verified", r.report->unverified_tokens)
                   : std::string(),
                 r.report->resumed > 0
                   ? fmt::format("; resumed with the cloud {} time(s)", r.report->resumed)
                   : std::string());
    if (!r.report->error.empty())
      fmt::print("  error: {}\n", r.report->error);
  }
  print_table(rows, modes);
  if (std::any_of(modes.begin(), modes.end(), [](strategy x) { return uses_exits(x); }))
    fmt::print("exit thresholds: {}\n", m.heads.describe_thresholds(threshold_override(s)));
  if (s.compute.mode == "profile") {
    fmt::print("(compute: device profile '{}': edge and cloud times are the profile's costs for "
               "the work done, not measurements; tokens and bytes are real{})\n",
               s.compute.profile,
               s.compute.clock == "virtual" ? "; on virtual time" : "");
    if (auto over = sim_clock::take_overruns(); over.count > 0)
      fmt::print("({} piece(s) of work took longer on this host than the profile's cost, worst "
                 "by {:.2f} ms: those times are late; compute.clock = \"virtual\" avoids it)\n",
                 over.count, over.worst_ms);
  }
  if (regime)
    print_regime(*regime, rows);
  if (a.sessions > 1) {
    fmt::print("\n{} concurrent sessions per prompt:\n", a.sessions);
    for (auto& mode : modes) {
      double ms = 0, tokens = 0, cloud = 0;
      for (auto& t : rates)
        if (t.mode == mode) {
          ms += t.ms;
          tokens += double(t.tokens);
          cloud += double(t.cloud_tokens);
        }
      fmt::print("{:<14} {:>9.1f} tokens/s in all, {:>9.1f} of them from the cloud\n",
                 to_string(mode),
                 ms > 0 ? tokens / ms * 1000 : 0.0, ms > 0 ? cloud / ms * 1000 : 0.0);
    }
    if (cloud_seen.steps > 0)
      fmt::print("cloud: {} steps, {:.2f} sessions per step on average (session.batch_sessions = "
                 "{}); {:.1f} KiB of context per session\n",
                 cloud_seen.steps, double(cloud_seen.stepped_sessions) / double(cloud_seen.steps),
                 s.session.batch_sessions, double(cloud_seen.session_bytes) / 1024.0);
  }
  fail_if_any();
}

void add_session_options(CLI::App* cmd, const std::shared_ptr<session_args>& a) {
  cmd->add_option("--config", a->config,
                  "TOML settings (see config/sim.toml; default: the built-in defaults)");
  cmd->add_option("--set", a->sets,
                  "override one setting, e.g. --set policy.threshold=0.9 (repeatable)")
    ->take_all()->allow_extra_args(false);
  auto modes = strategy_names();
  modes.push_back("all");
  cmd->add_option("--mode", a->mode,
                  "cloud, naive, standalone, collaborative, speculative (collaborative's tokens "
                  "without waiting on the cloud), exact (the cloud's tokens, verified), or all to "
                  "compare them side by side (default: policy.mode)")
    ->check(CLI::IsMember(modes));
  auto* prompt = cmd->add_option("--prompt", a->prompt, "prompt text (default: generation.prompt)");
  cmd->add_option("--prompts", a->prompts_file, "file with one prompt per line")->excludes(prompt);
  cmd->add_option("--max-tokens", a->max_tokens,
                  "most tokens per response (default: generation.max_tokens)")
    ->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a->json,
                "one JSON object per response: mode, prompt, text, tokens, n_prompt, "
                "n_generated, exits, cloud_requests, degraded_tokens, resumed, bytes_up, bytes_down, "
                "edge_ms, cloud_ms, comm_ms, total_ms, ...");
  cmd->add_option("--sessions", a->sessions,
                  "run each prompt as this many edge sessions at the same time (all sharing one "
                  "cloud) and report the aggregate tokens/s")
    ->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_flag("--print-config", a->print_config, "print the effective settings and exit");
  if (cmd->get_name() == "sim")
    cmd->add_flag("!--no-paper-regime", a->regime,
                  "with --mode all, skip the table of the strategies in the paper's regime "
                  "(device profile paper-a100 on virtual time) under the measured one");
}

} // namespace ceco::app
