#include "json.h"

#include <cstdlib>
#include <stdexcept>

namespace drwkv::json {
namespace {

class Parser {
 public:
  explicit Parser(std::string const& text) : text_(text) {}

  Value document() {
    Value v = value();
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(char const* what) const {
    throw std::runtime_error(std::string("JSON: ") + what + " at byte " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' || text_[pos_] == '\t'))
      ++pos_;
  }
  bool consume(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!consume(c)) fail((std::string("expected '") + c + "'").c_str());
  }
  bool literal(char const* word) {
    std::string const w(word);
    if (text_.compare(pos_, w.size(), w) != 0) return false;
    pos_ += w.size();
    return true;
  }

  Value value() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    Value v;
    char const c = text_[pos_];
    if (c == '{') {
      v.type = Value::Type::kObject;
      ++pos_;
      if (consume('}')) return v;
      do {
        skip_space();
        std::string key = string();
        expect(':');
        v.object[std::move(key)] = value();
      } while (consume(','));
      expect('}');
    } else if (c == '[') {
      v.type = Value::Type::kArray;
      ++pos_;
      if (consume(']')) return v;
      do v.array.push_back(value());
      while (consume(','));
      expect(']');
    } else if (c == '"') {
      v.type = Value::Type::kString;
      v.string = string();
    } else if (literal("true")) {
      v.type = Value::Type::kBool;
      v.boolean = true;
    } else if (literal("false")) {
      v.type = Value::Type::kBool;
    } else if (literal("null")) {
      v.type = Value::Type::kNull;
    } else {
      char const* begin = text_.c_str() + pos_;
      char* end = nullptr;
      v.type = Value::Type::kNumber;
      v.number = std::strtod(begin, &end);
      if (end == begin) fail("unexpected character");
      pos_ += size_t(end - begin);
    }
    return v;
  }

  std::string string() {
    if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a string");
    ++pos_;
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("unterminated string");
      char const c = text_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unterminated string");
      switch (char const e = text_[pos_++]) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': append_utf8(out, code_point()); break;
        default: out += e;  // \" \\ \/
      }
    }
  }

  unsigned hex4() {
    if (pos_ + 4 > text_.size()) fail("short \\u escape");
    unsigned v = unsigned(std::strtoul(text_.substr(pos_, 4).c_str(), nullptr, 16));
    pos_ += 4;
    return v;
  }
  // After "\u": one code unit, or a surrogate pair (Python's json.dumps escapes non-ASCII).
  unsigned code_point() {
    unsigned const high = hex4();
    if (high >= 0xD800 && high < 0xDC00 && text_.compare(pos_, 2, "\\u") == 0) {
      pos_ += 2;
      unsigned const low = hex4();
      return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
    }
    return high;
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  std::string const& text_;
  size_t pos_ = 0;
};

}  // namespace

Value const* Value::find(std::string const& key) const {
  if (type != Type::kObject) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &it->second;
}

Value parse(std::string const& text) { return Parser(text).document(); }

}  // namespace drwkv::json
