//! The three thin matrix products of attention on small heads, register
//! tiled for the shapes a UNet has (head widths of 16-64, a thousand keys).
//!
//! With a head width of 16 a `gemm` call is packing and edge handling more
//! than arithmetic: the score product reduces over 16 values, and the
//! products with the probabilities write 16 columns. These loops keep an
//! R x G tile of [`Lanes`] sums in registers over a runtime reduction, so
//! every loaded value feeds several fused multiply-adds. Head widths are
//! padded to [`LANES`] and key counts to [`KEY_BLOCK`] by the caller
//! (packed copies, zeros past the end), so there are no column tails.

use std::marker::PhantomData;

use super::lanes::{Lanes, WIDTH};
use super::real::Real;

/// The vector chunk of a padded head width.
pub const LANES: usize = WIDTH;
/// Keys per score tile (two vectors); padded key counts are multiples of it.
pub const KEY_BLOCK: usize = 2 * WIDTH;

/// `n` rounded up to a multiple of `to`.
pub fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Row stride for `cols` keys (a multiple of [`KEY_BLOCK`]): one vector
/// more, because rows 4 KiB apart (1024 keys) fall in one L1 cache set and
/// the 16 rows a score tile reads then evict each other (measured: the
/// score product ran at half the speed of the same loop on padded rows).
pub fn key_stride(cols: usize) -> usize {
    cols + LANES
}

/// s[i][j] = sum_{c < depth} a[i lda + c] bt[c ldb + j] for i < rows and
/// j < cols (a multiple of [`KEY_BLOCK`]); `s` has row stride `lds`.
/// Tiles of 8 rows x 2 vectors where the lane type keeps 16 sums, of
/// `V::ACC` rows x 1 vector otherwise (see [`Lanes::ACC`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn scores<T: Real, V: Lanes<T>>(s: &mut [T], lds: usize, a: &[T], lda: usize, rows: usize, depth: usize, bt: &[T], ldb: usize, cols: usize) {
    let mut x = ScoreArgs::<T, V> { s, lds, a, lda, depth, bt, ldb, cols, lanes: PhantomData };
    if V::ACC >= 16 {
        tile_lines::<_, 8, 2>(&mut x, rows, 0);
    } else if V::ACC >= 6 {
        tile_lines::<_, 6, 1>(&mut x, rows, 0);
    } else {
        tile_lines::<_, 3, 1>(&mut x, rows, 0);
    }
}

/// The operands of [`scores`].
struct ScoreArgs<'a, T, V> {
    s: &'a mut [T],
    lds: usize,
    a: &'a [T],
    lda: usize,
    depth: usize,
    bt: &'a [T],
    ldb: usize,
    cols: usize,
    lanes: PhantomData<V>,
}

impl<T: Real, V: Lanes<T>> ColumnTiles for ScoreArgs<'_, T, V> {
    /// Rows i0..i0 + R of [`scores`] over every key, KB vectors of keys at
    /// a time (the rows' operands stay put while the keys stream by; `c0`
    /// is always 0).
    #[inline(always)]
    fn tile<const R: usize, const KB: usize>(&mut self, i0: usize, _c0: usize) {
        let (depth, ldb, lds) = (self.depth, self.ldb, self.lds);
        // Explicit loops, not `array::from_fn`: its closure is not inlined into
        // the SIMD builds (see `load_group`).
        let mut arows: [&[T]; R] = [&[]; R];
        for (r, row) in arows.iter_mut().enumerate() {
            *row = &self.a[(i0 + r) * self.lda..][..depth];
        }
        for j0 in (0..self.cols).step_by(KB * LANES) {
            let mut acc = [[V::zero(); KB]; R];
            for c in 0..depth {
                let b: [V; KB] = load_group(&self.bt[c * ldb + j0..][..KB * LANES]);
                for (accr, ar) in acc.iter_mut().zip(&arows) {
                    // SAFETY: c < depth == ar.len(). The checked index costs a
                    // compare and branch per FMA pair: the row slices are spilled
                    // to the stack and their lengths reloaded.
                    let v = V::splat(unsafe { *ar.get_unchecked(c) });
                    for (o, &bv) in accr.iter_mut().zip(&b) {
                        *o = o.mul_add(v, bv);
                    }
                }
            }
            store_tile(&acc, self.s, lds, i0, j0);
        }
    }
}

