// The transformer host's step on the GPU (see cuda_transformer_backend.h). Every host parameter,
// gradient and optimizer moment lives in one flat fp32 device buffer each (the order of
// Model::params()), so clipping and the optimizer are single launches over all parameters. The
// forward keeps the activations the backward needs, as the CPU host does (transformer.cpp), and
// the backward mirrors it op for op. In bf16 mode every GEMM operand is cast to bf16 once: the
// weights once per step, a linear layer's input when it is made (kept as bf16 only, for the
// weight gradient), an output gradient once for its two products; fp32 accumulation and outputs.
// The training step (forward, backward, clipping, optimizer, the results' copy into pinned memory)
// is captured per batch shape as a CUDA graph (at the shape's second step; the first runs
// uncaptured) and replayed (run.cuda_graph). Its inputs (tokens, targets, the optimizer's
// hyper-parameters) are copied into fixed device buffers before each replay, so a new learning
// rate needs no re-capture. Deliberate host syncs are marked `// sync-point:`; nothing inside
// enqueue_step() syncs. With several ranks the flat gradient buffer is all-reduced in ranges of
// whole blocks (Model::params() keeps each block's tensors together), enqueued on a second
// stream during backward and joined before the optimizer.
#include "kasmina/train/cuda_transformer_backend.h"

#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "kasmina/dist/collectives.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/train/cuda_backend.h"
#include "kasmina/train/cuda_handles.h"
#include "kernels/attention.h"
#include "kernels/bias_act.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/grad_ops.h"
#include "kernels/layernorm.h"
#include "kernels/optimizer.h"
#include "kernels/seed_backward.h"
#include "kernels/seed_forward.h"
#include "kernels/softmax_xent.h"
#if ESPER_HAVE_NCCL
#include "kasmina/dist/collectives_nccl.h"
#endif

namespace esper::kasmina {

namespace {

constexpr float kLnEps = 1e-5f;  // the CPU host's (transformer.cpp)
constexpr size_t kLtWorkspace = size_t(32) << 20;
// Captured step graphs kept at once, one per batch shape (the training batch, a smaller last
// batch, ...); the oldest is dropped beyond this.
constexpr size_t kMaxGraphs = 4;

struct BlockOff {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b;
    // The block's reserved room (model.transformer.max_extra_units / max_extra_heads): extra
    // units' V [Umax, C], c [Umax], Uᵀ [Umax, C]; extra heads' slots [Hmax, head floats].
    size_t xu_v, xu_c, xu_u, xh;
};

// One extra head's activations (fp32 mode: qkv, att; bf16 mode: qkv16, att16).
struct HeadAct {
    DeviceBuffer<float> qkv, att, lse;
    DeviceBuffer<uint16_t> qkv16, att16;
};

// In bf16 mode the GEMM-only inputs a, m are kept as bf16 copies only (a16, m16: the forward's
// operands, reused by the backward's weight gradients), the attention's q, k, v and output only
// in bf16 (qkv16, att16), and GELU's input only in bf16 (f16, as the fc product writes it);
// GELU's output h is not kept per block at all (one bf16 buffer, Impl::h16, serves every block's
// fc2 product; GELU's backward writes it again from f16 for fc2's weight gradient — from the
// rounded pre-activation, so within bf16 rounding of the forward's h, which the fc product's
// epilogue computed before rounding). fp32 mode keeps qkv, att, f and h.
// The block's extra units keep their pre-activation (xu_pre, fp32 mode with their GELU output
// xu_act; xu_pre16 in bf16 mode, where the output goes through the shared h16 as the host
// units' does); its extra heads one HeadAct each.
// While a chunk seed of the block runs: chs, the seed layer's output hs (fc2's operand), and in
// bf16 mode ch, h in fp32 (the seed kernels read and write fp32).
struct BlockAct {
    DeviceBuffer<float> x_in, a, qkv, att, x_mid, m, f, h, mean1, rstd1, mean2, rstd2, lse;
    DeviceBuffer<float> ch, chs;
    DeviceBuffer<uint16_t> a16, qkv16, att16, m16, f16;
    DeviceBuffer<float> xu_pre, xu_act;
    DeviceBuffer<uint16_t> xu_pre16;
    std::vector<HeadAct> xh;
};

}  // namespace

struct CudaTransformerBackend::Impl {
    TransformerModel* model = nullptr;
    Optimizer* optimizer = nullptr;
    OptimizerConfig opt;
    bool bf16 = true, adamw = true;
    // L: the blocks computed now (TransformerModel::n_layer(); grow_depth adds to it); NB: the
    // blocks the flat buffers hold (n_layer + grow_depth.blocks, the grown ones waiting at the
    // end of the stack).
    int32_t C = 0, H = 0, D = 0, F = 0, T = 0, L = 0, NB = 0;
    bool tied = true;
    // The room (folded seeds, model.transformer.initial_extra_*): per block the extra units the
    // step computes (those in use rounded up to a multiple of 8 for bf16 operand alignment; the
    // rows past the ones in use are zero, so they add gelu(0)·0 = 0 and get zero gradients) and
    // the extra heads in use. The room's tensors sit in the flat buffers whether used or not.
    int32_t Umax = 0, Hmax = 0;
    WideningOffsets ho;  // an extra head's slot layout
    std::vector<int32_t> units, heads;

    // ---- seeds germinated on the GPU: widening (mlp_units, attention_head, lora) and chunk
    // (residual_mlp, lowrank, scale_shift over the MLP hidden units) ----
    // A live seed's slot lives in a mirror past `total` in the flat buffers p, g, m, v, w16 (the
    // host optimizer's range stops at `total`): uploaded from the host arenas when the seed starts
    // running there (or after upload_all), computed with its stage factors, its gradient scaled
    // by the stage's factor, clipped and stepped by the blueprint optimizer on the device. The
    // trained slots' parameters come back to the host arenas after every step (the lifecycle
    // reads them, e.g. a drift-controlled graft's weight norm); their optimizer moments in
    // download_all. The telemetry sums and each seed's gradient Σg² come back every step.
    SeedManager* seeds = nullptr;
    struct SeedArena {  // a base block's arena of one kind, mirrored
        // First float; a slot's floats (widening kinds: rounded up to 8; chunk kinds: the host
        // arena's stride, which the seed kernels address slots by).
        size_t base = 0, stride = 0;
        int32_t capacity = 0, hidden = 0;
    };
    // 0: mlp_units, 1: attention_head, 2: lora (the widening site's, seed_kind_index < 3);
    // 3: residual_mlp, 4: lowrank, 5: scale_shift (the chunk site's).
    static constexpr int kSeedKinds = 6;
    static constexpr int kFirstChunkKind = 3;
    static constexpr BlueprintKind kSeedKindOf[kSeedKinds] = {
        BlueprintKind::kMlpUnits,    BlueprintKind::kAttentionHead, BlueprintKind::kLora,
        BlueprintKind::kResidualMlp, BlueprintKind::kLowrank,       BlueprintKind::kScaleShift};
    static int seed_kind_index(BlueprintKind k) {
        for (int i = 0; i < kSeedKinds; ++i)
            if (kSeedKindOf[i] == k) return i;
        return -1;
    }
    static bool chunk_kind(BlueprintKind k) { return seed_kind_index(k) >= kFirstChunkKind; }
    std::vector<std::array<SeedArena, kSeedKinds>> seed_arenas;  // per base block
    size_t total_all = 0;                                        // total + the mirrors
    struct LiveSeed {
        int32_t block = 0, layer = 0, seed = 0, slot = 0;
        BlueprintKind kind = BlueprintKind::kMlpUnits;
        size_t off = 0;     // the slot's first float in the flat buffers
        size_t floats = 0;  // the slot's floats (the host arena's stride)
        size_t staged = 0;  // its parameters' first float in seed_params_host
        // units (mlp_units), D (attention_head), the rank (lora), the arena's hidden (chunk kinds)
        int32_t hidden = 0;
        float a_fwd = 0.0f, a_grad = 0.0f, a_in = 0.0f;
        bool trains = false;           // the stage trains the blueprint (the optimizer steps it)
        int32_t t = 0;                 // this step's AdamW step count of the slot (1-based)
        HeadAct head;                  // attention_head
        DeviceBuffer<float> pre, act;  // mlp_units (pre, act), lora (act = A·a), fp32 mode
        DeviceBuffer<uint16_t> pre16;  // mlp_units' pre, lora's act, bf16 mode
        bool same(const LiveSeed& o) const {
            return block == o.block && seed == o.seed && slot == o.slot && kind == o.kind;
        }
    };
    // Per block in forward order: its adapters, heads, units, then its chunk seeds.
    std::vector<LiveSeed> live;
    int32_t live_rows = 0;          // rows the live seeds' activations hold
    int32_t live_rows_in_step = 0;  // rows of the last training step (telemetry counts)
    // Per seed layer, per seed: the slot (and kind; off: its first float) whose parameters and
    // optimizer state the mirror holds for that seed, or slot -1. A seed that stops running
    // gives it up (a later germination re-initialises the slot on the host).
    struct Resident {
        int32_t slot = -1;
        BlueprintKind kind = BlueprintKind::kMlpUnits;
        size_t off = 0;
    };
    std::vector<std::vector<Resident>> resident;
    // A base block's chunk site. While one of its seeds runs a blueprint, the fused seed-layer
    // kernels (kernels/seed_forward.h, seed_backward.h) run over its MLP hidden h, in fp32, with
    // its seed table's state (uploaded every step: α moves) and the mirrored arenas, and their
    // telemetry of all its seeds comes back with the step (SeedTelemetryAccum order). Otherwise
    // its seeds' telemetry is measured by kernels::launch_chunk_moments: the moments of each
    // chunk of h (forward) and of ∂L/∂h (backward: its Σ², the gradient norm), in that order.
    struct ChunkSite {
        int32_t layer = -1;  // its seed layer, or -1: the block has none
        int32_t num_seeds = 0;
        bool running = false;
        int32_t rows = 0;  // rows its workspaces are sized for
        // [S + 1] chunk offsets (int32), [S] slots (int32), [S] α (float), [S] stages, [S] kinds.
        DeviceBuffer<uint8_t> state;
        PinnedBuffer<uint8_t> state_host;
        DeviceBuffer<int32_t> offsets;  // [S + 1], fixed: the dormant telemetry's chunks
        DeviceBuffer<uint8_t> fwd_ws, bwd_ws;
        size_t tel = 0;  // its 6·S telemetry doubles in chunk_tel
        size_t state_bytes() const { return size_t(12 * num_seeds + 4 + 2 * num_seeds); }
    };
    std::vector<ChunkSite> chunks;  // per base block
    DeviceBuffer<double> chunk_tel;
    PinnedBuffer<double> chunk_tel_host;
    bool chunk_running = false;  // some chunk site runs this step
    // While a chunk seed runs: the seed layer's input gradient, and in bf16 mode its output
    // gradient in fp32 ([rows_cap, F] each; fp32 mode has dbig for the latter).
    DeviceBuffer<float> cdy, cdh;
    bool training_pass = false;  // the forward is a training step's (telemetry) or evaluation's
    // Per live seed: Σg² of its gradient at the stage's factor (finiteness, clipping and the
    // blueprint gradient norm), its optimizer's hyper-parameters; the trained slots' parameters
    // after the step, staged for the host arenas.
    DeviceBuffer<double> seed_sq;
    PinnedBuffer<double> seed_sq_host;
    DeviceBuffer<kernels::AdamwHyper> seed_adam;
    PinnedBuffer<kernels::AdamwHyper> seed_adam_host;
    DeviceBuffer<kernels::SgdHyper> seed_sgd;
    PinnedBuffer<kernels::SgdHyper> seed_sgd_host;
    PinnedBuffer<float> seed_params_host;
    // Telemetry sums of a step, in double: per block 3 (the moments of its MLP hidden units, what
    // the seeds that are not running measure), then per live seed 5 (⟨act, g⟩, ⟨g, g⟩ with g its
    // output gradient as if α = 1, and its activation's moments).
    static constexpr size_t kLiveTel = 5;
    DeviceBuffer<double> tel_dev;
    PinnedBuffer<double> tel_host;
    bool telemetry = false;  // the model has widening sites and a seed manager is attached
    size_t live_tel(size_t i) const { return size_t(NB) * 3 + i * kLiveTel; }

    CudaStream stream;
    cublasLtHandle_t lt = nullptr;
    DeviceBuffer<uint8_t> lt_ws;

    // ---- parameters (flat, Model::params() order) ----
    std::vector<size_t> off;  // per param
    size_t total = 0;
    DeviceBuffer<float> p, g, m, v;
    DeviceBuffer<uint16_t> w16;  // bf16 copy of p (bf16 mode)
    size_t wte = 0, wpe = 0, lnf_w = 0, lnf_b = 0, head = 0;
    std::vector<BlockOff> blocks;
    // block_begin[l]: block l's first float in the flat buffers; block_begin[NB]: the final
    // LayerNorm's (the head, untied, follows it). Block l's tensors fill [block_begin[l],
    // block_begin[l + 1]).
    std::vector<size_t> block_begin;

    // ---- data parallelism (world > 1) ----
    NcclComm* nccl = nullptr;
    int64_t bucket_bytes = CudaBackendOptions::kDefaultGradBucketBytes;
    // A bucket: the flat range of blocks lo..hi (hi == L - 1 also takes the blocks still
    // waiting to grow, the final LayerNorm and an untied head), all-reduced once block lo's
    // backward is done.
    struct GradBucket {
        int32_t lo = 0, hi = 0;
        size_t begin = 0, end = 0;
    };
    std::vector<GradBucket> buckets;
    std::vector<int32_t> bucket_closing;  // per block: the bucket it closes, or -1
    CudaStream comm;
    std::vector<CudaEvent> grads_ready;  // per bucket, and one for the embeddings
    CudaEvent comm_done;

    // ---- grow_depth.warmup_steps: the grown blocks' flat range [ramp_lo, ramp_hi) steps with
    // hyper-parameters of their own (adam_dev[1] / sgd_dev[1]: the ramped rate); fixed once the
    // blocks joined, so a captured step keeps it ----
    size_t ramp_lo = 0, ramp_hi = 0;

