//! Fused sampler updates: [`q_sample`], one DDIM step ([`ddim_step`]) and one
//! DPM-Solver++(2M) step ([`dpmpp_2m_step`]), each one pass over the latents.
//!
//! The formulas are those of spritedx-samplers' `steps` module, element by element and in
//! the same order of f32 operations, with `α_t = √ᾱ_t`, `σ_t = √(1 - ᾱ_t)`:
//!
//! - `x̂_0 = (x_t - σ_t ε̂)/α_t` and `ε̂ = ε̂` for ε-prediction,
//!   `x̂_0 = α_t x_t - σ_t v̂` and `ε̂ = σ_t x_t + α_t v̂` for v-prediction;
//! - q_sample: `x_t = α_t x_0 + σ_t z`;
//! - DDIM: `x_s = √ᾱ_s x̂_0 + √(1 - ᾱ_s - σ²) ε̂ + σ z` (no last term without noise);
//! - DPM-Solver++(2M): `x_s = (σ_s/σ_t) x_t + α_s (1 - e^{-h}) D` with
//!   `D = x̂_0 + (x̂_0 - x̂_0,prev)/(2r)`, or `D = x̂_0` without a previous `x̂_0`.
//!
//! # Coefficients
//!
//! The coefficients come from a table, one row per schedule step (or one per sample), and
//! sample `b` uses row `rows[b]`: the table is built once per sampling run (in f64, then
//! rounded, as the samplers crate does) and stays on the device, and each step only needs
//! the per-sample row indices. Rows are [`NoiseRow`], [`DdimRow`] and [`DpmSolverRow`];
//! [`coefficient_table`] makes the (R, width) f32 tensor of a slice of them.
//!
//! # Where it runs
//!
//! The tensor functions are candle custom ops: on the CPU they run the Rust reference
//! ([`reference`]), on a CUDA device (with the `cuda` feature) the kernels of
//! `cuda/sampler.cu`. Inputs are f32 with the batch first; the table and the row indices
//! must live on the same device. An invalid row (outside the table, or a second-order
//! DPM-Solver++ row without a previous `x̂_0`) is an error on the CPU and gives NaN for
//! that sample on the GPU, where checking would mean reading the rows back to the host.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

/// What a network predicts from `x_t = α_t x_0 + σ_t ε`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise `ε`.
    Eps,
    /// The velocity `v = α_t ε - σ_t x_0`.
    V,
}

impl Prediction {
    /// The kernels' `v_prediction` flag.
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn v_flag(self) -> i32 {
        i32::from(self == Prediction::V)
    }
}

/// A row of a coefficient table: a fixed number of f32 values, laid out as the kernels'
/// structs of the same name.
pub trait CoefficientRow: Copy {
    /// Values per row.
    const WIDTH: usize;
    /// The row of `WIDTH` values, in field order.
    fn from_values(values: &[f32]) -> Self;
    /// The row's values, in field order.
    fn values(&self) -> Vec<f32>;
}

/// Defines a `#[repr(C)]` row of f32 fields and its [`CoefficientRow`] impl.
macro_rules! coefficient_row {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Default)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: f32,)+
        }

        impl CoefficientRow for $name {
            const WIDTH: usize = [$(stringify!($field)),+].len();

            fn from_values(values: &[f32]) -> Self {
                let mut it = values.iter().copied();
                Self { $($field: it.next().expect("a row has WIDTH values"),)+ }
            }

            fn values(&self) -> Vec<f32> {
                vec![$(self.$field),+]
            }
        }
    };
}

coefficient_row!(
    /// The coefficients of [`q_sample`]: `x_t = alpha x_0 + sigma z`.
    NoiseRow {
        /// `α_t = √ᾱ_t`.
        alpha,
        /// `σ_t = √(1 - ᾱ_t)`.
        sigma,
    }
);

coefficient_row!(
    /// The coefficients of a DDIM step from level `t` to level `s`
    /// (spritedx-samplers' `NoiseLevel` and `DdimCoefficients`).
    DdimRow {
        /// `α_t = √ᾱ_t`.
        alpha,
        /// `σ_t = √(1 - ᾱ_t)`.
        sigma,
        /// `√ᾱ_s`.
        alpha_prev,
        /// `√(1 - ᾱ_s - noise_std²)`, the weight of the predicted noise.
        direction,
        /// `η √((1 - ᾱ_s)/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)`, the weight of the fresh noise.
        noise_std,
    }
);

