// The C++ runtime gives the same bits on every machine: fixed outputs of the noise, the schedule
// tables, the samplers in the sampling loop, tiled decoding and PNG encoding, as hex of their bits,
// against the values the x86-64 build computes. The same program passes on aarch64 (under qemu,
// scripts/build_aarch64.sh): a seed gives the same images there. Inputs are made with exact
// arithmetic only, and this file is compiled without fused multiply-adds, like the runtime.
// Usage: test_runtime_bits [--print]   (--print writes the table below from this machine's values)
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "drwkv/noise.h"
#include "drwkv/png.h"
#include "drwkv/sample.h"
#include "drwkv/samplers.h"
#include "drwkv/tiling.h"

namespace {

// What the x86-64 build computes (test_runtime_bits --print).
std::map<std::string, std::string> const kGolden = {
  {"box_muller",
   "401aa4499161cd47 0000000000000000 0000000000000000 8000000000000000 "
   "c00dccaac85dc7e2 c00b4c7be5f5ec2d"},
  {"noise 0 0 0",
   "3f7dbb33 bf6cb6b0 bf1e1b9f bef6d1b2 be1d5357 3e392a6d 3f54ec98 3e4a2da3"},
  {"noise 18446744073709551615 8589934593 1000",
   "bf55ff04 bfb25f08 bf1d6bc3 3f30f8c7"},
  {"noise 20240229 5 3",
   "3fc2c07c bf5f11a7 b9be3d49 be874f59 bf8f0ded bfaf4131 3e4c5759"},
  {"png",
   "133 values, fnv1a 2396d70f4dc51317"},
  {"sample ddim eta 0 cfg 1",
   "36 values, fnv1a 3508ff36140a19d2"},
  {"sample ddim eta 0.5 cfg 2.5",
   "36 values, fnv1a da48856e9a7af6b2"},
  {"sample ddpm eta 0 cfg 1",
   "36 values, fnv1a 77db7cc8d763ff0b"},
  {"sample ddpm eta 0 cfg 2.5",
   "36 values, fnv1a 13036392af835477"},
  {"sample dpm++2m eta 0 cfg 1",
   "36 values, fnv1a eef1cf2e7217b6e9"},
  {"sample dpm++2m eta 0 cfg 4",
   "36 values, fnv1a 0b957340468a9136"},
  {"schedule alphas_cumprod",
   "3fefff2e48e8a71e 3febf492754594be 3fe3190ed2f036cb 3fd4645980f1831c "
   "3fc101b6d728c1cf 3fa624df82656718 3f867ee66b1c4116 3f61d1e91bcf4461 "
   "3f36008f166f7569 3f0528cc8c61621c"},
  {"schedule posterior_log_variance_clipped",
   "c0226c0c5de18f3e c0226c0c5de18f3e c002798a49507457 bff49bb70fdd348f "
   "bfe8fb01d896013c bfdf7f8a70367ff8 bfd4dfc5d04d750b bfcd623e6483d8f5 "
   "bfc5b161cf736995 bfc06e692d57b0d2"},
  {"schedule posterior_mean_coef1",
   "3ff0000000000000 3feff9ed93e55313 3fe78105154fb973 3fe0e94df8ad0ab6 "
   "3fd849ed41155f94 3fd07222744f4dc8 3fc4146478eaca4f 3fb590530b088c94 "
   "3fa433714e1ec2e4 3f9081fd94db074c"},
  {"schedule posterior_mean_coef2",
   "0000000000000000 3f483b89033c572b 3fd09535145e5a70 3fdbabcf3cace017 "
   "3fe03cc1ac4f5711 3fe08c1ae714f79d 3fdf336bc0e3a1b1 3fdc3abdd00b47be "
   "3fd918b981280e83 3fd62ee97427ec54"},
  {"tiling images",
   "1232 values, fnv1a b3d91c3de56d8f0f"},
  {"tiling weights",
   "30 values, fnv1a 8373929624661495"},
};

// The values' bits in hex, or for more than 16 values their count and FNV-1a hash.
template <class Float, class Bits>
std::string hex(std::vector<Float> const& values) {
  static_assert(sizeof(Float) == sizeof(Bits));
  std::string out;
  uint64_t hash = 0xcbf29ce484222325u;
  for (Float v : values) {
    Bits bits;
    std::memcpy(&bits, &v, sizeof bits);
    char word[24];
    std::snprintf(word, sizeof word, "%s%0*llx", out.empty() ? "" : " ", int(2 * sizeof bits),
                  static_cast<unsigned long long>(bits));
    out += word;
    for (size_t i = 0; i < sizeof bits; ++i) hash = (hash ^ ((bits >> (8 * i)) & 0xff)) * 0x100000001b3u;
  }
  if (values.size() <= 16) return out;
  char digest[64];
  std::snprintf(digest, sizeof digest, "%zu values, fnv1a %016llx", values.size(), static_cast<unsigned long long>(hash));
  return digest;
}
std::string hex(std::vector<float> const& values) { return hex<float, uint32_t>(values); }
std::string hex(std::vector<double> const& values) { return hex<double, uint64_t>(values); }
std::string hex(std::vector<uint8_t> const& bytes) { return hex<uint8_t, uint8_t>(bytes); }

// Every value, by name.
std::map<std::string, std::string> compute() {
  std::map<std::string, std::string> got;

  // The noise: standard normals for a few (seed, image, step), the float64 Box-Muller values before
  // their rounding to float32 too (words at the ends of the range and a quarter turn).
  struct Draw {
    uint64_t seed, image;
    uint32_t step;
    int64_t n;
  };
  for (Draw const d : {Draw{0, 0, 0, 8}, {20240229, 5, 3, 7}, {~uint64_t(0), (uint64_t(1) << 33) + 1, 1000, 4}}) {
    std::vector<float> z(size_t(d.n));
    drwkv::standard_normal(d.seed, d.image, d.step, d.n, z.data());
    got["noise " + std::to_string(d.seed) + " " + std::to_string(d.image) + " " + std::to_string(d.step)] = hex(z);
  }
  std::vector<double> bm;
  for (auto [a, b] : {std::pair<uint32_t, uint32_t>{0, 0}, {0xffffffffu, 0x40000000u}, {12345, 0x9e3779b9u}}) {
    std::array<double, 2> const z = drwkv::box_muller(a, b);
    bm.push_back(z[0]), bm.push_back(z[1]);
  }
  got["box_muller"] = hex(bm);

  // The respaced schedule's float64 tables (logs and square roots of the math library among them).
  drwkv::ScheduleConfig const schedule;
  drwkv::Process const p = drwkv::Process::respaced(schedule, 10);
  got["schedule alphas_cumprod"] = hex(p.alphas_cumprod);
  got["schedule posterior_log_variance_clipped"] = hex(p.posterior_log_variance_clipped);
  got["schedule posterior_mean_coef1"] = hex(p.posterior_mean_coef1);
  got["schedule posterior_mean_coef2"] = hex(p.posterior_mean_coef2);

  // The sampling loop with each sampler, on a toy model of exact float32 operations: eps from x, t
  // and the label, and with learned variance v in [-1, 1]; guided and unguided.
  drwkv::DenoiserShape const model{2, 3, 4, 3, 2};
  auto denoise = [&](int64_t n, float const* x, float const* t, int64_t const* y, float* out) {
    int64_t const plane = 9;
    for (int64_t b = 0; b < n; ++b)
      for (int64_t c = 0; c < model.out_channels; ++c)
        for (int64_t i = 0; i < plane; ++i) {
          float const xi = x[(b * model.channels + c % model.channels) * plane + i];
          out[(b * model.out_channels + c) * plane + i] =
              c < model.channels ? xi * 0.5f - t[b] * 0.0009765625f + float(y[b]) * 0.125f + float(i) * 0.0625f
                                 : xi * 0.25f - 0.5f;
        }
  };
  struct Run {
    char const* sampler;
    double eta;
    float cfg_scale;
  };
  for (Run const r : {Run{"ddpm", 0.0, 1.0f}, {"ddpm", 0.0, 2.5f}, {"ddim", 0.0, 1.0f}, {"ddim", 0.5, 2.5f},
                      {"dpm++2m", 0.0, 1.0f}, {"dpm++2m", 0.0, 4.0f}}) {
    std::unique_ptr<drwkv::Sampler> const sampler = drwkv::make_sampler(r.sampler, schedule, 6, r.eta);
    std::vector<float> const images = drwkv::sample(denoise, model, *sampler, {1, 2}, r.cfg_scale, 7, 3);
    // Finite, and not all alike: the run does what a sampling run does.
    CHECK(std::all_of(images.begin(), images.end(), [](float v) { return std::isfinite(v); }));
    CHECK(*std::max_element(images.begin(), images.end()) > *std::min_element(images.begin(), images.end()));
    char name[64];
    std::snprintf(name, sizeof name, "sample %s eta %g cfg %g", r.sampler, r.eta, double(r.cfg_scale));
    got[name] = hex(images);
  }

  // Tiled decoding, with a decoder whose output depends on where the tile lies, so that the
  // overlapping tiles disagree and the blend weights show in every overlap.
  std::vector<int64_t> const starts = drwkv::tile_starts(11, 5, 2);
  std::vector<float> weights;
  for (std::vector<float> const& w : drwkv::axis_weights(starts, 5, 2)) weights.insert(weights.end(), w.begin(), w.end());
  got["tiling weights"] = hex(weights);
  int64_t const h = 11, w = 7, f = 2;
  std::vector<float> latents(size_t(2 * 3 * h * w));
  for (size_t i = 0; i < latents.size(); ++i) latents[i] = float(int(i * 37 % 29) - 14) * 0.0625f;
  int64_t calls = 0;
  auto decode = [&](int64_t batch, int64_t th, int64_t tw, float const* in, float* out) {
    float const offset = float(++calls) * 0.25f;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t c = 0; c < 2; ++c)
        for (int64_t y = 0; y < th * f; ++y)
          for (int64_t x = 0; x < tw * f; ++x)
            out[((b * 2 + c) * th * f + y) * tw * f + x] =
                in[((b * 3 + c) * th + y / f) * tw + x / f] * 1.5f + in[((b * 3 + 2) * th + y / f) * tw + x / f] + offset;
  };
  std::vector<float> images(size_t(2 * 2 * h * f * w * f));
  drwkv::decode_tiled(decode, 2, 3, h, w, 2, f, 5, 2, latents.data(), images.data());
  got["tiling images"] = hex(images);