    // ---- activations and scratch, sized for `rows_cap` rows ----
    int32_t rows_cap = 0;
    std::vector<BlockAct> act;
    DeviceBuffer<float> x_out, xf, meanf, rstdf, logits, gres, dtmp, dbig, dqkv;
    DeviceBuffer<uint16_t> sa16, sb16, xf16, h16;  // h16: GELU's output, bf16 mode, any block
    // bf16 mode: the attention's output gradient and its q, k, v gradients, in bf16 (the
    // attention runs on bf16 tensors: cuDNN's fused kernels from 128 positions up).
    DeviceBuffer<uint16_t> datt16, dqkv16;
    DeviceBuffer<uint8_t> ln_ws, attn_ws, xent_ws, bias_ws;
    DeviceBuffer<int32_t> tokens, targets, correct;
    PinnedBuffer<int32_t> tokens_host, targets_host;  // staging of the batch (rows_cap each)
    DeviceBuffer<float> loss;
    DeviceBuffer<double> sumsq;
    DeviceBuffer<kernels::AdamwHyper> adam_dev;
    DeviceBuffer<kernels::SgdHyper> sgd_dev;
    PinnedBuffer<kernels::AdamwHyper> adam_host;
    PinnedBuffer<kernels::SgdHyper> sgd_host;
    struct Result {
        float loss;
        int32_t correct;
        double sumsq;
    };
    PinnedBuffer<Result> result;

    // ---- the captured step: declared last, so the graphs and the event go first ----
    bool use_graph = true;
    int64_t captures = 0;
    struct ShapeGraph {
        int32_t samples = 0, seq = 0;
        CudaGraphExec exec;
    };
    std::vector<ShapeGraph> graphs;  // most recently captured last
    // Shapes whose step ran once uncaptured: the first step of a shape warms up outside a capture
    // (lazy kernel loading, cuBLASLt's first use of a shape, kernel attributes); the second
    // captures it.
    std::vector<std::pair<int32_t, int32_t>> warmed;
    CudaEvent done;  // recorded after each step: its results are in `result`

    float* P(size_t o) const { return p.get() + o; }
    float* G(size_t o) const { return g.get() + o; }
    const uint16_t* W16(size_t o) const { return bf16 ? w16.get() + o : nullptr; }
    cudaStream_t s() const { return stream.get(); }

    void ensure_rows(int32_t rows) {
        if (rows <= rows_cap) return;
        // sync-point: step boundary (activation buffers grow for a larger batch)
        ESPER_CUDA_CHECK(cudaStreamSynchronize(s()));
        const size_t n = size_t(rows);
        act.clear();
        act.resize(size_t(L));
        const size_t lse_n = n * size_t(H);  // [samples, H, seq] ≤ rows · H
        const size_t n32 = bf16 ? 0 : n;     // rows of the fp32-only GEMM inputs
        const size_t n16 = bf16 ? n : 0;
        for (BlockAct& b : act) {
            b.x_in = DeviceBuffer<float>(n * C);
            b.a = DeviceBuffer<float>(n32 * C);
            b.qkv = DeviceBuffer<float>(n32 * 3 * C);
            b.att = DeviceBuffer<float>(n32 * C);
            b.x_mid = DeviceBuffer<float>(n * C);
            b.m = DeviceBuffer<float>(n32 * C);
            b.f = DeviceBuffer<float>(n32 * F);
            b.f16 = DeviceBuffer<uint16_t>(n16 * F);
            b.h = DeviceBuffer<float>(n32 * F);
            b.a16 = DeviceBuffer<uint16_t>(n16 * C);
            b.qkv16 = DeviceBuffer<uint16_t>(n16 * 3 * C);
            b.att16 = DeviceBuffer<uint16_t>(n16 * C);
            b.m16 = DeviceBuffer<uint16_t>(n16 * C);
            b.mean1 = DeviceBuffer<float>(n);
            b.rstd1 = DeviceBuffer<float>(n);
            b.mean2 = DeviceBuffer<float>(n);
            b.rstd2 = DeviceBuffer<float>(n);
            b.lse = DeviceBuffer<float>(lse_n);
        }
        for (int32_t l = 0; l < L; ++l) {
            BlockAct& b = act[size_t(l)];
            const size_t u = size_t(units[size_t(l)]);
            b.xu_pre = DeviceBuffer<float>(n32 * u);
            b.xu_act = DeviceBuffer<float>(n32 * u);
            b.xu_pre16 = DeviceBuffer<uint16_t>(n16 * u);
            b.xh.resize(size_t(heads[size_t(l)]));
            for (HeadAct& e : b.xh) {
                e.qkv = DeviceBuffer<float>(n32 * 3 * D);
                e.att = DeviceBuffer<float>(n32 * D);
                e.lse = DeviceBuffer<float>(n);
                e.qkv16 = DeviceBuffer<uint16_t>(n16 * 3 * D);
                e.att16 = DeviceBuffer<uint16_t>(n16 * D);
            }
        }
        // The extra units' GELU output and gradients go through the host units' scratch
        // (h16, dbig / sb16); an extra head's output and q, k, v gradients (4·D ≤ F) too.
        const size_t wide = size_t(std::max(F, *std::max_element(units.begin(), units.end())));
        x_out = DeviceBuffer<float>(n * C);
        xf = DeviceBuffer<float>((bf16 ? 0 : n) * C);
        xf16 = DeviceBuffer<uint16_t>((bf16 ? n : 0) * C);
        meanf = DeviceBuffer<float>(n);
        rstdf = DeviceBuffer<float>(n);
        logits = DeviceBuffer<float>(n * kByteVocab);
        gres = DeviceBuffer<float>(n * C);
        dtmp = DeviceBuffer<float>(n * C);
        dbig = DeviceBuffer<float>((bf16 ? 0 : n) * wide);   // bf16: h's gradient goes to sb16
        dqkv = DeviceBuffer<float>((bf16 ? 0 : n) * 3 * C);  // bf16: qkv16, dqkv16 instead
        // sa16: the bf16 dlogits, then each block's bf16 output gradients (C wide).
        const size_t widest = size_t(std::max(kByteVocab, C));
        sa16 = DeviceBuffer<uint16_t>(bf16 ? n * widest : 0);
        sb16 = DeviceBuffer<uint16_t>(bf16 ? n * wide : 0);
        h16 = DeviceBuffer<uint16_t>(bf16 ? n * wide : 0);
        datt16 = DeviceBuffer<uint16_t>(bf16 ? n * C : 0);
        dqkv16 = DeviceBuffer<uint16_t>(bf16 ? n * 3 * C : 0);
        ln_ws = DeviceBuffer<uint8_t>(kernels::layernorm_backward_workspace_bytes(rows, C));
        kernels::AttentionShape shape;
        shape.batch = rows;  // an upper bound: samples · H · seq ≤ rows · H
        shape.seq = 1;
        shape.heads = H;
        attn_ws = DeviceBuffer<uint8_t>(kernels::attention_backward_workspace_bytes(shape));
        xent_ws = DeviceBuffer<uint8_t>(kernels::softmax_xent_workspace_bytes(rows));
        bias_ws = DeviceBuffer<uint8_t>(
            kernels::bias_act_backward_workspace_bytes(rows, std::max(int32_t(wide), 3 * C)));
        tokens = DeviceBuffer<int32_t>(n);
        targets = DeviceBuffer<int32_t>(n);
        tokens_host = PinnedBuffer<int32_t>(n);
        targets_host = PinnedBuffer<int32_t>(n);
        rows_cap = rows;
        live_rows = 0;   // the live seeds' activations are sized again
        graphs.clear();  // they name the buffers just replaced
        warmed.clear();
        ESPER_CUDA_CHECK(cudaDeviceSynchronize());  // the zeroing memsets ran on the legacy stream
    }

    // Row-major D = op(A)·op(B) (+ epilogue) in the run's precision. a16/b16: the operands' bf16
    // copies, which bf16 mode needs (every producer writes one: the weights' cast, LayerNorm,
    // GELU, the attention, the output gradients' casts); fp32 mode reads a and b. d16: write D
    // in bf16 there instead of fp32 to d (bf16 mode, no epilogue).
    void gemm(kernels::GemmSpec spec, const float* a, const uint16_t* a16, const float* b,
              const uint16_t* b16, float* d, uint16_t* d16 = nullptr) {
        spec.d_type = d16 ? kernels::GemmDtype::kBfloat16 : kernels::GemmDtype::kFloat32;
        const void* pa = a;
        const void* pb = b;
        if (bf16) {
            ESPER_REQUIRE(a16 != nullptr && b16 != nullptr,
                          "cuda transformer: a bf16 product without its bf16 operands");
            spec.ab_type = kernels::GemmDtype::kBfloat16;
            pa = a16;
            pb = b16;
        } else {
            spec.ab_type = kernels::GemmDtype::kFloat32;
        }
        void* pd = d16 ? static_cast<void*>(d16) : static_cast<void*>(d);
        ESPER_CUDA_CHECK(
            kernels::launch_gemm(lt, spec, pa, pb, pd, lt_ws.get(), lt_ws.size(), s()));
    }
    // In bf16 mode: a bf16 copy of x[count] in sa16 (one cast for both products of a gradient);
    // null in fp32 mode.
    const uint16_t* cast_a(const float* x, int64_t count) {
        if (!bf16) return nullptr;
        ESPER_CUDA_CHECK(kernels::launch_cast_to_bf16(x, sa16.get(), count, s()));
        return sa16.get();
    }
    // y[n, out] = x[n, in]·W[out, in]ᵀ (+ the bias at offset b, kNoBias for none) (+ residual
    // [n, out], not overlapping y); x16: x in bf16, or null; y16: write y in bf16 there instead
    // (bf16 mode; the bias then added in bf16, as autocast adds it).
    static constexpr size_t kNoBias = ~size_t(0);
    static kernels::GemmSpec linear_spec(int32_t n, int32_t in, int32_t out) {
        kernels::GemmSpec sp;
        sp.trans_b = true;
        sp.m = n;
        sp.n = out;
        sp.k = in;
        sp.lda = in;
        sp.ldb = in;
        sp.ldd = out;
        return sp;
    }
    void linear(const float* x, const uint16_t* x16, size_t w, size_t b, float* y, int32_t n,
                int32_t in, int32_t out, const float* residual = nullptr, uint16_t* y16 = nullptr) {
        kernels::GemmSpec sp = linear_spec(n, in, out);
        sp.beta = residual ? 1.0f : 0.0f;
        sp.c = residual;
        if (b != kNoBias) {
            sp.epilogue = kernels::GemmEpilogue::kBias;
            sp.bias_type = y16 ? kernels::GemmDtype::kBfloat16 : kernels::GemmDtype::kFloat32;
            sp.bias = y16 ? static_cast<const void*>(W16(b)) : static_cast<const void*>(P(b));
        }
        gemm(sp, x, x16, P(w), W16(w), y, y16);
    }
    // bf16 mode: y16[n, out] = bf16(gelu(x16·W[out, in]ᵀ + b)) and aux16 = bf16(x16·Wᵀ + b), the
    // pre-activation GELU's backward reads — one product with cuBLASLt's GELU_AUX_BIAS epilogue.
    void linear_gelu_bf16(const uint16_t* x16, size_t w, size_t b, uint16_t* y16, uint16_t* aux16,
                          int32_t n, int32_t in, int32_t out) {
        kernels::GemmSpec sp = linear_spec(n, in, out);
        sp.epilogue = kernels::GemmEpilogue::kBiasGelu;
        sp.bias_type = kernels::GemmDtype::kBfloat16;
        sp.bias = W16(b);
        sp.aux = aux16;
        sp.ld_aux = out;
        gemm(sp, nullptr, x16, P(w), W16(w), nullptr, y16);
    }
    // dx[n, in] = dy[n, out]·W[out, in] (+ dx when beta = 1); dy16: dy in bf16, or null;
    // dx16: write dx in bf16 there instead of dx.
    void linear_dx(const float* dy, const uint16_t* dy16, size_t w, float* dx, int32_t n,
                   int32_t in, int32_t out, uint16_t* dx16 = nullptr, float beta = 0.0f,
                   float alpha = 1.0f) {
        kernels::GemmSpec sp;
        sp.alpha = alpha;
        sp.m = n;
        sp.n = in;
        sp.k = out;
        sp.lda = out;
        sp.ldb = in;
        sp.ldd = in;
        sp.beta = beta;
        gemm(sp, dy, dy16, P(w), W16(w), dx, dx16);
    }
    // y[n, out] += alpha·x[n, in]·W[out, in]ᵀ in place (fp32 y).
    void linear_acc(const float* x, const uint16_t* x16, size_t w, float* y, int32_t n, int32_t in,
                    int32_t out, float alpha = 1.0f) {
        kernels::GemmSpec sp = linear_spec(n, in, out);
        sp.alpha = alpha;
        sp.beta = 1.0f;
        gemm(sp, x, x16, P(w), W16(w), y);
    }
    // dW[out, in] += dy[n, out]ᵀ·x[n, in]; x16, dy16: bf16 copies, or null.
    void linear_dw(const float* x, const uint16_t* x16, const float* dy, const uint16_t* dy16,
                   size_t w, int32_t n, int32_t in, int32_t out) {
        kernels::GemmSpec sp;
        sp.trans_a = true;
        sp.m = out;
        sp.n = in;
        sp.k = n;
        sp.lda = out;
        sp.ldb = in;
        sp.ldd = in;
        sp.beta = 1.0f;
        gemm(sp, dy, dy16, x, x16, G(w));
    }
    // db[cols] = Σ_r dy[r, :] (deterministic column sums; dy is left as it was); dy in bf16
    // (dy_bf16) or fp32.
    void bias_grad(const void* dy, bool dy_bf16, size_t b, int32_t n, int32_t cols) {
        ESPER_CUDA_CHECK(kernels::launch_bias_act_backward_bf16(
            dy, dy_bf16, nullptr, false, nullptr, G(b), n, cols, kernels::Activation::kIdentity,
            bias_ws.get(), bias_ws.size(), s()));
    }
    // A linear layer's output gradient dy [n, cols]: its bias gradient, and in bf16 mode its
    // bf16 copy for the two products (into sa16, one pass for both); null in fp32 mode.
    const uint16_t* output_grad(const float* dy, size_t b, int32_t n, int32_t cols) {
        if (!bf16) {
            bias_grad(dy, false, b, n, cols);
            return nullptr;
        }
        ESPER_CUDA_CHECK(kernels::launch_bias_act_backward_bf16(
            dy, false, nullptr, false, sa16.get(), G(b), n, cols, kernels::Activation::kIdentity,
            bias_ws.get(), bias_ws.size(), s()));
        return sa16.get();
    }
    kernels::AttentionShape attn_shape(int32_t samples, int32_t seq) const {
        kernels::AttentionShape sh;
        sh.batch = samples;
        sh.seq = seq;
        sh.heads = H;
        sh.head_dim = D;
        sh.ld_qkv = 3 * int64_t(C);
        sh.ld_out = C;
        sh.scale = 1.0f / std::sqrt(float(D));
        return sh;
    }

