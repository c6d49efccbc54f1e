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
//!
//! It also keeps freed tensor buffers in the process (glibc only). glibc
//! serves every allocation above its mmap threshold (128 KiB, growing to at
//! most 32 MiB) with a fresh `mmap` and unmaps it on free, so each
//! activation, gradient and im2col buffer of every step arrives as new
//! pages that the kernel must fault in and zero: 28% of a 4-step sample of
//! bench/compare's small UNet (1274 -> 918 ms) and 15% of its training step
//! (1123 -> 951 ms), at the same peak memory. With the threshold at its
//! 32 MiB maximum and trimming off, freed memory is reused instead; the
//! resident size then stays at its high-water mark. Buffers above 32 MiB
//! (an attention's score matrix, a large weight's gradient) were still
//! fresh maps: with mmap off altogether (glibc still maps when a thread's
//! arena cannot grow) the small UNet's training step went 943 -> 894 ms
//! and the SD 2.1 LoRA step 1608 -> 1448 ms, again at the same peak.

/// Keep candle's element-wise ops on the calling thread
/// (`CANDLE_NUM_THREADS=1`) unless the user set `CANDLE_NUM_THREADS`.
/// Call first thing in `main`, before any tensor op: candle reads the
/// variable once, when its pool starts, and setting the environment is only
/// sound while the program has a single thread.
/// Also sets glibc's allocator to reuse freed buffers (see the module
/// comment) unless `PSOTUNE_KEEP_MALLOC` is set.
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("PSOTUNE_KEEP_MALLOC").is_none() {
        reuse_freed_buffers();
    }
}

/// glibc: the largest mmap threshold mallopt accepts on 64-bit (32 MiB),
/// no mmap for allocations of the main heap, and no trimming of the heap
/// top. Returns whether the settings took.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn reuse_freed_buffers() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before the program allocates tensors and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

/// Other C libraries keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn reuse_freed_buffers() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_allocator_settings() {
        assert!(super::reuse_freed_buffers());
    }
}
