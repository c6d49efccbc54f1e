use candle_core::{DType, Device, Module, Result, Tensor, Var};

use super::checkpoint;
use crate::nn::lora::{Lora, LoraSwitch};
use crate::nn::Linear;
use crate::ops::gradcheck::{check, det_tensor, project};

/// A small block with two inputs (one broadcast like a time embedding), a
/// nonlinearity and a residual: tanh(x W^T + b + e) + x.
fn block(lin: &Linear, x: &Tensor, e: &Tensor) -> Result<Tensor> {
    (lin.forward(x)?.broadcast_add(e)?.tanh()? + x)?.sqr()
}

fn vars(shapes: &[&[usize]], seed: u64) -> Vec<Var> {
    shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&det_tensor(s, seed + i as u64)).unwrap()).collect()
}

/// Finite differences through a checkpointed block: the gradients of both
/// inputs and of the weights the closure captures (found, not declared).
#[test]
fn checkpoint_gradients_match_finite_differences() {
    let x = det_tensor(&[2, 3, 4], 1);
    let e = det_tensor(&[1, 1, 4], 2);
    let w = det_tensor(&[4, 4], 3);
    let b = det_tensor(&[4], 4);
    let worst = check(&[x, e, w, b], |a| {
        let lin = Linear::new(a[2].clone(), Some(a[3].clone()));
        let y = checkpoint(&[&a[0], &a[1]], move |i| block(&lin, &i[0], &i[1]))?;
        project(&(y * 3.0)?, 5)
    })
    .unwrap();
    assert!(worst < 1e-6, "worst relative error {worst}");
}

/// Same ops in the same order: the gradients equal the plain ones, for
/// variables, a tracked input computed from one, and an untracked input
/// (which gets none). Up to rounding only: `x`'s two gradient contributions
/// (inside the block and outside) are summed in another order.
#[test]
fn checkpoint_gradients_equal_plain_gradients() {
    let v = vars(&[&[2, 3, 4], &[4, 4], &[4]], 10);
    let e = det_tensor(&[1, 1, 4], 20); // untracked
    let run = |ckpt: bool| {
        let x = (v[0].as_tensor() * 1.5).unwrap(); // tracked, not a variable
        let lin = Linear::new(v[1].as_tensor().clone(), Some(v[2].as_tensor().clone()));
        let y = if ckpt {
            let lin = lin.clone();
            checkpoint(&[&x, &e], move |i| block(&lin, &i[0], &i[1])).unwrap()
        } else {
            block(&lin, &x, &e).unwrap()
        };
        // A second use of the block input outside the block.
        let loss = (project(&y, 7).unwrap() + project(&x, 8).unwrap()).unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(&e).is_none());
        v.iter().map(|p| g.get(p).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()).collect::<Vec<_>>()
    };
    for (a, b) in run(true).iter().zip(&run(false)) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-14 * y.abs().max(1.0), "{x} vs {y}");
        }
    }
}

/// Two checkpointed blocks in a row, the second fed by the first; the
/// graph is backpropagated twice (each recomputes).
#[test]
fn chained_checkpoints_and_repeated_backward() {
    let v = vars(&[&[3, 4], &[4, 4], &[4, 4]], 30);
    let run = |ckpt: bool| {
        let l1 = Linear::new(v[1].as_tensor().clone(), None);
        let l2 = Linear::new(v[2].as_tensor().clone(), None);
        let f = |l: Linear| move |i: &[Tensor]| l.forward(&i[0])?.tanh();
        let x = v[0].as_tensor();
        let y = if ckpt {
            let h = checkpoint(&[x], f(l1)).unwrap();
            checkpoint(&[&h], f(l2)).unwrap()
        } else {
            f(l2)(&[f(l1)(std::slice::from_ref(x)).unwrap()]).unwrap()
        };
        let loss = project(&y, 9).unwrap();
        let a = loss.backward().unwrap();
        let b = loss.backward().unwrap();
        let flat = |g: &candle_core::backprop::GradStore| {
            v.iter().map(|p| g.get(p).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(flat(&a), flat(&b));
        flat(&a)
    };
    assert_eq!(run(true), run(false));
}

/// Without anything to differentiate the block is a plain call: no op, no
/// saved inputs.
#[test]
fn untracked_block_is_a_plain_call() {
    let x = det_tensor(&[2, 4], 1);
    let lin = Linear::new(det_tensor(&[4, 4], 2), None);
    let y = checkpoint(&[&x], move |i| lin.forward(&i[0])).unwrap();
    assert!(!y.track_op());
}

/// f32, the training dtype: checkpointed LoRA gradients equal the plain ones.
#[test]
fn lora_gradients_in_f32_equal_plain() {
    let dev = Device::Cpu;
    let switch = LoraSwitch::new();
    let a = Var::from_tensor(&det_tensor(&[2, 4], 40).to_dtype(DType::F32).unwrap()).unwrap();
    let b = Var::from_tensor(&det_tensor(&[4, 2], 41).to_dtype(DType::F32).unwrap()).unwrap();
    let mut lin = Linear::new(det_tensor(&[4, 4], 42).to_dtype(DType::F32).unwrap(), None);
    lin.lora = Some(Lora::new(a.clone(), b.clone(), 2.0, switch.clone()).unwrap());
    let x = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
    let e = Tensor::zeros((1, 4), DType::F32, &dev).unwrap();
    let run = |ckpt: bool| {
        let l = lin.clone();
        let y = if ckpt { checkpoint(&[&x, &e], move |i| block(&l, &i[0], &i[1])).unwrap() } else { block(&l, &x, &e).unwrap() };
        let g = project(&y, 3).unwrap().backward().unwrap();
        [&a, &b].map(|p| g.get(p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    assert_eq!(run(true), run(false));
}

/// The recomputation must see the model as the forward did: a LoRA switch
/// turned off in between is an error, not silently wrong gradients.
#[test]
fn lora_switched_off_before_backward_is_an_error() {
    let switch = LoraSwitch::new();
    let a = Var::from_tensor(&det_tensor(&[2, 4], 50)).unwrap();
    let b = Var::from_tensor(&det_tensor(&[4, 2], 51)).unwrap();
    let mut lin = Linear::new(det_tensor(&[4, 4], 52), None);
    lin.lora = Some(Lora::new(a, b, 2.0, switch.clone()).unwrap());
    let x = det_tensor(&[3, 4], 53);
    let y = checkpoint(&[&x], move |i| lin.forward(&i[0])).unwrap();
    let loss = project(&y, 4).unwrap();
    switch.set_enabled(false);
    let msg = loss.backward().unwrap_err().to_string();
    assert!(msg.contains("LoRA switch"), "{msg}");
}
