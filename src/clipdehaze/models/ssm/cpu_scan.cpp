// Selective scan (Mamba's S6 recurrence) for CPUs: forward and adjoint in one pass over memory each.
//
// Built on first use by clipdehaze/models/ssm/cpu_kernel.py (plain C ABI, loaded with ctypes, no Python or
// torch headers, so it compiles in seconds); that file documents the semantics and the layouts.
//
// Directions come in groups that share one output y (SS2D: a map walked row by row forwards and backwards, and
// column by column); groups may read one input map (a group stride of 0). Work is split into items (batch element,
// group, block of `lanes` channels, 16 times a power of two); an item walks each direction of its group over the
// sequence in chunks of T steps, so y sums the group's directions without races. A chunk's inputs are first
// gathered into small channel-inner buffers, whatever the caller's layout, so every inner loop runs over contiguous
// channels; unused lanes of a short last block are zero and stay zero (u = 0 gives no input, grad_y = 0 no
// adjoint). The forward keeps the state at each chunk start; the backward rebuilds a chunk's decays and states
// from that checkpoint into cache-sized buffers and walks it backwards, so each pass takes one exponential per
// state element and reads every input once per direction.
//
// Arithmetic runs on 64-byte vectors (GCC / Clang vector extensions: one AVX-512 register, or two AVX2 or four SSE
// registers on CPUs without wider ones) with the state size N (padded to a power of two, at most 16) and the item
// width fixed at compile time, so an item's states stay in registers from step to step. Δ may come low-rank
// (dt_rank > 0): δ = dt_w · dts per channel, formed inside the kernel from the few dts values of each step (SS2D's
// Δ projection), so the full positions x channels Δ, and its gradient, never exist in memory.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Loops over the states and an item's vectors run a compile-time number of times: fully unrolled, their values
// live in registers.
#if defined(__clang__)
#define CLIPDEHAZE_UNROLL _Pragma("unroll")
#else
#define CLIPDEHAZE_UNROLL _Pragma("GCC unroll 16")
#endif

constexpr int kLanes = 16;     // channels per block

// ------------------------------------------------------------------------------------------------ vectors
template <typename T> struct VecTraits;
template <> struct VecTraits<float> {
    typedef float v __attribute__((vector_size(64)));
    typedef int32_t i __attribute__((vector_size(64)));
};
template <> struct VecTraits<double> {
    typedef double v __attribute__((vector_size(64)));
    typedef int64_t i __attribute__((vector_size(64)));
};
template <typename T> using Vec = typename VecTraits<T>::v;
template <typename T> using IVec = typename VecTraits<T>::i;
template <typename T> constexpr int kVL = 64 / static_cast<int>(sizeof(T));

template <typename T> inline Vec<T> load(const T* p) {
    Vec<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <typename T> inline void store(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof v); }
template <typename T, size_t... E> inline Vec<T> splat(T x, std::index_sequence<E...>) {
    return Vec<T>{(static_cast<void>(E), x)...};
}
template <typename T> inline Vec<T> splat(T x) { return splat(x, std::make_index_sequence<kVL<T>>{}); }
template <typename T> inline Vec<T> select(IVec<T> m, Vec<T> a, Vec<T> b) {
    return (Vec<T>)((m & (IVec<T>)a) | (~m & (IVec<T>)b));
}

// e^x for float vectors: x = r ln 2 + f with r the nearest integer to x / ln 2, f = x - r ln 2 in two steps (ln 2
// split into a part exact in float and a remainder, so f keeps full precision however large r), |f| <= ln 2 / 2;
// e^f = 1 + f + f² P(f) with Cephes' expf polynomial (relative error about one unit in the last place), times 2^r.
inline Vec<float> vexp(Vec<float> x) {
    typedef Vec<float> V;
    V p = splat(1.9875691500e-4f);
#if defined(__AVX512F__)
    // scalef computes p 2^r with the exponent's overflow to inf and underflow to 0 built in: no clamps.
    __m512 xv = (__m512)x;
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V f = x - (V)r * splat(0.693359375f);
    f = f - (V)r * splat(-2.12194440e-4f);
#else
    x = select<float>(x < splat(-88.0f), splat(-88.0f), x);  // e^-88 < 2^-126: below, 0 (flushed below)
    x = select<float>(x > splat(88.7f), splat(88.7f), x);    // e^88.7 overflows to inf once scaled
    const V shifter = splat(12582912.0f);                    // 1.5 * 2^23: adding it rounds to an integer
    V r = (x * splat(1.44269504088896341f) + shifter) - shifter;
    V f = x - r * splat(0.693359375f);
    f = f - r * splat(-2.12194440e-4f);
#endif
    p = p * f + splat(1.3981999507e-3f);
    p = p * f + splat(8.3334519073e-3f);
    p = p * f + splat(4.1665795894e-2f);
    p = p * f + splat(1.6666665459e-1f);
    p = p * f + splat(5.0000001201e-1f);
    p = p * (f * f) + f + splat(1.0f);
#if defined(__AVX512F__)
    return (V)_mm512_scalef_ps((__m512)p, r);
#else
    IVec<float> e = __builtin_convertvector(r, IVec<float>) + 127;
    e = e & ~(e < 0);
    return p * (V)(e << 23);
#endif
}

inline Vec<double> vexp(Vec<double> x) {
    for (int e = 0; e < kVL<double>; ++e) x[e] = std::exp(x[e]);
    return x;
}

