// Experiment summaries: each cell's mean over samples and its 95% bootstrap
// interval over samples, the ratios to the cloud strategy over paired
// samples, the counts summary.md states and the plots' error bars.

#include "test/support.hpp"  // torch before doctest: doctest's CHECK, not glog's

#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "apps/experiments/plots.hpp"
#include "apps/experiments/summary.hpp"

using namespace ceco::app;
using ceco::test::temp_dir;
using json = nlohmann::json;

namespace {

std::string text_of(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

/// One results.jsonl line of the fields a summary reads.
json response(int combo, const std::string& mode, int sample, int repetition, double total_ms,
              double cloud_ms, double rate) {
  return {{"combo", combo},       {"mode", mode},          {"sample", sample},
          {"repetition", repetition}, {"total_ms", total_ms}, {"cloud_ms", cloud_ms},
          {"edge_ms", total_ms - cloud_ms}, {"comm_ms", 0.0}, {"bytes_up", 1000.0 * (1 + sample)},
          {"cloud_request_rate", rate}, {"agreement_with_cloud", 1.0 - 0.1 * sample},
          {"exits", {{"cloud", 4}}}, {"n_generated", 4}};
}

std::vector<combo> two_thresholds() {
  std::vector<combo> combos(2);
  for (int c = 0; c < 2; ++c) {
    combos[c].keys = {{"threshold", c ? 1.5 : 0.8}, {"split", 2},    {"exit_layers", {2, 3}},
                      {"upload_dtype", "f32"},       {"link", "lan"}, {"latency_ms", 1.0 + c}};
    combos[c].label = c ? "θ=1.5" : "θ=0.8";
  }
  return combos;
}

/// Combination 0: four samples, two repetitions each; the collaborative
/// strategy takes half the cloud's time on every sample. Combination 1: one
/// sample, one repetition.
std::vector<json> ledger_lines() {
  std::vector<json> lines;
  for (int s = 0; s < 4; ++s)
    for (int r = 0; r < 2; ++r) {
      const double cloud_total = 10.0 * (1 + s) + r;
      lines.push_back(response(0, "cloud", s, r, cloud_total, 0.5 * cloud_total, 1.0));
      lines.push_back(response(0, "collaborative", s, r, 0.5 * cloud_total, 0.1 * cloud_total,
                               0.25 * s));
    }
  lines.push_back(response(1, "cloud", 0, 0, 10.0, 5.0, 1.0));
  lines.push_back(response(1, "collaborative", 0, 0, 6.0, 1.0, 0.5));
  return lines;
}

} // namespace

TEST_CASE("summary: a cell's interval is over samples, each the mean of its repetitions") {
  // One value: a mean and no interval.
  auto one = cell_stat({{5.0}});
  CHECK(one.mean == 5.0);
  CHECK_FALSE(one.ci);
  CHECK(one.lo() == 5.0);
  CHECK(one.hi() == 5.0);
  CHECK(one.samples == 1);
  CHECK(one.values == 1);

  // Identical values: an interval of no width.
  auto flat = cell_stat({{2.0, 2.0}, {2.0, 2.0}, {2.0, 2.0}});
  CHECK(flat.mean == doctest::Approx(2.0));
  REQUIRE(flat.ci);
  CHECK(flat.ci->hi - flat.ci->lo == doctest::Approx(0.0));

  // One sample repeated: its repetitions say nothing of other prompts, so
  // there is no interval (not the repetitions' spread passed off as one).
  auto reps = cell_stat({{1.0, 2.0, 3.0, 4.0}});
  CHECK(reps.mean == doctest::Approx(2.5));
  CHECK_FALSE(reps.ci);
  CHECK(reps.samples == 1);
  CHECK(reps.values == 4);

  // Samples that differ, one repetition each (the old summary's "± 0.0"):
  // an interval around the mean of the sample means, wider for more
  // spread-out samples.
  std::vector<std::vector<double>> close, far;
  for (int i = 0; i < 20; ++i) {
    close.push_back({10.0 + (i % 5) * 0.1});
    far.push_back({10.0 + (i % 5) * 5.0});
  }
  auto a = cell_stat(close), b = cell_stat(far);
  CHECK(a.samples == 20);
  REQUIRE(a.ci);
  REQUIRE(b.ci);
  CHECK(a.ci->lo < a.mean);
  CHECK(a.mean < a.ci->hi);
  CHECK(b.ci->hi - b.ci->lo > 10 * (a.ci->hi - a.ci->lo));
  CHECK(b.ci->lo >= 10.0);
  CHECK(b.ci->hi <= 30.0);
  // Each sample counts once, whatever its repetitions: the mean of the means.
  auto uneven = cell_stat({{0.0}, {10.0, 10.0, 10.0}});
  CHECK(uneven.mean == doctest::Approx(5.0));
  CHECK(uneven.values == 4);
  CHECK(uneven.samples == 2);
  // Repetitions that differ within samples widen nothing once averaged:
  // the interval is that of the samples' means.
  auto averaged = cell_stat({{9.0, 11.0}, {19.0, 21.0}, {29.0, 31.0}});
  auto means = cell_stat({{10.0}, {20.0}, {30.0}});
  REQUIRE(averaged.ci);
  REQUIRE(means.ci);
  CHECK(averaged.ci->lo == means.ci->lo);
  CHECK(averaged.ci->hi == means.ci->hi);

  // Reproducible: the resampling has a fixed seed.
  auto again = cell_stat(far);
  CHECK(again.ci->lo == b.ci->lo);
  CHECK(again.ci->hi == b.ci->hi);
}

TEST_CASE("summary: counts, intervals and ratios over paired samples in summary.md and .csv") {
  temp_dir tmp;
  const auto combos = two_thresholds();
  auto groups = summarize(ledger_lines(), combos, {ceco::strategy::cloud, ceco::strategy::collaborative});
  REQUIRE(groups.size() == 4);
  CHECK(groups[0].samples == 4);
  CHECK(groups[0].repetitions == 2);
  CHECK(groups[0].stats.at("total_ms").values == 8);
  CHECK(groups[2].samples == 1);
  CHECK_FALSE(groups[2].stats.at("total_ms").ci);

  // Half the cloud's time on every sample: a ratio of 0.5 with an interval
  // of no width, though each strategy's own mean is uncertain.
  auto ratio = ratio_of_means(groups[1], groups[0], "total_ms");
  CHECK(ratio.value == doctest::Approx(0.5));
  CHECK(ratio.units == 4);
  REQUIRE(ratio.ci);
  CHECK(ratio.ci->lo == doctest::Approx(0.5));
  CHECK(ratio.ci->hi == doctest::Approx(0.5));
  REQUIRE(groups[1].stats.at("total_ms").ci);
  CHECK(groups[1].stats.at("total_ms").ci->hi - groups[1].stats.at("total_ms").ci->lo > 2.0);

  ceco::settings base;
  base.experiment.name = "summary-test";
  base.experiment.repetitions = 2;
  write_markdown(tmp.path / "summary.md", base, "prompts.json", 4, groups, {}, {});
  const auto md = text_of(tmp.path / "summary.md");
  CAPTURE(md);
  // What the interval is, and how many samples and repetitions each row holds.
  CHECK(md.find("95% bootstrap confidence interval") != std::string::npos);
  CHECK(md.find("2000 resamples of the samples") != std::string::npos);
  CHECK(md.find("`[n/a]`: one sample") != std::string::npos);
  CHECK(md.find("| cloud | θ=0.8 | 4 x 2 | 25.5 [") != std::string::npos);
  CHECK(md.find("| collaborative | θ=0.8 | 4 x 2 | 12.8 [") != std::string::npos);
  CHECK(md.find("| cloud | θ=1.5 | 1 x 1 | 10.0 [n/a] |") != std::string::npos);
  CHECK(md.find("| collaborative | θ=1.5 | 1 x 1 | 6.0 [n/a] |") != std::string::npos);
  CHECK(md.find("± 0.0") == std::string::npos);
  CHECK(md.find("**Few samples:** a row of fewer than 10 samples") != std::string::npos);
  // The ratios: over paired samples, with their interval.
  CHECK(md.find("resamples those samples in pairs") != std::string::npos);
  CHECK(md.find("| strategy | setting | pairs | total / cloud | cloud compute vs cloud |") !=
        std::string::npos);
  CHECK(md.find("| collaborative | θ=0.8 | 4 | 0.500 | -80.0% |") != std::string::npos);
  CHECK(md.find("| collaborative | θ=1.5 | 1 | 0.600 [n/a] | -80.0% [n/a] |") != std::string::npos);
  // A cell whose samples differ shows its interval: the cloud request rate
  // of the collaborative strategy is 0, 25, 50 and 75% on the four samples.
  CHECK(md.find("| 37.5 [") != std::string::npos);

  write_csv(tmp.path / "summary.csv", groups);
  const auto csv = text_of(tmp.path / "summary.csv");
  CHECK(csv.find(",total_ms_mean,total_ms_ci95_lo,total_ms_ci95_hi,") != std::string::npos);
  CHECK(csv.find(",cloud,1,1,1,10,,,") != std::string::npos);  // one sample: no interval
}

TEST_CASE("summary: every plotted mean carries its interval as an error bar") {
  temp_dir tmp;
  const auto combos = two_thresholds();
  auto groups = summarize(ledger_lines(), combos, {ceco::strategy::cloud, ceco::strategy::collaborative});
  auto made = write_plot_script(tmp.path, groups, combos.size(), true, true);
  CHECK(std::find(made.begin(), made.end(), "bytes.svg") != made.end());
  CHECK(std::find(made.begin(), made.end(), "threshold_tradeoff.png") != made.end());
  CHECK(std::find(made.begin(), made.end(), "latency_total.svg") != made.end());
  const auto script = text_of(tmp.path / "plots.gp");
  CAPTURE(script);
  // Per terminal (PNG, SVG): the total time of the time breakdown, bytes
  // up and the cloud request rate.
  CHECK(count_of(script, "with yerrorbars") == 2 * 3);
  CHECK(count_of(script, "axes x1y2 with yerrorbars") == 2);
  // The threshold trade-off: both axes are means.
  CHECK(count_of(script, "with xyerrorbars") == 2);
  // The latency sweep: two plots of two strategies.
  CHECK(count_of(script, "with yerrorlines") == 2 * 2 * 2);

  // The data behind them: each mean beside its interval's ends.
  const auto groups_data = text_of(tmp.path / "plot_groups.dat");
  CHECK(groups_data.find("total_lo total_hi bytes_lo bytes_hi rate_lo rate_hi") != std::string::npos);
  const auto& rate = groups[1].stats.at("cloud_request_rate");
  REQUIRE(rate.ci);
  CHECK(groups_data.find(fmt::format(" {} {}\n", rate.ci->lo, rate.ci->hi)) != std::string::npos);
  const auto tradeoff = text_of(tmp.path / "plot_tradeoff.dat");
  CHECK(tradeoff.find("total_lo total_hi agreement_lo agreement_hi") != std::string::npos);
  const auto latency = text_of(tmp.path / "plot_latency_ms.dat");
  CHECK(latency.find("total_ms lo hi ttft_ms lo hi") != std::string::npos);
}
