//! Training-op speed: our NHWC im2col convolution against candle's own conv2d, forward and
//! backward, on the shape of the restorer's network (batch 16, 64 channels, 32x32).
//! `cargo bench -p spritedx-bench --bench train_ops`. Compare the ratios, not the times.

use candle_core::{Device, Tensor, Var};
use spritedx::nn::conv::Conv3x3;
use spritedx::nn::norm::{group_norm_silu, reference_group_norm_silu};
use std::time::Instant;

// As in the spritedx binary: glibc's malloc page-faults on the many large temporaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() -> candle_core::Result<()> {
    let quick = std::env::var_os("SPRITEDX_BENCH_QUICK").is_some();
    let runs = if quick { 1 } else { 7 };
    let (n, h, w, c) = (16, 32, 32, 64);
    let dev = Device::Cpu;
    let x_nhwc = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, h, w, c), &dev)?)?;
    let x_nchw = Var::from_tensor(&x_nhwc.as_tensor().permute((0, 3, 1, 2))?.contiguous()?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev)?)?;
    let ours = Conv3x3 { weight: Conv3x3::weight_from_oihw(k.as_tensor())?, bias: None, stride: 1 };
    let ours_w = Var::from_tensor(&ours.weight)?;
    let ours = Conv3x3 { weight: ours_w.as_tensor().clone(), bias: None, stride: 1 };

    let ours_fwd = median_ms(runs, || {
        ours.forward(x_nhwc.as_tensor()).unwrap();
    });
    let candle_fwd = median_ms(runs, || {
        x_nchw.as_tensor().conv2d(k.as_tensor(), 1, 1, 1, 1).unwrap();
    });
    let ours_step = median_ms(runs, || {
        ours.forward(x_nhwc.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    });
    let candle_step = median_ms(runs, || {
        x_nchw.as_tensor().conv2d(k.as_tensor(), 1, 1, 1, 1).unwrap().sum_all().unwrap().backward().unwrap();
    });
    let gamma = Var::from_tensor(&Tensor::ones(c, candle_core::DType::F32, &dev)?)?;
    let beta = Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, &dev)?)?;
    let gn = |fused: bool| {
        let f = if fused { group_norm_silu } else { reference_group_norm_silu };
        f(x_nhwc.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 8, 1e-5).unwrap()
    };
    let gn_fused_fwd = median_ms(runs, || {
        gn(true);
    });
    let gn_ref_fwd = median_ms(runs, || {
        gn(false);
    });
    let gn_fused_step = median_ms(runs, || {
        gn(true).sum_all().unwrap().backward().unwrap();
    });
    let gn_ref_step = median_ms(runs, || {
        gn(false).sum_all().unwrap().backward().unwrap();
    });
    println!("conv3x3 {c}->{c} on {n}x{h}x{w} (f32, {} threads), median of {runs}", rayon::current_num_threads());
    println!("{:<28} {:>10} {:>10} {:>8}", "", "ours ms", "candle ms", "ratio");
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward", ours_fwd, candle_fwd, candle_fwd / ours_fwd);
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward + backward", ours_step, candle_step, candle_step / ours_step);
    println!("GroupNorm(8) + SiLU on {n}x{h}x{w}x{c}: fused vs candle's composed ops");
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward", gn_fused_fwd, gn_ref_fwd, gn_ref_fwd / gn_fused_fwd);
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward + backward", gn_fused_step, gn_ref_step, gn_ref_step / gn_fused_step);
    Ok(())
}
