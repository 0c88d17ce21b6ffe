// The GPU decoder (see cuda_generate.h). One step over `rows` rows of x (embedded by the previous
// step's pick, or by the prefill): per block LN1 → qkv (bf16 GEMM, bias epilogue, fp32 out) →
// append K, V to the bf16 cache → decode attention (bf16 out) → x += proj (GEMM with β = 1 and
// the bias epilogue) → LN2 → fc (bias+GELU epilogue) → bf16 → x += fc2; the tail: LNf → logits
// (bf16 GEMM, fp32 out) → pick, which also embeds the picked bytes into x for the next step →
// advance (in the pick at one row). Steps the path sends to the fused kernels (see
// CudaDecodePath) run the products as kernels::launch_decode_linear instead: LN1+qkv+append,
// x += proj, LN2+fc+GELU→bf16, x += fc2, LNf+logits. Decode steps (one row per sequence) are one
// captured graph; a prefill (one sequence's window, row by row) runs the same body uncaptured.
// Folded extra heads become more heads of the block's attention (their Wq/Wk/Wv rows appended to
// qkv, Wo columns to proj), folded units more fc rows and fc2 columns; fc is padded to a multiple
// of 8 rows (zero rows: gelu(0) = 0) so every bf16 operand row stays 16-byte aligned for cuBLASLt.
#include "kasmina/train/cuda_generate.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kasmina/train/cuda_handles.h"
#include "kernels/bf16_host.h"
#include "kernels/decode.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"

namespace esper::kasmina {

namespace {

constexpr float kLnEps = 1e-5f;
constexpr size_t kGemmWorkspace = size_t(32) << 20;

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& host) {
    DeviceBuffer<T> d(host.size());
    if (!host.empty())
        ESPER_CUDA_CHECK(
            cudaMemcpy(d.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
DeviceBuffer<uint16_t> upload_bf16(const std::vector<float>& host) {
    std::vector<uint16_t> b(host.size());
    for (size_t i = 0; i < host.size(); ++i) b[i] = kernels::bf16_bits(host[i]);
    return upload(b);
}

struct LtHandle {
    cublasLtHandle_t h = nullptr;
    LtHandle() { ESPER_CUBLAS_CHECK(cublasLtCreate(&h)); }
    ~LtHandle() {
        if (h) (void)cublasLtDestroy(h);
    }
    LtHandle(const LtHandle&) = delete;
    LtHandle& operator=(const LtHandle&) = delete;
};

// Mapped pinned host memory the pick kernel writes into.
template <typename T>
struct MappedBuffer {
    T* host = nullptr;
    T* dev = nullptr;
    size_t n = 0;
    MappedBuffer() = default;
    explicit MappedBuffer(size_t count) : n(count) {
        ESPER_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host),
                                       std::max<size_t>(n, 1) * sizeof(T), cudaHostAllocMapped));
        ESPER_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev), host, 0));
    }
    ~MappedBuffer() {
        if (host) (void)cudaFreeHost(host);
    }
    MappedBuffer(MappedBuffer&& o) noexcept { *this = std::move(o); }
    MappedBuffer& operator=(MappedBuffer&& o) noexcept {
        std::swap(host, o.host);
        std::swap(dev, o.dev);
        std::swap(n, o.n);
        return *this;
    }
};

}  // namespace

