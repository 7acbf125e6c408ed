// Minimal PNG output for generated images: 8-bit grey, RGB or RGBA, written with stored
// (uncompressed) deflate blocks, so it needs no zlib. Files are larger than compressed ones; for
// the small images of a diffusion sampler that is fine. Text chunks are written as Pillow writes
// them (drwkv.png.save_png), so the settings of a run read back the same from either writer.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace drwkv {

// Text chunks in file order: (keyword, UTF-8 text). A text that Latin-1 holds is a tEXt chunk
// (keyword, NUL, Latin-1 text), any other an uncompressed iTXt chunk with its UTF-8, as Pillow's
// PngInfo.add_text chooses.
using PngText = std::vector<std::pair<std::string, std::string>>;

// The PNG file of a width x height image with `channels` (1, 2 = grey + alpha, 3 or 4) 8-bit
// samples per pixel, rows top to bottom, pixels interleaved (HWC), with `text` before the image
// data. std::invalid_argument on bad sizes.
std::vector<uint8_t> encode_png(int width, int height, int channels, uint8_t const* pixels, PngText const& text = {});

// encode_png to a file; std::runtime_error if it cannot be written.
void write_png(std::string const& path, int width, int height, int channels, uint8_t const* pixels,
               PngText const& text = {});

// 8-bit images, [count, height, width, channels], pixels interleaved.
struct Images {
  int64_t count = 0, height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;
  uint8_t const* image(int64_t i) const { return pixels.data() + i * height * width * channels; }
};

// The images in one, as drwkv.png.make_grid: `nrow` per row (0: ceil(sqrt(count))), row-major,
// with `padding` black pixels between them and around. std::invalid_argument for nrow < 0.
Images make_grid(Images const& images, int64_t nrow = 0, int64_t padding = 2);

// A sampler's image, float [C, H, W] about [-1, 1], as 8-bit HWC: round((x + 1) * 127.5) clamped to 0..255.
std::vector<uint8_t> image_to_uint8(float const* chw, int channels, int height, int width);

}  // namespace drwkv