coefficient_row!(
    /// The coefficients of a DPM-Solver++(2M) step from level `t` to level `s`
    /// (spritedx-samplers' `NoiseLevel` and `DpmSolverCoefficients`).
    DpmSolverRow {
        /// `α_t = √ᾱ_t`.
        alpha,
        /// `σ_t = √(1 - ᾱ_t)`.
        sigma,
        /// `σ_s/σ_t`.
        sigma_ratio,
        /// `α_s (1 - e^{-h})`.
        data_coef,
        /// `1/(2r)` for a second-order update, 0 for a first-order one.
        correction,
    }
);

/// The (R, `R::WIDTH`) f32 tensor of a table of coefficient rows, on `device`.
pub fn coefficient_table<R: CoefficientRow>(rows: &[R], device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = rows.iter().flat_map(|r| r.values()).collect();
    Tensor::from_vec(values, (rows.len(), R::WIDTH), device)
}

/// The Rust reference of the kernels, on contiguous f32 slices: `rows[b]` is sample `b`'s
/// row of `table`, and each sample is `len / rows.len()` consecutive elements.
pub mod reference {
    use super::{DdimRow, DpmSolverRow, NoiseRow, Prediction};
    use candle_core::{bail, Result};

    /// `x̂_0` from `x_t` and the network's output `m` at level (`alpha`, `sigma`).
    #[inline]
    pub fn predict_x0(x: f32, m: f32, alpha: f32, sigma: f32, prediction: Prediction) -> f32 {
        match prediction {
            Prediction::Eps => (x - sigma * m) / alpha,
            Prediction::V => alpha * x - sigma * m,
        }
    }

    /// `ε̂` from `x_t` and the network's output `m` at level (`alpha`, `sigma`).
    #[inline]
    pub fn predict_eps(x: f32, m: f32, alpha: f32, sigma: f32, prediction: Prediction) -> f32 {
        match prediction {
            Prediction::Eps => m,
            Prediction::V => sigma * x + alpha * m,
        }
    }

    /// `out = α x0 + σ noise`, per sample.
    pub fn q_sample(
        x0: &[f32],
        noise: &[f32],
        table: &[NoiseRow],
        rows: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        let n = per_sample_len(x0.len(), rows.len())?;
        check_len("noise", noise.len(), x0.len())?;
        check_len("out", out.len(), x0.len())?;
        for (b, &row) in rows.iter().enumerate() {
            let c = lookup(table, row, b)?;
            let span = b * n..(b + 1) * n;
            for ((o, &x), &z) in out[span.clone()]
                .iter_mut()
                .zip(&x0[span.clone()])
                .zip(&noise[span])
            {
                *o = c.alpha * x + c.sigma * z;
            }
        }
        Ok(())
    }

    /// One DDIM step per sample into `out`; `noise = None` drops the noise term.
    pub fn ddim_step(
        x_t: &[f32],
        model_output: &[f32],
        noise: Option<&[f32]>,
        table: &[DdimRow],
        rows: &[u32],
        prediction: Prediction,
        out: &mut [f32],
    ) -> Result<()> {
        let n = per_sample_len(x_t.len(), rows.len())?;
        check_len("model_output", model_output.len(), x_t.len())?;
        check_len("out", out.len(), x_t.len())?;
        if let Some(z) = noise {
            check_len("noise", z.len(), x_t.len())?;
        }
        for (b, &row) in rows.iter().enumerate() {
            let c = lookup(table, row, b)?;
            for k in b * n..(b + 1) * n {
                let (x, m) = (x_t[k], model_output[k]);
                let x0 = predict_x0(x, m, c.alpha, c.sigma, prediction);
                let eps = predict_eps(x, m, c.alpha, c.sigma, prediction);
                let next = c.alpha_prev * x0 + c.direction * eps;
                out[k] = match noise {
                    Some(z) => next + c.noise_std * z[k],
                    None => next,
                };
            }
        }
        Ok(())
    }

