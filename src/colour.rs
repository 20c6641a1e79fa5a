//! Colour spaces: sRGB, linear RGB and OKLab.
//!
//! - sRGB <-> linear uses the exact IEC 61966-2-1 piecewise transfer function.
//! - linear sRGB <-> OKLab uses Björn Ottosson's published matrices
//!   (<https://bottosson.github.io/posts/oklab/>), tested against his reference values.
//!
//! Distances between colours in the engine (palette error, clustering, edge detection) are
//! Euclidean distances in OKLab, where 1.0 is the lightness range from black to white;
//! a just-noticeable difference is about 0.02.

/// A colour in OKLab: `l` lightness in [0, 1], `a` green-red, `b` blue-yellow.
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Oklab {
    pub l: f32,
    pub a: f32,
    pub b: f32,
}

impl Oklab {
    /// Squared Euclidean distance.
    pub fn dist2(self, o: Oklab) -> f32 {
        let (dl, da, db) = (self.l - o.l, self.a - o.a, self.b - o.b);
        dl * dl + da * da + db * db
    }

    /// Euclidean distance (OKLab ΔE).
    pub fn dist(self, o: Oklab) -> f32 {
        self.dist2(o).sqrt()
    }
}

/// sRGB-encoded component in [0, 1] to linear light.
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// Linear-light component in [0, 1] to sRGB encoding.
pub fn linear_to_srgb(c: f32) -> f32 {
    if c <= 0.003_130_8 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

/// A table of `srgb_to_linear(v / 255)` for every 8-bit value: the hot paths convert
/// 8-bit pixels and a lookup is ~20x cheaper than `powf`.
pub fn srgb8_to_linear_table() -> &'static [f32; 256] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<[f32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| srgb_to_linear(i as f32 / 255.0)))
}

/// Linear sRGB (components in [0, 1], may exceed slightly) to OKLab.
pub fn linear_to_oklab([r, g, b]: [f32; 3]) -> Oklab {
    let l = 0.412_221_47 * r + 0.536_332_55 * g + 0.051_445_995 * b;
    let m = 0.211_903_5 * r + 0.680_699_5 * g + 0.107_396_96 * b;
    let s = 0.088_302_46 * r + 0.281_718_85 * g + 0.629_978_7 * b;
    let (l, m, s) = (l.cbrt(), m.cbrt(), s.cbrt());
    Oklab {
        l: 0.210_454_26 * l + 0.793_617_8 * m - 0.004_072_047 * s,
        a: 1.977_998_5 * l - 2.428_592_2 * m + 0.450_593_7 * s,
        b: 0.025_904_037 * l + 0.782_771_77 * m - 0.808_675_77 * s,
    }
}

/// OKLab to linear sRGB (not clamped: out-of-gamut colours give components outside [0, 1]).
pub fn oklab_to_linear(c: Oklab) -> [f32; 3] {
    let l = c.l + 0.396_337_78 * c.a + 0.215_803_76 * c.b;
    let m = c.l - 0.105_561_346 * c.a - 0.063_854_17 * c.b;
    let s = c.l - 0.089_484_18 * c.a - 1.291_485_5 * c.b;
    let (l, m, s) = (l * l * l, m * m * m, s * s * s);
    [
        4.076_741_7 * l - 3.307_711_6 * m + 0.230_969_94 * s,
        -1.268_438 * l + 2.609_757_4 * m - 0.341_319_38 * s,
        -0.004_196_086_3 * l - 0.703_418_6 * m + 1.707_614_7 * s,
    ]
}

/// 8-bit sRGB to OKLab.
pub fn srgb8_to_oklab(rgb: [u8; 3]) -> Oklab {
    let t = srgb8_to_linear_table();
    linear_to_oklab([t[rgb[0] as usize], t[rgb[1] as usize], t[rgb[2] as usize]])
}

/// OKLab to 8-bit sRGB, clamped to the gamut and rounded.
pub fn oklab_to_srgb8(c: Oklab) -> [u8; 3] {
    oklab_to_linear(c).map(|v| (linear_to_srgb(v.clamp(0.0, 1.0)) * 255.0).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn srgb_transfer_matches_reference_values() {
        // IEC 61966-2-1: sRGB 0.5 is 0.214041 linear; the knee is continuous.
        assert!(close(srgb_to_linear(0.5), 0.214_041, 1e-6));
        assert!(close(linear_to_srgb(0.214_041), 0.5, 1e-6));
        assert!(close(srgb_to_linear(0.040_45), 0.040_45 / 12.92, 1e-9));
        assert_eq!(srgb_to_linear(0.0), 0.0);
        assert!(close(srgb_to_linear(1.0), 1.0, 1e-7));
    }

    #[test]
    fn oklab_matches_ottosson_reference_values() {
        // Reference OKLab of the sRGB primaries and white, from Ottosson's post and the
        // CSS Color 4 sample code; tolerance 2e-4 (f32 arithmetic, 4-5 published digits).
        let cases: [([u8; 3], [f32; 3]); 4] = [
            ([255, 255, 255], [1.0, 0.0, 0.0]),
            ([255, 0, 0], [0.627_955, 0.224_863, 0.125_846]),
            ([0, 255, 0], [0.866_440, -0.233_888, 0.179_498]),
            ([0, 0, 255], [0.452_014, -0.032_457, -0.311_528]),
        ];
        for (rgb, [l, a, b]) in cases {
            let c = srgb8_to_oklab(rgb);
            assert!(close(c.l, l, 2e-4) && close(c.a, a, 2e-4) && close(c.b, b, 2e-4), "{rgb:?} -> {c:?}");
        }
    }

    proptest! {
        // Round trips: 8-bit sRGB -> OKLab -> 8-bit sRGB is exact after rounding.
        #[test]
        fn srgb8_oklab_round_trip_is_exact(r: u8, g: u8, b: u8) {
            prop_assert_eq!(oklab_to_srgb8(srgb8_to_oklab([r, g, b])), [r, g, b]);
        }

        // sRGB transfer round trip within 1e-5 over [0, 1].
        #[test]
        fn transfer_round_trip(v in 0.0f32..=1.0) {
            prop_assert!(close(linear_to_srgb(srgb_to_linear(v)), v, 1e-5));
        }
    }
}
