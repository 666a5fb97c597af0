//! Raw f32 CPU kernels: im2col / col2im around one large GEMM per chunk of images.
//!
//! Everything here works on contiguous NCHW slices and one [`ConvGeom`], which describes a
//! convolution *in the direction of `conv2d`*: a "big" grid `(c_big, h_big, w_big)` is convolved
//! down to a "small" grid `(c_small, h_small, w_small)` by a weight stored as
//! `(c_small, c_big, kh, kw)`. Both weight layouts of the public API are exactly that:
//! `conv2d` weights are `(c_out, c_in, kh, kw)` (big = input), `conv_transpose2d` weights are
//! `(c_in, c_out, kh, kw)` (big = output). Hence three kernels cover both ops and their backward:
//!
//! | kernel            | conv2d            | conv_transpose2d   |
//! |-------------------|-------------------|--------------------|
//! | [`small_from_big`] | forward           | input gradient     |
//! | [`big_from_small`] | input gradient    | forward            |
//! | [`weight_grad`]    | weight gradient   | weight gradient    |
//!
//! Why this layout: at the channel counts of Table 9 (1 to 128 channels, 1x1 to 28x28 grids) a
//! per-image GEMM is tiny (`N = h * w` as small as 1), so the batch is folded into the GEMM's `N`
//! dimension: a chunk of `nb` images gives `cols: (c_big * kh * kw, nb * h_small * w_small)`.
//! Chunks are sized to keep `cols` cache-resident (about [`COLS_BUDGET`] floats) and are processed
//! in parallel with rayon (one single-threaded GEMM each); when there are fewer chunks than threads
//! (tiny batches), the GEMM itself is parallel instead.
use gemm::Parallelism;
use rayon::prelude::*;

/// Default target size of one chunk's `cols` buffer, in f32 elements (4 MiB). Large enough that
/// the GEMM's `N` is in the thousands, small enough that im2col's output is still in cache when
/// the GEMM reads it. Overridden by the environment variable `EABS_KERNELS_COLS_BUDGET` (read
/// once), for tuning on other machines.
pub(crate) const COLS_BUDGET: usize = 1 << 20;

fn cols_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("EABS_KERNELS_COLS_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v > 0)
            .unwrap_or(COLS_BUDGET)
    })
}

/// Geometry of one convolution, seen in the `conv2d` direction (big grid -> small grid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    /// Batch size.
    pub n: usize,
    /// Channels of the big grid (conv2d input, conv_transpose2d output).
    pub c_big: usize,
    /// Height of the big grid.
    pub h_big: usize,
    /// Width of the big grid.
    pub w_big: usize,
    /// Channels of the small grid (conv2d output, conv_transpose2d input).
    pub c_small: usize,
    /// Height of the small grid.
    pub h_small: usize,
    /// Width of the small grid.
    pub w_small: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding of the big grid (both directions, both sides).
    pub pad: usize,
}

impl ConvGeom {
    /// Every dimension except the batch is at least one (the public API checks this), so chunk
    /// lengths are never zero.
    pub fn is_nonempty(&self) -> bool {
        self.c_big
            * self.h_big
            * self.w_big
            * self.c_small
            * self.h_small
            * self.w_small
            * self.kh
            * self.kw
            * self.stride
            > 0
    }
    /// Elements of one image of the big grid.
    pub fn big_len(&self) -> usize {
        self.c_big * self.h_big * self.w_big
    }
    /// Elements of one image of the small grid.
    pub fn small_len(&self) -> usize {
        self.c_small * self.h_small * self.w_small
    }
    /// Pixels of one small-grid plane (the per-image GEMM `N`).
    pub fn p_small(&self) -> usize {
        self.h_small * self.w_small
    }
    /// Rows of `cols` (the GEMM's reduction length for conv2d): `c_big * kh * kw`.
    pub fn k_cols(&self) -> usize {
        self.c_big * self.kh * self.kw
    }

