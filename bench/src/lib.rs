//! Throughput of `spritedx::snap::restore` against spritefusion-pixel-snapper 1.0.0, the
//! tool the issue compares with, in images per second on the same inputs in the same run.
//!
//! Inputs are validation sprites degraded with the `ai` preset to 256x256 and 1024x1024.
//! Three modes per size:
//! - single, in memory (ours only; the other tool has no in-memory API outside WASM);
//! - single, file to file: one image at a time, read PNG, restore, write PNG;
//! - batch, file to file: a whole folder, ours with the workers `spritedx restore` uses
//!   ([`spritedx::batch::snap_jobs`], twice the cores), theirs on its own rayon pool (one
//!   per core).
//!
//! Single modes run in a one-thread rayon pool, so both tools are single-threaded there
//! whatever they parallelise internally. This is a benchmark, not a test: it asserts nothing
//! about speed. `SPRITEDX_BENCH_QUICK=1` makes it a smoke run (few images, one repetition).

use anyhow::{bail, Context, Result};
use image::{Rgba, RgbaImage};
use rayon::prelude::*;
use spritedx::degrade::{degrade, Preset};
use spritedx::io::{load_rgba, save_png_atomic};
use spritedx::batch::snap_jobs;
use spritedx::pairs::list_images;
use spritedx::snap::{restore, SnapOptions};
use spritedx::split::{in_split, Split};
use spritefusion_pixel_snapper::{process_batch_with_reporter, BatchConfig, BatchEvent};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Input sides and how many distinct images of each: enough that one pass is not dominated
/// by a single odd image, few enough that the slower tool finishes a 1024 pass in seconds.
const SIZES: [(u32, usize); 2] = [(256, 64), (1024, 16)];

/// Colours the other tool quantises to (its CLI default).
const THEIR_COLOURS: usize = 16;

/// How long and how often each cell of the table is measured.
struct Timing {
    /// Timed runs per cell; the median is reported.
    runs: usize,
    /// Each run repeats passes over the images until it has taken at least this long.
    min_run: Duration,
    /// Divides the image counts of [`SIZES`].
    image_divisor: usize,
}

/// One measured cell: images per second, and how many images the tool failed on (a failed
/// image still counts as processed; its time was spent).
#[derive(Clone, Copy)]
struct Cell {
    rate: f64,
    failed: usize,
}

/// One line of the table.
struct Row {
    side: u32,
    mode: String,
    images: usize,
    ours: Cell,
    theirs: Option<Cell>,
}

/// The degraded inputs of one size, in memory and on disk.
struct Inputs {
    side: u32,
    images: Vec<RgbaImage>,
    /// Every image, as `NNN.png`.
    folder: PathBuf,
    /// One folder per image, holding only that image: the other tool's library API works on
    /// folders only, so this is how it restores one image at a time.
    singles: Vec<PathBuf>,
    /// Where results go; each tool gets its own subfolder, overwritten on every pass.
    out: PathBuf,
}

pub fn run() -> Result<()> {
    let quick = std::env::var("SPRITEDX_BENCH_QUICK").is_ok_and(|v| v == "1");
    let timing = if quick {
        Timing { runs: 1, min_run: Duration::ZERO, image_divisor: 16 }
    } else {
        Timing { runs: 3, min_run: Duration::from_secs(1), image_divisor: 1 }
    };
    let most_images = SIZES.iter().map(|&(_, n)| n / timing.image_divisor).max().unwrap_or(1);
    let (sprites, source) = clean_sprites(most_images)?;
    let work = tempfile::tempdir()?;

    println!("spritedx snap vs spritefusion-pixel-snapper 1.0.0{}", if quick { " (quick smoke run)" } else { "" });
    println!(
        "machine: {}, {} cores; batch uses {} workers for ours (as `spritedx restore` does) and {} rayon threads for theirs, single modes 1",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        snap_jobs(),
        rayon::current_num_threads()
    );
    println!("inputs: {source}, degraded with the ai preset at a fixed scale");
    println!(
        "settings: ours SnapOptions::default() (automatic palette), theirs k_colors {THEIR_COLOURS}; \
         median of {} run(s) of >= {:.0} s each",
        timing.runs,
        timing.min_run.as_secs_f64()
    );

    let mut rows = Vec::new();
    for (side, count) in SIZES {
        let inputs = Inputs::write(&sprites, side, (count / timing.image_divisor).max(1), work.path())?;
        rows.extend(bench_size(&inputs, &timing)?);
    }
    print_table(&rows);
    println!(
        "Ratios, not absolute numbers, are the comparable figures: \
         both tools ran on the same inputs, in the same process, on this machine."
    );
    Ok(())
}

