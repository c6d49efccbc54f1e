//! Which SIMD build of the hand-written CPU kernels runs, and the one place
//! that switches between them.
//!
//! Every kernel is written once, generic and `#[inline(always)]`, and
//! compiled three times by [`Simd::run`]: inside a function built for
//! AVX-512F + AVX2 + FMA, one for AVX2 + FMA, and one for the target's
//! baseline (SSE2 on x86-64, NEON on aarch64), the portable path. A kernel
//! is only as fast as its least-featured function: an intrinsic or helper
//! that ends up in a function without the features (a closure, a helper
//! that is not inlined) is called once per vector operation, which made
//! the AVX2 attention 30-50x slower than the AVX-512 one (issue 16).
//! `tools/check_simd_inlining.sh` disassembles the release binary and
//! fails if that happens again.
//!
//! The path is the best the CPU has, unless `PSOTUNE_SIMD=avx512|avx2|portable`
//! asks for another (a CPU with AVX-512 runs all three, so every path can be
//! tested and timed on one machine). [`with_path`] switches the calling
//! thread only (tests run each path side by side), [`set_global`] the whole
//! process (`psotune-bench attention --simd`). A kernel reads the path once,
//! on the thread that calls it, and hands the [`Simd`] token to its worker
//! threads: the thread-local choice of [`with_path`] holds inside rayon too.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use super::lanes::{Lanes, Plain};

/// One build of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// AVX-512F with AVX2 + FMA: 16 f32 lanes in one zmm register.
    Avx512,
    /// AVX2 + FMA: 16 lanes as two ymm registers.
    Avx2,
    /// The target's baseline instructions, plain arrays of lanes.
    Portable,
}

impl Path {
    /// Fastest first.
    pub const ALL: [Path; 3] = [Path::Avx512, Path::Avx2, Path::Portable];

