// cuDNN fused attention through the backend graph API, loaded with dlopen (see attention_cudnn.h).
#include "kernels/attention_cudnn.h"

#include <cudnn_graph.h>
#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <vector>

// OPERATIONGRAPH_HANDLE and EXECUTION_PLAN_HANDLE are marked deprecated in cuDNN 9.19 but remain
// the way to bind a graph to a device in the backend API the node's cuDNN exposes.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace esper::kernels::detail {
namespace {

using Desc = cudnnBackendDescriptor_t;

// The entry points used, resolved from the run-time library.
struct Api {
    void* lib = nullptr;
    std::string why;  // empty when loaded
    size_t version = 0;
    size_t (*get_version)() = nullptr;
    cudnnStatus_t (*create)(cudnnHandle_t*) = nullptr;
    cudnnStatus_t (*set_stream)(cudnnHandle_t, cudaStream_t) = nullptr;
    const char* (*error_string)(cudnnStatus_t) = nullptr;
    void (*last_error)(char*, size_t) = nullptr;
    cudnnStatus_t (*create_desc)(cudnnBackendDescriptorType_t, Desc*) = nullptr;
    cudnnStatus_t (*destroy_desc)(Desc) = nullptr;
    cudnnStatus_t (*finalize)(Desc) = nullptr;
    cudnnStatus_t (*set_attr)(Desc, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                              int64_t, const void*) = nullptr;
    cudnnStatus_t (*get_attr)(Desc, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                              int64_t, int64_t*, void*) = nullptr;
    cudnnStatus_t (*execute)(cudnnHandle_t, Desc, Desc) = nullptr;
};

template <typename F>
bool resolve(void* lib, const char* name, F& f) {
    f = reinterpret_cast<F>(dlsym(lib, name));
    return f != nullptr;
}

Api load_api() {
    Api a;
    for (const char* name : {"libcudnn.so.9", "libcudnn.so"}) {
        a.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (a.lib != nullptr) break;
    }
    if (a.lib == nullptr) {
        const char* e = dlerror();
        a.why = std::string("libcudnn.so.9 not found (") + (e ? e : "dlopen failed") + ")";
        return a;
    }
    const bool ok = resolve(a.lib, "cudnnGetVersion", a.get_version) &&
                    resolve(a.lib, "cudnnCreate", a.create) &&
                    resolve(a.lib, "cudnnSetStream", a.set_stream) &&
                    resolve(a.lib, "cudnnGetErrorString", a.error_string) &&
                    resolve(a.lib, "cudnnBackendCreateDescriptor", a.create_desc) &&
                    resolve(a.lib, "cudnnBackendDestroyDescriptor", a.destroy_desc) &&
                    resolve(a.lib, "cudnnBackendFinalize", a.finalize) &&
                    resolve(a.lib, "cudnnBackendSetAttribute", a.set_attr) &&
                    resolve(a.lib, "cudnnBackendGetAttribute", a.get_attr) &&
                    resolve(a.lib, "cudnnBackendExecute", a.execute);
    if (!ok) {
        a.why = "libcudnn lacks the backend graph API";
        a.lib = nullptr;
        return a;
    }
    resolve(a.lib, "cudnnGetLastErrorString", a.last_error);  // optional: better messages
    a.version = a.get_version();
    // From 9.6 the fp32 dQ accumulator needs no zeroing by the caller; older releases are not
    // worth a second code path.
    if (a.version < 90600) {
        a.why = "cuDNN " + std::to_string(a.version) + " is older than 9.6";
        a.lib = nullptr;
    }
    return a;
}

Api& api() {
    static Api a = load_api();
    return a;
}

std::string status_text(cudnnStatus_t st) {
    std::string m = api().error_string(st);
    if (api().last_error != nullptr) {
        char buf[512] = {0};
        api().last_error(buf, sizeof buf);
        if (buf[0] != '\0') m += std::string(": ") + buf;
    }
    return m;
}

void check(cudnnStatus_t st, const char* what) {
    if (st != CUDNN_STATUS_SUCCESS)
        throw std::runtime_error(std::string(what) + ": " + status_text(st));
}

// Owns every descriptor of one graph and its plan (cuDNN does not say the plan stays valid once
// the graph's descriptors are destroyed, so they live as long as the plan).
class Graph {
public:
    Graph() = default;
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    ~Graph() {
        for (auto it = owned_.rbegin(); it != owned_.rend(); ++it) api().destroy_desc(*it);
    }