    // One extra head: its q, k, v rows 3·D apart (Wq, Wk, Wv are the slot's first 3·D rows).
    kernels::AttentionShape head_shape(int32_t samples, int32_t seq) const {
        kernels::AttentionShape sh = attn_shape(samples, seq);
        sh.heads = 1;
        sh.ld_qkv = 3 * int64_t(D);
        sh.ld_out = D;
        return sh;
    }
    size_t head_slot(int32_t l, int32_t h) const {
        return blocks[size_t(l)].xh + size_t(h) * size_t(ho.floats);
    }

    // A running seed's telemetry sums into tel[0..5): ⟨act, g⟩, ⟨g, g⟩ (g: ∂L/∂act as if α = 1)
    // and act's moments (Σx, Σx², dead count), over `count` values, bf16 or fp32 as the step
    // keeps them.
    void seed_sums(const void* act, const void* g, bool in_bf16, int64_t count, double* tel) {
        ESPER_CUDA_CHECK(kernels::launch_dot(act, in_bf16, g, in_bf16, count, tel, s()));
        ESPER_CUDA_CHECK(kernels::launch_dot(g, in_bf16, g, in_bf16, count, tel + 1, s()));
        ESPER_CUDA_CHECK(kernels::launch_moments(act, in_bf16, count, tel + 2, s()));
    }

    // x_mid += a_fwd·Wo·attention(q, k, v) of one head with its slot at `slot`, (q, k, v) =
    // Wqkv·a + bqkv (the CPU host's extra heads and attention_head seeds; transformer.cpp).
    void head_forward(int32_t l, HeadAct& e, size_t slot, int32_t samples, int32_t seq,
                      float a_fwd) {
        BlockAct& b = act[size_t(l)];
        const int32_t n = samples * seq;
        const kernels::AttentionShape sh = head_shape(samples, seq);
        if (bf16) {
            linear(b.a.get(), b.a16.get(), slot + size_t(ho.in_w), slot + size_t(ho.in_b), nullptr,
                   n, C, 3 * D, nullptr, e.qkv16.get());
            const uint16_t* q16 = e.qkv16.get();
            ESPER_CUDA_CHECK(kernels::launch_attention_forward(
                sh, kernels::AttentionDtype::kBfloat16, q16, q16 + D, q16 + 2 * D, e.att16.get(),
                e.lse.get(), s()));
        } else {
            linear(b.a.get(), nullptr, slot + size_t(ho.in_w), slot + size_t(ho.in_b), e.qkv.get(),
                   n, C, 3 * D);
            ESPER_CUDA_CHECK(kernels::launch_attention_forward(
                sh, kernels::AttentionDtype::kFloat32, e.qkv.get(), e.qkv.get() + D,
                e.qkv.get() + 2 * D, e.att.get(), e.lse.get(), s()));
        }
        if (a_fwd != 0.0f)
            linear_acc(e.att.get(), e.att16.get(), slot + size_t(ho.out_w), b.x_mid.get(), n, D, C,
                       a_fwd);
    }
    void heads_forward(int32_t l, int32_t samples, int32_t seq) {
        for (int32_t h = 0; h < heads[size_t(l)]; ++h)
            head_forward(l, act[size_t(l)].xh[size_t(h)], head_slot(l, h), samples, seq, 1.0f);
        for (LiveSeed& e : live)
            if (e.block == l && e.kind == BlueprintKind::kAttentionHead)
                head_forward(l, e.head, e.off, samples, seq, e.a_fwd);
    }

    // One head's gradients, after the host attention's (gmid: ∂L/∂x_mid, gmid16 its bf16 copy
    // in bf16 mode), as if its α were 1: its parameters' into g at `slot`, its input gradient
    // times a_in added into da (∂L/∂LN1's output). tel: a seed's 5 telemetry sums, or null.
    void head_backward(int32_t l, HeadAct& e, size_t slot, int32_t samples, int32_t seq,
                       const float* gmid, const uint16_t* gmid16, float* da, float a_in,
                       double* tel) {
        BlockAct& b = act[size_t(l)];
        const int32_t n = samples * seq;
        const kernels::AttentionShape sh = head_shape(samples, seq);
        const size_t nd = size_t(n) * size_t(D);
        const size_t wo = slot + size_t(ho.out_w);
        if (bf16) {
            uint16_t* dho16 = sb16.get();  // [n, D]
            uint16_t* dhq16 = dho16 + nd;  // [n, 3·D]
            linear_dx(gmid, gmid16, wo, nullptr, n, D, C, dho16);
            if (tel != nullptr) seed_sums(e.att16.get(), dho16, true, int64_t(nd), tel);
            linear_dw(e.att.get(), e.att16.get(), gmid, gmid16, wo, n, D, C);
            const uint16_t* q16 = e.qkv16.get();
            ESPER_CUDA_CHECK(kernels::launch_attention_backward(
                sh, kernels::AttentionDtype::kBfloat16, q16, q16 + D, q16 + 2 * D, e.att16.get(),
                dho16, e.lse.get(), dhq16, dhq16 + D, dhq16 + 2 * D, attn_ws.get(), attn_ws.size(),
                s()));
            bias_grad(dhq16, true, slot + size_t(ho.in_b), n, 3 * D);
            linear_dw(b.a.get(), b.a16.get(), nullptr, dhq16, slot + size_t(ho.in_w), n, C, 3 * D);
            if (a_in != 0.0f)
                linear_dx(nullptr, dhq16, slot + size_t(ho.in_w), da, n, C, 3 * D, nullptr, 1.0f,
                          a_in);
        } else {
            float* dho = dbig.get();
            float* dhq = dho + nd;
            linear_dx(gmid, nullptr, wo, dho, n, D, C);
            if (tel != nullptr) seed_sums(e.att.get(), dho, false, int64_t(nd), tel);
            linear_dw(e.att.get(), nullptr, gmid, nullptr, wo, n, D, C);
            ESPER_CUDA_CHECK(kernels::launch_attention_backward(
                sh, kernels::AttentionDtype::kFloat32, e.qkv.get(), e.qkv.get() + D,
                e.qkv.get() + 2 * D, e.att.get(), dho, e.lse.get(), dhq, dhq + D, dhq + 2 * D,
                attn_ws.get(), attn_ws.size(), s()));
            bias_grad(dhq, false, slot + size_t(ho.in_b), n, 3 * D);
            linear_dw(b.a.get(), nullptr, dhq, nullptr, slot + size_t(ho.in_w), n, C, 3 * D);
            if (a_in != 0.0f)
                linear_dx(dhq, nullptr, slot + size_t(ho.in_w), da, n, C, 3 * D, nullptr, 1.0f,
                          a_in);
        }
    }
    void heads_backward(int32_t l, int32_t samples, int32_t seq, const float* gmid,
                        const uint16_t* gmid16, float* da) {
        for (int32_t h = 0; h < heads[size_t(l)]; ++h)
            head_backward(l, act[size_t(l)].xh[size_t(h)], head_slot(l, h), samples, seq, gmid,
                          gmid16, da, 1.0f, nullptr);
        for (size_t i = 0; i < live.size(); ++i) {
            LiveSeed& e = live[i];
            if (e.block == l && e.kind == BlueprintKind::kAttentionHead)
                head_backward(l, e.head, e.off, samples, seq, gmid, gmid16, da, e.a_in,
                              tel_dev.get() + live_tel(i));
        }
    }

    // qkv += a_fwd·(a·Aᵀ)·Bᵀ of block l's live lora seeds (slot layout blueprints.h: A [r, C],
    // B [3C, r]; the CPU host's, transformer.cpp), into qkv16 in bf16 mode (the sum rounded to
    // bf16 once more, as autocast would add it).
    void loras_forward(int32_t l, int32_t n) {
        BlockAct& b = act[size_t(l)];
        for (LiveSeed& e : live) {
            if (e.block != l || e.kind != BlueprintKind::kLora) continue;
            const WideningOffsets o = widening_offsets(e.kind, C, e.hidden);
            const int32_t r = e.hidden;
            const size_t in_w = e.off + size_t(o.in_w), out_w = e.off + size_t(o.out_w);
            linear(b.a.get(), b.a16.get(), in_w, kNoBias, e.act.get(), n, C, r, nullptr,
                   bf16 ? e.pre16.get() : nullptr);
            if (e.a_fwd == 0.0f) continue;
            if (bf16) {
                kernels::GemmSpec sp = linear_spec(n, r, 3 * C);
                sp.alpha = e.a_fwd;
                sp.beta = 1.0f;
                gemm(sp, nullptr, e.pre16.get(), P(out_w), W16(out_w), nullptr, b.qkv16.get());
            } else {
                linear_acc(e.act.get(), nullptr, out_w, b.qkv.get(), n, r, 3 * C, e.a_fwd);
            }
        }
    }

    // Block l's live lora seeds' gradients as if α were 1 (dq: ∂L/∂qkv, dq16 its bf16 copy in
    // bf16 mode), with their telemetry sums; their input gradients times a_in are added into da
    // (∂L/∂LN1's output).
    void loras_backward(int32_t l, int32_t n, const float* dq, const uint16_t* dq16, float* da) {
        BlockAct& b = act[size_t(l)];
        for (size_t i = 0; i < live.size(); ++i) {
            LiveSeed& e = live[i];
            if (e.block != l || e.kind != BlueprintKind::kLora) continue;
            const WideningOffsets o = widening_offsets(e.kind, C, e.hidden);
            const int32_t r = e.hidden;
            const int64_t nr = int64_t(n) * r;
            const size_t in_w = e.off + size_t(o.in_w), out_w = e.off + size_t(o.out_w);
            double* tel = tel_dev.get() + live_tel(i);
            // g = ∂L/∂(A·a) = dq·B [n, r], in bf16 (sb16) or fp32 (dbig).
            float* g = bf16 ? nullptr : dbig.get();
            uint16_t* g16 = bf16 ? sb16.get() : nullptr;
            linear_dx(dq, dq16, out_w, g, n, r, 3 * C, g16);
            if (bf16)
                seed_sums(e.pre16.get(), g16, true, nr, tel);
            else
                seed_sums(e.act.get(), g, false, nr, tel);
            linear_dw(e.act.get(), e.pre16.get(), dq, dq16, out_w, n, r, 3 * C);  // gB
            linear_dw(b.a.get(), b.a16.get(), g, g16, in_w, n, C, r);             // gA
            if (e.a_in != 0.0f) linear_dx(g, g16, in_w, da, n, C, r, nullptr, 1.0f, e.a_in);
        }
    }

    // out += gelu(m·Vᵀ + c)·U of block l's extra units (the CPU host's; transformer.cpp).
    void units_forward(int32_t l, int32_t n, float* out) {
        const int32_t u = units[size_t(l)];
        if (u == 0) return;
        BlockAct& b = act[size_t(l)];
        const BlockOff& o = blocks[size_t(l)];
        if (bf16) {
            linear_gelu_bf16(b.m16.get(), o.xu_v, o.xu_c, h16.get(), b.xu_pre16.get(), n, C, u);
            linear_dx(nullptr, h16.get(), o.xu_u, out, n, C, u, nullptr, 1.0f);
        } else {
            linear(b.m.get(), nullptr, o.xu_v, kNoBias, b.xu_pre.get(), n, C, u);
            ESPER_CUDA_CHECK(kernels::launch_bias_act_forward(b.xu_pre.get(), P(o.xu_c),
                                                              b.xu_act.get(), n, u,
                                                              kernels::Activation::kGeluTanh, s()));
            linear_dx(b.xu_act.get(), nullptr, o.xu_u, out, n, C, u, nullptr, 1.0f);
        }
    }

    // out += a_fwd·U·gelu(V·m + c) of block l's live mlp_units seeds (slot layout
    // blueprints.h: V [k, C], c [k], U [C, k]).
    void seed_units_forward(int32_t l, int32_t n, float* out) {
        BlockAct& b = act[size_t(l)];
        for (LiveSeed& e : live) {
            if (e.block != l || e.kind != BlueprintKind::kMlpUnits) continue;
            const WideningOffsets o = widening_offsets(e.kind, C, e.hidden);
            const int32_t k = e.hidden;
            if (bf16) {
                linear_gelu_bf16(b.m16.get(), e.off + size_t(o.in_w), e.off + size_t(o.in_b),
                                 h16.get(), e.pre16.get(), n, C, k);
            } else {
                linear(b.m.get(), nullptr, e.off + size_t(o.in_w), kNoBias, e.pre.get(), n, C, k);
                ESPER_CUDA_CHECK(kernels::launch_bias_act_forward(
                    e.pre.get(), P(e.off + size_t(o.in_b)), e.act.get(), n, k,
                    kernels::Activation::kGeluTanh, s()));
            }
            if (e.a_fwd != 0.0f)
                linear_acc(e.act.get(), h16.get(), e.off + size_t(o.out_w), out, n, k, C, e.a_fwd);
        }
    }

