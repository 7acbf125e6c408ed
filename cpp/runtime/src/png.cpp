// PNG = signature + IHDR + IDAT (zlib stream of the filtered rows) + IEND, each chunk followed by
// a CRC-32 of its type and data. Rows use filter 0 (none); the zlib stream holds stored blocks
// (at most 65535 bytes each) and ends with the Adler-32 of the uncompressed data. Text chunks go
// between IHDR and IDAT, where Pillow writes them.
#include "drwkv/png.h"

#include <algorithm>
#include <array>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>

#include "utf8.h"

namespace drwkv {
namespace {

uint32_t crc32(uint8_t const* data, size_t size, uint32_t crc = 0) {
  static std::array<uint32_t, 256> const table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t adler32(std::vector<uint8_t> const& data) {
  uint32_t a = 1, b = 0;
  for (uint8_t byte : data) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

void put_u32(std::vector<uint8_t>& out, uint32_t v) {  // big-endian, as PNG and zlib want
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(uint8_t(v >> shift));
}

void put_chunk(std::vector<uint8_t>& out, char const (&type)[5], std::vector<uint8_t> const& data) {
  put_u32(out, uint32_t(data.size()));
  size_t const start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32(out, crc32(out.data() + start, out.size() - start));
}

// tEXt (keyword, NUL, Latin-1 text) when every character is Latin-1, else iTXt (keyword, NUL,
// no compression, method 0, empty language and translated keyword, UTF-8 text): Pillow's choice.
void put_text(std::vector<uint8_t>& out, std::string const& keyword, std::string const& text) {
  std::vector<uint8_t> data(keyword.begin(), keyword.end());
  std::vector<uint32_t> const chars = utf8::code_points(text);
  if (std::all_of(chars.begin(), chars.end(), [](uint32_t c) { return c <= 0xFF; })) {
    data.push_back(0);
    data.insert(data.end(), chars.begin(), chars.end());  // each fits a byte
    put_chunk(out, "tEXt", data);
  } else {
    data.insert(data.end(), {0, 0, 0, 0, 0});
    data.insert(data.end(), text.begin(), text.end());
    put_chunk(out, "iTXt", data);
  }
}

}  // namespace

std::vector<uint8_t> encode_png(int width, int height, int channels, uint8_t const* pixels, PngText const& text) {
  static uint8_t const kColorType[] = {0, 0, 4, 2, 6};  // by channel count: grey, grey+alpha, RGB, RGBA
  if (width < 1 || height < 1 || channels < 1 || channels > 4)
    throw std::invalid_argument("encode_png: need width, height >= 1 and 1 to 4 channels");

  size_t const row = size_t(width) * size_t(channels);
  std::vector<uint8_t> raw;  // filter byte 0, then the row's samples
  raw.reserve((row + 1) * size_t(height));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), pixels + size_t(y) * row, pixels + size_t(y + 1) * row);
  }

  std::vector<uint8_t> zlib = {0x78, 0x01};  // deflate, 32 KiB window, no preset dictionary
  size_t pos = 0;  // raw holds at least one filter byte, so there is at least one block
  do {
    size_t const len = std::min<size_t>(65535, raw.size() - pos);
    bool const last = pos + len == raw.size();
    zlib.push_back(last ? 1 : 0);  // BFINAL, BTYPE = 00 (stored)
    zlib.push_back(uint8_t(len));
    zlib.push_back(uint8_t(len >> 8));
    zlib.push_back(uint8_t(~len));
    zlib.push_back(uint8_t(~len >> 8));
    zlib.insert(zlib.end(), raw.begin() + long(pos), raw.begin() + long(pos + len));
    pos += len;
  } while (pos < raw.size());
  put_u32(zlib, adler32(raw));

  std::vector<uint8_t> header;
  put_u32(header, uint32_t(width));
  put_u32(header, uint32_t(height));
  header.insert(header.end(), {8, kColorType[channels], 0, 0, 0});  // depth 8, deflate, filter 0, no interlace

  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  put_chunk(png, "IHDR", header);
  for (auto const& [keyword, value] : text) put_text(png, keyword, value);
  put_chunk(png, "IDAT", zlib);
  put_chunk(png, "IEND", {});
  return png;
}

void write_png(std::string const& path, int width, int height, int channels, uint8_t const* pixels,
               PngText const& text) {
  std::vector<uint8_t> const png = encode_png(width, height, channels, pixels, text);
  // Through a temp file and a rename, as every write of the project: an existing file stays whole
  // until the new one is complete.
  std::string const tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream file(tmp, std::ios::binary);
    file.write(reinterpret_cast<char const*>(png.data()), std::streamsize(png.size()));
    file.close();
    if (!file) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write " + path);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}

std::vector<uint8_t> image_to_uint8(float const* chw, int channels, int height, int width) {
  size_t const plane = size_t(height) * size_t(width);
  std::vector<uint8_t> hwc(plane * size_t(channels));
  for (size_t p = 0; p < plane; ++p)
    for (int c = 0; c < channels; ++c) {
      float const v = std::nearbyint((chw[size_t(c) * plane + p] + 1.0f) * 127.5f);
      hwc[p * size_t(channels) + size_t(c)] = uint8_t(v > 255.0f ? 255.0f : v > 0.0f ? v : 0.0f);  // NaN -> 0
    }
  return hwc;
}

Images make_grid(Images const& images, int64_t nrow, int64_t padding) {
  if (nrow < 0) throw std::invalid_argument("make_grid: nrow must be 0 (about square) or more");
  if (nrow == 0) nrow = int64_t(std::ceil(std::sqrt(double(images.count))));
  int64_t const H = images.height, W = images.width, C = images.channels;
  int64_t const rows = (images.count + nrow - 1) / nrow;
  Images grid{1, rows * (H + padding) + padding, nrow * (W + padding) + padding, C, {}};
  grid.pixels.assign(size_t(grid.height * grid.width * C), 0);
  for (int64_t i = 0; i < images.count; ++i) {
    int64_t const top = padding + (i / nrow) * (H + padding), left = padding + (i % nrow) * (W + padding);
    for (int64_t y = 0; y < H; ++y)
      std::copy_n(images.image(i) + y * W * C, W * C, grid.pixels.data() + ((top + y) * grid.width + left) * C);
  }
  return grid;
}

}  // namespace drwkv
