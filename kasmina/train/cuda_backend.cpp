// CUDA training backend (see cuda_backend.h). Row-major tensors throughout; cuBLAS is column-
// major, so every GEMM is issued on the transposed problem (z = x·Wᵀ becomes zᵀ = W·xᵀ).
// Deliberate host syncs are marked `// sync-point:`; nothing inside enqueue_step() syncs.
#include "kasmina/train/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "core/log.h"
#include "kasmina/dist/collectives.h"
#include "kasmina/model/transformer.h"
#include "kasmina/train/cuda_handles.h"
#include "kasmina/train/cuda_transformer_backend.h"
#include "kernels/bias_act.h"
#include "kernels/grad_ops.h"
#include "kernels/optimizer.h"
#include "kernels/seed_backward.h"
#include "kernels/seed_forward.h"
#include "kernels/seed_state_update.h"
#include "kernels/softmax_xent.h"
#include "kernels/widening.h"
#if ESPER_HAVE_NCCL
#include "kasmina/dist/collectives_nccl.h"
#endif

namespace esper::kasmina {

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

bool cuda_device_available() { return cuda_device_count() > 0; }

bool resolve_use_cuda(const std::string& device) {
    if (device == "cpu") return false;
    const bool have = cuda_device_available();
    if (device == "cuda" && !have)
        ESPER_THROW(kFailed, "run.device: cuda: no CUDA device is visible (use cpu or auto)");
    return have;
}

namespace {

constexpr size_t kParamAlignFloats = 64;  // 256-byte aligned parameter tensors in the flat buffer
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
constexpr int kTelemetryColumns = 6;  // count, mean, m2, dead, grad_sq, contribution

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

struct HostLayerDev {
    int64_t in = 0, out = 0;
    size_t w_off = 0, b_off = 0;  // floats into the flat parameter buffer
    kernels::Activation act = kernels::Activation::kIdentity;
    DeviceBuffer<float> z, a, y, dy, dh, dz;  // [max_batch, out] (dy, dh, dz: [batch, out])
};

struct ArenaDev {
    DeviceBuffer<float> params, grads, m, v;
    kernels::BlueprintArena view;  // device pointers
};

struct SeedLayerDev {
    int32_t num_seeds = 0;
    DeviceBuffer<int32_t> offsets, slot;
    DeviceBuffer<uint8_t> stage, kind;
    DeviceBuffer<float> alpha;
    DeviceBuffer<uint32_t> steps;
    ArenaDev arenas[kNumBlueprintKinds];
    DeviceBuffer<double> tel;       // [6, S]
    PinnedBuffer<double> tel_host;  // [6, S]
    DeviceBuffer<uint8_t> fwd_ws, bwd_ws;
    PinnedBuffer<kernels::SeedUpdate> updates_host;
    DeviceBuffer<kernels::SeedUpdate> updates;
    // blueprints.input: layer: the slot column the fused seed kernels read, with the layer-input
    // seeds' slots masked to −1 (identity there; the widening path below adds their blueprint),
    // and its host shadow.
    DeviceBuffer<int32_t> masked_slot;
    std::vector<int32_t> masked_shadow;
    // Host shadow of what the device table holds (diffed at step boundaries).
    std::vector<uint8_t> stage_shadow, kind_shadow;
    std::vector<int32_t> slot_shadow;
    std::vector<float> alpha_shadow;
};

// A blueprint slot holding a seed: its grads/params travel to the host after each step; it is
// updated by the optimizer when `trains`.
struct LiveSlot {
    int32_t layer = 0;
    int kind = 0;
    int32_t slot = 0;
    int32_t seed = 0;
    bool trains = false;
    bool operator==(const LiveSlot&) const = default;
};

// A layer-input (widening) seed whose blueprint runs: what the captured step does for it is fixed
// by its stage (which products run), its α is read on the device. Scratch: z (pre-activation), a,
// r ([max_batch, ·]: evaluation too) and the backward's g, gs = g_scale·g, da, dzs = g_scale·dz,
// dzi = a_in·dz ([batch, ·]).
struct WideningDev {
    int32_t layer = 0, seed = 0, slot = 0, c0 = 0, w = 0, hidden = 0, in = 0;
    BlueprintKind kind = BlueprintKind::kResidualMlp;
    bool param_grads = false;  // the stage trains the blueprint
    bool input_grads = false;  // the stage sends gradient into the layer's input (layer > 0)
    DeviceBuffer<float> z, a, r, g, gs, da, dzs, dzi;
};

// What a captured step assumed about the running widening seeds; a change means re-capture.
struct WideningKey {
    int32_t layer = 0, seed = 0, slot = 0;
    uint8_t kind = 0, stage = 0;
    bool operator==(const WideningKey&) const = default;
};

struct StepResultHost {
    float loss;
    int32_t correct;
    double host_sumsq;
};

}  // namespace

struct CudaBackend::Impl {
    // ---- what the step runs over (host objects, not owned) ----
    Config config;
    MlpModel* model = nullptr;
    SeedManager* seeds = nullptr;
    Optimizer* optimizer = nullptr;
    CudaBackendOptions opt;
    int32_t max_batch = 0;
    int64_t in_features = 0, classes = 0;
    bool adamw = false;

    // ---- shape of the captured step ----
    size_t kJoinEvent = 0;
    bool side_used = false;
    // Per hidden layer: no seed can change the value or the input gradient (no seed in
    // GRAFTING..FOSSILIZED), so y == h and dh == dy bit for bit; structural (graph key).
    std::vector<uint8_t> bypass;
    DeviceBuffer<uint8_t> cublas_ws;
    bool graph_valid = false;
    int64_t captures = 0;

    // ---- the host network. Parameters flat: params/grads/momentum (v for AdamW), so one fused
    // optimizer launch updates them all ----
    size_t n_flat = 0;
    DeviceBuffer<float> params, grads, m, v;
    std::vector<size_t> param_off;  // per Model::params() entry
    std::vector<HostLayerDev> hidden;
    HostLayerDev head;

    // ---- batch in (pinned staging → device), loss/correct/norm out ----
    DeviceBuffer<float> x;
    DeviceBuffer<int32_t> labels;
    PinnedBuffer<float> x_host;
    PinnedBuffer<int32_t> labels_host;
    DeviceBuffer<float> loss;
    DeviceBuffer<int32_t> correct;
    DeviceBuffer<double> host_sumsq;
    PinnedBuffer<StepResultHost> result;
    DeviceBuffer<uint8_t> softmax_ws, bias_ws;
    size_t softmax_ws_bytes = 0, bias_ws_bytes = 0;

    // ---- this step's optimizer scalars (pinned, copied inside the step) ----
    PinnedBuffer<kernels::SgdHyper> sgd_host;  // [0] host params, [1] blueprints
    DeviceBuffer<kernels::SgdHyper> sgd;
    PinnedBuffer<kernels::AdamwHyper> adam_host;  // [0] host params
    DeviceBuffer<kernels::AdamwHyper> adam;

    // ---- seed layers and the blueprint slots in use ----
    std::vector<SeedLayerDev> layers;
    std::vector<LiveSlot> live;
    std::vector<size_t> live_off;  // floats into the staging buffers
    PinnedBuffer<float> stage_grads, stage_params;
    std::vector<int32_t> train_index;  // live index → trained index or -1
    PinnedBuffer<kernels::AdamwHyper> slot_adam_host;
    DeviceBuffer<kernels::AdamwHyper> slot_adam;
    DeviceBuffer<double> slot_sumsq;
    std::vector<int64_t> slot_t;  // pending AdamW step per trained slot

    // ---- data parallelism: gradient buckets in backward order (layer index L = the head, then
    // L-1 … 0). Bucket b covers layers [lo, hi], i.e. the flat range [flat_begin, flat_end),
    // plus the live slots of hidden layers lo..min(hi, L-1); it closes after layer lo's dW ----
    struct GradBucket {
        size_t lo = 0, hi = 0;
        size_t flat_begin = 0, flat_end = 0;
    };
    std::vector<GradBucket> buckets;      // empty: one group after backward (no overlap)
    std::vector<int32_t> bucket_closing;  // per layer index 0..L: bucket closing after it, or -1
    size_t next_bucket = 0;               // capture-time cursor

    // ---- widening (blueprints.input: layer): the running layer-input seeds, cuBLAS GEMMs
    // around the kernels/widening.h pieces, as kasmina/model/widening.cpp does on the CPU ----
    bool layer_input = false;
    std::vector<WideningDev> widening;
    std::vector<WideningKey> widening_key;

    // ---- streams, events, cuBLAS, the graph: declared last, so they are released first
    // (graph, cuBLAS, events, streams), before the buffers whose work they ordered ----
    CudaStream stream;
    CudaStream side;                      // bypassed seed layers' kernels
    CudaStream comm;                      // bucketed gradient all-reduces
    std::vector<CudaEvent> events;        // fork points (2 per layer) + the join
    std::vector<CudaEvent> bucket_ready;  // per bucket: its layers' grads final on `stream`
    std::vector<CudaEvent> side_grads;    // per hidden layer: its slot grads final on `side`
    CudaEvent comm_done;                  // the last bucket, for `stream` to wait on
    CudaEvent reduce_begin, reduce_end;   // time_grad_reduce
    CudaEvent backward_end;               // time_grad_reduce: the exposed part starts here
    CudaEvent updates_done;
    CudaEvent done;
    CublasHandle cublas;
    CudaGraphExec graph;

