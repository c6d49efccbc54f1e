//! psotune-bench: the Rust side of `bench/compare` (issue 3). Each command
//! runs one workload in this process and ends with a line
//! `RESULT key=value ...` that bench/compare reads; tools/bench_pytorch.py
//! runs the same work in PyTorch. Threads: RAYON_NUM_THREADS (candle's gemm
//! and rayon both read it).

mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "psotune workloads for bench/compare")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CPU, its flags and the SIMD paths in use, and exit.
    Describe,
    /// Time an n^3 f32 matrix product (the machine's matmul peak).
    Gemm {
        #[arg(long, default_value_t = 2048)]
        n: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// One multi-head attention (psotune's kernel) forward, and forward +
    /// backward: the UNet's hottest op on small heads.
    Attention {
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Query tokens (32x32 latents: 1024).
        #[arg(long, default_value_t = 1024)]
        tokens: usize,
        /// Key tokens; 0 = self-attention (as many as the queries).
        #[arg(long, default_value_t = 0)]
        keys: usize,
        #[arg(long, default_value_t = 2)]
        heads: usize,
        /// Width of one head.
        #[arg(long, default_value_t = 16)]
        dim: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// SIMD paths to time, one after the other in this process
        /// (comma-separated: avx512, avx2, portable, or `all` for every
        /// path this CPU runs); default: the active one (PSOTUNE_SIMD).
        #[arg(long)]
        simd: Option<String>,
    },
    /// Diffusion training steps of a diffusers UNet folder.
    Train {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Latent side (32 = 256x256 images).
        #[arg(long, default_value_t = 32)]
        latent: usize,
        /// 0 trains all weights; r > 0 trains only rank-r LoRA on the attention projections.
        #[arg(long, default_value_t = 0)]
        lora_rank: usize,
        /// Gradient checkpointing of every UNet resnet and transformer.
        #[arg(long)]
        checkpointing: bool,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Full multi-step samples (Euler ancestral, SD-Turbo schedule).
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        latent: usize,
        #[arg(long, default_value_t = 4)]
        sample_steps: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
}

/// VmHWM (RSS high-water mark) of this process in MiB.
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        // main has printed it.
        Cmd::Describe => {}
        Cmd::Gemm { n, reps } => {
            let t = workloads::gemm(n, reps)?;
            let ms = t.median();
            let gflops = 2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9;
            println!("RESULT workload=gemm ms={ms:.2} gflops={gflops:.1}");
        }
        Cmd::Attention { batch, tokens, keys, heads, dim, steps, simd: paths } => {
            let keys = if keys == 0 { tokens } else { keys };
            let paths = simd_paths(paths.as_deref())?;
            // Two products of 2 N M D flops forward; backward recomputes the
            // scores and runs four more.
            let flops = 2.0 * (batch * heads * tokens * keys * dim) as f64;
            let mut rows = Vec::new();
            for path in paths {
                psotune::simd::set_global(path)?;
                println!("== simd path {path}");
                let (fwd, both) = workloads::attention(batch, tokens, keys, heads, dim, steps)?;
                let (f, b) = (fwd.median(), both.median());
                let (gf, gb) = (2.0 * flops / (f * 1e-3) / 1e9, 7.0 * flops / (b * 1e-3) / 1e9);
                rows.push((path, f, b, gf, gb));
            }
            if rows.len() > 1 {
                // Time per FLOP against the widest path measured, scaled by
                // the vector width: 1.0 = as efficient per lane.
                let (wide, wf, wb) = (rows[0].0, rows[0].1, rows[0].2);
                println!("path      fwd ms  fwd+bwd ms  fwd GFLOP/s  fwd+bwd GFLOP/s  per-lane cost vs {wide} (fwd / fwd+bwd)");
                for &(p, f, b, gf, gb) in &rows {
                    let lanes = p.vector_lanes() as f64 / wide.vector_lanes() as f64;
                    println!("{:<8} {f:>7.2} {b:>11.2} {gf:>12.1} {gb:>16.1}  {:.2} / {:.2}", p.name(), f / wf * lanes, b / wb * lanes);
                }
            }
            for (p, f, b, gf, gb) in rows {
                println!("RESULT workload=attention simd={p} fwd_ms={f:.2} fwd_bwd_ms={b:.2} fwd_gflops={gf:.1} fwd_bwd_gflops={gb:.1}");
            }
        }
        Cmd::Train { model, batch, latent, lora_rank, checkpointing, steps, warmup } => {
            let args = workloads::TrainArgs { model: &model, batch, latent, lora_rank, checkpointing, steps, warmup };
            let (t, n_train) = workloads::train(&args)?;
            let peak = peak_rss_mb();
            println!(
                "RESULT workload=train ms={:.1} peak_mb={peak:.0} load_peak_mb={:.0} trainable={n_train}",
                t.median(),
                t.load_peak_mb
            );
        }
        Cmd::Sample { model, batch, latent, sample_steps, steps, warmup } => {
            let args = workloads::SampleArgs { model: &model, batch, latent, sample_steps, steps, warmup };
            let t = workloads::sample(&args)?;
            let (ms, peak) = (t.median(), peak_rss_mb());
            let ips = batch as f64 / (ms * 1e-3);
            println!(
                "RESULT workload=sample ms={ms:.1} peak_mb={peak:.0} load_peak_mb={:.0} images_per_s={ips:.3} ms_per_image={:.1}",
                t.load_peak_mb,
                ms / batch as f64
            );
        }
    }
    Ok(())
}

/// The paths `--simd` names (`all`: every path this CPU runs); none given:
/// the active one.
fn simd_paths(arg: Option<&str>) -> anyhow::Result<Vec<psotune::simd::Path>> {
    use psotune::simd::{Path, Simd};
    match arg {
        None => Ok(vec![Simd::active().path()]),
        Some("all") => Ok(Path::supported()),
        Some(list) => list.split(',').map(|s| Ok(Simd::new(Path::parse(s)?)?.path())).collect(),
    }
}

fn main() -> ExitCode {
    psotune::threads::init();
    let cli = Cli::parse();
    if let Err(e) = psotune::simd::init_from_env() {
        eprintln!("psotune-bench: PSOTUNE_SIMD: {e}");
        return ExitCode::FAILURE;
    }
    // Every result says where it was measured.
    println!("{}", psotune::simd::describe());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("psotune-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
