//! End-to-end: the online PSO task (pso.md §3b) through `psotune tune` on
//! the tiny SD fixture: artefacts, the same run with the reward given as an
//! external command (a stdlib-only Python scorer) ending with the same
//! weights as the built-in reward, and a malformed reply, a crash and a hang
//! of that scorer each ending the run with a clear error and the last
//! checkpoint intact, after which `--resume` finishes the run bit-exactly.

use std::path::{Path, PathBuf};
use std::process::Command;

use psotune::scratch::ScratchDir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn scorer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scorers/colourfulness.py")
}

fn tmp(tag: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-online-{tag}")).unwrap()
}

/// Run psotune; `fail` sets the scorer's failure hook.
fn psotune(args: &[&str], fail: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_psotune"));
    // Bit-exact comparisons are promised for the same thread count.
    c.args(args).env("RUST_BACKTRACE", "0").env("RAYON_NUM_THREADS", "1").env_remove("PSOTUNE_TEST_SCORER_FAIL");
    if let Some(f) = fail {
        c.env("PSOTUNE_TEST_SCORER_FAIL", f);
    }
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn python_available() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn config(dir: &Path, reward: &str, extra: &str) -> String {
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "# training prompts\na red square\na green circle\na blue star\na yellow moon\n").unwrap();
    let held_out = dir.join("held_out.txt");
    std::fs::write(&held_out, "an orange heart\na purple cat\n").unwrap();
    format!(
        "[model]\npath = {:?}\n\n[lora]\nrank = 2\nalpha = 2.0\n\n\
         [data]\nkind = \"online\"\nprompts = {prompts:?}\nvalidation-prompts = {held_out:?}\n\n\
         [online]\nsample-steps = 4\ntrain-transitions = 2\n{extra}\n\
         [reward]\n{reward}\n\n\
         [optim]\nlr = 1e-3\nbatch-size = 2\ngrad-accum = 1\nmax-steps = 3\nseed = 7\n\n\
         [validation]\nseeds = [0, 1]\nevery = 2\nsteps = 2\n\n[checkpoint]\nevery = 1\nkeep-last = 3\n",
        fixtures().join("sd21-tiny")
    )
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// metrics.jsonl without the wall-clock field.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

fn same_checkpoint(a: &Path, b: &Path, step: &str) {
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        let x = std::fs::read(a.join("checkpoints").join(step).join(f)).unwrap();
        let y = std::fs::read(b.join("checkpoints").join(step).join(f)).unwrap();
        assert!(x == y, "{f} of {step} differs between {} and {}", a.display(), b.display());
    }
}

#[test]
fn online_runs_and_a_command_reward_matches_the_built_in_one() {
    let dir = tmp("main");
    let builtin = write(&dir.join("builtin.toml"), &config(&dir, "kind = \"colourfulness\"", ""));
    let run_a = dir.join("run-builtin");
    let (ok, out, err) = psotune(&["tune", &builtin, "--out", run_a.to_str().unwrap()], None);
    assert!(ok, "{err}");
    assert!(out.contains("trained 3 steps"), "{out}");
    for f in [
        "config.toml",
        "checkpoints/step-000001/state.json",
        "checkpoints/step-000003/weights.safetensors",
        "samples/step-000000.png",
        "samples/step-000002.png",
        "samples/step-000003.png",
        "validation.jsonl",
    ] {
        assert!(run_a.join(f).is_file(), "missing {f}");
    }
    let m = metrics(&run_a);
    assert_eq!(m.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    for v in &m {
        assert!(v["reward"].as_f64().unwrap() > 0.0 && v["lr"].is_number(), "{v}");
        assert_eq!(v["pairs"].as_u64().unwrap() + v["ties"].as_u64().unwrap(), 2, "{v}");
    }
    // Step 1: fresh adapters are the frozen model: every ratio is 1, the
    // loss exactly log 2 (f32), the implicit accuracy 0.
    let first = &m[0];
    assert!(first["pairs"].as_u64().unwrap() > 0, "{first}");
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
    assert_eq!(first["acc"].as_f64(), Some(0.0));
    assert!(first["win_margin"].as_f64().unwrap() > 0.0 && first["grad_norm"].as_f64().unwrap() > 0.0, "{first}");
    assert!(m[1]["val_reward"].is_number() && m[0].get("val_reward").is_none());
    let val = jsonl(&run_a.join("validation.jsonl"));
    assert_eq!(val.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 2, 3]);
    assert_eq!(val[0]["scores"].as_array().unwrap().len(), 4, "2 held-out prompts x 2 seeds");
    // The grid: 2 prompts x 2 seeds of 16x16 images.
    assert_eq!(image::image_dimensions(run_a.join("samples/step-000003.png")).unwrap(), (32, 32));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_a.join("checkpoints/step-000002/state.json")).unwrap()).unwrap();
    assert_eq!(state["data_cursor"]["next"], 4);
    assert!(state["rng"]["noise"].is_object() && state["rng"]["transitions"].is_object());

    if !python_available() {
        eprintln!("python3 not found: skipping the command-reward half of this test");
        return;
    }
    let reward = format!("kind = \"command\"\ncommand = [\"python3\", {:?}]\ntimeout-secs = 20", scorer());
    let command = write(&dir.join("command.toml"), &config(&dir, &reward, ""));
    let run_b = dir.join("run-command");
    let (ok, _, err) = psotune(&["tune", &command, "--out", run_b.to_str().unwrap()], None);
    assert!(ok, "{err}");
    assert_eq!(metrics(&run_a), metrics(&run_b), "the same scores must give the same run");
    assert_eq!(jsonl(&run_a.join("validation.jsonl")), jsonl(&run_b.join("validation.jsonl")));
    for step in ["step-000001", "step-000002", "step-000003"] {
        same_checkpoint(&run_a, &run_b, step);
    }
    assert!(run_b.join("reward-images").is_dir());

    // Scorer failures on its 3rd request (step 2's samples): the run ends
    // with an error naming what happened, step 1's checkpoint is intact,
    // and a resume (with a working scorer) finishes the same run.
    let hang = config(&dir, &reward.replace("timeout-secs = 20", "timeout-secs = 2"), "");
    let hang = write(&dir.join("hang.toml"), &hang);
    for (mode, cfg, want) in [("malformed", &command, "malformed reply"), ("crash", &command, "exited (exit status: 3)"), ("hang", &hang, "did not reply within 2 s")] {
        let run = dir.join(format!("run-{mode}"));
        let (ok, _, err) = psotune(&["tune", cfg, "--out", run.to_str().unwrap()], Some(&format!("2:{mode}")));
        assert!(!ok, "{mode}: the run must fail");
        assert!(err.contains(want), "{mode}: {err}");
        if mode != "malformed" {
            assert!(err.contains("failing on request 3"), "{mode}: the scorer's stderr tail belongs in the error: {err}");
        }
        assert!(run.join("checkpoints/step-000001/weights.safetensors").is_file(), "{mode}");
        assert!(!run.join("checkpoints/step-000002").exists(), "{mode}");
        let (ok, out, err) = psotune(&["tune", "--resume", run.to_str().unwrap()], None);
        assert!(ok, "{mode}: {err}");
        assert!(err.contains("resumed from step 1") && out.contains("trained 3 steps"), "{mode}: {out} {err}");
        // (the hang run's config differs in its timeout only, which does
        // not change the numbers)
        assert_eq!(metrics(&run), metrics(&run_b), "{mode}");
        same_checkpoint(&run, &run_b, "step-000003");
    }
}

