//! Tests of the public API: determinism, serialisation, grid truth and the alpha rules.

use image::{Rgba, RgbaImage};
use proptest::prelude::*;
use rand::Rng;

use super::*;
use crate::colour::srgb8_to_oklab;
use crate::rng::rng_from_seed;

/// A blocky sprite: a few palette colours in 1-3 pixel runs, with a transparent border-ish
/// region whose hidden RGB is not black.
fn sprite(width: u32, height: u32, seed: u64) -> RgbaImage {
    let mut rng = rng_from_seed(seed);
    let palette: Vec<[u8; 3]> = (0..5).map(|_| rng.random()).collect();
    let mut image = RgbaImage::new(width, height);
    for y in 0..height {
        let mut x = 0;
        while x < width {
            let run = rng.random_range(1..=3);
            let transparent = rng.random_bool(0.25);
            let [r, g, b] = palette[rng.random_range(0..palette.len())];
            let pixel = if transparent {
                Rgba([r, g, b, 0])
            } else {
                Rgba([r, g, b, 255])
            };
            for dx in 0..run.min(width - x) {
                image.put_pixel(x + dx, y, pixel);
            }
            x += run;
        }
    }
    image
}

/// A sprite of 3x3 blocks of one colour each, so it has interior cells.
fn blocky_sprite(width: u32, height: u32, seed: u64) -> RgbaImage {
    let small = sprite(width.div_ceil(3), height.div_ceil(3), seed);
    RgbaImage::from_fn(width, height, |x, y| *small.get_pixel(x / 3, y / 3))
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn degradation_is_deterministic_and_seed_dependent(seed in any::<u64>(), preset_index in 0usize..4) {
        let preset = Preset::ALL[preset_index];
        let clean = sprite(10, 8, seed ^ 0x5eed);
        let cfg = preset.config();
        let first = degrade(&clean, &cfg, seed);
        let again = degrade(&clean, &cfg, seed);
        prop_assert_eq!(&first, &again);
        // `clean` has only four possible samples; the others draw continuous values.
        if preset != Preset::Clean {
            let other = degrade(&clean, &cfg, seed.wrapping_add(1));
            prop_assert_ne!(&first.params, &other.params);
            prop_assert!(first.image != other.image, "same image for seeds {} and {}", seed, seed.wrapping_add(1));
        }
    }
}

#[test]
fn params_round_trip_through_json_and_reproduce_the_image() {
    let clean = sprite(12, 9, 1);
    for preset in Preset::ALL {
        for seed in 0..12 {
            let degraded = degrade(&clean, &preset.config(), seed);
            let json = serde_json::to_string(&degraded.params).unwrap();
            assert!(!json.contains('\n'), "one manifest line");
            let back: DegradeParams = serde_json::from_str(&json).unwrap();
            assert_eq!(back, degraded.params, "{preset} seed {seed}: {json}");
            assert_eq!(apply(&clean, &back), degraded, "{preset} seed {seed}");
        }
    }
}

#[test]
fn clean_preset_is_exactly_the_nearest_upscale() {
    let clean = sprite(13, 7, 2);
    let mut scales = std::collections::HashSet::new();
    for seed in 0..20 {
        let degraded = degrade(&clean, &Preset::Clean.config(), seed);
        let grid = &degraded.params.grid;
        let scale = grid.scale_x as u32;
        scales.insert(scale);
        assert!((2..=5).contains(&scale) && grid.scale_x == scale as f32 && grid.scale_y == grid.scale_x);
        assert_eq!(degraded.image.dimensions(), (13 * scale, 7 * scale));
        for (x, y, pixel) in degraded.image.enumerate_pixels() {
            assert_eq!(
                pixel,
                clean.get_pixel(x / scale, y / scale),
                "seed {seed} at ({x}, {y})"
            );
        }
        assert_eq!(degraded.target, clean);
    }
    assert_eq!(scales.len(), 4, "all of 2-5 occur: {scales:?}");
}

#[test]
fn grid_truth_is_consistent_for_every_preset() {
    for preset in Preset::ALL {
        for seed in 0..40 {
            let (cols, rows) = (9 + (seed % 5) as u32, 6 + (seed % 3) as u32);
            let p = sample_params(cols, rows, &preset.config(), seed);
            let g = &p.grid;
            assert_eq!((g.cols, g.rows), (cols, rows));
            p.validate(cols, rows).unwrap();
            for (lines, cells, extent, scale, offset) in [
                (&g.x_lines, cols, g.width, g.scale_x, g.offset_x),
                (&g.y_lines, rows, g.height, g.scale_y, g.offset_y),
            ] {
                let context = format!("{preset} seed {seed}: {g:?}");
                let n = cells as usize;
                assert_eq!(lines.len(), n + 1, "{context}");
                assert!(lines.windows(2).all(|w| w[0] < w[1]), "{context}");
                assert_eq!(offset, lines[0], "{context}");
                assert!(offset <= 0.0 && offset > -scale / 2.0, "{context}");
                assert!(
                    (scale - (lines[n] - lines[0]) / cells as f32).abs() < 1e-3 * scale,
                    "{context}"
                );
                // Every border cell keeps at least half its width on screen.
                let (first, last) = (lines[1] - lines[0], lines[n] - lines[n - 1]);
                assert!(-offset <= first / 2.0, "{context}");
                let end_cut = lines[n] - extent as f32;
                assert!(
                    end_cut <= last / 2.0 + 1e-3 && extent as f32 <= lines[n].ceil(),
                    "{context}"
                );
            }
        }
    }
}