struct CudaDecoder::Impl {
    struct Layer {
        int32_t heads = 0, fc = 0;  // H' (host + folded heads), fc rows (4C + folded units, padded)
        DeviceBuffer<float> ln1_w, ln1_b, ln2_w, ln2_b, qkv_b, proj_b, fc_b, fc2_b;
        DeviceBuffer<uint16_t> qkv_w, proj_w, fc_w, fc2_w, k_cache, v_cache;
    };
    int32_t B = 0, C = 0, D = 0, T = 0, R = 0, max_heads = 0, max_fc = 0;
    CudaDecodePath path = CudaDecodePath::kAuto;
    std::vector<Layer> layers;
    DeviceBuffer<float> wte, wpe, lnf_w, lnf_b;
    DeviceBuffer<uint16_t> head;
    DeviceBuffer<float> x, qkv, f, mean, rstd, xlast, logits;
    DeviceBuffer<uint16_t> a16, att16, f16, xf16;
    DeviceBuffer<uint8_t> attn_ws, gemm_ws;
    DeviceBuffer<int32_t> next, tokens_in, ints;  // ints: pos, step, zero
    PinnedBuffer<int32_t> staging;                // the windows of a prefill, [B, T]
    MappedBuffer<int32_t> out_tokens;
    MappedBuffer<float> out_logprobs;
    CudaStream stream{cudaStreamNonBlocking};
    LtHandle lt;
    CudaGraphExec graph;
    kernels::DecodePick graph_pick{};
    int32_t* graph_out = nullptr;
    CudaDecodeStats stats;

    int32_t* pos() const { return ints.get(); }
    int32_t* step() const { return ints.get() + 1; }
    int32_t* zero() const { return ints.get() + 2; }

    void linear(const void* a, const uint16_t* w, float* d, int32_t rows, int32_t in, int32_t out,
                const float* bias, kernels::GemmEpilogue epi, float beta) {
        kernels::GemmSpec s;
        s.trans_b = true;
        s.m = rows;
        s.n = out;
        s.k = in;
        s.lda = in;
        s.ldb = in;
        s.ldd = out;
        s.ab_type = kernels::GemmDtype::kBfloat16;
        s.d_type = kernels::GemmDtype::kFloat32;
        s.beta = beta;
        s.epilogue = epi;
        s.bias = bias;
        ESPER_CUDA_CHECK(
            kernels::launch_gemm(lt.h, s, a, w, d, gemm_ws.get(), gemm_ws.size(), stream.get()));
    }

    // A product of the fused path: y (fp32; += when residual) or y16 (bf16) = a·Wᵀ + bias,
    // a = bf16(LN(x)) when ln_w is given, else a16.
    void fused_linear(int32_t rows, int32_t in, int32_t out, const float* xs, const float* ln_w,
                      const float* ln_b, const uint16_t* a16_in, const uint16_t* w,
                      const float* bias, bool gelu, bool residual, float* y, uint16_t* y16,
                      const kernels::DecodeAppend& append = {}) {
        kernels::DecodeLinear l;
        l.rows = rows;
        l.in = in;
        l.out = out;
        l.x = xs;
        l.ln_w = ln_w;
        l.ln_b = ln_b;
        l.eps = kLnEps;
        l.a_in = a16_in;
        l.w = w;
        l.bias = bias;
        l.gelu = gelu;
        l.beta = residual ? 1.0f : 0.0f;
        l.y = y;
        l.y_bf16 = y16;
        l.overlap = path != CudaDecodePath::kFusedSerial;
        l.append = append;
        ESPER_CUDA_CHECK(kernels::launch_decode_linear(l, stream.get()));
    }

    bool fused_rows(int32_t rows) const {
        if (path == CudaDecodePath::kGemm ||
            (path == CudaDecodePath::kAuto && rows > kCudaDecodeFusedRows) ||
            !kernels::decode_linear_fits(rows, C, true))
            return false;
        return std::all_of(layers.begin(), layers.end(), [&](const Layer& L) {
            return kernels::decode_linear_fits(rows, L.heads * D, false) &&
                   kernels::decode_linear_fits(rows, L.fc, false);
        });
    }