#[test]
fn online_trains_on_re_noise_samplers_and_checks_its_chain() {
    let dir = tmp("samplers");
    // DMD2's recipe: an 8-step chain, some of its 7 stochastic transitions
    // trained; LCM's 4-step chain.
    for (name, extra) in [("dmd2", "sampler = \"dmd2\"\n"), ("lcm", "sampler = \"lcm\"\n")] {
        let text = config(&dir, "kind = \"jpeg-compressibility\"", extra).replace("sample-steps = 4", if name == "dmd2" { "sample-steps = 8" } else { "sample-steps = 4" });
        let cfg = write(&dir.join(format!("{name}.toml")), &text);
        let run = dir.join(format!("run-{name}"));
        let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap(), "--set", "optim.max-steps=1"], None);
        assert!(ok, "{name}: {err}");
        let m = metrics(&run);
        assert!(m[0]["reward"].as_f64().unwrap() < 0.0, "minus kilobytes: {}", m[0]);
    }
    // More trained transitions than the chain has stochastic ones.
    let cfg = write(&dir.join("bad.toml"), &config(&dir, "kind = \"colourfulness\"", ""));
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("run-bad").to_str().unwrap(), "--set", "online.train-transitions=4"], None);
    assert!(!ok && err.contains("train-transitions 4") && err.contains("3 stochastic"), "{err}");
    // Online needs a reward; the reward belongs to the online task.
    let no_reward = config(&dir, "kind = \"colourfulness\"", "").replace("[reward]\nkind = \"colourfulness\"\n", "");
    let cfg = write(&dir.join("no-reward.toml"), &no_reward);
    let (ok, _, err) = psotune(&["tune", &cfg, "--print-config"], None);
    assert!(!ok && err.contains("[reward]"), "{err}");
}

/// D3PO, the paper's online baseline: the same loss with the ratio against
/// the policy that sampled the chains. At step 1 (fresh adapters: policy =
/// frozen model) it is online PSO exactly; after that its ratios stay 1 (the
/// loss log 2, the margin 0) where PSO's move away from the frozen model.
/// It needs no frozen model, so full fine-tuning may use it.
#[test]
fn d3po_takes_the_ratio_against_the_sampling_policy() {
    let dir = tmp("d3po");
    let cfg = write(&dir.join("online.toml"), &config(&dir, "kind = \"colourfulness\"", ""));
    let (pso, d3po) = (dir.join("pso"), dir.join("d3po"));
    for (run, kind) in [(&pso, "pso"), (&d3po, "d3po")] {
        let (ok, _, err) = psotune(&["tune", &cfg, "--out", run.to_str().unwrap(), "--set", &format!("objective.kind={kind}"), "--set", "optim.max-steps=2"], None);
        assert!(ok, "{kind}: {err}");
    }
    let (mp, md) = (metrics(&pso), metrics(&d3po));
    assert_eq!(mp[0], md[0], "step 1: the sampling policy is the frozen model");
    for v in &md {
        assert!((v["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{v}");
        assert_eq!(v["margin"].as_f64(), Some(0.0), "{v}");
    }
    assert!(mp[1]["margin"].as_f64().unwrap() != 0.0, "{}", mp[1]);
    let full = dir.join("full");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", full.to_str().unwrap(), "--set", "objective.kind=d3po", "--set", "lora.full=[\"conv_out\"]", "--set", "optim.max-steps=1"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = psotune(&["tune", &cfg, "--out", dir.join("full-pso").to_str().unwrap(), "--set", "lora.full=[\"conv_out\"]", "--set", "optim.max-steps=1"], None);
    assert!(!ok && err.contains("d3po"), "{err}");
}
