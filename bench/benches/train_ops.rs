//! Training-op speed: our NHWC im2col convolution against candle's own conv2d, forward and
//! backward, on the shape of the restorer's network (batch 16, 64 channels, 32x32).
//! `cargo bench -p spritedx-bench --bench train_ops`. Compare the ratios, not the times.
//!
//! When `bench/pytorch/.venv` exists (`bash bench/pytorch/setup.sh`), the same run also
//! times `bench/pytorch/train_ops.py` on as many threads as ours (`RAYON_NUM_THREADS`;
//! candle's own elementwise ops run on the calling thread, as in the binary, see
//! `spritedx::threads`) and prints the two side by side with the ratio ours / PyTorch.

use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use spritedx::train::optim::{AdamW, AdamWConfig};
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

/// GroupNorm(8) + SiLU with its affine parameters.
struct NormAct {
    gamma: Tensor,
    beta: Tensor,
}

impl NormAct {
    fn new(vb: VarBuilder, c: usize) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: vb.get_with_hints(c, "gamma", candle_nn::Init::Const(1.0))?,
            beta: vb.get_with_hints(c, "beta", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        group_norm_silu(x, &self.gamma, &self.beta, 8, 1e-5)
    }
}

/// `x + conv(silu(gn(conv(silu(gn(x))))))`, as in bench/pytorch/train_ops.py.
struct Block {
    n1: NormAct,
    c1: Conv3x3,
    n2: NormAct,
    c2: Conv3x3,
}

