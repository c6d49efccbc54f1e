use candle_core::{Device, Tensor};
use rand::SeedableRng;

use super::*;
use crate::ops::gradcheck::{check, det_tensor};

/// [2, 1, 1, 2] from two samples of two values each.
fn t(a: [f64; 2], b: [f64; 2]) -> Tensor {
    Tensor::new(&[[[a]], [[b]]], &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// eps = 0, so every mse is the mean of the squared prediction:
/// target: [1, 2], target frozen: [0, 1]  -> d(target) = [1, 1]
/// reference: [1, 0], reference frozen: [1, 4] -> d(reference) = [0, -4]
/// d(target) - d(reference) = [1, 5].
fn case() -> [Tensor; 5] {
    let eps = t([0.0; 2], [0.0; 2]);
    [eps, t([1.0, 1.0], [2.0, 0.0]), t([0.0, 0.0], [1.0, 1.0]), t([1.0, -1.0], [0.0, 0.0]), t([1.0, 1.0], [2.0, 2.0])]
}

#[test]
fn pso_matches_hand_computed_numbers() {
    let [eps, tg, tf, rf_theta, rf] = case();
    assert_eq!(per_sample_mse(&eps, &tg).unwrap().to_vec1::<f64>().unwrap(), [1.0, 2.0]);
    // beta 1: logits -[1, 5]; loss = (softplus(1) + softplus(5)) / 2.
    let out = pso(&eps, &tg, &tf, &rf_theta, &rf, 1.0).unwrap();
    assert!((scalar(&out.loss) - 3.159_988_518_003_670_4).abs() < 1e-12);
    assert_eq!(out.acc, Some(0.0));
    assert_eq!(out.margin, Some(-3.0));
    // Swapping target and reference flips every sign: both pairs are "right".
    let out = pso(&eps, &rf_theta, &rf, &tg, &tf, 0.5).unwrap();
    // logits 0.5 * [1, 5]: (softplus(-0.5) + softplus(-2.5)) / 2
    let want = ((1.0 + (-0.5f64).exp()).ln() + (1.0 + (-2.5f64).exp()).ln()) / 2.0;
    assert!((scalar(&out.loss) - want).abs() < 1e-12);
    assert_eq!(out.acc, Some(1.0));
    assert_eq!(out.margin, Some(1.5));
}

#[test]
fn diffusion_dpo_halves_beta() {
    let [eps, tg, tf, r, rf] = case();
    let dpo = diffusion_dpo(&eps, &tg, &tf, &r, &rf, 2.0).unwrap();
    assert!((scalar(&dpo.loss) - 3.159_988_518_003_670_4).abs() < 1e-12);
    assert_eq!(dpo.margin, Some(-3.0));
}

#[test]
fn hinge_and_sft_match_hand_computed_numbers() {
    let [eps, tg, _, r, _] = case();
    // L(target) = [1, 2], L(reference) = [1, 0]; d = [0.9, 2];
    // relu(1 + d) = [1.9, 3] -> 2.45; + 0.5 * mean([1, 0]) = 2.7.
    let out = pso_hinge(&eps, &tg, &r, 1.0).unwrap();
    assert!((scalar(&out.loss) - 2.7).abs() < 1e-12);
    assert_eq!(out.acc, Some(0.0));
    assert!((out.margin.unwrap() + 1.45).abs() < 1e-12);
    // A large negative d is cut by the relu: only the prior term is left.
    let out = pso_hinge(&eps, &t([0.0; 2], [0.0; 2]), &t([3.0, 3.0], [3.0, 3.0]), 10.0).unwrap();
    assert!((scalar(&out.loss) - 4.5).abs() < 1e-12);
    let out = sft(&eps, &tg).unwrap();
    assert_eq!((scalar(&out.loss), out.acc, out.margin), (1.5, None, None));
}

#[test]
fn log_sigmoid_is_stable_for_large_logits() {
    let z = Tensor::new(&[-800.0f64, -1.0, 0.0, 1.0, 800.0], &Device::Cpu).unwrap();
    let v = log_sigmoid(&z).unwrap().to_vec1::<f64>().unwrap();
    let want = [-800.0, -(1.0 + 1f64.exp()).ln(), -(2f64.ln()), -(1.0 + (-1f64).exp()).ln(), 0.0];
    for (a, b) in v.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{v:?}");
    }
}

/// Regression (review defect 1): the old relu/abs form had a slope of 1.5
/// at z = 0, where every fresh LoRA run starts.
#[test]
fn log_sigmoid_gradient_is_sigmoid_of_minus_z_at_zero_and_far_out() {
    for (z, want) in [(0.0, 0.5), (-40.0, 1.0), (40.0, (-40f64).exp()), (-3.0, 1.0 / (1.0 + (-3f64).exp())), (3.0, 1.0 / (1.0 + 3f64.exp())), (1e-9, 0.5 - 0.25e-9)] {
        for dt in [candle_core::DType::F64, candle_core::DType::F32] {
            let v = candle_core::Var::new(&[z], &Device::Cpu).unwrap();
            let zt = v.as_tensor().to_dtype(dt).unwrap();
            let g = log_sigmoid(&zt).unwrap().sum_all().unwrap().backward().unwrap();
            let got = g.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
            let rel = if dt == candle_core::DType::F64 { 1e-14 } else { 1e-6 };
            assert!((got - want).abs() <= rel * want, "z {z} {dt:?}: {got} vs {want}");
        }
    }
}

/// With the policy equal to the frozen model (z = 0, a fresh LoRA's first
/// step) the PSO gradient is sigmoid(0) = 1/2 times beta times the MSE
/// difference's gradient, as the paper's loss says.
#[test]
fn pso_gradient_at_a_zero_logit_is_half_the_slope() {
    let [eps, tg, _, r, _] = case();
    let v = candle_core::Var::from_tensor(&tg).unwrap();
    let beta = 3.0;
    // frozen = policy for both images: every logit is exactly 0.
    let out = pso(&eps, v.as_tensor(), &tg, &r, &r, beta).unwrap();
    assert!((scalar(&out.loss) - 2f64.ln()).abs() < 1e-15);
    let g = out.loss.backward().unwrap();
    let got = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    // dL/dtarget = sigmoid(0) * beta * 2 (target - eps) / N / B with N = 2, B = 2.
    let want: Vec<f64> = tg.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|x| 0.5 * beta * 2.0 * x / 2.0 / 2.0).collect();
    assert_eq!(got, want);
}

