// drwkv/settings.py and drwkv/png.py's parameters_line in C++ (see drwkv/settings.h).
#include "drwkv/settings.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "utf8.h"

namespace drwkv {
namespace {

std::string python_bool(bool value) { return value ? "True" : "False"; }

// json.dumps of a string: ASCII, with \uXXXX (surrogate pairs beyond the BMP) for the rest.
std::string json_quoted(std::string const& text) {
  std::string out = "\"";
  auto put_u = [&out](uint32_t unit) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(unit));
    out += buf;
  };
  for (uint32_t c : utf8::code_points(text)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c >= 0x20 && c <= 0x7E) {
          out += char(c);
        } else if (c > 0xFFFF) {
          put_u(0xD800 + ((c - 0x10000) >> 10));
          put_u(0xDC00 + ((c - 0x10000) & 0x3FF));
        } else {
          put_u(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace

std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The shortest round-trip digits (as Python's repr), from to_chars' "d.ddde+XX".
  char buf[64];
  char* const end = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific).ptr;
  std::string const text(buf, end);
  size_t const e = text.find('e');
  std::string const sign = text[0] == '-' ? "-" : "";
  std::string digits;
  for (char ch : text.substr(sign.size(), e - sign.size()))
    if (ch != '.') digits += ch;
  int const exponent = std::stoi(text.substr(e + 1));
  int const point = exponent + 1;  // digits before the decimal point
  int const n = int(digits.size());
  if (point > -4 && point <= 16) {  // fixed-point, as repr chooses
    if (point <= 0) return sign + "0." + std::string(size_t(-point), '0') + digits;
    if (point >= n) return sign + digits + std::string(size_t(point - n), '0') + ".0";
    return sign + digits.substr(0, size_t(point)) + "." + digits.substr(size_t(point));
  }
  char exp[16];
  std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return sign + digits.substr(0, 1) + (n > 1 ? "." + digits.substr(1) : "") + exp;
}

std::string python_repr(std::string const& text) {
  char const quote = text.find('\'') != std::string::npos && text.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (char ch : text) {
    auto const c = uint8_t(ch);
    if (ch == quote || ch == '\\') out += std::string("\\") + ch;
    else if (ch == '\t') out += "\\t";
    else if (ch == '\n') out += "\\n";
    else if (ch == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7F) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + quote;
}

std::string parameters_line(std::vector<std::pair<std::string, std::string>> const& fields) {
  std::string line;
  for (auto const& [name, value] : fields) {
    bool const quote = value.find_first_of(",:\"") != std::string::npos;
    line += (line.empty() ? "" : ", ") + name + ": " + (quote ? json_quoted(value) : value);
  }
  return line;
}

std::string RunSettings::class_name(int64_t label) const {
  return label >= 0 && size_t(label) < class_names.size() ? class_names[size_t(label)] : std::to_string(label);
}

PngText RunSettings::common() const {
  PngText text = {{"Software", software},
                  {"drwkv.model", model},
                  {"drwkv.artifact", artifact},
                  {"drwkv.backend", backend},
                  {"drwkv.sampler", sampler},
                  {"drwkv.steps", std::to_string(steps)},
                  {"drwkv.eta", python_float(eta)},
                  {"drwkv.cfg_scale", python_float(cfg_scale)},
                  {"drwkv.clip_x0", python_bool(clip_x0)},
                  {"drwkv.seed", std::to_string(seed)},
                  {"drwkv.batch_size", std::to_string(batch_size)}};
  if (vae_decoder) text.emplace_back("drwkv.vae_decoder", *vae_decoder);
  if (vae_tile) text.emplace_back("drwkv.vae_tile", std::to_string(*vae_tile));
  if (vae_tile_overlap) text.emplace_back("drwkv.vae_tile_overlap", std::to_string(*vae_tile_overlap));
  return text;
}

std::string RunSettings::parameters(std::string const& classes) const {
  std::vector<std::pair<std::string, std::string>> fields = {{"Steps", std::to_string(steps)}, {"Sampler", sampler}};
  if (sampler == "ddim") fields.emplace_back("Eta", python_float(eta));
  fields.insert(fields.end(), {{"CFG scale", python_float(cfg_scale)},
                               {"Seed", std::to_string(seed)},
                               {"Size", std::to_string(width) + "x" + std::to_string(height)},
                               {"Model", model},
                               {"Backend", backend},
                               {"Artifact", artifact}});
  if (conditional) fields.emplace_back("Class", classes);
  fields.emplace_back("Clip x0", python_bool(clip_x0));
  return parameters_line(fields);
}

PngText RunSettings::grid_text(std::vector<int64_t> const& labels, uint64_t first_image, int64_t nrow) const {
  std::string names, numbers;
  for (int64_t label : labels) {
    names += (names.empty() ? "" : ",") + class_name(label);
    numbers += (numbers.empty() ? "" : ",") + std::to_string(label);
  }
  PngText text = common();
  text.insert(text.end(), {{"drwkv.classes", names},
                           {"drwkv.first_image", std::to_string(first_image)},
                           {"drwkv.num_images", std::to_string(labels.size())},
                           {"drwkv.nrow", std::to_string(nrow)}});
  if (conditional) text.emplace_back("drwkv.labels", numbers);
  text.emplace_back("parameters", parameters(names) + ", Images: " + std::to_string(labels.size()) +
                                      ", First image: " + std::to_string(first_image));
  return text;
}

PngText RunSettings::image_text(uint64_t index, int64_t label) const {
  std::string const name = class_name(label);
  PngText text = common();
  text.insert(text.end(), {{"drwkv.index", std::to_string(index)}, {"drwkv.class", name}});
  if (conditional) text.emplace_back("drwkv.label", std::to_string(label));
  text.emplace_back("parameters", parameters(name) + ", Image: " + std::to_string(index));
  return text;
}

std::string RunSettings::image_file_name(uint64_t index, int64_t label) const {
  std::string safe;
  for (uint32_t c : utf8::code_points(class_name(label)))
    safe += (c < 0x80 && (std::isalnum(int(c)) || c == '-' || c == '_')) ? char(c) : '_';
  char number[24];
  std::snprintf(number, sizeof number, "%04llu", (unsigned long long)index);
  return number + ("_" + safe) + ".png";
}

}  // namespace drwkv
