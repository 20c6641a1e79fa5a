//! What `sample_params` draws from: [`DegradeConfig`] (every probability and range) and the
//! four named [`Preset`]s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::resample::Kernel;
use super::DegradeError;

/// A named degradation configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Nearest-neighbour integer upscale 2-5x, nothing else: grid detection must be exact.
    Clean,
    /// The design note's degrade: bicubic integer upscale 2-5x, blur, noise, mild phase.
    Seed,
    /// Everything on and strong, including global gamma/exposure and wrong palettes.
    Hard,
    /// Generator-like: irregular, wobbling, soft-edged cells with mild colour damage.
    Ai,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Clean, Preset::Seed, Preset::Hard, Preset::Ai];

    /// The lowercase name used on the command line, in JSON and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Clean => "clean",
            Preset::Seed => "seed",
            Preset::Hard => "hard",
            Preset::Ai => "ai",
        }
    }

    /// The configuration this preset stands for (see the module docs for the ranges).
    pub fn config(self) -> DegradeConfig {
        let clean = DegradeConfig::default();
        match self {
            Preset::Clean => clean,
            Preset::Seed => DegradeConfig {
                kernels: vec![Kernel::Bicubic],
                phase_probability: 0.5,
                phase: [0.0, 0.125],
                blur_probability: 1.0,
                blur_sigma: [0.2, 1.0],
                noise_probability: 1.0,
                noise_sigma: [3.0, 3.0],
                ..clean
            },
            Preset::Hard => DegradeConfig {
                scale: [2.0, 8.0],
                integer_scale: false,
                aspect_jitter_probability: 0.3,
                aspect_jitter: 0.15,
                cell_jitter_probability: 0.5,
                cell_jitter: [0.02, 0.15],
                phase_probability: 0.9,
                phase: [0.0, 0.45],
                wobble_probability: 0.3,
                wobble_amplitude: [0.3, 1.5],
                kernels: Kernel::ALL.to_vec(),
                soft_edge_probability: 0.5,
                soft_edge: [0.5, 2.0],
                drift_probability: 0.5,
                drift_sigma: [0.01, 0.03],
                gradient_probability: 0.3,
                gradient: [0.02, 0.06],
                flatten_probability: 0.3,
                blur_probability: 0.7,
                blur_sigma: [0.3, 1.5],
                gamma_probability: 0.5,
                gamma: [0.8, 1.25],
                exposure_probability: 0.5,
                exposure: [0.8, 1.2],
                palette_probability: 0.4,
                palette_colours: [8, 64],
                dither_probability: 0.5,
                noise_probability: 0.8,
                noise_sigma: [1.0, 8.0],
                jpeg_probability: 0.6,
                jpeg_quality: [30, 90],
                ..clean
            },
            Preset::Ai => DegradeConfig {
                scale: [3.0, 40.0],
                scale_log_uniform: true,
                integer_scale: false,
                aspect_jitter_probability: 0.5,
                aspect_jitter: 0.08,
                cell_jitter_probability: 0.8,
                cell_jitter: [0.02, 0.12],
                phase_probability: 1.0,
                phase: [0.0, 0.45],
                wobble_probability: 0.7,
                wobble_amplitude: [0.5, 2.0],
                // Generator grids bend by a small part of a cell; a quarter cell would
                // move 4-pixel cells' lines by one whole pixel.
                wobble_max_cell_share: 0.1,
                wobble_period: [0.5, 2.0],
                kernels: vec![Kernel::Nearest],
                soft_edge_probability: 0.9,
                soft_edge: [0.5, 3.0],
                drift_probability: 0.9,
                drift_sigma: [0.005, 0.02],
                gradient_probability: 0.3,
                gradient: [0.01, 0.04],
                flatten_probability: 0.3,
                blur_probability: 0.3,
                blur_sigma: [0.2, 0.7],
                noise_probability: 0.8,
                noise_sigma: [0.5, 3.0],
                jpeg_probability: 0.4,
                jpeg_quality: [70, 95],
                ..clean
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = DegradeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| DegradeError::UnknownPreset(s.to_owned()))
    }
}