/// The clean sprites to degrade: the first `count` of the validation split (sorted by name,
/// so every run uses the same ones), or generated ones where the collection is missing.
fn clean_sprites(count: usize) -> Result<(Vec<RgbaImage>, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/sprites");
    if let Ok(dir) = dir.canonicalize() {
        let paths: Vec<PathBuf> =
            list_images(&dir)?.into_iter().filter(|p| in_split(p, Split::Val)).take(count).collect();
        if !paths.is_empty() {
            let sprites = paths.iter().map(|p| load_rgba(p)).collect::<Result<Vec<_>, _>>()?;
            let source = format!("{} validation sprites from {}", sprites.len(), dir.display());
            return Ok((sprites, source));
        }
    }
    let source = format!("{count} generated sprites ({} not found)", dir.display());
    Ok(((0..count).map(generated_sprite).collect(), source))
}

/// A 32x32 stand-in sprite: a disc of four-colour bands on transparency, so it has flat
/// areas, hard edges and alpha like a real one. Varies with `index`.
fn generated_sprite(index: usize) -> RgbaImage {
    let palette = [[34, 32, 52], [172, 50, 50], [223, 113, 38], [251, 242, 54]];
    RgbaImage::from_fn(32, 32, |x, y| {
        let (dx, dy) = (x as i32 - 16, y as i32 - 16);
        if dx * dx + dy * dy > 14 * 14 {
            return Rgba([0, 0, 0, 0]);
        }
        let [r, g, b] = palette[(x as usize / 4 + y as usize / 6 + index) % palette.len()];
        Rgba([r, g, b, 255])
    })
}

impl Inputs {
    /// Degrades `count` sprites (cycling through them, each with its own seed) to
    /// `side`x`side` and writes them under `work`.
    fn write(sprites: &[RgbaImage], side: u32, count: usize, work: &Path) -> Result<Self> {
        let root = work.join(side.to_string());
        let folder = root.join("all");
        std::fs::create_dir_all(&folder)?;
        let mut images = Vec::with_capacity(count);
        let mut singles = Vec::with_capacity(count);
        for i in 0..count {
            let sprite = &sprites[i % sprites.len()];
            let mut cfg = Preset::Ai.config();
            // Screen pixels per art pixel that make the sprite's width `side` (8 and 32 for
            // the collection's 32 px sprites); the ai preset's other damage is kept.
            let scale = side as f32 / sprite.width() as f32;
            cfg.scale = [scale, scale];
            let image = fit(&degrade(sprite, &cfg, i as u64).image, side);
            let name = format!("{i:03}.png");
            save_png_atomic(&image, &folder.join(&name))?;
            let single = root.join("single").join(format!("{i:03}"));
            save_png_atomic(&image, &single.join(&name))?;
            singles.push(single);
            images.push(image);
        }
        Ok(Inputs { side, images, folder, singles, out: root.join("out") })
    }
}

/// Crops or pads (repeating the last row and column) to exactly `side`x`side`: phase and
/// aspect jitter leave the degraded image a few pixels off, and taller sprites are cropped.
fn fit(image: &RgbaImage, side: u32) -> RgbaImage {
    let (w, h) = image.dimensions();
    RgbaImage::from_fn(side, side, |x, y| *image.get_pixel(x.min(w - 1), y.min(h - 1)))
}

