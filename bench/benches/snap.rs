//! `cargo bench -p spritedx-bench`: the throughput table of `spritedx_bench::run`.
//! Set `SPRITEDX_BENCH_QUICK=1` for a smoke run.

// As in the spritedx binary, whose `restore` command this measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    spritedx::alloc::keep_freed_memory();
    spritedx_bench::run()
}
