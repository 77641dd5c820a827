// What a new user runs first (issue 26): each command's exit status, the
// messages of flag and settings errors, the README's examples, and the
// numbers and warnings printed along the way.

#include "test/support.hpp"
#include "test/ceco_process.hpp"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

using namespace ceco::test;

namespace {

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

/// `ceco <args>` with stdout and stderr, stopped after `seconds` (status 124).
run_result run_ceco_for(const std::string& args, int seconds) {
  return run_shell("timeout " + std::to_string(seconds) + " " + std::string(CECO_BINARY) + " " +
                   args + " 2>&1");
}

/// The port after the last ':' of a line.
int port_of(const std::string& line) {
  auto at = line.rfind(':');
  return at == std::string::npos ? 0 : std::atoi(line.c_str() + at + 1);
}

/// A `ceco serve --local-cloud` on a free loopback port; its first lines read
/// (stderr included), up to and including the model line.
struct local_server {
  ceco_process proc;
  int port = 0;
  std::string lines;
  explicit local_server(const std::string& args)
    : proc("serve --local-cloud --port 0 " + args, true) {
    for (int i = 0; i < 6; ++i) {
      auto l = proc.line();
      if (l.empty())
        break;
      lines += l;
      if (contains(l, "listening on"))
        port = port_of(l);
      if (contains(l, "ceco serve: model"))
        break;
    }
    REQUIRE_MESSAGE(port > 0, lines);
  }
};

} // namespace

TEST_CASE("every command exits 1 on a bad flag, a bad setting or a missing file") {
  for (std::string cmd : {"generate", "bench", "sim", "edge", "cloud", "serve", "tune-exits",
                          "experiment", "train", "tokenize", "quantize"}) {
    CAPTURE(cmd);
    auto r = run_ceco(cmd + " --no-such-flag");
    CHECK(r.status == 1);
    // The flag, or first a required argument the command lacks.
    CHECK((contains(r.out, "--no-such-flag") || contains(r.out, "is required")));
  }
  auto value = run_ceco("generate --max-tokens many");
  CHECK(value.status == 1);
  CHECK(contains(value.out, "--max-tokens"));
  for (std::string cmd : {"sim", "edge", "cloud", "serve"}) {
    CAPTURE(cmd);
    auto key = run_ceco_for(cmd + " --set nokey=1", 60);
    CHECK(key.status == 1);
    CHECK(contains(key.out, "unknown key 'nokey'"));
    auto file = run_ceco_for(cmd + " --config /nonexistent/ceco.toml", 60);
    CHECK(file.status == 1);
    CHECK(contains(file.out, "/nonexistent/ceco.toml: no such configuration file"));
  }
  auto experiment = run_ceco("experiment /nonexistent/x.toml");
  CHECK(experiment.status == 1);
  CHECK(contains(experiment.out, "/nonexistent/x.toml"));
  auto out = run_ceco("experiment " + std::string(CECO_SOURCE_DIR) +
                      "/config/experiments/smoke.toml --out /proc/no-such/x");
  CHECK(out.status == 1);
  CHECK(contains(out.out, "--out /proc/no-such/x: cannot create the folder"));
  auto heads = run_ceco("tune-exits --model " + stories_gguf() +
                        " --steps 1 --self-generated 300 --out /nonexistent/dir/h.gguf");
  CHECK(heads.status == 1);
  CHECK(contains(heads.out, "/nonexistent/dir/h.gguf: cannot open for writing"));
  for (std::string cmd : {"generate", "bench", "tune-exits", "tokenize --text x"}) {
    CAPTURE(cmd);
    auto model = run_ceco(cmd + " --model /nonexistent/m.gguf");
    CHECK(model.status == 1);
    CHECK(contains(model.out, "/nonexistent/m.gguf"));
  }
  // A peer: an edge with nothing listening on its cloud's port.
  auto edge = run_ceco_for("edge --set cloud.port=1 --set cloud.connect_tries=1 --max-tokens 2", 60);
  CHECK(edge.status == 1);
  CHECK(contains(edge.out, "cannot reach the cloud at 127.0.0.1:1"));
  auto serve = run_ceco_for("serve --port 0 --set cloud.port=1 --set cloud.connect_tries=1", 60);
  CHECK(serve.status == 1);
  CHECK(contains(serve.out, "cannot reach the cloud at 127.0.0.1:1"));
  // Help and version are not errors.
  CHECK(run_ceco("--help").status == 0);
  CHECK(run_ceco("--version").status == 0);
  CHECK(run_ceco("sim --help").status == 0);
}