    // Block l's live mlp_units seeds' gradients as if α were 1 (gout: ∂L/∂ the block's output,
    // gout16 its bf16 copy in bf16 mode), with their telemetry sums; their input gradients times
    // a_in are added into dm.
    void seed_units_backward(int32_t l, int32_t n, const float* gout, const uint16_t* gout16,
                             float* dm) {
        BlockAct& b = act[size_t(l)];
        for (size_t i = 0; i < live.size(); ++i) {
            LiveSeed& e = live[i];
            if (e.block != l || e.kind != BlueprintKind::kMlpUnits) continue;
            const WideningOffsets o = widening_offsets(e.kind, C, e.hidden);
            const int32_t k = e.hidden;
            const int64_t nk = int64_t(n) * k;
            double* tel = tel_dev.get() + live_tel(i);
            const size_t in_w = e.off + size_t(o.in_w), in_b = e.off + size_t(o.in_b),
                         out_w = e.off + size_t(o.out_w);
            if (bf16) {
                // ∂L/∂act (g16), GELU's backward into dz16, the activation again into h16.
                uint16_t* g16 = sb16.get();
                uint16_t* dz16 = g16 + nk;
                linear_dx(gout, gout16, out_w, nullptr, n, k, C, g16);
                ESPER_CUDA_CHECK(kernels::launch_bias_act_backward_bf16(
                    g16, true, e.pre16.get(), true, dz16, G(in_b), n, k,
                    kernels::Activation::kGeluTanh, bias_ws.get(), bias_ws.size(), s(), h16.get()));
                seed_sums(h16.get(), g16, true, nk, tel);
                linear_dw(nullptr, h16.get(), gout, gout16, out_w, n, k, C);
                linear_dw(b.m.get(), b.m16.get(), nullptr, dz16, in_w, n, C, k);
                if (e.a_in != 0.0f)
                    linear_dx(nullptr, dz16, in_w, dm, n, C, k, nullptr, 1.0f, e.a_in);
            } else {
                float* g = dbig.get();
                float* dz = g + nk;
                linear_dx(gout, nullptr, out_w, g, n, k, C);
                seed_sums(e.act.get(), g, false, nk, tel);
                ESPER_CUDA_CHECK(kernels::launch_bias_act_backward(
                    g, e.pre.get(), dz, G(in_b), n, k, kernels::Activation::kGeluTanh,
                    bias_ws.get(), bias_ws.size(), s()));
                linear_dw(e.act.get(), nullptr, gout, nullptr, out_w, n, k, C);
                linear_dw(b.m.get(), nullptr, dz, nullptr, in_w, n, C, k);
                if (e.a_in != 0.0f)
                    linear_dx(dz, nullptr, in_w, dm, n, C, k, nullptr, 1.0f, e.a_in);
            }
        }
    }

    // Block l's extra units' gradients (gout: ∂L/∂ the block's output, gout16 its bf16 copy in
    // bf16 mode); their input gradient is added into dm (∂L/∂LN2's output).
    void units_backward(int32_t l, int32_t n, const float* gout, const uint16_t* gout16,
                        float* dm) {
        const int32_t u = units[size_t(l)];
        if (u == 0) return;
        BlockAct& b = act[size_t(l)];
        const BlockOff& o = blocks[size_t(l)];
        if (bf16) {
            // ∂L/∂act in bf16 (sb16), GELU's backward in place, its output again into h16.
            linear(gout, gout16, o.xu_u, kNoBias, nullptr, n, C, u, nullptr, sb16.get());
            ESPER_CUDA_CHECK(kernels::launch_bias_act_backward_bf16(
                sb16.get(), true, b.xu_pre16.get(), true, sb16.get(), G(o.xu_c), n, u,
                kernels::Activation::kGeluTanh, bias_ws.get(), bias_ws.size(), s(), h16.get()));
            linear_dw(gout, gout16, nullptr, h16.get(), o.xu_u, n, C, u);
            linear_dw(b.m.get(), b.m16.get(), nullptr, sb16.get(), o.xu_v, n, C, u);
            linear_dx(nullptr, sb16.get(), o.xu_v, dm, n, C, u, nullptr, 1.0f);
        } else {
            float* dz = dbig.get();
            linear(gout, nullptr, o.xu_u, kNoBias, dz, n, C, u);
            linear_dw(gout, nullptr, b.xu_act.get(), nullptr, o.xu_u, n, C, u);
            ESPER_CUDA_CHECK(kernels::launch_bias_act_backward(dz, b.xu_pre.get(), dz, G(o.xu_c), n,
                                                               u, kernels::Activation::kGeluTanh,
                                                               bias_ws.get(), bias_ws.size(), s()));
            linear_dw(b.m.get(), nullptr, dz, nullptr, o.xu_v, n, C, u);
            linear_dx(dz, nullptr, o.xu_v, dm, n, C, u, nullptr, 1.0f);
        }
    }

    // ---- chunk seeds (residual_mlp, lowrank, scale_shift over block l's MLP hidden) ----

    // Block l's seed layer on the device: its state arrays, and the mirrors of its chunk arenas
    // (the host arenas' shapes; a kind the site does not serve has none).
    kernels::SeedLayerView chunk_view(int32_t l, int32_t n) const {
        const ChunkSite& c = chunks[size_t(l)];
        kernels::SeedLayerView v = seeds->view(c.layer, n);  // shapes: width, seeds, arenas
        const int32_t S = c.num_seeds;
        uint8_t* st = c.state.get();
        v.chunk_offset = reinterpret_cast<const int32_t*>(st);
        v.slot = reinterpret_cast<const int32_t*>(st + 4 * (S + 1));
        v.alpha = reinterpret_cast<const float*>(st + 4 * (2 * S + 1));
        v.stage = st + 4 * (3 * S + 1);
        v.kind = st + 4 * (3 * S + 1) + S;
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            kernels::BlueprintArena& a = v.arenas[k];
            const int ki = seed_kind_index(static_cast<BlueprintKind>(k));
            if (ki < kFirstChunkKind || a.capacity == 0) {
                a = kernels::BlueprintArena{};
                continue;
            }
            const SeedArena& m = seed_arenas[size_t(l)][size_t(ki)];
            a.params = P(m.base);
            a.grads = G(m.base);
        }
        return v;
    }
    bool chunk_runs(int32_t l) const {
        return size_t(l) < chunks.size() && chunks[size_t(l)].running;
    }
    // Block l's chunk site measures its seeds' telemetry by launch_chunk_moments (none running).
    bool chunk_dormant(int32_t l) const {
        return size_t(l) < chunks.size() && chunks[size_t(l)].layer >= 0 &&
               !chunks[size_t(l)].running;
    }
    // The moments of each chunk of x [n, F] (bf16 in bf16 mode) into block l's telemetry:
    // part 0 (h, forward) or 1 (∂L/∂h, backward).
    void chunk_moments(int32_t l, int32_t n, const void* x, int part) {
        const ChunkSite& c = chunks[size_t(l)];
        ESPER_CUDA_CHECK(kernels::launch_chunk_moments(
            x, bf16, n, F, c.offsets.get(), c.num_seeds,
            chunk_tel.get() + c.tel + size_t(part) * 3 * size_t(c.num_seeds), s()));
    }
    kernels::SeedTelemetryAccum chunk_accum(int32_t l) const {
        const ChunkSite& c = chunks[size_t(l)];
        double* t = chunk_tel.get() + c.tel;
        const size_t S = size_t(c.num_seeds);
        return {t, t + S, t + 2 * S, t + 3 * S, t + 4 * S, t + 5 * S};
    }
    // The site's seed table into its device state (stream-ordered; the pinned copy is free: the
    // previous step's result was read).
    void upload_chunk_state(int32_t l) {
        ChunkSite& c = chunks[size_t(l)];
        const SeedTable& t = seeds->table(c.layer);
        const int32_t S = c.num_seeds;
        uint8_t* h = c.state_host.get();
        std::memcpy(h, t.chunk_offsets().data(), 4 * size_t(S + 1));
        for (int32_t sd = 0; sd < S; ++sd) {
            const int32_t slot = t.slot(sd);
            const float alpha = t.alpha(sd);
            std::memcpy(h + 4 * (S + 1 + sd), &slot, 4);
            std::memcpy(h + 4 * (2 * S + 1 + sd), &alpha, 4);
            h[4 * (3 * S + 1) + sd] = uint8_t(t.stage(sd));
            h[4 * (3 * S + 1) + S + sd] = uint8_t(t.kind(sd));
        }
        ESPER_CUDA_CHECK(
            cudaMemcpyAsync(c.state.get(), h, c.state_bytes(), cudaMemcpyHostToDevice, s()));
    }
    // hs = the seed layer of h (into act[l].chs), with the site's telemetry in a training pass;
    // bf16: h from h16 in fp32 first, hs back into h16 for fc2's product.
    void chunk_forward(int32_t l, int32_t n) {
        BlockAct& b = act[size_t(l)];
        ChunkSite& c = chunks[size_t(l)];
        const int64_t count = int64_t(n) * F;
        if (bf16)
            ESPER_CUDA_CHECK(kernels::launch_cast_from_bf16(h16.get(), b.ch.get(), count, s()));
        const kernels::SeedTelemetryAccum t = chunk_accum(l);
        ESPER_CUDA_CHECK(kernels::launch_seed_forward(
            chunk_view(l, n), bf16 ? b.ch.get() : b.h.get(), b.chs.get(),
            training_pass ? &t : nullptr, c.fwd_ws.get(), c.fwd_ws.size(), s()));
        if (bf16)
            ESPER_CUDA_CHECK(kernels::launch_cast_to_bf16(b.chs.get(), h16.get(), count, s()));
    }
    // Given dy = ∂L/∂hs (fp32), ∂L/∂h into cdh, the blueprints' gradients into the mirrors (at
    // the stage's factor, as the CPU's seed layer scales them) and the site's gradient telemetry.
    void chunk_backward(int32_t l, int32_t n, const float* dy) {
        BlockAct& b = act[size_t(l)];
        ChunkSite& c = chunks[size_t(l)];
        const kernels::SeedTelemetryAccum t = chunk_accum(l);
        ESPER_CUDA_CHECK(kernels::launch_seed_backward(chunk_view(l, n),
                                                       bf16 ? b.ch.get() : b.h.get(), dy, cdh.get(),
                                                       &t, c.bwd_ws.get(), c.bwd_ws.size(), s()));
    }

    bool data_parallel() const {
#if ESPER_HAVE_NCCL
        return nccl != nullptr && nccl->world() > 1;
#else
        return false;
#endif
    }

    // Buckets of whole blocks in the order backward finishes them (the last block first),
    // closing once they hold bucket_bytes of gradients (plan_layer_buckets); none on one rank
    // or with bucket_bytes == 0.
    void plan_buckets() {
        buckets.clear();
        bucket_closing.assign(size_t(L), -1);
        if (!data_parallel() || bucket_bytes <= 0) return;
        auto end_of = [&](int32_t l) { return l == L - 1 ? total : block_begin[size_t(l) + 1]; };
        std::vector<size_t> floats;  // backward order: l = L-1, ..., 0
        for (int32_t l = L; l-- > 0;) floats.push_back(end_of(l) - block_begin[size_t(l)]);
        for (const LayerBucket& pb : plan_layer_buckets(floats, bucket_bytes)) {
            GradBucket k;
            k.hi = L - 1 - int32_t(pb.first);
            k.lo = L - 1 - int32_t(pb.last);
            k.begin = block_begin[size_t(k.lo)];
            k.end = end_of(k.hi);
            bucket_closing[size_t(k.lo)] = int32_t(buckets.size());
            buckets.push_back(k);
        }
        comm = CudaStream(cudaStreamNonBlocking);
        grads_ready.clear();
        for (size_t i = 0; i <= buckets.size(); ++i)
            grads_ready.emplace_back(cudaEventDisableTiming);
        comm_done = CudaEvent(cudaEventDisableTiming);
    }

    // The communication stream all-reduces g[begin, end) once the step's stream has written it
    // (event `ready`); every collective of the step goes through it, so the ranks' NCCL calls
    // keep one order.
    void reduce_on_comm(size_t begin, size_t end, CudaEvent& ready) {
#if ESPER_HAVE_NCCL
        ESPER_CUDA_CHECK(cudaEventRecord(ready.get(), s()));
        ESPER_CUDA_CHECK(cudaStreamWaitEvent(comm.get(), ready.get(), 0));
        nccl->all_reduce_mean(G(begin), G(begin), end - begin, NcclType::kFloat32, comm.get());
#else
        (void)begin;
        (void)end;
        (void)ready;
#endif
    }

    // Inside backward: block l's gradients are complete; a bucket it closes starts reducing.
    void block_grads_done(int32_t l) {
        if (buckets.empty()) return;
        const int32_t b = bucket_closing[size_t(l)];
        if (b < 0) return;
        const GradBucket& k = buckets[size_t(b)];
        reduce_on_comm(k.begin, k.end, grads_ready[size_t(b)]);
    }

    // After backward: the embeddings (written last, by the embedding backward) and, without
    // buckets, everything; the step's stream then waits for the communication stream.
    void reduce_gradients() {
#if ESPER_HAVE_NCCL
        if (!data_parallel()) return;
        if (buckets.empty()) {
            nccl->all_reduce_mean(g.get(), g.get(), total, NcclType::kFloat32, s());
            return;
        }
        reduce_on_comm(0, block_begin[0], grads_ready.back());
        ESPER_CUDA_CHECK(cudaEventRecord(comm_done.get(), comm.get()));
        ESPER_CUDA_CHECK(cudaStreamWaitEvent(s(), comm_done.get(), 0));
#endif
    }
    // The live seeds' gradients (the mirrors past `total`) as their mean over the ranks.
    void reduce_seed_gradients() {
#if ESPER_HAVE_NCCL
        if (data_parallel() && !live.empty())
            nccl->all_reduce_mean(G(total), G(total), total_all - total, NcclType::kFloat32, s());
#endif
    }

    // The sum of squares comes from double atomics (order varies), so ranks with equal
    // gradients may differ in its last bit: rank 0's decides clipping and finiteness.
    void agree_sumsq() {
#if ESPER_HAVE_NCCL
        if (data_parallel()) nccl->broadcast(sumsq.get(), sumsq.get(), sizeof(double), 0, s());
#endif
    }
    // Likewise the live seeds' sums of squares (their clipping and finiteness).
    void agree_seed_sumsq() {
#if ESPER_HAVE_NCCL
        if (data_parallel())
            nccl->broadcast(seed_sq.get(), seed_sq.get(), live.size() * sizeof(double), 0, s());
#endif
    }

