// Tiled VAE decoding, as drwkv/runtime/tiling.py: overlapping latent tiles decoded one at a time and
// blended linearly, so that a decoder's memory is bounded by the tile, not the image. Along an
// axis of length L, tiles of `tile` start every tile - overlap pixels and the last one ends at L;
// an axis no longer than the tile is one tile. Each tile's output weight ramps up across its
// overlap with the previous tile and down across the next, divided by the ramps' sum (1 wherever
// two tiles meet), and a pixel's weight is the product of its two axis weights. Plain C++17.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace drwkv {

// std::invalid_argument unless tile >= 1 and 0 <= overlap < tile, in the words of
// drwkv.runtime.tiling.tile_plan.
void check_tile(int64_t tile, int64_t overlap);

// Start offsets of the tiles along an axis of `length` latent pixels.
std::vector<int64_t> tile_starts(int64_t length, int64_t tile, int64_t overlap);

// Per tile, its output weights along one axis ([size * downsample] each; they sum to 1 over the
// tiles at every output position). `size` is the tile's length along the axis.
std::vector<std::vector<float>> axis_weights(std::vector<int64_t> const& starts, int64_t size, int64_t downsample);

// Decodes one tile: latents [batch, c, h, w] -> images [batch, C, h*f, w*f], both contiguous.
using TileDecoder = std::function<void(int64_t batch, int64_t h, int64_t w, float const* latents, float* images)>;

// images [batch, image_channels, h*f, w*f] from latents [batch, latent_channels, h, w], decoded in
// tiles of tile x tile latent pixels overlapping by `overlap`. Returns the number of tiles decoded.
// check_tile first.
int64_t decode_tiled(TileDecoder const& decode, int64_t batch, int64_t latent_channels, int64_t h, int64_t w,
                     int64_t image_channels, int64_t downsample, int64_t tile, int64_t overlap, float const* latents,
                     float* images);

}  // namespace drwkv
