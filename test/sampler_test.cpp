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

TEST_CASE("a position's uniform depends on the seed, the stream and the position alone") {
  CHECK(position_uniform(7, sample_stream::cloud, 12) == position_uniform(7, sample_stream::cloud, 12));
  CHECK(position_uniform(7, sample_stream::cloud, 12) != position_uniform(8, sample_stream::cloud, 12));
  CHECK(position_uniform(7, sample_stream::cloud, 12) != position_uniform(7, sample_stream::edge, 12));
  CHECK(position_uniform(7, sample_stream::cloud, 12) != position_uniform(7, sample_stream::cloud, 13));
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    double u = position_uniform(3, sample_stream::accept, i);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += u;
  }
  CHECK(sum / 10000 == doctest::Approx(0.5).epsilon(0.02));
}

TEST_CASE("sample_at is argmax at temperature 0 and follows the distribution above it") {
  std::vector<float> z = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::vector<std::pair<float, int32_t>> scratch;
  CHECK(sample_at(z.data(), 3, {}, 0.99, scratch) == 0);
  sampler_options o{1.0f, 0, 1.0f, 0};
  CHECK(sample_at(z.data(), 3, o, 0.1, scratch) == 0);
  CHECK(sample_at(z.data(), 3, o, 0.6, scratch) == 1);
  CHECK(sample_at(z.data(), 3, o, 0.9, scratch) == 2);
  std::vector<double> probs;
  sampling_probabilities(z.data(), 3, {1.0f, 2, 1.0f, 0}, probs, scratch);
  CHECK(probs[0] == doctest::Approx(0.625));
  CHECK(probs[2] == 0.0);
}

/// Pearson's chi-square of `counts` (n draws) against the verification
/// tests' cloud distribution p = (0.4, 0.3, 0.2, 0.1).
static double chi_square_vs_cloud(const std::vector<int>& counts, int n) {
  const double p[] = {0.4, 0.3, 0.2, 0.1};
  double chi2 = 0;
  for (int t = 0; t < 4; ++t)
    chi2 += (counts[size_t(t)] - n * p[t]) * (counts[size_t(t)] - n * p[t]) / (n * p[t]);
  return chi2;
}

TEST_CASE("verifying drafts of any distribution keeps the cloud's distribution (chi-square)") {
  // The cloud's p and an edge's q that disagree; drafts x ~ q, verified by
  // verify_draft: the tokens must be distributed as p.
  std::vector<float> p_logits = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  const std::vector<double> q = {0.1, 0.2, 0.3, 0.4};
  const sampler_options o{1.0f, 0, 1.0f, 0};
  std::vector<double> probs;
  std::vector<std::pair<float, int32_t>> scratch;
  const int n = 40000;
  std::vector<int> counts(4);
  int accepted = 0;
  for (int i = 0; i < n; ++i) {
    double u = position_uniform(1, sample_stream::edge, i), cum = 0;
    int32_t x = 3;
    for (int t = 0; t < 4; ++t)
      if (u < (cum += q[size_t(t)])) {
        x = t;
        break;
      }
    int32_t y = verify_draft(p_logits.data(), 4, o, x, {}, position_uniform(1, sample_stream::accept, i),
                             position_uniform(1, sample_stream::cloud, i), probs, scratch);
    accepted += y == x;
    ++counts[size_t(y)];
  }
  const double chi2 = chi_square_vs_cloud(counts, n);
  MESSAGE("chi-square " << chi2 << " (3 degrees of freedom; p >= 0.01 below 11.34), accepted "
                        << double(accepted) / n);
  CHECK(chi2 < 11.34);
  CHECK(double(accepted) / n == doctest::Approx(0.04 + 0.06 + 0.06 + 0.04).epsilon(0.05));
}

TEST_CASE("verifying drafts with their distribution keeps the cloud's and accepts sum min(p, q) (chi-square)") {
  // The edge's exit: logits of its own, a draft distribution cut to its 3
  // likeliest tokens (sample_with_draft), drawn with the edge's uniform; the cloud
  // verifies with those exact weights.
  std::vector<float> p_logits = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  std::vector<float> q_logits = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
  const sampler_options o{1.0f, 0, 1.0f, 0};
  std::vector<double> probs;
  std::vector<std::pair<float, int32_t>> scratch;
  std::vector<int32_t> q_tokens;
  std::vector<float> q_weights;
  const int n = 40000;
  std::vector<int> counts(4), drafted(4);
  int accepted = 0;
  for (int i = 0; i < n; ++i) {
    const double u = position_uniform(1, sample_stream::edge, i);
    auto both = sample_with_draft(q_logits.data(), 4, o, 3, u, q_tokens, q_weights, scratch);
    CHECK(both.token == sample_at(q_logits.data(), 4, o, u, scratch));
    int32_t x = both.draft;
    REQUIRE(q_tokens == std::vector<int32_t>{3, 2, 1});
    ++drafted[size_t(x)];
    draft_q q{q_tokens.data(), q_weights.data(), int(q_tokens.size())};
    int32_t y = verify_draft(p_logits.data(), 4, o, x, q, position_uniform(1, sample_stream::accept, i),
                             position_uniform(1, sample_stream::cloud, i), probs, scratch);
    accepted += y == x;
    ++counts[size_t(y)];
  }
  CHECK(drafted[0] == 0);  // cut: not among the 3 candidates
  const double chi2 = chi_square_vs_cloud(counts, n);
  MESSAGE("chi-square " << chi2 << " (3 degrees of freedom; p >= 0.01 below 11.34), accepted "
                        << double(accepted) / n);
  CHECK(chi2 < 11.34);
  // q = (0, 2, 3, 4) / 9: sum min(p, q) = 0 + 2/9 + 0.2 + 0.1, against
  // sum q p = (0.6 + 0.6 + 0.4) / 9 for the point mass.
  CHECK(double(accepted) / n == doctest::Approx(2.0 / 9 + 0.3).epsilon(0.03));
}