    void forward(int32_t samples, int32_t seq) {
        const int32_t n = samples * seq;
        if (bf16)
            ESPER_CUDA_CHECK(kernels::launch_cast_to_bf16(p.get(), w16.get(), total_all, s()));
        ESPER_CUDA_CHECK(kernels::launch_embedding_forward(
            tokens.get(), P(wte), P(wpe), act[0].x_in.get(), samples, seq, C, s()));
        const kernels::AttentionShape sh = attn_shape(samples, seq);
        for (int32_t l = 0; l < L; ++l) {
            BlockAct& b = act[size_t(l)];
            const BlockOff& o = blocks[size_t(l)];
            ESPER_CUDA_CHECK(kernels::launch_layernorm_forward(
                b.x_in.get(), P(o.ln1_w), P(o.ln1_b), b.a.get(), b.a16.get(), b.mean1.get(),
                b.rstd1.get(), n, C, kLnEps, s()));
            if (bf16) {
                // The product is written in bf16 (qkv16); the attention reads and writes bf16
                // (att16 feeds the projection).
                linear(b.a.get(), b.a16.get(), o.qkv_w, o.qkv_b, nullptr, n, C, 3 * C, nullptr,
                       b.qkv16.get());
                loras_forward(l, n);
                const uint16_t* q16 = b.qkv16.get();
                ESPER_CUDA_CHECK(kernels::launch_attention_forward(
                    sh, kernels::AttentionDtype::kBfloat16, q16, q16 + C, q16 + 2 * C,
                    b.att16.get(), b.lse.get(), s()));
            } else {
                linear(b.a.get(), b.a16.get(), o.qkv_w, o.qkv_b, b.qkv.get(), n, C, 3 * C);
                loras_forward(l, n);
                ESPER_CUDA_CHECK(kernels::launch_attention_forward(
                    sh, kernels::AttentionDtype::kFloat32, b.qkv.get(), b.qkv.get() + C,
                    b.qkv.get() + 2 * C, b.att.get(), b.lse.get(), s()));
            }
            linear(b.att.get(), b.att16.get(), o.proj_w, o.proj_b, b.x_mid.get(), n, C, C,
                   b.x_in.get());
            heads_forward(l, samples, seq);
            ESPER_CUDA_CHECK(kernels::launch_layernorm_forward(
                b.x_mid.get(), P(o.ln2_w), P(o.ln2_b), b.m.get(), b.m16.get(), b.mean2.get(),
                b.rstd2.get(), n, C, kLnEps, s()));
            // bf16: one product writes the pre-activation (f16, kept for GELU's backward) and
            // GELU's output into the one h16 all blocks share, fc2's operand (autocast would keep
            // both per block; the backward writes h again from f16).
            if (bf16) {
                linear_gelu_bf16(b.m16.get(), o.fc_w, o.fc_b, h16.get(), b.f16.get(), n, C, F);
            } else {
                linear(b.m.get(), nullptr, o.fc_w, kNoBias, b.f.get(), n, C, F);
                ESPER_CUDA_CHECK(kernels::launch_bias_act_forward(
                    b.f.get(), P(o.fc_b), b.h.get(), n, F, kernels::Activation::kGeluTanh, s()));
            }
            const bool chunk = chunk_runs(l);
            if (chunk) chunk_forward(l, n);  // hs: b.chs, and h16 in bf16 mode
            if (training_pass && chunk_dormant(l))
                chunk_moments(l, n, bf16 ? static_cast<const void*>(h16.get()) : b.h.get(), 0);
            float* out = l + 1 < L ? act[size_t(l) + 1].x_in.get() : x_out.get();
            linear(chunk ? b.chs.get() : b.h.get(), h16.get(), o.fc2_w, o.fc2_b, out, n, F, C,
                   b.x_mid.get());
            units_forward(l, n, out);
            seed_units_forward(l, n, out);
        }
        ESPER_CUDA_CHECK(kernels::launch_layernorm_forward(x_out.get(), P(lnf_w), P(lnf_b),
                                                           xf.get(), xf16.get(), meanf.get(),
                                                           rstdf.get(), n, C, kLnEps, s()));
        linear(xf.get(), xf16.get(), head, kNoBias, logits.get(), n, C, kByteVocab);
        // dlogits overwrite the logits (the backward reads only dlogits).
        ESPER_CUDA_CHECK(kernels::launch_softmax_xent(logits.get(), targets.get(), n, kByteVocab,
                                                      loss.get(), logits.get(), correct.get(),
                                                      xent_ws.get(), xent_ws.size(), s()));
    }

    void backward(int32_t samples, int32_t seq) {
        const int32_t n = samples * seq;
        ESPER_CUDA_CHECK(cudaMemsetAsync(g.get(), 0, total_all * sizeof(float), s()));
        if (telemetry)
            ESPER_CUDA_CHECK(
                cudaMemsetAsync(tel_dev.get(), 0, tel_dev.size() * sizeof(double), s()));
        const uint16_t* dl16 = cast_a(logits.get(), int64_t(n) * kByteVocab);
        linear_dx(logits.get(), dl16, head, dtmp.get(), n, C, kByteVocab);
        linear_dw(xf.get(), xf16.get(), logits.get(), dl16, head, n, C, kByteVocab);
        ESPER_CUDA_CHECK(kernels::launch_layernorm_backward(
            dtmp.get(), x_out.get(), P(lnf_w), meanf.get(), rstdf.get(), gres.get(), G(lnf_w),
            G(lnf_b), n, C, false, ln_ws.get(), ln_ws.size(), s()));
        const kernels::AttentionShape sh = attn_shape(samples, seq);
        for (int32_t l = L - 1; l >= 0; --l) {
            BlockAct& b = act[size_t(l)];
            const BlockOff& o = blocks[size_t(l)];
            // MLP: out = x_mid + gelu(m·Wfcᵀ + bfc)·Wfc2ᵀ + bfc2
            const uint16_t* d16 = output_grad(gres.get(), o.fc2_b, n, C);
            const uint16_t* gout16 = d16;  // sa16 keeps it through the MLP's backward
            // bf16: h's gradient in bf16 (sb16), GELU's backward from it and the bf16 f into
            // its bf16 result in place (sb16, the fc products' operand), as autocast would; the
            // same pass writes h again (h16) for fc2's weight gradient, which follows it.
            if (chunk_runs(l)) {
                // A chunk seed runs: hs's gradient in fp32 (dbig, or cdy in bf16 mode); fc2's
                // weight gradient reads hs (its bf16 copy again in h16); the seed layer's
                // backward gives h's gradient (cdh), and GELU's backward reads that (bf16 mode:
                // as it reads sb16 otherwise, and writes h into h16 again for the telemetry).
                float* dy = bf16 ? cdy.get() : dbig.get();
                linear_dx(gres.get(), d16, o.fc2_w, dy, n, F, C);
                if (bf16)
                    ESPER_CUDA_CHECK(
                        kernels::launch_cast_to_bf16(b.chs.get(), h16.get(), int64_t(n) * F, s()));
                linear_dw(b.chs.get(), h16.get(), gres.get(), d16, o.fc2_w, n, F, C);
                chunk_backward(l, n, dy);
                if (bf16) {
                    ESPER_CUDA_CHECK(kernels::launch_bias_act_backward_bf16(
                        cdh.get(), false, b.f16.get(), true, sb16.get(), G(o.fc_b), n, F,
                        kernels::Activation::kGeluTanh, bias_ws.get(), bias_ws.size(), s(),
                        h16.get()));
                    d16 = sb16.get();
                } else {
                    ESPER_CUDA_CHECK(kernels::launch_bias_act_backward(
                        cdh.get(), b.f.get(), dbig.get(), G(o.fc_b), n, F,
                        kernels::Activation::kGeluTanh, bias_ws.get(), bias_ws.size(), s()));
                    d16 = nullptr;
                }
            } else if (bf16) {
                linear_dx(gres.get(), d16, o.fc2_w, dbig.get(), n, F, C, sb16.get());
                if (chunk_dormant(l)) chunk_moments(l, n, sb16.get(), 1);
                ESPER_CUDA_CHECK(kernels::launch_bias_act_backward_bf16(
                    sb16.get(), true, b.f16.get(), true, sb16.get(), G(o.fc_b), n, F,
                    kernels::Activation::kGeluTanh, bias_ws.get(), bias_ws.size(), s(), h16.get()));
                linear_dw(b.h.get(), h16.get(), gres.get(), d16, o.fc2_w, n, F, C);
                d16 = sb16.get();
            } else {
                linear_dx(gres.get(), d16, o.fc2_w, dbig.get(), n, F, C);
                if (chunk_dormant(l)) chunk_moments(l, n, dbig.get(), 1);
                linear_dw(b.h.get(), nullptr, gres.get(), d16, o.fc2_w, n, F, C);
                ESPER_CUDA_CHECK(kernels::launch_bias_act_backward(
                    dbig.get(), b.f.get(), dbig.get(), G(o.fc_b), n, F,
                    kernels::Activation::kGeluTanh, bias_ws.get(), bias_ws.size(), s()));
                d16 = nullptr;
            }
            linear_dx(dbig.get(), d16, o.fc_w, dtmp.get(), n, C, F);
            linear_dw(b.m.get(), b.m16.get(), dbig.get(), d16, o.fc_w, n, C, F);
            // What the widening seeds that are not running measure: the MLP hidden units (from
            // the chunk site's sums where it measured them in the forward).
            if (telemetry && !chunk_dormant(l))
                ESPER_CUDA_CHECK(kernels::launch_moments(
                    bf16 ? static_cast<const void*>(h16.get()) : b.h.get(), bf16, int64_t(n) * F,
                    tel_dev.get() + size_t(l) * 3, s()));
            units_backward(l, n, gres.get(), gout16, dtmp.get());
            seed_units_backward(l, n, gres.get(), gout16, dtmp.get());
            ESPER_CUDA_CHECK(kernels::launch_layernorm_backward(
                dtmp.get(), b.x_mid.get(), P(o.ln2_w), b.mean2.get(), b.rstd2.get(), gres.get(),
                G(o.ln2_w), G(o.ln2_b), n, C, true, ln_ws.get(), ln_ws.size(), s()));
            // attention: x_mid = x_in + attention(qkv(LN1(x_in)))·Wprojᵀ + bproj
            d16 = output_grad(gres.get(), o.proj_b, n, C);
            const uint16_t* gmid16 = d16;  // sa16 keeps it through the attention's backward
            linear_dx(gres.get(), d16, o.proj_w, dtmp.get(), n, C, C,
                      bf16 ? datt16.get() : nullptr);
            linear_dw(b.att.get(), b.att16.get(), gres.get(), d16, o.proj_w, n, C, C);
            if (bf16) {
                // bf16 attention gradients: the bias gradient sums them as they are (exact in
                // fp32), both products read them.
                const uint16_t* q16 = b.qkv16.get();
                uint16_t* g16 = dqkv16.get();
                ESPER_CUDA_CHECK(kernels::launch_attention_backward(
                    sh, kernels::AttentionDtype::kBfloat16, q16, q16 + C, q16 + 2 * C,
                    b.att16.get(), datt16.get(), b.lse.get(), g16, g16 + C, g16 + 2 * C,
                    attn_ws.get(), attn_ws.size(), s()));
                bias_grad(g16, true, o.qkv_b, n, 3 * C);
                d16 = g16;
            } else {
                ESPER_CUDA_CHECK(kernels::launch_attention_backward(
                    sh, kernels::AttentionDtype::kFloat32, b.qkv.get(), b.qkv.get() + C,
                    b.qkv.get() + 2 * C, b.att.get(), dtmp.get(), b.lse.get(), dqkv.get(),
                    dqkv.get() + C, dqkv.get() + 2 * C, attn_ws.get(), attn_ws.size(), s()));
                bias_grad(dqkv.get(), false, o.qkv_b, n, 3 * C);
                d16 = nullptr;
            }
            linear_dx(dqkv.get(), d16, o.qkv_w, dtmp.get(), n, C, 3 * C);
            linear_dw(b.a.get(), b.a16.get(), dqkv.get(), d16, o.qkv_w, n, C, 3 * C);
            loras_backward(l, n, dqkv.get(), d16, dtmp.get());
            heads_backward(l, samples, seq, gres.get(), gmid16, dtmp.get());
            ESPER_CUDA_CHECK(kernels::launch_layernorm_backward(
                dtmp.get(), b.x_in.get(), P(o.ln1_w), b.mean1.get(), b.rstd1.get(), gres.get(),
                G(o.ln1_w), G(o.ln1_b), n, C, true, ln_ws.get(), ln_ws.size(), s()));
            block_grads_done(l);
        }
        // The one-hot matrix of dwte's product goes into the logits' buffer (read only by the
        // head's products above): rows · 256 floats, the size it asks for.
        ESPER_CUDA_CHECK(kernels::launch_embedding_backward(
            lt, tokens.get(), gres.get(), G(wte), G(wpe), samples, seq, C, kByteVocab, logits.get(),
            logits.size() * sizeof(float), lt_ws.get(), lt_ws.size(), s()));
        reduce_gradients();
        reduce_seed_gradients();
    }

    // The optimizer's hyper-parameters of this step (learning rate, AdamW's step count) into
    // device memory, ahead of the step that reads them (outside the graph).
    void upload_hyper(const StepRates& rates) {
        const double lr = rates.lr;
        const bool ramp = ramp_hi > ramp_lo;
        ESPER_REQUIRE(rates.ramp.end == rates.ramp.begin ||
                          (off[rates.ramp.begin] == ramp_lo && off[rates.ramp.end] == ramp_hi),
                      "cuda transformer: a learning-rate ramp over parameters the step does not "
                      "hold apart");
        const double lr1 = lr * rates.ramp.scale;
        if (adamw) {
            const int32_t t = int32_t(optimizer->host_steps_ + 1);
            adam_host[0] = {float(lr),      float(opt.beta1),        float(opt.beta2),
                            float(opt.eps), float(opt.weight_decay), t};
            adam_host[1] = adam_host[0];
            adam_host[1].lr = float(lr1);
            ESPER_CUDA_CHECK(cudaMemcpyAsync(adam_dev.get(), adam_host.get(),
                                             (ramp ? 2 : 1) * sizeof(kernels::AdamwHyper),
                                             cudaMemcpyHostToDevice, s()));
        } else {
            sgd_host[0] = {float(lr), float(opt.momentum), float(opt.weight_decay)};
            sgd_host[1] = sgd_host[0];
            sgd_host[1].lr = float(lr1);
            ESPER_CUDA_CHECK(cudaMemcpyAsync(sgd_dev.get(), sgd_host.get(),
                                             (ramp ? 2 : 1) * sizeof(kernels::SgdHyper),
                                             cudaMemcpyHostToDevice, s()));
        }
    }

