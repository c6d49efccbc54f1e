//! 2-D convolution with a fast CPU forward and backward.
//!
//! candle 0.11's CPU conv2d backward is the training bottleneck (issue 3):
//! its input gradient (`conv_transpose2d`) is a plain loop with no matrix
//! multiply, and its weight gradient is a convolution with the whole output
//! map as kernel. Here all three products are matrix multiplies around an
//! im2col buffer (the formulation of Caffe and PyTorch's `slow_conv2d`):
//!
//!   forward      y_b = W col(x_b)                 [Cout, K] x [K, N]
//!   input grad   gx_b = col2im(W^T gy_b)          [K, Cout] x [Cout, N]
//!   weight grad  gW = sum_b gy_b col(x_b)^T       [Cout, N] x [N, K]
//!
//! with K = Cin kh kw and N = Ho Wo. A 1x1 kernel with stride 1 and no
//! padding skips im2col: x_b is its own column matrix.
//!
//! The products call the `gemm` crate directly: candle's CPU matmul runs the
//! same kernels, but going through tensors would allocate one per image
//! chunk, and the direct call writes a strided window of y in place.
//!
//! Threads: with at least as many images as rayon threads each image runs
//! on one thread (small per-image products do not split well); otherwise
//! gemm splits each product. Weight gradients are summed per fixed group of
//! images and the partial sums added in order, so results do not depend on
//! scheduling.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::cpu::gemm::{matmul, Mat};
use super::cpu::im2col::{col2im_add, im2col, transpose, ConvGeom};
use super::cpu::simd::Simd;
use super::cpu::reduce::lane_sum;
use super::cpu::with_slice;

/// Column-buffer elements per image chunk (16 MiB in f32): a 128x128 latent
/// with 320 channels would otherwise need 190 MB per image.
const COL_CHUNK_ELEMS: usize = 1 << 22;

/// Images smaller than this many output positions are packed side by side
/// into one column matrix of up to this width, so that each product has
/// enough columns: the emoji UNet's 8x8 / 4x4 / 2x2 maps gave per-image
/// products 64, 16 and 4 columns wide, where gemm runs far below its peak.
const GROUP_COLS: usize = 512;

/// `torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)` for
/// x [B, Cin, H, W] and w [Cout, Cin, kh, kw] (groups 1, dilation 1, no
/// bias). f32 and f64 on the CPU use the kernels of this module, forward
/// and backward; other dtypes and devices use candle's conv2d.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_chunked(x, w, None, stride, padding, COL_CHUNK_ELEMS)
}

/// [`conv2d`] plus a per-channel `bias` [Cout] (`torch.nn.Conv2d`). The
/// bias is added inside the op: a separate broadcast add (and its backward,
/// a reduction over batch and positions) costs about half as much again as
/// the convolution itself on the small UNet's shapes.
pub fn conv2d_bias(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_chunked(x, w, bias, stride, padding, COL_CHUNK_ELEMS)
}

/// [`conv2d_bias`] with an explicit bound on column-buffer elements per chunk.
fn conv2d_chunked(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize, col_chunk: usize) -> Result<Tensor> {
    let g = geometry(x, w, stride, padding)?;
    if let Some(b) = bias {
        if b.dims() != [g.cout] {
            candle_core::bail!("conv2d: bias {:?} does not match {} output channels", b.dims(), g.cout);
        }
    }
    let dt = x.dtype();
    let fast = x.device().is_cpu() && w.dtype() == dt && bias.is_none_or(|b| b.dtype() == dt) && matches!(dt, DType::F32 | DType::F64);
    if !fast {
        let y = candle_conv2d(x, w, &g)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, g.cout, 1, 1))?),
            None => Ok(y),
        };
    }
    let op = Conv2dOp { g, col_chunk };
    match bias {
        Some(b) => x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        None => x.contiguous()?.apply_op2(&w.contiguous()?, op),
    }
}