    /// One DPM-Solver++(2M) step per sample: `x_s` into `x_prev` and this step's `x̂_0`
    /// into `x0`. Without `prev_x0`, every row must be first order (correction 0).
    #[allow(clippy::too_many_arguments)]
    pub fn dpmpp_2m_step(
        x_t: &[f32],
        model_output: &[f32],
        prev_x0: Option<&[f32]>,
        table: &[DpmSolverRow],
        rows: &[u32],
        prediction: Prediction,
        x_prev: &mut [f32],
        x0: &mut [f32],
    ) -> Result<()> {
        let n = per_sample_len(x_t.len(), rows.len())?;
        check_len("model_output", model_output.len(), x_t.len())?;
        check_len("x_prev", x_prev.len(), x_t.len())?;
        check_len("x0", x0.len(), x_t.len())?;
        if let Some(p) = prev_x0 {
            check_len("prev_x0", p.len(), x_t.len())?;
        }
        for (b, &row) in rows.iter().enumerate() {
            let c = lookup(table, row, b)?;
            if prev_x0.is_none() && c.correction != 0.0 {
                bail!(
                    "sample {b} takes a second-order DPM-Solver++ step (row {row}, correction {}), \
                     which needs the previous step's x0 prediction",
                    c.correction
                );
            }
            for k in b * n..(b + 1) * n {
                let x = x_t[k];
                let x0_k = predict_x0(x, model_output[k], c.alpha, c.sigma, prediction);
                let d = match prev_x0 {
                    Some(p) => x0_k + c.correction * (x0_k - p[k]),
                    None => x0_k,
                };
                x_prev[k] = c.sigma_ratio * x + c.data_coef * d;
                x0[k] = x0_k;
            }
        }
        Ok(())
    }

    /// Elements per sample of a `len`-element batch of `batch` samples.
    fn per_sample_len(len: usize, batch: usize) -> Result<usize> {
        if batch == 0 {
            if len != 0 {
                bail!("{len} elements but no per-sample row indices");
            }
            return Ok(0);
        }
        if len % batch != 0 {
            bail!("{len} elements do not split into {batch} samples");
        }
        Ok(len / batch)
    }

    fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
        if len != expected {
            bail!("{what} has {len} elements, expected {expected}");
        }
        Ok(())
    }

    fn lookup<R: Copy>(table: &[R], row: u32, sample: usize) -> Result<R> {
        match table.get(row as usize) {
            Some(&r) => Ok(r),
            None => bail!(
                "sample {sample} asks for coefficient row {row} of a table of {} rows",
                table.len()
            ),
        }
    }
}

/// Diffuses clean data to its sample's level: `x_t = α x_0 + σ noise`.
///
/// `x0` and `noise` are f32 of one shape (B, ...); `table` is (R, 2) f32 ([`NoiseRow`]s)
/// and `rows` (B,) u32.
pub fn q_sample(x0: &Tensor, noise: &Tensor, table: &Tensor, rows: &Tensor) -> Result<Tensor> {
    check_step_inputs(
        "q_sample",
        x0,
        &[("noise", noise)],
        table,
        NoiseRow::WIDTH,
        rows,
    )?;
    let op = QSample {
        table: table.contiguous()?,
        rows: rows.contiguous()?,
    };
    x0.contiguous()?.apply_op2_no_bwd(&noise.contiguous()?, &op)
}

/// One DDIM step of every sample from its level to the next.
///
/// `x_t` and `model_output` (and `noise` when given) are f32 of one shape (B, ...);
/// `table` is (R, 5) f32 ([`DdimRow`]s) and `rows` (B,) u32. `noise = None` drops the
/// noise term (deterministic DDIM, `η = 0`).
pub fn ddim_step(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    table: &Tensor,
    rows: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let mut others = vec![("model_output", model_output)];
    others.extend(noise.map(|z| ("noise", z)));
    check_step_inputs("ddim_step", x_t, &others, table, DdimRow::WIDTH, rows)?;
    let op = DdimStep {
        prediction,
        table: table.contiguous()?,
        rows: rows.contiguous()?,
        noise: noise.map(Tensor::contiguous).transpose()?,
    };
    x_t.contiguous()?
        .apply_op2_no_bwd(&model_output.contiguous()?, &op)
}