// ln(y) for finite y > 0: y = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = f - f²/2 + f³ P(f), f = m - 1, with
// Cephes' logf polynomial (relative error about one unit in the last place); no division.
inline Vec<float> vlog(Vec<float> y) {
    typedef Vec<float> V;
#if defined(__AVX512F__)
    // The exponent and the significand in [1, 2) in one instruction each, then m / 2 and e + 1 above sqrt(2).
    const __m512 yv = (__m512)y;
    const __m512 m1 = _mm512_getmant_ps(yv, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    const __mmask16 high = _mm512_cmp_ps_mask(m1, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    const V m = (V)_mm512_mask_mul_ps(m1, high, m1, _mm512_set1_ps(0.5f));
    const __m512 e1 = _mm512_getexp_ps(yv);
    const V ef = (V)_mm512_mask_add_ps(e1, high, e1, _mm512_set1_ps(1.0f));
#else
    typedef IVec<float> I;
    I bits = (I)y;
    I e = ((bits >> 23) & 0xff) - 127;
    V m = (V)((bits & 0x007fffff) | 0x3f800000);
    I high = m > splat(1.41421356f);
    m = select<float>(high, m * splat(0.5f), m);
    e = e - high;  // high is -1 where true
    const V ef = __builtin_convertvector(e, V);
#endif
    const V f = m - splat(1.0f), z = f * f;
    V p = splat(7.0376836292e-2f);
    p = p * f + splat(-1.1514610310e-1f);
    p = p * f + splat(1.1676998740e-1f);
    p = p * f + splat(-1.2420140846e-1f);
    p = p * f + splat(1.4249322787e-1f);
    p = p * f + splat(-1.6668057665e-1f);
    p = p * f + splat(2.0000714765e-1f);
    p = p * f + splat(-2.4999993993e-1f);
    p = p * f + splat(3.3333331174e-1f);
    const V y2 = (f * z * p + ef * splat(-2.12194440e-4f)) - splat(0.5f) * z;  // Cephes' order of additions
    return (f + y2) + ef * splat(0.693359375f);
}

// 1 / w for float vectors: AVX-512's 14-bit estimate refined by one Newton step (relative error about 1e-7),
// cheaper than a division; a division elsewhere.
inline Vec<float> vrecip(Vec<float> w) {
#if defined(__AVX512F__)
    const Vec<float> r = (Vec<float>)_mm512_rcp14_ps((__m512)w);
    return r * (splat(2.0f) - w * r);
#else
    return splat(1.0f) / w;
#endif
}

// softplus(x) = ln(1 + e^x) (x itself above 15: then e^-x < half a unit in the last place of x, and torch's
// softplus returns x as well) and, with SLOPE, its derivative sigmoid(x) = t / w, t = e^x, w = 1 + t. ln(1 + t) is
// ln(w) plus (1 + t - w) / w, the first-order term of w's rounding error, which only matters while t < 1 (w in
// [1, 2), where 1 / w is replaced by 1 at a relative cost below 1e-7), so small results keep full precision.
template <bool SLOPE>
inline void softplus(Vec<float> x, Vec<float>& value, Vec<float>& slope) {
    typedef Vec<float> V;
    V t = vexp(x);
    V w = splat(1.0f) + t;
    V rounding = (splat(1.0f) - w) + t;  // exact while t < 1
    V small = vlog(w) + select<float>(t < splat(1.0f), rounding, V{});
    IVec<float> big = x > splat(15.0f);
    value = select<float>(big, x, small);
    if (SLOPE) slope = select<float>(big, splat(1.0f), t * vrecip(w));
}

template <bool SLOPE>
inline void softplus(Vec<double> x, Vec<double>& value, Vec<double>& slope) {
    for (int e = 0; e < kVL<double>; ++e) {
        double t = std::exp(x[e]);
        value[e] = x[e] > 20.0 ? x[e] : std::log1p(t);
        if (SLOPE) slope[e] = x[e] > 20.0 ? 1.0 : t / (1.0 + t);
    }
}

// Square tiles of VL x VL values: transposed in log2(VL) rounds of two-input shuffles (round h pairs rows c and c + h
// and swaps their off-diagonal h x h blocks), and lanes reversed. The strided walks of (b, d, L) operands (one
// stream per channel) are gathered and scattered a tile at a time instead of a value at a time.
template <typename T>
struct Tile {
    static constexpr int VL = kVL<T>;

    static constexpr int lane(int q, int h, bool second) {
        return (q % (2 * h) < h ? 0 : VL - h) + (q / (2 * h)) * 2 * h + q % (2 * h) + (second ? h : 0);
    }

    template <int H, size_t... Q>
    static void swap(Vec<T>& a, Vec<T>& b, std::index_sequence<Q...>) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
        const Vec<T> x = __builtin_shufflevector(a, b, lane(Q, H, false)...);
        b = __builtin_shufflevector(a, b, lane(Q, H, true)...);
        a = x;
#else
        T ab[2 * VL];
        std::memcpy(ab, &a, sizeof a);
        std::memcpy(ab + VL, &b, sizeof b);
        for (int q = 0; q < VL; ++q) {
            a[q] = ab[lane(q, H, false)];
            b[q] = ab[lane(q, H, true)];
        }
#endif
    }

    template <int H>
    static void round(Vec<T>* t) {
        CLIPDEHAZE_UNROLL
        for (int c = 0; c < VL; ++c)
            if (!(c & H)) swap<H>(t[c], t[c + H], std::make_index_sequence<VL>{});
        if constexpr (H > 1) round<H / 2>(t);
    }

    static void transpose(Vec<T>* t) { round<VL / 2>(t); }

    template <size_t... Q>
    static Vec<T> reversed(Vec<T> v, std::index_sequence<Q...>) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
        return __builtin_shufflevector(v, v, (VL - 1 - static_cast<int>(Q))...);
#else
        Vec<T> r;
        for (int q = 0; q < VL; ++q) r[q] = v[VL - 1 - q];
        return r;
#endif
    }
    static Vec<T> reversed(Vec<T> v) { return reversed(v, std::make_index_sequence<VL>{}); }
};

// Sums of up to kVL vectors' lanes, collected and then added in one transposed reduction: log2(kVL) levels of two
// shuffles and an add, instead of a shuffle-add cascade per sum. Each sum is added to its destination.
template <typename T>
struct LaneSums {
    static constexpr int VL = kVL<T>;
    Vec<T> v[VL];
    T* dst[VL];
    int count = 0;

    void add(Vec<T> x, T* d) {
        v[count] = x;
        dst[count] = d;
        if (++count == VL) flush();
    }

    void flush() {
        if (!count) return;
        for (int e = count; e < VL; ++e) v[e] = Vec<T>{};
        level<VL / 2>(v, VL);
        // Destinations one after another (a state's B, or the steps of a chunk walked backwards): one vector add.
        bool up = count == VL, down = count == VL;
        for (int e = 1; e < count && (up || down); ++e) {
            up = up && dst[e] == dst[0] + e;
            down = down && dst[e] == dst[0] - e;
        }
        if (up) store(dst[0], load(dst[0]) + v[0]);
        else if (down) store(dst[VL - 1], load(dst[VL - 1]) + Tile<T>::reversed(v[0]));
        else for (int e = 0; e < count; ++e) *dst[e] += v[0][e];
        count = 0;
    }

