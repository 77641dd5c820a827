// Device profiles (compute.mode = "profile"): the simulation takes the
// profile's time for each piece of work, and nothing else changes.

#include "test/support.hpp"
#include "test/cloud_sites.hpp"

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/deployment.hpp"
#include "actors/profile_clock.hpp"
#include "actors/sim_clock.hpp"
#include "config/compute_profile.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

/// The built-in model and its heads.
struct builtin_sim : sim_fixture {
  explicit builtin_sim(const std::vector<std::string>& sets)
      : sim_fixture(sets, std::string(CECO_SOURCE_DIR) + "/config/models/kjv/model.gguf",
                    std::string(CECO_SOURCE_DIR) + "/config/models/kjv/exits.gguf") {
    // nop
  }
};

const std::vector<std::string> profiled = {"compute.mode=profile", "compute.profile=paper-a100",
                                           "split.layer=2", "model.exits=2", "link.latency_ms=0",
                                           "link.bandwidth_mbps=0"};

} // namespace

TEST_CASE("the shipped profiles load, and a bad profile is refused by name") {
  auto names = compute_profile_names();
  CHECK(std::find(names.begin(), names.end(), "paper-a100") != names.end());
  CHECK(std::find(names.begin(), names.end(), "jetson-orin-a100") != names.end());
  auto p = load_compute_profile("paper-a100");
  CHECK(p.target_layers == 32);
  // The calibration the file states: a cloud token 37 ms, the 16-layer edge about 19 ms.
  CHECK(p.layers_us(p.cloud, 32, 1, 32) + p.heads_us(p.cloud, 1) == doctest::Approx(37'028).epsilon(0.001));
  CHECK(p.layers_us(p.edge, 16, 1, 32) + 2 * p.heads_us(p.edge, 1) == doctest::Approx(19'064).epsilon(0.001));
  // The classifier over a batch of rows costs little more than over one.
  CHECK(p.heads_us(p.cloud, 64) == 1'700 + 63 * 10);
  // One layer of a 4-layer model stands for 8 of the target's 32.
  CHECK(p.layers_us(p.cloud, 1, 1, 4) == p.layers_us(p.cloud, 8, 1, 32));
  temp_dir dir;
  std::ofstream(dir.file("bad.toml")) << "[target]\nlayers = 32\ndim = 4096\n[edge]\nlayer_ms = -1\n";
  CHECK(error_of([&] { load_compute_profile(dir.file("bad.toml")); }).find("edge.layer_ms must be in 0..") != std::string::npos);
  CHECK(error_of([&] { load_compute_profile("no-such-device"); }).find("no profile named 'no-such-device' (shipped: ") != std::string::npos);
  CHECK(error_of([&] { compute_profile_of(load_settings("", {"compute.mode=profile"})); }).find("needs compute.profile") != std::string::npos);
}

TEST_CASE("a profile run takes the profile's time for the work done, with the same tokens and bytes") {
  builtin_sim measured({"split.layer=2", "model.exits=2", "link.latency_ms=0", "link.bandwidth_mbps=0"});
  builtin_sim f(profiled);
  const auto p = load_compute_profile("paper-a100");
  const int L = f.m.model->config().n_layer;
  auto ids = f.m.vocab.encode("And the LORD said unto Moses");
  const auto P = int64_t(ids.size());
  const int n = 12;
  for (auto mode : {"cloud", "naive", "standalone", "collaborative", "speculative", "exact"}) {
    CAPTURE(mode);
    auto a = measured.sim->run(ids, mode, n);
    auto b = f.sim->run(ids, mode, n);
    REQUIRE(b.error.empty());
    CHECK(b.tokens == a.tokens);
    // Speculative and exact send what they drafted before each verdict came
    // back, the cloud one poll per reply: their traffic depends on timing.
    if (std::string(mode) == "speculative" || std::string(mode) == "exact"
        || std::string(mode) == "cloud")
      continue;
    CHECK(b.traffic.bytes_up == a.traffic.bytes_up);
    CHECK(b.traffic.bytes_down == a.traffic.bytes_down);
  }
  // Standalone: the prompt in one edge step, then one step per further
  // token, each followed by the exit heads.
  auto standalone = f.sim->run(ids, "standalone", n);
  REQUIRE(int(standalone.tokens.size()) == n);
  const int64_t edge = p.layers_us(p.edge, 2, P, L) + (n - 1) * p.layers_us(p.edge, 2, 1, L)
                       + n * p.heads_us(p.edge, 1);
  CHECK(standalone.edge_us == edge);
  CHECK(standalone.total_us >= edge);
  // The cloud strategy: the whole model over the prompt, then per token.
  auto cloud = f.sim->run(ids, "cloud", n);
  REQUIRE(int(cloud.tokens.size()) == n);
  const int64_t token = p.layers_us(p.cloud, L, 1, L) + p.heads_us(p.cloud, 1);
  const int64_t whole = p.layers_us(p.cloud, L, P, L) + p.heads_us(p.cloud, 1) + (n - 1) * token;
  CHECK(cloud.cloud_us == whole);
  // With a free link the response takes that long, up to the timers' resolution.
  MESSAGE("cloud strategy: " << cloud.total_us << " us for a profile cost of " << whole << " us");
  CHECK(cloud.total_us >= whole);
  CHECK(cloud.total_us <= whole + whole / 10 + 20'000);
  // Collaborative: the cloud's time is its catch-up of every uploaded
  // position plus a classifier row per cloud token, at least.
  auto collab = f.sim->run(ids, "collaborative", n);
  CHECK(collab.cloud_us >= p.layers_us(p.cloud, L - 2, 1, L) * collab.uploaded_positions / 2);
}

TEST_CASE("on virtual time a profile run's times are the profile's formulas exactly, at any host speed") {
  const int n = 12;
  const std::vector<std::string> modes = {"cloud",         "naive",       "standalone",
                                          "collaborative", "speculative", "exact"};
  std::map<std::string, response_report> real;
  std::vector<int32_t> ids;
  {
    builtin_sim f(profiled);  // the host's clock
    ids = f.m.vocab.encode("And the LORD said unto Moses");
    for (const auto& mode : modes)
      real[mode] = f.sim->run(ids, mode, n);
  }
  auto virtual_settings = profiled;
  virtual_settings.push_back("compute.clock=virtual");
  builtin_sim f(virtual_settings);
  CHECK(sim_clock::is_virtual());
  const auto p = load_compute_profile("paper-a100");
  const int L = f.m.model->config().n_layer;
  const auto P = int64_t(ids.size());
  for (const auto& mode : modes) {
    CAPTURE(mode);
    auto r = f.sim->run(ids, mode, n);
    REQUIRE(r.error.empty());
    CHECK(r.tokens == real[mode].tokens);
    if (mode != "speculative" && mode != "exact") {
      CHECK(r.traffic.bytes_up == real[mode].traffic.bytes_up);
      CHECK(r.traffic.bytes_down == real[mode].traffic.bytes_down);
    }
  }
  // Standalone: nothing but the edge's profiled work, back to back.
  auto standalone = f.sim->run(ids, "standalone", n);
  const int64_t edge = p.layers_us(p.edge, 2, P, L) + (n - 1) * p.layers_us(p.edge, 2, 1, L)
                       + n * p.heads_us(p.edge, 1);
  CHECK(standalone.edge_us == edge);
  CHECK(standalone.total_us == edge);
  // The cloud strategy with a free link: the full model's cost, to the microsecond.
  auto cloud = f.sim->run(ids, "cloud", n);
  const int64_t token = p.layers_us(p.cloud, L, 1, L) + p.heads_us(p.cloud, 1);
  const int64_t whole = p.layers_us(p.cloud, L, P, L) + p.heads_us(p.cloud, 1) + (n - 1) * token;
  CHECK(cloud.cloud_us == whole);
  CHECK(cloud.total_us == whole);
  // The same run twice gives the same times: nothing of the host is in them.
  for (const auto& mode : modes) {
    CAPTURE(mode);
    auto a = f.sim->run(ids, mode, n);
    auto b = f.sim->run(ids, mode, n);
    CHECK(a.total_us == b.total_us);
    CHECK(a.tokens == b.tokens);
  }
  // Four concurrent edges of the cloud strategy: their generations are
  // stepped together on the one cloud device (a request that arrives while a
  // step runs joins the next one), so they take little longer than one alone,
  // where one after another would take four times as long.
  auto four = f.sim->run_concurrently({ids, ids, ids, ids}, "cloud", n);
  for (const auto& r : four) {
    CHECK(r.tokens == cloud.tokens);
    CHECK(r.total_us >= whole);
    CHECK(r.total_us < whole + whole / 4);
  }
}

TEST_CASE("on virtual time the edge computes the prompt during the open's round trip") {
  // A 50 ms link each way and θ = 0, so that every token exits on the edge:
  // the first token waits for the longer of the open's round trip and the
  // prompt's edge step (here the round trip), then the exit head, where it
  // once waited for the round trip and then the prompt's step.
  auto sets = profiled;
  sets.insert(sets.end(), {"link.latency_ms=50", "compute.clock=virtual", "policy.threshold=0"});
  builtin_sim f(sets);
  const auto p = load_compute_profile("paper-a100");
  const int L = f.m.model->config().n_layer;
  auto ids = f.m.vocab.encode("And the LORD said unto Moses");
  const int64_t round_trip = 100'000;
  const int64_t prefill = p.layers_us(p.edge, 2, int64_t(ids.size()), L);
  REQUIRE(prefill < round_trip);
  for (const char* mode : {"collaborative", "speculative"}) {
    CAPTURE(mode);
    auto r = f.sim->run(ids, mode, 4);
    REQUIRE(r.error.empty());
    CHECK(r.first_token_us == round_trip + p.heads_us(p.edge, 1));
    // The open's round trip overlapped the prefill: the edge waited on the
    // network only for the rest of it.
    CHECK(r.comm_us <= round_trip - prefill);
  }
  // Naive asks the cloud for every token: a round trip more, and the
  // cloud's layers over the prompt, but not the edge's prompt step after the open.
  auto naive = f.sim->run(ids, "naive", 4);
  REQUIRE(naive.error.empty());
  CHECK(naive.first_token_us < 2 * round_trip + prefill + p.layers_us(p.cloud, 2, int64_t(ids.size()), L)
                                   + p.heads_us(p.cloud, 1));
}

TEST_CASE("on virtual time an open shorter than the edge's prompt step costs nothing") {
  // The first token comes after the edge's own prompt step and head, and
  // the edge never waited on the network (θ = 0: every token exits).
  auto sets = profiled;
  sets.insert(sets.end(), {"link.latency_ms=1", "compute.clock=virtual", "policy.threshold=0"});
  builtin_sim f(sets);
  const auto p = load_compute_profile("paper-a100");
  auto ids = f.m.vocab.encode("And the LORD said unto Moses");
  const int64_t prefill = p.layers_us(p.edge, 2, int64_t(ids.size()), f.m.model->config().n_layer);
  REQUIRE(prefill > 2'000);
  auto r = f.sim->run(ids, "collaborative", 4);
  REQUIRE(r.error.empty());
  CHECK(r.first_token_us == prefill + p.heads_us(p.edge, 1));
  CHECK(r.comm_us == 0);
}

TEST_CASE("on virtual time exact's first token comes when the cloud strategy's does, however soon "
          "the edge's next row arrives") {
  // exact's prompt goes up as ids: the cloud computes it while the edge
  // does. With a long prompt the edge's next row reaches the cloud before
  // the prompt's step ends; the draft on the prompt's last row is verified
  // in a step of its own (a classifier row), not after the layers over
  // that next row.
  builtin_sim f({"compute.mode=profile", "compute.profile=paper-a100", "split.layer=2",
                 "model.exits=2", "link.profile=paper", "compute.clock=virtual"});
  std::string text;
  for (int i = 0; i < 8; ++i)
    text += "And the LORD spake unto Moses, saying, Speak unto the children of Israel. ";
  auto ids = f.m.vocab.encode(text);
  REQUIRE(ids.size() >= 120);
  REQUIRE(ids.size() < 200);
  auto cloud = f.sim->run(ids, "cloud", 4);
  auto exact = f.sim->run(ids, "exact", 4);
  REQUIRE(exact.error.empty());
  CHECK(exact.tokens == cloud.tokens);
  CHECK(exact.first_token_us <= cloud.first_token_us);
}

TEST_CASE("virtual time is refused where time is real") {
  CHECK(error_of([] { check_clock(load_settings("", {"compute.clock=virtual"}), true); })
          .find("needs compute.mode = \"profile\"") != std::string::npos);
  CHECK(error_of([] {
          check_clock(load_settings("", {"compute.clock=virtual", "compute.mode=profile",
                                         "compute.profile=paper-a100"}),
                      false);
        }).find("applies to in-process simulations") != std::string::npos);
  CHECK(error_of([] { load_settings("", {"compute.clock=fast"}); }).find("compute.clock") != std::string::npos);
}

TEST_CASE("an exit evaluator placed on the cloud takes turns with the cloud layers on its GPU") {
  // A profile whose cloud heads and layers are slow: every evaluation holds
  // the cloud's GPU for 50 ms, every catch-up step for 2 ms per layer, and
  // the two cannot overlap.
  temp_dir dir;
  std::ofstream(dir.file("slow-heads.toml"))
    << "[profile]\ndescription = \"test\"\nsource = \"test\"\n[target]\nlayers = 32\ndim = 4096\n"
       "[edge]\nlayer_ms = 0.1\nlayer_row_ms = 0\nhead_ms = 0.1\n"
       "[cloud]\nlayer_ms = 2\nlayer_row_ms = 0\nhead_ms = 50\n";
  auto sets = profiled;
  sets[1] = "compute.profile=" + dir.file("slow-heads.toml");
  sets.push_back("compute.clock=virtual");
  sets.push_back("placement.exit_evaluator=cloud");
  sets.push_back("policy.threshold=0");  // always exits: the GPU's only heads are evaluations
  builtin_sim f(sets);
  auto ids = f.m.vocab.encode("And the LORD said unto Moses");
  const int n = 6, edges = 4;
  auto batch = f.sim->run_concurrently(std::vector<std::vector<int32_t>>(edges, ids),
                                       "collaborative", n);
  int64_t makespan = 0, busy = 0;
  for (auto& r : batch) {
    REQUIRE(r.error.empty());
    makespan = std::max(makespan, r.total_us);
    busy += r.cloud_us;  // its evaluations and its share of the catch-up steps
  }
  // Each token of each edge is one evaluation of one exit on the one GPU,
  // which also computes every catch-up step: it is never busy with two at once.
  const int64_t evaluations = int64_t(edges) * n * 50'000;
  MESSAGE("makespan " << makespan << " us; the GPU busy " << busy << " us, of it evaluations "
                      << evaluations << " us");
  CHECK(busy > evaluations);
  CHECK(makespan >= busy);
}

namespace {

struct holder_state {
  profile_clock clock;
  static inline const char* name = "holder";
};

} // namespace

TEST_CASE("profile time: work held in pieces stops after the piece in progress and frees its "
          "device") {
  caf::actor_system_config cfg;
  configure_virtual_time(cfg);
  caf::actor_system sys{cfg};
  sim_clock::use_virtual_time(&sys);
  auto profile = std::make_shared<const compute_profile>(load_compute_profile("paper-a100"));
  struct delivery {
    char work;
    int64_t took_us;
    int64_t at_us;
  };
  auto log = std::make_shared<std::vector<delivery>>();
  const auto t0 = sim_clock::now();
  auto since_us = [t0] {
    return std::chrono::duration_cast<std::chrono::microseconds>(sim_clock::now() - t0).count();
  };
  auto holder = sys.spawn([=](caf::stateful_actor<holder_state>* self) -> caf::behavior {
    self->state.clock = profile_clock(profile);
    return {
      [=](run_atom, char work, int64_t cost_us, int pieces) {
        self->state.clock.hold_in_pieces(self, 1, sim_clock::now(), cost_us, pieces,
                                         [=](int64_t took_us) {
                                           log->push_back({work, took_us, since_us()});
                                         });
      },
      [=](cancel_atom) { self->state.clock.stop(self, 1); },
      [=](deliver_atom, uint64_t id) { self->state.clock.release(id); },
    };
  });
  auto at = [&](int64_t us, auto... xs) {
    caf::delayed_anon_send(holder, std::chrono::microseconds(us), xs...);
  };
  // A: 16 pieces of 1 ms, stopped 5.3 ms in: it ends with its sixth piece.
  at(0, run_atom::value, 'A', int64_t(16'000), 16);
  at(5'300, cancel_atom::value);
  // B, one piece arriving meanwhile, begins when A ends, not when A would have.
  at(5'400, run_atom::value, 'B', int64_t(3'000), 1);
  // C, a single piece, is never stopped.
  at(10'000, run_atom::value, 'C', int64_t(4'000), 1);
  at(11'000, cancel_atom::value);
  // E, queued behind D and stopped before it began, takes no time.
  at(20'000, run_atom::value, 'D', int64_t(2'000), 1);
  at(20'001, run_atom::value, 'E', int64_t(8'000), 8);
  at(21'000, cancel_atom::value);
  // F, stopped exactly at the end of its second piece, ends there.
  at(40'000, run_atom::value, 'F', int64_t(4'000), 4);
  at(42'000, cancel_atom::value);
  // G, stopped after it ended: nothing changes.
  at(50'000, run_atom::value, 'G', int64_t(2'000), 2);
  at(53'000, cancel_atom::value);
  run_virtual_until(sys, [&] { return log->size() == 7; }, "held work");
  caf::anon_send_exit(holder, caf::exit_reason::user_shutdown);
  run_virtual_until(sys, [] { return false; }, nullptr);
  sim_clock::use_virtual_time(nullptr);
  std::vector<std::string> got;
  for (const auto& d : *log)
    got.push_back(fmt::format("{} {} {}", d.work, d.took_us, d.at_us));
  CHECK(got == std::vector<std::string>{"A 6000 6000", "B 3000 9000", "C 4000 14000",
                                        "D 2000 22000", "E 0 22000", "F 2000 42000",
                                        "G 2000 52000"});
}
