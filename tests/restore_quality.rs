//! Quality regression tests of the snap restorer on sprites and degradations the tests
//! make: the share of right-size (and exact) restorations per preset must not fall below
//! floors set under what the restorer measured when these tests were written (stated per
//! test), so a regression in grid analysis or the decoder fails here.

use image::{Rgba, RgbaImage};
use spritedx::degrade::{degrade, Preset};
use spritedx::metrics::{score, MetricOptions};
use spritedx::rng::{rng_from_seed, splitmix64};
use spritedx::snap::{restore, SnapOptions};
use rand::Rng;

/// A pixel-art-like sprite: a transparent margin, a filled blob in a few colours with a
/// dark outline and some single-pixel highlights.
fn sprite(seed: u64, size: u32) -> RgbaImage {
    let mut rng = rng_from_seed(seed);
    let palette: Vec<[u8; 3]> = (0..6).map(|_| [rng.random(), rng.random(), rng.random()]).collect();
    let c = size as f32 / 2.0;
    let radius = size as f32 * rng.random_range(0.3..0.45);
    let inside = |x: u32, y: u32| {
        let (dx, dy) = (x as f32 + 0.5 - c, y as f32 + 0.5 - c);
        let wobble = 1.0 + 0.2 * ((dy.atan2(dx) * 3.0) + seed as f32).sin();
        (dx * dx + dy * dy).sqrt() < radius * wobble
    };
    RgbaImage::from_fn(size, size, |x, y| {
        if !inside(x, y) {
            return Rgba([0, 0, 0, 0]);
        }
        let edge = [(0i32, 1i32), (1, 0), (0, -1), (-1, 0)].iter().any(|&(dx, dy)| {
            let (nx, ny) = (x as i32 + dx, y as i32 + dy);
            nx < 0 || ny < 0 || nx >= size as i32 || ny >= size as i32 || !inside(nx as u32, ny as u32)
        });
        let [r, g, b] = if edge {
            [20, 16, 30]
        } else {
            // Regions of 2-3 pixels of one colour, as art has, with rare single accents.
            let h = splitmix64(seed ^ u64::from((x / 3) * 7919 + (y / 2) * 104729));
            palette[(h % if h % 17 == 0 { 6 } else { 4 }) as usize]
        };
        Rgba([r, g, b, 255])
    })
}

/// (right size, exact) shares of `n` restorations of `preset` samples.
fn shares(preset: Preset, n: u64) -> (f64, f64) {
    let cfg = preset.config();
    let (mut right, mut exact) = (0, 0);
    for i in 0..n {
        let clean = sprite(i, [16, 24, 32][(i % 3) as usize]);
        let sample = degrade(&clean, &cfg, 1000 + i);
        if let Ok(r) = restore(&sample.image, &SnapOptions::default()) {
            let s = score(&r.image, &sample.target, &MetricOptions::default());
            right += usize::from(s.size_match);
            exact += usize::from(s.exact);
        }
    }
    (right as f64 / n as f64, exact as f64 / n as f64)
}

#[test]
fn clean_nearest_upscales_restore_exactly() {
    // Measured 24/24 right size and exact.
    let (right, exact) = shares(Preset::Clean, 24);
    assert_eq!(right, 1.0);
    assert_eq!(exact, 1.0);
}

#[test]
fn seed_and_ai_grids_are_found() {
    // Measured: right size seed 23/24, ai 24/24; exact seed 23/24 (6/24 when these floors
    // were first set, 0/24 before the decoder undid bicubic blur), ai 13/24 (9/24 then).
    let (seed_right, seed_exact) = shares(Preset::Seed, 24);
    let (ai_right, ai_exact) = shares(Preset::Ai, 24);
    eprintln!("right size: seed {seed_right:.3}, ai {ai_right:.3}; exact: seed {seed_exact:.3}, ai {ai_exact:.3}");
    assert!(seed_right >= 22.0 / 24.0, "seed right size {seed_right}");
    assert!(ai_right >= 23.0 / 24.0, "ai right size {ai_right}");
    assert!(seed_exact >= 21.0 / 24.0, "seed exact {seed_exact}");
    assert!(ai_exact >= 11.0 / 24.0, "ai exact {ai_exact}");
}

/// A sprite of `tests/fixtures` (see its README).
fn fixture_sprite(name: &str) -> RgbaImage {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    image::open(&path).expect("fixture").to_rgba8()
}