    /// The name `PSOTUNE_SIMD` and `--simd` take.
    pub fn name(self) -> &'static str {
        match self {
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2",
            Path::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Result<Path, SimdError> {
        let s = s.trim().to_ascii_lowercase();
        Path::ALL.into_iter().find(|p| p.name() == s).ok_or(SimdError::Unknown { name: s })
    }

    /// Whether this CPU has the instructions of the path.
    pub fn is_supported(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => has_avx2() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU runs, fastest first.
    pub fn supported() -> Vec<Path> {
        Path::ALL.into_iter().filter(|p| p.is_supported()).collect()
    }

    /// The fastest path this CPU runs.
    pub fn best() -> Path {
        Path::ALL.into_iter().find(|p| p.is_supported()).unwrap_or(Path::Portable)
    }

    /// f32 lanes in one vector register of the path (the x86 width; the
    /// portable path counts SSE2's 4 on x86-64 and NEON's 4 on aarch64).
    pub fn vector_lanes(self) -> usize {
        match self {
            Path::Avx512 => 16,
            Path::Avx2 => 8,
            Path::Portable => 4,
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimdError {
    #[error("unknown SIMD path `{name}` (PSOTUNE_SIMD / --simd take avx512, avx2 or portable)")]
    Unknown { name: String },
    #[error("this CPU cannot run the `{path}` SIMD path (it has: {has}); it runs {}", supported_names())]
    Unsupported { path: Path, has: String },
}

fn supported_names() -> String {
    Path::supported().iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// A path the CPU supports: the proof that [`Simd::run`]'s feature-gated
/// builds may be called. Only [`Simd::new`] and [`Simd::active`] make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Simd(Path);

impl Simd {
    /// The token for `path`, or why this CPU cannot run it.
    pub fn new(path: Path) -> Result<Simd, SimdError> {
        if path.is_supported() {
            Ok(Simd(path))
        } else {
            Err(SimdError::Unsupported { path, has: cpu_flags().join(" ") })
        }
    }

    /// The path kernels called on this thread run now: [`with_path`]'s,
    /// else [`set_global`]'s, else `PSOTUNE_SIMD`'s, else the best.
    pub fn active() -> Simd {
        if let Some(p) = LOCAL.with(Cell::get) {
            return Simd(p);
        }
        match GLOBAL.load(Ordering::Relaxed) {
            0 => Simd(*FROM_ENV.get_or_init(env_or_best)),
            v => Simd(decode(v)),
        }
    }

    pub fn path(self) -> Path {
        self.0
    }

    /// Runs `k` in the build of this path.
    #[inline]
    pub fn run<K: Kernel>(self, k: K) -> K::Output {
        match self.0 {
            // SAFETY: a `Simd` only holds a path the CPU supports (`new`,
            // `active`), and each build enables exactly those features.
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { x86::avx512(k) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::avx2(k) },
            _ => k.run::<Portable>(),
        }
    }

    /// Runs a closure in the build of this path, for kernels that are plain
    /// loops the compiler vectorises (norms, GEGLU, AdamW, im2col). Mark the
    /// closure `#[inline(always)]` at the call: with one call site alone,
    /// large closures (layer norm's backward, the bias sums) stayed out of
    /// line and ran without the features. What it calls must be
    /// `#[inline(always)]` too; `tools/check_simd_inlining.sh` verifies both.
    #[inline]
    pub fn vectorize<R, F: FnOnce() -> R>(self, f: F) -> R {
        self.run(Loops(f))
    }
}

/// A kernel compiled once per path: `run` must be `#[inline(always)]` and
/// call only `#[inline(always)]` code on its hot loops, so that all of it
/// is compiled with the path's features.
pub trait Kernel {
    type Output;
    fn run<I: Isa>(self) -> Self::Output;
}

/// What a kernel knows of the path it is compiled for.
pub trait Isa {
    const PATH: Path;
    /// Sixteen f32 lanes in this path's registers.
    type F32: Lanes<f32>;
}

pub struct Portable;
impl Isa for Portable {
    const PATH: Path = Path::Portable;
    type F32 = Plain<f32>;
}

struct Loops<F>(F);
impl<R, F: FnOnce() -> R> Kernel for Loops<F> {
    type Output = R;
    #[inline(always)]
    fn run<I: Isa>(self) -> R {
        (self.0)()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Isa, Kernel, Path};
    use crate::ops::cpu::lanes::{Avx2, Avx512};

    pub struct IsaAvx512;
    impl Isa for IsaAvx512 {
        const PATH: Path = Path::Avx512;
        type F32 = Avx512;
    }

    pub struct IsaAvx2;
    impl Isa for IsaAvx2 {
        const PATH: Path = Path::Avx2;
        type F32 = Avx2;
    }

    /// The AVX-512 build of `k` (the check script finds these by name).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn avx512<K: Kernel>(k: K) -> K::Output {
        k.run::<IsaAvx512>()
    }

    /// The AVX2 + FMA build of `k`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
        k.run::<IsaAvx2>()
    }
}

thread_local! {
    static LOCAL: Cell<Option<Path>> = const { Cell::new(None) };
}

/// 0: not set (the environment decides); else 1 + the index in `Path::ALL`.
static GLOBAL: AtomicU8 = AtomicU8::new(0);
static FROM_ENV: OnceLock<Path> = OnceLock::new();

fn encode(p: Path) -> u8 {
    1 + Path::ALL.iter().position(|&q| q == p).unwrap_or(2) as u8
}

fn decode(v: u8) -> Path {
    Path::ALL[(v.saturating_sub(1) as usize).min(2)]
}

/// `PSOTUNE_SIMD` if set, checked: the path it names, or why not.
pub fn from_env() -> Result<Option<Path>, SimdError> {
    match std::env::var("PSOTUNE_SIMD") {
        Ok(s) if !s.trim().is_empty() => {
            let p = Path::parse(&s)?;
            Simd::new(p)?;
            Ok(Some(p))
        }
        _ => Ok(None),
    }
}

/// For programs: check `PSOTUNE_SIMD` at start-up, so that a typo or a path
/// the CPU lacks stops the program with a message instead of quietly
/// running another path. Returns the path kernels will run.
pub fn init_from_env() -> Result<Path, SimdError> {
    let p = from_env()?.unwrap_or_else(Path::best);
    Ok(*FROM_ENV.get_or_init(|| p))
}

/// A library used without [`init_from_env`]: a bad `PSOTUNE_SIMD` is
/// reported once on stderr and the best path runs (kernels cannot return
/// the error).
fn env_or_best() -> Path {
    match from_env() {
        Ok(p) => p.unwrap_or_else(Path::best),
        Err(e) => {
            eprintln!("psotune: ignoring PSOTUNE_SIMD: {e}");
            Path::best()
        }
    }
}

/// Every later kernel call in the process runs `path` (threads inside a
/// [`with_path`] keep theirs).
pub fn set_global(path: Path) -> Result<(), SimdError> {
    Simd::new(path)?;
    GLOBAL.store(encode(path), Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with kernels called on this thread taking `path`.
pub fn with_path<R>(path: Path, f: impl FnOnce() -> R) -> Result<R, SimdError> {
    Simd::new(path)?;
    struct Restore(Option<Path>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOCAL.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LOCAL.with(|l| l.replace(Some(path))));
    Ok(f())
}

/// The flags of this CPU that decide the path.
pub fn cpu_flags() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let flags = [
            ("sse4.2", has!("sse4.2")),
            ("avx", has!("avx")),
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
        ];
        out.extend(flags.iter().filter(|f| f.1).map(|f| f.0));
    }
    #[cfg(target_arch = "aarch64")]
    out.push("neon");
    out
}

/// The CPU's model name (Linux `/proc/cpuinfo`), or the architecture.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The path of the matrix products (the gemm crate picks its own kernel:
/// AVX-512 where the CPU has it and psotune was built with the
/// `avx512-gemm` feature, else AVX2 + FMA where the CPU has those).
pub fn gemm_path() -> Path {
    let avx512 = cfg!(feature = "avx512-gemm") && Path::Avx512.is_supported();
    if avx512 {
        Path::Avx512
    } else if Path::Avx2.is_supported() {
        Path::Avx2
    } else {
        Path::Portable
    }
}

/// One line for benchmark output: model, flags, the paths in use.
pub fn describe() -> String {
    format!(
        "cpu: {} | flags: {} | simd path: {} | gemm: {}",
        cpu_model(),
        cpu_flags().join(" "),
        Simd::active().path(),
        gemm_path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for p in Path::ALL {
            assert_eq!(Path::parse(p.name()), Ok(p));
        }
        assert_eq!(Path::parse(" AVX2 "), Ok(Path::Avx2));
        assert!(matches!(Path::parse("sse"), Err(SimdError::Unknown { .. })));
        assert!(Path::Portable.is_supported());
        assert_eq!(Path::supported()[0], Path::best());
    }

    #[test]
    fn with_path_switches_this_thread_and_restores() {
        let before = Simd::active();
        for p in Path::supported() {
            let inner = with_path(p, || (Simd::active().path(), std::thread::spawn(Simd::active).join().ok())).unwrap();
            assert_eq!(inner.0, p);
            // Other threads keep the process-wide path.
            assert_eq!(inner.1, Some(before));
            assert_eq!(Simd::active(), before);
        }
    }

    #[test]
    fn each_build_reports_its_own_path() {
        struct Which;
        impl Kernel for Which {
            type Output = Path;
            #[inline(always)]
            fn run<I: Isa>(self) -> Path {
                I::PATH
            }
        }
        for p in Path::supported() {
            assert_eq!(Simd::new(p).unwrap().run(Which), p);
        }
        for p in Path::ALL.into_iter().filter(|p| !p.is_supported()) {
            assert!(matches!(Simd::new(p), Err(SimdError::Unsupported { .. })));
        }
    }
}