    // The blocks over `rows` rows of x (embedded already); pos_dev: see kernels::DecodeShape.
    void body(int32_t rows, bool shared, int32_t cache_base, const int32_t* pos_dev) {
        cudaStream_t s = stream.get();
        using kernels::GemmEpilogue;
        const bool fused = fused_rows(rows);
        for (Layer& L : layers) {
            const int32_t HD = L.heads * D;
            kernels::DecodeShape sh;
            sh.rows = rows;
            sh.heads = L.heads;
            sh.head_dim = D;
            sh.context = T;
            sh.ld_q = 3 * HD;
            sh.ld_out = HD;
            sh.shared = shared;
            sh.cache_base = cache_base;
            sh.scale = 1.0f / std::sqrt(float(D));
            sh.overlap = fused && path != CudaDecodePath::kFusedSerial;
            if (fused) {  // the K, V append is the qkv product's epilogue
                kernels::DecodeAppend ap;
                ap.k_cache = L.k_cache.get();
                ap.v_cache = L.v_cache.get();
                ap.pos = pos_dev;
                ap.width = HD;
                ap.context = T;
                ap.cache_base = cache_base;
                ap.shared = shared;
                fused_linear(rows, C, 3 * HD, x.get(), L.ln1_w.get(), L.ln1_b.get(), nullptr,
                             L.qkv_w.get(), L.qkv_b.get(), false, false, qkv.get(), nullptr, ap);
            } else {
                ESPER_CUDA_CHECK(kernels::launch_layernorm_forward(
                    x.get(), L.ln1_w.get(), L.ln1_b.get(), nullptr, a16.get(), mean.get(),
                    rstd.get(), rows, C, kLnEps, s));
                linear(a16.get(), L.qkv_w.get(), qkv.get(), rows, C, 3 * HD, L.qkv_b.get(),
                       GemmEpilogue::kBias, 0.0f);
                ESPER_CUDA_CHECK(
                    kernels::launch_decode_append(sh, qkv.get() + HD, qkv.get() + 2 * HD, pos_dev,
                                                  L.k_cache.get(), L.v_cache.get(), s));
            }
            ESPER_CUDA_CHECK(kernels::launch_decode_attention(sh, qkv.get(), L.k_cache.get(),
                                                              L.v_cache.get(), pos_dev, att16.get(),
                                                              attn_ws.get(), attn_ws.size(), s));
            if (fused) {
                fused_linear(rows, HD, C, nullptr, nullptr, nullptr, att16.get(), L.proj_w.get(),
                             L.proj_b.get(), false, true, x.get(), nullptr);
                fused_linear(rows, C, L.fc, x.get(), L.ln2_w.get(), L.ln2_b.get(), nullptr,
                             L.fc_w.get(), L.fc_b.get(), true, false, nullptr, f16.get());
                fused_linear(rows, L.fc, C, nullptr, nullptr, nullptr, f16.get(), L.fc2_w.get(),
                             L.fc2_b.get(), false, true, x.get(), nullptr);
                continue;
            }
            linear(att16.get(), L.proj_w.get(), x.get(), rows, HD, C, L.proj_b.get(),
                   GemmEpilogue::kBias, 1.0f);
            ESPER_CUDA_CHECK(kernels::launch_layernorm_forward(
                x.get(), L.ln2_w.get(), L.ln2_b.get(), nullptr, a16.get(), mean.get(), rstd.get(),
                rows, C, kLnEps, s));
            linear(a16.get(), L.fc_w.get(), f.get(), rows, C, L.fc, L.fc_b.get(),
                   GemmEpilogue::kBiasGelu, 0.0f);
            ESPER_CUDA_CHECK(
                kernels::launch_cast_to_bf16(f.get(), f16.get(), int64_t(rows) * L.fc, s));
            linear(f16.get(), L.fc2_w.get(), x.get(), rows, L.fc, C, L.fc2_b.get(),
                   GemmEpilogue::kBias, 1.0f);
        }
    }

