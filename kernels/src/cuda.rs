//! The CUDA side of the custom ops: the PTX that build.rs compiled from `cuda/`, loaded
//! once per device through candle's module cache, and the kernel launches.
//!
//! Inputs arrive contiguous (the tensor functions call `contiguous()` first); views start
//! at each layout's offset. The extra tensors of an op (coefficient tables, row indices,
//! optional noise or previous `x̂_0`) are read from their storage under a
//! read guard that lives until the launch has been queued; candle's event tracking orders
//! the launch after the writes to every argument.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor};

use crate::decoder::{ReduceCells, CELL_VALUES};
use crate::launch::{self, LaunchDims};
use crate::sampler::{stacked_shape, DdimStep, DpmSolverStep, QSample};

/// PTX of `cuda/sampler.cu`, for the compute capability build.rs was given.
const SAMPLER_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sampler.ptx"));
/// PTX of `cuda/decoder.cu`.
const DECODER_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decoder.ptx"));
/// Names of the modules in candle's per-device cache of custom modules.
const SAMPLER_MODULE: &str = "spritedx_kernels_sampler";
const DECODER_MODULE: &str = "spritedx_kernels_decoder";

/// The null pointer passed for an absent optional input.
const NULL: u64 = 0;

fn config(dims: LaunchDims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: dims.grid,
        block_dim: dims.block,
        shared_mem_bytes: 0,
    }
}

/// The contiguous data of `storage` under `layout`.
fn view<'a, T: CudaDType>(storage: &'a CudaStorage, layout: &Layout) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => bail!("internal error: a kernel input is not contiguous"),
    }
}

/// The CUDA storage behind one of an op's extra tensors.
fn cuda_storage<'a>(storage: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
    match storage {
        Storage::Cuda(s) => Ok(s),
        _ => bail!("the {what} must be on the CUDA device of the op's inputs"),
    }
}

/// Output memory of `len` elements; the kernel writes every element.
fn output<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    len: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel before the tensor is read.
    unsafe { dev.alloc::<T>(len) }
}

/// Samples and elements per sample of a (B, ...) layout.
fn batch_of(layout: &Layout) -> Result<(usize, usize)> {
    let batch = layout.shape().dims()[0];
    let n = layout.shape().elem_count();
    Ok((batch, n.checked_div(batch).unwrap_or(0)))
}

