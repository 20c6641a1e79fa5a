//! The evaluation harness behind `spritedx eval`.
//!
//! Runs each restorer on every degraded image of a pair set, scores the result against the
//! clean target with [`crate::metrics`], and aggregates per (preset, restorer): exact-sprite
//! rate, size-match rate, mean pixel accuracy, PSNR, SSIM, palette error and edge F1, the
//! number of failures, and the median and 95th-percentile time per image.
//!
//! A restorer that returns an error or panics on an image is a counted failure, not a crash:
//! the image counts as neither exact nor size-matched, and its scores are left out of the
//! means (which are over the images that were restored). Time is the wall time of the
//! restorer's `restore` call alone (not reading the files), with `jobs` images in flight on
//! `threads` threads.

use crate::io::load_rgba;
use crate::metrics::{score, MetricOptions, Scores};
use crate::pairs::{read_manifest, PairRecord};
use crate::restorers::{RestoreContext, Restorer};
use anyhow::{bail, Result};
use image::{imageops, Rgba, RgbaImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// How to run an evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub metrics: MetricOptions,
    /// Images evaluated at once; 1 gives the least disturbed timings.
    pub jobs: usize,
    /// Threads they share (at least `jobs`): more than `jobs` lets one image's restore
    /// use the free ones, as `spritedx restore` of a single image does.
    pub threads: usize,
    /// Keep the restored images of the first this-many pairs of each preset, for the sheet.
    pub sheet_rows: usize,
    /// Evaluate at most this many pairs per preset (in manifest order).
    pub limit_per_preset: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { metrics: MetricOptions::default(), jobs: 1, threads: 1, sheet_rows: 6, limit_per_preset: None }
    }
}

/// The outcome of one restorer on one pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageResult {
    pub preset: String,
    pub degraded: String,
    pub model: String,
    /// Scores, or `None` when the restorer failed.
    pub scores: Option<Scores>,
    pub error: Option<String>,
    pub restored_size: Option<(u32, u32)>,
    pub millis: f64,
}

/// Aggregate of one restorer on one preset.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Aggregate {
    pub preset: String,
    pub model: String,
    pub images: usize,
    pub failures: usize,
    pub exact_rate: f64,
    pub size_match_rate: f64,
    pub pixel_accuracy: f64,
    pub psnr: f64,
    pub ssim: f64,
    pub palette_error: f64,
    pub edge_f1: f64,
    pub median_ms: f64,
    pub p95_ms: f64,
}

/// Everything an evaluation produced.
#[derive(Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub aggregates: Vec<Aggregate>,
    pub images: Vec<ImageResult>,
    /// For the contact sheet: the pairs kept, with each restorer's output (None = failed).
    #[serde(skip)]
    pub sheet: Vec<SheetRow>,
}

/// One row of the contact sheet.
#[derive(Debug)]
pub struct SheetRow {
    pub degraded: RgbaImage,
    pub clean: RgbaImage,
    /// Per restorer: its output and whether it was exact.
    pub restored: Vec<Option<(RgbaImage, bool)>>,
}

