// Tiled VAE decoding (drwkv/tiling.h): tiles cover every latent pixel for any size, the blend
// weights sum to 1, and a decoder without spatial context gives exactly the whole-image result
// while never seeing more than one tile. Usage: test_tiling
#include "drwkv/tiling.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "check.h"

namespace {

void check_cover(int64_t length, int64_t tile, int64_t overlap, int64_t f) {
  std::vector<int64_t> const starts = drwkv::tile_starts(length, tile, overlap);
  int64_t const size = std::min(tile, length);
  CHECK(starts.front() == 0 && starts.back() + size == length);
  for (size_t i = 1; i < starts.size(); ++i) CHECK(starts[i] - starts[i - 1] <= tile - overlap);
  std::vector<double> total(size_t(length * f), 0.0);
  std::vector<std::vector<float>> const weights = drwkv::axis_weights(starts, size, f);
  CHECK(weights.size() == starts.size());
  for (size_t i = 0; i < starts.size(); ++i)
    for (int64_t p = 0; p < size * f; ++p) {
      CHECK(weights[i][size_t(p)] > 0.0f);
      total[size_t(starts[i] * f + p)] += weights[i][size_t(p)];
    }
  for (double t : total) CHECK(std::fabs(t - 1.0) < 1e-6);
}

// Each latent pixel becomes f x f pixels of tanh(mix . latent), on its own.
struct Pointwise {
  int64_t largest = 0;
  void operator()(int64_t b, int64_t h, int64_t w, float const* in, float* out) {
    largest = std::max(largest, std::max(h, w));
    for (int64_t n = 0; n < b; ++n)
      for (int64_t o = 0; o < 3; ++o)
        for (int64_t y = 0; y < h * 4; ++y)
          for (int64_t x = 0; x < w * 4; ++x) {
            float v = 0.0f;
            for (int64_t c = 0; c < 4; ++c) v += float(o + 1 - c) * 0.3f * in[((n * 4 + c) * h + y / 4) * w + x / 4];
            out[((n * 3 + o) * h * 4 + y) * w * 4 + x] = std::tanh(v);
          }
  }
};

void check_exact(int64_t h, int64_t w, int64_t tile, int64_t overlap) {
  int64_t const B = 2;
  std::vector<float> latents(size_t(B * 4 * h * w));
  for (size_t i = 0; i < latents.size(); ++i) latents[i] = std::sin(0.37f * float(i));
  std::vector<float> whole(size_t(B * 3 * h * 4 * w * 4)), tiled(whole.size());
  Pointwise direct, tiles;
  direct(B, h, w, latents.data(), whole.data());
  int64_t const count = drwkv::decode_tiled(std::ref(tiles), B, 4, h, w, 3, 4, tile, overlap, latents.data(), tiled.data());
  CHECK(count == int64_t(drwkv::tile_starts(h, tile, overlap).size() * drwkv::tile_starts(w, tile, overlap).size()));
  CHECK(tiles.largest <= tile);
  float worst = 0.0f;
  for (size_t i = 0; i < whole.size(); ++i) worst = std::max(worst, std::fabs(whole[i] - tiled[i]));
  CHECK(worst < 2e-6f);
}

}  // namespace

int main() {
  for (auto [length, tile, overlap] : {std::array<int64_t, 3>{20, 8, 2}, {9, 8, 4}, {13, 8, 4}, {8, 8, 2}, {5, 8, 2},
                                       {17, 6, 5}, {64, 16, 0}})
    check_cover(length, tile, overlap, 3);
  check_exact(37, 23, 12, 3);
  check_exact(5, 70, 12, 3);
  check_exact(16, 16, 64, 16);
  bool refused = false;
  try {
    std::vector<float> none(1);
    drwkv::decode_tiled(Pointwise(), 1, 4, 1, 1, 3, 4, 8, 8, none.data(), none.data());
  } catch (std::invalid_argument const&) {
    refused = true;
  }
  CHECK(refused);
  if (drwkv_test::failures() == 0) std::printf("tiling: all checks passed\n");
  return drwkv_test::failures() == 0 ? 0 : 1;
}