impl Block {
    fn new(vb: VarBuilder, c: usize) -> candle_core::Result<Self> {
        Ok(Self {
            n1: NormAct::new(vb.pp("n1"), c)?,
            c1: Conv3x3::new(vb.pp("c1"), c, c, true, 1)?,
            n2: NormAct::new(vb.pp("n2"), c)?,
            c2: Conv3x3::new(vb.pp("c2"), c, c, true, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.c1.forward(&self.n1.forward(x)?)?;
        let h = self.c2.forward(&self.n2.forward(&h)?)?;
        x + h
    }
}

/// The net of bench/pytorch/train_ops.py in NHWC: two blocks at 32x32x64, a stride-2 conv
/// to 16x16x128, two blocks, nearest 2x upsampling, a conv back to 64 and the skip.
struct Net {
    top: [Block; 2],
    down: Conv3x3,
    mid: [Block; 2],
    up: Conv3x3,
}

impl Net {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            top: [Block::new(vb.pp("top0"), 64)?, Block::new(vb.pp("top1"), 64)?],
            down: Conv3x3::new(vb.pp("down"), 64, 128, true, 2)?,
            mid: [Block::new(vb.pp("mid0"), 128)?, Block::new(vb.pp("mid1"), 128)?],
            up: Conv3x3::new(vb.pp("up"), 128, 64, true, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.top[1].forward(&self.top[0].forward(x)?)?;
        let d = self.mid[1].forward(&self.mid[0].forward(&self.down.forward(&s)?)?)?;
        // Nearest 2x upsampling as a broadcast, whose backward is a sum (no convolution).
        let (n, h, w, c) = d.dims4()?;
        let up = d.reshape((n, h, 1, w, 1, c))?.broadcast_as((n, h, 2, w, 2, c))?.reshape((n, 2 * h, 2 * w, c))?;
        self.up.forward(&up)? + s
    }
}

fn main() -> candle_core::Result<()> {
    spritedx::alloc::keep_freed_memory();
    spritedx::threads::keep_candle_ops_on_the_calling_thread();
    let quick = std::env::var_os("SPRITEDX_BENCH_QUICK").is_some();
    // 15: on this shared 2-core machine single runs vary by 30%; medians of 7 still moved
    // the full step's ratio between 1.39x and 1.85x from one run of the bench to the next.
    let runs = if quick { 1 } else { 15 };
    let (n, h, w, c) = (16, 32, 32, 64);
    let dev = Device::Cpu;
    let x_nhwc = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, h, w, c), &dev)?)?;
    let x_nchw = Var::from_tensor(&x_nhwc.as_tensor().permute((0, 3, 1, 2))?.contiguous()?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev)?)?;
    let ours = Conv3x3 { weight: Conv3x3::weight_from_oihw(k.as_tensor())?, bias: None, stride: 1 };
    let ours_w = Var::from_tensor(&ours.weight)?;
    let ours = Conv3x3 { weight: ours_w.as_tensor().clone(), bias: None, stride: 1 };

    if let Some(steps) = std::env::var_os("SPRITEDX_BENCH_PROFILE_NET") {
        // Only the net's full step, this many times: for a profiler.
        let steps: usize = steps.to_str().and_then(|s| s.parse().ok()).expect("SPRITEDX_BENCH_PROFILE_NET=STEPS");
        let varmap = VarMap::new();
        let net = Net::new(VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev))?;
        let target = Tensor::randn(0f32, 1.0, (n, h, w, c), &dev)?;
        let mut opt = adamw(trained_vars(&varmap, None))?;
        for _ in 0..steps {
            opt.step(&net.forward(x_nhwc.as_tensor())?.sub(&target)?.sqr()?.mean_all()?.backward()?)?;
        }
        return Ok(());
    }
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
    let varmap = VarMap::new();
    let net = Net::new(VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev))?;
    let target = Tensor::randn(0f32, 1.0, (n, h, w, c), &dev)?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = adamw(trained_vars(&varmap, None))?;
    let loss = |x: &Tensor| net.forward(x).unwrap().sub(&target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss(x_nhwc.as_tensor()).backward()?;
    let optimizer_step = median_ms(runs, || {
        opt.step(&grads).unwrap();
    });
    let net = training_times(runs, || loss(x_nhwc.as_tensor()), &mut opt);
    let restorers = restorer_nets(runs)?;
    println!("conv3x3 {c}->{c} on {n}x{h}x{w} (f32, {} threads), median of {runs}", rayon::current_num_threads());
    println!("{:<28} {:>10} {:>10} {:>8}", "", "ours ms", "candle ms", "ratio");
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward", ours_fwd, candle_fwd, candle_fwd / ours_fwd);
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward + backward", ours_step, candle_step, candle_step / ours_step);
    println!("GroupNorm(8) + SiLU on {n}x{h}x{w}x{c}: fused vs candle's composed ops");
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward", gn_fused_fwd, gn_ref_fwd, gn_ref_fwd / gn_fused_fwd);
    println!("{:<28} {:>10.1} {:>10.1} {:>7.2}x", "forward + backward", gn_fused_step, gn_ref_step, gn_ref_step / gn_fused_step);
    println!("net of bench/pytorch/train_ops.py ({params} parameters), MSE + AdamW, ours (NHWC ops):");
    println!("{:<28} {:>10.1}", "forward ms", net.forward);
    println!("{:<28} {:>10.1}", "backward ms", net.backward);
    println!("{:<28} {:>10.1}", "AdamW update ms", optimizer_step);
    println!("{:<28} {:>10.1}", "full step ms", net.step);
    for (name, params, times, _) in &restorers {
        println!("{name} restorer network ({params} trainable parameters), batch 16 of 16x16 cells, MSE + AdamW:");
        println!("{:<28} {:>10.1}", "forward ms", times.forward);
        println!("{:<28} {:>10.1}", "backward ms", times.backward);
        println!("{:<28} {:>10.1}", "full step ms", times.step);
    }
    match pytorch_times(runs) {
        Ok(torch) => {
            let t = |path: &[&str]| path.iter().fold(&torch, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
            println!("side by side with PyTorch {} on {} threads (ratio = ours / PyTorch; the goal is <= 1.5x):", torch["torch"], torch["threads"]);
            println!("{:<34} {:>10} {:>10} {:>8}", "", "ours ms", "torch ms", "ratio");
            let rows = [
                ("conv3x3 forward", ours_fwd, t(&["ops", "conv3x3 channels_last", "forward_ms"])),
                ("conv3x3 forward + backward", ours_step, t(&["ops", "conv3x3 channels_last", "forward_backward_ms"])),
                ("GroupNorm+SiLU forward", gn_fused_fwd, t(&["ops", "GroupNorm(8)+SiLU chan_last", "forward_ms"])),
                ("GroupNorm+SiLU forward + backward", gn_fused_step, t(&["ops", "GroupNorm(8)+SiLU chan_last", "forward_backward_ms"])),
                ("net forward", net.forward, t(&["net", "forward_ms"])),
                ("net backward", net.backward, t(&["net", "backward_ms"])),
                ("net full step", net.step, t(&["net", "step_ms"])),
            ];
            for (name, ours, torch) in rows {
                println!("{name:<34} {ours:>10.1} {torch:>10.1} {:>7.2}x", ours / torch);
            }
        }
        Err(why) => println!("PyTorch side skipped: {why}"),
    }
    let pytorch_restorers = pytorch_json("restorer_nets.py", runs).and_then(|torch| {
        check_pytorch_manifests(&restorers[0].3, &restorers[1].3).map_err(|why| format!("its networks are not ours: {why}"))?;
        Ok(torch)
    });
    match pytorch_restorers {
        Ok(torch) => {
            println!("the restorer networks side by side with PyTorch {} (bench/pytorch/restorer_nets.py):", torch["torch"]);
            println!("{:<34} {:>10} {:>10} {:>8}", "", "ours ms", "torch ms", "ratio");
            for (name, _, ours, _) in &restorers {
                let theirs = &torch["nets"][*name];
                for (what, ours, key) in [("forward", ours.forward, "forward_ms"), ("backward", ours.backward, "backward_ms"), ("full step", ours.step, "step_ms")] {
                    let torch_ms = theirs[key].as_f64().unwrap_or(f64::NAN);
                    println!("{:<34} {ours:>10.1} {torch_ms:>10.1} {:>7.2}x", format!("{name} {what}"), ours / torch_ms);
                }
            }
        }
        Err(why) => println!("PyTorch side of the restorer networks skipped: {why}"),
    }
    Ok(())
}

/// The training command's AdamW over the net's variables, with PyTorch's hyper-parameters
/// in bench/pytorch/train_ops.py (no gradient clipping there either).
fn adamw(vars: Vec<(String, Var)>) -> candle_core::Result<AdamW> {
    AdamW::new(vars, AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, clip_grad_norm: 0.0 })
}

