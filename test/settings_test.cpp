#include "test/support.hpp"

#include <cstring>
#include <fstream>
#include <random>

#include "config/settings.hpp"
#include "test/cloud_sites.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

std::string write(const temp_dir& dir, const std::string& text) {
  auto path = dir.file("s.toml");
  std::ofstream(path) << text;
  return path;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

} // namespace

TEST_CASE("the shipped config/sim.toml lists every key with its default") {
  auto shipped = load_settings(std::string(CECO_SOURCE_DIR) + "/config/sim.toml", {});
  CHECK(describe_settings(shipped) == describe_settings(settings{}));
}

TEST_CASE("a settings file and --set overrides are applied in order") {
  temp_dir tmp;
  auto path = write(tmp, "[policy]\nthreshold = 0.9\nmode = \"standalone\"\n[link]\nlatency_ms = 12\n");
  auto s = load_settings(path, {"policy.threshold=0.7", "model.exits=2,3", "split.layer=3",
                                "generation.prompt=Hello there", "upload.dtype=\"f32\""});
  CHECK(s.policy.threshold == doctest::Approx(0.7));
  CHECK(s.policy.mode == strategy::standalone);
  CHECK(s.link.latency_ms == doctest::Approx(12.0));
  CHECK(s.model.exits == std::vector<int>{2, 3});
  CHECK(s.generation.prompt == "Hello there");
  CHECK(s.upload.dtype == "f32");
}

TEST_CASE("unknown keys, wrong types and impossible values are rejected with key and values") {
  temp_dir tmp;
  auto err = [&](const std::string& toml, std::vector<std::string> sets = {}) {
    auto path = write(tmp, toml);
    return error_of([&] { load_settings(path, sets); });
  };
  CHECK(contains(err("[policy]\nthreshhold = 0.8\n"), "unknown key 'policy.threshhold'"));
  CHECK(contains(err("[polcy]\nthreshold = 0.8\n"), "unknown section [polcy]"));
  CHECK(contains(err("[policy]\nthreshold = \"high\"\n"), "policy.threshold must be a number or \"auto\", got \"high\""));
  CHECK(contains(err("[policy]\nthreshold = -0.5\n"), "policy.threshold must be a number >= 0, got -0.5"));
  CHECK(contains(err("[split]\nlayer = 2.5\n"), "split.layer must be an integer, got 2.5"));
  CHECK(contains(err("[policy]\nmode = \"fast\"\n"), "policy.mode must be one of \"cloud\", \"naive\", \"standalone\", \"collaborative\", \"speculative\", \"exact\", got \"fast\""));
  CHECK(contains(err("[model]\nexits = [3, 2]\n"), "model.exits must be strictly ascending, got [3, 2]"));
  CHECK(contains(err("[model]\npath = \"missing.gguf\"\n"), "model.path: no such file or folder"));
  CHECK(contains(err("[session]\nttl_s = 0\n"), "session.ttl_s must be a number > 0, got 0"));
  CHECK(contains(err("[link\n"), "s.toml:"));
  CHECK(contains(err("", {"policy.threshold=abc"}), "policy.threshold must be a number or \"auto\", got 'abc'"));
  CHECK(contains(err("", {"nokey=1"}), "unknown key 'nokey'"));
  CHECK(contains(err("", {"policy.threshold"}), "expected key=value"));
  CHECK(contains(error_of([&] { load_settings(tmp.file("none.toml"), {}); }), "no such configuration file"));
  CHECK(contains(err("[cloud]\ntls = \"yes\"\n"), "cloud.tls must be true or false, got \"yes\""));
  CHECK(contains(err("[cloud]\ntls = true\ntls_certificate = \"nope.pem\"\n"),
                 "cloud.tls_certificate: no such file or folder"));
  auto pem = tmp.file("node.pem");
  std::ofstream(pem) << "-";
  CHECK(contains(err("", {"cloud.tls_certificate=" + pem, "cloud.tls_key=" + pem}),
                 "only used with cloud.tls = true"));
  CHECK(contains(err("", {"cloud.tls=true", "cloud.tls_certificate=" + pem}),
                 "go together, but only cloud.tls_certificate is set"));
  CHECK(contains(err("", {"cloud.tls=true", "cloud.tls_certificate=" + pem, "cloud.tls_key=" + pem}),
                 "cloud.tls_ca_file is empty"));
  CHECK(contains(err("", {"cloud.tls=true"}),
                 "cloud.tls = true needs cloud.tls_certificate, cloud.tls_key and cloud.tls_ca_file"));
  auto tls = load_settings("", {"cloud.tls=true", "cloud.tls_certificate=" + pem,
                                "cloud.tls_key=" + pem, "cloud.tls_ca_file=" + pem});
  CHECK(tls.cloud.tls);
}