/// A fixture sprite through the `seed` degradation its tuning pair drew (`seed`), checked
/// against that pair's scale and width, and snap's restoration of it (a grid must be found).
fn restored_tuning_pair(fixture: &str, seed: u64, scale: f32, width: u32) -> (spritedx::snap::Restored, spritedx::degrade::Degraded) {
    let clean = fixture_sprite(fixture);
    let sample = degrade(&clean, &Preset::Seed.config(), seed);
    assert_eq!((sample.params.grid.scale_x, sample.image.width()), (scale, width), "the tuning pair's degradation");
    let restored = restore(&sample.image, &SnapOptions::default()).expect("a grid");
    (restored, sample)
}

/// A Dungeon Crawl Stone Soup staff (CC0, `tests/fixtures/README.md`) through the `seed`
/// degradation of the tuning pair it failed on: 2x bicubic, blur σ 0.23, noise σ 3, the
/// grid 0.19 px and 0.07 px left of and above the image's corner. Its black outline cells
/// with gold on their right came out at (10, 7, 2) while a single refinement of the blur
/// model left a grid line 0.035 px off (the shade absorbed the misfit and kept the line
/// there); with the model refined again once that shade merged, every pixel is within the
/// eval's tolerance.
#[test]
fn a_two_x_staff_keeps_its_black_outline() {
    let (restored, sample) = restored_tuning_pair("dcss_player_hand1_staff_ruby.png", 12395043600985519627, 2.0, 63);
    let s = score(&restored.image, &sample.target, &MetricOptions::default());
    assert!(s.exact, "pixel accuracy {}", s.pixel_accuracy);
}

/// A Dungeon Crawl Stone Soup white flame (CC0, `tests/fixtures/README.md`) through the
/// `seed` degradation of its validation pair: 2x bicubic, blur σ 0.30, noise σ 3. A black
/// cell under the flame's bright edge came out (0, 0, 9): a shade of the first palette
/// that the image's choice of colours had left without cells, which the merge test never
/// weighed and a later choice brought back. Colours without cells now leave the palette
/// with the merged ones, and every pixel is within the eval's tolerance.
#[test]
fn a_two_x_flame_keeps_no_stale_shade() {
    let (restored, sample) = restored_tuning_pair("dcss_player_hand2_misc_fire_white.png", 17231742737369712187, 2.0, 64);
    let s = score(&restored.image, &sample.target, &MetricOptions::default());
    assert!(s.exact, "pixel accuracy {}, palette {:?}", s.pixel_accuracy, restored.palette);
}

/// A Dungeon Crawl Stone Soup floor (CC0, `tests/fixtures/README.md`) through the `seed`
/// degradation of its validation pair: 5x bicubic, blur σ 0.78, noise σ 3. One cell on
/// its left edge draws a shade (43, 57, 27) that no other cell does, 9 levels from its
/// neighbour's; the first palette clustered the two together, and the merge test, which
/// only merges, never saw them apart: that cell came out (52, 57, 20). Tested for a
/// colour of its own, it gets one, and the floor is exact.
#[test]
fn a_five_x_floor_keeps_the_shade_of_one_cell() {
    let (restored, sample) = restored_tuning_pair("dcss_dngn_floor_snake_a0.png", 18204237627651967849, 5.0, 160);
    let s = score(&restored.image, &sample.target, &MetricOptions::default());
    assert!(s.exact, "pixel accuracy {}", s.pixel_accuracy);
}

/// A Dungeon Crawl Stone Soup vine wall (CC0, `tests/fixtures/README.md`), a texture of
/// stone blocks whose strongest edges recur every 8 cells, through the `seed` degradation
/// of its tuning pair: 2x bicubic, blur σ 0.45, noise σ 3. Those edges outrank the cells'
/// faint ones in the period search, which found 16 px cells (4x4 of them); the edges
/// between that comb's teeth lie on the two-pixel comb, and the grid is searched again
/// below it.
#[test]
fn a_two_x_vine_wall_gets_its_cells_not_its_tile() {
    let (restored, _) = restored_tuning_pair("dcss_dngn_wall_wall_vines3.png", 3099521366979725625, 2.0, 63);
    assert_eq!(restored.image.dimensions(), (32, 32), "{:?}", restored.grid);
}

