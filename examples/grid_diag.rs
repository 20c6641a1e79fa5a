use spritedx::grid::{analyse, GridOptions};
use spritedx::pairs::read_manifest;
use std::path::Path;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let preset = std::env::args().nth(2).unwrap();
    let recs = read_manifest(Path::new(&dir)).unwrap();
    let (mut ok, mut n) = (0, 0);
    for r in recs.iter().filter(|r| r.preset == preset) {
        n += 1;
        let img = spritedx::io::load_rgba(&Path::new(&dir).join(&r.degraded)).unwrap();
        let g = &r.params.grid;
        match analyse(&img, &GridOptions::default()) {
            Ok(d) => {
                let good = d.cols() == g.cols && d.rows() == g.rows;
                if good { ok += 1; } else {
                    println!("{} truth {}x{} s={:.2}x{:.2} off={:.2},{:.2} | got {}x{} s={:.2}x{:.2} conf {:.2}/{:.2} kernel {:?} blur {:?} jit? lines0 {:?}",
                        r.degraded, g.cols, g.rows, g.scale_x, g.scale_y, g.offset_x, g.offset_y, d.cols(), d.rows(), d.cell_width, d.cell_height, d.confidence_x, d.confidence_y, r.params.kernel, r.params.blur_sigma, &d.x_lines[..4.min(d.x_lines.len())]);
                    if std::env::var("FULL").is_ok() { println!("  x {:?}\n  y {:?}\n  tx {:?}\n  ty {:?} w {} h {}", d.x_lines, d.y_lines, g.x_lines, g.y_lines, g.width, g.height); }
                }
            }
            Err(e) => println!("{} truth {}x{} s={:.2} ERR {e}", r.degraded, g.cols, g.rows, g.scale_x),
        }
    }
    println!("{ok}/{n} right size");
}
// (debug helper below)
