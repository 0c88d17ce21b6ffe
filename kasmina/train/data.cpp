// Data loading (see data.h). Readers are strict: every size is checked against the header and
// every mismatch names the file, so a truncated download is an error, not garbage training data.
#include "kasmina/train/data.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/error.h"

namespace esper::kasmina {

namespace {

constexpr const char* kFashionFix =
    "install the Debian package dataset-fashion-mnist (scripts/setup-deps.sh) or set data.path";

// Whole file through zlib (gzopen reads plain files transparently too).
std::vector<uint8_t> read_gz(const std::string& path, const char* fix) {
    if (!std::filesystem::exists(path)) ESPER_THROW(kInvalidInput, path, ": file not found; ", fix);
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) ESPER_THROW(kInvalidInput, path, ": cannot open: ", std::strerror(errno));
    std::vector<uint8_t> out;
    uint8_t buf[1 << 16];
    for (;;) {
        const int n = gzread(f, buf, sizeof(buf));
        if (n < 0) {
            int errnum = 0;
            std::string msg = gzerror(f, &errnum);
            gzclose(f);
            ESPER_THROW(kInvalidInput, path, ": corrupt gzip data: ", msg, "; ", fix);
        }
        if (n == 0) break;
        out.insert(out.end(), buf, buf + n);
    }
    gzclose(f);
    return out;
}

uint32_t be32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// Parses an IDX header; returns the dims and the payload offset.
std::vector<uint32_t> idx_header(const std::vector<uint8_t>& b, const std::string& path,
                                 int want_dims) {
    if (b.size() < 4) ESPER_THROW(kInvalidInput, path, ": not an IDX file (", b.size(), " bytes)");
    if (b[0] != 0 || b[1] != 0 || b[2] != 0x08)
        ESPER_THROW(kInvalidInput, path, ": not an unsigned-byte IDX file (bad magic)");
    const int dims = b[3];
    if (dims != want_dims)
        ESPER_THROW(kInvalidInput, path, ": IDX file has ", dims, " dimensions, expected ",
                    want_dims);
    if (b.size() < 4 + 4 * size_t(dims)) ESPER_THROW(kInvalidInput, path, ": truncated IDX header");
    std::vector<uint32_t> d(dims);
    size_t total = 1;
    for (int i = 0; i < dims; ++i) {
        d[i] = be32(b.data() + 4 + 4 * i);
        total *= d[i];
    }
    const size_t need = 4 + 4 * size_t(dims) + total;
    if (b.size() != need)
        ESPER_THROW(kInvalidInput, path, ": IDX payload is ", b.size(), " bytes, header says ",
                    need, " (truncated or corrupt file)");
    return d;
}

std::string join(const std::string& dir, const char* name) {
    return (std::filesystem::path(dir) / name).string();
}

// ---- .npy ----

struct NpyArray {
    std::string descr;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};

std::string npy_field(const std::string& header, const std::string& key, const std::string& path) {
    const size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) ESPER_THROW(kInvalidInput, path, ": .npy header lacks '", key, "'");
    size_t c = header.find(':', k);
    if (c == std::string::npos) ESPER_THROW(kInvalidInput, path, ": malformed .npy header");
    ++c;
    while (c < header.size() && header[c] == ' ') ++c;
    size_t e = c;
    if (c < header.size() && header[c] == '\'') {
        e = header.find('\'', c + 1);
        if (e == std::string::npos) ESPER_THROW(kInvalidInput, path, ": malformed .npy header");
        return header.substr(c + 1, e - c - 1);
    }
    if (c < header.size() && header[c] == '(') {
        e = header.find(')', c);
        if (e == std::string::npos) ESPER_THROW(kInvalidInput, path, ": malformed .npy header");
        return header.substr(c, e - c + 1);
    }
    while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
    return header.substr(c, e - c);
}

