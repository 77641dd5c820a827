#include "test/support.hpp"

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

using namespace ceco::test;

namespace {

} // namespace

TEST_CASE("ceco generate --json prints the reference greedy tokens and an exit trace") {
  auto r = run_ceco("generate --model " + stories_bin() +
                    " --prompt 'Once upon a time' --max-tokens 40 --exits 2,4 --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["tokens"].get<std::vector<int32_t>>() == greedy_40);
  CHECK(j["n_prompt"] == 5);
  CHECK(j["n_generated"] == 40);
  CHECK(j["decode_tokens_per_s"].get<double>() > 0);
  CHECK(j["text"].get<std::string>().rfind(", there was a little girl named Lily.", 0) == 0);
  REQUIRE(j["exit_trace"].size() == 40);
  for (auto& e : j["exit_trace"]) {
    CHECK(e["confidence"].size() == 2);
    CHECK((e["exit"].is_null() || e["exit"] == 2 || e["exit"] == 4));
    CHECK(e["agrees"].is_boolean());
  }
}

TEST_CASE("ceco generate --json prints valid JSON when the text holds a cut UTF-8 character") {
  // The prompt ends inside a two-byte character, as generated text does when
  // max_tokens falls between the byte tokens of one.
  auto r = run_ceco("generate --model " + stories_gguf() +
                    " --prompt \"$(printf 'caf\\303')\" --max-tokens 4 --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["prompt"] == "caf\xEF\xBF\xBD");  // U+FFFD stands for the cut byte
  CHECK(j["n_generated"] == 4);
}

TEST_CASE("ceco generate streams text by default") {
  auto r = run_ceco("generate --model " + stories_gguf() + " --prompt 'Once upon a time' --max-tokens 12");
  REQUIRE(r.status == 0);
  CHECK(r.out.rfind("Once upon a time, there was a little girl named Lily", 0) == 0);
  CHECK(r.out.find("decode") != std::string::npos);
}

TEST_CASE("--help documents every generate flag with its default") {
  auto r = run_ceco("generate --help");
  CHECK(r.status == 0);
  // Each flag opens a line of its own, and the line says its default.
  auto line_of = [&](const std::string& flag) -> std::string {
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind("  " + flag + " ", 0) == 0 || line == "  " + flag)
        return line;
    return {};
  };
  for (auto flag : {"--model", "--tokenizer", "--prompt", "--max-tokens", "--temperature", "--top-p",
                    "--seed", "--exits", "--exit-heads", "--threshold", "--min-exit-layer", "--json"})
    CHECK_MESSAGE(!line_of(flag).empty(), flag);
  CHECK(line_of("--threshold").find("=auto") != std::string::npos);
  CHECK(line_of("--max-tokens").find("=128") != std::string::npos);
  CHECK(line_of("--temperature").find("=0") != std::string::npos);
  CHECK(line_of("--seed").find("=42") != std::string::npos);
  CHECK(line_of("--prompt").find("=And God said") != std::string::npos);
}

TEST_CASE("ceco answers --help and --version as the engine does, and runs the engine for the rest") {
  // Both programs run under the same argv[0], which the texts print.
  auto as_ceco = [](const std::string& binary, const std::string& args) {
    return run_shell("bash -c 'exec -a ceco " + binary + " " + args + "' 2>&1");
  };
  // The commands, and the subcommands of each, as the top help lists them.
  auto subcommands = [](const std::string& help) {
    std::vector<std::string> names;
    std::istringstream lines(help.substr(std::min(help.size(), help.find("Subcommands:"))));
    std::string line;
    std::getline(lines, line);
    while (std::getline(lines, line) && line.rfind("  ", 0) == 0) {
      std::istringstream words(line);
      std::string name;
      words >> name;
      names.push_back(name);
    }
    return names;
  };
  auto top = as_ceco(CECO_BINARY, "--help");
  REQUIRE(top.status == 0);
  CHECK(top.out == as_ceco(CECO_ENGINE_BINARY, "--help").out);
  CHECK(top.out.find("Usage: ceco [OPTIONS] SUBCOMMAND") != std::string::npos);
  std::vector<std::string> commands;
  for (const auto& c : subcommands(top.out)) {
    commands.push_back(c);
    for (const auto& sub : subcommands(as_ceco(CECO_ENGINE_BINARY, c + " --help").out))
      commands.push_back(c + " " + sub);
  }
  CHECK(commands.size() >= 15);  // 14 commands and `cluster status`
  for (const auto& c : commands) {
    auto launcher = as_ceco(CECO_BINARY, c + " --help");
    auto engine = as_ceco(CECO_ENGINE_BINARY, c + " --help");
    CHECK_MESSAGE(launcher.status == 0, c);
    CHECK_MESSAGE(launcher.out == engine.out, c);
    CHECK_MESSAGE(launcher.out.find("Usage: ceco " + c) != std::string::npos, c);
  }
  CHECK(as_ceco(CECO_BINARY, "bench -h").out == as_ceco(CECO_ENGINE_BINARY, "bench -h").out);
  auto version = as_ceco(CECO_BINARY, "--version");
  CHECK(version.status == 0);
  CHECK(version.out == as_ceco(CECO_ENGINE_BINARY, "--version").out);
  // The launcher loads no libtorch: that is what makes it instant.
  auto libraries = run_shell("ldd " + std::string(CECO_BINARY) + " 2>&1");
  CHECK(libraries.out.find("libtorch") == std::string::npos);
  CHECK(run_shell("ldd " + std::string(CECO_ENGINE_BINARY) + " 2>&1").out.find("libtorch") !=
        std::string::npos);
  // Every other line is the engine's: errors, options before --help, work.
  auto unknown = as_ceco(CECO_BINARY, "genrate --help");
  CHECK(unknown.status == 1);
  CHECK(unknown.out.find("did you mean 'generate'") != std::string::npos);
  CHECK(as_ceco(CECO_BINARY, "tokenize --text hi --help").out ==
        as_ceco(CECO_ENGINE_BINARY, "tokenize --text hi --help").out);
  auto tokens = run_ceco("tokenize --text \"In the beginning\"");
  CHECK(tokens.status == 0);
  CHECK(tokens.out == run_shell(std::string(CECO_ENGINE_BINARY) +
                                " tokenize --text \"In the beginning\" 2>&1").out);
  // Without the engine beside it, the launcher says which file it needs.
  temp_dir tmp;
  std::filesystem::copy_file(CECO_BINARY, tmp.file("ceco"));
  std::filesystem::permissions(tmp.file("ceco"), std::filesystem::perms::owner_exec,
                               std::filesystem::perm_options::add);
  CHECK(run_shell(tmp.file("ceco") + " --version 2>&1").out == version.out);
  auto alone = run_shell(tmp.file("ceco") + " generate --max-tokens 1 2>&1");
  CHECK(alone.status == 2);
  CHECK(alone.out.find("cannot run the engine " + tmp.file("ceco-engine")) != std::string::npos);
}

TEST_CASE("bad input exits non-zero with a message naming the problem") {
  auto missing = run_ceco("generate --model /nonexistent/model.gguf");
  CHECK(missing.status == 1);
  CHECK(missing.out.find("/nonexistent/model.gguf: no such file") != std::string::npos);
  auto exits = run_ceco("generate --model " + stories_gguf() + " --exits 7");
  CHECK(exits.status == 1);
  CHECK(exits.out.find("exit after layer 7 is outside 1..4") != std::string::npos);
  auto device = run_ceco("generate --model " + stories_gguf() + " --device tpu");
  CHECK(device.status == 1);
  CHECK(device.out.find("'tpu' is not a device") != std::string::npos);
  auto flag = run_ceco("generate --no-such-flag");
  CHECK(flag.status != 0);
}

TEST_CASE("ceco bench --json reports decode speed on a real and on a random model") {
  auto real = run_ceco("bench --model " + stories_gguf() + " --tokens 32 --json");
  REQUIRE(real.status == 0);
  auto j = nlohmann::json::parse(real.out);
  CHECK(j["decode_tokens_per_s"].get<double>() > 0);
  CHECK(j["n_generated"] == 32);
  auto random = run_ceco("bench --shape 260K --tokens 16 --json");
  REQUIRE(random.status == 0);
  CHECK(nlohmann::json::parse(random.out)["n_layer"] == 5);
}

TEST_CASE("ceco bench --shape --type builds the weights in that type: --type with --model is refused") {
  auto r = run_ceco("bench --shape 260K --type Q4_K_M --tokens 4 --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.out);
  // dim 64 and ffn 172 fit no K-quant: Q5_0, the output's Q8_0, F16 rows of 172
  CHECK(j["matrix_types"] == nlohmann::json{{"F16", 5}, {"Q5_0", 29}, {"Q8_0", 3}});
  CHECK(j["build_s"].get<double>() >= 0);
  auto refused = run_ceco("bench --model " + stories_gguf() + " --type Q8_0");
  CHECK(refused.status == 1);
  CHECK(refused.out.find("--type Q8_0 applies to --shape only") != std::string::npos);
}

TEST_CASE("ceco bench --save writes the --shape model to a GGUF file that bench --model measures") {
  temp_dir tmp;
  auto out = tmp.file("random.gguf");
  auto saved = run_ceco("bench --shape 260K --type Q4_K_M --seed 3 --save " + out);
  REQUIRE(saved.status == 0);
  CHECK(saved.out.find("wrote " + out + ": random 260K Q4_K_M (seed 3)") != std::string::npos);
  auto r = run_ceco("bench --model " + out + " --tokens 4 --prompt-tokens 8 --json");
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["matrix_types"] == nlohmann::json{{"F16", 5}, {"Q5_0", 29}, {"Q8_0", 3}});
  CHECK(j["vocab_size"] == 512);
  auto with_model = run_ceco("bench --model " + out + " --save " + tmp.file("again.gguf"));
  CHECK(with_model.status == 1);
  CHECK(with_model.out.find("give --shape") != std::string::npos);
  auto unwritable = run_ceco("bench --shape 260K --save " + tmp.file("no/such/dir.gguf"));
  CHECK(unwritable.status == 1);
  CHECK(unwritable.out.find(tmp.file("no/such/dir.gguf") + ": cannot open for writing") !=
        std::string::npos);
}

TEST_CASE("ceco tune-exits writes heads that generate loads") {
  temp_dir tmp;
  auto out = tmp.file("heads.gguf");
  auto r = run_ceco("tune-exits --model " + stories_gguf() +
                    " --exits 3 --steps 20 --self-generated 2000 --out " + out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("after tuning") != std::string::npos);
  auto g = run_ceco("generate --model " + stories_gguf() + " --exit-heads " + out +
                    " --max-tokens 5 --json");
  REQUIRE(g.status == 0);
  auto j = nlohmann::json::parse(g.out);
  CHECK(j["exits"] == std::vector<int>{3});
  CHECK(j["exit_trace"].size() == 5);
  auto bad = run_ceco("tune-exits --model " + stories_gguf() + " --loss next --steps 1");
  CHECK(bad.status == 1);
  CHECK(bad.out.find("--loss next needs --text") != std::string::npos);
}

TEST_CASE("ceco sim --mode all --json prints one object per strategy with the documented fields") {
  auto r = run_ceco("sim --mode all --max-tokens 12 --json --set link.latency_ms=0");
  REQUIRE(r.status == 0);
  std::vector<std::string> modes;
  size_t start = 0;
  while (start < r.out.size()) {
    auto end = r.out.find('\n', start);
    auto line = r.out.substr(start, end - start);
    start = end == std::string::npos ? r.out.size() : end + 1;
    if (line.empty())
      continue;
    auto j = nlohmann::json::parse(line);
    modes.push_back(j["mode"]);
    for (auto key : {"prompt", "text", "tokens", "n_prompt", "n_generated", "exits", "cloud_requests",
                     "bytes_up", "bytes_down", "edge_ms", "cloud_ms", "comm_ms", "total_ms"})
      CHECK_MESSAGE(j.contains(key), key);
    CHECK(j["n_generated"] == 12);
    CHECK(j["exits"].contains("cloud"));
  }
  CHECK(modes == std::vector<std::string>{"cloud", "naive", "standalone", "collaborative",
                                          "speculative", "exact"});
  auto many = run_ceco("sim --mode collaborative --sessions 3 --max-tokens 8 --json --set link.latency_ms=0");
  REQUIRE(many.status == 0);
  int sessions = 0;
  for (size_t at = 0; (at = many.out.find("\"n_generated\":8", at)) != std::string::npos; ++at)
    ++sessions;
  CHECK(sessions == 3);
  auto bad = run_ceco("sim --set policy.threshold=-1");
  CHECK(bad.status == 1);
  CHECK(bad.out.find("policy.threshold must be a number >= 0, got -1") != std::string::npos);
}

namespace {

int64_t varint_size(int64_t n) {
  int64_t bytes = 1;
  while (n >= 128) {
    n >>= 7;
    ++bytes;
  }
  return bytes;
}

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line))
    out.push_back(nlohmann::json::parse(line));
  return out;
}

} // namespace