TEST_CASE("every numeric setting has a range: extremes are refused with key, bound and value") {
  temp_dir tmp;
  auto err = [&](const std::string& toml) {
    return error_of([&] { load_settings(write(tmp, toml), {}); });
  };
  auto set_err = [&](const std::string& assignment) {
    return error_of([&] { load_settings("", {assignment}); });
  };
  CHECK(contains(err("[runtime]\nthreads = 1000000000\n"),
                 "runtime.threads must be an integer <= 256, got 1000000000"));
  CHECK(contains(err("[session]\nttl_s = inf\n"),
                 "session.ttl_s must be a finite number <= 2592000, got inf"));
  CHECK(contains(err("[session]\nttl_s = 1e300\n"), "session.ttl_s must be a finite number <= 2592000"));
  CHECK(contains(err("[session]\nttl_s = nan\n"), "session.ttl_s must be a number > 0"));
  CHECK(contains(err("[link]\nlatency_ms = 1e17\n"), "link.latency_ms must be a finite number <= 60000"));
  CHECK(contains(err("[link]\njitter_ms = inf\n"), "link.jitter_ms must be a finite number"));
  CHECK(contains(err("[link]\nbandwidth_mbps = inf\n"), "link.bandwidth_mbps must be a finite number"));
  CHECK(contains(err("[policy]\nthreshold = inf\n"), "policy.threshold must be a finite number <= 1000"));
  CHECK(contains(err("[session]\nmax_memory_mb = 1e300\n"), "session.max_memory_mb must be a finite number"));
  CHECK(contains(err("[session]\nmax_sessions = 1000000000\n"), "session.max_sessions must be an integer <= 1000000"));
  CHECK(contains(err("[session]\nbatch_sessions = 1000000000\n"), "session.batch_sessions must be an integer <= 4096"));
  CHECK(contains(err("[split]\nlayer = 1000000000\n"), "split.layer must be an integer <= 4096"));
  CHECK(contains(err("[generation]\nmax_tokens = 1000000000\n"), "generation.max_tokens must be an integer <= 1000000"));
  CHECK(contains(err("[cloud]\nheartbeat_ms = 1000000000\n"), "cloud.heartbeat_ms must be an integer <= 3600000"));
  CHECK(contains(err("[cloud]\nrequest_timeout_ms = 1000000000\n"), "cloud.request_timeout_ms must be an integer <= 3600000"));
  CHECK(contains(err("[cloud]\nconnect_tries = 1000000000\n"), "cloud.connect_tries must be an integer <= 1000"));
  CHECK(contains(set_err("cloud.port=70000"), "cloud.port must be an integer <= 65535, got 70000"));
  CHECK(contains(set_err("runtime.threads=99999999999"), "runtime.threads must be an integer <= 256"));
  CHECK(contains(set_err("model.exits=1,100000"), "model.exits must hold layer counts in 1..4096, got 100000"));
  CHECK(contains(set_err("sweep.threshold=0.5,inf"), "sweep.threshold must be a list of numbers in [0, 1000]"));
  CHECK(contains(set_err("sweep.split=2,1000000000"), "sweep.split must be a list of integers in 1..4096"));
  CHECK(contains(set_err("sweep.exits=[[1,100000]]"), "lists of ascending layer counts in 1..4096"));
  // The bounds themselves are accepted.
  auto edge = load_settings("", {"runtime.threads=256", "session.ttl_s=2592000", "cloud.port=65535",
                                 "link.latency_ms=60000", "policy.threshold=1.5"});
  CHECK(edge.runtime.threads == 256);
  CHECK(edge.session.ttl_s == 2592000.0);
  CHECK(edge.cloud.port == 65535);
}

TEST_CASE("settings are checked against the model's shape") {
  model_config five{64, 172, 5, 8, 4, 512, 512};
  settings s;
  s.split.layer = 5;
  CHECK(contains(error_of([&] { check_against_model(s, five); }),
                 "split.layer is 5, but the model has 5 layers: the edge must run 1..4 of them"));
  s.split.layer = 2;
  s.model.exits = {2, 3};
  CHECK(contains(error_of([&] { check_against_model(s, five); }),
                 "model.exits has an exit after layer 3, past split.layer = 2"));
  s.model.exits = {};
  CHECK(contains(error_of([&] { check_against_model(s, five); }), "model.exits is empty"));
  s.policy.mode = strategy::cloud;
  CHECK(error_of([&] { check_against_model(s, five); }).empty());
}