    // LNf → logits → pick for the B rows of `xs`, the picked bytes' embeddings into x for the next
    // step, then the position update (in the pick at one row).
    void tail(const float* xs, const kernels::DecodePick& pick, int32_t* out_tok, float* out_lp,
              int64_t capacity, int32_t set_pos) {
        cudaStream_t s = stream.get();
        const bool fused = fused_rows(B), overlap = fused && path != CudaDecodePath::kFusedSerial;
        if (fused) {
            fused_linear(B, C, kByteVocab, xs, lnf_w.get(), lnf_b.get(), nullptr, head.get(),
                         nullptr, false, false, logits.get(), nullptr);
        } else {
            ESPER_CUDA_CHECK(kernels::launch_layernorm_forward(xs, lnf_w.get(), lnf_b.get(),
                                                               nullptr, xf16.get(), mean.get(),
                                                               rstd.get(), B, C, kLnEps, s));
            linear(xf16.get(), head.get(), logits.get(), B, C, kByteVocab, nullptr,
                   kernels::GemmEpilogue::kNone, 0.0f);
        }
        kernels::DecodeNext nx;  // the next step's embedding, and at one row its advance
        nx.wte = wte.get();
        nx.wpe = wpe.get();
        nx.x = x.get();
        nx.channels = C;
        nx.context = T;
        nx.pos = pos();
        nx.set_pos = set_pos;
        nx.advance = B == 1;
        nx.step_out = step();
        ESPER_CUDA_CHECK(kernels::launch_decode_pick(logits.get(), B, pick, step(), next.get(),
                                                     out_tok, out_lp, capacity, s, overlap, nx));
        if (!nx.advance)
            ESPER_CUDA_CHECK(kernels::launch_decode_advance(pos(), step(), set_pos, s, overlap));
    }

    // Prefills every sequence with its window (B windows of equal length, [B, len] in staging).
    void prefill(int32_t len, const kernels::DecodePick& pick, int64_t capacity) {
        cudaStream_t s = stream.get();
        ESPER_CUDA_CHECK(cudaMemcpyAsync(tokens_in.get(), staging.get(),
                                         size_t(B) * T * sizeof(int32_t), cudaMemcpyHostToDevice,
                                         s));
        for (int32_t c = 0; c < B; ++c) {
            ESPER_CUDA_CHECK(kernels::launch_decode_embed(tokens_in.get() + int64_t(c) * T,
                                                          wte.get(), wpe.get(), zero(), true,
                                                          x.get(), len, C, s));
            body(len, true, c, zero());
            ESPER_CUDA_CHECK(cudaMemcpyAsync(xlast.get() + int64_t(c) * C,
                                             x.get() + int64_t(len - 1) * C, size_t(C) * 4,
                                             cudaMemcpyDeviceToDevice, s));
        }
        tail(xlast.get(), pick, out_tokens.dev, out_logprobs.dev, capacity, len);
    }

    // One decode step; x holds the rows' embeddings already (the previous tail's pick wrote them).
    void capture(const kernels::DecodePick& pick, int64_t capacity) {
        graph.destroy();
        graph = capture_graph(stream.get(), [&] {
            body(B, false, 0, pos());
            tail(x.get(), pick, out_tokens.dev, out_logprobs.dev, capacity, -1);
        });
        graph_pick = pick;
        graph_out = out_tokens.dev;
    }
};