pub(crate) fn q_sample(
    op: &QSample,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (batch, per_sample) = batch_of(l1)?;
    let (x0, noise) = (view::<f32>(s1, l1)?, view::<f32>(s2, l2)?);
    let (table_guard, table_layout) = op.table.storage_and_layout();
    let table = view::<f32>(
        cuda_storage(&table_guard, "coefficient table")?,
        table_layout,
    )?;
    let (rows_guard, rows_layout) = op.rows.storage_and_layout();
    let rows = view::<u32>(cuda_storage(&rows_guard, "row indices")?, rows_layout)?;
    let n_rows = table_rows(&op.table)?;
    let mut out = output::<f32>(dev, batch * per_sample)?;
    if batch * per_sample > 0 {
        let func = dev.get_or_load_custom_func("sdx_q_sample_f32", SAMPLER_MODULE, SAMPLER_PTX)?;
        let mut args = func.builder();
        args.arg(&x0)
            .arg(&noise)
            .arg(&table)
            .arg(&n_rows)
            .arg(&rows)
            .arg(&per_sample)
            .arg(&mut out);
        // SAFETY: the arguments match the kernel's signature in cuda/sampler.cu.
        unsafe { args.launch(config(launch::per_sample(per_sample, batch)?)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l1.shape().clone(),
    ))
}

pub(crate) fn ddim_step(
    op: &DdimStep,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (batch, per_sample) = batch_of(l1)?;
    let (x_t, model_output) = (view::<f32>(s1, l1)?, view::<f32>(s2, l2)?);
    let (table_guard, table_layout) = op.table.storage_and_layout();
    let table = view::<f32>(
        cuda_storage(&table_guard, "coefficient table")?,
        table_layout,
    )?;
    let (rows_guard, rows_layout) = op.rows.storage_and_layout();
    let rows = view::<u32>(cuda_storage(&rows_guard, "row indices")?, rows_layout)?;
    let noise_guard = op.noise.as_ref().map(Tensor::storage_and_layout);
    let noise = match &noise_guard {
        Some((guard, layout)) => Some(view::<f32>(cuda_storage(guard, "noise")?, layout)?),
        None => None,
    };
    let n_rows = table_rows(&op.table)?;
    let v_prediction = op.prediction.v_flag();
    let mut out = output::<f32>(dev, batch * per_sample)?;
    if batch * per_sample > 0 {
        let func = dev.get_or_load_custom_func("sdx_ddim_step_f32", SAMPLER_MODULE, SAMPLER_PTX)?;
        let mut args = func.builder();
        args.arg(&x_t).arg(&model_output);
        match &noise {
            Some(z) => args.arg(z),
            None => args.arg(&NULL),
        };
        args.arg(&table)
            .arg(&n_rows)
            .arg(&rows)
            .arg(&per_sample)
            .arg(&v_prediction)
            .arg(&mut out);
        // SAFETY: the arguments match the kernel's signature in cuda/sampler.cu.
        unsafe { args.launch(config(launch::per_sample(per_sample, batch)?)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l1.shape().clone(),
    ))
}

pub(crate) fn dpmpp_2m_step(
    op: &DpmSolverStep,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (batch, per_sample) = batch_of(l1)?;
    let n = batch * per_sample;
    let (x_t, model_output) = (view::<f32>(s1, l1)?, view::<f32>(s2, l2)?);
    let (table_guard, table_layout) = op.table.storage_and_layout();
    let table = view::<f32>(
        cuda_storage(&table_guard, "coefficient table")?,
        table_layout,
    )?;
    let (rows_guard, rows_layout) = op.rows.storage_and_layout();
    let rows = view::<u32>(cuda_storage(&rows_guard, "row indices")?, rows_layout)?;
    let prev_guard = op.prev_x0.as_ref().map(Tensor::storage_and_layout);
    let prev_x0 = match &prev_guard {
        Some((guard, layout)) => Some(view::<f32>(cuda_storage(guard, "previous x0")?, layout)?),
        None => None,
    };
    let n_rows = table_rows(&op.table)?;
    let v_prediction = op.prediction.v_flag();
    // x_s and x̂_0 in one allocation, (2, ...), split into the two outputs of the kernel.
    let mut out = output::<f32>(dev, 2 * n)?;
    if n > 0 {
        let func =
            dev.get_or_load_custom_func("sdx_dpmpp_2m_step_f32", SAMPLER_MODULE, SAMPLER_PTX)?;
        let (mut x_prev, mut x0) = out.split_at_mut(n);
        let mut args = func.builder();
        args.arg(&x_t).arg(&model_output);
        match &prev_x0 {
            Some(p) => args.arg(p),
            None => args.arg(&NULL),
        };
        args.arg(&table)
            .arg(&n_rows)
            .arg(&rows)
            .arg(&per_sample)
            .arg(&v_prediction);
        args.arg(&mut x_prev).arg(&mut x0);
        // SAFETY: the arguments match the kernel's signature in cuda/sampler.cu.
        unsafe { args.launch(config(launch::per_sample(per_sample, batch)?)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        stacked_shape(l1.shape()),
    ))
}

pub(crate) fn reduce_cells(
    op: &ReduceCells,
    storage: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &storage.device;
    let (batch, rows, cols) = op.grid(layout.shape())?;
    let image = view::<f32>(storage, layout)?;
    // 1 KB, copied for each call: the decoder runs once per image.
    let table = dev.clone_htod(crate::decoder::srgb8_to_linear_table().as_slice())?;
    let cells = batch * rows * cols;
    let mut out = output::<f32>(dev, cells * CELL_VALUES)?;
    if cells > 0 {
        let func =
            dev.get_or_load_custom_func("sdx_reduce_cells_f32", DECODER_MODULE, DECODER_PTX)?;
        let (batch_u, rows_u, cols_u, factor_u) = (
            u32_arg(batch)?,
            u32_arg(rows)?,
            u32_arg(cols)?,
            u32_arg(op.factor)?,
        );
        let mut args = func.builder();
        args.arg(&image)
            .arg(&table)
            .arg(&batch_u)
            .arg(&rows_u)
            .arg(&cols_u)
            .arg(&factor_u)
            .arg(&mut out);
        // SAFETY: the arguments match the kernel's signature in cuda/decoder.cu.
        unsafe { args.launch(config(launch::per_cell(cells))) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((batch, rows, cols, CELL_VALUES)),
    ))
}

pub(crate) fn snap_to_palette(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (n, stride) = l1.shape().dims2()?;
    let (k, _) = l2.shape().dims2()?;
    let (colours, palette) = (view::<f32>(s1, l1)?, view::<f32>(s2, l2)?);
    let mut out = output::<u32>(dev, n)?;
    if n > 0 {
        let func =
            dev.get_or_load_custom_func("sdx_snap_to_palette_f32", DECODER_MODULE, DECODER_PTX)?;
        let (stride_u, k_u) = (u32_arg(stride)?, u32_arg(k)?);
        let mut args = func.builder();
        args.arg(&colours)
            .arg(&n)
            .arg(&stride_u)
            .arg(&palette)
            .arg(&k_u)
            .arg(&mut out);
        // SAFETY: the arguments match the kernel's signature in cuda/decoder.cu.
        unsafe { args.launch(config(launch::per_colour(n))) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(n),
    ))
}

fn table_rows(table: &Tensor) -> Result<u32> {
    u32_arg(table.dim(0)?)
}

fn u32_arg(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        candle_core::Error::msg(format!("{v} does not fit a kernel's 32-bit argument"))
    })
}
