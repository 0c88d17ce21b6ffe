// The model interface's shared helpers and the factory of the configured host (see model.h).
#include "kasmina/model/model.h"

#include "core/error.h"
#include "kasmina/model/mlp.h"
#include "kasmina/model/transformer.h"

namespace esper::kasmina {

int64_t Model::param_count() const {
    int64_t n = 0;
    for (const ParamRef& p : params()) n += p.value->numel();
    return n;
}

double Model::train_flops(int32_t /*samples*/, int32_t rows) const {
    return 6.0 * double(param_count()) * double(rows);
}

void Model::set_structure(std::span<const int64_t> s) {
    if (!s.empty())
        ESPER_THROW(kIntegrity, "checkpoint: a ", s.size(), "-value host structure for a ", kind(),
                    " host, which has none");
}

std::vector<int64_t> Model::seed_layer_widths() const {
    std::vector<int64_t> w;
    for (const SeedSite& s : seed_sites()) w.push_back(s.width);
    return w;
}

std::vector<int64_t> Model::seed_layer_inputs() const {
    std::vector<int64_t> w;
    for (const SeedSite& s : seed_sites()) w.push_back(s.input_width);
    return w;
}

// The one place that knows every host kind.
std::unique_ptr<Model> make_model(const ModelConfig& config, int64_t in_features, int64_t classes,
                                  uint64_t seed) {
    if (config.kind == ModelKind::kTransformer)
        return std::make_unique<TransformerModel>(config, seed);
    return std::make_unique<MlpModel>(config, in_features, classes, seed);
}

}  // namespace esper::kasmina