    Desc make(cudnnBackendDescriptorType_t type) {
        Desc d = nullptr;
        check(api().create_desc(type, &d), "create descriptor");
        owned_.push_back(d);
        return d;
    }
    static void set(Desc d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                    int64_t n, const void* v) {
        const cudnnStatus_t st = api().set_attr(d, name, type, n, v);
        if (st != CUDNN_STATUS_SUCCESS)
            throw std::runtime_error("set attribute " + std::to_string(int(name)) + ": " +
                                     status_text(st));
    }
    static void desc(Desc d, cudnnBackendAttributeName_t name, Desc v) {
        set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
    }
    static void finalize(Desc d, const char* what) { check(api().finalize(d), what); }

    // One operation of the graph: its descriptor-valued attributes (null ones left unset).
    void operation(cudnnBackendDescriptorType_t type,
                   std::initializer_list<std::pair<cudnnBackendAttributeName_t, Desc>> attrs) {
        Desc op = make(type);
        for (const auto& [name, value] : attrs)
            if (value != nullptr) desc(op, name, value);
        finalize(op, "operation");
        ops_.push_back(op);
    }

    // A 4-d tensor; uid < 0 makes a virtual one with the next free id.
    Desc tensor(int64_t uid, cudnnDataType_t type, std::array<int64_t, 4> dims,
                std::array<int64_t, 4> strides, bool by_value = false) {
        const bool is_virtual = uid < 0;
        if (is_virtual) uid = next_virtual_++;
        Desc t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        const int64_t align = 16;
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
        set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
        set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
        finalize(t, "tensor");
        return t;
    }
    Desc scalar(int64_t uid) {
        return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, true);
    }