NpyArray read_npy(const std::string& path) {
    if (path.empty())
        ESPER_THROW(kInvalidInput, "data.npy: a file path is empty; set it in the config");
    std::ifstream f(path, std::ios::binary);
    if (!f) ESPER_THROW(kInvalidInput, path, ": cannot open .npy file (check data.npy paths)");
    std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0)
        ESPER_THROW(kInvalidInput, path, ": not a .npy file (bad magic); save it with numpy.save");
    const int major = b[6];
    size_t hlen = 0, hstart = 0;
    if (major == 1) {
        hlen = size_t(b[8]) | (size_t(b[9]) << 8);
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (b.size() < 12) ESPER_THROW(kInvalidInput, path, ": truncated .npy header");
        hlen = size_t(b[8]) | (size_t(b[9]) << 8) | (size_t(b[10]) << 16) | (size_t(b[11]) << 24);
        hstart = 12;
    } else {
        ESPER_THROW(kInvalidInput, path, ": unsupported .npy version ", major);
    }
    if (b.size() < hstart + hlen) ESPER_THROW(kInvalidInput, path, ": truncated .npy header");
    const std::string header(b.begin() + hstart, b.begin() + hstart + hlen);
    NpyArray a;
    a.descr = npy_field(header, "descr", path);
    const std::string fortran = npy_field(header, "fortran_order", path);
    if (fortran.find("True") != std::string::npos)
        ESPER_THROW(kInvalidInput, path, ": Fortran-order arrays are not supported (use C order)");
    const std::string shape = npy_field(header, "shape", path);
    std::string num;
    for (char ch : shape) {
        if (ch >= '0' && ch <= '9') {
            num += ch;
        } else if (!num.empty()) {
            a.shape.push_back(std::stoll(num));
            num.clear();
        } else if (ch != '(' && ch != ')' && ch != ',' && ch != ' ' && ch != 'L') {
            ESPER_THROW(kInvalidInput, path, ": malformed shape ", shape);
        }
    }
    if (!a.descr.empty() && a.descr[0] == '>')
        ESPER_THROW(kInvalidInput, path, ": big-endian dtype ", a.descr, " is not supported");
    a.bytes.assign(b.begin() + hstart + hlen, b.end());
    return a;
}

size_t npy_itemsize(const std::string& descr) {
    if (descr.size() < 3) return 0;
    return static_cast<size_t>(std::atoi(descr.c_str() + 2));
}

}  // namespace

// ---- IDX ----

Dataset read_idx_images(const std::string& path) {
    const std::vector<uint8_t> b = read_gz(path, kFashionFix);
    const std::vector<uint32_t> d = idx_header(b, path, 3);
    Dataset ds;
    ds.n = d[0];
    ds.features = int64_t(d[1]) * d[2];
    ds.x.resize(size_t(ds.n * ds.features));
    const uint8_t* p = b.data() + 16;
    for (size_t i = 0; i < ds.x.size(); ++i) ds.x[i] = float(p[i]) / 255.0f;
    return ds;
}

std::vector<int32_t> read_idx_labels(const std::string& path) {
    const std::vector<uint8_t> b = read_gz(path, kFashionFix);
    const std::vector<uint32_t> d = idx_header(b, path, 1);
    return std::vector<int32_t>(b.begin() + 8, b.begin() + 8 + d[0]);
}

