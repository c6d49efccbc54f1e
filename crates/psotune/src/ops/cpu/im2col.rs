//! im2col / col2im for NCHW convolutions (groups 1, dilation 1), over a run
//! of output rows so that the column buffer of a large image stays bounded.

use candle_core::WithDType;
use rayon::prelude::*;

use super::simd::Simd;

/// Shapes of one 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    pub fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image.
    pub fn n(&self) -> usize {
        self.ho * self.wo
    }

    pub fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// A 1x1 kernel with stride 1 and no padding reads the input as its own
    /// column matrix: no im2col needed.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Input coordinate read by output coordinate `o` at kernel offset `i`,
    /// if inside the image of size `len`.
    fn src(&self, o: usize, i: usize, len: usize) -> Option<usize> {
        (o * self.stride + i).checked_sub(self.pad).filter(|&v| v < len)
    }

    /// Output columns `[lo, hi)` whose input column at kernel offset `j` is
    /// inside the image (the rest read zero padding).
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let s = self.stride;
        // ox * s + j >= pad  and  ox * s + j < w + pad
        let lo = self.pad.saturating_sub(j).div_ceil(s);
        let hi = (self.w + self.pad).saturating_sub(j).div_ceil(s).min(self.wo);
        (lo.min(hi), hi)
    }
}

/// Fills `col` ([k, rows * wo] with row stride `ld` >= rows * wo,
/// row-major) with the windows of output rows `[r0, r0 + rows)` of one
/// image `x` ([cin, h, w]); a larger `ld` packs several images side by side.
/// `parallel` spreads the input channels over rayon's threads (for a batch
/// too small to give each thread its own image). Runs in `simd`'s build.
#[allow(clippy::too_many_arguments)]
pub fn im2col<T: WithDType>(simd: Simd, g: &ConvGeom, x: &[T], r0: usize, rows: usize, col: &mut [T], ld: usize, parallel: bool) {
    let per_channel = g.kh * g.kw * ld;
    if parallel && ld == rows * g.wo {
        col[..g.cin * per_channel]
            .par_chunks_mut(per_channel)
            .enumerate()
            .for_each(|(c, cc)| simd.vectorize(#[inline(always)] || im2col_channel(g, x, r0, rows, cc, ld, c)));
    } else {
        simd.vectorize(#[inline(always)] || {
            for c in 0..g.cin {
                im2col_channel(g, x, r0, rows, &mut col[c * per_channel..], ld, c);
            }
        });
    }
}

/// [`im2col`]'s rows of input channel `c` (a named `inline(always)`
/// function, not a closure, so that it is compiled into each SIMD build).
#[inline(always)]
fn im2col_channel<T: WithDType>(g: &ConvGeom, x: &[T], r0: usize, rows: usize, colc: &mut [T], ld: usize, c: usize) {
    let nc = rows * g.wo;
    let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
    for i in 0..g.kh {
        for j in 0..g.kw {
            let row = &mut colc[(i * g.kw + j) * ld..][..nc];
            let (lo, hi) = g.valid_cols(j);
            for (t, oy) in (r0..r0 + rows).enumerate() {
                let out = &mut row[t * g.wo..(t + 1) * g.wo];
                let Some(iy) = g.src(oy, i, g.h) else {
                    out.fill(T::zero());
                    continue;
                };
                let xr = &xc[iy * g.w..(iy + 1) * g.w];
                out[..lo].fill(T::zero());
                out[hi..].fill(T::zero());
                if hi > lo {
                    // First input column read: lo * s + j - pad >= 0 by construction of lo.
                    let first = lo * g.stride + j - g.pad;
                    if g.stride == 1 {
                        out[lo..hi].copy_from_slice(&xr[first..first + hi - lo]);
                    } else {
                        for (o, v) in out[lo..hi].iter_mut().zip(xr[first..].iter().step_by(g.stride)) {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds the column gradients `col` ([k, rows * wo], row stride `ld`) of
/// output rows `[r0, r0 + rows)` back onto the image gradient `gx`
/// ([cin, h, w]). `parallel` as for [`im2col`]: each thread owns whole
/// channels of `gx`.
#[allow(clippy::too_many_arguments)]
pub fn col2im_add<T: WithDType>(simd: Simd, g: &ConvGeom, col: &[T], r0: usize, rows: usize, ld: usize, gx: &mut [T], parallel: bool) {
    let plane = g.h * g.w;
    if plane == 0 {
        return;
    }
    let gx = &mut gx[..g.cin * plane];
    if parallel {
        gx.par_chunks_mut(plane).enumerate().for_each(|(c, gc)| simd.vectorize(#[inline(always)] || col2im_channel(g, col, r0, rows, ld, gc, c)));
    } else {
        simd.vectorize(#[inline(always)] || {
            for (c, gc) in gx.chunks_mut(plane).enumerate() {
                col2im_channel(g, col, r0, rows, ld, gc, c);
            }
        });
    }
}

/// [`col2im_add`] onto input channel `c`'s plane `gc`.
#[inline(always)]
fn col2im_channel<T: WithDType>(g: &ConvGeom, col: &[T], r0: usize, rows: usize, ld: usize, gc: &mut [T], c: usize) {
    let nc = rows * g.wo;
    for i in 0..g.kh {
        for j in 0..g.kw {
            let row = &col[((c * g.kh + i) * g.kw + j) * ld..][..nc];
            let (lo, hi) = g.valid_cols(j);
            if hi <= lo {
                continue;
            }
            let first = lo * g.stride + j - g.pad;
            for (t, oy) in (r0..r0 + rows).enumerate() {
                let Some(iy) = g.src(oy, i, g.h) else { continue };
                let src = &row[t * g.wo + lo..t * g.wo + hi];
                let dst = &mut gc[iy * g.w..(iy + 1) * g.w];
                if g.stride == 1 {
                    for (d, v) in dst[first..first + hi - lo].iter_mut().zip(src) {
                        *d += *v;
                    }
                } else {
                    for (d, v) in dst[first..].iter_mut().step_by(g.stride).zip(src) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// dst ([cols, rows], row-major) = the transpose of src ([rows, cols]), in
/// blocks of 8 source rows (rows a power of two apart share an L1 set; 8
/// of them fit its ways) by 64 columns.
pub fn transpose<T: WithDType>(simd: Simd, src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const BR: usize = 8;
    const BC: usize = 64;
    simd.vectorize(#[inline(always)] || {
        for i0 in (0..rows).step_by(BR) {
            let ir = BR.min(rows - i0);
            for j0 in (0..cols).step_by(BC) {
                let jc = BC.min(cols - j0);
                for j in j0..j0 + jc {
                    let d = &mut dst[j * rows + i0..][..ir];
                    for (i, dv) in d.iter_mut().enumerate() {
                        *dv = src[(i0 + i) * cols + j];
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_swaps_rows_and_columns_at_any_size() {
        // Sizes below, at and across the 8 x 64 blocks.
        for (rows, cols) in [(1, 1), (3, 5), (8, 64), (17, 130), (9, 1)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            for path in crate::ops::cpu::simd::Path::supported() {
                dst.fill(f32::NAN);
                super::transpose(crate::ops::cpu::simd::Simd::new(path).unwrap(), &src, rows, cols, &mut dst);
                for i in 0..rows {
                    for j in 0..cols {
                        assert_eq!(dst[j * rows + i], src[i * cols + j], "{path} {rows}x{cols} at ({i}, {j})");
                    }
                }
            }
        }
    }
}
