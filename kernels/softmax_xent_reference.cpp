// CPU reference of softmax cross-entropy + accuracy (log-sum-exp with the row max subtracted).
#include <cmath>
#include <vector>

#include "kernels/softmax_xent.h"

namespace esper::kernels {

void softmax_xent_reference(const float* logits, const int32_t* labels, int32_t batch,
                            int32_t classes, float* loss, float* dlogits, int32_t* correct) {
    double total = 0.0;
    int32_t hits = 0;
    std::vector<double> e(static_cast<size_t>(classes));
    for (int32_t b = 0; b < batch; ++b) {
        const float* row = logits + static_cast<int64_t>(b) * classes;
        int32_t arg = 0;
        for (int32_t c = 1; c < classes; ++c)
            if (row[c] > row[arg]) arg = c;
        const double mx = row[arg];
        double sum = 0.0;
        for (int32_t c = 0; c < classes; ++c) {
            e[c] = std::exp(double(row[c]) - mx);
            sum += e[c];
        }
        const int32_t label = labels[b];
        total += std::log(sum) - (double(row[label]) - mx);
        if (arg == label) ++hits;
        float* drow = dlogits + static_cast<int64_t>(b) * classes;
        for (int32_t c = 0; c < classes; ++c)
            drow[c] = static_cast<float>((e[c] / sum - (c == label ? 1.0 : 0.0)) / batch);
    }
    *loss = static_cast<float>(total / batch);
    *correct = hits;
}

}  // namespace esper::kernels
