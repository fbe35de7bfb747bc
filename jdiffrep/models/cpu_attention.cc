// Fused multi-head self-attention for XLA:CPU, called through the XLA FFI (float32).
//
// Why: XLA:CPU runs attention as separate ops. The per-head products [B*H, L, L] x [B*H, L, Dh]
// run on one core (its dot library does not split the batch axis), the scores go through memory
// between ops, and the head split/merge are transposes of the whole activation. Here each
// (batch, head) pair is one work item, spread over XLA's intra-op threads: its q, k, v are read
// straight out of the fused projection [B, L, 3, H, Dh], its scores live in a block of rows that
// stays in the core's cache, and its result is written straight into [B, L, H, Dh].
//
// Forward:  out = softmax(q k^T / sqrt(Dh)) v, plus the row log-sum-exp [B, H, L].
// Backward: from (qkv, out, log-sum-exp, d_out) the gradient d_qkv [B, L, 3, H, Dh], recomputing
//           the probabilities (no [L, L] tensor is kept between the passes).
//
// Built at first use by jdiffrep/models/cpu_attention.py with the host compiler (-O3
// -march=native); the products are register-tiled with GCC/Clang vector extensions.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats per vector register
constexpr int kRows = 8;    // rows of a register tile: 8 x 2 accumulators of 32 registers
#else
constexpr int kLanes = 8;
constexpr int kRows = 6;  // 6 x 2 accumulators + 2 loads + 1 broadcast of 16 registers
#endif

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float UnalignedVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));
typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Load(const float* p) { return *reinterpret_cast<const UnalignedVec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<UnalignedVec*>(p) = v; }

// One register tile of C[kRowsT, kVecs * kLanes] (=|+=) A B: A[r, k] is A[r * a_row + k * a_col],
// B's rows are contiguous. Loops are fully unrolled so the accumulators stay in registers.
template <int kRowsT, int kVecs>
inline void Tile(int depth, const float* a, int64_t a_row, int64_t a_col, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  Vec acc[kRowsT][kVecs];
#pragma GCC unroll 16
  for (int r = 0; r < kRowsT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) acc[r][v] = Vec{};
  for (int k = 0; k < depth; ++k) {
    Vec bk[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) bk[v] = Load(b + k * ldb + v * kLanes);
    const float* ak = a + k * a_col;
#pragma GCC unroll 16
    for (int r = 0; r < kRowsT; ++r) {
      const float ar = ak[r * a_row];
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) acc[r][v] += ar * bk[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRowsT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      float* cr = c + r * ldc + v * kLanes;
      Store(cr, accumulate ? Load(cr) + acc[r][v] : acc[r][v]);
    }
}

template <int kVecs>
inline void TileRows(int rows, int depth, const float* a, int64_t a_row, int64_t a_col,
                     const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  switch (rows) {
#define JDIFFREP_TILE_CASE(R) \
  case R: return Tile<R, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
    JDIFFREP_TILE_CASE(1) JDIFFREP_TILE_CASE(2) JDIFFREP_TILE_CASE(3) JDIFFREP_TILE_CASE(4)
    JDIFFREP_TILE_CASE(5) JDIFFREP_TILE_CASE(6)
#if defined(__AVX512F__)
    JDIFFREP_TILE_CASE(7) JDIFFREP_TILE_CASE(8)
#endif
#undef JDIFFREP_TILE_CASE
  }
}

// C[M, N] (=|+=) A[M, K] B[K, N]. A[m, k] = a[m * a_row + k * a_col] (so a transposed A is
// a_row = 1, a_col = lda); B and C are row-major with leading dimensions ldb, ldc.
void MatMul(int m, int n, int depth, const float* a, int64_t a_row, int64_t a_col,
            const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  int j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes)
    for (int i = 0; i < m; i += kRows)
      TileRows<2>(std::min(kRows, m - i), depth, a + i * a_row, a_row, a_col, b + j, ldb,
                  c + i * ldc + j, ldc, accumulate);
  for (; j + kLanes <= n; j += kLanes)
    for (int i = 0; i < m; i += kRows)
      TileRows<1>(std::min(kRows, m - i), depth, a + i * a_row, a_row, a_col, b + j, ldb,
                  c + i * ldc + j, ldc, accumulate);
  for (; j < n; ++j)  // the last columns of a width that is not a multiple of the vector
    for (int i = 0; i < m; ++i) {
      float sum = 0;
      for (int k = 0; k < depth; ++k) sum += a[i * a_row + k * a_col] * b[k * ldb + j];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
    }
}

