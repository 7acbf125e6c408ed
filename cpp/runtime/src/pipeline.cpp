// drwkv/pipeline.py in C++ (see drwkv/pipeline.h); the messages are the Python library's.
#include "drwkv/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>

#include "drwkv/settings.h"

namespace drwkv {
namespace {

char const* const kSamplers[] = {"ddpm", "ddim", "dpm++2m"};

// An integer literal's value as Python prints it ("-0" is "0", "007" is "7"); none for other text.
std::optional<std::string> python_int(std::string const& text) {
  size_t const sign = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
  std::string digits = text.substr(sign);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
  return (text[0] == '-' && digits != "0" ? "-" : "") + digits;
}

// The value of a whole number in [0, 2^64) from Python's text of it; none outside.
std::optional<uint64_t> to_uint64(std::string const& number) {
  uint64_t value = 0;
  auto const [end, error] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (error != std::errc() || end != number.data() + number.size()) return std::nullopt;
  return value;
}

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", bytes / double(1ull << 30));
  return text;
}

// Bytes of memory this process can still take: MemAvailable (Linux), else the physical memory.
double available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    double kib = 0;
    if (key == "MemAvailable:" && meminfo >> kib) return kib * 1024;
    meminfo.ignore(1 << 20, '\n');
  }
  return double(sysconf(_SC_PAGE_SIZE)) * double(sysconf(_SC_PHYS_PAGES));
}

void check_memory(double needed, std::string const& what) {
  double const available = available_memory();
  if (needed > available)
    throw std::invalid_argument(what + " need about " + gib(needed) + " GiB, more than the " + gib(available) +
                                " GiB of memory available");
}

