//! Thread-pool tuning for the binary and the benchmarks.
//!
//! candle runs its elementwise ops on a pool of its own beside rayon's, which runs the
//! matmuls and this crate's ops. After each op candle's workers spin 25,000 times before
//! they park, so on a two-core machine a spinning candle worker takes a core from the
//! matmul that follows. [`limit_candle_pool_spinning`] cuts the spin to
//! [`CANDLE_SPIN_LIMIT`]. Measured on the issue-4 benchmark net (12 training steps, three
//! runs each, 2 cores): 4.17-4.96 s with candle's default, 3.92-3.97 s with 100 spins,
//! 3.94-4.34 s with 1,000 and 4.04-4.28 s with none.

/// The spin count before a candle pool worker parks.
pub const CANDLE_SPIN_LIMIT: u32 = 100;

/// Sets candle's `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`CANDLE_SPIN_LIMIT`] unless the
/// environment already sets it. candle reads it when its pool starts, at the first
/// parallel op, so call this first thing in `main`, before any other thread exists
/// (changing the environment is not thread-safe).
pub fn limit_candle_pool_spinning() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT.to_string());
    }
}

