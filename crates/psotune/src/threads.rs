//! CPU thread setup for programs that use psotune.
//!
//! candle 0.11 runs its element-wise CPU ops (add, mul, affine, ...) on its
//! own "barrier pool" of `CANDLE_NUM_THREADS - 1` workers (default: one per
//! core, `RAYON_NUM_THREADS` if set), beside rayon's pool that the matrix
//! multiplies and psotune's kernels use. Those workers, and the caller
//! waiting for them, busy-spin (25k spins) between ops. With both pools
//! sized to the cores they fight over them; on a machine with other load,
//! a spinning thread holds a core that the thread it waits for needs. On
//! the emoji UNet's training step (2 cores, load ~9) this made a step 3.4x
//! slower: 54 s against 16 s with a single-threaded barrier pool. The ops
//! that matter run in rayon anyway (gemm, psotune's fused kernels).

/// Keep candle's element-wise ops on the calling thread
/// (`CANDLE_NUM_THREADS=1`) unless the user set `CANDLE_NUM_THREADS`.
/// Call first thing in `main`, before any tensor op: candle reads the
/// variable once, when its pool starts, and setting the environment is only
/// sound while the program has a single thread.
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
