// The cloud as a cluster (docs/cluster.md): a gateway's session router in
// front of several workers gives every strategy the one-process tokens; a
// worker killed mid-response loses no response; the workers' cluster port
// refuses peers without the cluster's certificates and garbage, and keeps
// serving.

#include "test/support.hpp"
#include "test/ceco_process.hpp"
#include "test/cloud_sites.hpp"

#include <fstream>
#include <thread>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/deployment.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

const std::vector<std::string> eight_prompts = {
  "In the beginning", "And the LORD said unto Moses", "Blessed are", "And it came to pass",
  "The LORD is my shepherd", "In the beginning", "Blessed are the meek", "And God said"};

cluster_status status_of(sim_fixture& f) {
  caf::scoped_actor self{*f.sys};
  cluster_status out;
  self->request(caf::actor_cast<session_router_actor>(f.sim->contexts()), std::chrono::seconds(5),
                cluster_atom::value)
    .receive([&](cluster_status& st) { out = st; }, [&](caf::error& e) { FAIL(describe(e)); });
  return out;
}

std::string builtin() { return std::string(CECO_SOURCE_DIR) + "/config/models/kjv/model.gguf"; }
std::string builtin_heads() { return std::string(CECO_SOURCE_DIR) + "/config/models/kjv/exits.gguf"; }

} // namespace

TEST_CASE("a router over two workers in one process: every strategy gives the one-process tokens") {
  const std::vector<std::string> common = {"model.path=" + builtin(),
                                           "model.exit_heads=" + builtin_heads(),
                                           "link.latency_ms=1", "policy.threshold=0.8"};
  auto with = [&](std::vector<std::string> extra) {
    auto sets = common;
    sets.insert(sets.end(), extra.begin(), extra.end());
    return sets;
  };
  sim_fixture one(common);
  sim_fixture cluster(with({"cluster.local_workers=2"}));
  std::vector<std::vector<int32_t>> prompts;
  for (auto& p : eight_prompts)
    prompts.push_back(one.m.vocab.encode(p));
  for (auto mode : {"cloud", "collaborative", "speculative", "exact", "naive"}) {
    CAPTURE(mode);
    auto expected = one.sim->run_concurrently(prompts, mode, 24);
    auto got = cluster.sim->run_concurrently(prompts, mode, 24);
    REQUIRE(got.size() == expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      REQUIRE(got[i].error.empty());
      CHECK(got[i].tokens == expected[i].tokens);
      CHECK(got[i].cloud_tokens == expected[i].cloud_tokens);
      // Drafts group into uploads as verdicts come back, the cloud's tokens
      // into replies to its polls (timing); the token-by-token strategies
      // send the same bytes.
      if (std::string(mode) != "speculative" && std::string(mode) != "exact"
          && std::string(mode) != "cloud")
        CHECK(got[i].traffic.bytes_up == expected[i].traffic.bytes_up);
    }
  }
  // Placed by load (the fewest open sessions, opens on their way counted):
  // eight opened together spread four and four.
  auto st = status_of(cluster);
  REQUIRE(st.workers.size() == 2);
  CHECK(st.workers[0].placed + st.workers[1].placed == 40);
  CHECK(st.workers[0].placed >= 16);
  CHECK(st.workers[1].placed >= 16);
  CHECK(st.sessions == 0);  // every session closed, at its worker too
}