    // Lane q of the combined vector at the level that leaves blocks of H lanes: from the first input (q < VL / 2) or
    // the second, its block (q mod VL/2) / H of 2H lanes, offset q mod H, in that block's lower or upper half.
    static constexpr int lane(int q, int H, bool upper) {
        return (q < VL / 2 ? 0 : VL) + ((q % (VL / 2)) / H) * 2 * H + (upper ? H : 0) + q % H;
    }

    template <int H, size_t... Q>
    static Vec<T> combine(Vec<T> a, Vec<T> b, std::index_sequence<Q...>) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
        return __builtin_shufflevector(a, b, lane(Q, H, false)...) + __builtin_shufflevector(a, b, lane(Q, H, true)...);
#else
        T ab[2 * VL];
        std::memcpy(ab, &a, sizeof a);
        std::memcpy(ab + VL, &b, sizeof b);
        Vec<T> r;
        for (int q = 0; q < VL; ++q) r[q] = ab[lane(q, H, false)] + ab[lane(q, H, true)];
        return r;
#endif
    }

    // Vectors 2m and 2m+1 (entries in blocks of 2H lanes) become vector m (blocks of H); at H = 1, lane e of
    // vector 0 is the sum of the e-th vector pushed.
    template <int H>
    static void level(Vec<T>* w, int n) {
        for (int m = 0; m < n / 2; ++m) w[m] = combine<H>(w[2 * m], w[2 * m + 1], std::make_index_sequence<VL>{});
        if constexpr (H > 1) level<H / 2>(w, n / 2);
    }
};


}  // namespace

extern "C" {

// Element strides per axis. u, y, grad_y, du: (batch, group, position, channel); delta, B, C: (batch, group,
// position, direction in the group, channel or state or rank). Direction k = group * dirs_per_group + j.
struct ScanArgs {
    int64_t batch, groups, dirs_per_group, length, channels, state, height, width, chunk, lanes, dt_rank;
    const int32_t* order;  // per direction: bit 0 column-major (t = w * height + h), bit 1 reversed
    const void* u;       int64_t u_s[4];
    const void* delta;   int64_t dl_s[5];  // δ, or with dt_rank the low-rank dts (last axis dt_rank)
    const void* dt_w;    // with dt_rank: (directions, channels, dt_rank) contiguous, δ_c = Σ_r dt_w[k, c, r] dts_r
    const void* A;       // (directions, channels, state) contiguous
    const void* B;       int64_t b_s[5];
    const void* C;       int64_t c_s[5];
    const void* D;       // (directions, channels) contiguous or null
    const void* bias;    // (directions, channels) contiguous or null
    int32_t softplus, threads;
    int32_t merge_groups;  // 1: every group reads and writes one map (group strides of u, y, du 0), one after another
    void* y;             int64_t y_s[4];
    void* checkpoints;   // (batch, directions, chunks, state, channels), null without backward
    void* last_state;    // (batch, directions, channels, state) or null
    // backward only
    const void* grad_y;  int64_t gy_s[4];
    const void* grad_last;  // like last_state, or null
    void* du;            int64_t du_s[4];
    void* ddelta;        // full δ: strides of delta; with dt_rank: (batch, directions, length, dt_rank) contiguous
    void* ddt_w;         // like dt_w (with dt_rank)
    void* dA;            // like A
    void* dB;            // (batch, directions, length, state) contiguous
    void* dC;            // as dB
    void* dD;            // like D (written only when D is given)
    void* dbias;         // like bias (written only when bias is given)
};

}  // extern "C"

namespace {

int64_t directions(const ScanArgs& a) { return a.groups * a.dirs_per_group; }
int64_t num_chunks(const ScanArgs& a) { return (a.length + a.chunk - 1) / a.chunk; }
int64_t blocks_per_group(const ScanArgs& a) { return (a.channels + a.lanes - 1) / a.lanes; }
int64_t item_count(const ScanArgs& a) { return a.batch * a.groups * blocks_per_group(a); }

// Item it -> (batch, group, first channel).
void item_at(const ScanArgs& a, int64_t it, int64_t& b, int64_t& g, int64_t& c0) {
    const int64_t per_g = blocks_per_group(a);
    c0 = (it % per_g) * a.lanes;
    g = (it / per_g) % a.groups;
    b = it / (per_g * a.groups);
}

// One item's view of a chunk: steps [t0, t0 + n) of direction j of group g, channels [c0, c0 + nc) of batch b,
// gathered into buffers with W lanes per step (u, Δ, Δu, softplus slope), N per step (B, C) and r (dts).
template <typename T>
struct Chunk {
    int64_t b = 0, g = 0, j = 0, c0 = 0, nc = 0, t0 = 0, n = 0;
    int run = 0;  // +1 or -1 where the positions step by that much (row-major walks), else 0
    std::vector<int64_t> pos, next;  // positions of this chunk and of the one the item loads next
    std::vector<T> u, dl, du, slope, Bs, Cs, dts, decay;  // decay: (T, N, W), exp(Δ A) per step and state