TEST_CASE("a misspelt command or settings key gets the nearest names, not a list of everything") {
  auto command = run_ceco("genrate --prompt hi");
  CHECK(command.status == 1);
  CHECK(contains(command.out, "unknown command 'genrate'; did you mean 'generate'?"));
  auto far = run_ceco("frobnicate");
  CHECK(far.status == 1);
  CHECK(contains(far.out, "unknown command 'frobnicate'"));
  CHECK_FALSE(contains(far.out, "did you mean"));
  CHECK(run_ceco("").status == 1);  // no command at all

  auto key = run_ceco("sim --set policy.threshhold=0.9");
  CHECK(key.status == 1);
  CHECK(contains(key.out, "unknown key 'policy.threshhold'; did you mean policy.threshold"));
  CHECK_FALSE(contains(key.out, "session.ttl_s"));  // no dump of every key
  auto section = run_ceco("sim --set threshold=0.9");
  CHECK(section.status == 1);
  CHECK(contains(section.out, "did you mean policy.threshold"));
}

TEST_CASE("the README's first bench example runs on the default model, and --shape is case-blind") {
  auto r = run_ceco("bench --json");
  REQUIRE_MESSAGE(r.status == 0, r.out);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["n_generated"] == 127);
  CHECK(j["n_prompt"].get<int>() + j["n_generated"].get<int>() < 256);
  auto text = run_ceco("bench");
  CHECK(text.status == 0);
  CHECK(contains(text.out, "bench: 128 prompt and 127 decoded tokens, to fit the model's context of 256"));
  // Given flags that do not fit are still an error naming them.
  auto given = run_ceco("bench --prompt-tokens 200 --tokens 100");
  CHECK(given.status == 1);
  CHECK(contains(given.out, "--prompt-tokens 200 + --tokens 100 exceed the model's context of 256"));
  auto shape = run_ceco("bench --shape 260k --tokens 4 --prompt-tokens 4 --json");
  REQUIRE_MESSAGE(shape.status == 0, shape.out);
  CHECK(nlohmann::json::parse(shape.out)["model"] == "random 260K F32");
  // Threads: all cores by default, as generate.
  auto help = run_ceco("bench --help");
  CHECK(contains(help.out, "--threads INT:NONNEGATIVE=0"));
}

TEST_CASE("every shipped experiment file validates against its model") {
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(std::string(CECO_SOURCE_DIR) +
                                                     "/config/experiments")) {
    if (e.path().extension() != ".toml")
      continue;
    ++files;
    CAPTURE(e.path().string());
    auto r = run_ceco("experiment " + e.path().string() + " --check");
    CHECK_MESSAGE(r.status == 0, r.out);
    CHECK(contains(r.out, "valid"));
  }
  CHECK(files >= 7);
  temp_dir tmp;
  auto bad = tmp.file("bad.toml");
  std::ofstream(bad) << "[sweep]\nsplit = [1, 4]\n";
  auto r = run_ceco("experiment " + bad + " --check --out " + tmp.file("out"));
  CHECK(r.status == 1);
  CHECK(contains(r.out, "split.layer is 4, but the model has 4 layers"));
  CHECK_FALSE(std::filesystem::exists(tmp.file("out")));  // --check writes nothing
}

TEST_CASE("generate reads its prompt from a file or stdin") {
  temp_dir tmp;
  auto file = tmp.file("prompt.txt");
  std::ofstream(file) << "Once upon a time\n";
  const std::string model = " --model " + stories_gguf() + " --max-tokens 8 --json";
  auto from_flag = run_ceco("generate --prompt 'Once upon a time'" + model);
  auto from_file = run_ceco("generate --prompt-file " + file + model);
  auto from_stdin = run_shell("printf 'Once upon a time' | " + std::string(CECO_BINARY) +
                              " generate --prompt-file -" + model + " 2>&1");
  REQUIRE(from_flag.status == 0);
  REQUIRE_MESSAGE(from_file.status == 0, from_file.out);
  REQUIRE_MESSAGE(from_stdin.status == 0, from_stdin.out);
  auto tokens = nlohmann::json::parse(from_flag.out)["tokens"];
  CHECK(nlohmann::json::parse(from_file.out)["tokens"] == tokens);
  CHECK(nlohmann::json::parse(from_stdin.out)["tokens"] == tokens);
  auto missing = run_ceco("generate --prompt-file /nonexistent/p.txt");
  CHECK(missing.status == 1);
  CHECK(contains(missing.out, "--prompt-file /nonexistent/p.txt: cannot open"));
  auto both = run_ceco("generate --prompt x --prompt-file " + file);
  CHECK(both.status == 1);
}