TEST_CASE("cloud layers cut into stages in one process: every strategy gives the one-process tokens and bytes") {
  const std::string tuned = std::string(CECO_SOURCE_DIR) + "/config/models/stories260K-exits-2-3.gguf";
  // stories260K has 5 layers: split 3 with one stage from layer 4, and
  // split 2 with stages from layers 3 and 4 (three ranges of one layer).
  const std::vector<std::pair<std::vector<std::string>, std::string>> layouts = {
    {{"split.layer=3", "model.exits=2,3", "model.exit_heads=" + tuned, "policy.threshold=0.6"}, "4"},
    {{"split.layer=2", "model.exits=1,2", "model.exit_heads=none", "policy.threshold=0.3"}, "3,4"}};
  for (const auto& [layout, stages] : layouts) {
    CAPTURE(stages);
    auto sets = layout;
    sets.insert(sets.end(), {"model.path=" + stories_gguf(), "link.latency_ms=1"});
    sim_fixture one(sets);
    sets.push_back("placement.cloud_stages=" + stages);
    sim_fixture staged(sets);
    std::vector<std::vector<int32_t>> prompts;
    for (auto p : {"Once upon a time", "Lily and Ben went to the park", "The little dog", "One day"})
      prompts.push_back(one.m.vocab.encode(p));
    for (auto mode : {"cloud", "naive", "collaborative", "speculative", "exact"}) {
      CAPTURE(mode);
      for (bool sampled : {false, true}) {
        CAPTURE(sampled);
        std::vector<sampler_options> sampling;
        if (sampled)
          for (size_t i = 0; i < prompts.size(); ++i)
            sampling.push_back({0.9f, 0, 1.0f, 7 + i});
        auto expected = one.sim->run_concurrently(prompts, strategy_of(mode, "mode"), 24, sampling);
        auto got = staged.sim->run_concurrently(prompts, strategy_of(mode, "mode"), 24, sampling);
        for (size_t i = 0; i < got.size(); ++i) {
          CAPTURE(i);
          REQUIRE(got[i].error.empty());
          CHECK(got[i].tokens == expected[i].tokens);
          CHECK(got[i].rollbacks == expected[i].rollbacks);
          if (std::string(mode) == "naive" || std::string(mode) == "collaborative")
            CHECK(got[i].traffic.bytes_up == expected[i].traffic.bytes_up);
        }
      }
    }
  }
}

