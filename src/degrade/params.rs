//! One sample's degradation, fully specified: [`DegradeParams`] and how `sample_params` draws
//! it from a [`DegradeConfig`].

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::DegradeConfig;
use super::resample::Kernel;
use super::DegradeError;
use crate::rng::rng_from_seed;

/// Largest degraded image side: JPEG cannot encode more.
pub const MAX_SIDE: u32 = 65_535;

/// Largest mean cell size in screen pixels (a 32x32 sprite becomes 8192x8192).
pub const MAX_SCALE: f32 = 256.0;

/// Largest blur sigma in screen pixels (the blur costs `6 * sigma` taps per pixel and axis).
pub const MAX_BLUR_SIGMA: f32 = 64.0;

/// Where the art pixels lie in the degraded image: the ground truth a grid detector is
/// scored against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridTruth {
    /// Art columns (= the clean sprite's width).
    pub cols: u32,
    /// Art rows (= the clean sprite's height).
    pub rows: u32,
    /// Degraded image width in screen pixels.
    pub width: u32,
    /// Degraded image height in screen pixels.
    pub height: u32,
    /// Mean screen pixels per cell along x.
    pub scale_x: f32,
    /// Mean screen pixels per cell along y.
    pub scale_y: f32,
    /// Screen x of the left edge of art column 0 (in (-scale_x/2, 0]: the first cell may be cut).
    pub offset_x: f32,
    /// Screen y of the top edge of art row 0 (in (-scale_y/2, 0]).
    pub offset_y: f32,
    /// The `cols + 1` screen x coordinates of the cell boundaries, increasing, before wobble.
    pub x_lines: Vec<f32>,
    /// The `rows + 1` screen y coordinates of the cell boundaries, increasing, before wobble.
    pub y_lines: Vec<f32>,
}

impl GridTruth {
    /// The true grid as the decoder takes one: the cell boundaries (before wobble) clamped to
    /// the image, so that cells cut by its borders end there, and the phase of the offset.
    pub fn to_grid(&self) -> crate::grid::Grid {
        let clamp = |lines: &[f32], len: u32| lines.iter().map(|&l| l.clamp(0.0, len as f32)).collect();
        crate::grid::Grid {
            x_lines: clamp(&self.x_lines, self.width),
            y_lines: clamp(&self.y_lines, self.height),
            cell_width: self.scale_x,
            cell_height: self.scale_y,
            phase_x: self.offset_x.rem_euclid(self.scale_x),
            phase_y: self.offset_y.rem_euclid(self.scale_y),
            confidence_x: 1.0,
            confidence_y: 1.0,
        }
    }

    /// Screen coordinates of the centre of art pixel (`col`, `row`), before wobble.
    /// Panics if the cell is outside the grid.
    pub fn cell_centre(&self, col: u32, row: u32) -> (f32, f32) {
        let (c, r) = (col as usize, row as usize);
        (
            0.5 * (self.x_lines[c] + self.x_lines[c + 1]),
            0.5 * (self.y_lines[r] + self.y_lines[r + 1]),
        )
    }
}

/// Grid lines that bend: the lines of one axis are displaced (across themselves) by
/// `amplitude * sin(2π (along / period + across / cross_period) + phase)` screen pixels,
/// where `along` is the screen coordinate along the line and `across` the one across it.
/// The slow `across` term lets neighbouring lines bend slightly differently; its period is
/// at least `10π * amplitude`, so the displacement changes by at most 0.2 px per px across
/// and lines never cross.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wobble {
    pub amplitude: f32,
    pub period: f32,
    pub cross_period: f32,
    pub phase: f32,
}

/// Each art pixel's own random OKLab offset, N(0, sigma) per component, from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColourDrift {
    pub sigma: f32,
    pub seed: u64,
}

/// A slow OKLab gradient: art pixel at relative position (`u`, `v`) in [0, 1]² is offset by
/// `(u - 0.5) * across_width + (v - 0.5) * across_height` ([L, a, b]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColourGradient {
    pub across_width: [f32; 3],
    pub across_height: [f32; 3],
}