    /// The kernel covers the whole unpadded big grid, so the small grid is 1x1 and im2col of
    /// one image is that image read as a column: the whole convolution is one plain GEMM on the
    /// NCHW buffers, `small (n, c_small) = big (n, k) · Wᵀ`. Table 9's first decoder layers
    /// (latent 1x1 -> 4x4, kernel 4) and SVHN / SuperTraffic-10's last encoder layer (4x4 ->
    /// 1x1, kernel 4, no padding) are such layers.
    pub fn is_full_cover(&self) -> bool {
        self.h_small == 1
            && self.w_small == 1
            && self.pad == 0
            && self.kh == self.h_big
            && self.kw == self.w_big
    }

    /// A 1x1 kernel at stride 1 without padding: per image, `small_b (c_small, p) = W · big_b
    /// (c_big, p)` on the NCHW planes as they lie, with no im2col, col2im or transposition
    /// (the decoders' last layer of Table 9).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Images per chunk: `cols` within [`COLS_BUDGET`], and at least one chunk per thread when
    /// the batch allows it.
    fn chunk_images(&self, threads: usize) -> usize {
        let per_image = (self.k_cols() * self.p_small())
            .max(self.small_len())
            .max(1);
        let by_mem = (cols_budget() / per_image).max(1);
        let by_threads = self.n.div_ceil(threads.max(1)).max(1);
        by_mem.min(by_threads).min(self.n.max(1))
    }
}

/// A buffer whose every element the caller promises to overwrite. In debug builds (tests) it is
/// poisoned with NaN so that an element a kernel forgets to write fails the tests; in release it
/// is zeroed (same cost, lazily mapped pages for large buffers).
pub(crate) fn out_buffer(len: usize) -> Vec<f32> {
    if cfg!(debug_assertions) {
        vec![f32::NAN; len]
    } else {
        vec![0.0; len]
    }
}

/// Runs `f` on a scratch buffer of `len` floats that the calling thread keeps between calls, so
/// the per-chunk `cols` and transposition buffers (megabytes each, several per layer and step)
/// are neither reallocated nor re-zeroed: `f` must write every element before reading it (in
/// debug builds the buffer is poisoned with NaN on every call, as [`out_buffer`] is). A nested
/// call on the same thread gets a fresh buffer.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                // Free the old buffer before allocating the larger one.
                *buf = Vec::new();
                *buf = vec![0.0; len];
            }
            let s = &mut buf[..len];
            if cfg!(debug_assertions) {
                s.fill(f32::NAN);
            }
            f(s)
        }
        Err(_) => f(&mut out_buffer(len)),
    })
}

/// Range `lo..hi` of small-grid positions `o` whose big-grid position `o * stride + tap - pad`
/// lies inside `0..big_len`.
#[inline]
fn valid_range(
    small_len: usize,
    big_len: usize,
    stride: usize,
    pad: usize,
    tap: usize,
) -> (usize, usize) {
    let lo = if pad > tap {
        (pad - tap).div_ceil(stride)
    } else {
        0
    };
    let hi = if big_len + pad > tap {
        (big_len + pad - tap).div_ceil(stride)
    } else {
        0
    };
    let hi = hi.min(small_len);
    (lo.min(hi), hi)
}

/// im2col of `nb` big-grid images into `cols: (c_big * kh * kw, nb * p_small)`, row-major.
fn im2col(g: &ConvGeom, big: &[f32], nb: usize, cols: &mut [f32]) {
    if g.stride > 1 {
        im2col_phased(g, big, nb, cols);
    } else {
        im2col_direct(g, big, nb, cols);
    }
}

/// The stride-phase view of a big grid ([`im2col_phased`], [`col2im_phased`]): the padded
/// extents a kernel sweeps, `hp = (h_small - 1) stride + kh` and `wp = (w_small - 1) stride +
/// kw`, split into `stride * stride` phase grids of `hq x wq = ceil(hp / stride) x ceil(wp /
/// stride)` each.
struct Phases {
    s: usize,
    hp: usize,
    wp: usize,
    hq: usize,
    wq: usize,
}

impl Phases {
    fn new(g: &ConvGeom) -> Self {
        let s = g.stride;
        let hp = (g.h_small - 1) * s + g.kh;
        let wp = (g.w_small - 1) * s + g.kw;
        Self {
            s,
            hp,
            wp,
            hq: hp.div_ceil(s),
            wq: wp.div_ceil(s),
        }
    }

    /// Elements of one phase grid.
    fn len(&self) -> usize {
        self.hq * self.wq
    }