    std::vector<uint8_t> compute_bypass() const {
        std::vector<uint8_t> out(hidden.size(), 0);
        if (seeds == nullptr) return out;
        for (size_t l = 0; l < hidden.size(); ++l) {
            const SeedTable& t = seeds->table(int32_t(l));
            bool pass = true;
            for (int32_t s = 0; s < t.num_seeds() && pass; ++s) {
                const SeedStage st = t.stage(s);
                pass = kernels::stage_forward_alpha(st, 1.0f) == 0.0f &&
                       kernels::stage_input_grad_alpha(st, 1.0f) == 0.0f;
                // The widening GEMMs run on the main stream (one cuBLAS handle and workspace),
                // so a layer with a running layer-input seed is never bypassed.
                if (widening_seed(l, s) && kernels::stage_runs_blueprint(st)) pass = false;
            }
            out[l] = pass ? 1 : 0;
        }
        return out;
    }

    // Output of hidden layer l as the next layer reads it. A bypassed layer (see `bypass`) has
    // y == h exactly, and y is being written on the side stream, so readers take h.
    const float* layer_out(size_t l, bool overlap) const {
        const bool use_y = opt.seed_layers && !(overlap && bypass[l]);
        return use_y ? hidden[l].y.get() : hidden[l].a.get();
    }