TEST_CASE("layer stage settings: boundaries inside the cloud's layers, hosts for stages that exist") {
  auto error_of = [](std::vector<std::string> sets) {
    sets.insert(sets.begin(), "model.path=" + stories_gguf());
    try {
      sim_fixture f(sets);
    } catch (const config_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error_of({"split.layer=3", "placement.cloud_stages=3"}).find(
          "placement.cloud_stages = [3]: each boundary must be past split.layer = 3") !=
        std::string::npos);
  CHECK(error_of({"split.layer=2", "placement.cloud_stages=4,3"}).find("placement.cloud_stages") !=
        std::string::npos);
  CHECK(error_of({"split.layer=3", "placement.cloud_stages=5"}).find("below the model's 5 layers") !=
        std::string::npos);
  CHECK(error_of({"placement.cloud_stages=4", "compute.mode=profile", "compute.profile=paper-a100"})
          .find("not yet") != std::string::npos);
  CHECK(error_of({"placement.cloud_stages=4", "cluster.insecure=true",
                  "cluster.stage_hosts=[\"127.0.0.1:1\",\"127.0.0.1:2\"]"})
          .find("cluster.stage_hosts names 2 node(s), but placement.cloud_stages has 1") !=
        std::string::npos);
}

TEST_CASE("cluster settings: roles need certificates or cluster.insecure, and workers as host:port") {
  auto error_of = [](std::vector<std::string> sets) {
    try {
      load_settings("", sets);
    } catch (const config_error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK(error_of({"cluster.role=\"worker\""}).find("cluster.tls_certificate, cluster.tls_key and "
                                                    "cluster.tls_ca_file") != std::string::npos);
  CHECK(error_of({"cluster.role=\"gateway\"", "cluster.insecure=true"})
          .find("needs cluster.workers") != std::string::npos);
  CHECK(error_of({"cluster.role=\"gateway\"", "cluster.insecure=true",
                  "cluster.workers=[\"10.0.0.2\"]"})
          .find("'10.0.0.2' is not \"host:port\"") != std::string::npos);
  CHECK(error_of({"cluster.role=\"gateway\"", "cluster.insecure=true",
                  "cluster.workers=[\"10.0.0.2:99999\"]"})
          .find("is not \"host:port\"") != std::string::npos);
  CHECK(error_of({"cluster.role=\"gateway\"", "cluster.insecure=true",
                  "cluster.workers=[\"10.0.0.2:7171\"]"}) == "accepted");
  CHECK(error_of({"cluster.role=\"sideways\""}).find("cluster.role") != std::string::npos);
}

namespace {

/// A cloud node of a cluster as its own process: its first line names its
/// port (after the last ':' before " over").
struct node_process : ceco_process {
  int port = 0;
  std::string banner;
  explicit node_process(const std::string& args, bool keep_reading = false)
    : ceco_process("cloud " + args, true) {
    banner = line();
    if (!keep_reading)
      stop_reading();
    auto over = banner.rfind(" over ");
    auto at = banner.rfind(':', over);
    if (at != std::string::npos)
      port = std::atoi(banner.c_str() + at + 1);
  }
};

int64_t rss_kib(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0)
      return std::atoll(line.c_str() + 6);
  return -1;
}

/// Bytes that are not TLS (nor BASP) to a local port, `times` connections.
void send_garbage(int port, int times) {
  std::string junk(4096, '\0');
  for (size_t i = 0; i < junk.size(); ++i)
    junk[i] = char((i * 131 + 7) & 0xff);
  for (int i = 0; i < times; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
      (void)!::write(fd, junk.data(), junk.size());
    ::close(fd);
  }
}

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line.front() == '{')
      lines.push_back(nlohmann::json::parse(line));
  return lines;
}

struct cluster_certs {
  temp_dir dir;
  temp_dir stranger_dir;
  cluster_certs() {
    auto made = run_shell("sh " + std::string(CECO_SOURCE_DIR) + "/deploy/make-tls-certs.sh " +
                          dir.path.string() + " gateway worker1 worker2 2>&1");
    REQUIRE_MESSAGE(made.status == 0, made.out);
    made = run_shell("sh " + std::string(CECO_SOURCE_DIR) + "/deploy/make-tls-certs.sh " +
                     stranger_dir.path.string() + " stranger 2>&1");
    REQUIRE_MESSAGE(made.status == 0, made.out);
  }
  std::string node(const std::string& name) {
    return " --set cluster.tls_certificate=" + dir.file(name + ".pem") +
           " --set cluster.tls_key=" + dir.file(name + "-key.pem") +
           " --set cluster.tls_ca_file=" + dir.file("ca.pem");
  }
  std::string stranger() {
    return " --set cluster.tls_certificate=" + stranger_dir.file("stranger.pem") +
           " --set cluster.tls_key=" + stranger_dir.file("stranger-key.pem") +
           " --set cluster.tls_ca_file=" + stranger_dir.file("ca.pem");
  }
};

std::string workers_arg(const node_process& a, const node_process& b) {
  return fmt::format(" --set 'cluster.workers=[\"127.0.0.1:{}\",\"127.0.0.1:{}\"]'", a.port, b.port);
}

const std::string stories_model = " --set model.path=" + stories_gguf();

/// `ceco edge` against a gateway: 8 sessions of one prompt at once, JSON.
std::string edge_args(int port, const std::string& mode) {
  return fmt::format("edge --set cloud.port={} --mode {} --sessions 8 --max-tokens 60 --json "
                     "--prompt 'Once upon a time' --set link.latency_ms=5 --set policy.threshold=0.9",
                     port, mode) + stories_model;
}

/// Reads a worker's --stats lines until one shows sessions open.
bool holds_sessions(ceco_process& worker) {
  for (int i = 0; i < 400; ++i) {
    auto l = worker.line();
    if (l.empty())
      return false;
    if (l.find("ceco cloud: 0 session") == std::string::npos && l.find(" session(s)") != std::string::npos)
      return true;
  }
  return false;
}

/// Every one of eight responses finished, with `expected`'s tokens; the
/// moves to a new session, summed.
int check_finished(const std::string& out, const std::vector<std::vector<int32_t>>& expected) {
  auto lines = json_lines(out);
  REQUIRE_MESSAGE(lines.size() == 8, out);
  int resumed = 0;
  for (size_t i = 0; i < 8; ++i) {
    CHECK_MESSAGE(lines[i]["error"].is_null(), out);
    CHECK(lines[i]["tokens"].get<std::vector<int32_t>>() == expected[i]);
    resumed += lines[i]["resumed"].get<int>();
  }
  return resumed;
}

bool wait_for_line(ceco_process& p, const std::string& text, int lines) {
  for (int i = 0; i < lines; ++i) {
    auto l = p.line();
    if (l.empty())
      return false;
    if (l.find(text) != std::string::npos)
      return true;
  }
  return false;
}

} // namespace

