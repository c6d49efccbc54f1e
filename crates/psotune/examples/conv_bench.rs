//! Micro-benchmark for issue 3, f32 on the CPU: candle's conv2d + bias
//! against `psotune::ops::conv2d_bias` (forward, and forward + backward to
//! input, weight and bias), the composed group norm against the fused one,
//! and a ResnetBlock2D body built from each.
//!
//!     RAYON_NUM_THREADS=2 CARGO_PROFILE_DEV_OPT_LEVEL=3 \
//!         cargo run -p psotune --example conv_bench
//!
//! Prints the fastest of a few runs per shape, in ms. Timings only; the
//! numerics are tested in `ops::conv`'s unit tests.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};

/// (name, batch, cin, cout, size, kernel, stride, padding)
type Case = (&'static str, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    ("small  16x4x32x32 -> 32 k3", 16, 4, 32, 32, 3, 1, 1),
    ("small  16x32x32x32 -> 32 k3", 16, 32, 32, 32, 3, 1, 1),
    ("small  16x32x32x32 -> 32 k3 s2", 16, 32, 32, 32, 3, 2, 1),
    ("small  16x32x16x16 -> 64 k3", 16, 32, 64, 16, 3, 1, 1),
    ("small  16x64x16x16 -> 64 k3", 16, 64, 64, 16, 3, 1, 1),
    ("small  16x64x8x8 -> 64 k3", 16, 64, 64, 8, 3, 1, 1),
    ("small  16x32x16x16 -> 64 k1", 16, 32, 64, 16, 1, 1, 0),
    ("issue  8x32x32x32 -> 32 k3", 8, 32, 32, 32, 3, 1, 1),
    ("turbo  1x320x32x32 -> 320 k3", 1, 320, 320, 32, 3, 1, 1),
];

/// Fastest of `reps` runs after a warm-up: on a CPU shared with other work
/// the minimum is the stablest estimate of the code's own cost.
fn min_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f().map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    Ok(t.into_iter().fold(f64::INFINITY, f64::min))
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    println!("rayon threads: {}", rayon_threads());
    println!("{:<32} {:>10} {:>10} {:>12} {:>12} {:>7}", "shape", "candle_fw", "ours_fw", "candle_fwbw", "ours_fwbw", "speedup");
    let cases = if std::env::var("CONV_BENCH_GN_ONLY").is_ok() { &[][..] } else { CASES };
    for &(name, b, cin, cout, size, k, s, p) in cases {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, cin, size, size), &dev)?)?;
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev)? * 0.1)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(cout, candle_core::DType::F32, &dev)?)?;
        let candle = |bwd: bool| -> Result<()> {
            let y = x.as_tensor().conv2d(&w, p, s, 1, 1)?.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
            if bwd {
                y.sum_all()?.backward()?;
            }
            Ok(())
        };
        let ours = |bwd: bool| -> Result<()> {
            let y = psotune::ops::conv2d_bias(&x, &w, Some(&bias), s, p)?;
            if bwd {
                y.sum_all()?.backward()?;
            }
            Ok(())
        };
        let reps = if b * cin * size * size > 1 << 18 { 5 } else { 9 };
        let cf = min_ms(reps, || candle(false))?;
        let of = min_ms(reps, || ours(false))?;
        let cb = min_ms(reps, || candle(true))?;
        let ob = min_ms(reps, || ours(true))?;
        println!("{name:<32} {cf:>10.2} {of:>10.2} {cb:>12.2} {ob:>12.2} {:>6.1}x", cb / ob);
        if std::env::var("CONV_BENCH_SPLIT").is_ok() {
            // Our backward split: input gradient only (frozen weight), weight gradient only.
            let (xt, wt) = (x.as_tensor().detach(), w.as_tensor().detach());
            let gx = min_ms(reps, || psotune::ops::conv2d(&x, &wt, s, p)?.sum_all()?.backward().map(|_| ()))?;
            let gw = min_ms(reps, || psotune::ops::conv2d(&xt, &w, s, p)?.sum_all()?.backward().map(|_| ()))?;
            println!("{:<32} fw+dx {gx:.2} ms, fw+dw {gw:.2} ms", "");
        }
    }
    group_norm_bench()?;
    block_bench()
}