/// out[i][..w] = sum_{j < n} p[i ldp + j] y[j w..][..w] for i < rows:
/// rows of `p` weighting the rows of `y` (both of padded width `w`, a
/// multiple of [`LANES`]; `out` has row stride `w`).
#[inline(always)]
pub fn weighted_rows<T: Real, V: Lanes<T>>(out: &mut [T], p: &[T], ldp: usize, rows: usize, n: usize, y: &[T], w: usize) {
    tile_columns::<T, V, _>(&mut Weighted::<T, V> { out, p, ldp, n, y, w, lanes: PhantomData }, rows, w);
}

/// out[j][..w] += sum_{i < rows} p[i ldp + j] x[i w..][..w] for j < n:
/// the transposed product `p^T x` added into `out` (row stride `w`, a
/// multiple of [`LANES`]).
#[inline(always)]
pub fn add_transposed<T: Real, V: Lanes<T>>(out: &mut [T], p: &[T], ldp: usize, rows: usize, n: usize, x: &[T], w: usize) {
    tile_columns::<T, V, _>(&mut Transposed::<T, V> { out, p, ldp, rows, x, w, lanes: PhantomData }, n, w);
}

/// A product whose output (`lines` lines of `w` columns) is computed in
/// register tiles of R lines by G vectors of columns.
trait ColumnTiles {
    /// Lines line0..line0 + R, columns c0..c0 + G LANES.
    fn tile<const R: usize, const G: usize>(&mut self, line0: usize, c0: usize);
}

/// Every tile of a [`ColumnTiles`] product. Where the lane type keeps 16
/// sums: columns in groups of 4, 2, then 1 vectors (4, 6 and 8 lines per
/// tile). Otherwise one vector of columns by `V::ACC` lines: the loaded
/// vectors of a wider group would not fit beside the sums.
#[inline(always)]
fn tile_columns<T: Real, V: Lanes<T>, K: ColumnTiles>(k: &mut K, lines: usize, w: usize) {
    let mut c0 = 0;
    while c0 < w {
        let left = (w - c0) / LANES;
        c0 += if V::ACC < 6 {
            tile_lines::<K, 3, 1>(k, lines, c0)
        } else if V::ACC < 16 {
            tile_lines::<K, 6, 1>(k, lines, c0)
        } else if left >= 4 {
            tile_lines::<K, 4, 4>(k, lines, c0)
        } else if left >= 2 {
            tile_lines::<K, 6, 2>(k, lines, c0)
        } else {
            tile_lines::<K, 8, 1>(k, lines, c0)
        };
    }
}

/// The tiles of one column group, leftover lines in tiles of 4, 2 and 1;
/// returns the group's width.
#[inline(always)]
fn tile_lines<K: ColumnTiles, const R: usize, const G: usize>(k: &mut K, lines: usize, c0: usize) -> usize {
    let mut i = 0;
    while i + R <= lines {
        k.tile::<R, G>(i, c0);
        i += R;
    }
    if R > 4 && i + 4 <= lines {
        k.tile::<4, G>(i, c0);
        i += 4;
    }
    if R > 2 && i + 2 <= lines {
        k.tile::<2, G>(i, c0);
        i += 2;
    }
    while i < lines {
        k.tile::<1, G>(i, c0);
        i += 1;
    }
    G * LANES
}

/// G vectors from the start of `s`. Explicit loops, not `array::from_fn`:
/// its closure was not inlined into the AVX-512 build, so every load
/// became a call.
#[inline(always)]
fn load_group<T: Real, V: Lanes<T>, const G: usize>(s: &[T]) -> [V; G] {
    let mut v = [V::zero(); G];
    for (g, x) in v.iter_mut().enumerate() {
        *x = V::load(&s[g * LANES..]);
    }
    v
}