std::string lower(std::string text) {
  for (char& c : text) c = char(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::string strip(std::string const& text) {
  size_t const begin = text.find_first_not_of(" \t\n\r\f\v");
  return begin == std::string::npos ? "" : text.substr(begin, text.find_last_not_of(" \t\n\r\f\v") - begin + 1);
}

}  // namespace

void check_settings(RunOptions const& run) {
  for (auto const& [name, value] : {std::pair{"num_images", run.num_images}, std::pair{"steps", run.steps},
                                    std::pair{"batch_size", run.batch_size}})
    if (value <= 0)
      throw std::invalid_argument(std::string(name) + " must be a positive integer, got " + std::to_string(value));
  if (std::find(std::begin(kSamplers), std::end(kSamplers), run.sampler) == std::end(kSamplers))
    throw std::invalid_argument("unknown sampler " + python_repr(run.sampler) + "; choose one of ddpm, ddim, dpm++2m");
  // first_image + num_images <= 2^64, without leaving uint64
  if (uint64_t(run.num_images) - 1 > ~uint64_t(0) - run.first_image)
    throw std::invalid_argument("first_image " + std::to_string(run.first_image) + " + num_images " +
                                std::to_string(run.num_images) + " passes the last image number 2^64 - 1");
  if (run.eta != 0.0 && run.sampler != "ddim")
    throw std::invalid_argument("eta applies to the ddim sampler only (the sampler is " + run.sampler + ")");
  if (!(run.eta >= 0.0 && run.eta <= 1.0))  // also refuses NaN
    throw std::invalid_argument("eta must be between 0 and 1, got " + python_float(run.eta));
  if (run.cfg_scale && !(*run.cfg_scale >= 0.0 && std::isfinite(*run.cfg_scale)))
    throw std::invalid_argument("cfg_scale must be a finite number >= 0, got " + python_float(*run.cfg_scale));
}

uint64_t parse_seed(std::string const& text) {
  std::optional<std::string> const number = python_int(text);
  std::optional<uint64_t> const seed = number ? to_uint64(*number) : std::nullopt;
  if (!seed)
    throw std::invalid_argument("seed must be an integer in [0, 2^64), got " + number.value_or(python_repr(text)));
  return *seed;
}

uint64_t parse_first_image(std::string const& text, int64_t num_images) {
  std::optional<std::string> const number = python_int(text);
  if (!number || (*number)[0] == '-')
    throw std::invalid_argument("first_image must be an integer >= 0, got " + number.value_or(python_repr(text)));
  std::optional<uint64_t> const first = to_uint64(*number);
  if (!first)  // 2^64 or more: past the last image number whatever num_images is
    throw std::invalid_argument("first_image " + *number + " + num_images " + std::to_string(num_images) +
                                " passes the last image number 2^64 - 1");
  return *first;
}

std::vector<int64_t> parse_classes(std::vector<std::string> const& specs, ModelConfig const& config) {
  int64_t const num_classes = config.num_classes;
  if (num_classes == 0) {
    if (!specs.empty()) throw std::invalid_argument("an unconditional model (num_classes 0) takes no --class");
    return {0};  // the null label, which its graph ignores
  }
  std::vector<int64_t> out;
  if (specs.empty()) {
    for (int64_t i = 0; i < num_classes; ++i) out.push_back(i);
    return out;
  }
  std::map<std::string, int64_t> lookup;  // names match whatever their case (ASCII letters)
  for (size_t i = 0; i < config.class_names.size(); ++i) lookup[lower(config.class_names[i])] = int64_t(i);
  for (std::string const& spec : specs) {
    for (size_t begin = 0; begin <= spec.size();) {
      size_t const comma = std::min(spec.find(',', begin), spec.size());
      std::string const token = strip(spec.substr(begin, comma - begin));
      begin = comma + 1;
      if (token.empty()) continue;
      if (auto const name = lookup.find(lower(token)); name != lookup.end()) {
        out.push_back(name->second);
        continue;
      }
      std::optional<std::string> const number = token[0] == '+' ? std::nullopt : python_int(token);
      if (number) {
        int64_t index = -1;
        std::from_chars(number->data(), number->data() + number->size(), index);  // stays -1 when too large
        if (index < 0 || index >= num_classes)
          throw std::invalid_argument("class index " + *number + " out of range 0.." + std::to_string(num_classes - 1));
        out.push_back(index);
        continue;
      }
      std::string known;
      for (std::string const& name : config.class_names) known += (known.empty() ? "" : ", ") + name;
      if (known.empty()) known = "indices 0.." + std::to_string(num_classes - 1) + " (the model has no class names)";
      throw std::invalid_argument("unknown class " + python_repr(token) + "; known: " + known);
    }
  }
  if (out.empty()) throw std::invalid_argument("--class names no class");
  return out;
}

double guidance_scale(std::optional<double> cfg_scale, ModelConfig const& config) {
  if (config.num_classes == 0) {
    if (cfg_scale && *cfg_scale != 1.0)
      throw std::invalid_argument("an unconditional model (num_classes 0) takes no guidance; drop --cfg-scale " +
                                  python_float(*cfg_scale));
    return 1.0;
  }
  return cfg_scale.value_or(1.5);
}

Pipeline::Pipeline(std::string path, ModelConfig config, Denoise denoise, std::optional<PipelineDecoder> decoder,
                   std::optional<int64_t> vae_tile, std::optional<int64_t> vae_tile_overlap)
    : path_(std::move(path)), config_(std::move(config)), denoise_(std::move(denoise)), decoder_(std::move(decoder)) {
  if (!latent() && (decoder_ || vae_tile || vae_tile_overlap))
    throw std::invalid_argument(path_ + " is a pixel-space model: it takes no VAE decoder or tiles");
  if (latent() && !decoder_) throw std::invalid_argument(path_ + " is a latent model: it needs its VAE decoder");
  if (decoder_) {  // checked before any sampling, as decoding will use them
    int64_t const largest = decoder_->max_tile > 0 ? decoder_->max_tile : kAutoTile;
    tile_ = vae_tile.value_or(std::min(kAutoTile, largest));
    overlap_ = vae_tile_overlap.value_or(tile_ / 4);
    check_tile(tile_, overlap_);
    if (decoder_->max_tile > 0 && tile_ > decoder_->max_tile)
      throw std::invalid_argument(decoder_->path + ": VAE tile " + std::to_string(tile_) +
                                  " exceeds the decoder's largest tile " + std::to_string(decoder_->max_tile));
  }
}

void Pipeline::check_memory(int64_t num_images, int64_t batch_size, bool guided) const {
  // The uint8 images of the whole run (the batches', then their concatenation), and a batch's
  // float32 arrays: the sampler's state, the model output of the doubled batch under guidance, the
  // decoded images. The rule of drwkv.Pipeline.check_memory, in doubles (the counts can pass 2^63).
  int64_t const side = config_.image_size * (latent() ? config_.latent_downsample : 1), size = config_.image_size;
  double const image = double(side) * double(side) * config_.image_channels;
  double const per_image = double(config_.in_channels) * double(size * size) * 4 * (2 + 2 * (1 + guided) * 2) + image * 4;
  drwkv::check_memory(2 * double(num_images) * image,
                      std::to_string(num_images) + " images of " + std::to_string(side) + "x" + std::to_string(side));
  drwkv::check_memory(double(batch_size) * per_image, "the arrays of a batch of " + std::to_string(batch_size) + " at " +
                                                          std::to_string(size) + "x" + std::to_string(size));
}

RunResult Pipeline::operator()(RunOptions const& run) const {
  using Clock = std::chrono::steady_clock;
  check_settings(run);
  std::vector<int64_t> const classes = parse_classes(run.classes, config_);
  RunResult result;
  result.cfg_scale = guidance_scale(run.cfg_scale, config_);
  result.clip_x0 = run.clip_x0.value_or(!latent());
  if (run.steps > config_.schedule.num_timesteps)
    throw std::invalid_argument("steps " + std::to_string(run.steps) + " exceeds the model's " +
                                std::to_string(config_.schedule.num_timesteps) + " diffusion timesteps");
  int64_t const batch_size = std::min(run.batch_size, run.num_images);
  check_memory(run.num_images, batch_size, result.cfg_scale != 1.0);
  std::unique_ptr<Sampler> const sampler =
      make_sampler(run.sampler, config_.schedule, int(run.steps), run.eta, result.clip_x0);

  // image i has class i mod len(classes), counted from image number first_image
  uint64_t const offset = run.first_image % classes.size();
  for (int64_t i = 0; i < run.num_images; ++i) result.labels.push_back(classes[(offset + uint64_t(i)) % classes.size()]);

  int64_t const f = latent() ? config_.latent_downsample : 1, side = config_.image_size * f, C = config_.image_channels;
  size_t const latent_size = size_t(config_.in_channels) * size_t(config_.image_size * config_.image_size);
  size_t const image_size = size_t(C * side * side);
  result.images = {run.num_images, side, side, C, {}};
  result.images.pixels.reserve(size_t(run.num_images) * image_size);
  result.steps = sampler->steps();
  result.batches = (run.num_images + batch_size - 1) / batch_size;
  int64_t const total = result.batches * result.steps;
  int64_t done = 0;
  auto const after_step = [&] {
    ++done;
    if (run.progress) run.progress(done, total);
  };
  for (int64_t start = 0; start < run.num_images; start += batch_size) {
    int64_t const b = std::min(batch_size, run.num_images - start);
    std::vector<int64_t> const labels(result.labels.begin() + start, result.labels.begin() + start + b);
    auto const t0 = Clock::now();
    std::vector<float> x = sample(denoise_, config_.denoiser_shape(), *sampler, labels, result.cfg_scale, run.seed,
                                  run.first_image + uint64_t(start), after_step);
    auto const t1 = Clock::now();
    if (decoder_) {
      std::vector<float> images(size_t(b) * image_size);
      int64_t const chunk = decoder_->max_batch > 0 ? decoder_->max_batch : b;
      for (int64_t at = 0; at < b; at += chunk)
        result.tiles += decode_tiled(decoder_->decode, std::min(chunk, b - at), config_.in_channels, config_.image_size,
                                     config_.image_size, C, f, tile_, overlap_, x.data() + size_t(at) * latent_size,
                                     images.data() + size_t(at) * image_size);
      x.swap(images);
    }
    for (int64_t i = 0; i < b; ++i) {
      std::vector<uint8_t> const hwc = image_to_uint8(x.data() + size_t(i) * image_size, int(C), int(side), int(side));
      result.images.pixels.insert(result.images.pixels.end(), hwc.begin(), hwc.end());
    }
    result.sample_s += std::chrono::duration<double>(t1 - t0).count();
    result.decode_s += std::chrono::duration<double>(Clock::now() - t1).count();
  }
  return result;
}

}  // namespace drwkv