TEST_CASE("with --sessions the exits column is a mean per response, as the other columns") {
  auto r = run_ceco("sim --mode collaborative --sessions 3 --max-tokens 8 --set link.latency_ms=0");
  REQUIRE_MESSAGE(r.status == 0, r.out);
  std::istringstream in(r.out);
  std::string line;
  bool seen = false;
  while (std::getline(in, line)) {
    if (seen || line.rfind("collaborative ", 0) != 0)
      continue;  // the table's line only, not the throughput's below it
    seen = true;
    std::istringstream fields(line);
    std::string mode;
    double tokens = 0;
    fields >> mode >> tokens;
    CHECK(tokens == 8.0);
    double sum = 0;
    const std::regex exit_count(R"((\w+):([0-9.]+))");
    for (auto it = std::sregex_iterator(line.begin(), line.end(), exit_count);
         it != std::sregex_iterator(); ++it)
      sum += std::stod((*it)[2]);
    CHECK(sum == doctest::Approx(8.0));
  }
  CHECK(seen);
  CHECK(contains(r.out, "tokens per exit = mean tokens per response"));
}

TEST_CASE("tune-exits warns when tuning made the heads worse and keeps an existing file") {
  temp_dir tmp;
  auto out = tmp.file("heads.gguf");
  std::ofstream(out) << "earlier heads";
  // A learning rate that wrecks the heads in a few steps.
  const std::string args = "tune-exits --model " + stories_gguf() +
                           " --exits 3 --steps 5 --lr 50 --self-generated 1500 --out " + out;
  auto r = run_ceco(args);
  CHECK(r.status == 1);
  CHECK(contains(r.out, "WARNING: agreement with the final layer got worse by tuning (exit 3 "));
  CHECK(contains(r.out, "--out " + out + " exists"));
  CHECK(contains(r.out, "--force"));
  CHECK(std::filesystem::file_size(out) == std::string("earlier heads").size());
  auto forced = run_ceco(args + " --force");
  CHECK(forced.status == 0);
  CHECK(contains(forced.out, "WARNING: agreement with the final layer got worse"));
  CHECK(std::filesystem::file_size(out) > 1000);
}

TEST_CASE("the README names configuration files that exist, and they load") {
  std::ifstream in(std::string(CECO_SOURCE_DIR) + "/README.md");
  std::string readme((std::istreambuf_iterator<char>(in)), {});
  std::regex config(R"(--config ([^\s`]+\.toml))");
  int named = 0;
  for (auto it = std::sregex_iterator(readme.begin(), readme.end(), config);
       it != std::sregex_iterator(); ++it) {
    std::string path = (*it)[1];
    if (path.rfind("/etc/", 0) == 0)
      continue;
    ++named;
    CAPTURE(path);
    CHECK(std::filesystem::exists(std::string(CECO_SOURCE_DIR) + "/" + path));
  }
  CHECK(named >= 2);
  for (auto file : {"config/cloud.toml", "config/edge.toml"}) {
    CAPTURE(file);
    auto r = run_ceco("edge --print-config --config " + std::string(CECO_SOURCE_DIR) + "/" + file);
    CHECK(r.status == 0);
    CHECK(contains(r.out, "cloud.port = 7070"));
  }
}

