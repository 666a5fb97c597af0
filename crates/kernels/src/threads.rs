//! One thread pool for the CPU: rayon's.
//!
//! Candle 0.11 runs its elementwise CPU ops (the adds, multiplies and reductions of every
//! backward pass) on a pool of its own, `candle-bp-*` threads, `CANDLE_NUM_THREADS - 1` of them,
//! whose workers spin for 25,000 `pause` instructions after each op before they park. Our
//! convolutions, fused ops and Candle's own matmul run on rayon's pool. On this project's 2-core
//! machines the two pools then want three cores: perf on a `reproduce table2 --preset quick` run
//! put 30% of the process's CPU time in the Candle workers' spin loop, taken from the rayon
//! threads doing the work. With `CANDLE_NUM_THREADS=1` Candle's pool has no workers and its
//! elementwise ops run on the calling thread; in the same run (`cargo bench -p eabs-models
//! --bench train_step`) the E-ABS training step at batch 128 went from 1.58 s to 1.15 s and the
//! 1000-latent gradient step from 0.88 s to 0.54 s.
//!
//! Like [`crate::retain_freed_memory`], a process-wide choice that the library never makes by
//! itself: binaries call [`single_candle_thread`] (or [`crate::tune_process`]) first thing in
//! `main`, before any tensor op creates Candle's pool.

/// Sets `CANDLE_NUM_THREADS=1` unless the user has set it, so that Candle's elementwise ops run
/// on the calling thread and rayon's pool has the cores to itself. Returns whether it set the
/// variable. Has no effect once Candle's pool exists (its size is read once, at its first use),
/// so call it at the start of `main`, before other threads start.
pub fn single_candle_thread() -> bool {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return false;
    }
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    true
}