    Chunk(int64_t steps, int64_t lanes, int64_t state, int64_t rank)
        : pos(steps), next(steps), u(steps * lanes), dl(steps * lanes), du(steps * lanes), slope(steps * lanes),
          Bs(steps * state), Cs(steps * state), dts(steps * std::max<int64_t>(rank, 1)), decay(steps * state * lanes) {}
};

// The map positions of the chunk's steps: row-major t, or column-major (t mod height) * width + t / height,
// forwards or reversed; stepped without a division per step.
void positions(const ScanArgs& a, int32_t code, int64_t t0, int64_t n, int64_t* pos) {
    const int64_t first = (code & 2) ? a.length - 1 - t0 : t0;
    const int64_t step = (code & 2) ? -1 : 1;
    if (!(code & 1)) {
        for (int64_t j = 0; j < n; ++j) pos[j] = first + step * j;
        return;
    }
    int64_t row = first % a.height, col = first / a.height;
    for (int64_t j = 0; j < n; ++j) {
        pos[j] = row * a.width + col;
        row += step;
        if (row == a.height) { row = 0; ++col; }
        if (row < 0) { row = a.height - 1; --col; }
    }
}

// The chunk's rows of a tensor with strides s = (batch, group, position, channel), or (batch, group, position,
// direction, channel) at direction ch.j: base pointer of the block and the two strides that walk it.
template <typename P>
struct Rows {
    P* p0;
    int64_t pos_stride, chan_stride;
};

template <typename T, typename P>
Rows<P> rows4(P* base, const int64_t* s, const Chunk<T>& ch) {
    return {base + ch.b * s[0] + ch.g * s[1] + ch.c0 * s[3], s[2], s[3]};
}

template <typename T, typename P>
Rows<P> rows5(P* base, const int64_t* s, const Chunk<T>& ch) {
    return {base + ch.b * s[0] + ch.g * s[1] + ch.j * s[3] + ch.c0 * s[4], s[2], s[4]};
}

// Gathers the rows' (pos, c0 + lane) into buf[step * W + lane], zero past nc.
template <typename T, int W>
void gather(Rows<const T> r, const Chunk<T>& ch, T* buf) {
    if (r.chan_stride == 1) {
        for (int64_t j = 0; j < ch.n; ++j) {
            const T* row = r.p0 + ch.pos[j] * r.pos_stride;
            T* dst = buf + j * W;
            if (ch.nc == W) {
                std::memcpy(dst, row, W * sizeof(T));
            } else {  // a short block: a loop the compiler vectorises, not a library call per row
                const int64_t nc = ch.nc;
                for (int c = 0; c < W; ++c) dst[c] = c < nc ? row[c] : T(0);
            }
        }
        return;
    }
    constexpr int VL = kVL<T>;
    int64_t j0 = 0;
    if (ch.run && r.pos_stride == 1) {  // one contiguous run per channel: tiles of VL channels x VL steps
        for (; j0 + VL <= ch.n; j0 += VL) {
            const T* first = r.p0 + (ch.run > 0 ? ch.pos[j0] : ch.pos[j0 + VL - 1]);
            for (int cb = 0; cb < W; cb += VL) {
                Vec<T> t[VL];
                CLIPDEHAZE_UNROLL
                for (int e = 0; e < VL; ++e) {
                    t[e] = cb + e < ch.nc ? load(first + (cb + e) * r.chan_stride) : Vec<T>{};
                    if (ch.run < 0) t[e] = Tile<T>::reversed(t[e]);
                }
                Tile<T>::transpose(t);
                CLIPDEHAZE_UNROLL
                for (int e = 0; e < VL; ++e) store(buf + (j0 + e) * W + cb, t[e]);
            }
        }
    }
    if (ch.nc < W)
        for (int64_t j = j0; j < ch.n; ++j) std::fill(buf + j * W + ch.nc, buf + (j + 1) * W, T(0));
    for (int64_t c = 0; c < ch.nc; ++c) {
        const T* col = r.p0 + c * r.chan_stride;
        for (int64_t j = j0; j < ch.n; ++j) buf[j * W + c] = col[ch.pos[j] * r.pos_stride];
    }
}

// Writes (or, with add, accumulates) buf back to the rows; the inverse of gather.
template <typename T, int W>
void scatter(Rows<T> r, const Chunk<T>& ch, const T* buf, bool add) {
    if (r.chan_stride == 1) {
        for (int64_t j = 0; j < ch.n; ++j) {
            T* row = r.p0 + ch.pos[j] * r.pos_stride;
            const T* src = buf + j * W;
            const int64_t nc = ch.nc;
            if (add) for (int64_t c = 0; c < nc; ++c) row[c] += src[c];
            else for (int64_t c = 0; c < nc; ++c) row[c] = src[c];
        }
        return;
    }
    constexpr int VL = kVL<T>;
    int64_t j0 = 0;
    if (ch.run && r.pos_stride == 1) {
        for (; j0 + VL <= ch.n; j0 += VL) {
            T* first = r.p0 + (ch.run > 0 ? ch.pos[j0] : ch.pos[j0 + VL - 1]);
            for (int cb = 0; cb < W; cb += VL) {
                Vec<T> t[VL];
                CLIPDEHAZE_UNROLL
                for (int e = 0; e < VL; ++e) t[e] = load(buf + (j0 + e) * W + cb);
                Tile<T>::transpose(t);
                for (int e = 0; e < VL && cb + e < ch.nc; ++e) {
                    T* at = first + (cb + e) * r.chan_stride;
                    const Vec<T> v = ch.run < 0 ? Tile<T>::reversed(t[e]) : t[e];
                    store(at, add ? load(at) + v : v);
                }
            }
        }
    }
    for (int64_t c = 0; c < ch.nc; ++c) {
        T* col = r.p0 + c * r.chan_stride;
        if (add) for (int64_t j = j0; j < ch.n; ++j) col[ch.pos[j] * r.pos_stride] += buf[j * W + c];
        else for (int64_t j = j0; j < ch.n; ++j) col[ch.pos[j] * r.pos_stride] = buf[j * W + c];
    }
}

// Per-step values that do not depend on the channel (B_t, C_t: state; dts: rank) as buf[step * width + i], zero
// for i >= count (padded states).
template <typename T>
void gather_small(const T* base, const int64_t* s, const Chunk<T>& ch, int64_t count, int64_t width, T* buf) {
    constexpr int VL = kVL<T>;
    const T* p0 = base + ch.b * s[0] + ch.g * s[1] + ch.j * s[3];
    int64_t j0 = 0;
    if (ch.run && s[2] == 1 && s[4] != 1 && count == VL && width == VL) {  // (b, n, L): a tile per VL steps
        for (; j0 + VL <= ch.n; j0 += VL) {
            const T* first = p0 + (ch.run > 0 ? ch.pos[j0] : ch.pos[j0 + VL - 1]);
            Vec<T> t[VL];
            CLIPDEHAZE_UNROLL
            for (int e = 0; e < VL; ++e) {
                t[e] = load(first + e * s[4]);
                if (ch.run < 0) t[e] = Tile<T>::reversed(t[e]);
            }
            Tile<T>::transpose(t);
            CLIPDEHAZE_UNROLL
            for (int e = 0; e < VL; ++e) store(buf + (j0 + e) * VL, t[e]);
        }
    }
    for (int64_t j = j0; j < ch.n; ++j) {
        const T* at = p0 + ch.pos[j] * s[2];
        for (int64_t i = 0; i < count; ++i) buf[j * width + i] = at[i * s[4]];
        for (int64_t i = count; i < width; ++i) buf[j * width + i] = T(0);
    }
}

// Prefetches what gather / gather_small will read at the positions pos[0..n): walks over channel-strided operands
// (each step a new cache line per channel, one stream per channel) or over a map's columns (each step a new row)
// outrun the hardware prefetchers, and a chunk's loads would wait on memory one after another.
template <typename T>
void prefetch_rows(Rows<const T> r, int64_t nc, const int64_t* pos, int64_t n) {
    if (r.chan_stride == 1) {
        for (int64_t j = 0; j < n; ++j) __builtin_prefetch(r.p0 + pos[j] * r.pos_stride, 0, 2);
        return;
    }
    for (int64_t c = 0; c < nc; ++c) {
        __builtin_prefetch(r.p0 + c * r.chan_stride + pos[0] * r.pos_stride, 0, 2);
        __builtin_prefetch(r.p0 + c * r.chan_stride + pos[n - 1] * r.pos_stride, 0, 2);
    }
}

template <typename T>
void prefetch_small(const T* base, const int64_t* s, const Chunk<T>& ch, int64_t count, const int64_t* pos, int64_t n) {
    const T* p0 = base + ch.b * s[0] + ch.g * s[1] + ch.j * s[3];
    if (count == 1 || s[4] == 1) {
        for (int64_t j = 0; j < n; ++j) __builtin_prefetch(p0 + pos[j] * s[2], 0, 2);
        return;
    }
    for (int64_t i = 0; i < count; ++i) {
        __builtin_prefetch(p0 + i * s[4] + pos[0] * s[2], 0, 2);
        __builtin_prefetch(p0 + i * s[4] + pos[n - 1] * s[2], 0, 2);
    }
}

// Per-direction constants of an item, lane-padded: A as (N, W), D and bias (W), dt_w as (rank, W).
template <typename T>
struct Params {
    std::vector<T> A, D, bias, dt_w;
    Params(const ScanArgs& a, int64_t k, int64_t c0, int64_t nc, int N, int W)
        : A(N * W, T(0)), D(W, T(0)), bias(W, T(0)), dt_w(std::max<int64_t>(a.dt_rank, 1) * W, T(0)) {
        const T* Ak = static_cast<const T*>(a.A) + k * a.channels * a.state;
        for (int64_t c = 0; c < nc; ++c) {
            for (int64_t i = 0; i < a.state; ++i) A[i * W + c] = Ak[(c0 + c) * a.state + i];
            if (a.D) D[c] = static_cast<const T*>(a.D)[k * a.channels + c0 + c];
            // Lanes past nc keep bias 0, so their Δ stays finite; their u = 0 keeps them inert anyway.
            if (a.bias) bias[c] = static_cast<const T*>(a.bias)[k * a.channels + c0 + c];
            const T* w = static_cast<const T*>(a.dt_w) + (k * a.channels + c0 + c) * a.dt_rank;
            for (int64_t r = 0; r < a.dt_rank; ++r) dt_w[r * W + c] = w[r];
        }
    }
};

// Gradients that several items add into: dA, dD, dbias and dt_w of the item's directions and channels.
template <typename T>
struct ItemGrads {
    std::vector<T> dA, dD, dbias, ddt_w;
    ItemGrads(const ScanArgs& a, int N, int W)
        : dA(a.dirs_per_group * N * W, T(0)), dD(a.dirs_per_group * W, T(0)), dbias(a.dirs_per_group * W, T(0)),
          ddt_w(a.dirs_per_group * std::max<int64_t>(a.dt_rank, 1) * W, T(0)) {}
};

template <typename T>
T* checkpoint_at(const ScanArgs& a, int64_t b, int64_t k, int64_t chunk, int64_t c0) {
    return static_cast<T*>(a.checkpoints) + (((b * directions(a) + k) * num_chunks(a) + chunk) * a.state) * a.channels
           + c0;
}

template <typename T>
void start_chunk(Chunk<T>& ch, const ScanArgs& a, int64_t b, int64_t g, int64_t j, int64_t c0, int64_t nc,
                 int64_t q) {
    ch.b = b; ch.g = g; ch.j = j; ch.c0 = c0; ch.nc = nc; ch.t0 = q * a.chunk;
    ch.n = std::min(a.chunk, a.length - ch.t0);
}

// One (state size N, item width 16 NB) instance of the scan.
template <typename T, int N, int NB>
struct Scan {
    static constexpr int VL = kVL<T>, W = kLanes * NB, NV = W / VL;
    typedef Vec<T> V;

