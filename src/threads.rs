//! Thread-pool tuning for the binary and the benchmarks.
//!
//! candle runs its elementwise ops on a pool of its own beside rayon's, which runs the
//! matmuls and this crate's ops. On two cores the two pools take turns at best: a candle
//! op hands its chunks to the pool's workers and waits at a barrier, and the workers spin
//! after each op before they park, taking a core from the matmul that follows. Here the
//! heavy work (convolutions, normalisation, the transformer's fused ops) is rayon's, and
//! candle's remaining elementwise ops (additions, gradient accumulation) cost less run
//! inline on the calling thread than handed around. [`keep_candle_ops_on_the_calling_thread`]
//! sizes candle's pool to the calling thread alone. Measured on 2 cores, two runs each:
//! the diffusion restorer's training step 857-939 ms with candle's pool, 733-795 ms
//! without; 10 steps of the issue-4 benchmark net 3.28-3.54 s against 3.06-3.14 s.

/// Sets candle's `CANDLE_NUM_THREADS` to 1 (its pool then has no workers of its own)
/// unless the environment already sets it. candle reads it when its pool starts, at the
/// first parallel op, so call this first thing in `main`, before any other thread exists
/// (changing the environment is not thread-safe). rayon's pool, which the matmuls use,
/// keeps `RAYON_NUM_THREADS` or one thread per core.
pub fn keep_candle_ops_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
