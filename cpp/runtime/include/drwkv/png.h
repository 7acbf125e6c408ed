// Minimal PNG output for generated images: 8-bit grey, RGB or RGBA, written with stored
// (uncompressed) deflate blocks, so it needs no zlib. Files are larger than compressed ones; for
// the small images of a diffusion sampler that is fine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace drwkv {

// The PNG file of a width x height image with `channels` (1, 2 = grey + alpha, 3 or 4) 8-bit
// samples per pixel, rows top to bottom, pixels interleaved (HWC). std::invalid_argument on bad sizes.
std::vector<uint8_t> encode_png(int width, int height, int channels, uint8_t const* pixels);

// encode_png to a file; std::runtime_error if it cannot be written.
void write_png(std::string const& path, int width, int height, int channels, uint8_t const* pixels);

// A sampler's image, float [C, H, W] about [-1, 1], as 8-bit HWC: round((x + 1) * 127.5) clamped to 0..255.
std::vector<uint8_t> image_to_uint8(float const* chw, int channels, int height, int width);

}  // namespace drwkv