    // Fills the chunk's positions, u, Δ (low-rank product, bias and softplus applied), with SLOPE the softplus
    // slope, Δu, the decays exp(Δ A), B and C, and prefetches the inputs of chunk q_next (none if out of range),
    // and with grad_y its ȳ. The decays are computed here, in a loop whose steps do not depend on each other,
    // rather than in the recurrence: a step's exp -> log -> exp chain is longer than the out-of-order window
    // reaches, and the recurrence itself is one multiply-add per state.
    template <bool SLOPE>
    static void load_chunk(const ScanArgs& a, Chunk<T>& ch, const Params<T>& p, int64_t q_next,
                           const T* grad_y = nullptr) {
        const int64_t k = ch.g * a.dirs_per_group + ch.j, r = a.dt_rank;
        positions(a, a.order[k], ch.t0, ch.n, ch.pos.data());
        ch.run = (a.order[k] & 1) && a.height > 1 ? 0 : (a.order[k] & 2) ? -1 : 1;
        if (q_next >= 0 && q_next < num_chunks(a)) {
            const int64_t t0 = q_next * a.chunk, n = std::min(a.chunk, a.length - t0);
            const int64_t* nx = ch.next.data();
            positions(a, a.order[k], t0, n, ch.next.data());
            prefetch_rows(rows4<T>(static_cast<const T*>(a.u), a.u_s, ch), ch.nc, nx, n);
            if (r) prefetch_small(static_cast<const T*>(a.delta), a.dl_s, ch, r, nx, n);
            else prefetch_rows(rows5<T>(static_cast<const T*>(a.delta), a.dl_s, ch), ch.nc, nx, n);
            prefetch_small(static_cast<const T*>(a.B), a.b_s, ch, a.state, nx, n);
            prefetch_small(static_cast<const T*>(a.C), a.c_s, ch, a.state, nx, n);
            if (grad_y) prefetch_rows(rows4<T>(grad_y, a.gy_s, ch), ch.nc, nx, n);
        }
        gather<T, W>(rows4<T>(static_cast<const T*>(a.u), a.u_s, ch), ch, ch.u.data());
        if (r) gather_small(static_cast<const T*>(a.delta), a.dl_s, ch, r, r, ch.dts.data());
        else gather<T, W>(rows5<T>(static_cast<const T*>(a.delta), a.dl_s, ch), ch, ch.dl.data());
        V bias[NV];
        CLIPDEHAZE_UNROLL
        for (int v = 0; v < NV; ++v) bias[v] = load(&p.bias[v * VL]);
        for (int64_t s = 0; s < ch.n; ++s) {
            T* dl = &ch.dl[s * W];
            CLIPDEHAZE_UNROLL
            for (int v = 0; v < NV; ++v) {
                V x;
                if (r) {
                    x = bias[v];
                    for (int64_t q = 0; q < r; ++q) x += splat(ch.dts[s * r + q]) * load(&p.dt_w[q * W + v * VL]);
                } else {
                    x = load(dl + v * VL) + bias[v];
                }
                V value = x, slope = splat(T(1));
                if (a.softplus) softplus<SLOPE>(x, value, slope);
                store(dl + v * VL, value);
                if (SLOPE) store(&ch.slope[s * W + v * VL], slope);
                store(&ch.du[s * W + v * VL], value * load(&ch.u[s * W + v * VL]));
                CLIPDEHAZE_UNROLL
                for (int i = 0; i < N; ++i)
                    store(&ch.decay[(s * N + i) * W + v * VL], vexp(value * load(&p.A[i * W + v * VL])));
            }
        }
        gather_small(static_cast<const T*>(a.B), a.b_s, ch, a.state, N, ch.Bs.data());
        gather_small(static_cast<const T*>(a.C), a.c_s, ch, a.state, N, ch.Cs.data());
    }