/// The three rows of one input size.
fn bench_size(inputs: &Inputs, timing: &Timing) -> Result<Vec<Row>> {
    let n = inputs.images.len();
    let opts = SnapOptions::default();
    let ours_out = inputs.out.join("ours");
    let theirs_out = inputs.out.join("theirs");
    std::fs::create_dir_all(&ours_out)?;
    let paths = list_images(&inputs.folder)?;
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;

    let memory = one_thread.install(|| {
        measure(n, timing, || Ok(inputs.images.iter().filter(|img| restore(img, &opts).is_err()).count()))
    })?;
    let (ours_single, theirs_single) = one_thread.install(|| -> Result<_> {
        let ours = measure(n, timing, || paths.iter().map(|p| ours_file(p, &ours_out, &opts)).sum::<Result<usize>>())?;
        let theirs = measure(n, timing, || {
            inputs.singles.iter().map(|dir| theirs_folder(dir, &theirs_out)).sum::<Result<usize>>()
        })?;
        Ok((ours, theirs))
    })?;
    // The batch modes list the folder inside the timed pass, as the other tool does.
    let ours_pool = rayon::ThreadPoolBuilder::new().num_threads(snap_jobs()).build()?;
    let ours_batch = ours_pool.install(|| {
        measure(n, timing, || {
            list_images(&inputs.folder)?.par_iter().map(|p| ours_file(p, &ours_out, &opts)).sum::<Result<usize>>()
        })
    })?;
    let theirs_batch = measure(n, timing, || theirs_folder(&inputs.folder, &theirs_out))?;

    let row = |mode: &str, ours, theirs| Row { side: inputs.side, mode: mode.to_owned(), images: n, ours, theirs };
    Ok(vec![
        row("single, in memory", memory, None),
        row("single, file to file", ours_single, Some(theirs_single)),
        row(&format!("batch, file to file ({}/{} thr)", snap_jobs(), rayon::current_num_threads()), ours_batch, Some(theirs_batch)),
    ])
}

/// Ours, file to file: returns 1 when the image could not be restored (no output written)
/// and 0 when it was; reading or writing errors end the benchmark.
fn ours_file(input: &Path, out_dir: &Path, opts: &SnapOptions) -> Result<usize> {
    let image = load_rgba(input)?;
    let Ok(restored) = restore(&image, opts) else { return Ok(1) };
    let name = input.file_name().context("input without a file name")?;
    save_png_atomic(&restored.image, &out_dir.join(name))?;
    Ok(0)
}

/// Theirs, folder to folder (uses the current rayon pool): returns how many images it failed
/// on. It reports those failures as an error too, so an error with no failed image is a real
/// one (an unreadable folder) and ends the benchmark.
fn theirs_folder(input_dir: &Path, output_dir: &Path) -> Result<usize> {
    let config = BatchConfig {
        input_dir: input_dir.to_owned(),
        output_dir: output_dir.to_owned(),
        k_colors: THEIR_COLOURS,
        pixel_size_override: None,
        palette: None,
    };
    let failed = AtomicUsize::new(0);
    let outcome = process_batch_with_reporter(&config, |event| {
        if matches!(event, BatchEvent::Failed { .. }) {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    });
    match (outcome, failed.into_inner()) {
        (Err(e), 0) => bail!("spritefusion-pixel-snapper on {}: {e}", input_dir.display()),
        (_, failed) => Ok(failed),
    }
}

/// Images per second of `pass`, which processes `images` images and returns how many failed.
/// An untimed first pass warms caches and sizes the runs; each run then repeats the pass
/// until it has lasted `timing.min_run`, and the median run is reported.
fn measure(images: usize, timing: &Timing, mut pass: impl FnMut() -> Result<usize>) -> Result<Cell> {
    let start = Instant::now();
    let failed = pass()?;
    let once = start.elapsed().as_secs_f64().max(1e-9);
    let repeats = (timing.min_run.as_secs_f64() / once).ceil().max(1.0) as usize;
    let mut rates = Vec::with_capacity(timing.runs);
    for _ in 0..timing.runs {
        let start = Instant::now();
        for _ in 0..repeats {
            pass()?;
        }
        rates.push((images * repeats) as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(Cell { rate: rates[rates.len() / 2], failed })
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<10} {:<30} {:>7} {:>12} {:>13} {:>12}",
        "size", "mode", "images", "ours img/s", "theirs img/s", "ours/theirs"
    );
    for row in rows {
        let (theirs, ratio) = match row.theirs {
            Some(t) => (format!("{:.1}", t.rate), format!("{:.2}x", row.ours.rate / t.rate)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let size = format!("{0}x{0}", row.side);
        println!("{size:<10} {:<30} {:>7} {:>12.1} {theirs:>13} {ratio:>12}", row.mode, row.images, row.ours.rate);
    }
    for row in rows {
        for (tool, cell) in [("ours", Some(row.ours)), ("theirs", row.theirs)] {
            if let Some(cell) = cell.filter(|c| c.failed > 0) {
                println!(
                    "note: {tool} failed on {}/{} images at {}x{} ({}); they count as processed",
                    cell.failed, row.images, row.side, row.side, row.mode
                );
            }
        }
    }
    println!();
}

/// The CPU's model name where the OS tells it (Linux), for reading numbers across machines.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
