// UTF-8 to code points, for the text that must come out as Python writes it (PNG text chunks, the
// JSON-quoted values of the parameters line). Internal to drwkv::samplers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace drwkv::utf8 {

// The code points of UTF-8 `text`; a byte that starts no valid sequence stands for itself (as
// Latin-1), so that every input has an answer.
inline std::vector<uint32_t> code_points(std::string const& text) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < text.size();) {
    uint32_t const lead = uint8_t(text[i]);
    size_t const length = lead < 0x80 ? 1 : lead >= 0xC2 && lead < 0xE0 ? 2 : lead >= 0xE0 && lead < 0xF0 ? 3
                        : lead >= 0xF0 && lead < 0xF5 ? 4 : 0;  // 0: not a lead byte
    uint32_t cp = length == 1 ? lead : lead & (0x7Fu >> length);
    bool valid = length > 0 && i + length <= text.size();
    for (size_t k = 1; valid && k < length; ++k) {
      uint32_t const next = uint8_t(text[i + k]);
      valid = (next & 0xC0) == 0x80;
      cp = (cp << 6) | (next & 0x3F);
    }
    // overlong forms, surrogates and code points past U+10FFFF are not UTF-8
    valid = valid && !(length == 3 && (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000))) &&
            !(length == 4 && (cp < 0x10000 || cp > 0x10FFFF));
    out.push_back(valid ? cp : lead);
    i += valid ? length : 1;
  }
  return out;
}

}  // namespace drwkv::utf8
