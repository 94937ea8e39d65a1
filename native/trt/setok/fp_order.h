// Helpers that pin the float rounding order the TypeScript reference defines
// (src/setok/reference.ts): a product is rounded before it is added, never fused into an FMA.
// Opaque() hides a value from the optimiser so it cannot contract `a * b + c`; it costs nothing.
// Thread safety: pure functions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace setokim::fp {

template <typename T>
inline __attribute__((always_inline)) T Opaque(T v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
#elif defined(__aarch64__) || defined(__arm__)
  asm("" : "+w"(v));
#endif
  return v;
}

// The reference's expDet: exp(x) for x <= 0 from double +, -, * only (range reduction by ln 2,
// Taylor polynomial of degree 13, exact power-of-two scaling), identical bits on every platform.
inline double ExpDet(double x) {
  if (!(x > -104.0)) return 0.0;
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 0.6931471803691238;
  constexpr double kLn2Lo = 1.9082149292705877e-10;
  constexpr double kInvFact[14] = {
      1.0,        1.0,         1.0 / 2,      1.0 / 6,       1.0 / 24,       1.0 / 120,       1.0 / 720,
      1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  const double n = std::floor(Opaque(x * kLog2e) + 0.5);
  const double r = (x - Opaque(n * kLn2Hi)) - Opaque(n * kLn2Lo);
  double p = kInvFact[13];
  for (int i = 12; i >= 0; --i) p = kInvFact[i] + Opaque(r * p);
  // p * 2^n with 2^n built from its bits (n >= -150 here, a normal double): exact, as ldexp, and
  // the reference's multiply by an exact power of two, without a libm call.
  const uint64_t e = static_cast<uint64_t>(static_cast<int64_t>(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

}  // namespace setokim::fp
