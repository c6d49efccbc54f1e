//! Unit tests of the optimizer, gradients and run directories.
#![allow(clippy::excessive_precision)] // torch's printed values, verbatim

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::diffusion::NoiseRngState;
use crate::scratch::ScratchDir;

fn var(v: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_slice(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn grads(pairs: &[(&str, &[f32], &[usize])]) -> Grads {
    let mut g = Grads::default();
    for (n, v, s) in pairs {
        g.insert(*n, Tensor::from_slice(v, *s, &Device::Cpu).unwrap());
    }
    g
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
    }
}

/// Two steps on one f64 scalar, worked out by hand:
/// p=1, g=0.5, lr=0.1, wd=0.1, betas (0.9, 0.999), eps 1e-8.
/// Step 1: decay 1*(1-0.01)=0.99; m=0.05, v=0.00025; m_hat=0.5,
///   sqrt(v_hat)=0.5, so p = 0.99 - 0.1*0.5/(0.5+1e-8) ~ 0.89.
/// Step 2 (g=-0.25): decay 0.89*0.99=0.8811; m=0.045-0.025=0.02,
///   v=0.00024975+0.0000625=0.00031225; m_hat=0.02/0.19, v_hat=v/0.001999,
///   p = 0.8811 - 0.1*m_hat/(sqrt(v_hat)+1e-8) ~ 0.854466.
#[test]
fn adamw_matches_hand_computed_steps() {
    let p = Var::from_tensor(&Tensor::new(&[1f64], &Device::Cpu).unwrap()).unwrap();
    let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg).unwrap();
    let mut g = Grads::default();
    g.insert("p", Tensor::new(&[0.5f64], &Device::Cpu).unwrap());
    opt.step(&g).unwrap();
    let p1 = p.as_tensor().to_vec1::<f64>().unwrap()[0];
    assert!((p1 - (0.99 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-12, "{p1}");
    assert!((p1 - 0.89).abs() < 1e-7);
    g.insert("p", Tensor::new(&[-0.25f64], &Device::Cpu).unwrap());
    opt.step(&g).unwrap();
    let p2 = p.as_tensor().to_vec1::<f64>().unwrap()[0];
    let want = p1 * 0.99 - 0.1 * (0.02 / 0.19) / ((0.00031225f64 / (1.0 - 0.999f64 * 0.999)).sqrt() + 1e-8);
    assert!((p2 - want).abs() < 1e-12, "{p2} vs {want}");
    assert!((p2 - 0.854466).abs() < 1e-6, "{p2}");
    assert_eq!(opt.param_step("p"), 2);
}

/// `torch.optim.AdamW` (torch 2.15, CPU, f32), learning rate changed before
/// each step, q without a gradient in the second step:
/// ```python
/// p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.0, 3e-3]))
/// q = torch.nn.Parameter(torch.tensor([[1.0, -2.0, 0.25], [0.75, -0.5, 4.0]]))
/// opt = torch.optim.AdamW([p, q], lr=0.01, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)
/// for i, lr in enumerate([0.01, 0.02, 0.005]):
///     for g in opt.param_groups: g["lr"] = lr
///     p.grad = torch.tensor(GRADS_P[i])
///     q.grad = None if GRADS_Q[i] is None else torch.tensor(GRADS_Q[i])
///     opt.step(); print(p.tolist(), q.flatten().tolist())
/// print(opt.state[q]["exp_avg"], opt.state[q]["exp_avg_sq"], opt.state[q]["step"])
/// ```
const GRADS_P: [[f32; 5]; 3] = [[0.1, -0.2, 0.3, 0.0, 5.0], [-0.4, 0.1, 0.0, 1e-4, -5.0], [0.2, 0.2, -0.3, 0.5, 1.0]];
const GRADS_Q: [Option<[f32; 6]>; 3] = [Some([1.0, 0.0, -1.0, 0.5, 2.0, -0.25]), None, Some([-1.0, 0.5, 0.0, 1.5, -2.0, 0.125])];
const TORCH_P: [[f32; 5]; 3] = [
    [0.4895990192890167, -0.9890497922897339, 1.9880332946777344, 0.0, -0.007001001387834549],
    [0.5006388425827026, -0.9828494191169739, 1.971382737159729, -0.0010368600487709045, -0.004765221383422613],
    [0.5008191466331482, -0.9841457009315491, 1.9712966680526733, -0.004486174322664738, -0.004863445647060871],
];
const TORCH_Q: [[f32; 6]; 3] = [
    [0.9890099763870239, -1.9980000257492065, 0.25974002480506897, 0.7392699718475342, -0.5094950199127197, 4.005959987640381],
    [0.9890099763870239, -1.9980000257492065, 0.25974002480506897, 0.7392699718475342, -0.5094950199127197, 4.005959987640381],
    [0.9890704154968262, -2.000869035720825, 0.26278936862945557, 0.7342315316200256, -0.5086849927902222, 4.005013465881348],
];
const TORCH_Q_EXP_AVG: [f32; 6] =
    [-0.040000010281801224, 0.10000000149011612, -0.1599999964237213, 0.3799999952316284, -0.08000002056360245, -0.015000000596046448];
const TORCH_Q_EXP_AVG_SQ: [f32; 6] =
    [0.09749999642372131, 0.012500000186264515, 0.04749999940395355, 0.12437500059604645, 0.38999998569488525, 0.0037499999161809683];

fn torch_case_optimizer() -> (Var, Var, AdamW) {
    let p = var(&[0.5, -1.0, 2.0, 0.0, 3e-3], &[5]);
    let q = var(&[1.0, -2.0, 0.25, 0.75, -0.5, 4.0], &[2, 3]);
    let cfg = AdamWConfig { lr: 0.01, beta1: 0.8, beta2: 0.95, eps: 1e-3, weight_decay: 0.1 };
    let opt = AdamW::new(vec![("p".into(), p.clone()), ("q".into(), q.clone())], cfg).unwrap();
    (p, q, opt)
}

fn torch_case_grads(i: usize) -> Grads {
    let mut g = grads(&[("p", &GRADS_P[i], &[5])]);
    if let Some(gq) = GRADS_Q[i] {
        g.insert("q", Tensor::from_slice(&gq, (2, 3), &Device::Cpu).unwrap());
    }
    g
}

#[test]
fn adamw_matches_torch_including_skipped_params_and_lr_changes() {
    let (p, q, mut opt) = torch_case_optimizer();
    for (i, lr) in [0.01, 0.02, 0.005].into_iter().enumerate() {
        opt.set_lr(lr);
        opt.step(&torch_case_grads(i)).unwrap();
        assert_close(&vals(p.as_tensor()), &TORCH_P[i], 2e-7, &format!("p step {i}"));
        assert_close(&vals(q.as_tensor()), &TORCH_Q[i], 2e-7, &format!("q step {i}"));
    }
    assert_eq!((opt.param_step("p"), opt.param_step("q")), (3, 2));
    let st = opt.state_tensors();
    assert_close(&vals(&st["q.exp_avg"]), &TORCH_Q_EXP_AVG, 1e-7, "q.exp_avg");
    assert_close(&vals(&st["q.exp_avg_sq"]), &TORCH_Q_EXP_AVG_SQ, 1e-7, "q.exp_avg_sq");
}

#[test]
fn adamw_state_round_trips_and_continues_bit_identically() {
    let dir = tempdir("adamw_state");
    let path = dir.join("opt.safetensors");
    // Reference: three steps in one go.
    let (p_ref, q_ref, mut ref_opt) = torch_case_optimizer();
    for i in 0..3 {
        ref_opt.step(&torch_case_grads(i)).unwrap();
    }
    // Two steps, save, fresh optimizer on copies of the params, load, step.
    let (p, q, mut opt) = torch_case_optimizer();
    for i in 0..2 {
        opt.step(&torch_case_grads(i)).unwrap();
    }
    opt.save(&path).unwrap();
    let p2 = Var::from_tensor(&p.as_tensor().copy().unwrap()).unwrap();
    let q2 = Var::from_tensor(&q.as_tensor().copy().unwrap()).unwrap();
    let mut opt2 = AdamW::new(vec![("p".into(), p2.clone()), ("q".into(), q2.clone())], *opt.config()).unwrap();
    opt2.load(&path).unwrap();
    assert_eq!((opt2.param_step("p"), opt2.param_step("q")), (2, 1));
    opt2.step(&torch_case_grads(2)).unwrap();
    assert_eq!(vals(p2.as_tensor()), vals(p_ref.as_tensor()));
    assert_eq!(vals(q2.as_tensor()), vals(q_ref.as_tensor()));

    // Strict loading: a state for a parameter this optimizer lacks.
    let mut only_p = AdamW::new(vec![("p".into(), var(&[0.0; 5], &[5]))], AdamWConfig::default()).unwrap();
    let err = only_p.load(&path).unwrap_err().to_string();
    assert!(err.contains("opt.safetensors") && err.contains("q"), "{err}");
    // ... or with another shape.
    let mut wrong = AdamW::new(vec![("p".into(), var(&[0.0; 4], &[4])), ("q".into(), q2)], AdamWConfig::default()).unwrap();
    let err = wrong.load(&path).unwrap_err().to_string();
    assert!(err.contains("p.exp_avg"), "{err}");
}

#[test]
fn adamw_rejects_unknown_gradients_and_duplicate_names() {
    let (_, _, mut opt) = torch_case_optimizer();
    let err = opt.step(&grads(&[("r", &[1.0], &[1])])).unwrap_err().to_string();
    assert!(err.contains("r"), "{err}");
    // A mis-shaped gradient is found before any parameter moves.
    let before = vals(opt.params()[0].1.as_tensor());
    let err = opt.step(&grads(&[("p", &[1.0; 5], &[5]), ("q", &[1.0; 3], &[3])])).unwrap_err().to_string();
    assert!(err.contains("q") && err.contains("[3]"), "{err}");
    assert_eq!(vals(opt.params()[0].1.as_tensor()), before);
    assert_eq!(opt.param_step("p"), 0);
    let v = var(&[1.0], &[1]);
    assert!(AdamW::new(vec![("a".into(), v.clone()), ("a".into(), v)], AdamWConfig::default()).is_err());
}

/// `torch.nn.utils.clip_grad_norm_([a, b], 2.0)` with
/// a.grad = [3, -4, 1], b.grad = [[2, 0.5], [-1, 6]] returns
/// 8.200610160827637 and leaves the printed gradients.
#[test]
fn clip_global_norm_matches_torch() {
    let mut g = grads(&[("a", &[3.0, -4.0, 1.0], &[3]), ("b", &[2.0, 0.5, -1.0, 6.0], &[2, 2])]);
    let norm = g.clip_global_norm(2.0).unwrap();
    assert!((norm - 8.200610160827637).abs() < 1e-6, "{norm}");
    assert_close(&vals(g.get("a").unwrap()), &[0.7316527962684631, -0.9755370616912842, 0.24388426542282104], 1e-7, "a");
    assert_close(&vals(g.get("b").unwrap()), &[0.4877685308456421, 0.12194213271141052, -0.24388426542282104, 1.4633055925369263], 1e-7, "b");
    // Below the limit nothing changes, bit for bit.
    let mut small = grads(&[("a", &[0.3, -0.4], &[2])]);
    assert!((small.clip_global_norm(1.0).unwrap() - 0.5).abs() < 1e-7);
    assert_eq!(vals(small.get("a").unwrap()), vec![0.3, -0.4]);
}

#[test]
fn accumulation_averages_micro_batches_from_backward() {
    // loss_k = sum(w * x_k): dloss/dw = x_k; the mean of two is (x1 + x2) / 2.
    let w = var(&[1.0, 2.0], &[2]);
    let unused = var(&[5.0], &[1]);
    let params = vec![("w".to_string(), w.clone()), ("unused".to_string(), unused)];
    let mut acc = GradAccumulator::new();
    for x in [[1.0f32, 3.0], [2.0, -1.0]] {
        let x = Tensor::new(&x, &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * x).unwrap().sum_all().unwrap();
        acc.add_store(&loss.backward().unwrap(), &params).unwrap();
    }
    assert_eq!(acc.count(), 2);
    let g = acc.finish().unwrap();
    assert_eq!(vals(g.get("w").unwrap()), vec![1.5, 1.0]);
    // A parameter the loss never reached has no gradient (skipped by AdamW).
    assert!(g.get("unused").is_none());
    assert_eq!(g.len(), 1);
}

/// Regression (review defect 2): a separately back-propagated term of each
/// micro-batch's loss is summed into that micro-batch, so the total is
/// mean(main) + mean(term); counting it as a micro-batch halved both.
#[test]
fn a_loss_term_adds_to_its_micro_batch_and_does_not_count_as_one() {
    let w = var(&[1.0, 2.0], &[2]);
    let params = vec![("w".to_string(), w.clone())];
    let run = |term_weight: Option<f64>| {
        let mut acc = GradAccumulator::new();
        for (x, y) in [([1.0f32, 3.0], [0.5f32, -0.25]), ([2.0, -1.0], [4.0, 8.0])] {
            let x = Tensor::new(&x, &Device::Cpu).unwrap();
            let loss = (w.as_tensor() * x).unwrap().sum_all().unwrap();
            acc.add_store(&loss.backward().unwrap(), &params).unwrap();
            if let Some(k) = term_weight {
                let y = Tensor::new(&y, &Device::Cpu).unwrap();
                let term = ((w.as_tensor() * y).unwrap().sum_all().unwrap() * k).unwrap();
                acc.add_term_store(&term.backward().unwrap(), &params).unwrap();
            }
        }
        assert_eq!(acc.count(), 2);
        vals(acc.finish().unwrap().get("w").unwrap())
    };
    let without = run(None);
    assert_eq!(without, vec![1.5, 1.0]);
    // Weight 0: bit for bit the run without the term.
    assert_eq!(run(Some(0.0)), without);
    // Weight 2: (x1 + x2) / 2 + 2 (y1 + y2) / 2, the main part unchanged.
    assert_eq!(run(Some(2.0)), vec![1.5 + 4.5, 1.0 + 7.75]);
}

// ---- run directories ----

pub(crate) fn tempdir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-train-{name}")).unwrap()
}

fn save_step(run: &RunDir, opt: &AdamW, step: u64) -> Checkpoint {
    let weights = vars_to_tensors(opt.params());
    let mut rng = BTreeMap::new();
    rng.insert("noise".to_string(), NoiseRngState { seed: 7, word_pos: 1000 + step as u128 });
    let contents =
        CheckpointContents { step, weights: &weights, optimizer: opt, rng, data_cursor: serde_json::json!({ "next": step * 2 }), loss_scale: None };
    run.save(&contents).unwrap()
}

#[test]
fn run_dir_saves_retains_and_finds_latest() {
    let root = tempdir("run_dir");
    let run = RunDir::open(&root, "lr = 1\n").unwrap().keep_last(2);
    assert!(run.latest().unwrap().is_none());
    let (p, _, mut opt) = torch_case_optimizer();
    for step in 1..=3u64 {
        opt.step(&torch_case_grads(step as usize - 1)).unwrap();
        let ck = save_step(&run, &opt, step * 10);
        assert_eq!(ck.step(), step * 10);
    }
    let steps: Vec<u64> = run.checkpoints().unwrap().iter().map(|c| c.step()).collect();
    assert_eq!(steps, vec![20, 30]);
    assert!(root.join("checkpoints/step-000030/state.json").is_file());
    let latest = run.latest().unwrap().unwrap();
    assert_eq!(latest.state().data_cursor, serde_json::json!({ "next": 60 }));
    assert_eq!(latest.state().rng["noise"].word_pos, 1030);
    assert_eq!(latest.state().config_hash, config_hash("lr = 1\n"));

    // Restoring puts the saved values back into the vars.
    let saved = vals(p.as_tensor());
    p.set(&p.as_tensor().zeros_like().unwrap()).unwrap();
    latest.restore_weights(opt.params()).unwrap();
    assert_eq!(vals(p.as_tensor()), saved);
    let (_, _, mut fresh) = torch_case_optimizer();
    latest.restore_optimizer(&mut fresh).unwrap();
    assert_eq!(fresh.param_step("p"), 3);

    // Leftovers of a killed write or removal are ignored and cleaned up.
    let ckdir = run.checkpoints_dir();
    std::fs::create_dir_all(ckdir.join(".tmp-step-000040")).unwrap();
    std::fs::write(ckdir.join(".tmp-step-000040/weights.safetensors"), b"partial").unwrap();
    std::fs::create_dir_all(ckdir.join(".del-step-000010")).unwrap();
    assert_eq!(run.latest().unwrap().unwrap().step(), 30);
    assert!(!ckdir.join(".tmp-step-000040").exists() && !ckdir.join(".del-step-000010").exists());

    // Reopening with the same config works, with another config does not.
    assert!(RunDir::open(&root, "lr = 1\n").is_ok());
    let err = RunDir::open(&root, "lr = 2\n").err().unwrap().to_string();
    assert!(err.contains("config.toml"), "{err}");
}

#[test]
fn run_dir_errors_name_the_damaged_file() {
    let root = tempdir("run_dir_errors");
    let run = RunDir::open(&root, "x").unwrap();
    let (_, _, opt) = torch_case_optimizer();
    save_step(&run, &opt, 5);
    let ck = run.checkpoints_dir().join("step-000005");

    std::fs::remove_file(ck.join("optimizer.safetensors")).unwrap();
    let err = run.latest().unwrap_err().to_string();
    assert!(err.contains("step-000005/optimizer.safetensors") && err.contains("missing"), "{err}");

    std::fs::write(ck.join("optimizer.safetensors"), b"").unwrap();
    std::fs::write(ck.join("state.json"), b"{\"step\": 5").unwrap();
    let err = run.latest().unwrap_err().to_string();
    assert!(err.contains("step-000005/state.json"), "{err}");

    // A checkpoint of the right layout but with other weights names.
    let root2 = tempdir("run_dir_errors2");
    let run2 = RunDir::open(&root2, "x").unwrap();
    let ck = save_step(&run2, &opt, 1);
    let other = vec![("p".to_string(), var(&[0.0; 5], &[5])), ("z".to_string(), var(&[0.0], &[1]))];
    let err = ck.restore_weights(&other).unwrap_err().to_string();
    assert!(err.contains("weights.safetensors") && err.contains("z") && err.contains("q"), "{err}");
}

#[test]
fn write_hook_sees_every_stage_in_order() {
    use std::sync::{Arc, Mutex};
    let root = tempdir("run_dir_hook");
    let mut run = RunDir::open(&root, "x").unwrap().keep_last(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    run.set_write_hook(move |step, stage| s.lock().unwrap().push((step, stage)));
    let (_, _, opt) = torch_case_optimizer();
    save_step(&run, &opt, 1);
    save_step(&run, &opt, 2);
    let seen = seen.lock().unwrap().clone();
    let files = |s| vec![(s, WriteStage::Wrote(WEIGHTS_FILE)), (s, WriteStage::Wrote(OPTIMIZER_FILE)), (s, WriteStage::Wrote(STATE_FILE))];
    let mut want = files(1);
    want.push((1, WriteStage::Renamed));
    want.extend(files(2));
    want.extend([(2, WriteStage::Renamed), (2, WriteStage::Removing(1))]);
    assert_eq!(seen, want);
}

/// Regression: with several safetensors metadata keys the optimizer file's
/// bytes depended on `HashMap` order, so a resumed run's checkpoint differed
/// from the uninterrupted one's although every tensor was equal.
#[test]
fn optimizer_file_bytes_are_deterministic() {
    let dir = tempdir("adamw_bytes");
    let (_, _, mut opt) = torch_case_optimizer();
    opt.step(&torch_case_grads(0)).unwrap();
    let mut files = Vec::new();
    for i in 0..4 {
        let path = dir.join(format!("{i}.safetensors"));
        opt.save(&path).unwrap();
        files.push(std::fs::read(path).unwrap());
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]));
}
