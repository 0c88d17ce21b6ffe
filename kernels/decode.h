// Autoregressive decoding of the transformer host on the GPU (esper generate, DESIGN §14): the
// small kernels one decode step needs around the cuBLASLt GEMMs — the embedding of the newest
// byte at a device-held position, the append of its keys and values to a bf16 KV cache,
// attention of one query per (row, head) over the cache (split over the cache length, then
// merged), and the pick of the next byte from the logits (greedy or sampled with a counter-based
// device RNG). Positions live on the device, so one captured step is replayed for every byte.
// The CPU references define the math (double accumulation, bf16 values given as floats).
#pragma once

#include <cstddef>
#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// Query rows of one step and the cache they read. The cache of one layer holds `caches`
// sequences of `context` positions, each position a row of heads·head_dim values (K and V in
// separate arrays). Row r sits at position p_r and attends to positions 0..p_r of cache c_r:
//   decode  (shared = false): p_r = pos,     c_r = cache_base + r   (one row per sequence)
//   prefill (shared = true):  p_r = pos + r, c_r = cache_base       (a prompt, row by row)
// where pos is read from the device (the number of positions cached before this step).
// Precondition: p_r < context for every row (rows past it are skipped by the kernels).
struct DecodeShape {
    int32_t rows = 0;
    int32_t heads = 0;
    int32_t head_dim = 0;  // D <= 128 on the device
    int32_t context = 0;   // T
    int64_t ld_q = 0;      // floats between rows of q (and of the new k, v)
    int64_t ld_out = 0;    // elements between rows of out
    bool shared = false;
    int32_t cache_base = 0;
    float scale = 0.0f;  // softmax(q·kᵀ·scale), usually 1/√D
    // Programmatic dependent launch (sm_90): the kernels may start while the stream's previous
    // kernel runs, waiting on the device for its completion before they touch what it wrote.
    bool overlap = false;
};

// The pick of the next byte from 256 logits per row. temperature 0: the first arg-max (as the
// CPU generator); else a draw from softmax(logits / temperature) restricted to the top_k most
// likely bytes (0: all; ties ranked by index), with u = uniform(seed, step, row) from a
// splitmix64 hash (decode_uniform). logprob: log p of the byte at temperature 1.
struct DecodePick {
    float temperature = 0.0f;
    int32_t top_k = 0;
    uint64_t seed = 0;
};

inline constexpr int32_t kDecodeVocab = 256;
inline constexpr int32_t kDecodeChunk = 64;  // cache positions per attention split

// The append of a decode step's keys and values folded into the qkv product (DecodeLinear::append):
// outputs n in [width, 2·width) are K, [2·width, 3·width) V, written as bf16 at position p_r of
// cache c_r (see DecodeShape; rows past the context skipped), as launch_decode_append would.
struct DecodeAppend {
    void* k_cache = nullptr;  // bf16 [caches, context, width]; null: no append
    void* v_cache = nullptr;
    const int32_t* pos = nullptr;  // device; read ahead of the wait (written before the step)
    int32_t width = 0;             // heads · head_dim
    int32_t context = 0;
    int32_t cache_base = 0;
    bool shared = false;
};

// One linear layer of a decode step for a few rows (rows <= kDecodeLinearMaxRows): W is read once
// for all rows, each warp streaming one output's weight row (a GEMV rather than a tiled GEMM, which
// at m = 1…8 rows leaves the tensor cores idle and the weights under-streamed). Math, in the order
// of the references:
//   a = ln ? bf16(LayerNorm(x; ln_w, ln_b, eps)) : a_in            (both [rows, in], bf16 values)
//   z[r, n] = Σ_k a[r, k]·W[n, k] + bias[n]                        (fp32 accumulation; W bf16 [out,
//   in]) z = gelu(z) (tanh form) when gelu;  y = beta·y + z (fp32 out) or y_bf16 = bf16(z) (beta 0)
// so the LayerNorm before a product (its prologue), the bias, GELU, the residual add (beta 1)
// and the bf16 cast after it (its epilogue) cost no launches of their own.
inline constexpr int32_t kDecodeLinearMaxRows = 8;
struct DecodeLinear {
    int32_t rows = 0, in = 0, out = 0;
    const float* x = nullptr;  // [rows, in] fp32, normalised when ln_w is given
    const float* ln_w = nullptr;
    const float* ln_b = nullptr;
    float eps = 1e-5f;
    const void* a_in = nullptr;   // [rows, in] bf16, used when ln_w is null
    const void* w = nullptr;      // [out, in] bf16
    const float* bias = nullptr;  // [out] or null
    bool gelu = false;
    float beta = 0.0f;       // 0, or 1 for the residual add (fp32 output without gelu only)
    float* y = nullptr;      // [rows, out] fp32, or
    void* y_bf16 = nullptr;  // [rows, out] bf16 (exactly one of y, y_bf16)
    bool overlap = false;    // as DecodeShape::overlap; the first weight loads precede the wait
    DecodeAppend append{};   // with k_cache set: the K, V columns also go to the cache (y only)
};
// Whether launch_decode_linear takes the layer: rows in 1..kDecodeLinearMaxRows, in a multiple of
// 8 (16-byte weight rows), the normalised rows within 48 KiB of shared memory (less 256 bytes).
bool decode_linear_fits(int32_t rows, int32_t in, bool ln);
// Reference on floats (the bf16 tensors given as their values; y_bf16 written as floats into y).
void decode_linear_reference(const DecodeLinear& s, const float* x_or_a, const float* w, float* y);