fn geometry(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<ConvGeom> {
    let (batch, cin, h, wd) = x.dims4()?;
    let (cout, cin_w, kh, kw) = w.dims4()?;
    if cin != cin_w || stride == 0 {
        candle_core::bail!("conv2d: input {:?} and weight {:?} do not match (stride {stride})", x.dims(), w.dims());
    }
    let out = |n: usize, k: usize| (n + 2 * pad).checked_sub(k).map(|m| m / stride + 1);
    let (Some(ho), Some(wo)) = (out(h, kh), out(wd, kw)) else {
        candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {:?} (padding {pad})", x.dims());
    };
    Ok(ConvGeom { batch, cin, h, w: wd, cout, kh, kw, stride, pad, ho, wo })
}

/// candle's conv2d, for dtypes and devices without a kernel here.
fn candle_conv2d(x: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    let (p, s) = (g.pad, g.stride);
    // Rows (columns) at the end of the padded input that no window reads.
    let unread = |n: usize, k: usize| (n + 2 * p - k) % s;
    let (rh, rw) = (unread(g.h, g.kh), unread(g.w, g.kw));
    if rh == rw {
        return x.conv2d(w, p, s, 1, 1);
    }
    // candle 0.11's conv2d backward passes one output padding, computed
    // from the height, to conv_transpose2d for both spatial dims, and fails
    // with a shape mismatch when they differ (stride 2 on a latent with one
    // odd side). Padding explicitly so that no row or column goes unread
    // makes both zero; same output.
    let x = pad_exactly(&pad_exactly(x, 2, p, rh)?, 3, p, rw)?;
    x.conv2d(w, 0, s, 1, 1)
}

/// Zero-pads `dim` by `pad` on both sides, less the `unread` trailing entries
/// a strided kernel would not reach (padding first, then input).
fn pad_exactly(x: &Tensor, dim: usize, pad: usize, unread: usize) -> Result<Tensor> {
    if unread <= pad {
        x.pad_with_zeros(dim, pad, pad - unread)
    } else {
        x.narrow(dim, 0, x.dim(dim)? - (unread - pad))?.pad_with_zeros(dim, pad, 0)
    }
}

struct Conv2dOp {
    g: ConvGeom,
    col_chunk: usize,
}

fn slice_of<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("conv2d: expected a contiguous operand"),
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "psotune-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let shape = Shape::from((g.batch, g.cout, g.ho, g.wo));
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward(g, self.col_chunk, slice_of(s1, l1)?, slice_of(s2, l2)?, None)),
            DType::F64 => CpuStorage::F64(forward(g, self.col_chunk, slice_of(s1, l1)?, slice_of(s2, l2)?, None)),
            d => candle_core::bail!("conv2d: no CPU kernel for {d:?}"),
        };
        Ok((storage, shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(x, w, &gy),
            DType::F64 => self.bwd_typed::<f64>(x, w, &gy),
            d => candle_core::bail!("conv2d: no CPU kernel for {d:?}"),
        }
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "psotune-conv2d-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let shape = Shape::from((g.batch, g.cout, g.ho, g.wo));
        let storage = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward(g, self.col_chunk, slice_of(s1, l1)?, slice_of(s2, l2)?, Some(slice_of(s3, l3)?))),
            DType::F64 => CpuStorage::F64(forward(g, self.col_chunk, slice_of(s1, l1)?, slice_of(s2, l2)?, Some(slice_of(s3, l3)?))),
            d => candle_core::bail!("conv2d: no CPU kernel for {d:?}"),
        };
        Ok((storage, shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let ((gx, gw), gb) = match x.dtype() {
            DType::F32 => (self.bwd_typed::<f32>(x, w, &gy)?, self.bias_grad::<f32>(b, &gy)?),
            DType::F64 => (self.bwd_typed::<f64>(x, w, &gy)?, self.bias_grad::<f64>(b, &gy)?),
            d => candle_core::bail!("conv2d: no CPU kernel for {d:?}"),
        };
        Ok((gx, gw, gb))
    }
}

impl Conv2dOp {
    /// d bias_c = sum of gy over images and positions of channel c.
    fn bias_grad<T: WithDType>(&self, b: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        if !b.track_op() {
            return Ok(None);
        }
        let g = &self.g;
        let n = g.n();
        let sums = with_slice::<T, _>(gy, |gyd| {
            Ok((0..g.cout)
                .map(|c| T::from_f64((0..g.batch).map(|i| lane_sum(&gyd[(i * g.cout + c) * n..][..n], |v| v)).sum::<f64>()))
                .collect::<Vec<T>>())
        })?;
        Ok(Some(Tensor::from_vec(sums, b.shape(), b.device())?))
    }