/// One DPM-Solver++(2M) step of every sample; returns `(x_s, x̂_0)`, and `x̂_0` is the
/// `prev_x0` of the next step.
///
/// `x_t` and `model_output` (and `prev_x0` when given) are f32 of one shape (B, ...);
/// `table` is (R, 5) f32 ([`DpmSolverRow`]s) and `rows` (B,) u32. Without `prev_x0`
/// every sample's row must be first order (correction 0).
pub fn dpmpp_2m_step(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    table: &Tensor,
    rows: &Tensor,
    prev_x0: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let mut others = vec![("model_output", model_output)];
    others.extend(prev_x0.map(|p| ("prev_x0", p)));
    check_step_inputs(
        "dpmpp_2m_step",
        x_t,
        &others,
        table,
        DpmSolverRow::WIDTH,
        rows,
    )?;
    let op = DpmSolverStep {
        prediction,
        table: table.contiguous()?,
        rows: rows.contiguous()?,
        prev_x0: prev_x0.map(Tensor::contiguous).transpose()?,
    };
    // The op returns x_s and x̂_0 stacked on a new first axis.
    let both = x_t
        .contiguous()?
        .apply_op2_no_bwd(&model_output.contiguous()?, &op)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// Checks dtypes, shapes and devices of a step's inputs, with errors that say which input
/// is wrong and how.
fn check_step_inputs(
    op: &str,
    x: &Tensor,
    others: &[(&str, &Tensor)],
    table: &Tensor,
    width: usize,
    rows: &Tensor,
) -> Result<()> {
    if x.dtype() != DType::F32 {
        bail!(
            "{op}: the fused kernels take f32 latents, got {:?} (convert with to_dtype)",
            x.dtype()
        );
    }
    if x.rank() == 0 {
        bail!("{op}: the latents need a batch axis first, got a scalar");
    }
    for (name, t) in others {
        if t.dims() != x.dims() || t.dtype() != DType::F32 {
            bail!(
                "{op}: {name} must be f32 of the latents' shape {:?}, got {:?} {:?}",
                x.dims(),
                t.dtype(),
                t.dims()
            );
        }
        if !t.device().same_device(x.device()) {
            bail!(
                "{op}: {name} is on {:?} but the latents are on {:?}",
                t.device(),
                x.device()
            );
        }
    }
    match table.dims() {
        [_, w] if *w == width && table.dtype() == DType::F32 => {}
        dims => bail!(
            "{op}: the coefficient table must be (rows, {width}) f32, got {:?} {dims:?}",
            table.dtype()
        ),
    }
    let batch = x.dim(0)?;
    if rows.dims() != [batch] || rows.dtype() != DType::U32 {
        bail!(
            "{op}: the row indices must be ({batch},) u32, one per sample, got {:?} {:?}",
            rows.dtype(),
            rows.dims()
        );
    }
    for (name, t) in [("coefficient table", table), ("row indices", rows)] {
        if !t.device().same_device(x.device()) {
            bail!(
                "{op}: the {name} are on {:?} but the latents are on {:?}",
                t.device(),
                x.device()
            );
        }
    }
    Ok(())
}

/// The contiguous f32 or u32 data of a custom op's CPU input.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("internal error: a kernel input is not contiguous"),
    }
}

/// The values of a small CPU tensor (a coefficient table or row indices) as a vector.
pub(crate) fn host_values<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

fn host_table<R: CoefficientRow>(table: &Tensor) -> Result<Vec<R>> {
    Ok(host_values::<f32>(table)?
        .chunks_exact(R::WIDTH)
        .map(R::from_values)
        .collect())
}

/// The custom op of [`q_sample`] on (x0, noise).
pub(crate) struct QSample {
    pub table: Tensor,
    pub rows: Tensor,
}

/// The custom op of [`ddim_step`] on (x_t, model_output).
pub(crate) struct DdimStep {
    pub prediction: Prediction,
    pub table: Tensor,
    pub rows: Tensor,
    pub noise: Option<Tensor>,
}

/// The custom op of [`dpmpp_2m_step`] on (x_t, model_output); its output is (2, ...):
/// `x_s` then `x̂_0`.
pub(crate) struct DpmSolverStep {
    pub prediction: Prediction,
    pub table: Tensor,
    pub rows: Tensor,
    pub prev_x0: Option<Tensor>,
}

impl CustomOp2 for QSample {
    fn name(&self) -> &'static str {
        "spritedx-q-sample"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x0, noise) = (cpu_slice::<f32>(s1, l1)?, cpu_slice::<f32>(s2, l2)?);
        let mut out = vec![0f32; x0.len()];
        let table = host_table::<NoiseRow>(&self.table)?;
        reference::q_sample(x0, noise, &table, &host_values(&self.rows)?, &mut out)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::q_sample(self, s1, l1, s2, l2)
    }
}