    static void forward_item(const ScanArgs& a, int64_t it) {
        int64_t b, g, c0;
        item_at(a, it, b, g, c0);
        const int64_t nc = std::min<int64_t>(W, a.channels - c0);
        Chunk<T> ch(a.chunk, W, N, a.dt_rank);
        std::vector<T> ybuf(a.chunk * W);
        alignas(64) T hs[N * W];
        for (int64_t j = 0; j < a.dirs_per_group; ++j) {
            const int64_t k = g * a.dirs_per_group + j;
            const Params<T> p(a, k, c0, nc, N, W);
            V A[N][NV], D[NV], h[N][NV];
            CLIPDEHAZE_UNROLL
            for (int v = 0; v < NV; ++v) {
                D[v] = load(&p.D[v * VL]);
                CLIPDEHAZE_UNROLL
                for (int i = 0; i < N; ++i) {
                    A[i][v] = load(&p.A[i * W + v * VL]);
                    h[i][v] = V{};
                }
            }
            for (int64_t q = 0; q < num_chunks(a); ++q) {
                start_chunk(ch, a, b, g, j, c0, nc, q);
                load_chunk<false>(a, ch, p, q + 1);
                if (a.checkpoints) {
                    CLIPDEHAZE_UNROLL
                    for (int i = 0; i < N; ++i)
                        CLIPDEHAZE_UNROLL
                        for (int v = 0; v < NV; ++v) store(&hs[i * W + v * VL], h[i][v]);
                    T* ck = checkpoint_at<T>(a, b, k, q, c0);
                    for (int64_t i = 0; i < a.state; ++i) std::memcpy(ck + i * a.channels, &hs[i * W], nc * sizeof(T));
                }
                for (int64_t s = 0; s < ch.n; ++s) {
                    V dl[NV], du[NV], y[NV];
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) {
                        dl[v] = load(&ch.dl[s * W + v * VL]);
                        du[v] = load(&ch.du[s * W + v * VL]);
                        y[v] = D[v] * load(&ch.u[s * W + v * VL]);
                    }
                    CLIPDEHAZE_UNROLL
                    for (int i = 0; i < N; ++i) {
                        const V Bi = splat(ch.Bs[s * N + i]), Ci = splat(ch.Cs[s * N + i]);
                        CLIPDEHAZE_UNROLL
                        for (int v = 0; v < NV; ++v) {
                            h[i][v] = load(&ch.decay[(s * N + i) * W + v * VL]) * h[i][v] + du[v] * Bi;
                            y[v] += Ci * h[i][v];
                        }
                    }
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) store(&ybuf[s * W + v * VL], y[v]);
                }
                scatter<T, W>(rows4<T>(static_cast<T*>(a.y), a.y_s, ch), ch, ybuf.data(), j > 0 || (a.merge_groups && g));
            }
            if (a.last_state) {
                CLIPDEHAZE_UNROLL
                for (int i = 0; i < N; ++i)
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) store(&hs[i * W + v * VL], h[i][v]);
                T* ls = static_cast<T*>(a.last_state) + ((b * directions(a) + k) * a.channels + c0) * a.state;
                for (int64_t c = 0; c < nc; ++c)
                    for (int64_t i = 0; i < a.state; ++i) ls[c * a.state + i] = hs[i * W + c];
            }
        }
    }

    // dB, dC and (low-rank Δ) ddts: this thread's (batch, directions, step, ·) buffers.
    static void backward_item(const ScanArgs& a, int64_t it, T* dB, T* dC, T* ddts, ItemGrads<T>& out) {
        int64_t b, g, c0;
        item_at(a, it, b, g, c0);
        const int64_t nc = std::min<int64_t>(W, a.channels - c0), L = a.length, K = directions(a), r = a.dt_rank;
        Chunk<T> ch(a.chunk, W, N, r);
        std::vector<T> gy(a.chunk * W), gu(a.chunk * W), gdl(a.chunk * W);
        // Per step of the chunk: the decayed state a_t h_{t-1}, kept rather than h_t because the gradients of Δ and A
        // need it and h_t - Δ_t B_t u_t would lose it to cancellation.
        std::vector<T> kept(a.chunk * N * W);
        alignas(64) T hs[N * W];
        for (int64_t j = 0; j < a.dirs_per_group; ++j) {
            const int64_t k = g * a.dirs_per_group + j;
            const Params<T> p(a, k, c0, nc, N, W);
            // gst carries the adjoint of the state after the step being processed, decayed once more: what the
            // state before it receives from the future.
            V A[N][NV], D[NV], gst[N][NV], dA[N][NV], dD[NV], dbias[NV];
            std::fill(hs, hs + N * W, T(0));
            if (a.grad_last) {
                const T* gl = static_cast<const T*>(a.grad_last) + ((b * K + k) * a.channels + c0) * a.state;
                for (int64_t c = 0; c < nc; ++c)
                    for (int64_t i = 0; i < a.state; ++i) hs[i * W + c] = gl[c * a.state + i];
            }
            CLIPDEHAZE_UNROLL
            for (int v = 0; v < NV; ++v) {
                D[v] = load(&p.D[v * VL]);
                dD[v] = dbias[v] = V{};
                CLIPDEHAZE_UNROLL
                for (int i = 0; i < N; ++i) {
                    A[i][v] = load(&p.A[i * W + v * VL]);
                    gst[i][v] = load(&hs[i * W + v * VL]);
                    dA[i][v] = V{};
                }
            }
            T* ddt_w = &out.ddt_w[j * std::max<int64_t>(r, 1) * W];
            LaneSums<T> sums_b, sums_c, sums_dt;
            for (int64_t q = num_chunks(a) - 1; q >= 0; --q) {
                start_chunk(ch, a, b, g, j, c0, nc, q);
                load_chunk<true>(a, ch, p, q - 1, static_cast<const T*>(a.grad_y));
                gather<T, W>(rows4<T>(static_cast<const T*>(a.grad_y), a.gy_s, ch), ch, gy.data());
                const T* ck = checkpoint_at<T>(a, b, k, q, c0);
                V h[N][NV];
                std::fill(hs, hs + N * W, T(0));
                for (int64_t i = 0; i < a.state; ++i) std::memcpy(&hs[i * W], ck + i * a.channels, nc * sizeof(T));
                CLIPDEHAZE_UNROLL
                for (int i = 0; i < N; ++i)
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) h[i][v] = load(&hs[i * W + v * VL]);
                for (int64_t s = 0; s < ch.n; ++s) {
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) {
                        const V du = load(&ch.du[s * W + v * VL]);
                        CLIPDEHAZE_UNROLL
                        for (int i = 0; i < N; ++i) {
                            const V kt = load(&ch.decay[(s * N + i) * W + v * VL]) * h[i][v];
                            store(&kept[(s * N + i) * W + v * VL], kt);
                            h[i][v] = kt + du * splat(ch.Bs[s * N + i]);
                        }
                    }
                }
                for (int64_t s = ch.n - 1; s >= 0; --s) {
                    V dl[NV], du[NV], u[NV], gys[NV], gdu[NV], gdle[NV];
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) {
                        dl[v] = load(&ch.dl[s * W + v * VL]);
                        du[v] = load(&ch.du[s * W + v * VL]);
                        u[v] = load(&ch.u[s * W + v * VL]);
                        gys[v] = load(&gy[s * W + v * VL]);
                        gdu[v] = gdle[v] = V{};
                    }
                    // Step-ordered (not position-ordered) rows: a chunk's sums land one after another.
                    T* dBs = dB + ((b * K + k) * L + ch.t0 + s) * a.state;
                    T* dCs = dC + ((b * K + k) * L + ch.t0 + s) * a.state;
                    CLIPDEHAZE_UNROLL
                    for (int i = 0; i < N; ++i) {
                        const V Bi = splat(ch.Bs[s * N + i]), Ci = splat(ch.Cs[s * N + i]);
                        V pb{}, pc{};
                        CLIPDEHAZE_UNROLL
                        for (int v = 0; v < NV; ++v) {
                            const V kt = load(&kept[(s * N + i) * W + v * VL]);
                            const V gt = gst[i][v] + Ci * gys[v];   // adjoint of h_t
                            const V x = gt * kt;                     // ∂L/∂(Δ_t A) = g_t a_t h_{t-1}
                            gdu[v] += gt * Bi;
                            gdle[v] += x * A[i][v];
                            dA[i][v] += x * dl[v];
                            pb += gt * du[v];
                            pc += (kt + du[v] * Bi) * gys[v];       // h_t ȳ_t
                            gst[i][v] = load(&ch.decay[(s * N + i) * W + v * VL]) * gt;
                        }
                        if (i < a.state) {
                            sums_b.add(pb, dBs + i);
                            sums_c.add(pc, dCs + i);
                        }
                    }
                    T* ddts_s = r ? ddts + ((b * K + k) * L + ch.t0 + s) * r : nullptr;
                    V graw[NV];
                    CLIPDEHAZE_UNROLL
                    for (int v = 0; v < NV; ++v) {
                        store(&gu[s * W + v * VL], gdu[v] * dl[v] + D[v] * gys[v]);
                        graw[v] = (gdle[v] + gdu[v] * u[v]) * load(&ch.slope[s * W + v * VL]);
                        store(&gdl[s * W + v * VL], graw[v]);
                        dbias[v] += graw[v];
                        dD[v] += gys[v] * u[v];
                    }
                    for (int64_t q2 = 0; q2 < r; ++q2) {
                        V acc{};
                        const V dts = splat(ch.dts[s * r + q2]);
                        CLIPDEHAZE_UNROLL
                        for (int v = 0; v < NV; ++v) {
                            acc += graw[v] * load(&p.dt_w[q2 * W + v * VL]);
                            store(&ddt_w[q2 * W + v * VL], load(&ddt_w[q2 * W + v * VL]) + graw[v] * dts);
                        }
                        sums_dt.add(acc, ddts_s + q2);
                    }
                }
                sums_b.flush();
                sums_c.flush();
                sums_dt.flush();
                scatter<T, W>(rows4<T>(static_cast<T*>(a.du), a.du_s, ch), ch, gu.data(), j > 0 || (a.merge_groups && g));
                if (!r) scatter<T, W>(rows5<T>(static_cast<T*>(a.ddelta), a.dl_s, ch), ch, gdl.data(), false);
            }
            CLIPDEHAZE_UNROLL
            for (int v = 0; v < NV; ++v) {
                store(&out.dD[j * W + v * VL], dD[v]);
                store(&out.dbias[j * W + v * VL], dbias[v]);
                CLIPDEHAZE_UNROLL
                for (int i = 0; i < N; ++i) store(&out.dA[(j * N + i) * W + v * VL], dA[i][v]);
            }
        }
    }

    static void forward(const ScanArgs& a, int nt) {
        for_items(a, nt, [&](int64_t it, int) { forward_item(a, it); });
    }

    // fn(item, thread) for every item in parallel; with merge_groups, group after group (their items write the
    // same rows).
    template <typename F>
    static void for_items(const ScanArgs& a, int nt, F fn) {
        const int64_t per_g = blocks_per_group(a), rounds = a.merge_groups ? a.groups : 1;
        const int64_t items = item_count(a) / rounds;
        for (int64_t g = 0; g < rounds; ++g) {
#pragma omp parallel num_threads(nt)
            {
#ifdef _OPENMP
                const int tid = omp_get_thread_num();
#else
                const int tid = 0;
#endif
#pragma omp for schedule(dynamic, 1)
                for (int64_t i = 0; i < items; ++i)
                    fn(a.merge_groups ? ((i / per_g) * a.groups + g) * per_g + i % per_g : i, tid);
            }
        }
    }

    // out[b, k, position of step t, ·] = Σ over threads of buf[b, k, t, ·] (and the same for a second pair).
    static void sum_threads(const ScanArgs& a, const T* buf, const T* buf2, T* out, T* out2, int64_t width,
                            int64_t size, int nt) {
        const int64_t K = directions(a), L = a.length, pairs = a.batch * K;
#pragma omp parallel for num_threads(nt)
        for (int64_t bk = 0; bk < pairs; ++bk) {
            std::vector<int64_t> pos(a.chunk);
            for (int64_t t0 = 0; t0 < L; t0 += a.chunk) {
                const int64_t n = std::min(a.chunk, L - t0);
                positions(a, a.order[bk % K], t0, n, pos.data());
                for (int64_t j = 0; j < n; ++j) {
                    const int64_t from = (bk * L + t0 + j) * width, to = (bk * L + pos[j]) * width;
                    for (int64_t i = 0; i < width; ++i) {
                        T s1 = 0, s2 = 0;
                        for (int t = 0; t < nt; ++t) {
                            s1 += buf[t * size + from + i];
                            if (buf2) s2 += buf2[t * size + from + i];
                        }
                        out[to + i] = s1;
                        if (out2) out2[to + i] = s2;
                    }
                }
            }
        }
    }

    static void backward(const ScanArgs& a, int nt) {
        const int64_t items = item_count(a), K = directions(a), S = a.state, r = a.dt_rank, L = a.length;
        // Each thread's own dB, dC and ddts (batch, directions, step, ·): items of other channel blocks add into the
        // same entries. Summed over threads at the end, and each step's row moved to its position.
        const int64_t bc_size = a.batch * K * L * S, dt_size = a.batch * K * L * r;
        std::vector<T> dB(nt * bc_size), dC(nt * bc_size), ddts(nt * dt_size);
        std::vector<ItemGrads<T>> grads;
        grads.reserve(items);
        for (int64_t it = 0; it < items; ++it) grads.emplace_back(a, N, W);
        for_items(a, nt, [&](int64_t it, int tid) {
            backward_item(a, it, &dB[tid * bc_size], &dC[tid * bc_size], r ? &ddts[tid * dt_size] : nullptr,
                          grads[it]);
        });
        sum_threads(a, dB.data(), dC.data(), static_cast<T*>(a.dB), static_cast<T*>(a.dC), S, bc_size, nt);
        if (r) sum_threads(a, ddts.data(), nullptr, static_cast<T*>(a.ddelta), nullptr, r, dt_size, nt);
        T* dA = static_cast<T*>(a.dA);
        T* dD = static_cast<T*>(a.dD);
        T* dbias = static_cast<T*>(a.dbias);
        T* ddt_w = static_cast<T*>(a.ddt_w);
        std::fill(dA, dA + K * a.channels * S, T(0));
        if (a.D) std::fill(dD, dD + K * a.channels, T(0));
        if (a.bias) std::fill(dbias, dbias + K * a.channels, T(0));
        if (r) std::fill(ddt_w, ddt_w + K * a.channels * r, T(0));
        for (int64_t it = 0; it < items; ++it) {
            int64_t b, g, c0;
            item_at(a, it, b, g, c0);
            const int64_t nc = std::min<int64_t>(W, a.channels - c0);
            for (int64_t j = 0; j < a.dirs_per_group; ++j) {
                const int64_t k = g * a.dirs_per_group + j;
                const ItemGrads<T>& gr = grads[it];
                for (int64_t c = 0; c < nc; ++c) {
                    for (int64_t i = 0; i < S; ++i) dA[(k * a.channels + c0 + c) * S + i] += gr.dA[(j * N + i) * W + c];
                    if (a.D) dD[k * a.channels + c0 + c] += gr.dD[j * W + c];
                    if (a.bias) dbias[k * a.channels + c0 + c] += gr.dbias[j * W + c];
                    for (int64_t q = 0; q < r; ++q)
                        ddt_w[(k * a.channels + c0 + c) * r + q] += gr.ddt_w[(j * r + q) * W + c];
                }
            }
        }
    }
};