    // y = mode(x[, b[, t]]).
    void pointwise(cudnnPointwiseMode_t mode, Desc x, Desc b, Desc t, Desc y,
                   cudnnDataType_t compute = CUDNN_DATA_FLOAT, int64_t axis = -1) {
        Desc pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &compute);
        if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
        finalize(pw, "pointwise descriptor");
        operation(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR,
                  {{CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw},
                   {CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x},
                   {CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b},
                   {CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t},
                   {CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y}});
    }
    void reduce(cudnnReduceTensorOp_t mode, Desc x, Desc y) {
        Desc r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
        const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
        set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
        set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
        finalize(r, "reduction descriptor");
        operation(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR,
                  {{CUDNN_ATTR_OPERATION_REDUCTION_DESC, r},
                   {CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x},
                   {CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y}});
    }
    void matmul(Desc a, Desc b, Desc c) {
        Desc m = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
        const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
        set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
        finalize(m, "matmul descriptor");
        operation(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR,
                  {{CUDNN_ATTR_OPERATION_MATMUL_ADESC, a},
                   {CUDNN_ATTR_OPERATION_MATMUL_BDESC, b},
                   {CUDNN_ATTR_OPERATION_MATMUL_CDESC, c},
                   {CUDNN_ATTR_OPERATION_MATMUL_DESC, m}});
    }
    void reshape(Desc x, Desc y) {
        operation(
            CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR,
            {{CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x}, {CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y}});
    }

    // A new virtual fp32 tensor y = mode(x[, b]), or y = a·b.
    Desc apply(cudnnPointwiseMode_t mode, Desc x, Desc b, std::array<int64_t, 4> dims,
               std::array<int64_t, 4> strides) {
        Desc y = tensor(-1, CUDNN_DATA_FLOAT, dims, strides);
        pointwise(mode, x, b, nullptr, y);
        return y;
    }
    Desc product(Desc a, Desc b, std::array<int64_t, 4> dims, std::array<int64_t, 4> strides) {
        Desc c = tensor(-1, CUDNN_DATA_FLOAT, dims, strides);
        matmul(a, b, c);
        return c;
    }

    // scores → scores with every key after the query set to the lowest float (row ≥ col kept).
    Desc causal(Desc scores, Desc lowest, std::array<int64_t, 4> dims,
                std::array<int64_t, 4> strides) {
        Desc row = tensor(-1, CUDNN_DATA_INT32, dims, strides);
        Desc col = tensor(-1, CUDNN_DATA_INT32, dims, strides);
        Desc keep = tensor(-1, CUDNN_DATA_BOOLEAN, dims, strides);
        Desc out = tensor(-1, CUDNN_DATA_FLOAT, dims, strides);
        pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
        pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
        pointwise(CUDNN_POINTWISE_CMP_GE, row, col, nullptr, keep, CUDNN_DATA_BOOLEAN);
        pointwise(CUDNN_POINTWISE_BINARY_SELECT, scores, lowest, keep, out);
        return out;
    }

    // The operation graph, the first engine configuration the heuristics offer that finalizes,
    // and its workspace size.
    void build_plan(cudnnHandle_t handle) {
        Desc graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
            int64_t(ops_.size()), ops_.data());
        finalize(graph, "operation graph");
        std::string tried;
        for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
            Desc heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
            desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
            set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
            if (api().finalize(heur) != CUDNN_STATUS_SUCCESS) continue;
            int64_t count = 0;
            check(api().get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 0, &count, nullptr),
                  "heuristics count");
            std::vector<Desc> cfgs;
            for (int64_t i = 0; i < count; ++i)
                cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
            int64_t got = 0;
            if (count > 0)
                check(api().get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, cfgs.data()),
                      "heuristics results");
            for (int64_t i = 0; i < got; ++i) {
                Desc plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
                set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
                desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[size_t(i)]);
                const cudnnStatus_t st = api().finalize(plan);
                if (st != CUDNN_STATUS_SUCCESS) {
                    tried = status_text(st);
                    continue;
                }
                int64_t n = 0;
                check(api().get_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                     CUDNN_TYPE_INT64, 1, &n, &workspace),
                      "plan workspace");
                plan_ = plan;
                return;
            }
        }
        throw std::runtime_error("no cuDNN engine for this attention graph" +
                                 (tried.empty() ? std::string() : " (last: " + tried + ")"));
    }

    Desc plan() const { return plan_; }
    int64_t workspace = 0;

private:
    std::vector<Desc> owned_;
    std::vector<Desc> ops_;
    Desc plan_ = nullptr;
    int64_t next_virtual_ = 1000;
};

// Unique ids of the non-virtual tensors.
enum Uid : int64_t {
    kQ = 1,
    kK,
    kV,
    kO,
    kStats,
    kScale,
    kLowest,
    kDO,
    kDQ,
    kDK,
    kDV,
    kSoftmaxSum,
    kDQAccum,
    kOne
};

using Dims = std::array<int64_t, 4>;

struct Layout {
    int64_t b, h, t, d;
    Dims rows_qkv, rows_out, kt, scores, stats;  // strides
};

Layout layout(const AttentionShape& s) {
    Layout l{s.batch, s.heads, s.seq, s.head_dim, {}, {}, {}, {}, {}};
    // Row (b, t) holds the H heads of D values: [b, h, t, d] with strides (T·ld, D, ld, 1).
    l.rows_qkv = {l.t * s.ld_qkv, l.d, s.ld_qkv, 1};
    l.rows_out = {l.t * s.ld_out, l.d, s.ld_out, 1};
    l.kt = {l.t * s.ld_qkv, l.d, 1, s.ld_qkv};  // [b, h, d, t]: Kᵀ (and Vᵀ) as strides
    l.scores = {l.h * l.t * l.t, l.t * l.t, l.t, 1};
    l.stats = {l.h * l.t, l.t, 1, 1};
    return l;
}