/// Every probability and range the degradation pipeline samples from.
///
/// Ranges are `[min, max]` (inclusive; equal ends give a constant). Probabilities are in
/// [0, 1]. A step whose probability is 0 is off whatever its range says; the default (the
/// `clean` preset) turns every step off but keeps sensible ranges, so a config file that sets
/// only `"noise_probability": 1` gets noise in the default range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DegradeConfig {
    /// Mean screen pixels per art pixel along x (at most [`MAX_SCALE`](super::MAX_SCALE)).
    pub scale: [f32; 2],
    /// Draw the scale log-uniformly (as many 3-6x as 20-40x samples) instead of uniformly.
    pub scale_log_uniform: bool,
    /// Round the scale (both axes) to a whole number of screen pixels.
    pub integer_scale: bool,
    /// Probability that the y scale differs from the x scale.
    pub aspect_jitter_probability: f32,
    /// Largest relative difference of the y scale from the x scale (clamped to 0.5).
    pub aspect_jitter: f32,
    /// Probability of non-uniform cells.
    pub cell_jitter_probability: f32,
    /// Largest relative deviation of one cell's width from the mean (drawn per sample from
    /// this range, then per cell uniformly within ± it; clamped to 0.5).
    pub cell_jitter: [f32; 2],
    /// Probability that the image does not start and end on a cell edge.
    pub phase_probability: f32,
    /// Fraction of the first (and, drawn separately, the last) cell that is cut off
    /// (clamped below 0.5, so every border cell keeps at least half its width).
    pub phase: [f32; 2],
    /// Probability, per axis, that the grid lines wobble.
    pub wobble_probability: f32,
    /// Wobble amplitude in screen pixels, clamped to `wobble_max_cell_share` of the
    /// narrowest cell.
    pub wobble_amplitude: [f32; 2],
    /// Largest wobble amplitude as a share of the narrowest cell (at most 0.25, so lines
    /// never cross).
    pub wobble_max_cell_share: f32,
    /// Wobble period as a fraction of the image extent along the line (and, drawn
    /// separately, across the lines, where it is kept long enough that lines never cross).
    pub wobble_period: [f32; 2],
    /// Resampling kernels, one drawn uniformly per sample (empty: nearest).
    pub kernels: Vec<Kernel>,
    /// Probability of soft cell edges (only with the nearest kernel; the others are soft
    /// across the whole cell already).
    pub soft_edge_probability: f32,
    /// Width in screen pixels of the transition across a cell boundary (clamped to 0.8 of
    /// the narrowest cell, so every cell centre keeps its own colour).
    pub soft_edge: [f32; 2],
    /// Probability of per-cell colour drift.
    pub drift_probability: f32,
    /// Standard deviation of each art pixel's OKLab offset (per component).
    pub drift_sigma: [f32; 2],
    /// Probability of a slow colour gradient across the sprite.
    pub gradient_probability: f32,
    /// OKLab change of the gradient from one side of the sprite to the other.
    pub gradient: [f32; 2],
    /// Probability of flattening onto a solid background (the target is flattened too).
    pub flatten_probability: f32,
    /// Backgrounds to pick from.
    pub flatten_colours: Vec<[u8; 3]>,
    /// Probability that the background is a uniformly random colour instead (always when
    /// `flatten_colours` is empty).
    pub flatten_random_colour_probability: f32,
    /// Probability of gaussian blur.
    pub blur_probability: f32,
    /// Blur standard deviation in screen pixels (clamped to 64).
    pub blur_sigma: [f32; 2],
    /// Probability of a gamma change.
    pub gamma_probability: f32,
    /// Exponent applied to the sRGB-encoded colour.
    pub gamma: [f32; 2],
    /// Probability of an exposure change.
    pub exposure_probability: f32,
    /// Multiplier applied to the sRGB-encoded colour (after gamma).
    pub exposure: [f32; 2],
    /// Probability of reducing to a wrong palette.
    pub palette_probability: f32,
    /// Size of the wrong palette (clamped to 2-256).
    pub palette_colours: [u32; 2],
    /// Probability of Floyd-Steinberg dithering when reducing to the wrong palette.
    pub dither_probability: f32,
    /// Probability of gaussian noise.
    pub noise_probability: f32,
    /// Noise standard deviation in 0-255 units, per colour channel.
    pub noise_sigma: [f32; 2],
    /// Probability of a JPEG round trip.
    pub jpeg_probability: f32,
    /// JPEG quality (clamped to 1-100).
    pub jpeg_quality: [u8; 2],
}

impl Default for DegradeConfig {
    /// The `clean` preset: nearest integer upscale 2-5x, every other step off.
    fn default() -> Self {
        DegradeConfig {
            scale: [2.0, 5.0],
            scale_log_uniform: false,
            integer_scale: true,
            aspect_jitter_probability: 0.0,
            aspect_jitter: 0.1,
            cell_jitter_probability: 0.0,
            cell_jitter: [0.02, 0.12],
            phase_probability: 0.0,
            phase: [0.0, 0.45],
            wobble_probability: 0.0,
            wobble_amplitude: [0.5, 2.0],
            wobble_max_cell_share: 0.25,
            wobble_period: [0.5, 2.0],
            kernels: vec![Kernel::Nearest],
            soft_edge_probability: 0.0,
            soft_edge: [0.5, 3.0],
            drift_probability: 0.0,
            drift_sigma: [0.005, 0.02],
            gradient_probability: 0.0,
            gradient: [0.01, 0.05],
            flatten_probability: 0.0,
            flatten_colours: vec![
                [255, 255, 255],
                [0, 0, 0],
                [128, 128, 128],
                [255, 0, 255],
                [0, 255, 0],
                [240, 236, 228],
            ],
            flatten_random_colour_probability: 0.5,
            blur_probability: 0.0,
            blur_sigma: [0.2, 1.0],
            gamma_probability: 0.0,
            gamma: [0.8, 1.25],
            exposure_probability: 0.0,
            exposure: [0.8, 1.2],
            palette_probability: 0.0,
            palette_colours: [8, 64],
            dither_probability: 0.5,
            noise_probability: 0.0,
            noise_sigma: [1.0, 5.0],
            jpeg_probability: 0.0,
            jpeg_quality: [70, 95],
        }
    }
}

