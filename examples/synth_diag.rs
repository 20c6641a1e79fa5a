use image::{Rgba, RgbaImage};
use spritedx::grid::{period::windowed_fit, profile::edge_profiles};
fn main() {
    let (cols, scale, phase) = (8u32, 37.0f32, 11.1f32);
    let art: Vec<Vec<[u8; 4]>> = (0..cols).map(|y| (0..cols).map(|x| { let v = spritedx::rng::splitmix64(u64::from(x * 131 + y * 977)) as u8 & 0xC0; [v, 255 - v, v / 2, 255] }).collect()).collect();
    let w = ((cols as f32) * scale - phase).floor() as u32;
    let img = RgbaImage::from_fn(w, w, |x, y| { let ax = ((x as f32 + 0.5 + phase) / scale) as usize; let ay = ((y as f32 + 0.5 + phase) / scale) as usize; Rgba(art[ay.min(7)][ax.min(7)]) });
    let p1 = edge_profiles(&img, 1);
    for q in [36.0f32, 36.5, 36.8, 36.9, 37.0, 37.1, 37.2, 37.5, 38.0] { println!("{q} {:?}", windowed_fit(&p1.x, q)); }
    println!("joint {:?}", spritedx::grid::period::fit_square_cells(&p1.x, &p1.y, 2.0, 40.0, None));
    println!("single {:?}", spritedx::grid::period::fit_comb(&p1.x, 2.0, 40.0, None));
    for r in [1usize, 9] {
        let p = edge_profiles(&img, r);
        let nz: Vec<(usize, f32)> = p.x.iter().copied().enumerate().filter(|&(_, v)| v > 0.0).collect();
        println!("r={r} x: {:?}", nz);
        for per in [12.33f32, 18.5, 37.0] { println!("  {per}: x {:?} y {:?}", windowed_fit(&p.x, per), windowed_fit(&p.y, per)); }
    }
}
#[allow(dead_code)]
fn unused() {}