TEST_CASE("the smoke experiment writes results, summaries and plots with consistent numbers") {
  temp_dir tmp;
  auto out = tmp.file("smoke");
  auto file = std::string(CECO_SOURCE_DIR) + "/config/experiments/smoke.toml";
  auto r = run_ceco("experiment " + file + " --out " + out);
  REQUIRE(r.status == 0);
  for (auto f : {"results.jsonl", "summary.csv", "summary.md", "time_breakdown.png",
                 "time_breakdown.svg", "bytes.png", "bytes.svg", "threshold_tradeoff.png",
                 "threshold_tradeoff.svg"})
    CHECK_MESSAGE(std::filesystem::file_size(out + "/" + f) > 100, f);
  auto lines = read_lines(out + "/results.jsonl");
  REQUIRE(lines.size() == 2 * 2 * 3 * 4);  // thresholds x repetitions x samples x strategies
  // The default model's width, from a collaborative line's payload formula.
  int64_t d = 0;
  for (auto& j : lines)
    if (j["mode"] == "collaborative" && j["n_generated"].get<int64_t>() > 0)
      d = j["formula_bytes_up"].get<int64_t>() /
          ((j["n_prompt"].get<int64_t>() + j["n_generated"].get<int64_t>() - 1) * 2);
  REQUIRE(d > 0);
  for (auto& j : lines) {
    std::string mode = j["mode"];
    CAPTURE(mode);
    int64_t p = j["n_prompt"], n = j["n_generated"], up = j["bytes_up"], formula = j["formula_bytes_up"];
    CHECK(j["cloud_request_rate"].get<double>() ==
          doctest::Approx(n ? j["exits"]["cloud"].get<double>() / double(n) : 0.0));
    if (mode == "collaborative") {
      int64_t uploads = j["uploads"], requests = j["cloud_requests"];
      CHECK(formula == (p + n - 1) * d * 2);
      // open 21 (the sampling, no prompt ids) + close 8 (README, "Bytes on the wire")
      CHECK(up == formula + 29 + 12 * requests + 21 * uploads + varint_size(p * d * 2) +
                    (uploads - 1) * varint_size(d * 2));
    } else if (mode == "naive") {
      int64_t overhead = 29;  // open 21 + close 8
      for (int64_t i = 0; i < n; ++i)
        overhead += 17 + varint_size((p + i) * d * 4);
      CHECK(up == formula + overhead);
    } else if (mode == "cloud") {
      // No open; close 8; the first generate 36 + the count; each long
      // poll 37 (no ids, README "Bytes on the wire").
      const int64_t polls = j["messages_up"].get<int64_t>() - 2;
      CHECK(polls >= 0);
      CHECK(up == formula + 8 + 36 + varint_size(p) + 37 * polls);
      CHECK(j["agreement_with_cloud"] == 1.0);
    } else {
      CHECK(up == 0);
    }
    CHECK(j.contains("reference"));
    CHECK(j.contains("em"));
  }
  std::ifstream md(out + "/summary.md");
  std::string summary((std::istreambuf_iterator<char>(md)), {});
  // Each row with its samples x repetitions and its cells with their
  // intervals over the three samples; the ratios to the cloud over pairs.
  CHECK(summary.find("| collaborative | θ=0.8 | 3 x 2 | ") != std::string::npos);
  CHECK(summary.find("95% bootstrap confidence interval") != std::string::npos);
  CHECK(summary.find("| strategy | setting | pairs | total / cloud |") != std::string::npos);
  CHECK(summary.find("| collaborative | θ=0.8 | 3 | ") != std::string::npos);
  CHECK(summary.find("± ") == std::string::npos);
  std::ifstream gp(out + "/plots.gp");
  std::string script((std::istreambuf_iterator<char>(gp)), {});
  CHECK(script.find("with yerrorbars") != std::string::npos);
  CHECK(script.find("with xyerrorbars") != std::string::npos);

  // Interrupted: 30 whole lines and half of the next survive; a rerun
  // completes the rest without repeating any.
  {
    std::ifstream in(out + "/results.jsonl");
    std::string all((std::istreambuf_iterator<char>(in)), {});
    size_t cut = 0;
    for (int i = 0; i < 30; ++i)
      cut = all.find('\n', cut) + 1;
    std::ofstream(out + "/results.jsonl", std::ios::trunc) << all.substr(0, cut + 40);
  }
  auto again = run_ceco("experiment " + file + " --out " + out + " --no-plots");
  REQUIRE(again.status == 0);
  CHECK(again.out.find("30 done before, resuming") != std::string::npos);
  auto resumed = read_lines(out + "/results.jsonl");
  CHECK(resumed.size() == lines.size());
  std::set<std::string> keys;
  for (auto& j : resumed)
    keys.insert(j["setting"].get<std::string>() + j["mode"].get<std::string>() +
                std::to_string(j["sample"].get<int>()) + std::to_string(j["repetition"].get<int>()));
  CHECK(keys.size() == lines.size());
  // A reference result set beside the results changes no result: the folder is reused.
  auto referenced = run_ceco("experiment " + file + " --out " + out +
                             " --no-plots --set experiment.reference.total_vs_cloud.collaborative=0.9");
  REQUIRE(referenced.status == 0);
  CHECK(read_lines(out + "/results.jsonl").size() == lines.size());
  std::ifstream referenced_md(out + "/summary.md");
  std::string with_reference((std::istreambuf_iterator<char>(referenced_md)), {});
  CHECK(with_reference.find("reference total / cloud") != std::string::npos);
  auto other = run_ceco("experiment " + file + " --out " + out + " --set generation.max_tokens=5");
  CHECK(other.status == 1);
  CHECK(other.out.find("holds results of different settings") != std::string::npos);
}