    // The optimizer over p[lo, hi) with hyper-parameters `which` (0: the schedule's, 1: ramped).
    void optimizer_step(size_t lo, size_t hi, int which) {
        if (hi <= lo) return;
        const int64_t n = int64_t(hi - lo);
        if (adamw)
            ESPER_CUDA_CHECK(kernels::launch_adamw_step(p.get() + lo, g.get() + lo, m.get() + lo,
                                                        v.get() + lo, n, adam_dev.get() + which,
                                                        s()));
        else
            ESPER_CUDA_CHECK(kernels::launch_sgd_momentum_step(
                p.get() + lo, g.get() + lo, m.get() + lo, n, sgd_dev.get() + which, s()));
    }

    void update() {
        ESPER_CUDA_CHECK(cudaMemsetAsync(sumsq.get(), 0, sizeof(double), s()));
        ESPER_CUDA_CHECK(kernels::launch_sum_squares(g.get(), int64_t(total), sumsq.get(), s()));
        agree_sumsq();
        if (opt.grad_clip > 0.0)
            ESPER_CUDA_CHECK(kernels::launch_clip_scale(g.get(), int64_t(total), sumsq.get(),
                                                        float(opt.grad_clip), s()));
        if (ramp_hi <= ramp_lo) {
            optimizer_step(0, total, 0);
        } else {
            optimizer_step(0, ramp_lo, 0);
            optimizer_step(ramp_lo, ramp_hi, 1);
            optimizer_step(ramp_hi, total, 0);
        }
    }