// exp(x) for a vector (Cephes' expf: 2^n e^r with |r| <= ln2 / 2; about 1 ulp), x clamped to
// [-87.3, 88.7] (exp of the lower end is 1.2e-38, not 0: below float32's normal range).
inline Vec Exp(Vec x) {
  const Vec hi = Vec{} + 88.7f, lo = Vec{} + -87.3f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const Vec magic = Vec{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  Vec n = (x * 1.44269504088896341f + magic) - magic;
  Vec r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Vec p = Vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// row[i] = exp(row[i] - shift) for i < n; returns their sum.
inline float ExpShiftedSum(float* row, int n, float shift) {
  Vec sums = Vec{};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec e = Exp(Load(row + i) - shift);
    Store(row + i, e);
    sums += e;
  }
  float sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += sums[l];
  for (; i < n; ++i) sum += (row[i] = std::exp(row[i] - shift));
  return sum;
}

// Runs work(0..count-1) on the calling thread and on XLA's intra-op thread pool. The caller
// takes items too and waits only for items that were taken, never for a pool task to start, so
// a busy pool can delay the work but not deadlock it; a task that starts late finds nothing
// left and returns without touching the caller's buffers.
void ParallelFor(ffi::ThreadPool& pool, int64_t count, const std::function<void(int64_t)>& work) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t count = 0;
    const std::function<void(int64_t)>* work = nullptr;
    std::mutex mutex;
    std::condition_variable all_done;
  };
  auto state = std::make_shared<State>();
  state->count = count;
  state->work = &work;
  auto run = [](const std::shared_ptr<State>& s) {
    for (int64_t i; (i = s->next.fetch_add(1)) < s->count;) {
      (*s->work)(i);
      if (s->done.fetch_add(1) + 1 == s->count) {
        std::lock_guard<std::mutex> lock(s->mutex);
        s->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state, run] { run(state); });
  run(state);
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done.load() == count; });
}

struct Shape {
  int64_t batch, length, heads, head_dim;
  int64_t Row() const { return 3 * heads * head_dim; }  // qkv's token stride
  int64_t OutRow() const { return heads * head_dim; }
};

ffi::Error CheckShape(const ffi::Buffer<ffi::F32>& qkv, int64_t heads, Shape* shape) {
  const auto dims = qkv.dimensions();
  if (dims.size() != 3 || heads <= 0 || dims[2] % (3 * heads) != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "cpu attention: qkv must be [B, L, 3 * H * Dh] with H = num_heads");
  *shape = {dims[0], dims[1], heads, dims[2] / (3 * heads)};
  return ffi::Error::Success();
}

// Rows of queries per block: its [rows, L] scores, probabilities and their gradients stay in
// the core's cache.
// (DiT-S/2, 256 tokens: 32, 64 and 128 rows all take 88-89 ms for one layer's forward and
// backward pass at batch 32; all 256 rows at once, 97-102 ms.)
constexpr int64_t kQueryBlock = 64;