    fn bwd_typed<T: WithDType>(&self, x: &Tensor, w: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = &self.g;
        let gx = if x.track_op() {
            let gx = with_slice::<T, _>(w, |wd| with_slice::<T, _>(gy, |gyd| Ok(input_grad(g, self.col_chunk, wd, gyd))))?;
            Some(Tensor::from_vec(gx, x.shape(), x.device())?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let gw = with_slice::<T, _>(x, |xd| with_slice::<T, _>(gy, |gyd| Ok(weight_grad(g, self.col_chunk, xd, gyd))))?;
            Some(Tensor::from_vec(gw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// How the work is split: `per_image` when images run on separate threads
/// (gemm then single-threaded), else gemm gets all `threads`.
struct Plan {
    /// Units (images, or groups of `group` images) run on separate threads.
    per_image: bool,
    threads: usize,
    /// Output rows per im2col chunk.
    rows: usize,
    /// Images per product (> 1 only for small images that fit one chunk).
    group: usize,
    /// The SIMD path of im2col / col2im / transpose, read where the plan is
    /// made (the thread that runs the op).
    simd: Simd,
}

impl Plan {
    fn new(g: &ConvGeom, col_chunk: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let rows = if g.is_pointwise() { g.ho } else { (col_chunk / (g.k() * g.wo).max(1)).clamp(1, g.ho.max(1)) };
        let n = g.n().max(1);
        let group = if rows == g.ho && n < GROUP_COLS {
            // Wide enough products, within the column bound, and still at
            // least one group per thread.
            let col_fit = col_chunk / (g.k() * n).max(1);
            (GROUP_COLS / n).min(col_fit).min(g.batch.div_ceil(threads)).max(1)
        } else {
            1
        };
        let per_image = g.batch.div_ceil(group) >= threads && threads > 1;
        Self { per_image, threads, rows, group, simd: Simd::active() }
    }

    fn gemm_threads(&self) -> usize {
        if self.per_image {
            1
        } else {
            self.threads
        }
    }

    /// (first row, row count) of each chunk of output rows.
    fn chunks(&self, ho: usize) -> impl Iterator<Item = (usize, usize)> {
        let step = self.rows.max(1);
        (0..ho).step_by(step).map(move |r| (r, step.min(ho - r)))
    }

    /// Runs `f(image index, image slice)` over the chunks of `out`, one per
    /// image, in parallel when the plan says so.
    fn each_image<T: Send>(&self, out: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
        if len == 0 {
            return;
        }
        if self.per_image {
            out.par_chunks_mut(len).enumerate().for_each(|(b, o)| f(b, o));
        } else {
            out.chunks_mut(len).enumerate().for_each(|(b, o)| f(b, o));
        }
    }
}

/// The products' starting value, [images, channels, n]: `bias[c]` in each
/// channel's row, or zeros. Written once (a zeroed buffer then filled with
/// the bias wrote the output twice).
fn start_value<T: WithDType>(bias: Option<&[T]>, images: usize, channels: usize, n: usize) -> Vec<T> {
    let Some(bias) = bias else {
        return vec![T::zero(); images * channels * n];
    };
    let mut y = Vec::with_capacity(images * channels * n);
    for _ in 0..images {
        for &v in &bias[..channels] {
            y.resize(y.len() + n, v);
        }
    }
    y
}

/// The convolution of all images, plus `bias` per output channel if given
/// (written first, then accumulated onto by the products).
fn forward<T: WithDType>(g: &ConvGeom, col_chunk: usize, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (k, n) = (g.k(), g.n());
    let plan = Plan::new(g, col_chunk);
    if plan.group > 1 {
        return forward_grouped(g, &plan, x, w, bias);
    }
    let mut y = start_value(bias, g.batch, g.cout, n);
    let wm = Mat::rows(w, g.cout, k, k);
    plan.each_image(&mut y, g.cout * n, |b, yb| {
        let xb = &x[b * g.in_len()..(b + 1) * g.in_len()];
        let acc = bias.is_some();
        if g.is_pointwise() {
            matmul(yb, n, wm, Mat::rows(xb, k, n, n), acc, plan.gemm_threads());
            return;
        }
        let mut col = vec![T::zero(); k * plan.rows * g.wo];
        for (r0, rows) in plan.chunks(g.ho) {
            let nc = rows * g.wo;
            im2col(plan.simd, g, xb, r0, rows, &mut col, nc, !plan.per_image);
            matmul(&mut yb[r0 * g.wo..], n, wm, Mat::rows(&col, k, nc, nc), acc, plan.gemm_threads());
        }
    });
    y
}

fn input_grad<T: WithDType>(g: &ConvGeom, col_chunk: usize, w: &[T], gy: &[T]) -> Vec<T> {
    let (k, n) = (g.k(), g.n());
    let plan = Plan::new(g, col_chunk);
    if plan.group > 1 {
        return input_grad_grouped(g, &plan, w, gy);
    }
    let mut gx = vec![T::zero(); g.batch * g.in_len()];
    let wt = Mat::transposed(w, k, g.cout, k);
    plan.each_image(&mut gx, g.in_len(), |b, gxb| {
        let gyb = &gy[b * g.cout * n..(b + 1) * g.cout * n];
        if g.is_pointwise() {
            matmul(gxb, n, wt, Mat::rows(gyb, g.cout, n, n), false, plan.gemm_threads());
            return;
        }
        let mut col = vec![T::zero(); k * plan.rows * g.wo];
        for (r0, rows) in plan.chunks(g.ho) {
            let nc = rows * g.wo;
            matmul(&mut col, nc, wt, Mat::rows(&gyb[r0 * g.wo..], g.cout, nc, n), false, plan.gemm_threads());
            col2im_add(plan.simd, g, &col, r0, rows, nc, gxb, !plan.per_image);
        }
    });
    gx
}

fn weight_grad<T: WithDType>(g: &ConvGeom, col_chunk: usize, x: &[T], gy: &[T]) -> Vec<T> {
    let (k, n) = (g.k(), g.n());
    let plan = Plan::new(g, col_chunk);
    // Adds the contributions of images `range` to `acc` ([Cout, K]).
    let add_images = |range: std::ops::Range<usize>, acc: &mut [T]| {
        if plan.group > 1 {
            add_weight_grad_grouped(g, &plan, x, gy, range, acc);
            return;
        }
        let mut col = if g.is_pointwise() { Vec::new() } else { vec![T::zero(); k * plan.rows * g.wo] };
        let mut col_t = vec![T::zero(); k * if g.is_pointwise() { n } else { plan.rows * g.wo }];
        for b in range {
            let xb = &x[b * g.in_len()..(b + 1) * g.in_len()];
            let gyb = &gy[b * g.cout * n..(b + 1) * g.cout * n];
            if g.is_pointwise() {
                transpose(plan.simd, xb, k, n, &mut col_t);
                matmul(acc, k, Mat::rows(gyb, g.cout, n, n), Mat::rows(&col_t, n, k, k), true, plan.gemm_threads());
                continue;
            }
            for (r0, rows) in plan.chunks(g.ho) {
                let nc = rows * g.wo;
                im2col(plan.simd, g, xb, r0, rows, &mut col, nc, !plan.per_image);
                // The product reduces over positions, the contiguous axis
                // of both operands; gemm's packing of such an operand is a
                // strided gather (10% of a training step). One blocked
                // transpose first makes the large operand contiguous.
                transpose(plan.simd, &col[..k * nc], k, nc, &mut col_t);
                let gym = Mat::rows(&gyb[r0 * g.wo..], g.cout, nc, n);
                matmul(acc, k, gym, Mat::rows(&col_t, nc, k, k), true, plan.gemm_threads());
            }
        }
    };
    let len = g.cout * k;
    if !plan.per_image {
        let mut acc = vec![T::zero(); len];
        add_images(0..g.batch, &mut acc);
        return acc;
    }
    // One partial sum per fixed group of images, added in order.
    let groups = plan.threads.min(g.batch);
    let per = g.batch.div_ceil(groups);
    let partials: Vec<Vec<T>> = (0..groups)
        .into_par_iter()
        .map(|i| {
            let mut acc = vec![T::zero(); len];
            add_images(i * per..((i + 1) * per).min(g.batch), &mut acc);
            acc
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut acc = parts.next().unwrap_or_else(|| vec![T::zero(); len]);
    for p in parts {
        for (a, v) in acc.iter_mut().zip(&p) {
            *a += *v;
        }
    }
    acc
}

/// Packs `imgs` images of `rows` x `n` (consecutive in `src`) side by side
/// into `dst` ([rows, imgs * n]).
fn gather<T: WithDType>(src: &[T], imgs: usize, rows: usize, n: usize, dst: &mut [T]) {
    let cols = imgs * n;
    for i in 0..imgs {
        for r in 0..rows {
            dst[r * cols + i * n..][..n].copy_from_slice(&src[(i * rows + r) * n..][..n]);
        }
    }
}

/// The inverse of [`gather`].
fn scatter<T: WithDType>(src: &[T], imgs: usize, rows: usize, n: usize, dst: &mut [T]) {
    let cols = imgs * n;
    for i in 0..imgs {
        for r in 0..rows {
            dst[(i * rows + r) * n..][..n].copy_from_slice(&src[r * cols + i * n..][..n]);
        }
    }
}

/// The column matrix [K, imgs * n] of images `b0..b0 + imgs`, side by side.
fn group_columns<T: WithDType>(g: &ConvGeom, simd: Simd, x: &[T], b0: usize, imgs: usize) -> Vec<T> {
    let (k, n) = (g.k(), g.n());
    let cols = imgs * n;
    let mut col = vec![T::zero(); k * cols];
    let xs = &x[b0 * g.in_len()..(b0 + imgs) * g.in_len()];
    if g.is_pointwise() {
        gather(xs, imgs, g.cin, n, &mut col);
    } else {
        for i in 0..imgs {
            im2col(simd, g, &xs[i * g.in_len()..][..g.in_len()], 0, g.ho, &mut col[i * n..], cols, false);
        }
    }
    col
}

/// [`forward`] for small images, `plan.group` per product: y = W col, then
/// scattered back to NCHW.
fn forward_grouped<T: WithDType>(g: &ConvGeom, plan: &Plan, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (k, n) = (g.k(), g.n());
    let mut y = vec![T::zero(); g.batch * g.cout * n];
    let wm = Mat::rows(w, g.cout, k, k);
    let unit = g.cout * n;
    plan.each_image(&mut y, plan.group * unit, |u, yu| {
        let imgs = yu.len() / unit;
        let cols = imgs * n;
        let col = group_columns(g, plan.simd, x, u * plan.group, imgs);
        let mut out = start_value(bias, 1, g.cout, cols);
        matmul(&mut out, cols, wm, Mat::rows(&col, k, cols, cols), bias.is_some(), plan.gemm_threads());
        scatter(&out, imgs, g.cout, n, yu);
    });
    y
}

/// [`input_grad`] for small images: col = W^T gy over a group, then col2im
/// (or a scatter, for pointwise kernels) per image.
fn input_grad_grouped<T: WithDType>(g: &ConvGeom, plan: &Plan, w: &[T], gy: &[T]) -> Vec<T> {
    let (k, n) = (g.k(), g.n());
    let mut gx = vec![T::zero(); g.batch * g.in_len()];
    let wt = Mat::transposed(w, k, g.cout, k);
    plan.each_image(&mut gx, plan.group * g.in_len(), |u, gxu| {
        let imgs = gxu.len() / g.in_len().max(1);
        let (b0, cols) = (u * plan.group, imgs * n);
        let mut gyg = vec![T::zero(); g.cout * cols];
        gather(&gy[b0 * g.cout * n..(b0 + imgs) * g.cout * n], imgs, g.cout, n, &mut gyg);
        let mut col = vec![T::zero(); k * cols];
        matmul(&mut col, cols, wt, Mat::rows(&gyg, g.cout, cols, cols), false, plan.gemm_threads());
        if g.is_pointwise() {
            scatter(&col, imgs, g.cin, n, gxu);
            return;
        }
        for i in 0..imgs {
            col2im_add(plan.simd, g, &col[i * n..], 0, g.ho, cols, &mut gxu[i * g.in_len()..][..g.in_len()], false);
        }
    });
    gx
}

/// Adds the weight gradient of images `range` to `acc` ([Cout, K]),
/// `plan.group` images per product: acc += gy col^T.
fn add_weight_grad_grouped<T: WithDType>(g: &ConvGeom, plan: &Plan, x: &[T], gy: &[T], range: std::ops::Range<usize>, acc: &mut [T]) {
    let (k, n) = (g.k(), g.n());
    for b0 in range.clone().step_by(plan.group) {
        let imgs = plan.group.min(range.end - b0);
        let cols = imgs * n;
        let col = group_columns(g, plan.simd, x, b0, imgs);
        let mut gyg = vec![T::zero(); g.cout * cols];
        gather(&gy[b0 * g.cout * n..(b0 + imgs) * g.cout * n], imgs, g.cout, n, &mut gyg);
        let mut col_t = vec![T::zero(); k * cols];
        transpose(plan.simd, &col, k, cols, &mut col_t);
        matmul(acc, k, Mat::rows(&gyg, g.cout, cols, cols), Mat::rows(&col_t, cols, k, k), true, plan.gemm_threads());
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
