// Experiment summaries: each cell's mean over samples and its 95% bootstrap
// interval over samples and repetitions.

#include <doctest/doctest.h>

#include "apps/experiments/summary.hpp"

using namespace ceco::app;

TEST_CASE("summary: the bootstrap interval shows the spread over samples and repetitions") {
  // One value: a mean and no interval.
  auto one = bootstrap({{5.0}});
  CHECK(one.mean == 5.0);
  CHECK(one.lo == 5.0);
  CHECK(one.hi == 5.0);
  CHECK(one.samples == 1);
  CHECK(one.values == 1);

  // Identical values: an interval of no width.
  auto flat = bootstrap({{2.0, 2.0}, {2.0, 2.0}, {2.0, 2.0}});
  CHECK(flat.mean == doctest::Approx(2.0));
  CHECK(flat.hi - flat.lo == doctest::Approx(0.0));

  // One sample repeated: the repetitions' spread alone (the old summary's
  // "± 0.0" for one repetition hid the samples' spread; here one sample
  // still shows its repetitions').
  auto reps = bootstrap({{1.0, 2.0, 3.0, 4.0}});
  CHECK(reps.mean == doctest::Approx(2.5));
  CHECK(reps.lo < 2.5);
  CHECK(reps.hi > 2.5);
  CHECK(reps.lo >= 1.0);
  CHECK(reps.hi <= 4.0);

  // Samples that differ, one repetition each: an interval around the mean
  // of the sample means, wider for more spread-out samples.
  std::vector<std::vector<double>> close, far;
  for (int i = 0; i < 20; ++i) {
    close.push_back({10.0 + (i % 5) * 0.1});
    far.push_back({10.0 + (i % 5) * 5.0});
  }
  auto a = bootstrap(close), b = bootstrap(far);
  CHECK(a.samples == 20);
  CHECK(a.lo < a.mean);
  CHECK(a.mean < a.hi);
  CHECK(b.hi - b.lo > 10 * (a.hi - a.lo));
  // Each sample counts once, whatever its repetitions: the mean of the means.
  auto uneven = bootstrap({{0.0}, {10.0, 10.0, 10.0}});
  CHECK(uneven.mean == doctest::Approx(5.0));
  CHECK(uneven.values == 4);

  // Reproducible: the resampling has a fixed seed.
  auto again = bootstrap(far);
  CHECK(again.lo == b.lo);
  CHECK(again.hi == b.hi);
}