TEST_CASE("gateway and two worker processes over mutual TLS: one-process tokens, a lost worker loses no response") {
  cluster_certs certs;
  node_process w1("--role worker --set cluster.port=0" + certs.node("worker1") + stories_model);
  node_process w2("--role worker --set cluster.port=0" + certs.node("worker2") + stories_model);
  REQUIRE_MESSAGE(w1.port > 0, w1.banner);
  REQUIRE_MESSAGE(w2.port > 0, w2.banner);
  CHECK(w1.banner.find("over mutual TLS") != std::string::npos);
  node_process gateway("--role gateway --set cloud.port=0" + certs.node("gateway") +
                         workers_arg(w1, w2) + stories_model, true);
  REQUIRE_MESSAGE(gateway.port > 0, gateway.banner);
  REQUIRE(wait_for_line(gateway, "joined", 5));
  REQUIRE(wait_for_line(gateway, "joined", 5));
  gateway.stop_reading();
  node_process single("--set cloud.port=0" + stories_model);
  REQUIRE(single.port > 0);

  std::map<std::string, std::vector<std::vector<int32_t>>> undisturbed;
  for (auto mode : {"cloud", "collaborative", "speculative", "exact"}) {
    CAPTURE(mode);
    auto alone = run_ceco(edge_args(single.port, mode));
    auto spread = run_ceco(edge_args(gateway.port, mode));
    REQUIRE(alone.status == 0);
    REQUIRE_MESSAGE(spread.status == 0, spread.out);
    auto a = json_lines(alone.out), b = json_lines(spread.out);
    REQUIRE(a.size() == 8);
    REQUIRE(b.size() == 8);
    for (size_t i = 0; i < 8; ++i) {
      CHECK(b[i]["tokens"] == a[i]["tokens"]);
      undisturbed[mode].push_back(a[i]["tokens"].get<std::vector<int32_t>>());
    }
  }

  // Worker 1 killed (-9) once it holds sessions: every response finishes, and
  // exact and cloud give the undisturbed tokens.
  for (auto mode : {"exact", "cloud"}) {
    CAPTURE(mode);
    // The workers take the device profile's time per step (replies held, in
    // real time), so that a response is still running when its worker dies.
    const std::string slow = " --set compute.mode=profile --set compute.profile=paper-a100";
    node_process w3("--role worker --set cluster.port=0 --stats 0.02" + slow + certs.node("worker1") +
                      stories_model, true);
    node_process w4("--role worker --set cluster.port=0" + slow + certs.node("worker2") + stories_model);
    node_process gw("--role gateway --set cloud.port=0" + certs.node("gateway") + workers_arg(w3, w4) +
                      stories_model, true);
    REQUIRE(wait_for_line(gw, "joined", 5));
    REQUIRE(wait_for_line(gw, "joined", 5));
    gw.stop_reading();
    std::string out;
    std::thread edges([&] {
      out = run_ceco(edge_args(gw.port, mode) + " --set link.latency_ms=20").out;
    });
    REQUIRE(holds_sessions(w3));  // mid-response
    w3.kill_now();
    edges.join();
    CHECK(check_finished(out, undisturbed[mode]) >= 1);  // the moved sessions, counted
  }
}