/// A Dungeon Crawl Stone Soup floor (CC0, `tests/fixtures/README.md`), flagstones whose
/// joints recur every 8 cells, through the `seed` degradation of its tuning pair: 5x
/// bicubic, blur σ 0.34, noise σ 3. The joints' comb won the period search (4x4 cells of
/// 40 px), whose "cells" are anything but flat inside; searched again below half that,
/// the grid is the drawn one and the restoration exact.
#[test]
fn a_five_x_floor_gets_flat_cells_not_its_flagstones() {
    let (restored, sample) = restored_tuning_pair("dcss_dngn_floor_black_cobalt02.png", 18005738534048205707, 5.0, 160);
    let s = score(&restored.image, &sample.target, &MetricOptions::default());
    assert!(s.exact, "{:?}: pixel accuracy {}", restored.image.dimensions(), s.pixel_accuracy);
}

/// A Dungeon Crawl Stone Soup floor (CC0, `tests/fixtures/README.md`), a dithered crystal
/// tile whose frame recurs every 16 cells, through the `seed` degradation of its
/// validation pair: 5x bicubic, blur σ 0.81, noise σ 3. A comb of 14 teeth per tile meets
/// the frame as well as the cells' 16, and with only faint dither edges between them it
/// won the period search (28x28 cells of 5.7 px, straddling the drawn ones); of the
/// neighbouring periods, the one whose cells are flat inside is the drawn grid, and the
/// restoration is exact.
#[test]
fn a_five_x_crystal_floor_gets_the_cells_its_frame_does_not_tell() {
    let (restored, sample) = restored_tuning_pair("dcss_dngn_floor_crystal_floor0.png", 10321171374089885378, 5.0, 160);
    let s = score(&restored.image, &sample.target, &MetricOptions::default());
    assert!(s.exact, "{:?}: pixel accuracy {}", restored.image.dimensions(), s.pixel_accuracy);
}

/// A Dungeon Crawl Stone Soup hornet (CC0, `tests/fixtures/README.md`), black outlines
/// against yellow, through the `seed` degradation of its validation pair: 4x bicubic,
/// blur σ 0.23, noise σ 3. The outlines ring below black and the image clipped that, so
/// plain least squares on the summed plane preferred bilinear (which does not ring) to
/// bicubic, and both to a blurred nearest-neighbour upscale; with only its best kernel
/// fitted again, the image was taken for a nearest-neighbour one and its cells' ramps
/// reduced to the wrong colours (93.5% of pixels right). Each kernel's best, censored,
/// finds the bicubic model, and the restoration is exact.
#[test]
fn a_four_x_hornet_is_read_as_the_bicubic_upscale_it_is() {
    let (restored, sample) = restored_tuning_pair("dcss_mon_animals_hornet.png", 8969164693527557306, 4.0, 128);
    assert_eq!(restored.blur.map(|b| b.kernel), Some(spritedx::degrade::Kernel::Bicubic), "{:?}", restored.blur);
    let s = score(&restored.image, &sample.target, &MetricOptions::default());
    assert!(s.exact, "pixel accuracy {}", s.pixel_accuracy);
}

/// The same hornet at its true resolution, as a user might pass a sprite that was never
/// upscaled: before the single-pixel detail test the grid analysis found 9x10 cells of
/// about 3.5 px in it and snap reduced it to three colours. It is refused with an error that
/// says why, and restored as given when the user gives the grid (1x1 cells: the sprite
/// itself, every colour kept).
#[test]
fn a_sprite_at_true_resolution_is_refused_unless_the_grid_is_given() {
    let clean = fixture_sprite("dcss_mon_animals_hornet.png");
    let refused = restore(&clean, &SnapOptions::default()).expect_err("a sprite at true resolution");
    assert!(matches!(refused, spritedx::grid::GridError::TrueResolution { .. }), "{refused}");
    assert!(refused.to_string().contains("--cell-size"), "the error says what to do: {refused}");
    let mut given = SnapOptions::default();
    given.grid.cell_size = Some((1.0, 1.0));
    let restored = restore(&clean, &given).expect("the grid was given");
    let s = score(&restored.image, &clean, &MetricOptions::default());
    assert!(s.exact, "{:?}: pixel accuracy {}", restored.image.dimensions(), s.pixel_accuracy);
}
