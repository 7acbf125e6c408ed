#include "drwkv/tiling.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace drwkv {

void check_tile(int64_t tile, int64_t overlap) {
  if (tile < 1) throw std::invalid_argument("the VAE tile must be at least 1 latent pixel, got " + std::to_string(tile));
  if (overlap < 0 || overlap >= tile)
    throw std::invalid_argument("the VAE tile overlap must be in 0.." + std::to_string(tile - 1) + " (below the tile " +
                                std::to_string(tile) + "), got " + std::to_string(overlap));
}

std::vector<int64_t> tile_starts(int64_t length, int64_t tile, int64_t overlap) {
  if (length <= tile) return {0};
  std::vector<int64_t> starts;
  for (int64_t s = 0; s < length - tile; s += tile - overlap) starts.push_back(s);
  starts.push_back(length - tile);
  return starts;
}

std::vector<std::vector<float>> axis_weights(std::vector<int64_t> const& starts, int64_t size, int64_t downsample) {
  // In double, then rounded to float, as the Python side computes them.
  int64_t const n = size * downsample, count = int64_t(starts.size());
  std::vector<std::vector<double>> ramps(size_t(count), std::vector<double>(size_t(n), 1.0));
  std::vector<double> total(size_t((starts.back() + size) * downsample), 0.0);
  for (int64_t i = 0; i < count; ++i) {
    int64_t const before = i > 0 ? (starts[i - 1] + size - starts[i]) * downsample : 0;  // shared output pixels
    int64_t const after = i + 1 < count ? (starts[i] + size - starts[i + 1]) * downsample : 0;
    for (int64_t p = 0; p < n; ++p) {
      double const position = double(p) + 0.5;
      double& r = ramps[size_t(i)][size_t(p)];
      if (before > 0) r = std::min(r, position / double(before));
      if (after > 0) r = std::min(r, (double(n) - position) / double(after));
      total[size_t(starts[i] * downsample + p)] += r;
    }
  }
  std::vector<std::vector<float>> weights(size_t(count), std::vector<float>(size_t(n), 0.0f));
  for (int64_t i = 0; i < count; ++i)
    for (int64_t p = 0; p < n; ++p)
      weights[size_t(i)][size_t(p)] = float(ramps[size_t(i)][size_t(p)] / total[size_t(starts[i] * downsample + p)]);
  return weights;
}

int64_t decode_tiled(TileDecoder const& decode, int64_t batch, int64_t latent_channels, int64_t h, int64_t w,
                     int64_t image_channels, int64_t downsample, int64_t tile, int64_t overlap, float const* latents,
                     float* images) {
  check_tile(tile, overlap);
  int64_t const f = downsample, th = std::min(tile, h), tw = std::min(tile, w);
  std::vector<int64_t> const rows = tile_starts(h, tile, overlap), cols = tile_starts(w, tile, overlap);
  std::vector<std::vector<float>> const row_weights = axis_weights(rows, th, f), col_weights = axis_weights(cols, tw, f);
  int64_t const H = h * f, W = w * f;
  std::fill(images, images + batch * image_channels * H * W, 0.0f);
  std::vector<float> part_in(size_t(batch * latent_channels * th * tw)), part_out(size_t(batch * image_channels * th * f * tw * f));
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    for (size_t ci = 0; ci < cols.size(); ++ci) {
      int64_t const r = rows[ri], c = cols[ci];
      for (int64_t bc = 0; bc < batch * latent_channels; ++bc)
        for (int64_t y = 0; y < th; ++y)
          std::copy_n(latents + (bc * h + r + y) * w + c, tw, part_in.data() + (bc * th + y) * tw);
      decode(batch, th, tw, part_in.data(), part_out.data());
      int64_t const ph = th * f, pw = tw * f;
      for (int64_t bc = 0; bc < batch * image_channels; ++bc)
        for (int64_t y = 0; y < ph; ++y) {
          float const row_weight = row_weights[ri][size_t(y)];
          float* out = images + (bc * H + r * f + y) * W + c * f;
          float const* in = part_out.data() + (bc * ph + y) * pw;
          for (int64_t x = 0; x < pw; ++x) out[x] += in[x] * (row_weight * col_weights[ci][size_t(x)]);
        }
    }
  }
  return int64_t(rows.size() * cols.size());
}

}  // namespace drwkv