/// Reduction to a wrong palette of `colours` colours (NeuQuant), optionally dithered.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaletteDiffusion {
    pub colours: u32,
    pub dither: bool,
}

/// Gaussian noise of `sigma` (0-255 units) on each colour channel, from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    pub sigma: f32,
    pub seed: u64,
}

/// Every value one degradation uses. `apply` is a pure function of these and the clean
/// sprite; random fields (drift, noise) hold seeds, not arrays. Absent optional steps are
/// left out of the JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DegradeParams {
    pub kernel: Kernel,
    /// Width in screen pixels of the soft transition across cell boundaries (nearest only; 0: hard).
    pub soft_edge: f32,
    /// Wobble of the vertical lines (the x boundaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wobble_x: Option<Wobble>,
    /// Wobble of the horizontal lines (the y boundaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wobble_y: Option<Wobble>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<ColourDrift>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient: Option<ColourGradient>,
    /// Solid sRGB background both the degraded image and the target are flattened onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<[u8; 3]>,
    /// Gaussian blur sigma in screen pixels (0: none).
    pub blur_sigma: f32,
    /// Exponent on the sRGB-encoded colour (1: none).
    pub gamma: f32,
    /// Multiplier on the sRGB-encoded colour after gamma (1: none).
    pub exposure: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub palette: Option<PaletteDiffusion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<Noise>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg_quality: Option<u8>,
    pub grid: GridTruth,
}

impl DegradeParams {
    /// Checks that these params can degrade a `clean_width` x `clean_height` sprite: the grid
    /// matches its size, lines increase, and every value is in the range `apply` handles.
    /// Params from `sample_params` always pass; this is for params read back from a manifest.
    pub fn validate(&self, clean_width: u32, clean_height: u32) -> Result<(), DegradeError> {
        let g = &self.grid;
        require(g.cols == clean_width && g.rows == clean_height, || {
            format!(
                "grid is for a {}x{} sprite, the sprite is {clean_width}x{clean_height}",
                g.cols, g.rows
            )
        })?;
        check_lines("x_lines", &g.x_lines, g.cols)?;
        check_lines("y_lines", &g.y_lines, g.rows)?;
        require(g.width <= MAX_SIDE && g.height <= MAX_SIDE, || {
            format!("degraded size {}x{} exceeds {MAX_SIDE}", g.width, g.height)
        })?;
        require(
            (g.cols == 0) == (g.width == 0) && (g.rows == 0) == (g.height == 0),
            || {
                format!(
                    "degraded size {}x{} does not fit a {}x{} grid",
                    g.width, g.height, g.cols, g.rows
                )
            },
        )?;
        check_non_negative("soft_edge", self.soft_edge)?;
        check_non_negative("blur_sigma", self.blur_sigma)?;
        require(self.blur_sigma <= MAX_BLUR_SIGMA, || {
            format!("blur_sigma must be <= {MAX_BLUR_SIGMA}")
        })?;
        require(self.gamma.is_finite() && self.gamma > 0.0, || {
            format!("gamma must be > 0, got {}", self.gamma)
        })?;
        check_non_negative("exposure", self.exposure)?;
        for (name, wobble) in [("wobble_x", &self.wobble_x), ("wobble_y", &self.wobble_y)] {
            if let Some(w) = wobble {
                check_non_negative(name, w.amplitude)?;
                let periods_ok = [w.period, w.cross_period].iter().all(|p| p.is_finite() && *p > 0.0);
                require(periods_ok && w.phase.is_finite(), || {
                    format!("{name} needs positive finite periods and a finite phase, got {w:?}")
                })?;
            }
        }
        if let Some(d) = &self.drift {
            check_non_negative("drift sigma", d.sigma)?;
        }
        if let Some(g) = &self.gradient {
            require(
                g.across_width.iter().chain(&g.across_height).all(|v| v.is_finite()),
                || "gradient must be finite".into(),
            )?;
        }
        if let Some(p) = &self.palette {
            require((2..=256).contains(&p.colours), || {
                format!("palette colours must be 2-256, got {}", p.colours)
            })?;
        }
        if let Some(n) = &self.noise {
            check_non_negative("noise sigma", n.sigma)?;
        }
        if let Some(q) = self.jpeg_quality {
            require((1..=100).contains(&q), || {
                format!("jpeg_quality must be 1-100, got {q}")
            })?;
        }
        Ok(())
    }
}

