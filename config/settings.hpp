#pragma once

// The settings of a simulation, a deployment or an experiment, read from a
// TOML file (see config/sim.toml for every key, commented, with its default)
// and overridden by `--set key=value`. Unknown keys, wrong types and
// impossible values are rejected before anything starts, with the key, the
// expected and the actual value.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config/strategy.hpp"
#include "model/config.hpp"

namespace ceco {

/// A bad configuration file, key or value.
struct config_error : model_error {
  using model_error::model_error;
};

struct settings {
  struct {
    std::string path;        // checkpoint; "" = the built-in default
    std::string tokenizer;   // for llama2.c .bin models
    std::vector<int> exits{2, 3};
    std::string exit_heads;  // trained heads file; "" = the built-in heads with
                             // the built-in model, else untrained; "none" = untrained
    std::string device = "cpu";
    int context = 0;         // positions caches are sized for; 0 = the model's context length
    std::string kv_dtype = "f32";  // what the KV caches hold: f32 | f16 (half the bytes)
  } model;
  struct {
    int layer = 3;  // layers the edge runs
  } split;
  struct {
    strategy mode = strategy::collaborative;  // config/strategy.hpp
    // θ of every exit; unset ("auto"): each exit's calibrated threshold from
    // the heads file, else 0.8 (model/exit_heads.hpp: exit_heads::thresholds).
    std::optional<double> threshold;
    int min_exit_layer = 1;
    int max_draft = 16;  // speculative, exact: most tokens ahead of the cloud's verdicts
    int draft_candidates = 16;  // sampled drafts: candidates of their distribution sent (0: none)
    // What a response does when the cloud is lost: auto (exact waits, the
    // others degrade) | wait | degrade | fail; see config/sim.toml.
    std::string on_cloud_loss = "auto";
    int cloud_loss_wait_ms = 10000;  // wait, and speculative/exact before degrading
  } policy;
  struct {
    std::string mode = "measured";  // measured | profile
    std::string profile;            // profile mode: a name in config/profiles/ or a .toml file
    std::string clock = "real";     // real | virtual (profile mode, ceco sim and experiment)
  } compute;
  struct {
    std::string dtype = "auto";  // auto (f32 for exact, else f16) | f16 | f32
    std::string mode = "async";  // async | sync (wait for each upload's ack)
    std::string prompt = "auto";  // auto (tokens for exact, else states) | states | tokens
  } upload;
  struct {
    std::string profile;           // "" = the keys below; lan | wan | paper set them
    double latency_ms = 5.0;       // one way
    double bandwidth_mbps = 30.0;  // 0 = unlimited
    double jitter_ms = 0.0;        // uniform extra delay in [0, jitter)
    int seed = 1;
  } link;
  struct {
    double ttl_s = 60.0;  // idle cloud sessions are freed after this
    int max_sessions = 256;
    int max_sessions_per_connection = 64;  // most one edge connection holds at once
    double max_memory_mb = 0.0;  // cloud contexts in all; 0 = no limit
    int batch_sessions = 64;     // most sessions computed together in one cloud step
  } session;
  struct {
    std::string exit_evaluator = "edge";  // edge | cloud
    std::string uploader = "edge";        // edge | cloud
    // Cuts the cloud's layers into stages: each boundary (ascending, past
    // split.layer, below n_layer) starts a range of its own actor or node
    // (docs/cluster.md "Layer stages"). Empty: one range, [split, L).
    std::vector<int> cloud_stages;
  } placement;
  struct {
    int max_tokens = 64;
    std::string prompt = "And God said";
  } generation;
  struct {
    double temperature = 0.0;  // 0 = greedy (argmax), bit-equal to no sampling
    int top_k = 0;             // 0 = every token
    double top_p = 1.0;        // 1 = no nucleus cut
    int seed = 0;              // with the position, decides each sampled token
  } sampling;
  struct {
    int threads = 2;  // CAF scheduler threads
  } runtime;
  // -- two-node deployment (`ceco cloud`, `ceco edge`) --
  struct {
    std::string host = "127.0.0.1";  // where the cloud listens / the edge connects
    int port = 7070;                 // 0: any free port (the cloud prints it)
    std::string secret;              // shared secret checked in the handshake
    int heartbeat_ms = 500;          // 0 = no heartbeats (a hung peer goes unnoticed)
    int request_timeout_ms = 10000;  // per cloud request
    int connect_tries = 5;           // connection attempts, with doubling backoff
    bool insecure = false;           // serve a non-loopback address with neither TLS nor secret
    bool allow_mixed_quantization = false;  // accept an edge holding another quantization of the model
    bool tls = false;                // TLS with certificates, on both nodes
    std::string tls_certificate;     // this node's certificate (PEM)
    std::string tls_key;             // its private key (PEM)
    std::string tls_ca_file;         // CA that signed the peer's certificate (PEM)
    std::vector<std::string> hosts;  // more clouds (gateways), "host:port", tried in order after host:port
  } cloud;
  // -- a cloud of several nodes (`ceco cloud --role gateway|worker`; docs/cluster.md) --
  struct {
    std::string role = "single";       // single | gateway | worker | stage
    std::string host = "127.0.0.1";    // where a worker listens for its gateways
    int port = 7171;                   // a worker's cluster port; 0: any free port (printed)
    std::vector<std::string> workers;  // a gateway's workers, "host:port" each
    int join_interval_ms = 1000;       // how often a gateway tries a worker that is down
    int local_workers = 0;             // in-process runs: this many cloud sites behind one router
    bool insecure = false;             // plain TCP between cloud nodes (a trusted network only)
    std::string tls_certificate;       // this node's cluster certificate (PEM)
    std::string tls_key;               // its private key (PEM)
    std::string tls_ca_file;           // the cluster CA (PEM): peers it did not sign get nothing
    // Where each stage of placement.cloud_stages runs, "host:port" each
    // (a `ceco cloud --role stage`); empty: in this process.
    std::vector<std::string> stage_hosts;
    int stage = 1;                     // role stage: which of placement.cloud_stages it runs (1: the first)
  } cluster;
  // -- experiments only (`ceco experiment`) --
  struct {
    std::string name;
    std::string dataset;          // file; "" = generation.prompt alone
    std::string format = "auto";  // auto | alpaca | xsum | boolq | quac | imdb | text
    int samples = 10;
    int seed = 1;
    std::vector<strategy> strategies{strategy::cloud, strategy::naive, strategy::standalone,
                                     strategy::collaborative};
    int repetitions = 1;
    int sessions = 1;  // edges running each (sample, strategy) at once against one cloud
    // A published result set beside this one in summary.md, per strategy.
    struct {
      std::string name;                                    // "" = none
      // by strategy name (to_string):
      std::map<std::string, double> total_vs_cloud;        // total time / the cloud strategy's
      std::map<std::string, double> cloud_compute_vs_cloud;  // relative change, -0.695 = -69.5%
    } reference;
  } experiment;
  struct {
    std::vector<double> threshold;
    std::vector<int> split;
    std::vector<std::vector<int>> exits;
    std::vector<std::string> upload_dtype;
    std::vector<std::string> link;  // profile names
    std::vector<double> latency_ms;  // link.latency_ms values (after any profile)
    std::vector<int> sessions;       // experiment.sessions values
    std::vector<int> workers;        // cluster.local_workers values
  } sweep;
};

/// The dtype a response of `mode` uploads in ("f16" or "f32"): upload.dtype,
/// where "auto" is f32 for exact (drafts verified on the states the cloud
/// would have computed itself) and f16 for every other strategy.
std::string upload_dtype_of(const settings& s, strategy mode);
/// Whether a response of `mode` opens its cloud session with the prompt's
/// tokens, which the cloud then computes itself:
/// upload.prompt "tokens", or "auto" for exact; never for naive, cloud and
/// standalone, which upload no rows one by one.
bool prompt_to_cloud_of(const settings& s, strategy mode);
/// How exact a response is: for exact, "exact" with f32 uploads and "exact
/// to the f16 split" with f16 ones; "" for every other strategy.
std::string exactness_of(const settings& s, strategy mode);

/// Named links: latency_ms, bandwidth_mbps, jitter_ms.
struct link_profile {
  const char* name;
  double latency_ms;
  double bandwidth_mbps;
  double jitter_ms;
  const char* description;
};
const std::vector<link_profile>& link_profiles();
/// Sets link.latency_ms, bandwidth_mbps and jitter_ms from link.profile
/// (no-op when it is empty).
void apply_link_profile(settings& s);

/// `defaults`, then `file` (if not empty), then each "key=value" override.
settings load_settings(const std::string& file, const std::vector<std::string>& overrides,
                       const settings& defaults = settings{});
/// The defaults of a node on a real network (`ceco edge`): its link adds no
/// delay and no bandwidth limit (the simulation's 5 ms and 30 Mbit/s are for
/// `ceco sim`); a file's or --set's link.* keys still apply on top.
settings real_network_defaults();

/// "host:port" (or "[v6]:port") into its parts; nullopt when it is not one
/// with a port of 1-65535.
std::optional<std::pair<std::string, int>> split_host_port(const std::string& address);
/// Applies one "key=value" (the value in TOML syntax; bare strings and
/// comma-separated lists are accepted too).
void apply_override(settings& s, const std::string& assignment);
/// Checks the values against each other (link delays and the request
/// timeout, the session TTL, heartbeats, session caps); each error names
/// every key it involves. check_against_model calls it.
void check_consistency(const settings& s);
/// Checks the values against each other and against the model's shape
/// (split, exits, context).
void check_against_model(const settings& s, const model_config& cfg);
/// Every key with its current value, one "key = value" per line.
std::string describe_settings(const settings& s);

/// Edit distance of two words (insertions, deletions, substitutions): how
/// near a misspelt key or command is to one that exists.
size_t edit_distance(const std::string& a, const std::string& b);

} // namespace ceco