DataSplits load_fashion_mnist(const std::string& dir) {
    if (!std::filesystem::is_directory(dir))
        ESPER_THROW(kInvalidInput, dir, ": Fashion-MNIST directory not found; ", kFashionFix);
    // Mean/std of the training pixels in [0, 1].
    constexpr float kMean = 0.2860f, kStd = 0.3530f;
    DataSplits s;
    const char* names[2][2] = {{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"},
                               {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}};
    for (int k = 0; k < 2; ++k) {
        Dataset& ds = k == 0 ? s.train : s.test;
        const std::string ipath = join(dir, names[k][0]), lpath = join(dir, names[k][1]);
        ds = read_idx_images(ipath);
        ds.y = read_idx_labels(lpath);
        if (int64_t(ds.y.size()) != ds.n)
            ESPER_THROW(kInvalidInput, lpath, ": ", ds.y.size(), " labels for ", ds.n,
                        " images in ", ipath);
        for (int32_t y : ds.y)
            if (y < 0 || y > 9) ESPER_THROW(kInvalidInput, lpath, ": label ", y, " outside 0..9");
        for (float& v : ds.x) v = (v - kMean) / kStd;
        ds.classes = 10;
    }
    s.description = "fashion_mnist (" + std::to_string(s.train.n) + " train, " +
                    std::to_string(s.test.n) + " test)";
    return s;
}

// ---- teacher ----

DataSplits make_teacher(const TeacherConfig& c, uint64_t seed) {
    ESPER_REQUIRE(c.features > 0 && c.classes > 1 && c.hidden > 0);
    Rng rng(mix_seed(seed, 0x7eac4e7));
    const int64_t F = c.features, H = c.hidden, C = c.classes;
    std::vector<float> w1(static_cast<size_t>(H * F)), b1(static_cast<size_t>(H)),
        w2(static_cast<size_t>(C * H)), b2(static_cast<size_t>(C));
    const float s1 = 1.0f / std::sqrt(float(F)), s2 = 1.0f / std::sqrt(float(H));
    for (auto& v : w1) v = rng.normal() * s1 * 2.0f;
    for (auto& v : b1) v = rng.normal() * 0.5f;
    for (auto& v : w2) v = rng.normal() * s2 * 3.0f;
    for (auto& v : b2) v = rng.normal() * 0.1f;
    auto make = [&](int64_t n, uint64_t stream) {
        Rng r(mix_seed(seed, stream));
        Dataset ds;
        ds.n = n;
        ds.features = F;
        ds.classes = C;
        ds.x.resize(size_t(n * F));
        ds.y.resize(size_t(n));
        std::vector<double> hid(static_cast<size_t>(H));
        for (int64_t i = 0; i < n; ++i) {
            float* x = ds.x.data() + i * F;
            for (int64_t f = 0; f < F; ++f) x[f] = r.normal();
            for (int64_t j = 0; j < H; ++j) {
                double z = b1[j];
                for (int64_t f = 0; f < F; ++f) z += double(w1[j * F + f]) * x[f];
                hid[j] = std::tanh(z);
            }
            int32_t best = 0;
            double best_v = -1e300;
            for (int64_t k = 0; k < C; ++k) {
                double z = b2[k];
                for (int64_t j = 0; j < H; ++j) z += double(w2[k * H + j]) * hid[j];
                if (c.noise > 0) z += c.noise * r.normal();
                if (z > best_v) {
                    best_v = z;
                    best = int32_t(k);
                }
            }
            ds.y[i] = best;
        }
        return ds;
    };
    DataSplits s;
    s.train = make(c.train_samples, 1);
    s.test = make(c.test_samples, 2);
    s.description = "teacher (" + std::to_string(s.train.n) + " train, " +
                    std::to_string(s.test.n) + " test, " + std::to_string(F) + " features, " +
                    std::to_string(C) + " classes)";
    return s;
}

// ---- .npy ----

Dataset load_npy(const std::string& features_path, const std::string& labels_path) {
    const NpyArray xf = read_npy(features_path);
    const NpyArray yl = read_npy(labels_path);
    if (xf.shape.size() != 2)
        ESPER_THROW(kInvalidInput, features_path, ": features must be 2-D [N, F], got ",
                    xf.shape.size(), " dimensions");
    if (xf.descr != "<f4" && xf.descr != "<f8")
        ESPER_THROW(kInvalidInput, features_path, ": features dtype ", xf.descr,
                    " unsupported (use float32)");
    Dataset ds;
    ds.n = xf.shape[0];
    ds.features = xf.shape[1];
    const size_t count = size_t(ds.n * ds.features), isz = npy_itemsize(xf.descr);
    if (xf.bytes.size() != count * isz)
        ESPER_THROW(kInvalidInput, features_path, ": payload is ", xf.bytes.size(),
                    " bytes, shape needs ", count * isz, " (truncated file?)");
    ds.x.resize(count);
    if (isz == 4) {
        std::memcpy(ds.x.data(), xf.bytes.data(), count * 4);
    } else {
        for (size_t i = 0; i < count; ++i) {
            double v;
            std::memcpy(&v, xf.bytes.data() + 8 * i, 8);
            ds.x[i] = float(v);
        }
    }
    for (float v : ds.x)
        if (!std::isfinite(v))
            ESPER_THROW(kInvalidInput, features_path, ": non-finite feature value");
    if (yl.shape.size() != 1 || yl.shape[0] != ds.n)
        ESPER_THROW(kInvalidInput, labels_path, ": labels must be 1-D with ", ds.n,
                    " entries (one per feature row)");
    const std::string& d = yl.descr;
    const bool is_int = d.size() >= 3 && (d[1] == 'i' || d[1] == 'u');
    const size_t lsz = npy_itemsize(d);
    if (!is_int || (lsz != 1 && lsz != 2 && lsz != 4 && lsz != 8))
        ESPER_THROW(kInvalidInput, labels_path, ": labels dtype ", d,
                    " unsupported (use an integer type)");
    if (yl.bytes.size() != size_t(ds.n) * lsz)
        ESPER_THROW(kInvalidInput, labels_path, ": payload is ", yl.bytes.size(),
                    " bytes, shape needs ", size_t(ds.n) * lsz, " (truncated file?)");
    ds.y.resize(size_t(ds.n));
    int64_t max_label = -1;
    for (int64_t i = 0; i < ds.n; ++i) {
        int64_t v = 0;
        const uint8_t* p = yl.bytes.data() + size_t(i) * lsz;
        if (d[1] == 'u') {
            uint64_t u = 0;
            std::memcpy(&u, p, lsz);
            v = int64_t(u);
        } else if (lsz == 1) {
            v = int8_t(p[0]);
        } else if (lsz == 2) {
            int16_t t;
            std::memcpy(&t, p, 2);
            v = t;
        } else if (lsz == 4) {
            int32_t t;
            std::memcpy(&t, p, 4);
            v = t;
        } else {
            std::memcpy(&v, p, 8);
        }
        if (v < 0 || v > 1000000)
            ESPER_THROW(kInvalidInput, labels_path, ": label ", v, " at row ", i, " out of range");
        ds.y[i] = int32_t(v);
        max_label = std::max(max_label, v);
    }
    ds.classes = max_label + 1;
    return ds;
}

DataSplits load_data(const DataConfig& c, uint64_t seed) {
    if (c.dataset == "fashion_mnist") return load_fashion_mnist(c.path);
    if (c.dataset == "teacher") return make_teacher(c.teacher, seed);
    if (c.dataset == "npy") {
        DataSplits s;
        s.train = load_npy(c.npy.train_features, c.npy.train_labels);
        s.test = load_npy(c.npy.test_features, c.npy.test_labels);
        if (s.test.features != s.train.features)
            ESPER_THROW(kInvalidInput, c.npy.test_features, ": ", s.test.features,
                        " features, training set has ", s.train.features);
        s.train.classes = s.test.classes = std::max(s.train.classes, s.test.classes);
        s.description =
            "npy (" + std::to_string(s.train.n) + " train, " + std::to_string(s.test.n) + " test)";
        return s;
    }
    ESPER_THROW(kInvalidInput, "data.dataset: unknown dataset '", c.dataset,
                "' (fashion_mnist, teacher, npy)");
}

// ---- sampling ----

Sampler::Sampler(int64_t n, int64_t batch_size, uint64_t seed, int rank, int world)
    : n_(n), batch_size_(batch_size), seed_(seed), rank_(rank), world_(world) {
    ESPER_REQUIRE(batch_size > 0 && world > 0 && rank >= 0 && rank < world);
    const int64_t shard = (n - rank + world - 1) / world;
    batches_per_epoch_ = shard / batch_size;
    batch_.resize(size_t(batch_size));
}

const std::vector<int64_t>& Sampler::batch(int64_t epoch, int64_t b) {
    ESPER_REQUIRE(b >= 0 && b < batches_per_epoch_, "batch ", b, " of ", batches_per_epoch_);
    if (epoch != cached_epoch_) {
        std::vector<int64_t> perm(static_cast<size_t>(n_));
        for (int64_t i = 0; i < n_; ++i) perm[i] = i;
        Rng rng(mix_seed(seed_, uint64_t(epoch) + 0x5a5a));
        for (int64_t i = n_ - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(uint64_t(i + 1))]);
        order_.clear();
        for (int64_t i = rank_; i < n_; i += world_) order_.push_back(perm[i]);
        cached_epoch_ = epoch;
    }
    std::copy(order_.begin() + b * batch_size_, order_.begin() + (b + 1) * batch_size_,
              batch_.begin());
    return batch_;
}

void gather_batch(const Dataset& ds, const std::vector<int64_t>& idx, float* x, int32_t* y) {
    const int64_t F = ds.features;
    for (size_t r = 0; r < idx.size(); ++r) {
        std::memcpy(x + int64_t(r) * F, ds.x.data() + idx[r] * F, size_t(F) * sizeof(float));
        y[r] = ds.y[size_t(idx[r])];
    }
}

}  // namespace esper::kasmina
