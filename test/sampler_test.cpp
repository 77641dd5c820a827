#include "test/support.hpp"

#include "model/sampler.hpp"

using namespace ceco;

TEST_CASE("greedy sampling is argmax, and ties go to the lowest id") {
  std::vector<float> z = {0.1f, 3.0f, -1.0f, 3.0f};
  sampler s;
  CHECK(s.sample(z.data(), 4) == 1);
  CHECK(argmax(z.data(), 4) == 1);
}

TEST_CASE("max_probability is the largest softmax entry") {
  std::vector<float> z = {0.0f, std::log(3.0f)};
  CHECK(max_probability(z.data(), 2) == doctest::Approx(0.75));
  std::vector<float> big = {1000.0f, 0.0f};
  CHECK(max_probability(big.data(), 2) == doctest::Approx(1.0));
}

TEST_CASE("temperature sampling is reproducible by seed and follows the distribution") {
  std::vector<float> z = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  sampler a({1.0f, 0, 1.0f, 7}), b({1.0f, 0, 1.0f, 7});
  std::vector<int> counts(3);
  for (int i = 0; i < 20000; ++i) {
    int x = a.sample(z.data(), 3);
    CHECK(x == b.sample(z.data(), 3));
    ++counts[size_t(x)];
  }
  CHECK(counts[0] / 20000.0 == doctest::Approx(0.5).epsilon(0.05));
  CHECK(counts[1] / 20000.0 == doctest::Approx(0.3).epsilon(0.05));
  CHECK(counts[2] / 20000.0 == doctest::Approx(0.2).epsilon(0.08));
}

TEST_CASE("top-k and top-p cut the candidates") {
  std::vector<float> z = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  sampler k1({1.0f, 1, 1.0f, 3});
  sampler p_small({1.0f, 0, 0.4f, 3});  // 0.5 alone reaches 0.4
  sampler p_two({1.0f, 0, 0.7f, 3});    // 0.5 + 0.3 reaches 0.7
  for (int i = 0; i < 500; ++i) {
    CHECK(k1.sample(z.data(), 3) == 0);
    CHECK(p_small.sample(z.data(), 3) == 0);
    CHECK(p_two.sample(z.data(), 3) != 2);
  }
}