/// Evaluates `restorers` on the pair set in `pairs_dir`. `on_pair` is called after each pair.
pub fn evaluate(
    pairs_dir: &Path,
    restorers: &[Box<dyn Restorer>],
    opts: &EvalOptions,
    on_pair: &(dyn Fn() + Sync),
) -> Result<EvalReport> {
    let records = select_records(read_manifest(pairs_dir)?, opts.limit_per_preset);
    if records.is_empty() {
        bail!("the pair set in {} is empty", pairs_dir.display());
    }
    let mut kept_per_preset: BTreeMap<&str, usize> = BTreeMap::new();
    let keep: Vec<bool> = records
        .iter()
        .map(|r| {
            let n = kept_per_preset.entry(r.preset.as_str()).or_default();
            *n += 1;
            *n <= opts.sheet_rows
        })
        .collect();
    let jobs = opts.jobs.max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.threads.max(jobs)).build()?;
    // `jobs` pairs at a time, so that a pool with more threads than that leaves the rest
    // free for each restore.
    let per_pair: Vec<Result<(Vec<ImageResult>, Option<SheetRow>)>> = pool.install(|| {
        records
            .chunks(jobs)
            .zip(keep.chunks(jobs))
            .flat_map(|(records, keep)| {
                records
                    .par_iter()
                    .zip(keep.par_iter())
                    .map(|(rec, &keep)| {
                        let r = evaluate_pair(pairs_dir, rec, restorers, &opts.metrics, keep);
                        on_pair();
                        r
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let mut images = Vec::new();
    let mut sheet = Vec::new();
    for r in per_pair {
        let (results, row) = r?;
        images.extend(results);
        sheet.extend(row);
    }
    let aggregates = aggregate(&images, restorers);
    Ok(EvalReport { aggregates, images, sheet })
}

fn select_records(records: Vec<PairRecord>, limit_per_preset: Option<usize>) -> Vec<PairRecord> {
    let Some(limit) = limit_per_preset else { return records };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    records
        .into_iter()
        .filter(|r| {
            let n = seen.entry(r.preset.clone()).or_default();
            *n += 1;
            *n <= limit
        })
        .collect()
}

/// Reading the pair itself failing is an error of the pair set, not of a restorer.
fn evaluate_pair(
    pairs_dir: &Path,
    rec: &PairRecord,
    restorers: &[Box<dyn Restorer>],
    metrics: &MetricOptions,
    keep_for_sheet: bool,
) -> Result<(Vec<ImageResult>, Option<SheetRow>)> {
    let degraded = load_rgba(&pairs_dir.join(&rec.degraded))?;
    let clean = load_rgba(&pairs_dir.join(&rec.clean))?;
    let ctx = RestoreContext { known_grid: Some(&rec.params.grid), target: Some(&clean) };
    let mut results = Vec::with_capacity(restorers.len());
    let mut restored_for_sheet = Vec::new();
    for restorer in restorers {
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| restorer.restore(&degraded, &ctx)));
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let outcome = match outcome {
            Ok(r) => r,
            Err(panic) => Err(anyhow::anyhow!("panicked: {}", panic_message(&panic))),
        };
        let (scores, error, restored_size) = match &outcome {
            Ok(img) => (Some(score(img, &clean, metrics)), None, Some(img.dimensions())),
            Err(e) => (None, Some(format!("{e:#}")), None),
        };
        if keep_for_sheet {
            restored_for_sheet.push(outcome.ok().map(|img| (img, scores.is_some_and(|s| s.exact))));
        }
        results.push(ImageResult {
            preset: rec.preset.clone(),
            degraded: rec.degraded.clone(),
            model: restorer.name().to_owned(),
            scores,
            error,
            restored_size,
            millis,
        });
    }
    let row = keep_for_sheet.then_some(SheetRow { degraded, clean, restored: restored_for_sheet });
    Ok((results, row))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Aggregates per (preset, restorer), presets in first-seen order, restorers in given order.
fn aggregate(images: &[ImageResult], restorers: &[Box<dyn Restorer>]) -> Vec<Aggregate> {
    let mut presets: Vec<&str> = Vec::new();
    for r in images {
        if !presets.contains(&r.preset.as_str()) {
            presets.push(&r.preset);
        }
    }
    let mut out = Vec::new();
    for preset in presets {
        for restorer in restorers {
            let rows: Vec<&ImageResult> =
                images.iter().filter(|r| r.preset == preset && r.model == restorer.name()).collect();
            let scored: Vec<&Scores> = rows.iter().filter_map(|r| r.scores.as_ref()).collect();
            let n = rows.len();
            let rate = |f: &dyn Fn(&Scores) -> bool| scored.iter().filter(|s| f(s)).count() as f64 / n.max(1) as f64;
            let mean = |f: &dyn Fn(&Scores) -> f64| {
                if scored.is_empty() {
                    f64::NAN
                } else {
                    scored.iter().map(|s| f(s)).sum::<f64>() / scored.len() as f64
                }
            };
            let mut times: Vec<f64> = rows.iter().map(|r| r.millis).collect();
            times.sort_by(f64::total_cmp);
            out.push(Aggregate {
                preset: preset.to_owned(),
                model: restorer.name().to_owned(),
                images: n,
                failures: n - scored.len(),
                exact_rate: rate(&|s| s.exact),
                size_match_rate: rate(&|s| s.size_match),
                pixel_accuracy: mean(&|s| s.pixel_accuracy),
                psnr: mean(&|s| s.psnr),
                ssim: mean(&|s| s.ssim),
                palette_error: mean(&|s| s.palette_error),
                edge_f1: mean(&|s| s.edge_f1),
                median_ms: percentile(&times, 0.5),
                p95_ms: percentile(&times, 0.95),
            });
        }
    }
    out
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The aggregates as a plain-text table, one block per preset.
pub fn format_table(aggregates: &[Aggregate]) -> String {
    let mut s = String::new();
    let mut last_preset = None;
    for a in aggregates {
        if last_preset != Some(&a.preset) {
            s.push_str(&format!(
                "\npreset {} ({} images)\n{:<20} {:>7} {:>7} {:>8} {:>7} {:>6} {:>8} {:>7} {:>6} {:>9} {:>9}\n",
                a.preset, a.images, "model", "exact", "size", "pix.acc", "PSNR", "SSIM", "pal.err", "edgeF1", "fail",
                "med ms", "p95 ms"
            ));
            last_preset = Some(&a.preset);
        }
        s.push_str(&format!(
            "{:<20} {:>6.1}% {:>6.1}% {:>7.1}% {:>7.2} {:>6.3} {:>8.4} {:>7.3} {:>6} {:>9.2} {:>9.2}\n",
            a.model,
            100.0 * a.exact_rate,
            100.0 * a.size_match_rate,
            100.0 * a.pixel_accuracy,
            a.psnr,
            a.ssim,
            a.palette_error,
            a.edge_f1,
            a.failures,
            a.median_ms,
            a.p95_ms
        ));
    }
    s
}

/// Side length of one tile of the contact sheet, in pixels.
const TILE: u32 = 96;
const GAP: u32 = 6;
/// Height of the bar under each restored tile: green exact, amber wrong, red failed.
const BAR: u32 = 5;

/// The contact sheet: one row per kept pair, columns degraded | each restorer | clean, every
/// tile fitted into a square (nearest when enlarging, so pixels stay visible) over a
/// checkerboard that shows transparency, with a bar under each restored tile.
pub fn contact_sheet(rows: &[SheetRow]) -> RgbaImage {
    let cols = rows.first().map_or(2, |r| r.restored.len() as u32 + 2);
    let width = GAP + cols * (TILE + GAP);
    let height = GAP + rows.len() as u32 * (TILE + BAR + GAP);
    let mut sheet = RgbaImage::from_pixel(width, height.max(1), Rgba([40, 40, 40, 255]));
    for (i, row) in rows.iter().enumerate() {
        let y = GAP + i as u32 * (TILE + BAR + GAP);
        let mut tiles: Vec<(Option<&RgbaImage>, Option<Rgba<u8>>)> = vec![(Some(&row.degraded), None)];
        for r in &row.restored {
            tiles.push(match r {
                Some((img, true)) => (Some(img), Some(Rgba([60, 200, 80, 255]))),
                Some((img, false)) => (Some(img), Some(Rgba([230, 160, 30, 255]))),
                None => (None, Some(Rgba([220, 40, 40, 255]))),
            });
        }
        tiles.push((Some(&row.clean), None));
        for (j, (img, bar)) in tiles.into_iter().enumerate() {
            let x = GAP + j as u32 * (TILE + GAP);
            draw_checkerboard(&mut sheet, x, y);
            if let Some(img) = img {
                let tile = fit_tile(img);
                let (ox, oy) = (x + (TILE - tile.width()) / 2, y + (TILE - tile.height()) / 2);
                imageops::overlay(&mut sheet, &tile, i64::from(ox), i64::from(oy));
            }
            if let Some(colour) = bar {
                for by in y + TILE..y + TILE + BAR - 1 {
                    for bx in x..x + TILE {
                        sheet.put_pixel(bx, by, colour);
                    }
                }
            }
        }
    }
    sheet
}

fn draw_checkerboard(sheet: &mut RgbaImage, x: u32, y: u32) {
    for ty in 0..TILE {
        for tx in 0..TILE {
            let light = ((tx / 8) + (ty / 8)) % 2 == 0;
            sheet.put_pixel(x + tx, y + ty, if light { Rgba([200, 200, 200, 255]) } else { Rgba([160, 160, 160, 255]) });
        }
    }
}

fn fit_tile(img: &RgbaImage) -> RgbaImage {
    let (w, h) = img.dimensions();
    let longest = w.max(h).max(1);
    if longest <= TILE {
        let k = TILE / longest;
        imageops::resize(img, w * k, h * k, imageops::FilterType::Nearest)
    } else {
        let (nw, nh) = ((w * TILE / longest).max(1), (h * TILE / longest).max(1));
        imageops::resize(img, nw, nh, imageops::FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.95), 10.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn tiles_fit_and_keep_pixels_square() {
        let small = RgbaImage::new(32, 16);
        assert_eq!(fit_tile(&small).dimensions(), (96, 48));
        let large = RgbaImage::new(400, 200);
        assert_eq!(fit_tile(&large).dimensions(), (96, 48));
    }
}