/// The variables by name, sorted, without those under the prefix `frozen`.
fn trained_vars(varmap: &VarMap, frozen: Option<&str>) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap.data().lock().unwrap().iter().filter(|(k, _)| frozen.is_none_or(|f| !k.starts_with(f))).map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Median forward, backward and full AdamW step of a training loss, in ms.
struct TrainingTimes {
    forward: f64,
    backward: f64,
    step: f64,
}

fn training_times(runs: usize, loss: impl Fn() -> Tensor, opt: &mut AdamW) -> TrainingTimes {
    let forward = median_ms(runs, || {
        loss();
    });
    let mut times = Vec::new();
    for _ in 0..runs + 1 {
        let l = loss();
        let t = Instant::now();
        l.backward().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0); // warm-up
    times.sort_by(f64::total_cmp);
    let backward = times[runs / 2];
    let step = median_ms(runs, || {
        opt.step(&loss().backward().unwrap()).unwrap();
    });
    TrainingTimes { forward, backward, step }
}

/// The learned restorers' trainable networks as the training command builds them from the
/// shipped configs, on its default batch (16 patches of 16x16 cells, factor 4): the fast
/// model (`FastRestorer::forward`) and the diffusion model's network
/// (`DiffusionRestorer::predict`; its frozen base model is not run, its prediction is an
/// input). MSE against a random target, as bench/pytorch/restorer_nets.py does.
///
/// Also returns each network's parameter manifest (`name [d0, d1, ...]` a line, sorted), which
/// restorer_nets.py checks its own networks against.
fn restorer_nets(runs: usize) -> candle_core::Result<Vec<(&'static str, usize, TrainingTimes, String)>> {
    use spritedx::pixel_restorer::{DiffusionRestorer, FastRestorer, PixelRestorerConfig};
    let dev = Device::Cpu;
    let config = |dir: &str| -> PixelRestorerConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../checkpoints").join(dir).join("config.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    };
    let (b, cells) = (16, 16);
    let (fast_cfg, diffusion_cfg) = (config("pixel-restorer-fast"), config("pixel-restorer"));
    // Each network's own input width (with fitted cells, 4 channels more than 4 f²).
    let input_of = |cfg: &PixelRestorerConfig| Tensor::randn(0f32, 1.0, (b, cfg.input_channels(), cells, cells), &dev);
    let target = Tensor::randn(0f32, 1.0, (b, 4, cells, cells), &dev)?;
    let mut out = Vec::new();

    let input = input_of(&fast_cfg)?;
    let varmap = VarMap::new();
    let fast = FastRestorer::new(VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev), &fast_cfg)?;
    let vars = trained_vars(&varmap, None);
    let shapes = manifest(&vars);
    let mut opt = adamw(vars)?;
    let params = opt.parameter_count();
    let times = training_times(runs, || fast.forward(&input).unwrap().sub(&target).unwrap().sqr().unwrap().mean_all().unwrap(), &mut opt);
    out.push(("fast", params, times, shapes));

    let varmap = VarMap::new();
    let input = input_of(&diffusion_cfg)?;
    let diffusion = DiffusionRestorer::new(VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev), &diffusion_cfg).map_err(candle_core::Error::msg)?;
    let vars = trained_vars(&varmap, Some("base."));
    let shapes = manifest(&vars);
    let mut opt = adamw(vars)?;
    let params = opt.parameter_count();
    let (x_t, base) = (Tensor::randn(0f32, 1.0, (b, 4, cells, cells), &dev)?, Tensor::randn(0f32, 1.0, (b, 4, cells, cells), &dev)?);
    let t = Tensor::from_vec((0..b).map(|i| (i * 61 % 1000) as f32).collect::<Vec<_>>(), b, &dev)?;
    let loss = || diffusion.predict(&x_t, &t, &input, Some(&base)).unwrap().sub(&target).unwrap().sqr().unwrap().mean_all().unwrap();
    let times = training_times(runs, loss, &mut opt);
    out.push(("diffusion", params, times, shapes));
    Ok(out)
}

