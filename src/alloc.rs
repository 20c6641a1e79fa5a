//! Allocator tuning for the training and restoring paths.
//!
//! The binary and the benchmarks use mimalloc as the global allocator. By default mimalloc
//! returns freed memory to the kernel after a delay (1 s), and training, which frees and
//! reallocates tens of megabytes of activations and gradients every step, then keeps
//! faulting fresh pages back in. [`keep_freed_memory`] turns that off.

/// mimalloc v3's `mi_option_purge_decommits` (see its `mimalloc.h`; the bundled version is
/// pinned by Cargo.lock, and a test checks that both indices hold their documented
/// defaults before being set, so a renumbering upstream fails the test).
const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;
/// mimalloc v3's `mi_option_purge_delay`.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory committed for reuse instead of handing it back to the kernel.
/// Measured over one run of `cargo bench --bench train_ops`: page faults 80,187 before,
/// 882 after; CPU time 27.1 s before, 25.7 s after.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is a plain store into mimalloc's option table, valid at
    // any time and from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

#[cfg(test)]
mod tests {
    // SAFETY: reading an option is a plain load from mimalloc's option table.
    fn read() -> (std::os::raw::c_long, std::os::raw::c_long) {
        unsafe { (libmimalloc_sys::mi_option_get(super::PURGE_DECOMMITS), libmimalloc_sys::mi_option_get(super::PURGE_DELAY)) }
    }

    #[test]
    fn the_indices_are_the_purge_options() {
        // The defaults (purge_decommits = 1, purge_delay = 1000 ms, as MIMALLOC_VERBOSE=1
        // lists them) identify the options; unless the environment overrides them.
        if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_none() && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(read(), (1, 1000));
        }
        super::keep_freed_memory();
        assert_eq!(read(), (0, -1));
    }
}
