#include "setok/position_encoding.h"

#include <cmath>

namespace setokim {

std::vector<float> PositionEncodingTable(int rows, int cols, int dim) {
  const int ch = 2 * ((dim + 3) / 4);
  std::vector<double> inv_freq(ch / 2);
  for (int j = 0; j < ch / 2; ++j) inv_freq[j] = 1.0 / std::pow(10000.0, static_cast<double>(2 * j) / ch);
  std::vector<float> out(static_cast<size_t>(rows) * cols * dim, 0.0f);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      float* base = out.data() + (static_cast<size_t>(r) * cols + c) * dim;
      for (int j = 0; j < ch / 2; ++j) {
        const double a = r * inv_freq[j];
        const double b = c * inv_freq[j];
        if (2 * j < dim) base[2 * j] = static_cast<float>(std::sin(a));
        if (2 * j + 1 < dim) base[2 * j + 1] = static_cast<float>(std::cos(a));
        if (ch + 2 * j < dim) base[ch + 2 * j] = static_cast<float>(std::sin(b));
        if (ch + 2 * j + 1 < dim) base[ch + 2 * j + 1] = static_cast<float>(std::cos(b));
      }
    }
  }
  return out;
}

void AddPositionEncoding(float* features, int rows, int cols, int dim) {
  const std::vector<float> pe = PositionEncodingTable(rows, cols, dim);
  for (size_t i = 0; i < pe.size(); ++i) features[i] += pe[i];
}

}  // namespace setokim
