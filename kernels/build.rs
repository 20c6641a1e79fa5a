//! Builds the kernels of `cuda/`:
//! - always, as host C++ with the launch emulator (`cuda/emulation.h`), for the CPU-side
//!   tests that run the kernels' own code against the Rust reference;
//! - with the `cuda` feature, to PTX with nvcc (embedded by `src/cuda.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel sources that become PTX modules, by module name.
const MODULES: [&str; 2] = ["sampler", "decoder"];

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    build_host_emulation();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_ptx();
    }
}

/// The same sources as host C++: exact IEEE single precision in source order, as nvcc is
/// told below (no FMA contraction, no fast math).
fn build_host_emulation() {
    cc::Build::new()
        .cpp(true)
        .file("cuda/emulated.cpp")
        .include("cuda")
        .flag("-std=c++17")
        .flag("-ffp-contract=off")
        .flag("-fno-fast-math")
        .warnings(true)
        .compile("spritedx_kernels_emulated");
}

fn build_ptx() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let nvcc = find_nvcc();
    // compute_80 PTX by default: the driver JIT-compiles it for any later GPU too.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let cap = cap
        .trim()
        .trim_start_matches("sm_")
        .trim_start_matches("compute_")
        .replace('.', "");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for module in MODULES {
        let source = Path::new("cuda").join(format!("{module}.cu"));
        let ptx = out_dir.join(format!("{module}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", &format!("-arch=compute_{cap}"), "-std=c++17"])
            // Exact f32 arithmetic, the same operations as the Rust reference.
            .args([
                "-fmad=false",
                "-prec-div=true",
                "-prec-sqrt=true",
                "-ftz=false",
            ])
            .arg("-o")
            .arg(&ptx)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the `cuda` feature compiles the kernels with nvcc, and running {} failed \
                     ({e}): run `eval \"$(scripts/setup-cuda.sh)\"` or set CUDA_HOME to a CUDA \
                     13.0 toolkit",
                    nvcc.display()
                )
            });
        assert!(
            status.success(),
            "nvcc failed on {} (exit {status})",
            source.display()
        );
    }
}

/// `$NVCC`, else `bin/nvcc` under `$CUDA_HOME`, `$CUDA_ROOT` or `$CUDA_PATH`, else `nvcc`
/// from `PATH`.
fn find_nvcc() -> PathBuf {
    if let Some(nvcc) = std::env::var_os("NVCC") {
        return nvcc.into();
    }
    for var in ["CUDA_HOME", "CUDA_ROOT", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let nvcc = Path::new(&root).join("bin/nvcc");
            if nvcc.exists() {
                return nvcc;
            }
        }
    }
    PathBuf::from("nvcc")
}