    // Side-stream fork/join for bypassed seed layers (captured as graph edges).
    void fork_side(size_t ev) {
        ESPER_CUDA_CHECK(cudaEventRecord(events[ev].get(), stream.get()));
        ESPER_CUDA_CHECK(cudaStreamWaitEvent(side.get(), events[ev].get(), 0));
        side_used = true;
    }
    void join_side() {
        if (!side_used) return;
        ESPER_CUDA_CHECK(cudaEventRecord(events[kJoinEvent].get(), side.get()));
        ESPER_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), events[kJoinEvent].get(), 0));
        side_used = false;
    }

    kernels::SeedLayerView view(size_t l, int32_t batch) const {
        const SeedLayerDev& d = layers[l];
        kernels::SeedLayerView vw;
        vw.batch = batch;
        vw.width = int32_t(hidden[l].out);
        vw.num_seeds = d.num_seeds;
        vw.chunk_offset = d.offsets.get();
        vw.stage = d.stage.get();
        vw.kind = d.kind.get();
        vw.slot = layer_input ? d.masked_slot.get() : d.slot.get();
        vw.alpha = d.alpha.get();
        for (int k = 0; k < kNumBlueprintKinds; ++k) vw.arenas[k] = d.arenas[k].view;
        return vw;
    }

    kernels::SeedTelemetryAccum tel(size_t l) const {
        double* t = layers[l].tel.get();
        const size_t S = size_t(layers[l].num_seeds);
        return {t, t + S, t + 2 * S, t + 3 * S, t + 4 * S, t + 5 * S};
    }

    // ---- GEMMs on row-major data ----
    void gemm_forward(const float* xin, const HostLayerDev& L, float* z, int32_t b) {
        const float one = 1.0f, zero = 0.0f;
        ESPER_CUBLAS_CHECK(cublasSgemm(cublas.get(), CUBLAS_OP_T, CUBLAS_OP_N, int(L.out), b,
                                       int(L.in), &one, params.get() + L.w_off, int(L.in), xin,
                                       int(L.in), &zero, z, int(L.out)));
    }
    void gemm_dw(const float* xin, const float* dz, const HostLayerDev& L, int32_t b) {
        const float one = 1.0f, zero = 0.0f;
        ESPER_CUBLAS_CHECK(cublasSgemm(cublas.get(), CUBLAS_OP_N, CUBLAS_OP_T, int(L.in),
                                       int(L.out), b, &one, xin, int(L.in), dz, int(L.out), &zero,
                                       grads.get() + L.w_off, int(L.in)));
    }
    void gemm_dx(const float* dz, const HostLayerDev& L, float* dx, int32_t b) {
        const float one = 1.0f, zero = 0.0f;
        ESPER_CUBLAS_CHECK(cublasSgemm(cublas.get(), CUBLAS_OP_N, CUBLAS_OP_N, int(L.in), b,
                                       int(L.out), &one, params.get() + L.w_off, int(L.in), dz,
                                       int(L.out), &zero, dx, int(L.in)));
    }

    // Forward and loss of `b` rows already in x/labels; telemetry only when training.
    // `overlap`: bypassed seed layers run on the side stream (training step only).
    void forward(int32_t b, bool train, bool overlap) {
        const float* in = x.get();
        for (size_t l = 0; l < hidden.size(); ++l) {
            HostLayerDev& L = hidden[l];
            gemm_forward(in, L, L.z.get(), b);
            ESPER_CUDA_CHECK(kernels::launch_bias_act_forward(L.z.get(), params.get() + L.b_off,
                                                              L.a.get(), b, int32_t(L.out), L.act,
                                                              stream.get()));
            if (opt.seed_layers) {
                const bool off_path = overlap && bypass[l];
                if (off_path) fork_side(2 * l);
                const kernels::SeedTelemetryAccum t = tel(l);
                ESPER_CUDA_CHECK(kernels::launch_seed_forward(
                    view(l, b), L.a.get(), L.y.get(), train ? &t : nullptr, layers[l].fwd_ws.get(),
                    layers[l].fwd_ws.size(), off_path ? side.get() : stream.get()));
                widening_forward(l, in, L.y.get(), b);
            }
            in = layer_out(l, overlap);
        }
        gemm_forward(in, head, head.z.get(), b);
        ESPER_CUDA_CHECK(kernels::launch_bias_act_forward(
            head.z.get(), params.get() + head.b_off, head.z.get(), b, int32_t(head.out),
            kernels::Activation::kIdentity, stream.get()));
        ESPER_CUDA_CHECK(kernels::launch_softmax_xent(
            head.z.get(), labels.get(), b, int32_t(classes), loss.get(), head.dz.get(),
            correct.get(), softmax_ws.get(), softmax_ws_bytes, stream.get()));
    }

    void backward(int32_t b, bool overlap) {
        const size_t L = hidden.size();
        // Head (identity): dz = dlogits in place, dbias by the column reduction.
        ESPER_CUDA_CHECK(kernels::launch_bias_act_backward(
            head.dz.get(), head.z.get(), head.dz.get(), grads.get() + head.b_off, b,
            int32_t(head.out), kernels::Activation::kIdentity, bias_ws.get(), bias_ws_bytes,
            stream.get()));
        gemm_dw(layer_out(L - 1, overlap), head.dz.get(), head, b);
        if (reduce_overlapped()) layer_grads_done(L, overlap);
        gemm_dx(head.dz.get(), head, hidden[L - 1].dy.get(), b);
        for (size_t l = L; l-- > 0;) {
            HostLayerDev& H = hidden[l];
            const float* g = H.dy.get();
            if (opt.seed_layers) {
                // Bypassed: dh == dy exactly; the kernel still produces the telemetry and the
                // gradients of TRAINING blueprints, off the critical path.
                const bool off_path = overlap && bypass[l];
                if (off_path) fork_side(2 * l + 1);
                const kernels::SeedTelemetryAccum t = tel(l);
                ESPER_CUDA_CHECK(kernels::launch_seed_backward(
                    view(l, b), H.a.get(), H.dy.get(), H.dh.get(), &t, layers[l].bwd_ws.get(),
                    layers[l].bwd_ws.size(), off_path ? side.get() : stream.get()));
                if (off_path && reduce_overlapped())
                    ESPER_CUDA_CHECK(cudaEventRecord(side_grads[l].get(), side.get()));
                if (!off_path) g = H.dh.get();
                widening_backward(l, l == 0 ? x.get() : layer_out(l - 1, overlap), H.dy.get(), b);
            }
            ESPER_CUDA_CHECK(kernels::launch_bias_act_backward(
                g, H.z.get(), H.dz.get(), grads.get() + H.b_off, b, int32_t(H.out), H.act,
                bias_ws.get(), bias_ws_bytes, stream.get()));
            gemm_dw(l == 0 ? x.get() : layer_out(l - 1, overlap), H.dz.get(), H, b);
            if (reduce_overlapped()) layer_grads_done(l, overlap);
            if (l > 0) {
                gemm_dx(H.dz.get(), H, hidden[l - 1].dy.get(), b);
                // After the host layer's dx (which overwrites): the widening seeds' input grads.
                if (opt.seed_layers) widening_input_grads(l, hidden[l - 1].dy.get(), b);
            }
        }
    }

    // ---- widening (layer-input) seeds ----

    // Row-major C[m, n] = op(A)·op(B) + beta·C on the main stream (cuBLAS sees the transposed
    // problem: Cᵀ = op(B)ᵀ·op(A)ᵀ, and a row-major X is a column-major Xᵀ).
    void gemm_rm(bool trans_a, bool trans_b, int32_t m, int32_t n, int32_t k, const float* a,
                 int32_t lda, const float* b, int32_t ldb, float beta, float* c, int32_t ldc) {
        const float one = 1.0f;
        ESPER_CUBLAS_CHECK(cublasSgemm(cublas.get(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &one, b, ldb,
                                       a, lda, &beta, c, ldc));
    }

    // Seed s of layer l holds a layer-input blueprint (host table; mirrors WideningPath::handled).
    bool widening_seed(size_t l, int32_t s) const {
        if (!layer_input || seeds == nullptr) return false;
        const SeedTable& t = seeds->table(int32_t(l));
        const int32_t slot = t.slot(s);
        if (slot < 0) return false;
        const kernels::BlueprintArena& a = layers[l].arenas[int(t.kind(s))].view;
        return kernels::blueprint_reads_layer_input(t.kind(s), a.in_width) && slot < a.capacity;
    }

    kernels::WideningSeedRef widening_ref(const WideningDev& e) const {
        return {layers[size_t(e.layer)].stage.get(), layers[size_t(e.layer)].alpha.get(), e.seed};
    }

    const float* widening_params(const WideningDev& e) const {
        const ArenaDev& ar = layers[size_t(e.layer)].arenas[int(e.kind)];
        return ar.params.get() + size_t(e.slot) * size_t(ar.view.stride);
    }
    float* widening_grads(const WideningDev& e) const {
        const ArenaDev& ar = layers[size_t(e.layer)].arenas[int(e.kind)];
        return ar.grads.get() + size_t(e.slot) * size_t(ar.view.stride);
    }
    kernels::MlpSlotOffsets widening_offsets(const WideningDev& e) const {
        const ArenaDev& ar = layers[size_t(e.layer)].arenas[int(e.kind)];
        return kernels::mlp_slot_offsets(ar.view.max_width, e.hidden, e.in);
    }

    // y[:, chunk] += a_fwd·(U·act(V·input + b1) + b2) for the running widening seeds of layer l
    // (after the seed kernel wrote y = h there); keeps z, a, r for the backward.
    void widening_forward(size_t l, const float* input, float* y, int32_t b) {
        for (WideningDev& e : widening) {
            if (size_t(e.layer) != l) continue;
            const float* p = widening_params(e);
            const kernels::MlpSlotOffsets o = widening_offsets(e);
            gemm_rm(false, true, b, e.hidden, e.in, input, e.in, p + o.v, e.in, 0.0f, e.z.get(),
                    e.hidden);
            ESPER_CUDA_CHECK(kernels::launch_bias_act_forward(
                e.z.get(), p + o.b1, e.a.get(), b, e.hidden,
                e.kind == BlueprintKind::kResidualMlp ? kernels::Activation::kRelu
                                                      : kernels::Activation::kIdentity,
                stream.get()));
            gemm_rm(false, true, b, e.w, e.hidden, e.a.get(), e.hidden, p + o.u, e.hidden, 0.0f,
                    e.r.get(), e.w);
            ESPER_CUDA_CHECK(kernels::launch_widening_output_forward(
                widening_ref(e), p + o.b2, e.r.get(), y, b, e.w, int32_t(hidden[l].out), e.c0,
                stream.get()));
        }
    }

    // Contribution telemetry and blueprint gradients of layer l's running widening seeds (dy:
    // ∂L/∂y of the layer); dzi is left for widening_input_grads.
    void widening_backward(size_t l, const float* input, const float* dy, int32_t b) {
        for (WideningDev& e : widening) {
            if (size_t(e.layer) != l) continue;
            const float* p = widening_params(e);
            float* gp = widening_grads(e);
            const kernels::MlpSlotOffsets o = widening_offsets(e);
            const kernels::SeedTelemetryAccum t = tel(l);
            ESPER_CUDA_CHECK(kernels::launch_widening_output_backward(
                widening_ref(e), dy, int32_t(hidden[l].out), e.c0, e.r.get(), b, e.w, e.g.get(),
                e.param_grads ? e.gs.get() : nullptr, e.param_grads ? gp + o.b2 : nullptr,
                t.contribution + e.seed, stream.get()));
            if (!e.param_grads && !e.input_grads) continue;
            if (e.param_grads)  // gU[w, H] += gsᵀ·a
                gemm_rm(true, false, e.w, e.hidden, b, e.gs.get(), e.w, e.a.get(), e.hidden, 1.0f,
                        gp + o.u, e.hidden);
            gemm_rm(false, false, b, e.hidden, e.w, e.g.get(), e.w, p + o.u, e.hidden, 0.0f,
                    e.da.get(), e.hidden);  // da = g·U
            ESPER_CUDA_CHECK(kernels::launch_widening_hidden_backward(
                widening_ref(e), e.kind, e.da.get(), e.z.get(), b, e.hidden,
                e.param_grads ? e.dzs.get() : nullptr, e.param_grads ? gp + o.b1 : nullptr,
                e.input_grads ? e.dzi.get() : nullptr, stream.get()));
            if (e.param_grads)  // gV[H, in] += dzsᵀ·input
                gemm_rm(true, false, e.hidden, e.in, b, e.dzs.get(), e.hidden, input, e.in, 1.0f,
                        gp + o.v, e.in);
        }
    }

    // d_input[B, in] += dzi·V for layer l's widening seeds that send gradient to their input.
    void widening_input_grads(size_t l, float* d_input, int32_t b) {
        for (WideningDev& e : widening) {
            if (size_t(e.layer) != l || !e.input_grads) continue;
            gemm_rm(false, false, b, e.in, e.hidden, e.dzi.get(), e.hidden,
                    widening_params(e) + widening_offsets(e).v, e.in, 1.0f, d_input, e.in);
        }
    }

    // Step boundary, after the tables were mirrored: the masked slot columns the seed kernels
    // read, and the plan of running widening seeds. A plan change (a seed starts or stops running,
    // changes stage or slot) is structural: new scratch, re-capture.
    void refresh_widening() {
        if (!layer_input || seeds == nullptr) return;
        std::vector<WideningKey> key;
        for (size_t l = 0; l < layers.size(); ++l) {
            SeedLayerDev& s = layers[l];
            const SeedTable& t = seeds->table(int32_t(l));
            std::vector<int32_t> masked(t.slot_data(), t.slot_data() + s.num_seeds);
            for (int32_t i = 0; i < s.num_seeds; ++i) {
                if (!widening_seed(l, i)) continue;
                masked[size_t(i)] = -1;
                if (kernels::stage_runs_blueprint(t.stage(i)))
                    key.push_back(
                        {int32_t(l), i, t.slot(i), uint8_t(t.kind(i)), uint8_t(t.stage(i))});
            }
            if (masked != s.masked_shadow) {
                s.masked_shadow = std::move(masked);
                // Pageable source: the copy is staged before the call returns.
                ESPER_CUDA_CHECK(cudaMemcpyAsync(s.masked_slot.get(), s.masked_shadow.data(),
                                                 size_t(s.num_seeds) * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, stream.get()));
            }
        }
        if (key == widening_key) return;
        // sync-point: structural edit (the old plan's scratch may still be in use).
        ESPER_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
        widening.clear();
        const size_t MB = size_t(max_batch), B = size_t(opt.batch);
        for (const WideningKey& k : key) {
            const SeedTable& t = seeds->table(k.layer);
            const kernels::BlueprintArena& a = layers[size_t(k.layer)].arenas[k.kind].view;
            const SeedStage stage = SeedStage(k.stage);
            WideningDev& e = widening.emplace_back();
            e.layer = k.layer;
            e.seed = k.seed;
            e.slot = k.slot;
            e.kind = BlueprintKind(k.kind);
            e.c0 = t.chunk_begin(k.seed);
            e.w = t.chunk_width(k.seed);
            e.hidden = a.hidden;
            e.in = a.in_width;
            e.param_grads = kernels::stage_blueprint_grad_scale(stage, 1.0f) != 0.0f;
            e.input_grads = k.layer > 0 && kernels::stage_input_grad_alpha(stage, 1.0f) != 0.0f;
            const size_t H = size_t(e.hidden), W = size_t(e.w);
            e.z = DeviceBuffer<float>(MB * H);
            e.a = DeviceBuffer<float>(MB * H);
            e.r = DeviceBuffer<float>(MB * W);
            e.g = DeviceBuffer<float>(B * W);
            e.da = DeviceBuffer<float>(B * H);
            if (e.param_grads) {
                e.gs = DeviceBuffer<float>(B * W);
                e.dzs = DeviceBuffer<float>(B * H);
            }
            if (e.input_grads) e.dzi = DeviceBuffer<float>(B * H);
        }
        widening_key = std::move(key);
        // The new buffers were zeroed on the legacy stream; finish that before `stream` uses them.
        ESPER_CUDA_CHECK(cudaDeviceSynchronize());
        graph_valid = false;
    }

    float* slot_ptr(const DeviceBuffer<float>& buf, const LiveSlot& e) const {
        return buf.get() + size_t(e.slot) * size_t(layers[e.layer].arenas[e.kind].view.stride);
    }
    size_t slot_floats(const LiveSlot& e) const {
        return size_t(layers[e.layer].arenas[e.kind].view.stride);
    }

    bool data_parallel() const {
#if ESPER_HAVE_NCCL
        return opt.nccl != nullptr && opt.nccl->world() > 1;
#else
        return false;
#endif
    }

    // Buckets over the layers in backward order (head first), closing once they hold
    // grad_bucket_bytes of host gradients; structural (depends only on the layer shapes).
    void plan_buckets() {
        buckets.clear();
        const size_t L = hidden.size();
        bucket_closing.assign(L + 1, -1);
        // Layer li's flat range: [param_off[2 li], param_off[2 li + 2]) (the head ends at n_flat).
        auto begin_of = [&](size_t li) { return param_off[2 * li]; };
        auto end_of = [&](size_t li) { return li == L ? n_flat : param_off[2 * li + 2]; };
        std::vector<size_t> floats;  // backward order: li = L, L-1, …, 0
        for (size_t li = L + 1; li-- > 0;) floats.push_back(end_of(li) - begin_of(li));
        for (const LayerBucket& p : plan_layer_buckets(floats, opt.grad_bucket_bytes)) {
            GradBucket k;
            k.hi = L - p.first;
            k.lo = L - p.last;
            k.flat_begin = begin_of(k.lo);
            k.flat_end = end_of(k.hi);
            bucket_closing[k.lo] = int32_t(buckets.size());
            buckets.push_back(k);
        }
    }

    bool reduce_overlapped() const { return data_parallel() && !buckets.empty(); }

    // Inside backward (reduce_overlapped): layer li's weight gradient was just enqueued on
    // `stream`. When it closes a bucket, the communication stream waits for it (and for the
    // side stream's blueprint gradients of the bucket's bypassed layers) and all-reduces it while
    // `stream` goes on with the earlier layers.
    void layer_grads_done(size_t li, bool overlap) {
#if ESPER_HAVE_NCCL
        const int32_t b = bucket_closing[li];
        if (b < 0) return;
        const GradBucket& k = buckets[size_t(b)];
        ESPER_CUDA_CHECK(cudaEventRecord(bucket_ready[size_t(b)].get(), stream.get()));
        ESPER_CUDA_CHECK(cudaStreamWaitEvent(comm.get(), bucket_ready[size_t(b)].get(), 0));
        const size_t L = hidden.size();
        for (size_t l = k.lo; l <= std::min(k.hi, L - 1); ++l)
            if (opt.seed_layers && overlap && bypass[l])
                ESPER_CUDA_CHECK(cudaStreamWaitEvent(comm.get(), side_grads[l].get(), 0));
        // External: inside a stream capture a plain record is only a dependency marker; this
        // makes it an event-record node, so cudaEventElapsedTime works after a replay.
        if (opt.time_grad_reduce && b == 0)
            ESPER_CUDA_CHECK(
                cudaEventRecordWithFlags(reduce_begin.get(), comm.get(), cudaEventRecordExternal));
        NcclComm& c = *opt.nccl;
        c.group_start();
        c.all_reduce_mean(grads.get() + k.flat_begin, grads.get() + k.flat_begin,
                          k.flat_end - k.flat_begin, NcclType::kFloat32, comm.get());
        for (const LiveSlot& e : live) {
            if (size_t(e.layer) < k.lo || size_t(e.layer) > k.hi) continue;
            float* g = slot_ptr(layers[e.layer].arenas[e.kind].grads, e);
            c.all_reduce_mean(g, g, slot_floats(e), NcclType::kFloat32, comm.get());
        }
        c.group_end();
        next_bucket = size_t(b) + 1;
#else
        (void)li;
        (void)overlap;
#endif
    }

    // Data parallelism: every gradient the optimizer reads becomes the mean over ranks (NCCL's
    // ring/tree result is the same on every rank). With buckets, they were enqueued during
    // backward: `stream` joins the communication stream here. Without, one group, one launch.
    void reduce_gradients() {
#if ESPER_HAVE_NCCL
        if (reduce_overlapped()) {
            ESPER_REQUIRE(next_bucket == buckets.size(), "buckets enqueued ", next_bucket, " of ",
                          buckets.size());
            next_bucket = 0;
            if (opt.time_grad_reduce) {
                ESPER_CUDA_CHECK(cudaEventRecordWithFlags(backward_end.get(), stream.get(),
                                                          cudaEventRecordExternal));
                ESPER_CUDA_CHECK(cudaEventRecordWithFlags(reduce_end.get(), comm.get(),
                                                          cudaEventRecordExternal));
            }
            ESPER_CUDA_CHECK(cudaEventRecord(comm_done.get(), comm.get()));
            ESPER_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), comm_done.get(), 0));
            return;
        }
        if (opt.time_grad_reduce) {
            ESPER_CUDA_CHECK(cudaEventRecordWithFlags(reduce_begin.get(), stream.get(),
                                                      cudaEventRecordExternal));
            ESPER_CUDA_CHECK(cudaEventRecordWithFlags(backward_end.get(), stream.get(),
                                                      cudaEventRecordExternal));
        }
        NcclComm& c = *opt.nccl;
        c.group_start();
        c.all_reduce_mean(grads.get(), grads.get(), n_flat, NcclType::kFloat32, stream.get());
        for (const LiveSlot& e : live) {
            float* g = slot_ptr(layers[e.layer].arenas[e.kind].grads, e);
            c.all_reduce_mean(g, g, slot_floats(e), NcclType::kFloat32, stream.get());
        }
        c.group_end();
        if (opt.time_grad_reduce)
            ESPER_CUDA_CHECK(
                cudaEventRecordWithFlags(reduce_end.get(), stream.get(), cudaEventRecordExternal));