int thread_count(const ScanArgs& a) {
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.threads, item_count(a))));
}

// The instance for the padded state size and the item width; 0, or 1 for a geometry not compiled in.
template <typename T>
int run(const ScanArgs& a, bool backward) {
    int N = 1;
    while (N < a.state) N *= 2;
    const int nt = thread_count(a);
#define CLIPDEHAZE_CASE(n, nb)                                                                  \
    if (N == n && a.lanes == kLanes * nb) {                                                     \
        if (backward) Scan<T, n, nb>::backward(a, nt); else Scan<T, n, nb>::forward(a, nt);     \
        return 0;                                                                               \
    }
    CLIPDEHAZE_CASE(1, 1) CLIPDEHAZE_CASE(1, 2) CLIPDEHAZE_CASE(1, 4)
    CLIPDEHAZE_CASE(2, 1) CLIPDEHAZE_CASE(2, 2)
    CLIPDEHAZE_CASE(4, 1) CLIPDEHAZE_CASE(8, 1) CLIPDEHAZE_CASE(16, 1)
#undef CLIPDEHAZE_CASE
    return 1;
}

}  // namespace

extern "C" {

int clipdehaze_scan_abi_version() { return 4; }

int clipdehaze_scan_forward_f32(const ScanArgs* a) { return run<float>(*a, false); }
int clipdehaze_scan_forward_f64(const ScanArgs* a) { return run<double>(*a, false); }
int clipdehaze_scan_backward_f32(const ScanArgs* a) { return run<float>(*a, true); }
int clipdehaze_scan_backward_f64(const ScanArgs* a) { return run<double>(*a, true); }

}  // extern "C"
