// The one assertion the C++ test programs share: report a failed condition and keep going, so that
// a run lists every failure; main() returns failures() == 0 ? 0 : 1.
#pragma once

#include <cstdio>

namespace drwkv_test {
inline int& failures() {
  static int count = 0;
  return count;
}
}  // namespace drwkv_test

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++drwkv_test::failures();                                                     \
    }                                                                               \
  } while (0)