#[test]
fn losses_have_correct_gradients() {
    let shape = [3, 2, 2, 2];
    let x: Vec<Tensor> = (0..5).map(|i| det_tensor(&shape, 40 + i)).collect();
    // Frozen predictions are inputs too: their gradient must be right even
    // though the loop detaches them.
    let worst = check(&x, |v| Ok(pso(&v[0], &v[1], &v[2], &v[3], &v[4], 3.0)?.loss)).unwrap();
    assert!(worst < 1e-5, "pso {worst}");
    let worst = check(&x, |v| Ok(diffusion_dpo(&v[0], &v[1], &v[2], &v[3], &v[4], 7.0)?.loss)).unwrap();
    assert!(worst < 1e-5, "dpo {worst}");
    let worst = check(&x[..3], |v| Ok(pso_hinge(&v[0], &v[1], &v[2], 2.0)?.loss)).unwrap();
    assert!(worst < 1e-5, "hinge {worst}");
    let worst = check(&x[..2], |v| Ok(sft(&v[0], &v[1])?.loss)).unwrap();
    assert!(worst < 1e-5, "sft {worst}");
}

#[test]
fn objective_dispatch_and_timesteps() {
    let [eps, tg, tf, r, rf] = case();
    let pso_obj = Objective::new(ObjectiveKind::Pso, Some(1.0));
    let p = Predictions { eps: &eps, target: &tg, reference: Some(&r), target_frozen: Some(&tf), reference_frozen: Some(&rf) };
    assert!((scalar(&pso_obj.loss(&p).unwrap().loss) - 3.159_988_518_003_670_4).abs() < 1e-12);
    let bare = Predictions { eps: &eps, target: &tg, reference: None, target_frozen: None, reference_frozen: None };
    let e = pso_obj.loss(&bare).unwrap_err().to_string();
    assert!(e.contains("frozen"), "{e}");
    assert_eq!(Objective::new(ObjectiveKind::Sft, None).loss(&bare).unwrap().acc, None);
    assert_eq!(Objective::new(ObjectiveKind::DiffusionDpo, None).beta, 5000.0);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let d = Objective::new(ObjectiveKind::Pso, None).draw_timesteps(&[999.0, 749.0, 499.0, 249.0], 1000, &mut rng, 64).unwrap();
    assert!(d.iter().all(|t| [999.0, 749.0, 499.0, 249.0].contains(t)));
    assert!([999.0, 249.0].iter().all(|t| d.contains(t)));
    let u = Objective::new(ObjectiveKind::Sft, None).draw_timesteps(&[999.0], 1000, &mut rng, 256).unwrap();
    assert!(u.iter().all(|t| *t >= 0.0 && *t < 1000.0 && t.fract() == 0.0));
    assert!(u.iter().any(|t| *t < 500.0) && u.iter().any(|t| *t >= 500.0));
    assert!(Objective::new(ObjectiveKind::SftDistilled, None).draw_timesteps(&[], 1000, &mut rng, 1).is_err());
    for (i, name) in ObjectiveKind::NAMES.iter().enumerate() {
        let k: ObjectiveKind = serde_json::from_value(serde_json::json!(name)).unwrap();
        assert_eq!(k.to_string(), ObjectiveKind::NAMES[i]);
    }
}

#[test]
fn x0_and_v_outputs_become_epsilon() {
    use crate::diffusion::Prediction;
    let dev = Device::Cpu;
    let (x0, eps) = (det_tensor(&[2, 3], 1), det_tensor(&[2, 3], 2));
    let ab = [0.3f64, 0.8];
    let sched_add = |x0: &Tensor, e: &Tensor| {
        let a = Tensor::new(&[[ab[0].sqrt()], [ab[1].sqrt()]], &dev).unwrap();
        let s = Tensor::new(&[[(1.0 - ab[0]).sqrt()], [(1.0 - ab[1]).sqrt()]], &dev).unwrap();
        (x0.broadcast_mul(&a).unwrap() + e.broadcast_mul(&s).unwrap()).unwrap()
    };
    let xt = sched_add(&x0, &eps);
    for pred in [Prediction::Epsilon, Prediction::Sample, Prediction::VPrediction] {
        let out = pred.target(&x0, &eps, &ab).unwrap();
        let got = to_epsilon(pred, &xt, &out, &ab).unwrap();
        let err = (got - &eps).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-12, "{pred:?} {err}");
    }
}