fn require(ok: bool, message: impl FnOnce() -> String) -> Result<(), DegradeError> {
    if ok {
        Ok(())
    } else {
        Err(DegradeError::InvalidParams(message()))
    }
}

fn check_non_negative(name: &str, v: f32) -> Result<(), DegradeError> {
    require(v.is_finite() && v >= 0.0, || {
        format!("{name} must be finite and >= 0, got {v}")
    })
}

fn check_lines(name: &str, lines: &[f32], cells: u32) -> Result<(), DegradeError> {
    require(lines.len() == cells as usize + 1, || {
        format!("{name} needs {} entries, has {}", cells as usize + 1, lines.len())
    })?;
    require(
        lines.iter().all(|v| v.is_finite()) && lines.windows(2).all(|w| w[0] < w[1]),
        || format!("{name} must be finite and strictly increasing"),
    )
}

/// Draws a complete [`DegradeParams`] for a `clean_width` x `clean_height` sprite.
///
/// Never panics: out-of-range config values are clamped (see [`DegradeConfig::validate`] to
/// report them instead), and the result always passes [`DegradeParams::validate`] unless the
/// sprite itself is wider or taller than [`MAX_SIDE`].
pub fn sample_params(clean_width: u32, clean_height: u32, cfg: &DegradeConfig, seed: u64) -> DegradeParams {
    let mut draw = Draw {
        rng: rng_from_seed(seed),
    };
    let largest_side = clean_width.max(clean_height).max(1);

    // Geometry. The scale is capped at MAX_SCALE and so that the image stays within MAX_SIDE.
    let max_scale = (MAX_SIDE as f32 / largest_side as f32).clamp(1.0, MAX_SCALE);
    let scale_x = draw.scale(cfg).min(max_scale);
    let scale_y = if draw.chance(cfg.aspect_jitter_probability) {
        let jitter = finite_or_zero(cfg.aspect_jitter).clamp(0.0, 0.5);
        let s = scale_x * (1.0 + draw.uniform([-jitter, jitter]));
        let s = if cfg.integer_scale { s.round() } else { s };
        s.clamp(1.0, max_scale)
    } else {
        scale_x
    };
    let cell_jitter = if draw.chance(cfg.cell_jitter_probability) {
        draw.uniform(cfg.cell_jitter).clamp(0.0, 0.5)
    } else {
        0.0
    };
    let phase = draw.chance(cfg.phase_probability).then_some(cfg.phase);
    let x_axis = draw.axis(clean_width, scale_x, cell_jitter, phase);
    let y_axis = draw.axis(clean_height, scale_y, cell_jitter, phase);

    // Wobble: the vertical lines (x axis) bend along y, and vice versa.
    let wobble_x = draw.wobble(cfg, &x_axis, y_axis.extent, x_axis.extent);
    let wobble_y = draw.wobble(cfg, &y_axis, x_axis.extent, y_axis.extent);

    let kernel = draw.pick(&cfg.kernels).unwrap_or(Kernel::Nearest);
    let narrowest_cell = x_axis.narrowest_cell().min(y_axis.narrowest_cell());
    let soft_edge = if kernel == Kernel::Nearest && draw.chance(cfg.soft_edge_probability) {
        draw.uniform(cfg.soft_edge).clamp(0.0, 0.8 * narrowest_cell)
    } else {
        0.0
    };

    let drift = draw.chance(cfg.drift_probability).then(|| ColourDrift {
        sigma: draw.uniform(cfg.drift_sigma).clamp(0.0, 1.0),
        seed: draw.rng.random(),
    });
    let gradient = draw.chance(cfg.gradient_probability).then(|| {
        let magnitude = draw.uniform(cfg.gradient).clamp(0.0, 1.0);
        let angle = draw.uniform([0.0, std::f32::consts::TAU]);
        // Mostly a lightness change (lighting), with some tint.
        let lightness = if draw.chance(0.5) { 1.0 } else { -1.0 };
        let direction = [lightness, draw.uniform([-0.5, 0.5]), draw.uniform([-0.5, 0.5])];
        ColourGradient {
            across_width: direction.map(|d| d * magnitude * angle.cos()),
            across_height: direction.map(|d| d * magnitude * angle.sin()),
        }
    });
    let background = draw.chance(cfg.flatten_probability).then(|| {
        let from_set = !draw.chance(cfg.flatten_random_colour_probability);
        match draw.pick(&cfg.flatten_colours).filter(|_| from_set) {
            Some(colour) => colour,
            None => draw.rng.random(),
        }
    });

    let blur_sigma = if draw.chance(cfg.blur_probability) {
        draw.uniform(cfg.blur_sigma).clamp(0.0, MAX_BLUR_SIGMA)
    } else {
        0.0
    };
    let gamma = if draw.chance(cfg.gamma_probability) {
        draw.uniform(cfg.gamma).clamp(0.1, 10.0)
    } else {
        1.0
    };
    let exposure = if draw.chance(cfg.exposure_probability) {
        draw.uniform(cfg.exposure).clamp(0.0, 10.0)
    } else {
        1.0
    };
    let palette = draw.chance(cfg.palette_probability).then(|| {
        let [lo, hi] = cfg.palette_colours;
        PaletteDiffusion {
            colours: draw.integer([lo.into(), hi.into()]).clamp(2, 256) as u32,
            dither: draw.chance(cfg.dither_probability),
        }
    });
    let noise = draw.chance(cfg.noise_probability).then(|| Noise {
        sigma: draw.uniform(cfg.noise_sigma).clamp(0.0, 255.0),
        seed: draw.rng.random(),
    });
    let jpeg_quality = draw.chance(cfg.jpeg_probability).then(|| {
        let [lo, hi] = cfg.jpeg_quality;
        draw.integer([lo.into(), hi.into()]).clamp(1, 100) as u8
    });

    let grid = GridTruth {
        cols: clean_width,
        rows: clean_height,
        width: x_axis.extent,
        height: y_axis.extent,
        scale_x: x_axis.mean_cell(scale_x),
        scale_y: y_axis.mean_cell(scale_y),
        offset_x: x_axis.lines[0],
        offset_y: y_axis.lines[0],
        x_lines: x_axis.lines,
        y_lines: y_axis.lines,
    };
    DegradeParams {
        kernel,
        soft_edge,
        wobble_x,
        wobble_y,
        drift,
        gradient,
        background,
        blur_sigma,
        gamma,
        exposure,
        palette,
        noise,
        jpeg_quality,
        grid,
    }
}

