//! Micro-benchmark for issue 3, f32 on the CPU, on the emoji UNet's shapes
//! (batch 64, 8x8 = 64 tokens, 64 channels, 32 text tokens): psotune's fused
//! kernels against the same math composed from candle tensor ops (as the
//! model computed it before), forward + backward.
//!
//!     RAYON_NUM_THREADS=2 CARGO_PROFILE_DEV_OPT_LEVEL=3 \
//!         cargo run -p psotune --example kernel_bench
//!
//! Prints the fastest of a few runs, in ms. Numerics are tested in the ops'
//! unit tests.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use psotune::ops;

fn min_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn var(shape: &[usize]) -> Result<Var> {
    Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)
}

/// fw + bw of `f` on `inputs`, through a fixed random projection.
fn fwbw(inputs: &[&Var], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let w = Tensor::ones(y.dims(), DType::F32, y.device())?;
    (y * w)?.sum_all()?.backward()?;
    Ok(())
}

fn layer_norm_composed(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let c = x.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    c.broadcast_div(&(var + 1e-5)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)
}

fn geglu_composed(p: &Tensor) -> Result<Tensor> {
    let n = p.dim(D::Minus1)? / 2;
    p.narrow(D::Minus1, 0, n)? * ops::gelu_erf(&p.narrow(D::Minus1, n, n)?)?
}

fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let d = inner / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        let l = t.dim(1)?;
        t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?.reshape((b * heads, l, d))
    };
    let o = ops::attention(&split(q)?, &split(k)?, &split(v)?, 1.0 / (d as f64).sqrt())?;
    o.reshape((b, heads, n, d))?.transpose(1, 2)?.reshape((b, n, inner))
}

fn main() -> Result<()> {
    psotune::threads::init();
    println!("rayon threads: {}", rayon::current_num_threads());
    println!("{:<40} {:>12} {:>12} {:>8}", "fw+bw (emoji shapes)", "composed_ms", "fused_ms", "speedup");
    let row = |name: &str, a: f64, b: f64| println!("{name:<40} {a:>12.2} {b:>12.2} {:>7.2}x", a / b);

    let (x, w, b) = (var(&[64, 64, 64])?, var(&[64])?, var(&[64])?);
    let c = min_ms(10, || fwbw(&[&x, &w, &b], &|t| layer_norm_composed(&t[0], &t[1], &t[2])))?;
    let f = min_ms(10, || fwbw(&[&x, &w, &b], &|t| ops::layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5)))?;
    row("layer norm [64,64,64]", c, f);

    let p = var(&[64, 64, 512])?;
    let c = min_ms(10, || fwbw(&[&p], &|t| geglu_composed(&t[0])))?;
    let f = min_ms(10, || fwbw(&[&p], &|t| ops::geglu(&t[0])))?;
    row("geglu [64,64,512]", c, f);

    let (y, bias) = (var(&[64, 64, 256])?, var(&[256])?);
    let c = min_ms(10, || fwbw(&[&y, &bias], &|t| t[0].broadcast_add(&t[1])))?;
    let f = min_ms(10, || fwbw(&[&y, &bias], &|t| ops::bias_add_last(&t[0], &t[1])))?;
    row("bias add [64,64,256]", c, f);

    for (name, heads, m) in [("self-attention 64 tok, 2 heads x 32", 2, 64), ("cross-attention 64x32 tok, 2 heads", 2, 32)] {
        let (q, k, v) = (var(&[64, 64, 64])?, var(&[64, m, 64])?, var(&[64, m, 64])?);
        let c = min_ms(10, || fwbw(&[&q, &k, &v], &|t| attention_composed(&t[0], &t[1], &t[2], heads)))?;
        let f = min_ms(10, || fwbw(&[&q, &k, &v], &|t| ops::attention_heads(&t[0], &t[1], &t[2], heads, 1.0 / 32f64.sqrt())))?;
        row(name, c, f);
    }
    Ok(())
}