TEST_CASE("ceco edge adds no link delay by default: a file's [link] and --set still apply") {
  auto has = [](const std::string& out, const std::string& line) {
    return out.find(line + "\n") != std::string::npos;
  };
  auto plain = run_ceco("edge --print-config");
  REQUIRE(plain.status == 0);
  CHECK(has(plain.out, "link.latency_ms = 0"));
  CHECK(has(plain.out, "link.bandwidth_mbps = 0"));
  CHECK(has(plain.out, "link.jitter_ms = 0"));
  auto sim = run_ceco("sim --print-config");
  REQUIRE(sim.status == 0);
  CHECK(has(sim.out, "link.latency_ms = 5"));
  CHECK(has(sim.out, "link.bandwidth_mbps = 30"));
  temp_dir tmp;
  auto file = tmp.file("edge.toml");
  std::ofstream(file) << "[link]\nlatency_ms = 12\n";
  auto configured = run_ceco("edge --print-config --config " + file + " --set link.jitter_ms=2");
  REQUIRE(configured.status == 0);
  CHECK(has(configured.out, "link.latency_ms = 12"));
  CHECK(has(configured.out, "link.bandwidth_mbps = 0"));
  CHECK(has(configured.out, "link.jitter_ms = 2"));
  auto profiled = run_ceco("edge --print-config --set link.profile=wan");
  REQUIRE(profiled.status == 0);
  CHECK(has(profiled.out, "link.latency_ms = 25"));
}