TEST_CASE("path settings that no file can have are refused by name, never an internal error") {
  temp_dir tmp;
  auto set_err = [](const std::string& set) { return error_of([&] { load_settings("", {set}); }); };
  auto long_path = set_err("model.path=/tmp/" + std::string(100000, 'x'));
  CHECK(contains(long_path, "model.path"));
  CHECK(contains(long_path, "(100005 characters)"));
  CHECK(long_path.size() < 1000);
  auto nul = write(tmp, "[model]\npath = \"\\u0000\"\n");
  CHECK(contains(error_of([&] { load_settings(nul, {}); }), "model.path"));
  for (auto key : {"model.tokenizer", "model.exit_heads", "experiment.dataset"})
    CHECK(contains(set_err(std::string(key) + "=" + tmp.path.string()), "is a folder, a file is expected"));
  // As commands: exit 1 with the key, not exit 2.
  for (std::string args : {"--set model.path=/tmp/" + std::string(100000, 'x'),
                           "--config " + nul,
                           "--set model.exit_heads=" + tmp.path.string(),
                           "--set model.path=" + tmp.path.string()}) {
    CAPTURE(args.substr(0, 100));
    auto r = run_ceco("sim --max-tokens 2 " + args);
    CHECK(r.status == 1);
    CHECK(contains(r.out, "ceco: error: "));
  }
}

TEST_CASE("settings that cannot work together are refused naming every key involved") {
  auto refused = [](const std::vector<std::string>& sets) {
    auto s = load_settings("", sets);
    return error_of([&] { check_consistency(s); });
  };
  auto ttl = refused({"session.ttl_s=0.001"});
  CHECK(contains(ttl, "session.ttl_s = 0.001"));
  CHECK(contains(ttl, "link.latency_ms"));
  auto latency = refused({"link.latency_ms=6000"});
  CHECK(contains(latency, "link.latency_ms = 6000"));
  CHECK(contains(latency, "cloud.request_timeout_ms = 10000"));
  CHECK(contains(refused({"link.latency_ms=20", "link.jitter_ms=70", "cloud.request_timeout_ms=100"}),
                 "link.jitter_ms = 70"));
  // Enough room is accepted.
  CHECK(refused({"session.ttl_s=0.2", "link.latency_ms=0"}).empty());
  CHECK(refused({"link.latency_ms=4000", "cloud.request_timeout_ms=9000", "session.ttl_s=60"}).empty());
  // The commands refuse them before running (the probe's cases: exit 0 with
  // 15 of 16 tokens degraded; every request timing out).
  for (std::string set : {"session.ttl_s=0.001", "link.latency_ms=6000"}) {
    CAPTURE(set);
    auto r = run_ceco("sim --max-tokens 4 --set " + set);
    CHECK(r.status == 1);
    CHECK(contains(r.out, set.substr(0, set.find('='))));
  }
}

TEST_CASE("settings fuzzer: each accepted combination runs undegraded, each refused one names a key") {
  struct choice {
    std::string key;
    std::vector<std::string> values;
  };
  const std::vector<choice> space = {
    {"session.ttl_s", {"0.001", "0.05", "0.2", "60"}},
    {"link.latency_ms", {"0", "1", "3", "30"}},
    {"link.jitter_ms", {"0", "2", "40"}},
    {"cloud.request_timeout_ms", {"1", "50", "10000"}},
    {"policy.mode", {"cloud", "naive", "standalone", "collaborative", "speculative", "exact"}},
    {"policy.threshold", {"0", "0.8", "1.5"}},
    {"policy.min_exit_layer", {"0", "1", "3", "4"}},
    {"model.exits", {"2,3", "1", "3"}},
    {"split.layer", {"1", "3", "4"}},
    {"upload.mode", {"async", "sync"}},
    {"upload.dtype", {"f16", "f32"}},
    {"policy.max_draft", {"1", "16"}},
    {"model.context", {"0", "16", "64"}},
  };
  std::mt19937 rng(28005);
  // The cache's dtype from a generator of its own, so that the draws of
  // the keys above stay the combinations this test has always run.
  std::mt19937 kv_dtype_rng(16);
  int accepted = 0, refused = 0;
  for (int round = 0; round < 60; ++round) {
    std::vector<std::string> sets = {"model.path=" + stories_gguf(), "link.bandwidth_mbps=0",
                                     kv_dtype_rng() % 2 ? "model.kv_dtype=f16" : "model.kv_dtype=f32"};
    for (auto& c : space)
      if (rng() % 2)
        sets.push_back(c.key + "=" + c.values[rng() % c.values.size()]);
    std::string all;
    for (auto& s : sets)
      all += s + " ";
    CAPTURE(all);
    std::unique_ptr<sim_fixture> f;
    try {
      f = std::make_unique<sim_fixture>(sets);
    } catch (const config_error& e) {
      // Refused: clearly, naming a key of the space.
      const std::string what = e.what();
      bool named = false;
      for (auto& c : space)
        named = named || contains(what, c.key);
      CHECK_MESSAGE(named, what);
      ++refused;
      continue;
    }
    ++accepted;
    const auto mode = f->s.policy.mode;
    auto r = f->sim->run(f->m.vocab.encode("Once upon a time"), mode, 6);
    CHECK_MESSAGE(r.error.empty(), r.error);
    CHECK(r.degraded_tokens == 0);
    CHECK_FALSE(r.tokens.empty());
    // A threshold of 0 makes every token an exit's in collaborative mode.
    if (mode == strategy::collaborative && f->s.policy.threshold == 0.0) {
      int exited = 0;
      for (auto n : r.exit_counts)
        exited += n;
      CHECK(exited == int(r.tokens.size()));
    }
  }
  MESSAGE(accepted << " combinations accepted and run, " << refused << " refused");
  CHECK(accepted >= 10);
  CHECK(refused >= 10);
}