CudaDecoder::CudaDecoder(const TransformerModel& model, int32_t batch, CudaDecodePath path)
    : impl_(std::make_unique<Impl>()) {
    if (const std::string why = cuda_decoder_refusal(model); !why.empty())
        ESPER_THROW(kInvalidInput, "GPU generation: ", why);
    ESPER_CHECK_INPUT(batch >= 1, "--batch: ", batch, " (must be >= 1)");
    Impl& m = *impl_;
    const TransformerConfig& cfg = model.shape();
    m.B = batch;
    m.path = path;
    m.C = int32_t(cfg.d_model);
    m.D = int32_t(cfg.d_model / cfg.n_head);
    m.T = model.context();
    m.R = std::max(m.T, m.B);
    const DecodeWeights w = decode_weights(model);
    int64_t weight_bytes = 0;
    auto up32 = [&](const std::vector<float>& v) {
        weight_bytes += int64_t(v.size()) * 4;
        return upload(v);
    };
    auto up16 = [&](const std::vector<float>& v) {
        weight_bytes += int64_t(v.size()) * 2;
        return upload_bf16(v);
    };
    m.layers.resize(w.layers.size());
    for (size_t l = 0; l < w.layers.size(); ++l) {
        const DecodeWeights::Layer& h = w.layers[l];
        Impl::Layer& L = m.layers[l];
        L.heads = h.heads;
        L.fc = h.fc;
        L.ln1_w = up32(h.ln1_w);
        L.ln1_b = up32(h.ln1_b);
        L.ln2_w = up32(h.ln2_w);
        L.ln2_b = up32(h.ln2_b);
        L.qkv_w = up16(h.qkv_w);
        L.qkv_b = up32(h.qkv_b);
        L.proj_w = up16(h.proj_w);
        L.proj_b = up32(h.proj_b);
        L.fc_w = up16(h.fc_w);
        L.fc_b = up32(h.fc_b);
        L.fc2_w = up16(h.fc2_w);
        L.fc2_b = up32(h.fc2_b);
        const size_t HD = size_t(L.heads) * size_t(m.D);
        L.k_cache = DeviceBuffer<uint16_t>(size_t(m.B) * m.T * HD);
        L.v_cache = DeviceBuffer<uint16_t>(size_t(m.B) * m.T * HD);
        m.max_heads = std::max(m.max_heads, L.heads);
        m.max_fc = std::max(m.max_fc, L.fc);
    }
    m.wte = upload(w.wte);
    m.wpe = upload(w.wpe);
    m.lnf_w = up32(w.lnf_w);
    m.lnf_b = up32(w.lnf_b);
    m.head = up16(w.head);
    m.stats.weight_bytes = weight_bytes;
    const size_t R = size_t(m.R), C = size_t(m.C), HDmax = size_t(m.max_heads) * size_t(m.D);
    m.x = DeviceBuffer<float>(R * C);
    m.qkv = DeviceBuffer<float>(R * 3 * HDmax);
    m.f = DeviceBuffer<float>(R * m.max_fc);
    m.mean = DeviceBuffer<float>(R);
    m.rstd = DeviceBuffer<float>(R);
    m.xlast = DeviceBuffer<float>(size_t(m.B) * C);
    m.logits = DeviceBuffer<float>(size_t(m.B) * kByteVocab);
    m.a16 = DeviceBuffer<uint16_t>(R * C);
    m.att16 = DeviceBuffer<uint16_t>(R * HDmax);
    m.f16 = DeviceBuffer<uint16_t>(R * m.max_fc);
    m.xf16 = DeviceBuffer<uint16_t>(size_t(m.B) * C);
    kernels::DecodeShape ws;
    ws.rows = m.R;
    ws.heads = m.max_heads;
    ws.head_dim = m.D;
    ws.context = m.T;
    m.attn_ws = DeviceBuffer<uint8_t>(kernels::decode_attention_workspace_bytes(ws));  // zeroed
    m.gemm_ws = DeviceBuffer<uint8_t>(kGemmWorkspace);
    m.next = DeviceBuffer<int32_t>(size_t(m.B));
    m.tokens_in = DeviceBuffer<int32_t>(size_t(m.B) * m.T);
    m.ints = DeviceBuffer<int32_t>(3);
    m.staging = PinnedBuffer<int32_t>(size_t(m.B) * m.T);
    ESPER_CUDA_CHECK(cudaDeviceSynchronize());  // the zeroing memsets ran on the legacy stream
}

CudaDecoder::~CudaDecoder() = default;

int32_t CudaDecoder::batch() const { return impl_->B; }

const CudaDecodeStats& CudaDecoder::last_stats() const { return impl_->stats; }