TEST_CASE("ceco serve simulates no link delay by default and says what it simulates") {
  {
    local_server s("");
    CHECK(contains(s.lines, "link: no simulated delay"));
    httplib::Client c("127.0.0.1", s.port);
    auto h = c.Get("/health");
    REQUIRE(h);
    CHECK(nlohmann::json::parse(h->body)["link_delay"] == "no simulated delay");
  }
  local_server delayed("--set link.latency_ms=5 --set link.bandwidth_mbps=30");
  CHECK(contains(delayed.lines, "link: simulated 5 ms one way, 30 Mbit/s"));
  httplib::Client c("127.0.0.1", delayed.port);
  auto h = c.Get("/health");
  REQUIRE(h);
  CHECK(contains(nlohmann::json::parse(h->body)["link_delay"].get<std::string>(), "simulated 5 ms"));
}

/// A loopback port this test listens on, as another program would hold it.
struct held_port {
  int sock = -1;
  int port = 0;
  held_port() {
    sock = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(sock >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(sock, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(sock, 1) == 0);
    socklen_t len = sizeof a;
    ::getsockname(sock, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~held_port() { ::close(sock); }
};

TEST_CASE("ceco serve on a port in use fails and says why") {
  local_server first("");
  auto second = run_ceco_for("serve --local-cloud --port " + std::to_string(first.port), 60);
  CHECK(second.status == 1);
  CHECK(contains(second.out, "cannot listen on 127.0.0.1:" + std::to_string(first.port) +
                               ": Address already in use"));
  // A port another program holds.
  held_port other;
  const int held = other.port;
  auto third = run_ceco_for("serve --local-cloud --port " + std::to_string(held), 60);
  CHECK(third.status == 1);
  CHECK(contains(third.out, "cannot listen on 127.0.0.1:" + std::to_string(held) +
                              ": Address already in use"));
}

TEST_CASE("ceco cloud --metrics-port on a port in use fails and says why") {
  // A port another program listens on, as a second cloud's metrics would find it.
  held_port other;
  const int held = other.port;
  auto cloud = run_ceco_for("cloud --set cloud.port=0 --metrics-port " + std::to_string(held), 60);
  CHECK(cloud.status == 1);
  CHECK(contains(cloud.out, "cannot serve metrics on 127.0.0.1:" + std::to_string(held) +
                              ": Address already in use"));
}

TEST_CASE("ceco serve warns when the chat template's markers are not special tokens of the model") {
  local_server chatml("--chat-template chatml");
  CHECK(contains(chatml.lines, "WARNING: chat template chatml: <|im_start|>, <|im_end|> are not "
                               "special tokens"));
  local_server plain("--chat-template plain");
  CHECK_FALSE(contains(plain.lines, "WARNING"));
}

TEST_CASE("ceco cloud accepts cloud.host=localhost as edge and serve do") {
  ceco_process cloud("cloud --set cloud.host=localhost --set cloud.port=0", true);
  auto line = cloud.line();
  CHECK(contains(line, "ceco cloud: serving"));
  CHECK(contains(line, "on 127.0.0.1:"));
  CHECK(port_of(line) > 0);
}

TEST_CASE("ceco sim --mode all prints the strategies in the paper's regime under the measured table") {
  auto r = run_ceco("sim --mode all --max-tokens 16");
  REQUIRE_MESSAGE(r.status == 0, r.out);
  const auto measured = r.out.find("(means per response");
  const auto regime = r.out.find("in the paper's regime (NOT measured: device profile paper-a100");
  REQUIRE(measured != std::string::npos);
  REQUIRE(regime != std::string::npos);
  CHECK(measured < regime);
  for (auto mode : {"cloud", "naive", "standalone", "collaborative", "speculative", "exact"}) {
    CAPTURE(mode);
    CHECK(std::regex_search(r.out.substr(regime),
                            std::regex(std::string("\n") + mode + " +[0-9.]+% .* [0-9.]+x\n")));
  }
  CHECK(contains(r.out, "Collaboration pays when the cloud's compute per token is large"));
  auto without = run_ceco("sim --mode all --max-tokens 4 --no-paper-regime");
  CHECK(without.status == 0);
  CHECK_FALSE(contains(without.out, "paper's regime"));
  auto json = run_ceco("sim --mode all --max-tokens 4 --json");
  CHECK(json.status == 0);
  CHECK_FALSE(contains(json.out, "paper's regime"));
}

TEST_CASE("a generated start-of-text token prints as its text, not as nothing") {
  // stories260K starts a new story after 341 greedy tokens of this prompt.
  auto r = run_ceco("generate --model " + stories_gguf() +
                    " --prompt 'Once upon a time' --max-tokens 345 --threads 1 --exits 4");
  REQUIRE(r.status == 0);
  CHECK(contains(r.out, "a good friend.\"<s>Once upon a"));
  CHECK(contains(r.out, "  341  \"<s>\""));  // the exit trace's row
}

TEST_CASE("two nodes: the cloud logs each refused edge, and the edge is told why without retrying") {
  ceco_process cloud("cloud --set cloud.port=0 --set cloud.secret=s3cret", true);
  auto banner = cloud.line();
  const int port = port_of(banner.substr(0, banner.find(" over ")));
  REQUIRE_MESSAGE(port > 0, banner);
  const std::string at = " --max-tokens 4 --set cloud.port=" + std::to_string(port);
  auto no_secret = run_ceco_for("edge" + at, 60);
  CHECK(no_secret.status == 1);
  CHECK(contains(no_secret.out, "no cloud.secret set on this edge, and the cloud requires one"));
  auto other_model = run_ceco_for("edge --set cloud.secret=s3cret --set model.path=" +
                                  stories_gguf() + at, 60);
  CHECK(other_model.status == 1);
  CHECK(contains(other_model.out, "the cloud refuses this edge's hello: hello.n_layer"));
  CHECK(contains(other_model.out, "the edge's model is not the cloud's"));
  CHECK_FALSE(contains(other_model.out, "retrying"));
  CHECK_FALSE(contains(other_model.out, "cannot reach"));
  auto first = cloud.line();
  auto second = cloud.line();
  CHECK(contains(first, "ceco cloud: refused the connection from 127.0.0.1:"));
  CHECK(contains(first, "did not prove the shared secret"));
  CHECK(contains(second, "ceco cloud: refused the connection from 127.0.0.1:"));
  CHECK(contains(second, "hello.n_layer"));
  // An edge whose model passes the bounds but differs: the gateway's refusal.
  ceco_process stories("cloud --set cloud.port=0 --set cloud.secret=s3cret --set model.path=" +
                       stories_gguf(), true);
  auto stories_banner = stories.line();
  const int stories_port = port_of(stories_banner.substr(0, stories_banner.find(" over ")));
  REQUIRE_MESSAGE(stories_port > 0, stories_banner);
  auto smaller = run_ceco_for("edge --max-tokens 4 --set cloud.secret=s3cret --set cloud.port=" +
                              std::to_string(stories_port), 60);
  CHECK(smaller.status == 1);
  CHECK(contains(smaller.out, "(different models)"));
  CHECK_FALSE(contains(smaller.out, "retrying"));
  auto refused = stories.line();
  CHECK(contains(refused, "ceco cloud: refused the edge at 127.0.0.1:"));
  CHECK(contains(refused, "(different models)"));
}

TEST_CASE("two nodes: a plain edge against a TLS cloud fails at once, saying so") {
  temp_dir certs;
  auto made = run_shell("sh " + std::string(CECO_SOURCE_DIR) + "/deploy/make-tls-certs.sh " +
                        certs.path.string() + " 2>&1");
  REQUIRE_MESSAGE(made.status == 0, made.out);
  ceco_process cloud("cloud --set cloud.port=0 --set cloud.tls=true --set cloud.tls_certificate=" +
                     certs.file("cloud.pem") + " --set cloud.tls_key=" + certs.file("cloud-key.pem") +
                     " --set cloud.tls_ca_file=" + certs.file("ca.pem"), true);
  auto banner = cloud.line();
  const int port = port_of(banner.substr(0, banner.find(" over ")));
  REQUIRE_MESSAGE(port > 0, banner);
  const auto t0 = std::chrono::steady_clock::now();
  auto plain = run_ceco_for("edge --max-tokens 4 --set cloud.port=" + std::to_string(port), 60);
  const double seconds =
    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(plain.status == 1);
  CHECK(contains(plain.out, "speaks TLS (its cloud.tls = true) and this edge has cloud.tls = false"));
  CHECK_FALSE(contains(plain.out, "retrying"));
  // One try: a handshake's timeout (5 s) and the edge's start, however
  // loaded the machine; five tries would take 25 s and 12 s of backoff.
  CHECK(seconds < 20);
  CHECK(contains(cloud.line(), "ceco cloud: refused the connection from 127.0.0.1:"));
}