/// The cell boundaries of one axis and the image extent along it.
struct Axis {
    lines: Vec<f32>,
    extent: u32,
}

impl Axis {
    fn narrowest_cell(&self) -> f32 {
        self.lines.windows(2).map(|w| w[1] - w[0]).fold(f32::INFINITY, f32::min)
    }

    fn mean_cell(&self, fallback: f32) -> f32 {
        match self.lines.len() - 1 {
            0 => fallback,
            cells => (self.lines[cells] - self.lines[0]) / cells as f32,
        }
    }
}

/// The sampling helpers. Every draw consumes the generator whatever the config says, in
/// a fixed order, so a sample is a pure function of (size, config, seed).
struct Draw {
    rng: ChaCha8Rng,
}

impl Draw {
    /// True with probability `p` (clamped to [0, 1]; NaN is 0).
    fn chance(&mut self, p: f32) -> bool {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.rng.random::<f32>() < p
    }

    /// Uniform in [min, max] of the range (ends in either order; non-finite ends count as 0).
    fn uniform(&mut self, [a, b]: [f32; 2]) -> f32 {
        let (a, b) = (finite_or_zero(a), finite_or_zero(b));
        let (lo, hi) = (a.min(b), a.max(b));
        lo + (hi - lo) * self.rng.random::<f32>()
    }

    /// Uniform integer in [min, max] of the range (ends in either order).
    fn integer(&mut self, [a, b]: [i64; 2]) -> i64 {
        self.rng.random_range(a.min(b)..=a.max(b))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        match items.len() {
            0 => None,
            n => Some(items[self.rng.random_range(0..n)]),
        }
    }