/// `name [d0, d1, ...]` per variable, one a line, in the given order.
fn manifest(vars: &[(String, Var)]) -> String {
    vars.iter().map(|(k, v)| format!("{k} {:?}\n", v.dims())).collect()
}

/// Whether restorer_nets.py's networks have exactly our parameter names and shapes: Ok, or
/// what its `--check-manifest` printed.
fn check_pytorch_manifests(fast: &str, diffusion: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (fast_path, diffusion_path) = (dir.path().join("fast.txt"), dir.path().join("diffusion.txt"));
    std::fs::write(&fast_path, fast).and_then(|_| std::fs::write(&diffusion_path, diffusion)).map_err(|e| e.to_string())?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pytorch");
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("restorer_nets.py"))
        .arg("--check-manifest")
        .args([&fast_path, &diffusion_path])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// Runs bench/pytorch/train_ops.py on this process's thread count and returns its JSON.
fn pytorch_times(runs: usize) -> Result<serde_json::Value, String> {
    pytorch_json("train_ops.py", runs)
}

/// Runs bench/pytorch/SCRIPT with `--json` on this process's thread count and returns its JSON.
fn pytorch_json(script: &str, runs: usize) -> Result<serde_json::Value, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pytorch");
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        return Err(format!("{} not found (run `bash bench/pytorch/setup.sh`)", python.display()));
    }
    let out = std::process::Command::new(&python)
        .arg(root.join(script))
        .arg("--json")
        .env("BENCH_THREADS", rayon::current_num_threads().to_string())
        .env("BENCH_RUNS", runs.to_string())
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{script} printed no JSON: {e}"))
}