#[test]
fn clean_preset_cell_centres_give_back_the_sprite() {
    let clean = sprite(11, 10, 3);
    for seed in 0..8 {
        let degraded = degrade(&clean, &Preset::Clean.config(), seed);
        let grid = &degraded.params.grid;
        let sampled = RgbaImage::from_fn(grid.cols, grid.rows, |col, row| {
            let (x, y) = grid.cell_centre(col, row);
            *degraded.image.get_pixel(x.floor() as u32, y.floor() as u32)
        });
        assert_eq!(sampled, clean, "seed {seed}");
    }
}

#[test]
fn ai_cells_stay_recognisable_at_their_centres() {
    // The `ai` design target: the sprite can be read back from the cell centres, so a good
    // restorer can recover it exactly. Opaque cells whose neighbours share their colour are
    // checked (edges of soft cells and JPEG ringing are the restorer's problem).
    let clean = blocky_sprite(16, 16, 4);
    let (mut close, mut total) = (0, 0);
    for seed in 0..30 {
        let degraded = degrade(&clean, &Preset::Ai.config(), seed);
        let grid = &degraded.params.grid;
        for row in 1..grid.rows - 1 {
            for col in 1..grid.cols - 1 {
                let own = clean.get_pixel(col, row);
                let neighbours = [(col - 1, row), (col + 1, row), (col, row - 1), (col, row + 1)];
                if own[3] < 255 || neighbours.iter().any(|&(c, r)| clean.get_pixel(c, r) != own) {
                    continue;
                }
                let (x, y) = grid.cell_centre(col, row);
                let seen = degraded.image.get_pixel(x as u32, y as u32);
                let distance =
                    srgb8_to_oklab([seen[0], seen[1], seen[2]]).dist(srgb8_to_oklab([own[0], own[1], own[2]]));
                total += 1;
                close += usize::from(distance < 0.08);
            }
        }
    }
    assert!(total > 100, "too few interior cells checked: {total}");
    assert!(
        close as f32 >= 0.95 * total as f32,
        "{close} of {total} cell centres within ΔE 0.08"
    );
}

#[test]
fn transparent_colour_never_bleeds_into_visible_pixels() {
    // Bright red but fully transparent, next to opaque black.
    let clean = RgbaImage::from_fn(4, 3, |x, _| {
        if x < 2 {
            Rgba([255, 0, 0, 0])
        } else {
            Rgba([0, 0, 0, 255])
        }
    });
    for kernel in [Kernel::Bilinear, Kernel::Bicubic, Kernel::Lanczos3] {
        for integer_scale in [true, false] {
            let cfg = DegradeConfig {
                kernels: vec![kernel],
                scale: [3.0, 7.0],
                integer_scale,
                ..DegradeConfig::default()
            };
            for seed in 0..4 {
                let degraded = degrade(&clean, &cfg, seed);
                let visible: Vec<_> = degraded.image.pixels().filter(|p| p[3] > 0).collect();
                assert!(visible.len() > 6, "{kernel:?}: the black half is visible");
                for p in visible {
                    assert_eq!(p.0[..3], [0, 0, 0], "{kernel:?} seed {seed}: reddish {p:?}");
                }
                assert!(
                    degraded.image.pixels().any(|p| p[3] > 0 && p[3] < 255),
                    "{kernel:?}: alpha itself is resampled"
                );
            }
        }
    }
}

#[test]
fn flattening_makes_image_and_target_opaque_on_the_recorded_background() {
    let clean = sprite(10, 10, 5);
    let cfg = DegradeConfig {
        flatten_probability: 1.0,
        ..DegradeConfig::default()
    };
    let mut backgrounds = std::collections::HashSet::new();
    for seed in 0..10 {
        let degraded = degrade(&clean, &cfg, seed);
        let background = degraded.params.background.expect("flatten probability is 1");
        backgrounds.insert(background);
        assert!(degraded.image.pixels().all(|p| p[3] == 255));
        assert!(degraded.target.pixels().all(|p| p[3] == 255));
        for (clean_pixel, target_pixel) in clean.pixels().zip(degraded.target.pixels()) {
            // The sprite's alpha is binary: opaque pixels stay, transparent ones show the background.
            let expected = if clean_pixel[3] == 255 {
                [clean_pixel[0], clean_pixel[1], clean_pixel[2]]
            } else {
                background
            };
            assert_eq!(target_pixel.0[..3], expected);
        }
        // Nothing else is on, so the image is the nearest upscale of the target.
        let grid = &degraded.params.grid;
        let scale = grid.scale_x as u32;
        for (x, y, pixel) in degraded.image.enumerate_pixels() {
            assert_eq!(pixel, degraded.target.get_pixel(x / scale, y / scale));
        }
    }
    assert!(backgrounds.len() > 3, "backgrounds vary: {backgrounds:?}");
}