    /// The mean cell size along x, at least 1.
    fn scale(&mut self, cfg: &DegradeConfig) -> f32 {
        let [a, b] = cfg.scale.map(|s| finite_or_zero(s).max(1.0));
        let (lo, hi) = (a.min(b), a.max(b));
        let scale = if cfg.scale_log_uniform {
            self.uniform([lo.ln(), hi.ln()]).exp()
        } else if cfg.integer_scale && lo.ceil() <= hi.floor() {
            // Uniform over the whole numbers in range, not rounded-uniform (which would halve
            // the ends' chances).
            return self.integer([lo.ceil() as i64, hi.floor() as i64]) as f32;
        } else {
            self.uniform([lo, hi])
        };
        if cfg.integer_scale {
            scale.round().max(1.0)
        } else {
            scale
        }
    }

    /// Cell boundaries of `cells` cells of mean width `scale`, each jittered by up to
    /// ±`jitter` (relative), starting `phase` of a cell before the image's edge and ending
    /// after it (drawn separately); the extent keeps at least half of the last cell.
    fn axis(&mut self, cells: u32, scale: f32, jitter: f32, phase: Option<[f32; 2]>) -> Axis {
        let scale = f64::from(scale);
        let mut widths: Vec<f64> = (0..cells)
            .map(|_| scale * (1.0 + f64::from(self.uniform([-jitter, jitter]))))
            .collect();
        if jitter > 0.0 {
            // Keep the mean cell exactly `scale`.
            let correction = scale * widths.len() as f64 / widths.iter().sum::<f64>();
            widths.iter_mut().for_each(|w| *w *= correction);
        }
        let (Some(&first_width), Some(&last_width)) = (widths.first(), widths.last()) else {
            return Axis {
                lines: vec![0.0],
                extent: 0,
            };
        };
        let mut cut = |width: f64| match phase {
            Some(range) => f64::from(self.uniform(range).clamp(0.0, 0.49)) * width.min(scale),
            None => 0.0,
        };
        let (start_cut, end_cut) = (cut(first_width), cut(last_width));
        let mut lines = Vec::with_capacity(widths.len() + 1);
        // Not `-start_cut`, which is -0.0 (and "-0.0" in JSON) when nothing is cut.
        let mut edge = 0.0 - start_cut;
        lines.push(edge as f32);
        for w in &widths {
            edge += w;
            lines.push(edge as f32);
        }
        // The extent from the stored (f32) lines, so that it agrees with what a reader sees.
        let end = f64::from(lines[lines.len() - 1]);
        let last = end - f64::from(lines[lines.len() - 2]);
        let mut extent = (end - end_cut).floor();
        if end - extent > 0.5 * last {
            // Flooring cut more than half of a narrow last cell: keep its half instead.
            extent = (end - 0.5 * last).ceil();
        }
        Axis {
            lines,
            extent: extent.clamp(1.0, f64::from(MAX_SIDE)) as u32,
        }
    }

    /// A wobble for the lines of `axis`, or None (by chance, or when cells are too narrow to
    /// bend visibly without crossing). `along` is the image extent along the lines.
    fn wobble(&mut self, cfg: &DegradeConfig, axis: &Axis, along: u32, across: u32) -> Option<Wobble> {
        if !self.chance(cfg.wobble_probability) {
            return None;
        }
        let amplitude = self
            .uniform(cfg.wobble_amplitude)
            .clamp(0.0, cfg.wobble_max_cell_share.clamp(0.0, 0.25) * axis.narrowest_cell());
        let period = (self.uniform(cfg.wobble_period) * along as f32).max(8.0);
        let cross_period = (self.uniform(cfg.wobble_period) * across as f32)
            .max(8.0)
            .max(10.0 * std::f32::consts::PI * amplitude);
        let phase = self.uniform([0.0, std::f32::consts::TAU]);
        (amplitude >= 0.05).then_some(Wobble {
            amplitude,
            period,
            cross_period,
            phase,
        })
    }
}

fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}
