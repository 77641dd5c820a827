#include "actors/deployment.hpp"

#include <cstdio>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "actors/cloud_layers.hpp"
#include "actors/layer_stage.hpp"
#include "actors/cluster.hpp"
#include "actors/context_manager.hpp"
#include "actors/edge_layers.hpp"
#include "actors/edge_session.hpp"
#include "actors/exit_evaluator.hpp"
#include "actors/profile_clock.hpp"
#include "actors/session_router.hpp"
#include "actors/sim_clock.hpp"
#include "actors/uploader.hpp"

#include "model/loader.hpp"
#include "model/transformer.hpp"

namespace ceco {

namespace {

/// The dtype of the uploader every strategy but exact shares (and of one
/// placed on the cloud, which exact never uses): "auto" is f16 there.
wire_dtype upload_dtype(const settings& s, strategy mode = strategy::collaborative) {
  return upload_dtype_of(s, mode) == "f32" ? wire_dtype::f32 : wire_dtype::f16;
}

exit_policy policy_of(const settings& s) {
  exit_policy p;
  p.threshold = threshold_override(s);
  p.min_exit_layer = s.policy.min_exit_layer;
  p.draft_candidates = s.policy.draft_candidates;
  return p;
}

} // namespace

std::optional<float> threshold_override(const settings& s) {
  if (!s.policy.threshold)
    return std::nullopt;
  return float(*s.policy.threshold);
}

site_model load_site_model(const settings& s, const std::string& default_model,
                         const std::string& default_heads) {
  site_model m;
  auto loaded = load_model(s.model.path.empty() ? default_model : s.model.path, s.model.tokenizer);
  check_against_model(s, loaded.config);
  if (s.model.context > 0)  // caches (edge and cloud) are sized for this many positions
    loaded.config.max_seq = s.model.context;
  auto model = std::make_shared<transformer>(loaded.config, std::move(loaded.weights),
                                             parse_device(s.model.device));
  model->set_kv_dtype(parse_kv_dtype(s.model.kv_dtype, "model.kv_dtype"));
  std::string heads = s.model.exit_heads;
  if (heads.empty() && s.model.path.empty())
    heads = default_heads;
  if (heads.empty() || heads == "none")
    m.heads = exit_heads::untrained(*model, s.model.exits);
  else
    m.heads = exit_heads::load(heads, *model, s.model.exits);
  m.fingerprint = model_fingerprint(model->config(), model->weights());
  m.shape_fingerprint = shape_fingerprint(model->config(), loaded.vocab);
  m.weight_types = describe_weight_types(model->weights());
  m.model = std::move(model);
  m.vocab = std::move(loaded.vocab);
  m.path = loaded.path;
  return m;
}

std::shared_ptr<const compute_profile> compute_profile_of(const settings& s) {
  if (s.compute.mode != "profile")
    return nullptr;
  if (s.compute.profile.empty())
    throw config_error(fmt::format("compute.mode = \"profile\" needs compute.profile: one of {} "
                                   "or a file ending in .toml",
                                   fmt::join(compute_profile_names(), ", ")));
  return std::make_shared<const compute_profile>(load_compute_profile(s.compute.profile));
}

void check_clock(const settings& s, bool in_process) {
  if (s.compute.clock != "virtual")
    return;
  if (s.compute.mode != "profile")
    throw config_error(fmt::format(
      "compute.clock = \"virtual\" needs compute.mode = \"profile\" (it is \"{}\"): on "
      "virtual time the host's own work takes no time, so only a profile's costs can make up "
      "the times",
      s.compute.mode));
  if (!in_process)
    throw config_error(
      "compute.clock = \"virtual\" applies to in-process simulations (ceco sim, ceco "
      "experiment); this command runs over a real network, in real time: set it to \"real\"");
}

void configure_simulation(caf::actor_system_config& cfg, const settings& s) {
  check_clock(s, true);
  configure_actor_system(cfg, s.runtime.threads);
  if (s.compute.clock == "virtual")
    configure_virtual_time(cfg);
}

std::string compute_label(const settings& s) {
  return s.compute.mode == "profile" ? "profile:" + s.compute.profile : "measured";
}

hello_msg make_hello(const settings& s, const site_model& m) {
  hello_msg h;
  h.fingerprint = m.fingerprint;
  h.shape_fingerprint = m.shape_fingerprint;
  h.weight_types = m.weight_types;
  h.allow_mixed_quantization = s.cloud.allow_mixed_quantization;
  h.n_layer = m.model->config().n_layer;
  h.split = s.split.layer;
  h.exits.assign(s.model.exits.begin(), s.model.exits.end());
  h.secret = s.cloud.secret;
  h.evaluator_on_cloud = s.placement.exit_evaluator == "cloud";
  h.uploader_on_cloud = s.placement.uploader == "cloud";
  h.threshold = s.policy.threshold ? float(*s.policy.threshold) : hello_msg::threshold_auto;
  h.min_exit_layer = s.policy.min_exit_layer;
  h.upload_dtype = uint8_t(upload_dtype(s));
  return h;
}

wire::wire_limits wire_limits_of(const site_model& m) {
  const auto& c = m.model->config();
  return wire::wire_limits::for_model(c.n_embd, c.max_seq, c.vocab_size, c.n_layer);
}

void cloud_site::stop() {
  if (watch)
    watch->stop();
  for (auto& w : workers)
    w.stop();
  for (auto h : {caf::actor_cast<caf::actor>(layers), caf::actor_cast<caf::actor>(stage),
                 caf::actor_cast<caf::actor>(contexts),
                 caf::actor_cast<caf::actor>(placed.evaluator),
                 caf::actor_cast<caf::actor>(placed.uploader), caf::actor_cast<caf::actor>(front)})
    if (h)
      caf::anon_send_exit(h, caf::exit_reason::user_shutdown);
}

namespace {

/// What every cloud site ends with, over its contexts (a context manager or a
/// gateway's router): the uploader when placed on the cloud, the front, and
/// the watch over them and the evaluator.
void finish_site(caf::actor_system& sys, const settings& s, const site_model& m, cloud_site& c) {
  if (s.placement.uploader == "cloud")
    c.placed.uploader = spawn_uploader(sys, caf::actor_cast<upload_sink>(c.contexts),
                                       upload_dtype(s), std::chrono::seconds(30));
  c.front = spawn_cloud_front(sys, c.contexts, c.placed, make_hello(s, m));
  c.watch = std::make_shared<site_watch>(sys);
  c.watch->add(caf::actor_cast<caf::actor>(c.front), "cloud front");
  c.watch->add(caf::actor_cast<caf::actor>(c.placed.evaluator), "exit evaluator");
  c.watch->add(caf::actor_cast<caf::actor>(c.placed.uploader), "uploader");
}

/// A gateway's site: the front and the placed actors over a session router.
cloud_site spawn_gateway_site(caf::actor_system& sys, const settings& s, const site_model& m) {
  cloud_site c;
  auto profile = compute_profile_of(s);
  c.session_ends = std::make_shared<session_end_hook>();
  session_router_options ro;
  ro.on_end = c.session_ends;
  ro.on_worker_down = [](const std::string& name, const std::string& why, int64_t lost) {
    // Never throws: stderr may be a closed pipe.
    std::fputs(fmt::format("ceco cloud: cluster: worker {} went down ({}); {} session(s) on it "
                           "lost, their edges open new ones\n", name, why, lost).c_str(), stderr);
    std::fflush(stderr);
  };
  c.router = spawn_session_router(sys, ro);
  c.contexts = caf::actor_cast<context_manager_actor>(c.router);
  // Evaluations go through the router to the session's worker, whose
  // evaluator decides; this one only marks the placement for the front.
  if (s.placement.exit_evaluator == "cloud")
    c.placed.evaluator = spawn_exit_evaluator(sys, m.heads, m.model->config().n_embd,
                                              policy_of(s), profile, true);
  finish_site(sys, s, m, c);
  c.watch->add(caf::actor_cast<caf::actor>(c.router), "session router");
  return c;
}

cloud_site spawn_single_site(caf::actor_system& sys, const settings& s, const site_model& m);

} // namespace

cloud_site spawn_cloud_site(caf::actor_system& sys, const settings& s, const site_model& m) {
  if (s.cluster.role == "gateway")
    return spawn_gateway_site(sys, s, m);
  if (s.cluster.local_workers == 0)
    return spawn_single_site(sys, s, m);
  auto c = spawn_gateway_site(sys, s, m);
  for (int i = 0; i < s.cluster.local_workers; ++i) {
    c.workers.push_back(spawn_single_site(sys, s, m));
    auto& w = c.workers.back();
    auto front = spawn_worker_front(sys, w.contexts, make_hello(s, m));
    w.watch->add(caf::actor_cast<caf::actor>(front), "worker front");
    caf::anon_send(c.router, join_atom::value, fmt::format("local {}", i), front);
  }
  return c;
}

namespace {

cloud_site spawn_single_site(caf::actor_system& sys, const settings& s, const site_model& m) {
  cloud_site c;
  auto profile = compute_profile_of(s);
  // The cloud's one GPU: its layers and a cloud-placed exit evaluator take turns.
  auto cloud_device = std::make_shared<device_timeline>();
  // The stages of placement.cloud_stages, here or on their nodes.
  c.stage = stage_chain(sys, s, m.model, m.fingerprint, 0);
  c.layers = spawn_cloud_layers(sys, m.model, s.split.layer, m.vocab.eos(),
                                s.session.max_sessions, profile, cloud_device, c.stage,
                                c.stage ? s.placement.cloud_stages.front() : 0);
  context_manager_options cm;
  cm.ttl = std::chrono::milliseconds(int64_t(s.session.ttl_s * 1000.0));
  cm.max_sessions = s.session.max_sessions;
  cm.batch_sessions = s.session.batch_sessions;
  cm.max_context_bytes = int64_t(s.session.max_memory_mb * 1024.0 * 1024.0);
  c.session_ends = std::make_shared<session_end_hook>();
  cm.on_end = c.session_ends;
  if (s.placement.exit_evaluator == "cloud")
    c.placed.evaluator = spawn_exit_evaluator(sys, m.heads, m.model->config().n_embd,
                                              policy_of(s), profile, true, cloud_device);
  cm.evaluator = c.placed.evaluator;  // a session's evaluations refresh it on their way
  c.contexts = spawn_context_manager(sys, c.layers, m.model->config(), cm);
  finish_site(sys, s, m, c);
  c.watch->add(caf::actor_cast<caf::actor>(c.layers), "cloud layers");
  if (c.stage)  // a stage lost (its node down) fails the site: its supervisor restarts it
    c.watch->add(caf::actor_cast<caf::actor>(c.stage), "layer stage");
  c.watch->add(caf::actor_cast<caf::actor>(c.contexts), "context manager");
  return c;
}

} // namespace

deployment::deployment(caf::actor_system& sys, const settings& s, const site_model& m,
                       cloud_api remote_cloud,
                       std::function<caf::expected<cloud_api>()> reconnect)
  : sys_(sys), settings_(s), model_(m) {
  check_clock(s, !remote_cloud);
  const auto& cfg = m.model->config();
  link_options lo;
  lo.remote = bool(remote_cloud);
  if (!remote_cloud) {
    cloud_ = spawn_cloud_site(sys, s, m);
    remote_cloud = cloud_.front;
  }
  lo.latency_ms = s.link.latency_ms;
  lo.bandwidth_mbps = s.link.bandwidth_mbps;
  lo.jitter_ms = s.link.jitter_ms;
  lo.seed = uint64_t(s.link.seed);
  if (auto profile = compute_profile_of(s))
    lo.hidden_scale = double(profile->target_dim) / double(cfg.n_embd);
  lo.reconnect = std::move(reconnect);
  link_ = spawn_link(sys, remote_cloud, lo);
  auto profile = compute_profile_of(s);
  edge_stops_ = std::make_shared<edge_step_stops>();
  edge_layers_ = spawn_edge_layers(sys, m.model, s.split.layer, s.model.exits, profile,
                                   edge_stops_);
  // The edge always has its own evaluator: standalone runs, and a session
  // that lost the cloud continues, without the network.
  local_evaluator_ = spawn_exit_evaluator(sys, m.heads, cfg.n_embd, policy_of(s), profile);
  auto link = caf::actor_cast<cloud_api>(link_);
  evaluator_ = s.placement.exit_evaluator == "cloud" ? spawn_remote_evaluator(sys, link)
                                                     : local_evaluator_;
  uploader_ = s.placement.uploader == "cloud"
                ? spawn_remote_uploader(sys, link)
                : spawn_uploader(sys, caf::actor_cast<upload_sink>(link_), upload_dtype(s),
                                 std::chrono::seconds(30));
  // exact verifies its drafts on f32 states unless upload.dtype says f16.
  exact_uploader_ = upload_dtype(s, strategy::exact) == upload_dtype(s) || s.placement.uploader == "cloud"
                      ? uploader_
                      : spawn_uploader(sys, caf::actor_cast<upload_sink>(link_),
                                       upload_dtype(s, strategy::exact), std::chrono::seconds(30));
  // Last, so a constructor that throws never leaves the clock set.
  if (s.compute.clock == "virtual") {
    sim_clock::use_virtual_time(&sys);  // sys was made by configure_simulation
    virtual_time_ = true;
  }
}

deployment::~deployment() {
  cloud_.stop();
  for (auto h : {caf::actor_cast<caf::actor>(link_), caf::actor_cast<caf::actor>(edge_layers_),
                 caf::actor_cast<caf::actor>(evaluator_),
                 caf::actor_cast<caf::actor>(local_evaluator_),
                 caf::actor_cast<caf::actor>(uploader_),
                 caf::actor_cast<caf::actor>(exact_uploader_)})
    caf::anon_send_exit(h, caf::exit_reason::user_shutdown);
  if (virtual_time_) {
    run_virtual_until(sys_, [] { return false; }, nullptr);  // the actors take their exits
    sim_clock::use_virtual_time(nullptr);
  }
}

edge_session_actor deployment::spawn_session(const std::vector<int32_t>& prompt,
                                             std::optional<strategy> mode, int max_tokens,
                                             caf::actor token_sink,
                                             std::optional<sampler_options> sampling) {
  edge_site site{edge_layers_, evaluator_, local_evaluator_, uploader_,
                 caf::actor_cast<cloud_api>(link_), link_, edge_stops_};
  edge_session_options o;
  o.mode = mode.value_or(settings_.policy.mode);
  if (o.mode == strategy::exact)
    site.uploader = exact_uploader_;
  // The edge layers emit split rows in the dtype the uploader sends, so it
  // converts nothing; an uploader on the cloud gets them in f32 and converts
  // there.
  o.split_dtype = settings_.placement.uploader == "cloud" ? wire_dtype::f32
                                                          : upload_dtype(settings_, o.mode);
  o.prompt_to_cloud = prompt_to_cloud_of(settings_, o.mode);
  const char* name = to_string(o.mode);
  if (drafts(o.mode)) {
    // Drafts are decided and uploaded on the edge, token by token.
    if (settings_.placement.exit_evaluator != "edge" || settings_.placement.uploader != "edge")
      throw config_error(fmt::format(
        "mode '{}' drafts on the edge: it needs placement.exit_evaluator = \"edge\" and "
        "placement.uploader = \"edge\" (they are \"{}\" and \"{}\")", name,
        settings_.placement.exit_evaluator, settings_.placement.uploader));
    if (settings_.model.exits.empty())
      throw config_error(fmt::format("model.exits is empty, but mode '{}' needs exits", name));
  }
  o.max_draft = settings_.policy.max_draft;
  const auto& smp = settings_.sampling;
  o.sampling = sampling.value_or(
    sampler_options{float(smp.temperature), smp.top_k, float(smp.top_p), uint64_t(smp.seed)});
  const auto& loss = settings_.policy.on_cloud_loss;
  o.on_cloud_loss = loss == "wait" || (loss == "auto" && o.mode == strategy::exact)
                      ? cloud_loss::wait
                      : loss == "fail" ? cloud_loss::fail : cloud_loss::degrade;
  o.cloud_loss_wait = std::chrono::milliseconds(settings_.policy.cloud_loss_wait_ms);
  o.prompt = prompt;
  o.max_tokens = max_tokens > 0 ? max_tokens : settings_.generation.max_tokens;
  o.eos = model_.vocab.eos();
  o.max_seq = model_.model->config().max_seq;
  o.exits = settings_.model.exits;
  o.sync_upload = settings_.upload.mode == "sync";
  o.timeout = std::chrono::milliseconds(settings_.cloud.request_timeout_ms);
  o.token_sink = std::move(token_sink);
  if (prompt.empty())
    throw config_error("the prompt has no tokens");
  if (int(prompt.size()) >= o.max_seq)
    throw config_error(fmt::format("the prompt has {} tokens, the model's context holds {}",
                                   prompt.size(), o.max_seq));
  return spawn_edge_session(sys_, site, o);
}

response_report deployment::run(const std::vector<int32_t>& prompt,
                                std::optional<strategy> mode, int max_tokens) {
  return run_concurrently({prompt}, mode, max_tokens).front();
}

response_report deployment::run(const std::vector<int32_t>& prompt, std::string_view mode,
                                int max_tokens) {
  return run(prompt, strategy_of(mode, "mode"), max_tokens);
}

std::vector<response_report>
deployment::run_concurrently(const std::vector<std::vector<int32_t>>& prompts,
                             std::string_view mode, int max_tokens) {
  return run_concurrently(prompts, strategy_of(mode, "mode"), max_tokens);
}

std::vector<response_report>
deployment::run_concurrently(const std::vector<std::vector<int32_t>>& prompts,
                             std::optional<strategy> mode, int max_tokens,
                             const std::vector<sampler_options>& sampling) {
  if (!sampling.empty() && sampling.size() != prompts.size())
    throw config_error(fmt::format("{} prompts, {} sampling options: expected one per prompt",
                                   prompts.size(), sampling.size()));
  std::vector<edge_session_actor> drivers;
  for (size_t i = 0; i < prompts.size(); ++i)
    drivers.push_back(spawn_session(prompts[i], mode, max_tokens, {},
                                    sampling.empty() ? std::nullopt
                                                     : std::optional<sampler_options>(sampling[i])));
  caf::scoped_actor self{sys_};
  // All requests go out first, so the sessions run at the same time.
  using handle = decltype(self->request(drivers[0], caf::infinite, run_atom::value));
  std::vector<handle> pending;
  for (auto& d : drivers)
    pending.push_back(self->request(d, caf::infinite, run_atom::value));
  run_virtual_until(sys_, [&] { return self->mailbox().size() >= pending.size(); },
                    "a response");
  std::vector<response_report> out(prompts.size());
  for (size_t i = 0; i < pending.size(); ++i)
    pending[i].receive([&](response_report& r) { out[i] = std::move(r); },
                       [&](caf::error& err) {
                         throw model_error("deployment: a session failed: " + describe(err));
                       });
  return out;
}

int64_t deployment::link_epoch() {
  caf::scoped_actor self{sys_};
  int64_t epoch = -1;
  self->request(link_, std::chrono::seconds(5), status_atom::value)
    .receive([&](int64_t e) { epoch = e; }, [&](caf::error&) {});
  return epoch;
}

bool deployment::wait_for_cloud(std::chrono::milliseconds max_wait) {
  auto until = std::chrono::steady_clock::now() + max_wait;
  for (;;) {
    if (link_epoch() >= 0)
      return true;
    if (std::chrono::steady_clock::now() >= until)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::optional<std::string> deployment::cloud_failure(std::chrono::milliseconds wait) const {
  if (!cloud_.watch)
    return std::nullopt;
  return cloud_.watch->failure(wait);
}

cloud_stats deployment::cloud_state() {
  caf::scoped_actor self{sys_};
  cloud_stats out;
  if (!cloud_.contexts)
    throw model_error("deployment: the cloud is remote; ask it, not this process");
  auto reply = self->request(cloud_.contexts, std::chrono::seconds(10), stats_atom::value);
  run_virtual_until(sys_, [&] { return self->mailbox().size() >= 1; }, "the cloud's statistics");
  reply.receive([&](cloud_stats& st) { out = st; },
             [&](caf::error& err) { throw model_error("context manager stats: " + describe(err)); });
  return out;
}

} // namespace ceco