#[test]
fn preset_configs_round_trip_and_partial_configs_default_the_rest() {
    for preset in Preset::ALL {
        let cfg = preset.config();
        cfg.validate().unwrap();
        assert_eq!(roundtrip(&cfg), cfg, "{preset}");
        assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
        assert_eq!(serde_json::to_string(&preset).unwrap(), format!("\"{preset}\""));
    }
    let partial: DegradeConfig = serde_json::from_str(r#"{"noise_probability": 1.0}"#).unwrap();
    assert_eq!(
        partial,
        DegradeConfig {
            noise_probability: 1.0,
            ..DegradeConfig::default()
        }
    );
    assert!(
        serde_json::from_str::<DegradeConfig>(r#"{"noise_probabilty": 1.0}"#).is_err(),
        "typos are rejected"
    );
    assert!("blurry".parse::<Preset>().is_err());

    let overridden = Preset::Ai
        .config()
        .with_overrides(&serde_json::json!({"jpeg_probability": 1.0}))
        .unwrap();
    assert_eq!(
        overridden,
        DegradeConfig {
            jpeg_probability: 1.0,
            ..Preset::Ai.config()
        }
    );
}

#[test]
fn validation_rejects_bad_configs_and_mismatched_params() {
    let bad_probability = DegradeConfig {
        blur_probability: 1.5,
        ..DegradeConfig::default()
    };
    assert!(bad_probability.validate().is_err());
    let bad_phase = DegradeConfig {
        phase: [0.0, 0.6],
        ..DegradeConfig::default()
    };
    assert!(bad_phase.validate().is_err());

    let clean = sprite(8, 8, 6);
    let params = sample_params(8, 8, &Preset::Hard.config(), 6);
    assert!(try_apply(&sprite(9, 8, 6), &params).is_err(), "wrong sprite size");
    let mut unordered = params.clone();
    unordered.grid.x_lines.swap(2, 3);
    assert!(try_apply(&clean, &unordered).is_err(), "lines out of order");
    assert!(try_apply(&clean, &params).is_ok());
}

#[test]
fn every_step_runs_and_changes_the_image() {
    // Each optional step, on alone over the clean preset, must change the result, so none
    // of them is silently skipped.
    let clean = sprite(12, 12, 7);
    let base = DegradeConfig {
        scale: [4.0, 4.0],
        ..DegradeConfig::default()
    };
    let reference = degrade(&clean, &base, 1).image;
    let steps = [
        DegradeConfig {
            cell_jitter_probability: 1.0,
            cell_jitter: [0.4, 0.5],
            ..base.clone()
        },
        DegradeConfig {
            phase_probability: 1.0,
            phase: [0.3, 0.4],
            ..base.clone()
        },
        DegradeConfig {
            wobble_probability: 1.0,
            ..base.clone()
        },
        DegradeConfig {
            soft_edge_probability: 1.0,
            ..base.clone()
        },
        DegradeConfig {
            drift_probability: 1.0,
            ..base.clone()
        },
        DegradeConfig {
            gradient_probability: 1.0,
            ..base.clone()
        },
        DegradeConfig {
            blur_probability: 1.0,
            ..base.clone()
        },
        DegradeConfig {
            gamma_probability: 1.0,
            gamma: [1.2, 1.25],
            ..base.clone()
        },
        DegradeConfig {
            exposure_probability: 1.0,
            exposure: [0.8, 0.85],
            ..base.clone()
        },
        DegradeConfig {
            palette_probability: 1.0,
            palette_colours: [2, 3],
            ..base.clone()
        },
        DegradeConfig {
            noise_probability: 1.0,
            ..base.clone()
        },
        DegradeConfig {
            jpeg_probability: 1.0,
            ..base.clone()
        },
    ];
    for cfg in steps {
        let degraded = degrade(&clean, &cfg, 1);
        assert!(degraded.image != reference, "unchanged by {:?}", degraded.params);
    }
}

#[test]
fn degenerate_sprites_degrade_without_panicking() {
    for (width, height) in [(0, 0), (1, 1), (1, 6), (5, 1)] {
        let clean = sprite(width, height, 8);
        for preset in Preset::ALL {
            for seed in 0..6 {
                let degraded = degrade(&clean, &preset.config(), seed);
                let grid = &degraded.params.grid;
                assert_eq!(
                    degraded.image.dimensions(),
                    (grid.width, grid.height),
                    "{preset} {width}x{height}"
                );
                assert_eq!(degraded.target.dimensions(), (width, height));
                assert_eq!(width == 0, grid.width == 0);
            }
        }
    }
    let huge = DegradeConfig {
        scale: [5000.0, 5000.0],
        ..DegradeConfig::default()
    };
    assert!(huge.validate().is_err());
    assert_eq!(
        sample_params(32, 32, &huge, 0).grid.width,
        32 * MAX_SCALE as u32,
        "the scale is capped"
    );
}