TEST_CASE("cloud layers cut into stages across two nodes: the one-process tokens and edge bytes") {
  cluster_certs certs;
  const std::string stages = " --set placement.cloud_stages=4";
  // The stage node runs layer 4 and the head; the worker layer 3, then
  // hands each step's rows to it (CAF's network layer, mutual TLS).
  node_process stage("--role stage --set cluster.port=0 --set cluster.stage=1" + stages +
                     certs.node("worker2") + stories_model);
  REQUIRE_MESSAGE(stage.port > 0, stage.banner);
  CHECK(stage.banner.find("layers 4..4 of 5, the final head") != std::string::npos);
  node_process worker(fmt::format("--role worker --set cluster.port=0{} --set "
                                  "'cluster.stage_hosts=[\"127.0.0.1:{}\"]'",
                                  stages, stage.port) +
                      certs.node("worker1") + stories_model);
  REQUIRE_MESSAGE(worker.port > 0, worker.banner);
  node_process gateway(fmt::format("--role gateway --set cloud.port=0 --set "
                                   "'cluster.workers=[\"127.0.0.1:{}\"]'",
                                   worker.port) +
                         certs.node("gateway") + stories_model,
                       true);
  REQUIRE(wait_for_line(gateway, "joined", 5));
  gateway.stop_reading();
  node_process single("--set cloud.port=0" + stories_model);
  REQUIRE(single.port > 0);
  for (auto mode : {"naive", "collaborative", "speculative", "exact", "cloud"}) {
    CAPTURE(std::string(mode));
    auto alone = run_ceco(edge_args(single.port, mode));
    auto staged = run_ceco(edge_args(gateway.port, mode));
    REQUIRE(alone.status == 0);
    REQUIRE_MESSAGE(staged.status == 0, staged.out);
    auto a = json_lines(alone.out), b = json_lines(staged.out);
    REQUIRE(a.size() == 8);
    REQUIRE(b.size() == 8);
    for (size_t i = 0; i < 8; ++i) {
      CHECK(b[i]["error"].is_null());
      CHECK(b[i]["tokens"] == a[i]["tokens"]);
      // The token-by-token strategies send the same bytes on the edge link
      // (drafts and polls group by timing).
      if (std::string(mode) == "naive" || std::string(mode) == "collaborative")
        CHECK(b[i]["bytes_up"] == a[i]["bytes_up"]);
    }
  }
  // The stage's port is a cluster port like a worker's: garbage gets
  // nothing, and the stage keeps serving the same tokens.
  std::thread hostile([&] { send_garbage(stage.port, 200); });
  auto alone = run_ceco(edge_args(single.port, "exact"));
  auto staged = run_ceco(edge_args(gateway.port, "exact"));
  hostile.join();
  REQUIRE(staged.status == 0);
  auto a = json_lines(alone.out), b = json_lines(staged.out);
  REQUIRE(b.size() == 8);
  for (size_t i = 0; i < 8; ++i)
    CHECK(b[i]["tokens"] == a[i]["tokens"]);
}