void build_forward(Graph& g, const Layout& l) {
    const Dims qd{l.b, l.h, l.t, l.d}, ktd{l.b, l.h, l.d, l.t}, sd{l.b, l.h, l.t, l.t},
        rd{l.b, l.h, l.t, 1};
    Desc q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    Desc kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, ktd, l.kt);
    Desc v = g.tensor(kV, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    Desc o = g.tensor(kO, CUDNN_DATA_BFLOAT16, qd, l.rows_out);
    Desc stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rd, l.stats);
    Desc scale = g.scalar(kScale);
    Desc lowest = g.scalar(kLowest);
    Desc s = g.apply(CUDNN_POINTWISE_MUL, g.product(q, kt, sd, l.scores), scale, sd, l.scores);
    s = g.causal(s, lowest, sd, l.scores);
    // Softmax with its statistics: lse = max + log Σ exp(s − max).
    Desc mx = g.tensor(-1, CUDNN_DATA_FLOAT, rd, l.stats);
    g.reduce(CUDNN_REDUCE_TENSOR_MAX, s, mx);
    Desc e = g.apply(CUDNN_POINTWISE_EXP, g.apply(CUDNN_POINTWISE_SUB, s, mx, sd, l.scores),
                     nullptr, sd, l.scores);
    Desc z = g.tensor(-1, CUDNN_DATA_FLOAT, rd, l.stats);
    g.reduce(CUDNN_REDUCE_TENSOR_ADD, e, z);
    g.pointwise(CUDNN_POINTWISE_ADD, mx, g.apply(CUDNN_POINTWISE_LOG, z, nullptr, rd, l.stats),
                nullptr, stats);
    // cuDNN wants the second product's A operand in the I/O type.
    Desc p = g.tensor(-1, CUDNN_DATA_BFLOAT16, sd, l.scores);
    g.pointwise(CUDNN_POINTWISE_DIV, e, z, nullptr, p);
    g.matmul(p, v, o);
}