/// Stores a tile's sums at lines line0.., columns c0.. of `out` (stride `w`).
#[inline(always)]
fn store_tile<T: Real, V: Lanes<T>, const R: usize, const G: usize>(acc: &[[V; G]; R], out: &mut [T], w: usize, line0: usize, c0: usize) {
    for (r, accr) in acc.iter().enumerate() {
        let dst = &mut out[(line0 + r) * w + c0..][..G * LANES];
        for (g, a) in accr.iter().enumerate() {
            a.store(&mut dst[g * LANES..]);
        }
    }
}

/// [`weighted_rows`]: lines are output rows, the reduction runs over keys.
struct Weighted<'a, T, V> {
    out: &'a mut [T],
    p: &'a [T],
    ldp: usize,
    n: usize,
    y: &'a [T],
    w: usize,
    lanes: PhantomData<V>,
}

impl<T: Real, V: Lanes<T>> ColumnTiles for Weighted<'_, T, V> {
    #[inline(always)]
    fn tile<const R: usize, const G: usize>(&mut self, i0: usize, c0: usize) {
        let (n, w) = (self.n, self.w);
        let mut prows: [&[T]; R] = [&[]; R];
        for (r, row) in prows.iter_mut().enumerate() {
            *row = &self.p[(i0 + r) * self.ldp..][..n];
        }
        let mut acc = [[V::zero(); G]; R];
        for j in 0..n {
            let yv: [V; G] = load_group(&self.y[j * w + c0..][..G * LANES]);
            for (accr, pr) in acc.iter_mut().zip(&prows) {
                // SAFETY: j < n == pr.len() (as in `score_tile`).
                let x = V::splat(unsafe { *pr.get_unchecked(j) });
                for (o, &v) in accr.iter_mut().zip(&yv) {
                    *o = o.mul_add(x, v);
                }
            }
        }
        store_tile(&acc, self.out, w, i0, c0);
    }
}

/// [`add_transposed`]: lines are keys, the reduction runs over rows.
struct Transposed<'a, T, V> {
    out: &'a mut [T],
    p: &'a [T],
    ldp: usize,
    rows: usize,
    x: &'a [T],
    w: usize,
    lanes: PhantomData<V>,
}

impl<T: Real, V: Lanes<T>> ColumnTiles for Transposed<'_, T, V> {
    #[inline(always)]
    fn tile<const R: usize, const G: usize>(&mut self, j0: usize, c0: usize) {
        let w = self.w;
        let mut acc = [[V::zero(); G]; R];
        for (r, accr) in acc.iter_mut().enumerate() {
            *accr = load_group(&self.out[(j0 + r) * w + c0..]);
        }
        for i in 0..self.rows {
            let xv: [V; G] = load_group(&self.x[i * w + c0..][..G * LANES]);
            let pr = &self.p[i * self.ldp + j0..][..R];
            for (accr, &s) in acc.iter_mut().zip(pr) {
                let s = V::splat(s);
                for (o, &v) in accr.iter_mut().zip(&xv) {
                    *o = o.mul_add(s, v);
                }
            }
        }
        store_tile(&acc, self.out, w, j0, c0);
    }
}

/// The largest of row[..m] (m >= 1).
#[inline(always)]
pub fn row_max<T: Real, V: Lanes<T>>(row: &[T], m: usize) -> T {
    let full = m / LANES * LANES;
    let mut max = row[0];
    if full > 0 {
        let mut v = V::load(row);
        for c in row[..full].chunks_exact(LANES).skip(1) {
            v = v.max(V::load(c));
        }
        max = v.hmax();
    }
    for &x in &row[full..m] {
        max = if x > max { x } else { max };
    }
    max
}