#endif
    }

    // The sums of squares come from double atomics (order varies), so ranks with identical
    // gradients may differ in the last bit: rank 0's values decide clipping and finiteness.
    void agree_sumsq() {
#if ESPER_HAVE_NCCL
        NcclComm& c = *opt.nccl;
        c.group_start();
        c.broadcast(host_sumsq.get(), host_sumsq.get(), sizeof(double), 0, stream.get());
        if (slot_sumsq.size() > 0)
            c.broadcast(slot_sumsq.get(), slot_sumsq.get(), slot_sumsq.size() * sizeof(double), 0,
                        stream.get());
        c.group_end();
#endif
    }

    int64_t reduce_floats() const {
        int64_t n = int64_t(n_flat);
        for (const LiveSlot& e : live) n += int64_t(slot_floats(e));
        return n;
    }

    // The whole training step on `stream`: capturable (no sync, no allocation, no host reads).
    void enqueue_step() {
        const int32_t B = opt.batch;
        ESPER_CUDA_CHECK(cudaMemcpyAsync(x.get(), x_host.get(),
                                         size_t(B) * size_t(in_features) * sizeof(float),
                                         cudaMemcpyHostToDevice, stream.get()));
        ESPER_CUDA_CHECK(cudaMemcpyAsync(labels.get(), labels_host.get(),
                                         size_t(B) * sizeof(int32_t), cudaMemcpyHostToDevice,
                                         stream.get()));
        if (adamw) {
            ESPER_CUDA_CHECK(cudaMemcpyAsync(adam.get(), adam_host.get(),
                                             sizeof(kernels::AdamwHyper), cudaMemcpyHostToDevice,
                                             stream.get()));
            if (slot_adam.size() > 0)
                ESPER_CUDA_CHECK(cudaMemcpyAsync(slot_adam.get(), slot_adam_host.get(),
                                                 slot_adam.size() * sizeof(kernels::AdamwHyper),
                                                 cudaMemcpyHostToDevice, stream.get()));
        } else {
            ESPER_CUDA_CHECK(cudaMemcpyAsync(sgd.get(), sgd_host.get(),
                                             2 * sizeof(kernels::SgdHyper), cudaMemcpyHostToDevice,
                                             stream.get()));
        }
        for (size_t l = 0; l < layers.size(); ++l)
            ESPER_CUDA_CHECK(cudaMemsetAsync(layers[l].tel.get(), 0,
                                             layers[l].tel.size() * sizeof(double), stream.get()));
        for (const LiveSlot& e : live) {
            ESPER_CUDA_CHECK(cudaMemsetAsync(slot_ptr(layers[e.layer].arenas[e.kind].grads, e), 0,
                                             slot_floats(e) * sizeof(float), stream.get()));
        }
        ESPER_CUDA_CHECK(cudaMemsetAsync(host_sumsq.get(), 0, sizeof(double), stream.get()));

        forward(B, true, opt.overlap_dormant);
        backward(B, opt.overlap_dormant);
        join_side();
        const bool dp = data_parallel();
        if (dp) reduce_gradients();

        ESPER_CUDA_CHECK(kernels::launch_sum_squares(grads.get(), int64_t(n_flat), host_sumsq.get(),
                                                     stream.get()));
        for (size_t i = 0; i < live.size(); ++i) {
            const LiveSlot& e = live[i];
            ESPER_CUDA_CHECK(cudaMemcpyAsync(
                stage_grads.get() + live_off[i], slot_ptr(layers[e.layer].arenas[e.kind].grads, e),
                slot_floats(e) * sizeof(float), cudaMemcpyDeviceToHost, stream.get()));
        }
        const float clip = float(config.optimizer.grad_clip);
        if (slot_sumsq.size() > 0)
            ESPER_CUDA_CHECK(cudaMemsetAsync(slot_sumsq.get(), 0,
                                             slot_sumsq.size() * sizeof(double), stream.get()));
        if (clip > 0.0f) {
            for (size_t i = 0; i < live.size(); ++i) {
                const int32_t ti = train_index[i];
                if (ti < 0) continue;
                const LiveSlot& e = live[i];
                ESPER_CUDA_CHECK(kernels::launch_sum_squares(
                    slot_ptr(layers[e.layer].arenas[e.kind].grads, e), int64_t(slot_floats(e)),
                    slot_sumsq.get() + ti, stream.get()));
            }
        }
        if (dp) agree_sumsq();
        if (clip > 0.0f)
            ESPER_CUDA_CHECK(kernels::launch_clip_scale(grads.get(), int64_t(n_flat),
                                                        host_sumsq.get(), clip, stream.get()));
        if (adamw) {
            ESPER_CUDA_CHECK(kernels::launch_adamw_step(params.get(), grads.get(), m.get(), v.get(),
                                                        int64_t(n_flat), adam.get(), stream.get()));
        } else {
            ESPER_CUDA_CHECK(kernels::launch_sgd_momentum_step(
                params.get(), grads.get(), m.get(), int64_t(n_flat), sgd.get(), stream.get()));
        }
        for (size_t i = 0; i < live.size(); ++i) {
            const int32_t ti = train_index[i];
            if (ti < 0) continue;
            const LiveSlot& e = live[i];
            ArenaDev& ar = layers[e.layer].arenas[e.kind];
            const int64_t n = int64_t(slot_floats(e));
            float* g = slot_ptr(ar.grads, e);
            if (clip > 0.0f)
                ESPER_CUDA_CHECK(
                    kernels::launch_clip_scale(g, n, slot_sumsq.get() + ti, clip, stream.get()));
            if (adamw) {
                ESPER_CUDA_CHECK(kernels::launch_adamw_step(slot_ptr(ar.params, e), g,
                                                            slot_ptr(ar.m, e), slot_ptr(ar.v, e), n,
                                                            slot_adam.get() + ti, stream.get()));
            } else {
                ESPER_CUDA_CHECK(kernels::launch_sgd_momentum_step(
                    slot_ptr(ar.params, e), g, slot_ptr(ar.m, e), n, sgd.get() + 1, stream.get()));
            }
        }
        StepResultHost* r = result.get();
        ESPER_CUDA_CHECK(cudaMemcpyAsync(&r->loss, loss.get(), sizeof(float),
                                         cudaMemcpyDeviceToHost, stream.get()));
        ESPER_CUDA_CHECK(cudaMemcpyAsync(&r->correct, correct.get(), sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, stream.get()));
        ESPER_CUDA_CHECK(cudaMemcpyAsync(&r->host_sumsq, host_sumsq.get(), sizeof(double),
                                         cudaMemcpyDeviceToHost, stream.get()));
        for (size_t l = 0; l < layers.size(); ++l)
            ESPER_CUDA_CHECK(cudaMemcpyAsync(layers[l].tel_host.get(), layers[l].tel.get(),
                                             layers[l].tel.size() * sizeof(double),
                                             cudaMemcpyDeviceToHost, stream.get()));
        for (size_t i = 0; i < live.size(); ++i) {
            const LiveSlot& e = live[i];
            ESPER_CUDA_CHECK(cudaMemcpyAsync(stage_params.get() + live_off[i],
                                             slot_ptr(layers[e.layer].arenas[e.kind].params, e),
                                             slot_floats(e) * sizeof(float), cudaMemcpyDeviceToHost,
                                             stream.get()));
        }
    }

    void capture() {
        graph.destroy();
        // The wide seed GEMMs use this thread's cuBLAS handle: created here, never inside a
        // capture.
        if (opt.seed_layers) ESPER_CUDA_CHECK(kernels::prepare_seed_gemms());
        graph = capture_graph(stream.get(), [&] { enqueue_step(); });
        graph_valid = true;
        ++captures;
    }

    std::vector<LiveSlot> live_slots() const {
        std::vector<LiveSlot> out;
        if (seeds == nullptr || !opt.seed_layers) return out;
        for (int32_t l = 0; l < seeds->num_layers(); ++l) {
            const SeedTable& t = seeds->table(l);
            for (int32_t s = 0; s < t.num_seeds(); ++s) {
                if (t.slot(s) < 0) continue;
                LiveSlot e;
                e.layer = l;
                e.kind = int(t.kind(s));
                e.slot = t.slot(s);
                e.seed = s;
                e.trains = kernels::stage_blueprint_grad_scale(t.stage(s), 1.0f) != 0.0f;
                out.push_back(e);
            }
        }
        return out;
    }

    // Structural change: new staging buffers and per-slot optimizer scalars; the graph must be
    // captured again. sync-point: step boundary (structural edit, buffers in use are replaced).
    void set_live(std::vector<LiveSlot> next) {
        ESPER_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
        live = std::move(next);
        live_off.assign(live.size(), 0);
        train_index.assign(live.size(), -1);
        size_t total = 0;
        int32_t trained = 0;
        for (size_t i = 0; i < live.size(); ++i) {
            live_off[i] = total;
            total += slot_floats(live[i]);
            if (live[i].trains) train_index[i] = trained++;
        }
        stage_grads = PinnedBuffer<float>(total);
        stage_params = PinnedBuffer<float>(total);
        slot_adam_host = PinnedBuffer<kernels::AdamwHyper>(adamw ? size_t(trained) : 0);
        slot_adam = DeviceBuffer<kernels::AdamwHyper>(adamw ? size_t(trained) : 0);
        slot_sumsq = DeviceBuffer<double>(size_t(trained));
        slot_t.assign(size_t(trained), 0);
        // The new buffers were zeroed on the legacy stream; finish that before `stream` uses them.
        ESPER_CUDA_CHECK(cudaDeviceSynchronize());
        graph_valid = false;
    }

    void upload_slot(int32_t l, int kind, int32_t slot) {
        BlueprintArenas& a = seeds->arenas(l);
        const BlueprintKind k = BlueprintKind(kind);
        ArenaDev& ar = layers[size_t(l)].arenas[kind];
        const size_t n = size_t(ar.view.stride);
        const size_t off = size_t(slot) * n;
        ESPER_CUDA_CHECK(cudaMemcpyAsync(ar.params.get() + off, a.params(k, slot).data(),
                                         n * sizeof(float), cudaMemcpyHostToDevice, stream.get()));
        ESPER_CUDA_CHECK(cudaMemcpyAsync(ar.m.get() + off, a.opt_m(k, slot).data(),
                                         n * sizeof(float), cudaMemcpyHostToDevice, stream.get()));
        if (adamw)
            ESPER_CUDA_CHECK(cudaMemcpyAsync(ar.v.get() + off, a.opt_v(k, slot).data(),
                                             n * sizeof(float), cudaMemcpyHostToDevice,
                                             stream.get()));
    }
};