void build_backward(Graph& g, const Layout& l) {
    const Dims qd{l.b, l.h, l.t, l.d}, ktd{l.b, l.h, l.d, l.t}, sd{l.b, l.h, l.t, l.t},
        rd{l.b, l.h, l.t, 1};
    const Dims transposed{l.h * l.t * l.t, l.t * l.t, 1, l.t};  // [b, h, key, query] view
    Desc q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    Desc kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, ktd, l.kt);
    Desc vt = g.tensor(kV, CUDNN_DATA_BFLOAT16, ktd, l.kt);
    Desc o = g.tensor(kO, CUDNN_DATA_BFLOAT16, qd, l.rows_out);
    Desc d_o = g.tensor(kDO, CUDNN_DATA_BFLOAT16, qd, l.rows_out);
    Desc stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rd, l.stats);
    Desc dq = g.tensor(kDQ, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    Desc dk = g.tensor(kDK, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    Desc dv = g.tensor(kDV, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    Desc scale = g.scalar(kScale);
    Desc lowest = g.scalar(kLowest);
    Desc one = g.scalar(kOne);
    // Δ = rowsum(dO ∘ O) → softmax_sum (fp32, the caller's workspace).
    Desc delta = g.tensor(-1, CUDNN_DATA_FLOAT, rd, l.stats);
    g.reduce(CUDNN_REDUCE_TENSOR_ADD,
             g.apply(CUDNN_POINTWISE_MUL, d_o, o, qd, {l.h * l.t * l.d, l.t * l.d, l.h * l.d, 1}),
             delta);
    Desc softmax_sum = g.tensor(kSoftmaxSum, CUDNN_DATA_FLOAT, rd, l.stats);
    g.pointwise(CUDNN_POINTWISE_MUL, delta, one, nullptr, softmax_sum);
    // P = exp(scale·Q·Kᵀ − lse), causal.
    Desc s = g.apply(CUDNN_POINTWISE_MUL, g.product(q, kt, sd, l.scores), scale, sd, l.scores);
    s = g.causal(g.apply(CUDNN_POINTWISE_SUB, s, stats, sd, l.scores), lowest, sd, l.scores);
    Desc p = g.apply(CUDNN_POINTWISE_EXP, s, nullptr, sd, l.scores);
    // dV = Pᵀ·dO
    Desc pt = g.tensor(-1, CUDNN_DATA_BFLOAT16, sd, transposed);
    g.reshape(p, pt);
    g.matmul(pt, d_o, dv);
    // dS = P ∘ (dO·Vᵀ − Δ) · scale
    Desc ds =
        g.apply(CUDNN_POINTWISE_SUB, g.product(d_o, vt, sd, l.scores), softmax_sum, sd, l.scores);
    ds = g.apply(CUDNN_POINTWISE_MUL, g.apply(CUDNN_POINTWISE_MUL, ds, p, sd, l.scores), scale, sd,
                 l.scores);
    // dK = dSᵀ·Q
    Desc dst = g.tensor(-1, CUDNN_DATA_BFLOAT16, sd, transposed);
    g.reshape(ds, dst);
    g.matmul(dst, q, dk);
    // dQ = dS·K through the fp32 accumulator cuDNN's engine expects.
    Desc k = g.tensor(-1, CUDNN_DATA_BFLOAT16, qd, l.rows_qkv);
    g.reshape(kt, k);
    Desc acc = g.tensor(kDQAccum, CUDNN_DATA_FLOAT, qd, {l.h * l.t * l.d, l.t * l.d, l.d, 1});
    g.matmul(ds, k, acc);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, nullptr, dq);
}

// One plan per (device, shape, direction); the failure text when cuDNN cannot run it.
struct Entry {
    std::unique_ptr<Graph> graph;
    void* workspace = nullptr;  // plan workspace, then (backward) the fp32 dQ accumulator
    size_t accum_offset = 0;
    std::string error;
};

struct Cache {
    std::mutex mu;
    std::map<int, cudnnHandle_t> handles;
    std::map<std::tuple<int, bool, int32_t, int32_t, int32_t, int32_t, int64_t, int64_t>, Entry>
        entries;
    std::string last_error;
};

Cache& cache() {
    static Cache* c = new Cache;  // never destroyed: the CUDA context may be gone at exit
    return *c;
}

// The entry for this call, built if needed; nullptr when cuDNN cannot run it (now).
Entry* entry_for(const AttentionShape& s, bool backward, cudaStream_t stream, cudnnHandle_t* h) {
    if (!cudnn_attention_loadable()) return nullptr;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return nullptr;
    Cache& c = cache();
    const auto key =
        std::make_tuple(device, backward, s.batch, s.seq, s.heads, s.head_dim, s.ld_qkv, s.ld_out);
    auto found = c.entries.find(key);
    if (found != c.entries.end()) {
        *h = c.handles[device];
        return found->second.error.empty() ? &found->second : nullptr;
    }
    // Building allocates and compiles: never inside a capture (the caller falls back).
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capturing) != cudaSuccess ||
        capturing != cudaStreamCaptureStatusNone)
        return nullptr;
    Entry& e = c.entries[key];
    try {
        if (c.handles.count(device) == 0) {
            cudnnHandle_t handle = nullptr;
            check(api().create(&handle), "cudnnCreate");
            c.handles[device] = handle;
        }
        *h = c.handles[device];
        e.graph = std::make_unique<Graph>();
        const Layout l = layout(s);
        if (backward)
            build_backward(*e.graph, l);
        else
            build_forward(*e.graph, l);
        e.graph->build_plan(*h);
        e.accum_offset = (size_t(e.graph->workspace) + 255) / 256 * 256;
        const size_t accum = backward ? size_t(l.b * l.h * l.t * l.d) * sizeof(float) : 0;
        if (e.accum_offset + accum > 0 &&
            cudaMalloc(&e.workspace, e.accum_offset + accum) != cudaSuccess)
            throw std::runtime_error("no device memory for the cuDNN workspace");
    } catch (const std::exception& ex) {
        e.error = std::string(backward ? "backward: " : "forward: ") + ex.what();
        e.graph.reset();
        c.last_error = e.error;
        return nullptr;
    }
    return &e;
}

