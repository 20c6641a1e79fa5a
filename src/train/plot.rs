//! A PNG plot of a training run: one panel per series (loss, validation metrics), each
//! with its name, its first and last values and its range, drawn with embedded-graphics'
//! built-in bitmap font so no font file is needed.

use embedded_graphics::mono_font::{ascii::FONT_6X10, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::{Rgba, RgbaImage};

/// One named series of (step, value) points.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Plot log10 of the values (for losses).
    pub log: bool,
}

/// An `RgbaImage` as an embedded-graphics draw target; points outside are dropped.
struct Canvas(RgbaImage);

impl Dimensions for Canvas {
    fn bounding_box(&self) -> Rectangle {
        Rectangle::new(Point::zero(), Size::new(self.0.width(), self.0.height()))
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.0.width() && (p.y as u32) < self.0.height() {
                self.0.put_pixel(p.x as u32, p.y as u32, Rgba([c.r(), c.g(), c.b(), 255]));
            }
        }
        Ok(())
    }
}

const PANEL_W: u32 = 360;
const PANEL_H: u32 = 150;
const MARGIN: i32 = 6;
const HEADER: i32 = 24;

/// Draws the series as panels in a grid of two columns.
pub fn plot(series: &[Series]) -> RgbaImage {
    let cols = 2u32;
    let rows = (series.len() as u32).div_ceil(cols).max(1);
    let mut canvas = Canvas(RgbaImage::from_pixel(PANEL_W * cols, PANEL_H * rows, Rgba([255, 255, 255, 255])));
    for (i, s) in series.iter().enumerate() {
        let origin = Point::new((i as u32 % cols * PANEL_W) as i32, (i as u32 / cols * PANEL_H) as i32);
        draw_panel(&mut canvas, origin, s);
    }
    canvas.0
}

fn draw_panel(canvas: &mut Canvas, origin: Point, s: &Series) {
    let text = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let grey = PrimitiveStyle::with_stroke(Rgb888::new(190, 190, 190), 1);
    let line = PrimitiveStyle::with_stroke(Rgb888::new(31, 90, 200), 1);
    let value = |v: f64| if s.log { v.max(1e-12).log10() } else { v };
    let pts: Vec<(f64, f64)> = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (x, value(y))).collect();
    let header = match (s.points.first(), s.points.last()) {
        (Some(first), Some(last)) => format!("{}: {:.4} -> {:.4} (step {})", s.name, first.1, last.1, last.0),
        _ => format!("{}: no data", s.name),
    };
    let _ = Text::with_baseline(&header, origin + Point::new(MARGIN, 4), text, Baseline::Top).draw(canvas);
    let plot_area = Rectangle::new(
        origin + Point::new(MARGIN, HEADER),
        Size::new(PANEL_W - 2 * MARGIN as u32, PANEL_H - HEADER as u32 - 2 * MARGIN as u32),
    );
    let _ = plot_area.into_styled(grey).draw(canvas);
    if pts.is_empty() {
        return;
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let range = if s.log { format!("log10 {y0:.2}..{y1:.2}") } else { format!("{y0:.3}..{y1:.3}") };
    let _ = Text::with_baseline(&range, origin + Point::new(MARGIN + 4, HEADER + 2), text, Baseline::Top).draw(canvas);
    let (xs, ys) = ((x1 - x0).max(1e-12), (y1 - y0).max(1e-12));
    let top_left = plot_area.top_left;
    let (w, h) = (f64::from(plot_area.size.width - 1), f64::from(plot_area.size.height - 1));
    let to_px = |(x, y): (f64, f64)| top_left + Point::new(((x - x0) / xs * w) as i32, ((1.0 - (y - y0) / ys) * h) as i32);
    if pts.len() == 1 {
        let p = to_px(pts[0]);
        let _ = Rectangle::new(p - Point::new(1, 1), Size::new(3, 3)).into_styled(PrimitiveStyle::with_fill(Rgb888::new(31, 90, 200))).draw(canvas);
    }
    for pair in pts.windows(2) {
        let _ = Line::new(to_px(pair[0]), to_px(pair[1])).into_styled(line).draw(canvas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_hold_lines_and_text() {
        let falling = Series { name: "loss".into(), points: (0..50).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect(), log: true };
        let single = Series { name: "exact".into(), points: vec![(10.0, 0.5)], log: false };
        let img = plot(&[falling, single, Series::default()]);
        assert_eq!(img.dimensions(), (2 * PANEL_W, 2 * PANEL_H));
        let blue = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (x0..x1).flat_map(|x| (y0..y1).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0 == [31, 90, 200, 255]).count()
        };
        let black = (0..PANEL_W).flat_map(|x| (0..HEADER as u32).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0, 255]).count();
        assert!(blue(0, PANEL_W, 0, PANEL_H) > 100, "the loss line is drawn");
        assert!(blue(PANEL_W, 2 * PANEL_W, 0, PANEL_H) >= 9, "a single point is marked");
        assert!(black > 50, "the header text is drawn");
        assert_eq!(blue(0, PANEL_W, PANEL_H, 2 * PANEL_H), 0, "an empty series draws no line");
    }
}