TEST_CASE("a worker's cluster port: a peer without the cluster's certificate, and garbage, get nothing, and it keeps serving") {
  cluster_certs certs;
  node_process w1("--role worker --set cluster.port=0" + certs.node("worker1") + stories_model);
  node_process w2("--role worker --set cluster.port=0" + certs.node("worker2") + stories_model);
  REQUIRE(w1.port > 0);
  REQUIRE(w2.port > 0);
  node_process gateway("--role gateway --set cloud.port=0" + certs.node("gateway") +
                         workers_arg(w1, w2) + stories_model, true);
  REQUIRE(wait_for_line(gateway, "joined", 5));
  REQUIRE(wait_for_line(gateway, "joined", 5));
  // A gateway of another CA is refused by both.
  node_process stranger("--role gateway --set cloud.port=0" + certs.stranger() + workers_arg(w1, w2) +
                          stories_model, true);
  REQUIRE(wait_for_line(stranger, "cannot connect", 5));
  stranger.stop_reading();
  // Garbage and the stranger's tries while eight responses run: had a
  // refused peer cost the gateway its connection, sessions would have been
  // lost and resumed.
  const auto before = rss_kib(w1.pid);
  std::thread hostile([&] { send_garbage(w1.port, 300); });
  auto r = run_ceco(edge_args(gateway.port, "exact") + " --set link.latency_ms=10");
  hostile.join();
  REQUIRE(r.status == 0);
  auto lines = json_lines(r.out);
  REQUIRE(lines.size() == 8);
  for (auto& line : lines) {
    CHECK(line["error"].is_null());
    CHECK(line["resumed"] == 0);
  }
  const auto after = rss_kib(w1.pid);
  CHECK(after - before < 32 * 1024);  // bounded: nothing kept per refused peer
  gateway.stop_reading();
}

TEST_CASE("two gateways over the same workers: one killed mid-response, the edges fail over to the other and finish") {
  cluster_certs certs;
  const std::string slow = " --set compute.mode=profile --set compute.profile=paper-a100";
  node_process w1("--role worker --set cluster.port=0 --stats 0.02" + slow + certs.node("worker1") +
                    stories_model, true);
  node_process w2("--role worker --set cluster.port=0" + slow + certs.node("worker2") + stories_model);
  REQUIRE(w1.port > 0);
  REQUIRE(w2.port > 0);
  node_process g1("--role gateway --set cloud.port=0" + certs.node("gateway") + workers_arg(w1, w2) +
                    stories_model, true);
  node_process g2("--role gateway --set cloud.port=0" + certs.node("gateway") + workers_arg(w1, w2) +
                    stories_model, true);
  for (auto* g : {&g1, &g2}) {
    REQUIRE(wait_for_line(*g, "joined", 5));
    REQUIRE(wait_for_line(*g, "joined", 5));
    g->stop_reading();
  }
  node_process single("--set cloud.port=0" + stories_model);
  auto alone = run_ceco(edge_args(single.port, "exact"));
  REQUIRE(alone.status == 0);
  std::vector<std::vector<int32_t>> expected;
  for (auto& line : json_lines(alone.out))
    expected.push_back(line["tokens"].get<std::vector<int32_t>>());
  REQUIRE(expected.size() == 8);

  std::string out;
  std::thread edges([&] {
    out = run_ceco(edge_args(g1.port, "exact") +
                   fmt::format(" --set 'cloud.hosts=[\"127.0.0.1:{}\"]' --set link.latency_ms=20", g2.port)).out;
  });
  REQUIRE(holds_sessions(w1));  // mid-response
  g1.kill_now();
  edges.join();
  // Every response moved to the other gateway.
  CHECK(check_finished(out, expected) >= 8);
  w1.stop_reading();
}

TEST_CASE("a gateway, two workers and edges in network namespaces run where the machine allows it") {
  auto [code, out] = run_shell("bash " + std::string(CECO_SOURCE_DIR) + "/deploy/cluster-netns.sh --binary " +
                               CECO_BINARY + " --edges 4 --max-tokens 10 --json 2>&1");
  if (code == 77)
    return skip_test("network namespaces are not available here: " + out);
  REQUIRE_MESSAGE(code == 0, out);
  auto lines = json_lines(out);
  REQUIRE_MESSAGE(lines.size() == 4, out);
  for (auto& j : lines) {
    CHECK(j["n_generated"] == 10);
    CHECK(j["degraded_tokens"] == 0);
  }
}