/// A ResnetBlock2D body, silu(gn(x)) -> conv3 + bias -> silu(gn) -> conv3 + bias + x,
/// forward + backward with all weights trained: candle's conv2d and the
/// composed group norm ("before") against the fast ops ("after").
fn block_bench() -> Result<()> {
    use psotune::ops::{conv2d_bias, group_norm, group_norm_silu, silu};
    println!("{:<32} {:>10} {:>10} {:>7}", "resnet block fw+bw", "before", "after", "speedup");
    for &(b, c, size) in &[(16usize, 32usize, 32usize), (16, 64, 16), (16, 64, 8), (8, 32, 32)] {
        let dev = Device::Cpu;
        let var = |t: Tensor| Var::from_tensor(&t);
        let x = var(Tensor::randn(0f32, 1.0, (b, c, size, size), &dev)?)?;
        let w1 = var((Tensor::randn(0f32, 1.0, (c, c, 3, 3), &dev)? * 0.05)?)?;
        let w2 = var((Tensor::randn(0f32, 1.0, (c, c, 3, 3), &dev)? * 0.05)?)?;
        let (g1, b1) = (var(Tensor::ones(c, candle_core::DType::F32, &dev)?)?, var(Tensor::zeros(c, candle_core::DType::F32, &dev)?)?);
        let (g2, b2) = (var(Tensor::ones(c, candle_core::DType::F32, &dev)?)?, var(Tensor::zeros(c, candle_core::DType::F32, &dev)?)?);
        let (c1, c2) = (var(Tensor::zeros(c, candle_core::DType::F32, &dev)?)?, var(Tensor::zeros(c, candle_core::DType::F32, &dev)?)?);
        let add_bias = |y: Tensor, b: &Var| y.broadcast_add(&b.reshape((1, c, 1, 1))?);
        let before = || -> Result<()> {
            let h = add_bias(silu(&group_norm(&x, 32, &g1, &b1, 1e-5)?)?.conv2d(&w1, 1, 1, 1, 1)?, &c1)?;
            let h = add_bias(silu(&group_norm(&h, 32, &g2, &b2, 1e-5)?)?.conv2d(&w2, 1, 1, 1, 1)?, &c2)?;
            (h + x.as_tensor())?.sqr()?.sum_all()?.backward().map(|_| ())
        };
        let after = || -> Result<()> {
            let h = conv2d_bias(&group_norm_silu(&x, 32, &g1, &b1, 1e-5)?, &w1, Some(&c1), 1, 1)?;
            let h = conv2d_bias(&group_norm_silu(&h, 32, &g2, &b2, 1e-5)?, &w2, Some(&c2), 1, 1)?;
            (h + x.as_tensor())?.sqr()?.sum_all()?.backward().map(|_| ())
        };
        let (tb, ta) = (min_ms(5, before)?, min_ms(5, after)?);
        println!("{:<32} {tb:>10.2} {ta:>10.2} {:>6.1}x", format!("{b}x{c}x{size}x{size}"), tb / ta);
    }
    Ok(())
}

/// Composed `ops::group_norm` (+ `ops::silu`) against the fused op.
fn group_norm_bench() -> Result<()> {
    use psotune::ops::{group_norm, group_norm_fused, group_norm_silu, silu};
    println!("{:<32} {:>10} {:>10} {:>12} {:>12} {:>7}", "group norm (32 groups)", "composed", "fused", "comp_fwbw", "fused_fwbw", "speedup");
    for &(b, c, size) in &[(16usize, 32usize, 32usize), (16, 64, 16), (8, 32, 32), (1, 320, 32)] {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, size, size), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, c, &dev)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.1, c, &dev)?)?;
        for with_silu in [false, true] {
            let composed = |bwd: bool| -> Result<()> {
                let y = group_norm(&x, 32, &w, &bias, 1e-5)?;
                let y = if with_silu { silu(&y)? } else { y };
                if bwd {
                    y.sum_all()?.backward()?;
                }
                Ok(())
            };
            let fused = |bwd: bool| -> Result<()> {
                let y = if with_silu { group_norm_silu(&x, 32, &w, &bias, 1e-5)? } else { group_norm_fused(&x, 32, &w, &bias, 1e-5)? };
                if bwd {
                    y.sum_all()?.backward()?;
                }
                Ok(())
            };
            let (cf, ff) = (min_ms(9, || composed(false))?, min_ms(9, || fused(false))?);
            let (cb, fb) = (min_ms(9, || composed(true))?, min_ms(9, || fused(true))?);
            let name = format!("{b}x{c}x{size}x{size}{}", if with_silu { " +silu" } else { "" });
            println!("{name:<32} {cf:>10.2} {ff:>10.2} {cb:>12.2} {fb:>12.2} {:>6.1}x", cb / fb);
        }
    }
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
