//! The schedules against the StableSR fixture (`tiny_io.safetensors`, produced by
//! StableSR's own PyTorch code; see `shared/fixtures/stablesr/PROVENANCE.md`).
//!
//! Every `schedule.*` tensor of the fixture is checked; the last test fails if one is
//! added that no test covers.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use spritedx_samplers::{space_timesteps, Schedule};

/// One f32 unit roundoff, 2^-24.
const F32_HALF_ULP: f64 = 1.0 / 16_777_216.0;

fn fixture() -> Result<HashMap<String, Tensor>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/stablesr/tiny_io.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
}

fn values(t: &HashMap<String, Tensor>, name: &str) -> Vec<f64> {
    t.get(name)
        .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
        .to_dtype(DType::F64)
        .and_then(|x| x.to_vec1::<f64>())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Asserts `|got - want| <= rel·|want| + abs(i)` everywhere; returns the worst relative
/// error for the log.
fn assert_close(
    name: &str,
    want: &[f64],
    got: &[f64],
    rel: f64,
    abs: impl Fn(usize) -> f64,
) -> f64 {
    assert_eq!(want.len(), got.len(), "{name}: length");
    let mut worst = 0.0f64;
    for (i, (&w, &g)) in want.iter().zip(got).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= rel * w.abs() + abs(i),
            "{name}[{i}]: got {g}, want {w}, |diff| {err:e} over rel {rel:e} + abs {:e}",
            abs(i)
        );
        if w != 0.0 {
            worst = worst.max(err / w.abs());
        }
    }
    println!("{name}: max rel err {worst:.3e}");
    worst
}

fn no_abs(_: usize) -> f64 {
    0.0
}

/// Checks the 12 buffers of LDM's `register_schedule` (named `{prefix}.{buffer}`) against
/// `sched`, whose betas and alphas_cumprod are expected bit-for-bit. The other buffers
/// are f64 formulas of those rounded to f32 (1e-6 relative), except two that the
/// reference evaluates in f32 with cancellation, whose tolerance adds the reference's own
/// rounding error: `log(1 - ᾱ)` (the f32 rounding of `1 - ᾱ`, 2^-24 absolute after the log)
/// and `√(1/ᾱ - 1)` (the f32 rounding of `1/ᾱ` before subtracting 1, at most
/// `2^-24/ᾱ` absolute, halved over the value by the square root).
fn check_ldm_buffers(
    t: &HashMap<String, Tensor>,
    prefix: &str,
    sched: &Schedule,
    seen: &mut BTreeSet<String>,
) {
    let n = sched.len();
    let per_step = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
    let mut check = |buffer: &str, got: Vec<f64>, rel: f64, abs: &dyn Fn(usize) -> f64| {
        let name = format!("{prefix}.{buffer}");
        assert_close(&name, &values(t, &name), &got, rel, abs);
        seen.insert(name);
    };
    check("betas", sched.betas().to_vec(), 0.0, &no_abs);
    check(
        "alphas_cumprod",
        sched.alphas_cumprod().to_vec(),
        0.0,
        &no_abs,
    );
    check(
        "alphas_cumprod_prev",
        per_step(&|i| sched.alphas_cumprod_prev(i)),
        0.0,
        &no_abs,
    );
    let rel = 1e-6;
    check(
        "sqrt_alphas_cumprod",
        per_step(&|i| sched.sqrt_alphas_cumprod(i)),
        rel,
        &no_abs,
    );
    check(
        "sqrt_one_minus_alphas_cumprod",
        per_step(&|i| sched.sqrt_one_minus_alphas_cumprod(i)),
        rel,
        &no_abs,
    );
    check(
        "log_one_minus_alphas_cumprod",
        per_step(&|i| sched.log_one_minus_alphas_cumprod(i)),
        rel,
        &|_| F32_HALF_ULP,
    );
    check(
        "sqrt_recip_alphas_cumprod",
        per_step(&|i| sched.sqrt_recip_alphas_cumprod(i)),
        rel,
        &no_abs,
    );
    let ac = sched.alphas_cumprod().to_vec();
    check(
        "sqrt_recipm1_alphas_cumprod",
        per_step(&|i| sched.sqrt_recipm1_alphas_cumprod(i)),
        rel,
        &|i| F32_HALF_ULP / ac[i] / (2.0 * (1.0 / ac[i] - 1.0).sqrt()),
    );
    check(
        "posterior_variance",
        per_step(&|i| sched.posterior_variance(i)),
        rel,
        &no_abs,
    );
    check(
        "posterior_log_variance_clipped",
        per_step(&|i| sched.posterior_log_variance_clipped(i)),
        rel,
        &no_abs,
    );
    check(
        "posterior_mean_coef1",
        per_step(&|i| sched.posterior_mean_coef1(i)),
        rel,
        &no_abs,
    );
    check(
        "posterior_mean_coef2",
        per_step(&|i| sched.posterior_mean_coef2(i)),
        rel,
        &no_abs,
    );
}

#[test]
fn linear_schedule_matches_the_f64_reference() -> Result<()> {
    let t = fixture()?;
    let s = Schedule::ldm_linear()?;
    // f64 to f64: the same formula, so only last-bit differences of linspace and cumprod.
    assert_close(
        "schedule.linear.betas_f64",
        &values(&t, "schedule.linear.betas_f64"),
        s.betas(),
        1e-12,
        no_abs,
    );
    assert_close(
        "schedule.linear.alphas_cumprod_f64",
        &values(&t, "schedule.linear.alphas_cumprod_f64"),
        s.alphas_cumprod(),
        1e-12,
        no_abs,
    );
    Ok(())
}