cudaError_t execute(Entry& e, cudnnHandle_t h, cudaStream_t stream,
                    const std::vector<std::pair<int64_t, const void*>>& bindings) {
    std::vector<int64_t> uids;
    std::vector<void*> ptrs;
    for (const auto& [uid, p] : bindings) {
        uids.push_back(uid);
        ptrs.push_back(const_cast<void*>(p));
    }
    Desc pack = nullptr;
    if (api().create_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack) != CUDNN_STATUS_SUCCESS)
        return cudaErrorUnknown;
    cudnnStatus_t st = api().set_attr(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                      int64_t(uids.size()), uids.data());
    if (st == CUDNN_STATUS_SUCCESS)
        st = api().set_attr(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                            int64_t(ptrs.size()), ptrs.data());
    if (st == CUDNN_STATUS_SUCCESS)
        st = api().set_attr(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                            &e.workspace);
    if (st == CUDNN_STATUS_SUCCESS) st = api().finalize(pack);
    if (st == CUDNN_STATUS_SUCCESS) st = api().set_stream(h, stream);
    if (st == CUDNN_STATUS_SUCCESS) st = api().execute(h, e.graph->plan(), pack);
    if (st != CUDNN_STATUS_SUCCESS) cache().last_error = "execute: " + status_text(st);
    api().destroy_desc(pack);
    return st == CUDNN_STATUS_SUCCESS ? cudaSuccess : cudaErrorLaunchFailure;
}

}  // namespace

bool cudnn_attention_loadable() { return api().lib != nullptr; }

std::string cudnn_attention_status() {
    if (!cudnn_attention_loadable()) return api().why;
    const size_t v = api().version;
    std::string s = "cuDNN " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) +
                    "." + std::to_string(v % 100);
    std::lock_guard<std::mutex> lock(cache().mu);
    if (!cache().last_error.empty()) s += "; last failure: " + cache().last_error;
    return s;
}

cudaError_t cudnn_attention_forward(const AttentionShape& s, const void* q, const void* k,
                                    const void* v, void* out, float* lse, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(cache().mu);
    cudnnHandle_t h = nullptr;
    Entry* e = entry_for(s, false, stream, &h);
    if (e == nullptr) return cudaErrorNotSupported;
    const float scale = s.scale, lowest = std::numeric_limits<float>::lowest();
    return execute(*e, h, stream,
                   {{kQ, q},
                    {kK, k},
                    {kV, v},
                    {kO, out},
                    {kStats, lse},
                    {kScale, &scale},
                    {kLowest, &lowest}});
}

cudaError_t cudnn_attention_backward(const AttentionShape& s, const void* q, const void* k,
                                     const void* v, const void* out, const void* dout,
                                     const float* lse, void* dq, void* dk, void* dv,
                                     float* softmax_sum, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(cache().mu);
    cudnnHandle_t h = nullptr;
    Entry* e = entry_for(s, true, stream, &h);
    if (e == nullptr) return cudaErrorNotSupported;
    const float scale = s.scale, lowest = std::numeric_limits<float>::lowest(), one = 1.0f;
    void* accum = static_cast<char*>(e->workspace) + e->accum_offset;
    return execute(*e, h, stream,
                   {{kQ, q},
                    {kK, k},
                    {kV, v},
                    {kO, out},
                    {kDO, dout},
                    {kStats, lse},
                    {kDQ, dq},
                    {kDK, dk},
                    {kDV, dv},
                    {kSoftmaxSum, softmax_sum},
                    {kDQAccum, accum},
                    {kScale, &scale},
                    {kLowest, &lowest},
                    {kOne, &one}});
}

}  // namespace esper::kernels::detail