std::vector<Generated> CudaDecoder::generate(std::span<const uint8_t> prompt,
                                             const GenerateOptions& o) {
    Impl& m = *impl_;
    const int32_t T = m.T, B = m.B;
    ESPER_CHECK_INPUT(!prompt.empty() && int64_t(prompt.size()) <= T, "--prompt: ", prompt.size(),
                      " bytes; the model's context is ", T);
    ESPER_CHECK_INPUT(o.tokens >= 1, "--tokens: ", o.tokens, " (must be >= 1)");
    kernels::DecodePick pick;
    pick.temperature = float(o.temperature);
    pick.top_k = int32_t(std::min<int64_t>(o.top_k, kByteVocab));
    pick.seed = o.seed;
    const int64_t capacity = o.tokens;
    if (m.out_tokens.n < size_t(capacity * B)) {
        ESPER_CUDA_CHECK(cudaStreamSynchronize(m.stream.get()));
        m.out_tokens = MappedBuffer<int32_t>(size_t(capacity * B));
        m.out_logprobs = MappedBuffer<float>(size_t(capacity * B));
    }
    if (!m.graph || m.graph_out != m.out_tokens.dev ||
        m.graph_pick.temperature != pick.temperature || m.graph_pick.top_k != pick.top_k ||
        m.graph_pick.seed != pick.seed)
        m.capture(pick, int64_t(m.out_tokens.n) / B);
    const int64_t cap = int64_t(m.out_tokens.n) / B;
    cudaStream_t s = m.stream.get();
    ESPER_CUDA_CHECK(cudaMemsetAsync(m.ints.get(), 0, 3 * sizeof(int32_t), s));
    m.stats.decode_steps = 0;
    m.stats.kv_bytes_read = 0.0;
    int64_t kv_row_bytes = 0;  // K and V bytes of one position over all blocks
    for (const Impl::Layer& L : m.layers) kv_row_bytes += 2 * int64_t(L.heads) * m.D * 2;
    // Sequence c = prompt + its bytes so far; the window is its newest wlen bytes.
    auto fill_window = [&](int64_t done, int32_t len) {
        for (int32_t c = 0; c < B; ++c) {
            std::vector<int32_t> seq(prompt.begin(), prompt.end());
            for (int64_t i = 0; i < done; ++i) seq.push_back(m.out_tokens.host[i * B + c]);
            std::copy(seq.end() - len, seq.end(), m.staging.get() + int64_t(c) * T);
        }
    };
    const auto t0 = std::chrono::steady_clock::now();
    auto wlen = int32_t(prompt.size());
    if (wlen == T) wlen = std::max(1, T / 2);
    fill_window(0, wlen);
    m.prefill(wlen, pick, cap);
    ++wlen;
    ESPER_CUDA_CHECK(cudaStreamSynchronize(s));
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t done = 1; done < o.tokens; ++done) {
        if (wlen == T) {  // full: keep the newest T/2 bytes, rebuild the caches
            ESPER_CUDA_CHECK(cudaStreamSynchronize(s));
            wlen = std::max(1, T / 2);
            fill_window(done, wlen);
            m.prefill(wlen, pick, cap);
        } else {
            ESPER_CUDA_CHECK(cudaGraphLaunch(m.graph.get(), s));
            ++m.stats.decode_steps;
            m.stats.kv_bytes_read += double(kv_row_bytes) * wlen * B;
        }
        ++wlen;
    }
    ESPER_CUDA_CHECK(cudaStreamSynchronize(s));
    const auto t2 = std::chrono::steady_clock::now();
    m.stats.prefill_s = std::chrono::duration<double>(t1 - t0).count();
    m.stats.decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::vector<Generated> out(static_cast<size_t>(B));
    for (int32_t c = 0; c < B; ++c)
        for (int64_t i = 0; i < o.tokens; ++i) {
            out[size_t(c)].tokens.push_back(m.out_tokens.host[i * B + c]);
            out[size_t(c)].logprobs.push_back(double(m.out_logprobs.host[i * B + c]));
        }
    return out;
}

}  // namespace esper::kasmina
