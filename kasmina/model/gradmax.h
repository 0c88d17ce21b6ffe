// GradMax initialisation of new units (Evci et al., "GradMax: Growing Neural Networks using
// Gradient Information", ICLR 2022) for units whose output weights start at zero (mlp_units).
// With U = 0 the first gradient they get is ∂L/∂U = Σ_b δ_b·act(V·x_b)ᵀ; linearised around 0
// (act(z) ≈ act'(0)·z, the bias c starting at 0) its norm is ∝ ‖G·Vᵀ‖_F with G = Σ_b δ_b·x_bᵀ
// [out, in], so under a norm bound on each row the best rows of V are G's top right singular
// vectors. G has rank ≤ out (≤ classes − 1 into a softmax head, whose cross-entropy gradient
// rows sum to zero over the classes): at most that many of the k units can be placed this way.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace esper::kasmina {

struct GradmaxDirections {
    int64_t rows = 0;           // directions found (≤ max_rows, ≤ rank of G)
    std::vector<float> v;       // [rows, in]: unit-norm, orthogonal, by falling singular value
    std::vector<double> sigma;  // [rows]: G's singular values along them
};

// g: [out, in] row-major. Directions whose singular value is below 1e-6 of the largest are left
// out (an all-zero G gives none).
GradmaxDirections gradmax_directions(std::span<const float> g, int64_t out, int64_t in,
                                     int64_t max_rows);

}  // namespace esper::kasmina
