//! Fixed inputs shared by the sampler tests, and their reference harness.
//!
//! The reference numbers in the sampler tests come from diffusers 0.42.1 via a
//! throwaway script (/tmp/mathref/ref.py), which builds these inputs as
//!
//! ```python
//! def pattern(n, a, b, s):
//!     return torch.tensor([math.sin(a * k + b) * s for k in range(n)],
//!                         dtype=torch.float64).to(torch.float32)
//! SHAPE = (2, 1, 2, 2)
//! X = pattern(8, 0.7, 0.3, 2.0).reshape(SHAPE)       # sample
//! OUT = pattern(8, 0.45, 1.3707963267948966, 1.0).reshape(SHAPE)  # cos(0.45k - 0.2)
//! NOISE = pattern(8, 1.3, 0.5, 1.5).reshape(SHAPE)
//! SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
//!           beta_schedule="scaled_linear")
//! # scheduler modules draw their noise through randn_tensor: inject NOISE
//! scheduling_euler_ancestral_discrete.randn_tensor = lambda *a, **k: NOISE.clone()
//! scheduling_lcm.randn_tensor = lambda *a, **k: NOISE.clone()
//! ```
//!
//! and prints `step(OUT, t, X)` for a chosen `_step_index`.

use candle_core::{Device, Tensor};

pub const X: [f64; 8] = [
    0.5910404324531555,
    1.6829419136047363,
    1.9833296537399292,
    1.350926399230957,
    0.08316132426261902,
    -1.2237157821655273,
    -1.9550602436065674,
    -1.7669093608856201,
];
pub const OUT: [f64; 8] = [
    0.9800665974617004,
    0.9689124226570129,
    0.7648422122001648,
    0.4084874391555786,
    -0.029199521988630295,
    -0.4610726833343506,
    -0.8011435866355896,
    -0.9817022085189819,
];
pub const NOISE: [f64; 8] = [
    0.7191383242607117,
    1.4607714414596558,
    0.062370993196964264,
    -1.4274030923843384,
    -0.8260282874107361,
    0.9854798913002014,
    1.3532577753067017,
    -0.2614901661872864,
];

/// The constants are f32 values written out as f64; the tensors are f32.
fn tensor(v: &[f64; 8], dev: &Device) -> Tensor {
    Tensor::from_slice(&v.map(|x| x as f32), (2, 1, 2, 2), dev).unwrap()
}
pub fn inputs() -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    (tensor(&X, &dev), tensor(&OUT, &dev), tensor(&NOISE, &dev))
}

/// |got - want| <= tol * max(1, |want|): diffusers computes in f32 with f32
/// schedule arrays, we use f64 coefficients, so agreement is relative.
pub fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
    let got = got.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * w.abs().max(1.0), "element {i}: got {g}, want {w}");
    }
}

/// Relative closeness of f64 scalars.
pub fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-300)
}