impl DegradeConfig {
    /// This config with the fields of a JSON object replacing its own, e.g. a preset with a
    /// few overrides from a config file (`{"jpeg_probability": 1.0}`).
    pub fn with_overrides(&self, overrides: &serde_json::Value) -> Result<Self, DegradeError> {
        let serde_json::Value::Object(fields) = overrides else {
            return Err(DegradeError::InvalidConfig("overrides must be a JSON object".into()));
        };
        let mut merged = serde_json::to_value(self).map_err(|e| DegradeError::InvalidConfig(e.to_string()))?;
        if let serde_json::Value::Object(own) = &mut merged {
            own.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        serde_json::from_value(merged).map_err(|e| DegradeError::InvalidConfig(e.to_string()))
    }

    /// Checks every range and probability. `sample_params` clamps whatever it gets, so this
    /// is for telling a user that a config file does not mean what they think.
    pub fn validate(&self) -> Result<(), DegradeError> {
        let probabilities = [
            ("aspect_jitter_probability", self.aspect_jitter_probability),
            ("cell_jitter_probability", self.cell_jitter_probability),
            ("phase_probability", self.phase_probability),
            ("wobble_probability", self.wobble_probability),
            ("wobble_max_cell_share", self.wobble_max_cell_share),
            ("soft_edge_probability", self.soft_edge_probability),
            ("drift_probability", self.drift_probability),
            ("gradient_probability", self.gradient_probability),
            ("flatten_probability", self.flatten_probability),
            (
                "flatten_random_colour_probability",
                self.flatten_random_colour_probability,
            ),
            ("blur_probability", self.blur_probability),
            ("gamma_probability", self.gamma_probability),
            ("exposure_probability", self.exposure_probability),
            ("palette_probability", self.palette_probability),
            ("dither_probability", self.dither_probability),
            ("noise_probability", self.noise_probability),
            ("jpeg_probability", self.jpeg_probability),
        ];
        for (name, p) in probabilities {
            require((0.0..=1.0).contains(&p), || {
                format!("{name} must be in [0, 1], got {p}")
            })?;
        }
        // (name, range, smallest allowed min, largest allowed max)
        let ranges = [
            ("scale", self.scale, 1.0, super::params::MAX_SCALE),
            ("cell_jitter", self.cell_jitter, 0.0, 0.5),
            ("phase", self.phase, 0.0, 0.499),
            ("wobble_amplitude", self.wobble_amplitude, 0.0, f32::MAX),
            ("wobble_period", self.wobble_period, 0.01, f32::MAX),
            ("soft_edge", self.soft_edge, 0.0, f32::MAX),
            ("drift_sigma", self.drift_sigma, 0.0, 1.0),
            ("gradient", self.gradient, 0.0, 1.0),
            ("blur_sigma", self.blur_sigma, 0.0, super::params::MAX_BLUR_SIGMA),
            ("gamma", self.gamma, 0.1, 10.0),
            ("exposure", self.exposure, 0.0, 10.0),
            ("noise_sigma", self.noise_sigma, 0.0, 255.0),
        ];
        for (name, [lo, hi], min, max) in ranges {
            require(lo.is_finite() && hi.is_finite() && lo <= hi, || {
                format!("{name} must be a finite [min, max] with min <= max, got [{lo}, {hi}]")
            })?;
            require(lo >= min && hi <= max, || {
                format!("{name} must lie in [{min}, {max}], got [{lo}, {hi}]")
            })?;
        }
        require((0.0..=0.5).contains(&self.aspect_jitter), || {
            format!("aspect_jitter must be in [0, 0.5], got {}", self.aspect_jitter)
        })?;
        require(!self.kernels.is_empty(), || {
            "kernels must list at least one kernel".into()
        })?;
        let [lo, hi] = self.palette_colours;
        require(2 <= lo && lo <= hi && hi <= 256, || {
            format!("palette_colours must be within [2, 256], got [{lo}, {hi}]")
        })?;
        let [lo, hi] = self.jpeg_quality;
        require(1 <= lo && lo <= hi && hi <= 100, || {
            format!("jpeg_quality must be within [1, 100], got [{lo}, {hi}]")
        })?;
        Ok(())
    }
}

fn require(ok: bool, message: impl FnOnce() -> String) -> Result<(), DegradeError> {
    if ok {
        Ok(())
    } else {
        Err(DegradeError::InvalidConfig(message()))
    }
}