TEST_CASE("model.context sizes the caches below the file's context length") {
  // stories260K with llama.context_length raised to 2^20 in place.
  auto bytes = read_all(stories_gguf());
  const std::string key = "llama.context_length";
  auto at = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
  REQUIRE(at != bytes.end());
  const uint32_t huge = 1u << 20;
  std::memcpy(bytes.data() + size_t(at - bytes.begin()) + key.size() + 4, &huge, 4);
  temp_dir tmp;
  auto path = tmp.file("long-context.gguf");
  write_all(path, bytes, bytes.size());
  sim_fixture f({"model.path=" + path, "model.context=64", "link.latency_ms=0"});
  CHECK(f.m.model->config().max_seq == 64);
  auto r = f.sim->run(f.m.vocab.encode("Once upon a time"), "collaborative", 4);
  CHECK(r.error.empty());
  CHECK(r.tokens.size() == 4);
  CHECK(contains(error_of([&] { sim_fixture g({"model.path=" + stories_gguf(), "model.context=100000"}); }),
                 "model.context = 100000 is past the model's context length"));
}

TEST_CASE("model.kv_dtype: f32 by default, f16 on request, reaching the model's caches") {
  CHECK(settings{}.model.kv_dtype == "f32");
  CHECK(contains(error_of([] { load_settings("", {"model.kv_dtype=bf16"}); }),
                 "model.kv_dtype must be one of \"f16\", \"f32\", got \"bf16\""));
  temp_dir tmp;
  const auto file = write(tmp, "[model]\nkv_dtype = 16\n");
  CHECK(contains(error_of([&] { load_settings(file, {}); }), "model.kv_dtype must be a string, got 16"));
  CHECK(contains(error_of([] { parse_kv_dtype("half", "--kv-dtype"); }),
                 "--kv-dtype: expected f16 or f32, got \"half\""));
  for (const char* dtype : {"f16", "f32"}) {
    CAPTURE(dtype);
    sim_fixture f({"model.path=" + stories_gguf(), std::string("model.kv_dtype=") + dtype,
                   "link.latency_ms=0"});
    CHECK(kv_dtype_name(f.m.model->cache_dtype()) == std::string(dtype));
    CHECK(f.m.model->make_cache(0, 1, 4).dtype() == parse_kv_dtype(dtype, "test"));
    auto r = f.sim->run(f.m.vocab.encode("Once upon a time"), "collaborative", 4);
    CHECK(r.error.empty());
    CHECK(r.tokens.size() == 4);
  }
}

TEST_CASE("settings: exact uploads f32 unless upload.dtype says f16, and then says so") {
  settings s;
  CHECK(s.upload.dtype == "auto");
  CHECK(upload_dtype_of(s, strategy::exact) == "f32");
  CHECK(upload_dtype_of(s, strategy::collaborative) == "f16");
  CHECK(upload_dtype_of(s, strategy::speculative) == "f16");
  CHECK(exactness_of(s, strategy::exact) == "exact");
  CHECK(exactness_of(s, strategy::collaborative).empty());
  s.upload.dtype = "f16";
  CHECK(upload_dtype_of(s, strategy::exact) == "f16");
  CHECK(exactness_of(s, strategy::exact) == "exact to the f16 split");
  s.upload.dtype = "f32";
  CHECK(upload_dtype_of(s, strategy::collaborative) == "f32");
}
