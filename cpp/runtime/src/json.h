// A small JSON reader for the engine sidecar (model.plan.json): objects, arrays, strings,
// numbers, true/false/null. Internal to drwkv::runtime.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace drwkv::json {

struct Value {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value> object;

  // The member `key` of an object; nullptr when absent or when this is not an object.
  Value const* find(std::string const& key) const;
};

// std::runtime_error naming the byte offset on malformed input.
Value parse(std::string const& text);

}  // namespace drwkv::json
