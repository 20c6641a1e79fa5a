use spritedx::grid::{period::windowed_fit, profile::edge_profiles};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let img = spritedx::io::load_rgba(std::path::Path::new(&path)).unwrap();
    let p = edge_profiles(&img, std::env::var("R").map(|r| r.parse().unwrap()).unwrap_or(1));
    let per: f32 = std::env::args().nth(2).unwrap().parse().unwrap();
    for k in [1.0f32, 0.5, 1.0/3.0, 0.25, 2.0] {
        println!("x {}: {:?}   y: {:?}", per*k, windowed_fit(&p.x, per * k), windowed_fit(&p.y, per * k));
    }
    let ys: Vec<(usize, f32)> = p.y.iter().copied().enumerate().filter(|&(_, v)| v > 0.0).collect();
    println!("{:?}", &ys[..60.min(ys.len())]);
}
