//! `cargo bench -p spritedx-bench`: the throughput table of `spritedx_bench::run`.
//! Set `SPRITEDX_BENCH_QUICK=1` for a smoke run.

fn main() -> anyhow::Result<()> {
    spritedx_bench::run()
}