// uniform [0, 1) of (seed, step, row); the same on host and device.
double decode_uniform(uint64_t seed, int64_t step, int32_t row);

// x[r] = wte[tokens[r]] + wpe[p_r] (rows of `channels` floats).
void decode_embed_reference(const int32_t* tokens, const float* wte, const float* wpe, int32_t pos,
                            bool shared, float* x, int32_t rows, int32_t channels);
// Writes k_new[r], v_new[r] (rows ld_q apart, heads·head_dim floats) at position p_r of cache c_r.
void decode_append_reference(const DecodeShape& s, const float* k_new, const float* v_new,
                             int32_t pos, float* k_cache, float* v_cache);
// out[r, h·D..] = softmax(q_h · K_hᵀ · scale) · V_h over positions 0..p_r of cache c_r.
void decode_attention_reference(const DecodeShape& s, const float* q, const float* k_cache,
                                const float* v_cache, int32_t pos, float* out);
// next[r] = the picked byte; out_tokens / out_logprobs [step · rows + r] (when not null).
void decode_pick_reference(const float* logits, int32_t rows, const DecodePick& o, int64_t step,
                           int32_t* next, int32_t* out_tokens, float* out_logprobs);

#if ESPER_HAVE_CUDA
// Device pointers; pos and step are device int32 values read when the kernels run (a captured
// graph replays with the values of the moment). Caches and out are bf16; q, k_new, v_new fp32.
// Return cudaErrorInvalidValue for an impossible shape (head_dim > 128, no rows) without
// launching, otherwise the launch's status. Never allocate or sync.
[[nodiscard]] cudaError_t launch_decode_embed(const int32_t* tokens, const float* wte,
                                              const float* wpe, const int32_t* pos, bool shared,
                                              float* x, int32_t rows, int32_t channels,
                                              cudaStream_t stream);
[[nodiscard]] cudaError_t launch_decode_append(const DecodeShape& s, const float* k_new,
                                               const float* v_new, const int32_t* pos,
                                               void* k_cache, void* v_cache, cudaStream_t stream);
// Workspace: decode_attention_workspace_bytes(s) bytes — the partial softmax of every split and
// one counter per (row, head), by which the last split of a row's head to finish merges them.
// The workspace must be zero before its first launch (cudaMemset); every launch leaves the
// counters zero again, so a workspace is set up once and then reused (by any shape it fits).
size_t decode_attention_workspace_bytes(const DecodeShape& s);
[[nodiscard]] cudaError_t launch_decode_attention(const DecodeShape& s, const float* q,
                                                  const void* k_cache, const void* v_cache,
                                                  const int32_t* pos, void* out, void* workspace,
                                                  size_t workspace_bytes, cudaStream_t stream);
// What the pick may do beyond picking, so that a decode step needs no kernel of its own for it:
// - wte set: embed the picked bytes for the next step, x[r] = wte[byte_r] + wpe[p] (rows of
//   `channels` floats) with p = set_pos >= 0 ? set_pos : *pos + 1 — the position the advance
//   leaves — skipped when p >= context (the window is full; the host rebuilds it);
// - advance (one row only): the position update of launch_decode_advance(pos, step_out, set_pos).
struct DecodeNext {
    const float* wte = nullptr;
    const float* wpe = nullptr;
    float* x = nullptr;
    int32_t channels = 0;
    int32_t context = 0;
    int32_t* pos = nullptr;  // device; read before the programmatic wait
    int32_t set_pos = -1;
    bool advance = false;
    int32_t* step_out = nullptr;  // the step counter the pick reads, for the advance
};
// Picks rows bytes into next (device) and, while step < capacity, into out_tokens and
// out_logprobs [step · rows + r] (device or mapped pinned host memory; may be null); then what
// nx asks for (cudaErrorInvalidValue, nothing launched, for an embedding without wpe, x,
// channels, context and a position, or an advance of more than one row or without pos and
// step_out). overlap: as DecodeShape::overlap (here and for the advance).
[[nodiscard]] cudaError_t launch_decode_pick(const float* logits, int32_t rows, const DecodePick& o,
                                             const int32_t* step, int32_t* next,
                                             int32_t* out_tokens, float* out_logprobs,
                                             int64_t capacity, cudaStream_t stream,
                                             bool overlap = false, const DecodeNext& nx = {});
// Device pointers of s; cudaErrorInvalidValue (nothing launched) unless decode_linear_fits and
// exactly one of y / y_bf16 is given (y_bf16 with beta 0), 16-byte aligned a_in and w, and an
// append (when given) has both caches, a position, width > 0 and out == 3·width, with y.
[[nodiscard]] cudaError_t launch_decode_linear(const DecodeLinear& s, cudaStream_t stream);
// After a step: *pos = set_pos when set_pos >= 0, else *pos += 1; then *step += 1.
[[nodiscard]] cudaError_t launch_decode_advance(int32_t* pos, int32_t* step, int32_t set_pos,
                                                cudaStream_t stream, bool overlap = false);
#endif

}  // namespace esper::kernels