CudaBackend::CudaBackend(const Config& config, MlpModel& model, SeedManager* seeds,
                         Optimizer& optimizer, const CudaBackendOptions& options)
    : impl_(std::make_unique<Impl>()) {
    Impl& d = *impl_;
    d.config = config;
    d.model = &model;
    d.seeds = options.seed_layers ? seeds : nullptr;
    d.optimizer = &optimizer;
    d.opt = options;
    ESPER_REQUIRE(options.batch > 0, "batch=", options.batch);
    ESPER_REQUIRE(!options.seed_layers || seeds != nullptr, "seed layers need a SeedManager");
    d.max_batch = std::max(options.batch, options.eval_batch);
    d.in_features = model.in_features();
    d.classes = model.classes();
    d.adamw = config.optimizer.kind == OptimizerKind::kAdamw;
    d.layer_input = options.seed_layers && config.blueprints.input == BlueprintInput::kLayer;

#if !ESPER_HAVE_NCCL
    ESPER_CHECK_INPUT(options.nccl == nullptr,
                      "CUDA backend: data parallelism needs NCCL, and "
                      "this build has none (use run.device: cpu with Gloo)");
#endif
    d.stream = CudaStream(cudaStreamNonBlocking);
    if (options.time_grad_reduce) {
        d.reduce_begin = CudaEvent(cudaEventDefault);
        d.reduce_end = CudaEvent(cudaEventDefault);
        d.backward_end = CudaEvent(cudaEventDefault);
    }
    d.side = CudaStream(cudaStreamNonBlocking);
    d.done = CudaEvent(cudaEventDisableTiming);
    d.updates_done = CudaEvent(cudaEventDisableTiming);
    d.cublas = CublasHandle::create();
    ESPER_CUBLAS_CHECK(cublasSetStream(d.cublas.get(), d.stream.get()));
    d.cublas_ws = DeviceBuffer<uint8_t>(kCublasWorkspaceBytes);
    ESPER_CUBLAS_CHECK(
        cublasSetWorkspace(d.cublas.get(), d.cublas_ws.get(), kCublasWorkspaceBytes));
    ESPER_CUBLAS_CHECK(cublasSetMathMode(
        d.cublas.get(), options.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));

    // Flat parameter layout: Model::params() is [hidden0.weight, hidden0.bias, ..., head.*].
    const std::vector<ParamRef>& ps = model.params();
    ESPER_REQUIRE(ps.size() >= 4 && ps.size() % 2 == 0, "params=", ps.size());
    for (const ParamRef& p : ps) {
        d.param_off.push_back(d.n_flat);
        d.n_flat += align_up(size_t(p.value->numel()), kParamAlignFloats);
    }
    d.params = DeviceBuffer<float>(d.n_flat);
    d.grads = DeviceBuffer<float>(d.n_flat);
    d.m = DeviceBuffer<float>(d.n_flat);
    d.v = DeviceBuffer<float>(d.adamw ? d.n_flat : 0);
    const size_t n_layers = ps.size() / 2;
    const kernels::Activation act = kernel_activation(config.model.activation);
    const size_t MB = size_t(d.max_batch), B = size_t(options.batch);
    size_t bias_ws = 0;
    for (size_t i = 0; i < n_layers; ++i) {
        const bool is_head = i + 1 == n_layers;
        HostLayerDev L;
        L.out = ps[2 * i].value->dim(0);
        L.in = ps[2 * i].value->dim(1);
        L.w_off = d.param_off[2 * i];
        L.b_off = d.param_off[2 * i + 1];
        L.act = is_head ? kernels::Activation::kIdentity : act;
        const size_t n_max = MB * size_t(L.out), n = B * size_t(L.out);
        L.z = DeviceBuffer<float>(n_max);
        if (is_head) {
            L.dz = DeviceBuffer<float>(n_max);  // dlogits (also written by evaluation)
        } else {
            L.a = DeviceBuffer<float>(n_max);
            if (options.seed_layers) {
                L.y = DeviceBuffer<float>(n_max);
                L.dh = DeviceBuffer<float>(n);
            }
            L.dy = DeviceBuffer<float>(n);
            L.dz = DeviceBuffer<float>(n);
        }
        bias_ws = std::max(bias_ws,
                           kernels::bias_act_backward_workspace_bytes(int32_t(B), int32_t(L.out)));
        if (is_head)
            d.head = std::move(L);
        else
            d.hidden.push_back(std::move(L));
    }
    d.bypass.assign(d.hidden.size(), 0);
    if (d.data_parallel()) {
        d.plan_buckets();
        if (!d.buckets.empty()) {
            d.comm = CudaStream(cudaStreamNonBlocking);
            d.comm_done = CudaEvent(cudaEventDisableTiming);
            for (size_t b = 0; b < d.buckets.size(); ++b)
                d.bucket_ready.emplace_back(cudaEventDisableTiming);
            for (size_t l = 0; l < d.hidden.size(); ++l)
                d.side_grads.emplace_back(cudaEventDisableTiming);
        }
    }
    d.kJoinEvent = 2 * d.hidden.size();
    d.events.clear();
    for (size_t i = 0; i <= d.kJoinEvent; ++i) d.events.emplace_back(cudaEventDisableTiming);
    d.bias_ws_bytes = bias_ws;
    d.bias_ws = DeviceBuffer<uint8_t>(bias_ws);
    d.softmax_ws_bytes = kernels::softmax_xent_workspace_bytes(d.max_batch);
    d.softmax_ws = DeviceBuffer<uint8_t>(d.softmax_ws_bytes);
    d.x = DeviceBuffer<float>(MB * size_t(d.in_features));
    d.labels = DeviceBuffer<int32_t>(MB);
    d.x_host = PinnedBuffer<float>(B * size_t(d.in_features));
    d.labels_host = PinnedBuffer<int32_t>(B);
    d.loss = DeviceBuffer<float>(1);
    d.correct = DeviceBuffer<int32_t>(1);
    d.host_sumsq = DeviceBuffer<double>(1);
    d.result = PinnedBuffer<StepResultHost>(1);
    d.sgd_host = PinnedBuffer<kernels::SgdHyper>(2);
    d.sgd = DeviceBuffer<kernels::SgdHyper>(2);
    d.adam_host = PinnedBuffer<kernels::AdamwHyper>(1);
    d.adam = DeviceBuffer<kernels::AdamwHyper>(1);

    if (d.seeds != nullptr) {
        ESPER_REQUIRE(size_t(d.seeds->num_layers()) == d.hidden.size(),
                      "seed layers=", d.seeds->num_layers());
        d.layers.resize(d.hidden.size());
        for (size_t l = 0; l < d.layers.size(); ++l) {
            SeedLayerDev& s = d.layers[l];
            const SeedTable& t = d.seeds->table(int32_t(l));
            const size_t S = size_t(t.num_seeds());
            s.num_seeds = t.num_seeds();
            s.offsets = DeviceBuffer<int32_t>(S + 1);
            s.slot = DeviceBuffer<int32_t>(S);
            s.stage = DeviceBuffer<uint8_t>(S);
            s.kind = DeviceBuffer<uint8_t>(S);
            s.alpha = DeviceBuffer<float>(S);
            s.steps = DeviceBuffer<uint32_t>(S);
            s.tel = DeviceBuffer<double>(kTelemetryColumns * S);
            s.tel_host = PinnedBuffer<double>(kTelemetryColumns * S);
            s.updates_host = PinnedBuffer<kernels::SeedUpdate>(S);
            s.updates = DeviceBuffer<kernels::SeedUpdate>(S);
            if (d.layer_input) s.masked_slot = DeviceBuffer<int32_t>(S);
            BlueprintArenas& a = d.seeds->arenas(int32_t(l));
            for (int k = 0; k < kNumBlueprintKinds; ++k) {
                const BlueprintKind bk = BlueprintKind(k);
                const size_t n = size_t(a.capacity(bk)) * size_t(a.stride(bk));
                ArenaDev& ar = s.arenas[k];
                ar.params = DeviceBuffer<float>(n);
                ar.grads = DeviceBuffer<float>(n);
                ar.m = DeviceBuffer<float>(n);
                ar.v = DeviceBuffer<float>(d.adamw ? n : 0);
                ar.view = a.view(bk);
                ar.view.params = ar.params.get();
                ar.view.grads = ar.grads.get();
            }
            ESPER_CUDA_CHECK(cudaMemcpy(s.offsets.get(), t.chunk_offset_data(),
                                        (S + 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
            // Sized from the view at the largest batch: wide arenas (max_width >= 64, hidden >= 16)
            // then run as cuBLAS batched GEMMs, and the backward keeps one gradient partial per
            // slot and row tile (seed_forward.h, seed_backward.h).
            const kernels::SeedLayerView v = d.view(l, d.max_batch);
            s.fwd_ws = DeviceBuffer<uint8_t>(kernels::seed_forward_workspace_bytes(v));
            s.bwd_ws = DeviceBuffer<uint8_t>(kernels::seed_backward_workspace_bytes(v));
        }
    }
    ESPER_CUDA_CHECK(cudaDeviceSynchronize());  // setup memsets/copies ran on the legacy stream
    upload_all();
}

CudaBackend::~CudaBackend() {
    if (impl_ && impl_->stream.get() != nullptr) (void)cudaStreamSynchronize(impl_->stream.get());
}

void CudaBackend::copy_optimizer_state(bool to_device) {
    Impl& d = *impl_;
    const std::vector<ParamRef>& ps = d.model->params();
    const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    for (size_t i = 0; i < ps.size(); ++i) {
        const size_t n = size_t(ps[i].value->numel()) * sizeof(float);
        float* dp = d.params.get() + d.param_off[i];
        float* dm = d.m.get() + d.param_off[i];
        float* hp = ps[i].value->data();
        float* hm = d.optimizer->m_[i].data();
        ESPER_CUDA_CHECK(cudaMemcpyAsync(to_device ? static_cast<void*>(dp) : hp,
                                         to_device ? static_cast<const void*>(hp) : dp, n, kind,
                                         d.stream.get()));
        ESPER_CUDA_CHECK(cudaMemcpyAsync(to_device ? static_cast<void*>(dm) : hm,
                                         to_device ? static_cast<const void*>(hm) : dm, n, kind,
                                         d.stream.get()));
        if (d.adamw) {
            float* dv = d.v.get() + d.param_off[i];
            float* hv = d.optimizer->v_[i].data();
            ESPER_CUDA_CHECK(cudaMemcpyAsync(to_device ? static_cast<void*>(dv) : hv,
                                             to_device ? static_cast<const void*>(hv) : dv, n, kind,
                                             d.stream.get()));
        }
    }
}

void CudaBackend::upload_all() {
    Impl& d = *impl_;
    ESPER_CUDA_CHECK(cudaStreamSynchronize(d.stream.get()));  // sync-point: step boundary (restore)
    copy_optimizer_state(true);
    if (d.seeds != nullptr) {
        for (size_t l = 0; l < d.layers.size(); ++l) {
            SeedLayerDev& s = d.layers[l];
            const SeedTable& t = d.seeds->table(int32_t(l));
            const size_t S = size_t(s.num_seeds);
            s.stage_shadow.assign(t.stage_data(), t.stage_data() + S);
            s.kind_shadow.assign(t.kind_data(), t.kind_data() + S);
            s.slot_shadow.assign(t.slot_data(), t.slot_data() + S);
            s.alpha_shadow.assign(t.alpha_data(), t.alpha_data() + S);
            std::vector<uint32_t> steps(S);
            for (size_t i = 0; i < S; ++i) steps[i] = t.steps_in_stage(int32_t(i));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(s.stage.get(), s.stage_shadow.data(), S,
                                             cudaMemcpyHostToDevice, d.stream.get()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(s.kind.get(), s.kind_shadow.data(), S,
                                             cudaMemcpyHostToDevice, d.stream.get()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(s.slot.get(), s.slot_shadow.data(),
                                             S * sizeof(int32_t), cudaMemcpyHostToDevice,
                                             d.stream.get()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(s.alpha.get(), s.alpha_shadow.data(),
                                             S * sizeof(float), cudaMemcpyHostToDevice,
                                             d.stream.get()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(s.steps.get(), steps.data(), S * sizeof(uint32_t),
                                             cudaMemcpyHostToDevice, d.stream.get()));
            ESPER_CUDA_CHECK(
                cudaStreamSynchronize(d.stream.get()));  // sync-point: `steps` is local
        }
        for (const LiveSlot& e : d.live_slots()) d.upload_slot(e.layer, e.kind, e.slot);
        std::vector<LiveSlot> next = d.live_slots();
        if (next != d.live || d.live_off.size() != d.live.size()) d.set_live(std::move(next));
        d.refresh_widening();
        std::vector<uint8_t> bypass = d.compute_bypass();
        if (bypass != d.bypass) {
            d.bypass = std::move(bypass);
            d.graph_valid = false;
        }
    }
    ESPER_CUDA_CHECK(cudaStreamSynchronize(d.stream.get()));  // sync-point: step boundary (restore)
}

void CudaBackend::download_all() {
    Impl& d = *impl_;
    ESPER_CUDA_CHECK(
        cudaStreamSynchronize(d.stream.get()));  // sync-point: step boundary (snapshot)
    copy_optimizer_state(false);
    if (d.seeds != nullptr) {
        for (const LiveSlot& e : d.live_slots()) {
            // A slot taken since the last step boundary is not on the device yet: the host holds
            // its initialisation (the split init downloads right after a germination).
            const SeedLayerDev& sd = d.layers[size_t(e.layer)];
            if (sd.slot_shadow[size_t(e.seed)] != e.slot ||
                sd.kind_shadow[size_t(e.seed)] != uint8_t(e.kind))
                continue;
            BlueprintArenas& a = d.seeds->arenas(e.layer);
            const BlueprintKind k = BlueprintKind(e.kind);
            ArenaDev& ar = d.layers[size_t(e.layer)].arenas[e.kind];
            const size_t n = size_t(ar.view.stride) * sizeof(float);
            const size_t off = size_t(e.slot) * size_t(ar.view.stride);
            ESPER_CUDA_CHECK(cudaMemcpyAsync(a.params(k, e.slot).data(), ar.params.get() + off, n,
                                             cudaMemcpyDeviceToHost, d.stream.get()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(a.opt_m(k, e.slot).data(), ar.m.get() + off, n,
                                             cudaMemcpyDeviceToHost, d.stream.get()));
            if (d.adamw)
                ESPER_CUDA_CHECK(cudaMemcpyAsync(a.opt_v(k, e.slot).data(), ar.v.get() + off, n,
                                                 cudaMemcpyDeviceToHost, d.stream.get()));
        }
    }
    ESPER_CUDA_CHECK(
        cudaStreamSynchronize(d.stream.get()));  // sync-point: step boundary (snapshot)
}

void CudaBackend::sync_structure() {
    Impl& d = *impl_;
    if (d.seeds == nullptr) return;
    // sync-point: step boundary; the previous batch of updates must have left the pinned buffer
    // (normally long done: finish_step waited for the whole step).
    ESPER_CUDA_CHECK(cudaEventSynchronize(d.updates_done.get()));
    bool any = false;
    for (size_t l = 0; l < d.layers.size(); ++l) {
        SeedLayerDev& s = d.layers[l];
        const SeedTable& t = d.seeds->table(int32_t(l));
        int32_t n = 0;
        for (int32_t i = 0; i < s.num_seeds; ++i) {
            kernels::SeedUpdate u;
            u.seed = i;
            u.stage = uint8_t(t.stage(i));
            u.kind = uint8_t(t.kind(i));
            u.slot = t.slot(i);
            u.alpha = t.alpha(i);
            if (u.stage != s.stage_shadow[size_t(i)]) u.fields |= kernels::kSeedUpdateStage;
            if (u.kind != s.kind_shadow[size_t(i)]) u.fields |= kernels::kSeedUpdateKind;
            if (u.slot != s.slot_shadow[size_t(i)]) u.fields |= kernels::kSeedUpdateSlot;
            if (std::memcmp(&u.alpha, &s.alpha_shadow[size_t(i)], sizeof(float)) != 0)
                u.fields |= kernels::kSeedUpdateAlpha;
            if (u.fields == 0) continue;
            // A slot newly taken (or re-taken for another kind): its host initialisation and the
            // zeroed optimizer state go to the device arena.
            if (u.slot >= 0 && (u.fields & (kernels::kSeedUpdateSlot | kernels::kSeedUpdateKind)))
                d.upload_slot(int32_t(l), int(u.kind), u.slot);
            s.stage_shadow[size_t(i)] = u.stage;
            s.kind_shadow[size_t(i)] = u.kind;
            s.slot_shadow[size_t(i)] = u.slot;
            s.alpha_shadow[size_t(i)] = u.alpha;
            s.updates_host[size_t(n++)] = u;
        }
        if (n == 0) continue;
        ESPER_CUDA_CHECK(cudaMemcpyAsync(s.updates.get(), s.updates_host.get(),
                                         size_t(n) * sizeof(kernels::SeedUpdate),
                                         cudaMemcpyHostToDevice, d.stream.get()));
        kernels::SeedTableView tv;
        tv.num_seeds = s.num_seeds;
        tv.stage = s.stage.get();
        tv.kind = s.kind.get();
        tv.slot = s.slot.get();
        tv.alpha = s.alpha.get();
        tv.steps_in_stage = s.steps.get();
        ESPER_CUDA_CHECK(
            kernels::launch_seed_state_update(tv, s.updates.get(), n, false, d.stream.get()));
        any = true;
    }
    if (any) ESPER_CUDA_CHECK(cudaEventRecord(d.updates_done.get(), d.stream.get()));
    std::vector<LiveSlot> next = d.live_slots();
    if (next != d.live) d.set_live(std::move(next));
    d.refresh_widening();
    std::vector<uint8_t> bypass = d.compute_bypass();
    if (bypass != d.bypass) {
        d.bypass = std::move(bypass);
        d.graph_valid = false;
    }
}

void CudaBackend::set_batch(const float* x, const int32_t* y) {
    Impl& d = *impl_;
    std::memcpy(d.x_host.get(), x, size_t(d.opt.batch) * size_t(d.in_features) * sizeof(float));
    std::memcpy(d.labels_host.get(), y, size_t(d.opt.batch) * sizeof(int32_t));
}

void CudaBackend::begin_blueprint_counts() {
    Impl& d = *impl_;
    if (!d.adamw) return;
    Optimizer& o = *d.optimizer;
    for (size_t i = 0; i < d.live.size(); ++i) {
        const int32_t ti = d.train_index[i];
        if (ti < 0) continue;
        const LiveSlot& e = d.live[i];
        o.size_slot_counts(d.seeds->arenas(e.layer), e.layer);
        auto& steps = o.slot_steps_[size_t(e.layer)];
        auto& owner = o.slot_owner_[size_t(e.layer)];
        const bool same = owner[size_t(e.kind)][size_t(e.slot)] == e.seed;
        d.slot_t[size_t(ti)] = (same ? steps[size_t(e.kind)][size_t(e.slot)] : 0) + 1;
    }
}

void CudaBackend::commit_blueprint_counts() {
    Impl& d = *impl_;
    Optimizer& o = *d.optimizer;
    ++o.host_steps_;
    if (!d.adamw) return;
    for (size_t i = 0; i < d.live.size(); ++i) {
        const int32_t ti = d.train_index[i];
        if (ti < 0) continue;
        const LiveSlot& e = d.live[i];
        o.slot_owner_[size_t(e.layer)][size_t(e.kind)][size_t(e.slot)] = e.seed;
        o.slot_steps_[size_t(e.layer)][size_t(e.kind)][size_t(e.slot)] = d.slot_t[size_t(ti)];
    }
}

void CudaBackend::launch_step(double lr, double bp_lr) {
    Impl& d = *impl_;
    const OptimizerConfig& c = d.config.optimizer;
    if (d.adamw) {
        begin_blueprint_counts();
        d.adam_host[0] = {
            float(lr),    float(c.beta1),        float(c.beta2),
            float(c.eps), float(c.weight_decay), int32_t(d.optimizer->host_steps_ + 1)};
        for (size_t i = 0; i < d.live.size(); ++i) {
            const int32_t ti = d.train_index[i];
            if (ti < 0) continue;
            d.slot_adam_host[size_t(ti)] = {float(bp_lr),          float(c.beta1),
                                            float(c.beta2),        float(c.eps),
                                            float(c.weight_decay), int32_t(d.slot_t[size_t(ti)])};
        }
    } else {
        d.sgd_host[0] = {float(lr), float(c.momentum), float(c.weight_decay)};
        d.sgd_host[1] = {float(bp_lr), float(c.momentum), float(c.weight_decay)};
    }
    if (d.opt.use_graphs) {
        if (!d.graph_valid) d.capture();
        ESPER_CUDA_CHECK(cudaGraphLaunch(d.graph.get(), d.stream.get()));
    } else {
        d.enqueue_step();
    }
    ESPER_CUDA_CHECK(cudaEventRecord(d.done.get(), d.stream.get()));
}

StepResult CudaBackend::finish_step(Telemetry* telemetry) {
    Impl& d = *impl_;
    // sync-point: step boundary — loss, vitals and per-seed telemetry feed the host lifecycle.
    ESPER_CUDA_CHECK(cudaEventSynchronize(d.done.get()));
    StepResult r;
    const StepResultHost& h = d.result[0];
    r.loss = h.loss;
    r.correct = h.correct;
    r.finite = std::isfinite(h.loss) && std::isfinite(h.host_sumsq);
    for (size_t i = 0; i < d.live.size(); ++i) {
        const LiveSlot& e = d.live[i];
        BlueprintArenas& a = d.seeds->arenas(e.layer);
        const BlueprintKind k = BlueprintKind(e.kind);
        const size_t n = d.slot_floats(e);
        std::span<float> g = a.grads(k, e.slot);
        std::memcpy(g.data(), d.stage_grads.get() + d.live_off[i], n * sizeof(float));
        for (float v : g) r.finite = r.finite && std::isfinite(v);
        std::memcpy(a.params(k, e.slot).data(), d.stage_params.get() + d.live_off[i],
                    n * sizeof(float));
    }
    if (telemetry != nullptr) {
        for (size_t l = 0; l < d.layers.size(); ++l) {
            const size_t S = size_t(d.layers[l].num_seeds);
            const double* t = d.layers[l].tel_host.get();
            kernels::SeedTelemetryAccum* acc = telemetry->step_accum(int32_t(l));
            double* cols[kTelemetryColumns] = {acc->count, acc->mean,    acc->m2,
                                               acc->dead,  acc->grad_sq, acc->contribution};
            for (int c = 0; c < kTelemetryColumns; ++c)
                std::memcpy(cols[c], t + size_t(c) * S, S * sizeof(double));
        }
    }
    return r;
}

StepResult CudaBackend::run_step(const Batch& batch, const StepRates& rates, Telemetry& telemetry) {
    ESPER_REQUIRE(batch.features != nullptr && batch.rows == impl_->opt.batch,
                  "cuda step rows=", batch.rows, " batch=", impl_->opt.batch);
    sync_structure();
    set_batch(batch.features, batch.targets);
    launch_step(rates.lr, rates.blueprint_lr);
    return finish_step(&telemetry);
}

void CudaBackend::commit_step(const StepRates&) { commit_blueprint_counts(); }

void CudaBackend::synchronize() {
    ESPER_CUDA_CHECK(cudaStreamSynchronize(impl_->stream.get()));  // sync-point: caller's request
}

BatchResult CudaBackend::eval_batch(const Batch& data) {
    sync_structure();
    Impl& d = *impl_;
    const float* x = data.features;
    const int32_t* y = data.targets;
    const int32_t batch = data.rows;
    ESPER_REQUIRE(x != nullptr && data.rows == data.samples, "cuda eval rows=", data.rows);
    ESPER_REQUIRE(batch > 0 && batch <= d.max_batch, "eval batch=", batch, " max=", d.max_batch);
    ESPER_CUDA_CHECK(cudaMemcpyAsync(d.x.get(), x,
                                     size_t(batch) * size_t(d.in_features) * sizeof(float),
                                     cudaMemcpyHostToDevice, d.stream.get()));
    ESPER_CUDA_CHECK(cudaMemcpyAsync(d.labels.get(), y, size_t(batch) * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, d.stream.get()));
    d.forward(batch, false, false);
    float loss = 0.0f;
    int32_t correct = 0;
    ESPER_CUDA_CHECK(cudaMemcpyAsync(&loss, d.loss.get(), sizeof(float), cudaMemcpyDeviceToHost,
                                     d.stream.get()));
    ESPER_CUDA_CHECK(cudaMemcpyAsync(&correct, d.correct.get(), sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, d.stream.get()));
    ESPER_CUDA_CHECK(cudaStreamSynchronize(d.stream.get()));  // sync-point: evaluation result
    BatchResult r;
    r.loss = loss;
    r.correct = correct;
    r.rows = batch;
    return r;
}

int64_t CudaBackend::graph_captures() const { return impl_->captures; }

void CudaBackend::set_use_graphs(bool on) { impl_->opt.use_graphs = on; }

void CudaBackend::set_overlap_dormant(bool on) {
    impl_->opt.overlap_dormant = on;
    impl_->graph_valid = false;
}

std::string CudaBackend::device_name() const {
    int dev = 0;
    cudaDeviceProp p{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess)
        return "unknown";
    return p.name;
}

int64_t CudaBackend::grad_reduce_bytes() const {
    return impl_->data_parallel() ? impl_->reduce_floats() * int64_t(sizeof(float)) : 0;
}

double CudaBackend::last_grad_reduce_exposed_ms() const {
    const Impl& d = *impl_;
    if (!d.opt.time_grad_reduce || !d.data_parallel()) return 0.0;
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, d.backward_end.get(), d.reduce_end.get()) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1.0;
    }
    return std::max(0.0, double(ms));  // the buckets finished before backward did
}

int32_t CudaBackend::grad_buckets() const {
    const Impl& d = *impl_;
    if (!d.data_parallel()) return 0;
    return d.buckets.empty() ? 1 : int32_t(d.buckets.size());
}

double CudaBackend::last_grad_reduce_ms() const {
    const Impl& d = *impl_;
    if (!d.opt.time_grad_reduce || !d.data_parallel()) return 0.0;
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, d.reduce_begin.get(), d.reduce_end.get()) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1.0;  // timing not available for events recorded by this graph
    }
    return double(ms);
}

std::unique_ptr<StepBackend> make_cuda_backend(const Config& config, Model& model,
                                               SeedManager& seeds, Optimizer& optimizer,
                                               const StepBackendOptions& options) {
    if (options.world > 1)
        ESPER_CHECK_INPUT(options.nccl != nullptr, "run.device: cuda with ", options.world,
                          " ranks needs an NCCL communicator per rank (none was given); "
                          "use run.device: cpu (Gloo)");
    if (auto* tfm = dynamic_cast<TransformerModel*>(&model)) {
        auto backend = std::make_unique<CudaTransformerBackend>(
            config, *tfm, optimizer, options.batch, options.eval_batch,
            options.world > 1 ? options.nccl : nullptr, options.grad_bucket_bytes, &seeds);
        ESPER_LOG_AT(logger("kasmina.trainer"), LogLevel::kInfo,
                     "device=cuda model=transformer precision=", config.run.precision,
                     " grad_buckets=", backend->grad_buckets());
        return backend;
    }
    auto* mlp = dynamic_cast<MlpModel*>(&model);
    ESPER_CHECK_INPUT(mlp != nullptr, "model ", model.kind(),
                      ": no CUDA backend yet (run.device: cpu)");
    CudaBackendOptions o;
    o.batch = options.batch;
    o.eval_batch = options.eval_batch;
    o.time_grad_reduce = options.time_grad_reduce;
    o.use_graphs = config.run.cuda_graph;
    if (options.grad_bucket_bytes >= 0) o.grad_bucket_bytes = options.grad_bucket_bytes;
    if (options.world > 1) o.nccl = options.nccl;
    auto backend = std::make_unique<CudaBackend>(config, *mlp, &seeds, optimizer, o);
    ESPER_LOG_AT(logger("kasmina.trainer"), LogLevel::kInfo,
                 "device=cuda name=", backend->device_name());
    return backend;
}

}  // namespace esper::kasmina
