// The JSON reader of drwkv::runtime on sidecars as Python's json.dump writes them. Needs nothing
// but a compiler (the reader is plain C++), so it runs wherever the tests are configured.
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "check.h"
#include "json.h"

namespace {

bool throws(std::string const& text) {
  try {
    drwkv::json::parse(text);
  } catch (std::runtime_error const&) {
    return true;
  }
  return false;
}

}  // namespace

int main() {
  using drwkv::json::Value;
  // json.dumps(..., indent=2) with ensure_ascii: non-ASCII as \u escapes, a surrogate pair included.
  std::string const sidecar = R"({
  "format": "drwkv-tensorrt-engine",
  "config": {"model": "DRWKV-T/4", "image_size": 28, "in_channels": 1, "num_classes": 10,
             "learn_sigma": true, "class_names": ["T-shirt/top", "Caf\u00e9 \"au lait\"", "\ud83d\ude00"],
             "diffusion": {"schedule": "linear", "num_timesteps": 1000, "beta_start": 0.0001, "beta_end": 2e-2}},
  "tensorrt_version": "10.16.1.11", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
  "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 32}, "onnx": null, "negative": -1.5E+1
})";
  Value const doc = drwkv::json::parse(sidecar);
  CHECK(doc.type == Value::Type::kObject);
  CHECK(doc.find("format") != nullptr && doc.find("format")->string == "drwkv-tensorrt-engine");
  CHECK(doc.find("missing") == nullptr);
  Value const* config = doc.find("config");
  CHECK(config != nullptr && config->find("learn_sigma")->type == Value::Type::kBool && config->find("learn_sigma")->boolean);
  CHECK(config->find("image_size")->number == 28.0);
  Value const* names = config->find("class_names");
  CHECK(names != nullptr && names->array.size() == 3);
  CHECK(names->array[1].string == "Caf\xc3\xa9 \"au lait\"");
  CHECK(names->array[2].string == "\xf0\x9f\x98\x80");  // U+1F600 from its surrogate pair
  Value const* diffusion = config->find("diffusion");
  CHECK(diffusion->find("beta_start")->number == 1e-4 && diffusion->find("beta_end")->number == 0.02);
  CHECK(doc.find("onnx")->type == Value::Type::kNull);
  CHECK(doc.find("negative")->number == -15.0);
  CHECK(doc.find("profile")->find("max_batch")->number == 32.0);
  CHECK(drwkv::json::parse("[]").array.empty() && drwkv::json::parse(" {} ").object.empty());
  CHECK(drwkv::json::parse("false").type == Value::Type::kBool && !drwkv::json::parse("false").boolean);

  CHECK(throws(""));
  CHECK(throws("{\"a\": 1"));       // truncated
  CHECK(throws("{\"a\" 1}"));       // missing colon
  CHECK(throws("[1, 2] extra"));    // trailing characters
  CHECK(throws("\"unterminated"));
  CHECK(throws("{\"a\": nope}"));

  if (drwkv_test::failures() == 0) std::printf("sidecar JSON: all checks passed\n");
  return drwkv_test::failures() == 0 ? 0 : 1;
}