/// In place: row[j] <- exp(row[j] scale - shift) for j < m, zeros after;
/// returns the sum of the m exponentials. `row` is a whole padded row (a
/// multiple of [`KEY_BLOCK`], so the vector holding m is in bounds). Two vectors per step: the polynomial is a chain of
/// dependent FMAs, and two chains fill the pipes.
#[inline(always)]
pub fn exp_row<T: Real, V: Lanes<T>>(row: &mut [T], m: usize, scale: T, shift: T) -> T {
    let (sv, minus_shift) = (V::splat(scale), V::splat(T::zero() - shift));
    let full = m / LANES * LANES;
    let mut sums = [V::zero(); 2];
    let mut c = 0;
    while c + 2 * LANES <= full {
        let e0 = minus_shift.mul_add(V::load(&row[c..]), sv).exp();
        let e1 = minus_shift.mul_add(V::load(&row[c + LANES..]), sv).exp();
        e0.store(&mut row[c..]);
        e1.store(&mut row[c + LANES..]);
        sums[0] = sums[0].add(e0);
        sums[1] = sums[1].add(e1);
        c += 2 * LANES;
    }
    if c < full {
        let e = minus_shift.mul_add(V::load(&row[c..]), sv).exp();
        e.store(&mut row[c..]);
        sums[0] = sums[0].add(e);
    }
    let mut sum = sums[0].add(sums[1]).sum();
    if full < m {
        minus_shift.mul_add(V::load(&row[full..]), sv).exp().store(&mut row[full..]);
        sum = row[full..m].iter().fold(sum, |a, &b| a + b);
    }
    row[m..].fill(T::zero());
    sum
}

/// The softmax's backward on one row: ds <- p (ds - sum(p ds)) scale, for
/// rows padded to a multiple of [`KEY_BLOCK`] (zeros past the end of `p`
/// keep the padding zero).
#[inline(always)]
pub fn softmax_grad_row<T: Real, V: Lanes<T>>(ds: &mut [T], p: &[T], scale: T) {
    let mut dots = [V::zero(); 2];
    for (d, pv) in ds.chunks_exact(KEY_BLOCK).zip(p.chunks_exact(KEY_BLOCK)) {
        dots[0] = dots[0].mul_add(V::load(d), V::load(pv));
        dots[1] = dots[1].mul_add(V::load(&d[LANES..]), V::load(&pv[LANES..]));
    }
    let minus_dot = V::splat(T::zero() - (dots[0].sum() + dots[1].sum()));
    let scale = V::splat(scale);
    for (d, pv) in ds.chunks_exact_mut(LANES).zip(p.chunks_exact(LANES)) {
        // (ds - dot) p scale = (p scale) ds + (p scale)(-dot)
        let ps = V::load(pv).mul(scale);
        ps.mul(minus_dot).mul_add(ps, V::load(d)).store(d);
    }
}

/// Rows `0..rows` of columns `off..off + width` of `src` (row stride `ld`)
/// as a `rows x wp` matrix, zeros past `width`.
pub fn pack_rows<T: Real>(src: &[T], ld: usize, off: usize, rows: usize, width: usize, wp: usize) -> Vec<T> {
    let mut out = vec![T::zero(); rows * wp];
    for (o, s) in out.chunks_exact_mut(wp).zip(src.chunks(ld)) {
        o[..width].copy_from_slice(&s[off..off + width]);
    }
    out
}

/// The transpose of [`pack_rows`]' matrix without padding the width:
/// `width x np`, element (c, j) = src[j ld + off + c], zeros for j >= rows.
pub fn pack_transposed<T: Real>(src: &[T], ld: usize, off: usize, rows: usize, width: usize, np: usize) -> Vec<T> {
    let mut out = vec![T::zero(); width * np];
    for (j, s) in src.chunks(ld).take(rows).enumerate() {
        for (c, &v) in s[off..off + width].iter().enumerate() {
            out[c * np + j] = v;
        }
    }
    out
}

/// Writes (or adds, when `add`) the first `width` columns of the packed
/// `rows x wp` matrix into columns `off..off + width` of `dst`.
pub fn unpack_rows<T: Real>(dst: &mut [T], ld: usize, off: usize, src: &[T], width: usize, wp: usize, add: bool) {
    for (d, s) in dst.chunks_mut(ld).zip(src.chunks_exact(wp)) {
        let (d, s) = (&mut d[off..off + width], &s[..width]);
        if add {
            for (a, &b) in d.iter_mut().zip(s) {
                *a += b;
            }
        } else {
            d.copy_from_slice(s);
        }
    }
}

#[cfg(test)]
#[path = "attn_tiles_tests.rs"]
mod tests;
