// The settings a generated PNG carries, as drwkv/settings.py writes them: for the same run the C++
// runtime writes the same text chunks as drwkv-infer (drwkv.* keys, one value each, and the one-line
// `parameters`), so drwkv-infer --info reads back an image drwkv_generate wrote. Values print the
// way Python prints them (str of an int, a bool, a float), since the Python side defines the text.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "drwkv/png.h"

namespace drwkv {

// A float as Python's str() and repr() print it: the shortest text that reads back the same
// number, fixed-point with ".0" for whole numbers ("1.5", "2.0", "0.0001"), exponents from 1e16 and
// below 1e-4 ("1e+16", "1e-05"), and "inf", "nan".
std::string python_float(double value);

// A string as Python's repr() quotes it: single quotes unless it holds one and no double quote,
// backslash escapes for the quote, backslash, tab, newline, carriage return and the other ASCII
// control characters. Characters beyond ASCII are kept as they are (Python escapes its few
// unprintable ones, which no setting holds).
std::string python_repr(std::string const& text);

// What one run was made with (drwkv.settings.RunSettings); grid_text and image_text give the PNG
// text of its outputs.
struct RunSettings {
  std::string software, model, artifact, backend, sampler;
  int64_t steps = 0;
  double eta = 0.0, cfg_scale = 1.0;
  bool clip_x0 = true;
  uint64_t seed = 0;
  int64_t batch_size = 0;
  int64_t width = 0, height = 0;          // of one image, also in a grid
  std::vector<std::string> class_names;   // the model's (may be empty)
  bool conditional = true;                // the model takes classes: the text records labels and a Class
  std::optional<std::string> vae_decoder;  // recorded when given: tiles change a latent model's pixels
  std::optional<int64_t> vae_tile, vae_tile_overlap;

  std::string class_name(int64_t label) const;  // its name, else the number
  PngText common() const;                       // Software and the drwkv.* keys every output has
  std::string parameters(std::string const& classes) const;  // the parameters line before its last fields
  PngText grid_text(std::vector<int64_t> const& labels, uint64_t first_image, int64_t nrow) const;
  PngText image_text(uint64_t index, int64_t label) const;
  // One image's file in a folder: 0007_sneaker.png (characters other than ASCII letters, digits,
  // - and _ become _; Python keeps its other Unicode letters and digits, so names beyond ASCII
  // differ there).
  std::string image_file_name(uint64_t index, int64_t label) const;
};

// The `parameters` text of (name, value) pairs: "Name: value, Name: value", with a value holding a
// comma, colon or double quote JSON-quoted (ASCII only, as Python's json.dumps); drwkv.png.parameters_line.
std::string parameters_line(std::vector<std::pair<std::string, std::string>> const& fields);

}  // namespace drwkv