TEST_CASE("ceco quantize writes a model generate loads, reports each tensor, and refuses bad input by name") {
  temp_dir tmp;
  const std::string dir = shared_dir() + "/models/tiny256/";
  const auto out = tmp.file("q4.gguf");
  auto r = run_ceco("quantize " + dir + "tiny256-f32.gguf " + out + " q4_k_m --threads 2");
  REQUIRE(r.status == 0);
  CHECK(r.out.find("[   1/  39] token_embd.weight") != std::string::npos);
  CHECK(r.out.find("[  39/  39]") != std::string::npos);
  CHECK(r.out.find("F32 -> Q6_K") != std::string::npos);
  CHECK(r.out.find("(Q4_K_M): 13.02 MiB -> 2.00 MiB in") != std::string::npos);
  CHECK(r.out.find("39 tensors (9 F32, 25 Q4_K, 5 Q6_K)") != std::string::npos);
  CHECK(std::filesystem::file_size(out) == std::filesystem::file_size(dir + "tiny256-Q4_K_M.gguf"));
  auto gen = run_ceco("generate --model " + out + " --prompt 'Once upon a time' --max-tokens 4 --json");
  REQUIRE(gen.status == 0);
  CHECK(nlohmann::json::parse(gen.out)["n_generated"] == 4);

  auto no_file_left = [&](const std::string& name) {
    CHECK_FALSE(std::filesystem::exists(tmp.file(name)));
    for (const auto& e : std::filesystem::directory_iterator(tmp.path))
      CHECK(e.path().string().find(".partial") == std::string::npos);
  };
  auto unknown = run_ceco("quantize " + dir + "tiny256-f32.gguf " + tmp.file("x.gguf") + " Q9_X");
  CHECK(unknown.status == 1);
  CHECK(unknown.out.find("TYPE: unknown weight type 'Q9_X', expected one of F32, F16, BF16, Q8_0") !=
        std::string::npos);
  CHECK(unknown.out.find("Q2_K, Q3_K_S, Q3_K_M, Q3_K_L") != std::string::npos);
  no_file_left("x.gguf");
  auto missing = run_ceco("quantize /nonexistent/in.gguf " + tmp.file("x.gguf") + " Q8_0");
  CHECK(missing.status == 1);
  CHECK(missing.out.find("/nonexistent/in.gguf: cannot open") != std::string::npos);
  auto unwritable = run_ceco("quantize " + dir + "tiny256-f32.gguf /nonexistent-dir/out.gguf Q8_0");
  CHECK(unwritable.status == 1);
  CHECK(unwritable.out.find("/nonexistent-dir/out.gguf: cannot open for writing") != std::string::npos);
  // Already quantized: refused, unless asked to requantize.
  auto quantized = run_ceco("quantize " + dir + "tiny256-Q8_0.gguf " + tmp.file("x.gguf") + " Q4_K_M");
  CHECK(quantized.status == 1);
  CHECK(quantized.out.find("tiny256-Q8_0.gguf: tensor 'output.weight' is Q8_0, already quantized") !=
        std::string::npos);
  CHECK(quantized.out.find("--allow-requantize") != std::string::npos);
  no_file_left("x.gguf");
  auto again = run_ceco("quantize " + dir + "tiny256-Q8_0.gguf " + tmp.file("x.gguf") +
                        " Q4_K_M --allow-requantize");
  CHECK(again.status == 0);
  CHECK(std::filesystem::file_size(tmp.file("x.gguf")) == std::filesystem::file_size(out));
  auto same = run_ceco("quantize " + out + " " + out + " Q8_0");
  CHECK(same.status == 1);
  CHECK(same.out.find(out + ": is the input file") != std::string::npos);
  auto usage = run_ceco("quantize " + dir + "tiny256-f32.gguf");
  CHECK(usage.status != 0);
  CHECK(usage.out.find("OUTPUT is required") != std::string::npos);
  auto help = run_ceco("quantize --help");
  CHECK(help.status == 0);
  CHECK(help.out.find("Q4_K_M") != std::string::npos);
  CHECK(help.out.find("--threads") != std::string::npos);
}