    // The live seeds' gradients at their stage's factor (as the CPU host scales them), their
    // sums of squares, and the blueprint optimizer over the trained ones (each clipped by its own
    // norm, Optimizer::step_blueprints' rule); the trained parameters and the sums then go to
    // pinned memory (stream-ordered).
    void update_seeds() {
        if (live.empty()) return;
        ESPER_CUDA_CHECK(cudaMemsetAsync(seed_sq.get(), 0, live.size() * sizeof(double), s()));
        for (size_t i = 0; i < live.size(); ++i)
            ESPER_CUDA_CHECK(kernels::launch_scale_sum_squares(
                G(live[i].off), int64_t(live[i].floats), live[i].a_grad, seed_sq.get() + i, s()));
        agree_seed_sumsq();
        for (size_t i = 0; i < live.size(); ++i) {
            const LiveSeed& e = live[i];
            if (!e.trains) continue;
            const int64_t n = int64_t(e.floats);
            if (opt.grad_clip > 0.0)
                ESPER_CUDA_CHECK(kernels::launch_clip_scale(G(e.off), n, seed_sq.get() + i,
                                                            float(opt.grad_clip), s()));
            if (adamw)
                ESPER_CUDA_CHECK(kernels::launch_adamw_step(P(e.off), G(e.off), m.get() + e.off,
                                                            v.get() + e.off, n, seed_adam.get() + i,
                                                            s()));
            else
                ESPER_CUDA_CHECK(kernels::launch_sgd_momentum_step(
                    P(e.off), G(e.off), m.get() + e.off, n, seed_sgd.get(), s()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(seed_params_host.get() + e.staged, P(e.off),
                                             e.floats * sizeof(float), cudaMemcpyDeviceToHost,
                                             s()));
        }
        ESPER_CUDA_CHECK(cudaMemcpyAsync(seed_sq_host.get(), seed_sq.get(),
                                         live.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                         s()));
    }

    // The blueprint optimizer's hyper-parameters of this step for the live seeds: the rate and
    // each trained slot's step count (Optimizer's per-slot counts, which commit_step advances
    // once the step is kept; AdamW's bias correction reads it).
    void upload_seed_hyper(double lr) {
        if (live.empty()) return;
        for (size_t i = 0; i < live.size(); ++i) {
            LiveSeed& e = live[i];
            if (!e.trains) continue;
            optimizer->size_slot_counts(seeds->arenas(e.layer), e.layer);
            const size_t l = size_t(e.layer), ki = size_t(e.kind), slot = size_t(e.slot);
            const bool same = optimizer->slot_owner_[l][ki][slot] == e.seed;
            e.t = int32_t((same ? optimizer->slot_steps_[l][ki][slot] : 0) + 1);
            seed_adam_host[i] = {float(lr),      float(opt.beta1),        float(opt.beta2),
                                 float(opt.eps), float(opt.weight_decay), e.t};
        }
        if (!adamw) {
            seed_sgd_host[0] = {float(lr), float(opt.momentum), float(opt.weight_decay)};
            ESPER_CUDA_CHECK(cudaMemcpyAsync(seed_sgd.get(), seed_sgd_host.get(),
                                             sizeof(kernels::SgdHyper), cudaMemcpyHostToDevice,
                                             s()));
            return;
        }
        ESPER_CUDA_CHECK(cudaMemcpyAsync(seed_adam.get(), seed_adam_host.get(),
                                         live.size() * sizeof(kernels::AdamwHyper),
                                         cudaMemcpyHostToDevice, s()));
    }

    // Loss, correct count and gradient sum of squares into the pinned `result` (stream-ordered).
    void copy_result(bool with_sumsq) {
        ESPER_CUDA_CHECK(cudaMemcpyAsync(&result[0].loss, loss.get(), sizeof(float),
                                         cudaMemcpyDeviceToHost, s()));
        ESPER_CUDA_CHECK(cudaMemcpyAsync(&result[0].correct, correct.get(), sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, s()));
        if (with_sumsq)
            ESPER_CUDA_CHECK(cudaMemcpyAsync(&result[0].sumsq, sumsq.get(), sizeof(double),
                                             cudaMemcpyDeviceToHost, s()));
        if (with_sumsq && telemetry)
            ESPER_CUDA_CHECK(cudaMemcpyAsync(tel_host.get(), tel_dev.get(),
                                             live_tel(live.size()) * sizeof(double),
                                             cudaMemcpyDeviceToHost, s()));
        if (with_sumsq && chunk_tel.size() != 0)
            ESPER_CUDA_CHECK(cudaMemcpyAsync(chunk_tel_host.get(), chunk_tel.get(),
                                             chunk_tel.size() * sizeof(double),
                                             cudaMemcpyDeviceToHost, s()));
    }

    // The training step after its inputs are on the device: what the graph captures.
    void enqueue_step(int32_t samples, int32_t seq) {
        training_pass = true;
        if (chunk_tel.size() != 0)
            ESPER_CUDA_CHECK(
                cudaMemsetAsync(chunk_tel.get(), 0, chunk_tel.size() * sizeof(double), s()));
        forward(samples, seq);
        backward(samples, seq);
        update();
        update_seeds();
        copy_result(true);
    }

    // Captures enqueue_step for this batch shape (the stream must be idle of other capture).
    cudaGraphExec_t capture(int32_t samples, int32_t seq) {
        CudaGraphExec exec = capture_graph(s(), [&] { enqueue_step(samples, seq); });
        if (graphs.size() >= kMaxGraphs) graphs.erase(graphs.begin());
        graphs.push_back(ShapeGraph{samples, seq, std::move(exec)});
        ++captures;
        return graphs.back().exec.get();
    }

    // Replays this shape's graph (capturing it first when new), or enqueues the step directly.
    void launch_step(int32_t samples, int32_t seq) {
        // Live seeds run uncaptured: their set and stage factors change at lifecycle steps.
        if (!use_graph || !live.empty()) {
            enqueue_step(samples, seq);
            return;
        }
        cudaGraphExec_t exec = nullptr;
        for (const ShapeGraph& sg : graphs)
            if (sg.samples == samples && sg.seq == seq) exec = sg.exec.get();
        if (exec == nullptr) {
            const std::pair<int32_t, int32_t> shape{samples, seq};
            if (std::find(warmed.begin(), warmed.end(), shape) == warmed.end()) {
                warmed.push_back(shape);
                enqueue_step(samples, seq);
                return;
            }
            exec = capture(samples, seq);
        }
        ESPER_CUDA_CHECK(cudaGraphLaunch(exec, s()));
    }

    void set_batch(const Batch& batch) {
        ESPER_REQUIRE(batch.tokens != nullptr && batch.targets != nullptr && batch.samples > 0 &&
                          batch.rows % batch.samples == 0,
                      "cuda transformer batch: samples=", batch.samples, " rows=", batch.rows);
        const int32_t seq = batch.rows / batch.samples;
        ESPER_REQUIRE(seq >= 1 && seq <= T, "cuda transformer batch: seq=", seq, " context=", T);
        ensure_rows(batch.rows);
        // The previous step finished (its result was read), so the staging buffers are free.
        const size_t bytes = size_t(batch.rows) * sizeof(int32_t);
        std::memcpy(tokens_host.get(), batch.tokens, bytes);
        std::memcpy(targets_host.get(), batch.targets, bytes);
        ESPER_CUDA_CHECK(
            cudaMemcpyAsync(tokens.get(), tokens_host.get(), bytes, cudaMemcpyHostToDevice, s()));
        ESPER_CUDA_CHECK(
            cudaMemcpyAsync(targets.get(), targets_host.get(), bytes, cudaMemcpyHostToDevice, s()));
    }

    // sync-point: step boundary — the step's loss and vitals feed the governor and the seed
    // lifecycle of this same step (Trainer::step), so the host waits for the event recorded after
    // the step's last work (the copy into the pinned `result`).
    Result wait_result() {
        ESPER_CUDA_CHECK(cudaEventRecord(done.get(), s()));
        ESPER_CUDA_CHECK(cudaEventSynchronize(done.get()));
        return result[0];
    }

    // The live widening seeds of this step from the seed tables (TRAINING..FOSSILIZED with a
    // slot, as TransformerModel::collect_widening), their activations sized for rows_cap, and
    // their parameters copied into the mirrors.
    void prepare_seeds() {
        if (seeds == nullptr) return;
        std::vector<LiveSeed> next;
        // Per block in forward order: the adapters (on qkv), the heads, then the units.
        for (const int kind_index : {2, 1, 0})
            for (int32_t l = 0; l < int32_t(seed_arenas.size()) && l < L; ++l) {
                const int32_t wl = model->widening_layer(l);
                if (wl < 0) continue;
                const SeedTable& t = seeds->table(wl);
                for (int32_t sd = 0; sd < t.num_seeds(); ++sd) {
                    const SeedStage st = t.stage(sd);
                    if (!kernels::stage_runs_blueprint(st) || t.slot(sd) < 0) continue;
                    const BlueprintKind k = t.kind(sd);
                    ESPER_CHECK_INPUT(seed_kind_index(k) >= 0, "run.device: cuda: seed ", sd,
                                      " of seed layer ", wl, " is a ", blueprint_kind_name(k),
                                      " blueprint, which the GPU transformer does not run "
                                      "(run.device: cpu)");
                    if (seed_kind_index(k) != kind_index) continue;
                    const SeedArena& a = seed_arenas[size_t(l)][size_t(kind_index)];
                    LiveSeed e;
                    e.block = l;
                    e.layer = wl;
                    e.seed = sd;
                    e.slot = t.slot(sd);
                    e.kind = k;
                    e.off = a.base + size_t(e.slot) * a.stride;
                    e.hidden = a.hidden;
                    e.floats = size_t(seeds->arenas(wl).stride(k));
                    e.a_fwd = kernels::stage_forward_alpha(st, t.alpha(sd));
                    e.a_grad = kernels::stage_blueprint_grad_scale(st, t.alpha(sd));
                    e.a_in = kernels::stage_input_grad_alpha(st, t.alpha(sd));
                    e.trains = kernels::stage_blueprint_grad_scale(st, 1.0f) != 0.0f;
                    next.push_back(std::move(e));
                }
            }
        // The chunk seeds running a blueprint (the seed kernels scale their gradients by the
        // stage's factor themselves: a_grad 1).
        for (int32_t l = 0; l < int32_t(chunks.size()) && l < L; ++l) {
            const int32_t cl = chunks[size_t(l)].layer;
            if (cl < 0) continue;
            const SeedTable& t = seeds->table(cl);
            for (int32_t sd = 0; sd < t.num_seeds(); ++sd) {
                const SeedStage st = t.stage(sd);
                if (!kernels::stage_runs_blueprint(st) || t.slot(sd) < 0) continue;
                const BlueprintKind k = t.kind(sd);
                ESPER_CHECK_INPUT(chunk_kind(k), "run.device: cuda: seed ", sd, " of seed layer ",
                                  cl, " is a ", blueprint_kind_name(k),
                                  " blueprint at a chunk site, which the GPU transformer does "
                                  "not run (run.device: cpu)");
                const SeedArena& a = seed_arenas[size_t(l)][size_t(seed_kind_index(k))];
                LiveSeed e;
                e.block = l;
                e.layer = cl;
                e.seed = sd;
                e.slot = t.slot(sd);
                e.kind = k;
                e.off = a.base + size_t(e.slot) * a.stride;
                e.hidden = a.hidden;
                e.floats = a.stride;
                e.a_fwd = kernels::stage_forward_alpha(st, t.alpha(sd));
                e.a_grad = 1.0f;
                e.a_in = kernels::stage_input_grad_alpha(st, t.alpha(sd));
                e.trains = kernels::stage_blueprint_grad_scale(st, 1.0f) != 0.0f;
                next.push_back(std::move(e));
            }
        }
        // Blocks in forward order; within a block the adapters, the heads, the units and the
        // chunk seeds, each in seed order.
        std::stable_sort(next.begin(), next.end(),
                         [](const LiveSeed& a, const LiveSeed& b) { return a.block < b.block; });
        const bool same =
            live_rows == rows_cap && next.size() == live.size() &&
            std::equal(next.begin(), next.end(), live.begin(),
                       [](const LiveSeed& a, const LiveSeed& b) { return a.same(b); });
        if (same) {
            for (size_t i = 0; i < next.size(); ++i) {
                live[i].a_fwd = next[i].a_fwd;
                live[i].a_grad = next[i].a_grad;
                live[i].a_in = next[i].a_in;
                live[i].trains = next[i].trains;
            }
        } else {
            // sync-point: lifecycle step (the live seeds' activations are allocated)
            ESPER_CUDA_CHECK(cudaStreamSynchronize(s()));
            const size_t n = size_t(rows_cap), n32 = bf16 ? 0 : n, n16 = bf16 ? n : 0;
            for (LiveSeed& e : next) {
                const size_t k = size_t(e.hidden);
                if (chunk_kind(e.kind)) continue;  // the chunk site's buffers (size_chunk_sites)
                if (e.kind == BlueprintKind::kAttentionHead) {
                    e.head.qkv = DeviceBuffer<float>(n32 * 3 * D);
                    e.head.att = DeviceBuffer<float>(n32 * D);
                    e.head.lse = DeviceBuffer<float>(n);
                    e.head.qkv16 = DeviceBuffer<uint16_t>(n16 * 3 * D);
                    e.head.att16 = DeviceBuffer<uint16_t>(n16 * D);
                } else {
                    if (e.kind == BlueprintKind::kMlpUnits) e.pre = DeviceBuffer<float>(n32 * k);
                    e.act = DeviceBuffer<float>(n32 * k);
                    e.pre16 = DeviceBuffer<uint16_t>(n16 * k);
                }
            }
            live = std::move(next);
            live_rows = rows_cap;
            size_chunk_sites();
            size_t staged = 0;
            for (LiveSeed& e : live) {
                e.staged = staged;
                staged += e.floats;
            }
            if (seed_params_host.size() < staged) seed_params_host = PinnedBuffer<float>(staged);
        }
        make_resident();
        for (int32_t l = 0; l < int32_t(chunks.size()); ++l)
            if (chunks[size_t(l)].running) upload_chunk_state(l);
    }

    // Which chunk sites run this step, and their activations, gradients and kernel workspaces
    // for rows_cap rows (freed where none runs). The stream is idle.
    void size_chunk_sites() {
        chunk_running = false;
        const size_t n = size_t(rows_cap);
        for (int32_t l = 0; l < int32_t(chunks.size()); ++l) {
            ChunkSite& c = chunks[size_t(l)];
            c.running = std::any_of(live.begin(), live.end(), [&](const LiveSeed& e) {
                return e.block == l && chunk_kind(e.kind);
            });
            chunk_running = chunk_running || c.running;
            if (l >= int32_t(act.size())) continue;
            BlockAct& b = act[size_t(l)];
            if (!c.running) {
                b.ch = DeviceBuffer<float>();
                b.chs = DeviceBuffer<float>();
                continue;
            }
            if (b.chs.size() == n * size_t(F) && c.rows == rows_cap) continue;
            b.ch = DeviceBuffer<float>(bf16 ? n * size_t(F) : 0);
            b.chs = DeviceBuffer<float>(n * size_t(F));
            const kernels::SeedLayerView v = chunk_view(l, rows_cap);
            c.fwd_ws = DeviceBuffer<uint8_t>(kernels::seed_forward_workspace_bytes(v));
            c.bwd_ws = DeviceBuffer<uint8_t>(kernels::seed_backward_workspace_bytes(v));
            // The kernels leave their counters zeroed after each launch; they start zeroed.
            ESPER_CUDA_CHECK(cudaMemsetAsync(c.fwd_ws.get(), 0, c.fwd_ws.size(), s()));
            ESPER_CUDA_CHECK(cudaMemsetAsync(c.bwd_ws.get(), 0, c.bwd_ws.size(), s()));
            c.rows = rows_cap;
        }
        const size_t chunk_rows = chunk_running ? n : 0;
        cdh = DeviceBuffer<float>(chunk_rows * size_t(F));
        cdy = DeviceBuffer<float>(bf16 ? chunk_rows * size_t(F) : 0);
    }

    // The mirror takes each live seed's slot from the host arenas (parameters and optimizer
    // state) when it does not hold it yet; seeds not running give theirs up.
    void make_resident() {
        for (size_t l = 0; l < resident.size(); ++l)
            for (size_t sd = 0; sd < resident[l].size(); ++sd)
                if (std::none_of(live.begin(), live.end(), [&](const LiveSeed& e) {
                        return size_t(e.layer) == l && size_t(e.seed) == sd;
                    }))
                    resident[l][sd].slot = -1;
        for (const LiveSeed& e : live) {
            Resident& r = resident[size_t(e.layer)][size_t(e.seed)];
            if (r.slot == e.slot && r.kind == e.kind) continue;
            BlueprintArenas& a = seeds->arenas(e.layer);
            const size_t bytes = e.floats * sizeof(float);
            ESPER_CUDA_CHECK(cudaMemcpyAsync(P(e.off), a.params(e.kind, e.slot).data(), bytes,
                                             cudaMemcpyHostToDevice, s()));
            ESPER_CUDA_CHECK(cudaMemcpyAsync(m.get() + e.off, a.opt_m(e.kind, e.slot).data(), bytes,
                                             cudaMemcpyHostToDevice, s()));
            if (adamw)
                ESPER_CUDA_CHECK(cudaMemcpyAsync(v.get() + e.off, a.opt_v(e.kind, e.slot).data(),
                                                 bytes, cudaMemcpyHostToDevice, s()));
            r = Resident{e.slot, e.kind, e.off};
        }
    }

    // Device → host of every resident slot a seed still holds (parameters, optimizer moments).
    void download_seeds() {
        for (size_t l = 0; l < resident.size(); ++l) {
            if (resident[l].empty()) continue;
            const SeedTable& t = seeds->table(int32_t(l));
            for (int32_t sd = 0; sd < int32_t(resident[l].size()); ++sd) {
                const Resident& r = resident[l][size_t(sd)];
                if (r.slot < 0 || t.slot(sd) != r.slot || t.kind(sd) != r.kind) continue;
                const size_t off = r.off;
                BlueprintArenas& a = seeds->arenas(int32_t(l));
                const size_t bytes = size_t(a.stride(r.kind)) * sizeof(float);
                ESPER_CUDA_CHECK(cudaMemcpyAsync(a.params(r.kind, r.slot).data(), P(off), bytes,
                                                 cudaMemcpyDeviceToHost, s()));
                ESPER_CUDA_CHECK(cudaMemcpyAsync(a.opt_m(r.kind, r.slot).data(), m.get() + off,
                                                 bytes, cudaMemcpyDeviceToHost, s()));
                if (adamw)
                    ESPER_CUDA_CHECK(cudaMemcpyAsync(a.opt_v(r.kind, r.slot).data(), v.get() + off,
                                                     bytes, cudaMemcpyDeviceToHost, s()));
            }
        }
    }

    // After the step's result was read: the trained seeds' parameters into the host arenas, each
    // live seed's gradient Σg² and the step's telemetry sums into `tel`. False when a seed's
    // gradient is not finite (a governor trip then restores the host state and upload_all the
    // mirrors).
    bool finish_seeds(Telemetry& tel) {
        if (seeds == nullptr) return true;
        bool finite = true;
        for (size_t i = 0; i < live.size(); ++i) {
            const LiveSeed& e = live[i];
            const double sq = seed_sq_host[i];
            finite = finite && std::isfinite(sq);
            tel.set_blueprint_grad_sq(e.layer, e.seed, sq);
            if (e.trains)
                std::memcpy(seeds->arenas(e.layer).params(e.kind, e.slot).data(),
                            seed_params_host.get() + e.staged, e.floats * sizeof(float));
        }
        // The chunk sites' telemetry of the step, of all their seeds.
        for (int32_t l = 0; l < int32_t(chunks.size()) && l < L; ++l) {
            const ChunkSite& c = chunks[size_t(l)];
            if (c.layer < 0) continue;
            kernels::SeedTelemetryAccum* acc = tel.step_accum(c.layer);
            const double* t = chunk_tel_host.get() + c.tel;
            const size_t S = size_t(c.num_seeds);
            const SeedTable& table = seeds->table(c.layer);
            for (size_t sd = 0; sd < S; ++sd) {
                if (c.running) {  // the seed kernels' accumulators
                    merge_activation_summary(acc, int32_t(sd), t[sd], t[S + sd], t[2 * S + sd],
                                             t[3 * S + sd]);
                    acc->grad_sq[sd] += t[4 * S + sd];
                    acc->contribution[sd] += t[5 * S + sd];
                } else {  // launch_chunk_moments' sums: h's, then ∂L/∂h's
                    const double count = double(live_rows_in_step) * table.chunk_width(int32_t(sd));
                    merge_activation_sums(acc, int32_t(sd), count, t[3 * sd], t[3 * sd + 1],
                                          t[3 * sd + 2]);
                    acc->grad_sq[sd] += t[3 * S + 3 * sd + 1];
                }
            }
        }
        if (!telemetry) return finite;
        std::vector<uint8_t> running;
        for (int32_t l = 0; l < L && l < int32_t(seed_arenas.size()); ++l) {
            const int32_t wl = model->widening_layer(l);
            if (wl < 0) continue;
            kernels::SeedTelemetryAccum* acc = tel.step_accum(wl);
            const int32_t num = seeds->table(wl).num_seeds();
            running.assign(size_t(num), 0);
            for (size_t i = 0; i < live.size(); ++i) {
                const LiveSeed& e = live[i];
                if (e.block != l || chunk_kind(e.kind)) continue;
                const double* t = tel_host.get() + live_tel(i);
                const double count = double(live_rows_in_step) *
                                     (e.kind == BlueprintKind::kAttentionHead ? D : e.hidden);
                acc->contribution[e.seed] -= double(e.a_fwd) * t[0];
                acc->grad_sq[e.seed] += t[1];
                merge_activation_sums(acc, e.seed, count, t[2], t[3], t[4]);
                running[size_t(e.seed)] = 1;
            }
            double h[3] = {0.0, 0.0, 0.0};
            if (chunk_dormant(l)) {  // the sums of h's chunks, forward
                const ChunkSite& c = chunks[size_t(l)];
                for (size_t i = 0; i < 3 * size_t(c.num_seeds); ++i)
                    h[i % 3] += chunk_tel_host[c.tel + i];
            } else {
                std::copy_n(tel_host.get() + size_t(l) * 3, 3, h);
            }
            for (int32_t sd = 0; sd < num; ++sd)
                if (!running[size_t(sd)])
                    merge_activation_sums(acc, sd, double(live_rows_in_step) * F, h[0], h[1], h[2]);
        }
        return finite;
    }

    // The host's structure changed (grow_depth, the room's units or heads in use, or a
    // checkpoint of another structure restored): the activations, the buckets and the captured
    // graphs follow (the stream is idle).
    void sync_structure() {
        const int32_t live = model->n_layer();
        ESPER_REQUIRE(live >= 1 && live <= NB, "cuda transformer: ", live, " live blocks of ", NB);
        std::vector<int32_t> u(size_t(NB), 0), h(size_t(NB), 0);
        for (int32_t l = 0; l < live; ++l) {
            const int32_t used = model->extra_units(l);
            u[size_t(l)] = (used + 7) / 8 * 8;
            ESPER_CHECK_INPUT(u[size_t(l)] <= Umax, "run.device: cuda: block ", l, " holds ", used,
                              " extra units; the GPU step computes them in groups of 8, so "
                              "model.transformer.max_extra_units must be at least ",
                              u[size_t(l)], " (it is ", Umax, ")");
            h[size_t(l)] = model->extra_heads(l);
        }
        if (live == L && u == units && h == heads) return;
        units = std::move(u);
        heads = std::move(h);
        if (live != L) {
            L = live;
            const Model::LrRamp r =
                model->host_lr_ramp(0);  // its range does not depend on the step
            ramp_lo = r.end > r.begin ? off[r.begin] : 0;
            ramp_hi = r.end > r.begin ? off[r.end] : 0;
            plan_buckets();
        }
        const int32_t cap = rows_cap;
        rows_cap = 0;
        ensure_rows(cap);
    }

    void copy_state(bool to_device) {
        const std::vector<ParamRef>& ps = model->params();
        const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
        auto copy = [&](float* dev, float* host, size_t n) {
            ESPER_CUDA_CHECK(cudaMemcpyAsync(to_device ? static_cast<void*>(dev) : host,
                                             to_device ? static_cast<const void*>(host) : dev,
                                             n * sizeof(float), kind, s()));
        };
        for (size_t i = 0; i < ps.size(); ++i) {
            const size_t n = size_t(ps[i].value->numel());
            copy(p.get() + off[i], ps[i].value->data(), n);
            copy(m.get() + off[i], optimizer->m_[i].data(), n);
            if (adamw) copy(v.get() + off[i], optimizer->v_[i].data(), n);
        }
        // sync-point: step boundary (restore / snapshot)
        ESPER_CUDA_CHECK(cudaStreamSynchronize(s()));
    }
};

CudaTransformerBackend::CudaTransformerBackend(const Config& config, TransformerModel& model,
                                               Optimizer& optimizer, int32_t batch,
                                               int32_t eval_batch, NcclComm* nccl,
                                               int64_t grad_bucket_bytes, SeedManager* seeds)
    : impl_(std::make_unique<Impl>()) {
    Impl& d = *impl_;
    d.seeds = seeds;
    const TransformerConfig& t = model.shape();
    d.model = &model;
    d.optimizer = &optimizer;
    d.opt = config.optimizer;
    d.bf16 = config.run.precision != "fp32";
    d.adamw = config.optimizer.kind == OptimizerKind::kAdamw;
    d.C = int32_t(t.d_model);
    d.H = int32_t(t.n_head);
    d.D = d.C / d.H;
    d.F = 4 * d.C;
    d.T = model.context();
    d.L = model.n_layer();
    d.NB = int32_t(t.n_layer + t.grow_depth.blocks);
    d.tied = t.tie_embeddings;
    ESPER_CHECK_INPUT(d.D == 32 || d.D == 64 || d.D == 128,
                      "run.device: cuda: the transformer's head dimension d_model / n_head = ", d.D,
                      " must be 32, 64 or 128 (the fused attention kernels)");
    ESPER_CHECK_INPUT(d.C % 8 == 0, "run.device: cuda: model.transformer.d_model ", d.C,
                      " must be a multiple of 8");
    d.Umax = int32_t(t.max_extra_units);
    d.Hmax = int32_t(t.max_extra_heads);
    d.ho = widening_offsets(BlueprintKind::kAttentionHead, d.C, d.D);
    d.units.assign(size_t(d.NB), 0);  // sync_structure (upload_all) puts the room in use
    d.heads.assign(size_t(d.NB), 0);

    const std::vector<ParamRef>& ps = model.params();
    d.blocks.assign(size_t(d.NB), BlockOff{});
    d.block_begin.assign(size_t(d.NB) + 1, 0);
    for (const ParamRef& pr : ps) {
        const size_t o = d.total;
        d.off.push_back(o);
        // 32-byte aligned starts for every tensor, so its bf16 copy in w16 starts 16-byte aligned
        // too (vector loads, cuBLASLt operands and bf16 biases).
        d.total += (size_t(pr.value->numel()) + 7) / 8 * 8;
        const std::string& nm = pr.name;
        if (nm == "wte") d.wte = o;
        if (nm == "wpe") d.wpe = o;
        if (nm == "lnf.weight") d.lnf_w = d.block_begin[size_t(d.NB)] = o;
        if (nm == "lnf.bias") d.lnf_b = o;
        if (nm == "head.weight") d.head = o;
        if (nm.rfind("block", 0) == 0) {
            const size_t dot = nm.find('.');
            const int32_t l = std::stoi(nm.substr(5, dot - 5));
            const std::string rest = nm.substr(dot + 1);
            BlockOff& b = d.blocks[size_t(l)];
            if (rest == "ln1.weight") b.ln1_w = d.block_begin[size_t(l)] = o;
            if (rest == "ln1.bias") b.ln1_b = o;
            if (rest == "attn.qkv.weight") b.qkv_w = o;
            if (rest == "attn.qkv.bias") b.qkv_b = o;
            if (rest == "attn.proj.weight") b.proj_w = o;
            if (rest == "attn.proj.bias") b.proj_b = o;
            if (rest == "ln2.weight") b.ln2_w = o;
            if (rest == "ln2.bias") b.ln2_b = o;
            if (rest == "mlp.fc.weight") b.fc_w = o;
            if (rest == "mlp.fc.bias") b.fc_b = o;
            if (rest == "mlp.proj.weight") b.fc2_w = o;
            if (rest == "mlp.proj.bias") b.fc2_b = o;
            if (rest == "mlp.extra.fc.weight") b.xu_v = o;
            if (rest == "mlp.extra.fc.bias") b.xu_c = o;
            if (rest == "mlp.extra.proj.weight_t") b.xu_u = o;
            if (rest == "attn.extra_heads") b.xh = o;
        }
    }
    if (d.tied) d.head = d.wte;
    // The seed arenas' mirrors of the base blocks (widening site: mlp_units, attention_head,
    // lora; chunk site: residual_mlp, lowrank, scale_shift) follow the parameters, every widening
    // slot and every chunk arena at a multiple of 8 floats (bf16 operand alignment).
    d.total_all = d.total;
    d.seed_arenas.assign(seeds != nullptr ? size_t(t.n_layer) : 0, {});
    d.chunks.resize(d.seed_arenas.size());
    d.resident.assign(seeds != nullptr ? size_t(seeds->num_layers()) : 0, {});
    size_t live_cap = 0, chunk_tel_n = 0;
    for (size_t l = 0; l < d.seed_arenas.size(); ++l) {
        const int32_t wl = model.widening_layer(int32_t(l));
        const int32_t cl = model.chunk_layer(int32_t(l));
        if (wl >= 0) d.telemetry = true;
        for (const int32_t layer : {wl, cl}) {
            if (layer < 0) continue;
            const BlueprintArenas& arenas = seeds->arenas(layer);
            d.resident[size_t(layer)].assign(size_t(seeds->table(layer).num_seeds()), {});
            for (int ki = 0; ki < Impl::kSeedKinds; ++ki) {
                const BlueprintKind k = Impl::kSeedKindOf[ki];
                if ((ki >= Impl::kFirstChunkKind) != (layer == cl) || !arenas.serves(k)) continue;
                Impl::SeedArena& a = d.seed_arenas[l][size_t(ki)];
                a.base = d.total_all;
                a.capacity = arenas.capacity(k);
                a.hidden = k == BlueprintKind::kAttentionHead ? d.D : arenas.hidden(k);
                if (layer == cl) {  // the seed kernels address slots by the host's stride
                    a.stride = size_t(arenas.stride(k));
                    d.total_all += (a.stride * size_t(a.capacity) + 7) / 8 * 8;
                } else {
                    a.stride = (size_t(arenas.stride(k)) + 7) / 8 * 8;
                    d.total_all += a.stride * size_t(a.capacity);
                }
                live_cap += size_t(a.capacity);
            }
        }
        if (cl < 0) continue;
        Impl::ChunkSite& c = d.chunks[l];
        c.layer = cl;
        c.num_seeds = seeds->table(cl).num_seeds();
        c.state = DeviceBuffer<uint8_t>(c.state_bytes());
        c.state_host = PinnedBuffer<uint8_t>(c.state_bytes());
        const std::span<const int32_t> offsets = seeds->table(cl).chunk_offsets();
        c.offsets = DeviceBuffer<int32_t>(offsets.size());
        ESPER_CUDA_CHECK(cudaMemcpy(c.offsets.get(), offsets.data(),
                                    offsets.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
        c.tel = chunk_tel_n;
        chunk_tel_n += 6 * size_t(c.num_seeds);
    }
    d.chunk_tel = DeviceBuffer<double>(chunk_tel_n);
    d.chunk_tel_host = PinnedBuffer<double>(chunk_tel_n);
    for (int32_t l = 0; l < d.NB; ++l)  // the buckets' ranges need each block's tensors together
        ESPER_REQUIRE(d.block_begin[size_t(l)] < d.block_begin[size_t(l) + 1] &&
                          d.blocks[size_t(l)].fc2_b < d.block_begin[size_t(l) + 1],
                      "cuda transformer: block ", l, "'s parameters are not contiguous");

    d.stream = CudaStream(cudaStreamNonBlocking);
#if ESPER_HAVE_NCCL
    d.nccl = nccl;
#else
    ESPER_CHECK_INPUT(nccl == nullptr, "run.device: cuda with several ranks needs an NCCL build");
#endif
    if (grad_bucket_bytes >= 0) d.bucket_bytes = grad_bucket_bytes;
    d.plan_buckets();
    ESPER_CUBLAS_CHECK(cublasLtCreate(&d.lt));
    d.lt_ws = DeviceBuffer<uint8_t>(kLtWorkspace);
    d.p = DeviceBuffer<float>(d.total_all);
    d.g = DeviceBuffer<float>(d.total_all);
    d.m = DeviceBuffer<float>(d.total_all);
    d.v = DeviceBuffer<float>(d.adamw ? d.total_all : 0);
    d.w16 = DeviceBuffer<uint16_t>(d.bf16 ? d.total_all : 0);
    const size_t tel_n = d.telemetry ? d.live_tel(live_cap) : 0;
    d.tel_dev = DeviceBuffer<double>(tel_n);
    d.tel_host = PinnedBuffer<double>(tel_n);
    d.seed_sq = DeviceBuffer<double>(live_cap);
    d.seed_sq_host = PinnedBuffer<double>(live_cap);
    d.seed_adam = DeviceBuffer<kernels::AdamwHyper>(live_cap);
    d.seed_adam_host = PinnedBuffer<kernels::AdamwHyper>(live_cap);
    d.seed_sgd = DeviceBuffer<kernels::SgdHyper>(1);
    d.seed_sgd_host = PinnedBuffer<kernels::SgdHyper>(1);
    d.loss = DeviceBuffer<float>(1);
    d.correct = DeviceBuffer<int32_t>(1);
    d.sumsq = DeviceBuffer<double>(1);
    d.adam_dev = DeviceBuffer<kernels::AdamwHyper>(2);
    d.sgd_dev = DeviceBuffer<kernels::SgdHyper>(2);
    d.adam_host = PinnedBuffer<kernels::AdamwHyper>(2);
    d.sgd_host = PinnedBuffer<kernels::SgdHyper>(2);
    d.result = PinnedBuffer<Impl::Result>(1);
    d.use_graph = config.run.cuda_graph;
    d.done = CudaEvent(cudaEventDisableTiming);
    d.ensure_rows(std::max(batch, std::max(eval_batch, 1)));
    ESPER_CUDA_CHECK(cudaDeviceSynchronize());  // setup memsets ran on the legacy stream
    upload_all();
}

CudaTransformerBackend::~CudaTransformerBackend() {
    if (!impl_) return;
    if (impl_->stream.get() != nullptr) (void)cudaStreamSynchronize(impl_->stream.get());
    if (impl_->comm.get() != nullptr) (void)cudaStreamSynchronize(impl_->comm.get());
    if (impl_->lt != nullptr) (void)cublasLtDestroy(impl_->lt);
}

StepResult CudaTransformerBackend::run_step(const Batch& batch, const StepRates& rates,
                                            Telemetry& telemetry) {
    Impl& d = *impl_;
    d.set_batch(batch);
    d.prepare_seeds();
    d.upload_hyper(rates);
    d.upload_seed_hyper(rates.blueprint_lr);
    d.live_rows_in_step = batch.rows;
    d.launch_step(batch.samples, batch.rows / batch.samples);
    const Impl::Result r = d.wait_result();
    const bool seeds_finite = d.finish_seeds(telemetry);
    StepResult out;
    out.loss = r.loss;
    out.correct = r.correct;
    out.finite = std::isfinite(r.loss) && std::isfinite(r.sumsq) && seeds_finite;
    return out;
}

void CudaTransformerBackend::commit_step(const StepRates&) {
    Impl& d = *impl_;
    ++d.optimizer->host_steps_;
    // The blueprint update already ran on the device: the slots' step counts follow it.
    for (const Impl::LiveSeed& e : d.live) {
        if (!e.trains) continue;
        const size_t l = size_t(e.layer), ki = size_t(e.kind), slot = size_t(e.slot);
        d.optimizer->slot_owner_[l][ki][slot] = e.seed;
        d.optimizer->slot_steps_[l][ki][slot] = e.t;
    }
}

BatchResult CudaTransformerBackend::eval_batch(const Batch& batch) {
    Impl& d = *impl_;
    d.set_batch(batch);
    d.prepare_seeds();
    d.training_pass = false;
    d.forward(batch.samples, batch.rows / batch.samples);  // uncaptured: evaluation is rare
    d.copy_result(false);
    const Impl::Result r = d.wait_result();
    BatchResult out;
    out.loss = r.loss;
    out.correct = r.correct;
    out.rows = batch.rows;
    return out;
}

void CudaTransformerBackend::upload_all() {
    // sync-point: step boundary (restore)
    ESPER_CUDA_CHECK(cudaStreamSynchronize(impl_->s()));
    impl_->copy_state(true);
    impl_->sync_structure();
    // The host arenas are the state now: the next step takes every live seed's slot from them.
    for (std::vector<Impl::Resident>& r : impl_->resident) r.assign(r.size(), Impl::Resident{});
}

void CudaTransformerBackend::download_all() {
    // sync-point: step boundary (snapshot)
    ESPER_CUDA_CHECK(cudaStreamSynchronize(impl_->s()));
    if (impl_->seeds != nullptr) impl_->download_seeds();
    impl_->copy_state(false);
}

int64_t CudaTransformerBackend::graph_captures() const { return impl_->captures; }

int32_t CudaTransformerBackend::grad_buckets() const { return int32_t(impl_->buckets.size()); }

std::string CudaTransformerBackend::germination_refusal(const GerminateCommand& g) const {
    const Impl& d = *impl_;
    const int32_t layer = g.target.layer;
    int32_t block = -1;
    for (int32_t l = 0; l < int32_t(d.seed_arenas.size()); ++l)
        if (d.model->widening_layer(l) == layer) block = l;
    if (block < 0) {
        // A chunk site: its kinds run in the fused seed kernels (the seed manager refuses the
        // kinds a chunk site does not take).
        for (const Impl::ChunkSite& c : d.chunks)
            if (c.layer == layer) return {};
        return "run.device: cuda: seed layer " + std::to_string(layer) +
               " has no seed site the GPU transformer runs (or use run.device: cpu)";
    }
    if (g.kind == BlueprintKind::kAttentionHead) return {};
    if (g.kind == BlueprintKind::kLora) {
        // bf16 operands: the adapter's activation [rows, rank] and B [3·d_model, rank] need rows
        // of a multiple of 16 bytes for cuBLASLt.
        const int32_t r = d.seed_arenas[size_t(block)][2].hidden;
        if (r > d.F)  // its gradient [rows, rank] goes through the MLP hidden's scratch
            return "run.device: cuda: lora seeds germinate on the GPU transformer with "
                   "blueprints.lora.rank at most 4·d_model (" +
                   std::to_string(d.F) + "; it is " + std::to_string(r) + ")";
        if (d.bf16 && r % 8 != 0)
            return "run.device: cuda: lora seeds germinate on the GPU transformer in bf16 with "
                   "blueprints.lora.rank a multiple of 8 (it is " +
                   std::to_string(r) + "; or use run.precision: fp32)";
        return {};
    }
    if (g.kind != BlueprintKind::kMlpUnits)
        return "run.device: cuda: " + std::string(blueprint_kind_name(g.kind)) +
               " seeds do not germinate on the GPU transformer yet (mlp_units, attention_head "
               "and lora do; or use run.device: cpu)";
    const int32_t k = d.seed_arenas[size_t(block)][0].hidden;
    if (k % 8 != 0 || d.Umax % 8 != 0)
        return "run.device: cuda: mlp_units seeds germinate on the GPU transformer in groups of 8 "
               "units: blueprints.mlp_units.units (" +
               std::to_string(k) + ") and model.transformer.max_extra_units (" +
               std::to_string(d.Umax) + ") must be multiples of 8";
    return {};
}

}  // namespace esper::kasmina