impl CustomOp2 for DdimStep {
    fn name(&self) -> &'static str {
        "spritedx-ddim-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_t, model_output) = (cpu_slice::<f32>(s1, l1)?, cpu_slice::<f32>(s2, l2)?);
        let noise = self.noise.as_ref().map(host_values::<f32>).transpose()?;
        let mut out = vec![0f32; x_t.len()];
        let table = host_table::<DdimRow>(&self.table)?;
        let rows = host_values(&self.rows)?;
        reference::ddim_step(
            x_t,
            model_output,
            noise.as_deref(),
            &table,
            &rows,
            self.prediction,
            &mut out,
        )?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ddim_step(self, s1, l1, s2, l2)
    }
}

impl CustomOp2 for DpmSolverStep {
    fn name(&self) -> &'static str {
        "spritedx-dpmpp-2m-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_t, model_output) = (cpu_slice::<f32>(s1, l1)?, cpu_slice::<f32>(s2, l2)?);
        let prev_x0 = self.prev_x0.as_ref().map(host_values::<f32>).transpose()?;
        let n = x_t.len();
        let mut out = vec![0f32; 2 * n];
        let (x_prev, x0) = out.split_at_mut(n);
        let table = host_table::<DpmSolverRow>(&self.table)?;
        let rows = host_values(&self.rows)?;
        reference::dpmpp_2m_step(
            x_t,
            model_output,
            prev_x0.as_deref(),
            &table,
            &rows,
            self.prediction,
            x_prev,
            x0,
        )?;
        Ok((CpuStorage::F32(out), stacked_shape(l1.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::dpmpp_2m_step(self, s1, l1, s2, l2)
    }
}

/// The shape (2, ...) of two tensors of `shape` stacked.
pub(crate) fn stacked_shape(shape: &Shape) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(shape.dims());
    Shape::from(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    /// The tensor ops on the CPU are the reference: a hand-checked DDIM step with two
    /// samples at different rows, exact (the values are chosen to be exact in f32).
    #[test]
    fn ddim_step_uses_each_samples_row() {
        let x_t = tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let eps = tensor(&[0.5, 0.5, -1.0, 1.0], &[2, 2]);
        let table = coefficient_table(
            &[
                DdimRow {
                    alpha: 0.5,
                    sigma: 0.5,
                    alpha_prev: 1.0,
                    direction: 0.0,
                    noise_std: 0.0,
                },
                DdimRow {
                    alpha: 1.0,
                    sigma: 0.0,
                    alpha_prev: 2.0,
                    direction: 1.0,
                    noise_std: 0.0,
                },
            ],
            &Device::Cpu,
        )
        .unwrap();
        let rows = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let out = ddim_step(&x_t, &eps, Prediction::Eps, &table, &rows, None).unwrap();
        // Sample 0, row 1: x0 = x, out = 2 x + eps. Sample 1, row 0: x0 = (x - eps/2)/(1/2).
        let expected = [2.5, 4.5, 7.0, 7.0];
        assert_eq!(
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected
        );
    }

    #[test]
    fn invalid_inputs_are_errors_that_name_the_problem() {
        let x = tensor(&[1.0; 4], &[2, 2]);
        let table = coefficient_table(
            &[NoiseRow {
                alpha: 1.0,
                sigma: 0.0,
            }],
            &Device::Cpu,
        )
        .unwrap();
        let rows = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let err = q_sample(&x, &x, &table, &rows).unwrap_err().to_string();
        assert!(err.contains("row 1 of a table of 1 rows"), "{err}");
        let short_rows = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let err = q_sample(&x, &x, &table, &short_rows)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one per sample"), "{err}");
        let dpm = coefficient_table(
            &[DpmSolverRow {
                alpha: 1.0,
                sigma: 1.0,
                sigma_ratio: 1.0,
                data_coef: 1.0,
                correction: 0.5,
            }],
            &Device::Cpu,
        )
        .unwrap();
        let zeros = Tensor::new(&[0u32, 0], &Device::Cpu).unwrap();
        let err = dpmpp_2m_step(&x, &x, Prediction::Eps, &dpm, &zeros, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs the previous step's x0"), "{err}");
        let half = x.to_dtype(DType::F16).unwrap();
        let err = q_sample(&half, &half, &table, &zeros)
            .unwrap_err()
            .to_string();
        assert!(err.contains("f32"), "{err}");
    }
}
