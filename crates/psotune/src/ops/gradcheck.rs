//! Finite-difference gradient checks in f64, shared by the op and model tests.

use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic pseudo-random f64 tensor (tests must not depend on candle's
/// unseeded CPU RNG).
pub fn det_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Compare candle's backward of `f` (a scalar-valued function of `inputs`)
/// with central differences, on every element of every input. Returns the
/// worst relative error.
pub fn check<F>(inputs: &[Tensor], f: F) -> Result<f64>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(DType::F64)?)).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = f(&ts)?;
    let grads = loss.backward()?;
    let eps = 1e-6;
    let mut worst = 0f64;
    for (i, v) in vars.iter().enumerate() {
        let analytic: Vec<f64> = match grads.get(v) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; v.elem_count()],
        };
        let base: Vec<f64> = v.as_tensor().flatten_all()?.to_vec1()?;
        for j in 0..base.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut d = base.clone();
                d[j] += delta;
                let mut args = ts.clone();
                args[i] = Tensor::from_vec(d, v.shape(), &Device::Cpu)?;
                f(&args)?.to_scalar::<f64>()
            };
            let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            let err = (numeric - analytic[j]).abs() / (numeric.abs().max(analytic[j].abs()).max(1e-3));
            worst = worst.max(err);
        }
    }
    Ok(worst)
}

/// A fixed random projection to a scalar, so every output element gets a
/// distinct gradient (a plain sum hides errors that cancel).
pub fn project(y: &Tensor, seed: u64) -> Result<Tensor> {
    let w = det_tensor(y.dims(), seed).to_dtype(y.dtype())?;
    (y * w)?.sum_all()
}