    /// A zeroed buffer for all phases of one plane.
    fn buffer(&self) -> Vec<f32> {
        vec![0.0; self.s * self.s * self.len()]
    }
}

/// im2col at stride `s > 1` through stride phases: each big-grid plane is first split (one
/// strided pass, padding as zeros) into `s * s` phase grids,
/// `phase[ri][rj][yq][xq] = big[yq s + ri - pad][xq s + rj - pad]`, after which every kernel tap `(i, j) = (qi s + ri, qj s + rj)`
/// reads contiguous rows, `cols[(c, i, j)][oh][ow] = phase[ri][rj][oh + qi][ow + qj]`, instead
/// of `kh kw` strided gathers with bounds checks (measured: im2col was 15% of the fast
/// inference loop, on the decoders' stride-2 backward).
fn im2col_phased(g: &ConvGeom, big: &[f32], nb: usize, cols: &mut [f32]) {
    let phases = Phases::new(g);
    let mut ph = phases.buffer();
    let (phase_len, (p, plane)) = (phases.len(), (g.p_small(), g.h_big * g.w_big));
    let Phases { s, hp, wp, hq, wq } = phases;
    let n_cols = nb * p;
    for b in 0..nb {
        for c in 0..g.c_big {
            let src = &big[(b * g.c_big + c) * plane..(b * g.c_big + c + 1) * plane];
            // Phase by phase (no division per element): (y, x) + pad = (yq s + ry, xq s + rx).
            for ry in 0..s {
                for rx in 0..s {
                    let base = (ry * s + rx) * phase_len;
                    for yq in 0..hq {
                        let yp = yq * s + ry;
                        let dst = &mut ph[base + yq * wq..base + (yq + 1) * wq];
                        if yp < g.pad || yp >= hp || yp - g.pad >= g.h_big {
                            dst.fill(0.0);
                            continue;
                        }
                        let s_row = &src[(yp - g.pad) * g.w_big..(yp - g.pad + 1) * g.w_big];
                        for (xq, v) in dst.iter_mut().enumerate() {
                            let xp = xq * s + rx;
                            *v = if xp >= g.pad && xp < wp && xp - g.pad < g.w_big {
                                s_row[xp - g.pad]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
            for i in 0..g.kh {
                let (qi, ri) = (i / s, i % s);
                for j in 0..g.kw {
                    let (qj, rj) = (j / s, j % s);
                    let r = (c * g.kh + i) * g.kw + j;
                    let dst = &mut cols[r * n_cols + b * p..r * n_cols + (b + 1) * p];
                    let base = (ri * s + rj) * phase_len;
                    for oh in 0..g.h_small {
                        let from = base + (oh + qi) * wq + qj;
                        dst[oh * g.w_small..(oh + 1) * g.w_small]
                            .copy_from_slice(&ph[from..from + g.w_small]);
                    }
                }
            }
        }
    }
}

/// im2col tap by tap (stride 1: every read is a contiguous row already).
fn im2col_direct(g: &ConvGeom, big: &[f32], nb: usize, cols: &mut [f32]) {
    let p = g.p_small();
    let n_cols = nb * p;
    let plane = g.h_big * g.w_big;
    for c in 0..g.c_big {
        for i in 0..g.kh {
            let (oh_lo, oh_hi) = valid_range(g.h_small, g.h_big, g.stride, g.pad, i);
            for j in 0..g.kw {
                let (ow_lo, ow_hi) = valid_range(g.w_small, g.w_big, g.stride, g.pad, j);
                let r = (c * g.kh + i) * g.kw + j;
                let row = &mut cols[r * n_cols..(r + 1) * n_cols];
                for b in 0..nb {
                    let src = &big[(b * g.c_big + c) * plane..(b * g.c_big + c + 1) * plane];
                    let dst = &mut row[b * p..(b + 1) * p];
                    dst[..oh_lo * g.w_small].fill(0.0);
                    dst[oh_hi * g.w_small..].fill(0.0);
                    for oh in oh_lo..oh_hi {
                        let ih = oh * g.stride + i - g.pad;
                        let d = &mut dst[oh * g.w_small..(oh + 1) * g.w_small];
                        d[..ow_lo].fill(0.0);
                        d[ow_hi..].fill(0.0);
                        if ow_hi > ow_lo {
                            let s_row = &src[ih * g.w_big..(ih + 1) * g.w_big];
                            let iw0 = ow_lo * g.stride + j - g.pad;
                            if g.stride == 1 {
                                d[ow_lo..ow_hi].copy_from_slice(&s_row[iw0..iw0 + (ow_hi - ow_lo)]);
                            } else {
                                for (k, v) in d[ow_lo..ow_hi].iter_mut().enumerate() {
                                    *v = s_row[iw0 + k * g.stride];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// col2im: scatter-add `cols: (c_big * kh * kw, nb * p_small)` into `nb` big-grid images, each
/// plane first set to its bias (or zero). Every element of `big` is written.
fn col2im(g: &ConvGeom, cols: &[f32], nb: usize, big: &mut [f32], bias: Option<&[f32]>) {
    if g.stride > 1 {
        col2im_phased(g, cols, nb, big, bias);
    } else {
        col2im_direct(g, cols, nb, big, bias);
    }
}

/// col2im at stride `s > 1` through stride phases (the transpose of [`im2col_phased`]): every
/// tap `(i, j) = (qi s + ri, qj s + rj)` adds its `(h_small, w_small)` block into phase grid
/// `(ri, rj)` at offset `(qi, qj)` with contiguous row adds, and one strided pass then
/// interleaves the phases into the plane, adding the bias (measured: the tap-by-tap scatter
/// with strided adds was a quarter of the fast inference loop, in the decoders' stride-2
/// transposed convolutions). Each output element is the bias plus its taps' sum in tap order.
fn col2im_phased(g: &ConvGeom, cols: &[f32], nb: usize, big: &mut [f32], bias: Option<&[f32]>) {
    let phases = Phases::new(g);
    let mut ph = phases.buffer();
    let (phase_len, (p, plane)) = (phases.len(), (g.p_small(), g.h_big * g.w_big));
    let Phases { s, hp, wp, wq, .. } = phases;
    let n_cols = nb * p;
    for b in 0..nb {
        for c in 0..g.c_big {
            ph.fill(0.0);
            for i in 0..g.kh {
                let (qi, ri) = (i / s, i % s);
                for j in 0..g.kw {
                    let (qj, rj) = (j / s, j % s);
                    let r = (c * g.kh + i) * g.kw + j;
                    let src = &cols[r * n_cols + b * p..r * n_cols + (b + 1) * p];
                    let base = (ri * s + rj) * phase_len;
                    for oh in 0..g.h_small {
                        let to = base + (oh + qi) * wq + qj;
                        let d = &mut ph[to..to + g.w_small];
                        let v = &src[oh * g.w_small..(oh + 1) * g.w_small];
                        d.iter_mut().zip(v).for_each(|(d, v)| *d += *v);
                    }
                }
            }
            let b0 = bias.map_or(0.0, |bs| bs[c]);
            let dst = &mut big[(b * g.c_big + c) * plane..(b * g.c_big + c + 1) * plane];
            for y in 0..g.h_big {
                let yp = y + g.pad;
                let row = &mut dst[y * g.w_big..(y + 1) * g.w_big];
                if yp >= hp {
                    row.fill(b0);
                    continue;
                }
                let (yq, ry) = (yp / s, yp % s);
                row.fill(b0);
                // Phase by phase (no division per element): x + pad = xq s + rx.
                for rx in 0..s {
                    let from = (ry * s + rx) * phase_len + yq * wq;
                    for (xq, v) in ph[from..from + wq].iter().enumerate() {
                        let xp = xq * s + rx;
                        if xp >= g.pad && xp < wp && xp - g.pad < g.w_big {
                            row[xp - g.pad] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// col2im tap by tap (stride 1: every add is a contiguous row already).
fn col2im_direct(g: &ConvGeom, cols: &[f32], nb: usize, big: &mut [f32], bias: Option<&[f32]>) {
    let p = g.p_small();
    let n_cols = nb * p;
    let plane = g.h_big * g.w_big;
    for b in 0..nb {
        for c in 0..g.c_big {
            let dst = &mut big[(b * g.c_big + c) * plane..(b * g.c_big + c + 1) * plane];
            dst.fill(bias.map_or(0.0, |bs| bs[c]));
            for i in 0..g.kh {
                let (oh_lo, oh_hi) = valid_range(g.h_small, g.h_big, g.stride, g.pad, i);
                for j in 0..g.kw {
                    let (ow_lo, ow_hi) = valid_range(g.w_small, g.w_big, g.stride, g.pad, j);
                    if ow_hi <= ow_lo {
                        continue;
                    }
                    let r = (c * g.kh + i) * g.kw + j;
                    let src = &cols[r * n_cols + b * p..r * n_cols + (b + 1) * p];
                    for oh in oh_lo..oh_hi {
                        let ih = oh * g.stride + i - g.pad;
                        let s = &src[oh * g.w_small + ow_lo..oh * g.w_small + ow_hi];
                        let iw0 = ow_lo * g.stride + j - g.pad;
                        let d_row = &mut dst[ih * g.w_big..(ih + 1) * g.w_big];
                        if g.stride == 1 {
                            for (d, v) in d_row[iw0..iw0 + s.len()].iter_mut().zip(s) {
                                *d += *v;
                            }
                        } else {
                            for (k, v) in s.iter().enumerate() {
                                d_row[iw0 + k * g.stride] += *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst: (m, n) = lhs · rhs` (overwritten), all row-major with the given row strides; `lhs_t` /
/// `rhs_t` read the stored matrix transposed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // (cs, rs): column and row strides of each operand as the GEMM reads it.
    let (lhs_cs, lhs_rs) = if lhs_t {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (rhs_cs, rhs_rs) = if rhs_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: the asserts above bound every index the strides can reach: lhs is m*k, rhs is
    // k*n and dst is m*n elements, each laid out densely (row-major or its transpose).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Splits the batch into chunks and says how each GEMM should be parallelised.
fn plan(g: &ConvGeom) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads();
    let chunk = g.chunk_images(threads);
    let n_chunks = g.n.div_ceil(chunk.max(1));
    if n_chunks >= threads || threads == 1 {
        (chunk, Parallelism::None)
    } else {
        (chunk, Parallelism::Rayon(threads))
    }
}

/// `conv2d` forward in our geometry: `small = W · im2col(big) + bias`, with `w: (c_small, c_big,
/// kh, kw)`, `big: (n, c_big, h_big, w_big)`, result `(n, c_small, h_small, w_small)`.
pub(crate) fn small_from_big(
    g: &ConvGeom,
    big: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = out_buffer(g.n * g.small_len());
    small_from_big_into(g, big, w, bias, &mut out);
    out
}

/// [`small_from_big`] into `out` (`n * small_len` floats, every one overwritten): for loops
/// that keep their buffers across calls.
pub(crate) fn small_from_big_into(
    g: &ConvGeom,
    big: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    debug_assert!(g.is_nonempty());
    debug_assert_eq!(out.len(), g.n * g.small_len());
    if g.n == 0 {
        return;
    }
    if g.is_full_cover() {
        full_cover_small_from_big(g, big, w, bias, out);
        return;
    }
    if g.is_pointwise() {
        pointwise(g, big, w, false, g.c_big, g.c_small, bias, out);
        return;
    }
    let (chunk, par) = plan(g);
    let p = g.p_small();
    let k = g.k_cols();
    let run = |(big_c, out_c): (&[f32], &mut [f32])| {
        let nb = out_c.len() / g.small_len();
        let n_cols = nb * p;
        with_scratch((k + g.c_small) * n_cols, |scratch| {
            let (cols, tmp) = scratch.split_at_mut(k * n_cols);
            im2col(g, big_c, nb, cols);
            sgemm(g.c_small, n_cols, k, tmp, w, false, cols, false, par);
            // (c_small, nb * p) -> (nb, c_small, p), adding the bias.
            for b in 0..nb {
                for c in 0..g.c_small {
                    let src = &tmp[c * n_cols + b * p..c * n_cols + (b + 1) * p];
                    let dst = &mut out_c[(b * g.c_small + c) * p..(b * g.c_small + c + 1) * p];
                    match bias {
                        Some(bs) => {
                            for (d, s) in dst.iter_mut().zip(src) {
                                *d = *s + bs[c];
                            }
                        }
                        None => dst.copy_from_slice(src),
                    }
                }
            }
        });
    };
    let big_chunk = chunk * g.big_len();
    let out_chunk = chunk * g.small_len();
    if matches!(par, Parallelism::None) {
        big.par_chunks(big_chunk)
            .zip(out.par_chunks_mut(out_chunk))
            .for_each(run);
    } else {
        big.chunks(big_chunk)
            .zip(out.chunks_mut(out_chunk))
            .for_each(run);
    }
}

/// `conv_transpose2d` forward in our geometry: `big = col2im(Wᵀ · small) + bias`, with `w:
/// (c_small, c_big, kh, kw)`, `small: (n, c_small, h_small, w_small)`, result `(n, c_big, h_big,
/// w_big)`.
///
/// A sub-pixel alternative (one im2col of the *small* grid and one GEMM per stride phase, each
/// output written once) was measured 1.3-3x slower on the decoders of Table 9: their channel
/// count halves at every layer, so the small grid's im2col is `c_small / c_big` times larger
/// than the `cols` matrix this version scatters.
pub(crate) fn big_from_small(
    g: &ConvGeom,
    small: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = out_buffer(g.n * g.big_len());
    big_from_small_into(g, small, w, bias, &mut out);
    out
}

/// [`big_from_small`] into `out` (`n * big_len` floats, every one overwritten).
pub(crate) fn big_from_small_into(
    g: &ConvGeom,
    small: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    debug_assert!(g.is_nonempty());
    debug_assert_eq!(out.len(), g.n * g.big_len());
    if g.n == 0 {
        return;
    }
    if g.is_full_cover() {
        full_cover_big_from_small(g, small, w, bias, out);
        return;
    }
    if g.is_pointwise() {
        pointwise(g, small, w, true, g.c_small, g.c_big, bias, out);
        return;
    }
    let (chunk, par) = plan(g);
    let p = g.p_small();
    let k = g.k_cols();
    let run = |(small_c, out_c): (&[f32], &mut [f32])| {
        let nb = out_c.len() / g.big_len();
        let n_cols = nb * p;
        // (nb, c_small, p) -> (c_small, nb * p): the batch joins the GEMM's N.
        with_scratch((g.c_small + k) * n_cols, |scratch| {
            let (xs, cols) = scratch.split_at_mut(g.c_small * n_cols);
            for b in 0..nb {
                for c in 0..g.c_small {
                    xs[c * n_cols + b * p..c * n_cols + (b + 1) * p].copy_from_slice(
                        &small_c[(b * g.c_small + c) * p..(b * g.c_small + c + 1) * p],
                    );
                }
            }
            sgemm(k, n_cols, g.c_small, cols, w, true, xs, false, par);
            col2im(g, cols, nb, out_c, bias);
        });
    };
    let small_chunk = chunk * g.small_len();
    let out_chunk = chunk * g.big_len();
    if matches!(par, Parallelism::None) {
        small
            .par_chunks(small_chunk)
            .zip(out.par_chunks_mut(out_chunk))
            .for_each(run);
    } else {
        small
            .chunks(small_chunk)
            .zip(out.chunks_mut(out_chunk))
            .for_each(run);
    }
}

/// Weight gradient shared by both ops: `gw: (c_small, c_big, kh, kw) = Σ_b small_b ·
/// im2col(big_b)ᵀ`. For conv2d `big = x`, `small = dL/dy`; for conv_transpose2d `big = dL/dy`,
/// `small = x`.
pub(crate) fn weight_grad(g: &ConvGeom, big: &[f32], small: &[f32]) -> Vec<f32> {
    debug_assert!(g.is_nonempty());
    let k = g.k_cols();
    let len = g.c_small * k;
    if g.n == 0 {
        return vec![0.0; len];
    }
    if g.is_full_cover() {
        // gw (c_small, k) = smallᵀ (c_small, n) · big (n, k): one GEMM reducing over the batch.
        let mut gw = out_buffer(len);
        sgemm(
            g.c_small,
            k,
            g.n,
            &mut gw,
            small,
            true,
            big,
            false,
            gemm_parallelism(),
        );
        return gw;
    }
    if g.is_pointwise() {
        return pointwise_weight_grad(g, big, small);
    }
    let (chunk, par) = plan(g);
    let p = g.p_small();
    let run = |(big_c, small_c): (&[f32], &[f32])| -> Vec<f32> {
        let nb = small_c.len() / g.small_len();
        let n_cols = nb * p;
        let mut gw = out_buffer(len);
        with_scratch((k + g.c_small) * n_cols, |scratch| {
            let (cols, ys) = scratch.split_at_mut(k * n_cols);
            im2col(g, big_c, nb, cols);
            for b in 0..nb {
                for c in 0..g.c_small {
                    ys[c * n_cols + b * p..c * n_cols + (b + 1) * p].copy_from_slice(
                        &small_c[(b * g.c_small + c) * p..(b * g.c_small + c + 1) * p],
                    );
                }
            }
            sgemm(g.c_small, k, n_cols, &mut gw, ys, false, cols, true, par);
        });
        gw
    };
    let add = |mut a: Vec<f32>, b: Vec<f32>| {
        for (x, y) in a.iter_mut().zip(&b) {
            *x += *y;
        }
        a
    };
    let big_chunk = chunk * g.big_len();
    let small_chunk = chunk * g.small_len();
    // Partial sums are added in chunk order, never in the order threads finish: rayon's
    // `reduce_with` builds its tree from the work-stealing splits, which vary from run to run,
    // and float addition is not associative, so training would not be bit-reproducible.
    let partial: Option<Vec<f32>> = if matches!(par, Parallelism::None) {
        let parts: Vec<Vec<f32>> = big
            .par_chunks(big_chunk)
            .zip(small.par_chunks(small_chunk))
            .map(run)
            .collect();
        parts.into_iter().reduce(add)
    } else {
        big.chunks(big_chunk)
            .zip(small.chunks(small_chunk))
            .map(run)
            .reduce(add)
    };
    partial.unwrap_or_else(|| vec![0.0; len])
}

/// Parallelism of one GEMM that has the whole machine to itself.
fn gemm_parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// Rows per parallel task when `n` independent rows (images) are split over the threads.
fn rows_per_task(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// [`small_from_big`] for a full-cover geometry ([`ConvGeom::is_full_cover`]): `out (n,
/// c_small) = big (n, k) · Wᵀ + bias`, the batch split over the threads.
fn full_cover_small_from_big(
    g: &ConvGeom,
    big: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = g.k_cols();
    let rows = rows_per_task(g.n);
    big.par_chunks(rows * k)
        .zip(out.par_chunks_mut(rows * g.c_small))
        .for_each(|(big_c, out_c)| {
            let nb = out_c.len() / g.c_small;
            sgemm(
                nb,
                g.c_small,
                k,
                out_c,
                big_c,
                false,
                w,
                true,
                Parallelism::None,
            );
            if let Some(bs) = bias {
                for row in out_c.chunks_mut(g.c_small) {
                    for (d, b) in row.iter_mut().zip(bs) {
                        *d += *b;
                    }
                }
            }
        });
}

/// [`big_from_small`] for a full-cover geometry: `out (n, k) = small (n, c_small) · W + bias`
/// (the bias of channel `c` on its `kh * kw` outputs), the batch split over the threads.
fn full_cover_big_from_small(
    g: &ConvGeom,
    small: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = g.k_cols();
    let plane = g.kh * g.kw;
    let rows = rows_per_task(g.n);
    small
        .par_chunks(rows * g.c_small)
        .zip(out.par_chunks_mut(rows * k))
        .for_each(|(small_c, out_c)| {
            let nb = small_c.len() / g.c_small;
            sgemm(
                nb,
                k,
                g.c_small,
                out_c,
                small_c,
                false,
                w,
                false,
                Parallelism::None,
            );
            if let Some(bs) = bias {
                for row in out_c.chunks_mut(k) {
                    for (pl, b) in row.chunks_mut(plane).zip(bs) {
                        pl.iter_mut().for_each(|d| *d += *b);
                    }
                }
            }
        });
}

/// Pointwise geometry ([`ConvGeom::is_pointwise`]), either direction: per image, `out_b (c_to,
/// p) = M · in_b (c_from, p) + bias` with `M = W (c_small, c_big)` read as is (`w_t = false`,
/// big -> small) or transposed (`w_t = true`, small -> big). Images in parallel.
#[allow(clippy::too_many_arguments)]
fn pointwise(
    g: &ConvGeom,
    input: &[f32],
    w: &[f32],
    w_t: bool,
    c_from: usize,
    c_to: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let p = g.p_small();
    let rows = rows_per_task(g.n);
    input
        .par_chunks(rows * c_from * p)
        .zip(out.par_chunks_mut(rows * c_to * p))
        .for_each(|(in_c, out_c)| {
            for (x, y) in in_c.chunks(c_from * p).zip(out_c.chunks_mut(c_to * p)) {
                sgemm(c_to, p, c_from, y, w, w_t, x, false, Parallelism::None);
                if let Some(bs) = bias {
                    for (pl, b) in y.chunks_mut(p).zip(bs) {
                        pl.iter_mut().for_each(|d| *d += *b);
                    }
                }
            }
        });
}

/// [`weight_grad`] for a pointwise geometry: `gw[s, b] = Σ_images <small_img[s], big_img[b]>`
/// over the `p` pixels of each plane. At Table 9's channel counts (16 x 3 at most) the per-image
/// product is a handful of dot products, which a GEMM call per image would spend its time
/// setting up: plain dot products (eight f32 lanes, each plane's sum added in f64), images split
/// over the threads.
fn pointwise_weight_grad(g: &ConvGeom, big: &[f32], small: &[f32]) -> Vec<f32> {
    let p = g.p_small();
    let len = g.c_small * g.c_big;
    let rows = rows_per_task(g.n);
    // Partials in task order, added in that order (see `weight_grad`): deterministic.
    let parts: Vec<Vec<f64>> = big
        .par_chunks(rows * g.big_len())
        .zip(small.par_chunks(rows * g.small_len()))
        .map(|(big_c, small_c)| {
            let mut acc = vec![0.0f64; len];
            for (x, y) in big_c.chunks(g.big_len()).zip(small_c.chunks(g.small_len())) {
                for (s, ys) in y.chunks(p).enumerate() {
                    for (b, xs) in x.chunks(p).enumerate() {
                        acc[s * g.c_big + b] += dot(ys, xs) as f64;
                    }
                }
            }
            acc
        })
        .collect();
    let acc = parts
        .into_iter()
        .reduce(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += *y);
            a
        })
        .unwrap_or_else(|| vec![0.0; len]);
    acc.into_iter().map(|v| v as f32).collect()
}

/// `Σ a_i b_i` with eight independent accumulators, so that the loop vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Bias gradient: per-channel sum of `dy: (n, c, p)` over batch and pixels, accumulated in f64.
pub(crate) fn channel_sum(dy: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = 0.0f64;
            for b in 0..n {
                let s = &dy[(b * c + ch) * p..(b * c + ch + 1) * p];
                acc += s.iter().map(|&v| v as f64).sum::<f64>();
            }
            acc as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for small in 0..6 {
            for big in 1..9 {
                for stride in 1..4 {
                    for pad in 0..3 {
                        for tap in 0..5 {
                            let (lo, hi) = valid_range(small, big, stride, pad, tap);
                            let want: Vec<usize> = (0..small)
                                .filter(|&o| {
                                    let pos = (o * stride + tap) as isize - pad as isize;
                                    pos >= 0 && (pos as usize) < big
                                })
                                .collect();
                            let got: Vec<usize> = (lo..hi).collect();
                            assert_eq!(
                                got, want,
                                "small {small} big {big} s {stride} p {pad} t {tap}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn chunks_respect_budget_and_threads() {
        let g = ConvGeom {
            n: 1000,
            c_big: 32,
            h_big: 11,
            w_big: 11,
            c_small: 32,
            h_small: 4,
            w_small: 4,
            kh: 5,
            kw: 5,
            stride: 2,
            pad: 0,
        };
        let c = g.chunk_images(2);
        assert!(c >= 1 && c * g.k_cols() * g.p_small() <= cols_budget());
        let g1 = ConvGeom { n: 3, ..g };
        assert_eq!(g1.chunk_images(2), 2);
        assert_eq!(g1.chunk_images(1), 3);
    }
}
