// SeTok's 2-D sin/cos position encoding (docs/SETOK.md "Position encoding").
// Thread safety: pure functions.
#pragma once
#include <vector>

namespace setokim {

// The (rows*cols) x dim table, computed in double and rounded to float32 (as the reference does).
std::vector<float> PositionEncodingTable(int rows, int cols, int dim);

// features[i] += table[i] for a rows*cols x dim feature array.
void AddPositionEncoding(float* features, int rows, int cols, int dim);

}  // namespace setokim