#[test]
fn f32_buffers_of_the_direct_schedule_are_our_f64_values_rounded() -> Result<()> {
    // `register_schedule('linear')` computes in f64 and stores f32: our f64 values rounded
    // to f32 must be those f32 values (1e-7 relative allows one rounding of a last-bit
    // difference in the f64 value; ᾱ itself is checked exactly).
    let t = fixture()?;
    let s = Schedule::ldm_linear()?;
    let rounded = |v: Vec<f64>| {
        v.into_iter()
            .map(|x| f64::from(x as f32))
            .collect::<Vec<_>>()
    };
    let n = s.len();
    assert_close(
        "schedule.direct_f32.alphas_cumprod",
        &values(&t, "schedule.direct_f32.alphas_cumprod"),
        &rounded(s.alphas_cumprod().to_vec()),
        0.0,
        no_abs,
    );
    assert_close(
        "schedule.sampling.sqrt_alphas_cumprod_1000",
        &values(&t, "schedule.sampling.sqrt_alphas_cumprod_1000"),
        &rounded((0..n).map(|i| s.sqrt_alphas_cumprod(i)).collect()),
        1e-7,
        no_abs,
    );
    assert_close(
        "schedule.sampling.sqrt_one_minus_alphas_cumprod_1000",
        &values(&t, "schedule.sampling.sqrt_one_minus_alphas_cumprod_1000"),
        &rounded((0..n).map(|i| s.sqrt_one_minus_alphas_cumprod(i)).collect()),
        1e-7,
        no_abs,
    );
    Ok(())
}

#[test]
fn stablesr_buffers_match_the_f32_respacing() -> Result<()> {
    let t = fixture()?;
    let linear = Schedule::ldm_linear()?;
    let mut seen = BTreeSet::new();

    // LatentDiffusionSRTextWT.__init__ respaces its own 1000 steps (time_replace = 1000)
    // in f32, so the checkpoint's buffers are those of the f32 respacing of every step.
    let all: Vec<usize> = (0..1000).collect();
    check_ldm_buffers(
        &t,
        "schedule.ckpt1000",
        &linear.respace_f32(&all)?,
        &mut seen,
    );

    // sr_val_ddpm_text_T_vqganfin_old.py --ddpm_steps 200.
    let keep = space_timesteps(1000, "200")?;
    let ori: Vec<usize> = t["schedule.respaced200.ori_timesteps"]
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(keep, ori, "space_timesteps(1000, \"200\") vs ori_timesteps");
    let respaced = linear.respace_f32(&keep)?;
    assert_eq!(respaced.timesteps(), ori.as_slice());
    check_ldm_buffers(&t, "schedule.respaced200", &respaced, &mut seen);
    assert_eq!(seen.len(), 24);
    Ok(())
}

#[test]
fn f64_respacing_agrees_with_the_f32_one_within_f32_rounding() -> Result<()> {
    // The samplers use the f64 respacing. Its ᾱ differ from the f32 path's by the f32
    // rounding of ᾱ and the drift of the f32 running product (bounded here by 4·2^-24
    // relative), and its betas by the f32 path's error in `1 - ᾱ_k/ᾱ_{k-1}`: three
    // roundings of a ratio near 1, at most 3·2^-24 absolute.
    let linear = Schedule::ldm_linear()?;
    let keep = space_timesteps(1000, "200")?;
    let f64_path = linear.respace(&keep)?;
    let f32_path = linear.respace_f32(&keep)?;
    assert_close(
        "alphas_cumprod f64 vs f32 path",
        f32_path.alphas_cumprod(),
        f64_path.alphas_cumprod(),
        4.0 * F32_HALF_ULP,
        no_abs,
    );
    assert_close(
        "betas f64 vs f32 path",
        f32_path.betas(),
        f64_path.betas(),
        0.0,
        |_| 3.0 * F32_HALF_ULP,
    );
    Ok(())
}

#[test]
fn every_fixture_schedule_tensor_is_checked() -> Result<()> {
    let t = fixture()?;
    let covered: BTreeSet<String> = [
        "schedule.linear.betas_f64",
        "schedule.linear.alphas_cumprod_f64",
        "schedule.direct_f32.alphas_cumprod",
        "schedule.sampling.sqrt_alphas_cumprod_1000",
        "schedule.sampling.sqrt_one_minus_alphas_cumprod_1000",
        "schedule.respaced200.ori_timesteps",
    ]
    .into_iter()
    .map(String::from)
    .chain(
        [
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        ]
        .iter()
        .flat_map(|b| {
            [
                format!("schedule.ckpt1000.{b}"),
                format!("schedule.respaced200.{b}"),
            ]
        }),
    )
    .collect();
    let in_fixture: BTreeSet<String> = t
        .keys()
        .filter(|k| k.starts_with("schedule."))
        .cloned()
        .collect();
    for name in &in_fixture {
        println!("{name}: {:?} {:?}", t[name].dtype(), t[name].dims());
    }
    assert_eq!(
        in_fixture, covered,
        "fixture schedule tensors vs those the tests check"
    );
    Ok(())
}
