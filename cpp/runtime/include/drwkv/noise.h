// The sampling noise of drwkv/noise.py in C++, bit for bit: every standard normal a sampling run
// uses is a pure function of (seed, image, step, element), so a seed gives the same images here and
// in the Python runtime, and an image does not depend on the batch it is drawn in.
//
//     image    the image's global index in the run (0, 1, 2, ... over all batches)
//     step     0 for the initial x_T, i + 1 for the noise of sampler step i
//     element  the flat (C-order) index in the image's [C, H, W]
//
// Philox4x32-10 (Salmon et al. 2011; Random123's philox4x32, 10 rounds) gives four 32-bit words per
// counter:
//     key      = (seed mod 2^32, seed div 2^32)
//     counter  = (element div 4, step, image mod 2^32, image div 2^32)
//     elements 4 block + (0, 1) = box_muller(w0, w1),  4 block + (2, 3) = box_muller(w2, w3)
// Box-Muller on words (a, b), float64, rounded to float32:
//     u = (a + 1) / 2^32,  theta = 2 pi b / 2^32,  (z0, z1) = sqrt(-2 log u) (cos theta, sin theta)
// with log, cos and sin computed from +, -, *, / and sqrt only, in the same order as drwkv/noise.py
// (whose docstring gives the reductions and series), so that no math library's last bits enter.
#pragma once

#include <array>
#include <cstdint>

namespace drwkv {

// Philox4x32-10 of one counter (word 0 lowest) under a key.
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Two standard normals (r cos theta, r sin theta) from two words, in float64 before the rounding
// to float32 that standard_normal applies.
std::array<double, 2> box_muller(uint32_t a, uint32_t b);

// The noise of one image at one step: out[e] for elements e = 0 .. numel-1 (numel <= 2^34).
void standard_normal(uint64_t seed, uint64_t image, uint32_t step, int64_t numel, float* out);

}  // namespace drwkv