  // A PNG file of an image [C, H, W] with values past [-1, 1] (clamped) and between the 8-bit steps.
  int const c = 3, ph = 5, pw = 4;
  std::vector<float> chw(size_t(c * ph * pw));
  for (size_t i = 0; i < chw.size(); ++i) chw[i] = float(int(i * 7 % 19) - 9) * 0.1171875f;
  got["png"] = hex(drwkv::encode_png(pw, ph, c, drwkv::image_to_uint8(chw.data(), c, ph, pw).data()));
  return got;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> const got = compute();
  if (argc > 1 && std::strcmp(argv[1], "--print") == 0) {
    for (auto const& [name, value] : got) {
      std::printf("  {\"%s\",\n", name.c_str());
      for (size_t at = 0; at < value.size();) {  // whole words, about 72 characters a line
        size_t end = value.find(' ', std::min(at + 64, value.size()));
        end = end == std::string::npos ? value.size() : end + 1;
        std::printf("   \"%s\"%s\n", value.substr(at, end - at).c_str(), end < value.size() ? "" : "},");
        at = end;
      }
    }
    return 0;
  }
  CHECK(got.size() == kGolden.size());
  for (auto const& [name, value] : got) {
    auto const want = kGolden.find(name);
    bool const same = want != kGolden.end() && want->second == value;
    if (!same)
      std::fprintf(stderr, "%s:\n  got  %s\n  want %s\n", name.c_str(), value.c_str(),
                   want == kGolden.end() ? "(none)" : want->second.c_str());
    CHECK(same);
  }
  if (drwkv_test::failures() == 0) std::printf("runtime_bits: %zu fixed outputs, all bit for bit\n", got.size());
  return drwkv_test::failures() == 0 ? 0 : 1;
}