// Copies rows [L, Dh] with token stride `stride` into a contiguous [L, Dh] (times `scale`), or
// transposed into [Dh, L].
void Gather(const float* src, int64_t stride, int64_t length, int64_t dim, float scale,
            float* dst) {
  for (int64_t l = 0; l < length; ++l)
    for (int64_t d = 0; d < dim; ++d) dst[l * dim + d] = src[l * stride + d] * scale;
}
void GatherTransposed(const float* src, int64_t stride, int64_t length, int64_t dim,
                      float* dst) {
  for (int64_t l = 0; l < length; ++l)
    for (int64_t d = 0; d < dim; ++d) dst[d * length + l] = src[l * stride + d];
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                       int64_t num_heads) {
  Shape s;
  if (ffi::Error e = CheckShape(qkv, num_heads, &s); e.failure()) return e;
  const int64_t length = s.length, dim = s.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const float* x = qkv.typed_data();
  float* o = out->typed_data();
  float* lse_out = lse->typed_data();
  ParallelFor(pool, s.batch * s.heads, [&](int64_t item) {
    const int64_t b = item / s.heads, h = item % s.heads;
    thread_local std::vector<float> scratch;
    scratch.resize(3 * length * dim + kQueryBlock * length + kQueryBlock * dim);
    float* q = scratch.data();         // [L, Dh], scaled
    float* k_t = q + length * dim;     // [Dh, L]
    float* v = k_t + length * dim;     // [L, Dh]
    float* scores = v + length * dim;  // [block, L]
    float* acc = scores + kQueryBlock * length;  // [block, Dh]
    const float* base = x + b * length * s.Row() + h * dim;
    Gather(base, s.Row(), length, dim, scale, q);
    GatherTransposed(base + s.heads * dim, s.Row(), length, dim, k_t);
    Gather(base + 2 * s.heads * dim, s.Row(), length, dim, 1.0f, v);
    for (int64_t i0 = 0; i0 < length; i0 += kQueryBlock) {
      const int rows = static_cast<int>(std::min(kQueryBlock, length - i0));
      MatMul(rows, length, dim, q + i0 * dim, dim, 1, k_t, length, scores, length, false);
      for (int r = 0; r < rows; ++r) {
        float* row = scores + r * length;
        const float row_max = *std::max_element(row, row + length);
        const float sum = ExpShiftedSum(row, length, row_max);
        const float inverse = 1.0f / sum;
        for (int64_t l = 0; l < length; ++l) row[l] *= inverse;
        lse_out[item * length + i0 + r] = row_max + std::log(sum);
      }
      MatMul(rows, dim, length, scores, length, 1, v, dim, acc, dim, false);
      for (int r = 0; r < rows; ++r)
        std::memcpy(o + (b * length + i0 + r) * s.OutRow() + h * dim, acc + r * dim,
                    dim * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                        ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> d_out, ffi::ResultBuffer<ffi::F32> d_qkv,
                        int64_t num_heads) {
  Shape s;
  if (ffi::Error e = CheckShape(qkv, num_heads, &s); e.failure()) return e;
  const int64_t length = s.length, dim = s.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const float* x = qkv.typed_data();
  const float* o = out.typed_data();
  const float* lse_in = lse.typed_data();
  const float* g = d_out.typed_data();
  float* dx = d_qkv->typed_data();
  ParallelFor(pool, s.batch * s.heads, [&](int64_t item) {
    const int64_t b = item / s.heads, h = item % s.heads;
    thread_local std::vector<float> scratch;
    scratch.resize(7 * length * dim + 2 * kQueryBlock * length + kQueryBlock * dim +
                   kQueryBlock);
    float* q = scratch.data();        // [L, Dh], scaled
    float* k = q + length * dim;      // [L, Dh]
    float* k_t = k + length * dim;    // [Dh, L]
    float* v_t = k_t + length * dim;  // [Dh, L]
    float* g_h = v_t + length * dim;  // d_out of this head [L, Dh]
    float* d_k = g_h + length * dim;  // [L, Dh]
    float* d_v = d_k + length * dim;  // [L, Dh]
    float* probs = d_v + length * dim;                // [block, L]
    float* d_scores = probs + kQueryBlock * length;   // [block, L]
    float* d_q = d_scores + kQueryBlock * length;     // [block, Dh]
    float* row_dot = d_q + kQueryBlock * dim;         // [block]
    const float* base = x + b * length * s.Row() + h * dim;
    Gather(base, s.Row(), length, dim, scale, q);
    Gather(base + s.heads * dim, s.Row(), length, dim, 1.0f, k);
    GatherTransposed(base + s.heads * dim, s.Row(), length, dim, k_t);
    GatherTransposed(base + 2 * s.heads * dim, s.Row(), length, dim, v_t);
    Gather(g + b * length * s.OutRow() + h * dim, s.OutRow(), length, dim, 1.0f, g_h);
    for (int64_t i0 = 0; i0 < length; i0 += kQueryBlock) {
      const int rows = static_cast<int>(std::min(kQueryBlock, length - i0));
      // probabilities from the saved log-sum-exp
      MatMul(rows, length, dim, q + i0 * dim, dim, 1, k_t, length, probs, length, false);
      for (int r = 0; r < rows; ++r) {
        float* row = probs + r * length;
        ExpShiftedSum(row, length, lse_in[item * length + i0 + r]);
        const float* o_row = o + (b * length + i0 + r) * s.OutRow() + h * dim;
        const float* g_row = g_h + (i0 + r) * dim;
        float dot = 0;
        for (int64_t d = 0; d < dim; ++d) dot += o_row[d] * g_row[d];
        row_dot[r] = dot;
      }
      // d_v += probs^T d_out
      MatMul(static_cast<int>(length), static_cast<int>(dim), rows, probs, 1, length,
             g_h + i0 * dim, dim, d_v, dim, i0 > 0);
      // d_scores = probs * (d_out v^T - row_dot)
      MatMul(rows, length, dim, g_h + i0 * dim, dim, 1, v_t, length, d_scores, length, false);
      for (int r = 0; r < rows; ++r) {
        float* ds = d_scores + r * length;
        const float* p = probs + r * length;
        for (int64_t l = 0; l < length; ++l) ds[l] = p[l] * (ds[l] - row_dot[r]);
      }
      // d_q = d_scores k * scale;  d_k += d_scores^T q_scaled
      MatMul(rows, dim, length, d_scores, length, 1, k, dim, d_q, dim, false);
      for (int r = 0; r < rows; ++r) {
        float* dst = dx + (b * length + i0 + r) * s.Row() + h * dim;
        for (int64_t d = 0; d < dim; ++d) dst[d] = d_q[r * dim + d] * scale;
      }
      MatMul(static_cast<int>(length), static_cast<int>(dim), rows, d_scores, 1, length,
             q + i0 * dim, dim, d_k, dim, i0 > 0);
    }
    for (int64_t l = 0; l < length; ++l) {
      float* dst = dx + (b * length + l) * s.Row() + h * dim;
      std::memcpy(dst + s.heads * dim, d_k + l * dim, dim * sizeof(float));
      std::memcpy(dst + 2 * s.heads * dim, d_v + l * dim, dim * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdiffrepCpuAttentionForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv [B, L, 3 * H * Dh]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out [B, L, H * Dh]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // log-sum-exp [B, H, L]
                                  .Attr<int64_t>("num_heads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdiffrepCpuAttentionBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv
                                  .Arg<ffi::Buffer<ffi::F32>>()  // out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // log-sum-exp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_qkv [B, L, 3 * H * Dh]
                                  .Attr<int64_t>("num_heads"));
