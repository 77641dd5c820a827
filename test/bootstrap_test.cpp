// The experiments' bootstrap intervals (apps/experiments/bootstrap.hpp): of
// a mean over samples and of a ratio of means over paired samples.

#include <doctest/doctest.h>

#include <cmath>

#include "apps/experiments/bootstrap.hpp"

using namespace ceco::app;

TEST_CASE("bootstrap: constant data gives an interval of no width") {
  auto flat = bootstrap_mean({3.5, 3.5, 3.5, 3.5, 3.5});
  CHECK(flat.value == 3.5);
  CHECK(flat.units == 5);
  REQUIRE(flat.ci);
  CHECK(flat.ci->lo == 3.5);
  CHECK(flat.ci->hi == 3.5);
}

TEST_CASE("bootstrap: one sample has no interval, none has no value") {
  auto one = bootstrap_mean({7.0});
  CHECK(one.value == 7.0);
  CHECK(one.units == 1);
  CHECK_FALSE(one.ci);
  auto none = bootstrap_mean({});
  CHECK(none.units == 0);
  CHECK_FALSE(none.ci);
  auto one_pair = bootstrap_ratio_of_means({{2.0, 4.0}});
  CHECK(one_pair.value == 0.5);
  CHECK_FALSE(one_pair.ci);
}

TEST_CASE("bootstrap: the interval of a known sample is about the normal one") {
  // 1..20: mean 10.5, population sd 5.766, so the bootstrap's standard
  // error is 5.766 / sqrt(20) = 1.289 and a 95% interval about ±2.53.
  std::vector<double> x;
  for (int i = 1; i <= 20; ++i)
    x.push_back(i);
  auto e = bootstrap_mean(x);
  CHECK(e.value == doctest::Approx(10.5));
  REQUIRE(e.ci);
  CHECK(e.ci->lo < e.value);
  CHECK(e.value < e.ci->hi);
  CHECK(e.ci->lo > 1.0);
  CHECK(e.ci->hi < 20.0);
  CHECK(e.ci->lo == doctest::Approx(10.5 - 2.53).epsilon(0.05));
  CHECK(e.ci->hi == doctest::Approx(10.5 + 2.53).epsilon(0.05));
  // Fewer resamples, a lower level: a narrower interval, still around the mean.
  bootstrap_options half;
  half.resamples = 500;
  half.level = 0.5;
  auto narrow = bootstrap_mean(x, half);
  REQUIRE(narrow.ci);
  CHECK(narrow.ci->lo > e.ci->lo);
  CHECK(narrow.ci->hi < e.ci->hi);
  CHECK(narrow.ci->lo < 10.5);
  CHECK(narrow.ci->hi > 10.5);
}

TEST_CASE("bootstrap: a fixed seed gives the same interval every time") {
  std::vector<double> x = {0.3, 1.7, 0.2, 5.0, 2.2, 0.9, 3.1, 0.4};
  auto a = bootstrap_mean(x), b = bootstrap_mean(x);
  REQUIRE(a.ci);
  REQUIRE(b.ci);
  CHECK(a.ci->lo == b.ci->lo);
  CHECK(a.ci->hi == b.ci->hi);
  // Another seed resamples otherwise: close, not the same.
  bootstrap_options other;
  other.seed = 42;
  auto c = bootstrap_mean(x, other);
  REQUIRE(c.ci);
  CHECK((c.ci->lo != a.ci->lo || c.ci->hi != a.ci->hi));
  CHECK(c.ci->lo == doctest::Approx(a.ci->lo).epsilon(0.15));
  CHECK(c.ci->hi == doctest::Approx(a.ci->hi).epsilon(0.15));
}

TEST_CASE("bootstrap: a ratio of means resamples pairs, so a shared spread cancels") {
  // Samples whose times differ tenfold, a strategy always half the cloud's:
  // the ratio is 0.5 on every resample, though each mean alone is uncertain.
  std::vector<std::pair<double, double>> pairs;
  std::vector<double> cloud;
  for (int i = 0; i < 12; ++i) {
    const double c = 10.0 * (1 + i % 4) * (1 + i % 3);
    pairs.emplace_back(0.5 * c, c);
    cloud.push_back(c);
  }
  auto ratio = bootstrap_ratio_of_means(pairs);
  CHECK(ratio.value == doctest::Approx(0.5));
  CHECK(ratio.units == 12);
  REQUIRE(ratio.ci);
  CHECK(ratio.ci->lo == doctest::Approx(0.5));
  CHECK(ratio.ci->hi == doctest::Approx(0.5));
  auto alone = bootstrap_mean(cloud);
  REQUIRE(alone.ci);
  CHECK(alone.ci->hi - alone.ci->lo > 0.2 * alone.value);

  // The ratio of means, not the mean of ratios: (1 + 9) / (1 + 1) = 5.
  auto skewed = bootstrap_ratio_of_means({{1.0, 1.0}, {9.0, 1.0}});
  CHECK(skewed.value == doctest::Approx(5.0));
  REQUIRE(skewed.ci);
  CHECK(skewed.ci->lo >= 1.0);
  CHECK(skewed.ci->hi <= 9.0);

  // Noisy ratios: an interval around the ratio.
  std::vector<std::pair<double, double>> noisy;
  for (int i = 0; i < 30; ++i)
    noisy.emplace_back(2.0 + (i % 5) * 0.3, 1.0 + (i % 7) * 0.1);
  auto r = bootstrap_ratio_of_means(noisy);
  REQUIRE(r.ci);
  CHECK(r.ci->lo < r.value);
  CHECK(r.value < r.ci->hi);

  // No denominator, no ratio.
  CHECK(bootstrap_ratio_of_means({{1.0, 0.0}, {2.0, 0.0}}).units == 0);
  CHECK(bootstrap_ratio_of_means({}).units == 0);
  // A denominator some resamples lack: a ratio without an interval.
  auto sparse = bootstrap_ratio_of_means({{1.0, 0.0}, {2.0, 0.0}, {3.0, 0.0}, {1.0, 1.0}});
  CHECK(sparse.value == doctest::Approx(7.0));
  CHECK_FALSE(sparse.ci);
}

TEST_CASE("bootstrap: quantiles interpolate between order statistics") {
  CHECK(quantile_of_sorted({0.0, 10.0}, 0.25) == doctest::Approx(2.5));
  CHECK(quantile_of_sorted({1.0, 2.0, 3.0}, 0.0) == 1.0);
  CHECK(quantile_of_sorted({1.0, 2.0, 3.0}, 1.0) == 3.0);
  CHECK(quantile_of_sorted({1.0, 2.0, 3.0}, 0.5) == 2.0);
  CHECK(quantile_of_sorted({4.0}, 0.975) == 4.0);
}
