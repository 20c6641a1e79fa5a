//! Palette files: Lospec `.hex`, GIMP `.gpl`, JASC `.pal` and palette images.
//! The formats and how a file's format is recognised are described in the module docs of
//! [`crate::palette`].

use super::Palette;
use crate::io::{load_rgba, ImageIoError};
use std::fmt;
use std::path::{Path, PathBuf};

/// Most distinct colours accepted from a palette image: more means the image is a picture,
/// not a swatch strip, and using it as a palette would be a mistake.
pub const MAX_IMAGE_PALETTE_COLOURS: usize = 256;

/// Pixels with alpha below this are transparent and are not palette colours.
const OPAQUE_ALPHA: u8 = 128;

/// The palette file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaletteFormat {
    /// Lospec `.hex`: one `RRGGBB` per line.
    Hex,
    /// GIMP `.gpl`.
    Gpl,
    /// JASC (Paint Shop Pro) `.pal`.
    JascPal,
    /// An image whose distinct opaque pixels are the colours.
    Image,
}

impl PaletteFormat {
    /// What a well-formed file of this format looks like, for error messages.
    fn expected(self) -> &'static str {
        match self {
            PaletteFormat::Hex => "one RRGGBB or #RRGGBB colour per line (Lospec .hex)",
            PaletteFormat::Gpl => "a `GIMP Palette` header, then `R G B [name]` lines with values 0-255 (GIMP .gpl)",
            PaletteFormat::JascPal => "`JASC-PAL`, `0100`, the colour count, then `R G B` lines with values 0-255 (JASC .pal)",
            PaletteFormat::Image => "an image whose opaque pixels are the palette's colours",
        }
    }
}

impl fmt::Display for PaletteFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PaletteFormat::Hex => "Lospec .hex",
            PaletteFormat::Gpl => "GIMP .gpl",
            PaletteFormat::JascPal => "JASC .pal",
            PaletteFormat::Image => "image",
        })
    }
}

/// What can go wrong reading a palette file.
#[derive(Debug, thiserror::Error)]
pub enum PaletteError {
    #[error("{path}: cannot read the palette file: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {problem}; expected {expected}")]
    BadLine { path: PathBuf, line: usize, problem: String, expected: &'static str },
    #[error("{path}: the {format} palette file has no colours; expected {expected}")]
    Empty { path: PathBuf, format: PaletteFormat, expected: &'static str },
    #[error("{path}: the {format} palette file is not UTF-8 text; expected {expected}")]
    NotText { path: PathBuf, format: PaletteFormat, expected: &'static str },
    #[error("{path}: the image has more than {max} distinct opaque colours, so it is a picture rather than a palette; expected a swatch image with one pixel or block per colour")]
    TooManyColours { path: PathBuf, max: usize },
    #[error("{path}: not a palette file; expected a Lospec .hex, GIMP .gpl or JASC .pal text file, or an image (PNG, GIF, BMP, WebP, JPEG) whose opaque pixels are the colours")]
    UnknownFormat { path: PathBuf },
    #[error("cannot read the palette image: {0}")]
    Image(#[from] ImageIoError),
}

impl Palette {
    /// Reads a palette file; the format is recognised from the content and the extension as
    /// described in the module docs.
    pub fn from_file(path: &Path) -> Result<Palette, PaletteError> {
        let bytes = std::fs::read(path).map_err(|source| PaletteError::Unreadable { path: path.to_owned(), source })?;
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let text = std::str::from_utf8(&bytes).ok().map(|t| t.strip_prefix('\u{feff}').unwrap_or(t));
        let first_line = text.and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()));
        let format = match (first_line, extension.as_deref()) {
            (Some("GIMP Palette"), _) | (_, Some("gpl")) => PaletteFormat::Gpl,
            (Some("JASC-PAL"), _) | (_, Some("pal")) => PaletteFormat::JascPal,
            (_, Some("hex")) => PaletteFormat::Hex,
            (_, Some("png" | "gif" | "bmp" | "webp" | "jpg" | "jpeg")) => PaletteFormat::Image,
            _ if text.is_none() => PaletteFormat::Image,
            _ => PaletteFormat::Hex,
        };
        if format == PaletteFormat::Image {
            let guessed = !matches!(extension.as_deref(), Some("png" | "gif" | "bmp" | "webp" | "jpg" | "jpeg"));
            return match Palette::from_image(path) {
                Err(PaletteError::Image(ImageIoError::NotAnImage { .. })) if guessed => {
                    Err(PaletteError::UnknownFormat { path: path.to_owned() })
                }
                result => result,
            };
        }
        let not_text = || PaletteError::NotText { path: path.to_owned(), format, expected: format.expected() };
        let text = text.ok_or_else(not_text)?;
        Palette::from_text(text, format, path)
    }

    /// Parses the text of a `.hex`, `.gpl` or `.pal` file; `path` only names the file in
    /// errors. [`PaletteFormat::Image`] is not text and gives [`PaletteError::NotText`].
    pub fn from_text(text: &str, format: PaletteFormat, path: &Path) -> Result<Palette, PaletteError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let colours = match format {
            PaletteFormat::Hex => parse_hex(text, path)?,
            PaletteFormat::Gpl => parse_gpl(text, path)?,
            PaletteFormat::JascPal => parse_jasc(text, path)?,
            PaletteFormat::Image => {
                return Err(PaletteError::NotText { path: path.to_owned(), format, expected: format.expected() })
            }
        };
        finish(colours, format, path)
    }

    /// Reads an image whose distinct pixels with alpha >= 128 are the palette, in order of
    /// first appearance (row by row).
    pub fn from_image(path: &Path) -> Result<Palette, PaletteError> {
        let image = load_rgba(path)?;
        let mut colours: Vec<[u8; 3]> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pixel in image.pixels() {
            let [r, g, b, a] = pixel.0;
            if a >= OPAQUE_ALPHA && seen.insert([r, g, b]) {
                if colours.len() == MAX_IMAGE_PALETTE_COLOURS {
                    return Err(PaletteError::TooManyColours { path: path.to_owned(), max: MAX_IMAGE_PALETTE_COLOURS });
                }
                colours.push([r, g, b]);
            }
        }
        finish(colours, PaletteFormat::Image, path)
    }
}

/// Drops repeated colours (keeping the first) and refuses an empty palette.
fn finish(colours: Vec<[u8; 3]>, format: PaletteFormat, path: &Path) -> Result<Palette, PaletteError> {
    if colours.is_empty() {
        return Err(PaletteError::Empty { path: path.to_owned(), format, expected: format.expected() });
    }
    let mut seen = std::collections::HashSet::new();
    Ok(Palette { colours: colours.into_iter().filter(|c| seen.insert(*c)).collect() })
}

/// Builds the error for line `line` (1-based) of a file of `format`.
fn bad_line(path: &Path, line: usize, format: PaletteFormat, problem: String) -> PaletteError {
    PaletteError::BadLine { path: path.to_owned(), line, problem, expected: format.expected() }
}

/// Whether a trimmed `.hex` line is a comment: `;`, `//`, or `#` followed by whitespace or
/// nothing (`#` followed by hex digits is a colour).
fn is_hex_comment(line: &str) -> bool {
    line.starts_with(';') || line.starts_with("//") || line == "#" || line.starts_with("# ") || line.starts_with("#\t")
}

fn parse_hex(text: &str, path: &Path) -> Result<Vec<[u8; 3]>, PaletteError> {
    let mut colours = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || is_hex_comment(line) {
            continue;
        }
        let bad = |problem: String| bad_line(path, index + 1, PaletteFormat::Hex, problem);
        let (token, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        if !rest.is_empty() && !is_hex_comment(rest) {
            return Err(bad(format!("unexpected `{rest}` after the colour")));
        }
        let digits = token.strip_prefix('#').unwrap_or(token);
        match parse_hex_rgb(digits) {
            Some(colour) => colours.push(colour),
            None => return Err(bad(format!("`{token}` is not a 6-digit hex colour"))),
        }
    }
    Ok(colours)
}

/// `RRGGBB` (either case) to a colour.
fn parse_hex_rgb(digits: &str) -> Option<[u8; 3]> {
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let channel = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).ok();
    Some([channel(0)?, channel(2)?, channel(4)?])
}

/// Three decimal channel values 0-255 from `tokens`, naming the problem if there are fewer
/// or one is not a number in range.
fn parse_decimal_rgb<'a>(tokens: &mut impl Iterator<Item = &'a str>) -> Result<[u8; 3], String> {
    let mut rgb = [0u8; 3];
    for (channel, name) in rgb.iter_mut().zip(["red", "green", "blue"]) {
        let token = tokens.next().ok_or_else(|| format!("the {name} value is missing"))?;
        *channel = match token.parse::<u32>() {
            Ok(v) => u8::try_from(v).map_err(|_| format!("the {name} value {v} is out of range 0-255"))?,
            Err(_) => return Err(format!("the {name} value `{token}` is not a whole number")),
        };
    }
    Ok(rgb)
}

fn parse_gpl(text: &str, path: &Path) -> Result<Vec<[u8; 3]>, PaletteError> {
    let format = PaletteFormat::Gpl;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "GIMP Palette" => {}
        Some((_, header)) => {
            let problem = format!("the first line is `{}`, not `GIMP Palette`", header.trim());
            return Err(bad_line(path, 1, format, problem));
        }
        None => return Err(PaletteError::Empty { path: path.to_owned(), format, expected: format.expected() }),
    }
    let mut colours = Vec::new();
    for (index, raw) in lines {
        let line = raw.trim();
        // Header fields such as `Name: Foo`, `Columns: 8`: a word and a colon, before any digit.
        let is_field = line.chars().next().is_some_and(char::is_alphabetic) && line.contains(':');
        if line.is_empty() || line.starts_with('#') || is_field {
            continue;
        }
        // The rest of the line after the three values is the colour's name.
        let colour = parse_decimal_rgb(&mut line.split_whitespace()).map_err(|p| bad_line(path, index + 1, format, p))?;
        colours.push(colour);
    }
    Ok(colours)
}

fn parse_jasc(text: &str, path: &Path) -> Result<Vec<[u8; 3]>, PaletteError> {
    let format = PaletteFormat::JascPal;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
    let bad = |line: usize, problem: String| bad_line(path, line, format, problem);
    match lines.next() {
        Some((_, "JASC-PAL")) => {}
        Some((n, other)) => return Err(bad(n, format!("the header is `{other}`, not `JASC-PAL`"))),
        None => return Err(PaletteError::Empty { path: path.to_owned(), format, expected: format.expected() }),
    }
    match lines.next() {
        Some((_, "0100")) => {}
        Some((n, other)) => return Err(bad(n, format!("the version is `{other}`, not `0100`"))),
        None => return Err(bad(1, "the version and colour count are missing".into())),
    }
    let (count_line, count) = match lines.next() {
        Some((n, count)) => {
            let not_a_count = |_| bad(n, format!("the colour count `{count}` is not a whole number"));
            (n, count.parse::<usize>().map_err(not_a_count)?)
        }
        None => return Err(bad(2, "the colour count is missing".into())),
    };
    let mut colours = Vec::with_capacity(count.min(4096));
    for (n, line) in lines {
        if colours.len() == count {
            return Err(bad(n, format!("more colours than the {count} the header announces (line {count_line})")));
        }
        let mut tokens = line.split_whitespace();
        let colour = parse_decimal_rgb(&mut tokens).map_err(|p| bad(n, p))?;
        if let Some(extra) = tokens.next() {
            return Err(bad(n, format!("unexpected `{extra}` after the blue value")));
        }
        colours.push(colour);
    }
    if colours.len() < count {
        return Err(bad(count_line, format!("the header announces {count} colours but the file has {}", colours.len())));
    }
    Ok(colours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn write(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// The error's line number, or a panic naming the unexpected result.
    fn error_line(result: Result<Palette, PaletteError>) -> (usize, String) {
        match result {
            Err(e @ PaletteError::BadLine { line, .. }) => (line, e.to_string()),
            other => panic!("expected a BadLine error, got {other:?}"),
        }
    }

    #[test]
    fn hex_files_accept_hash_prefixes_either_case_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "\u{feff}; Lospec palette\n\n#FF0000\n00ff00   ; green\n  #0000Ab\n# a comment\n//another\nFF0000\n\n";
        let palette = Palette::from_file(&write(&dir, "p.hex", text.as_bytes())).unwrap();
        assert_eq!(palette.colours, vec![[255, 0, 0], [0, 255, 0], [0, 0, 0xAB]], "duplicate red dropped");
        // A text file with another extension is read as .hex too.
        let palette = Palette::from_file(&write(&dir, "p.txt", b"123456\n")).unwrap();
        assert_eq!(palette.colours, vec![[0x12, 0x34, 0x56]]);
    }

    #[test]
    fn bad_hex_lines_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bad.hex", b"ff0000\n\n12345\n");
        let (line, message) = error_line(Palette::from_file(&path));
        assert_eq!(line, 3);
        assert!(message.contains("bad.hex:3") && message.contains("`12345`") && message.contains("RRGGBB"), "{message}");
        for bad in ["#gg0000", "ff0000 red", "ff00001", "0xff0000"] {
            let (line, message) = error_line(Palette::from_text(bad, PaletteFormat::Hex, Path::new("x.hex")));
            assert_eq!(line, 1, "{bad}: {message}");
        }
    }

    #[test]
    fn gpl_files_skip_header_fields_comments_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let text = "GIMP Palette\nName: Test\nColumns: 4\n#\n# comment\n\n255   0   0\tRed\n  0 128 255 Sky blue\n 10 20 30\n";
        let palette = Palette::from_file(&write(&dir, "p.gpl", text.as_bytes())).unwrap();
        assert_eq!(palette.colours, vec![[255, 0, 0], [0, 128, 255], [10, 20, 30]]);
        // Recognised by its header whatever the extension.
        let palette = Palette::from_file(&write(&dir, "p.txt", text.as_bytes())).unwrap();
        assert_eq!(palette.colours.len(), 3);
    }

    #[test]
    fn bad_gpl_files_name_the_line_and_problem() {
        let path = Path::new("p.gpl");
        let (line, message) = error_line(Palette::from_text("GIMP Palette\n1 2 3\n1 256 3 x\n", PaletteFormat::Gpl, path));
        assert_eq!(line, 3);
        assert!(message.contains("p.gpl:3") && message.contains("256 is out of range"), "{message}");
        let (line, message) = error_line(Palette::from_text("GIMP Palette\n1 2\n", PaletteFormat::Gpl, path));
        assert_eq!(line, 2);
        assert!(message.contains("blue value is missing"), "{message}");
        let (line, message) = error_line(Palette::from_text("Gimp palette\n1 2 3\n", PaletteFormat::Gpl, path));
        assert_eq!(line, 1);
        assert!(message.contains("GIMP Palette"), "{message}");
    }

    #[test]
    fn jasc_files_parse_and_check_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let text = "JASC-PAL\r\n0100\r\n3\r\n255 0 0\r\n0 255 0\r\n\r\n0 0 255\r\n";
        let palette = Palette::from_file(&write(&dir, "p.pal", text.as_bytes())).unwrap();
        assert_eq!(palette.colours, vec![[255, 0, 0], [0, 255, 0], [0, 0, 255]]);

        let path = Path::new("p.pal");
        let (line, message) = error_line(Palette::from_text("JASC-PAL\n0100\n3\n1 2 3\n", PaletteFormat::JascPal, path));
        assert_eq!(line, 3, "the count line");
        assert!(message.contains("announces 3 colours but the file has 1"), "{message}");
        let (line, _) = error_line(Palette::from_text("JASC-PAL\n0100\n1\n1 2 3\n4 5 6\n", PaletteFormat::JascPal, path));
        assert_eq!(line, 5);
        let (line, message) = error_line(Palette::from_text("JASC-PAL\n0100\n1\n1 2 x\n", PaletteFormat::JascPal, path));
        assert_eq!(line, 4);
        assert!(message.contains("`x` is not a whole number") && message.contains("JASC"), "{message}");
        let (line, _) = error_line(Palette::from_text("JASC-PAL\n0200\n1\n1 2 3\n", PaletteFormat::JascPal, path));
        assert_eq!(line, 2);
        let (line, _) = error_line(Palette::from_file(&write(&dir, "q.pal", b"hello\n")));
        assert_eq!(line, 1, "a .pal file without the header");
    }

    #[test]
    fn empty_palettes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [
            ("e.hex", "; only a comment\n\n"),
            ("e.gpl", "GIMP Palette\nName: empty\n"),
            ("e.pal", "JASC-PAL\n0100\n0\n"),
            ("e2.hex", ""),
        ] {
            let err = Palette::from_file(&write(&dir, name, content.as_bytes())).unwrap_err();
            assert!(matches!(err, PaletteError::Empty { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name) && err.to_string().contains("no colours"), "{err}");
        }
    }

    #[test]
    fn image_palettes_take_opaque_pixels_in_order_of_first_appearance() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = RgbaImage::from_pixel(4, 2, Rgba([9, 9, 9, 0]));
        image.put_pixel(1, 0, Rgba([200, 10, 10, 255]));
        image.put_pixel(3, 0, Rgba([10, 200, 10, 255]));
        image.put_pixel(0, 1, Rgba([200, 10, 10, 255]));
        image.put_pixel(2, 1, Rgba([10, 10, 200, 200]));
        image.put_pixel(3, 1, Rgba([50, 50, 50, 100])); // mostly transparent: ignored
        let path = dir.path().join("swatch.png");
        image.save(&path).unwrap();
        let palette = Palette::from_file(&path).unwrap();
        assert_eq!(palette.colours, vec![[200, 10, 10], [10, 200, 10], [10, 10, 200]]);
        // A PNG without an extension is recognised by its content.
        let bare = dir.path().join("swatch");
        std::fs::copy(&path, &bare).unwrap();
        assert_eq!(Palette::from_file(&bare).unwrap(), palette);

        let clear = dir.path().join("clear.png");
        RgbaImage::from_pixel(2, 2, Rgba([1, 2, 3, 0])).save(&clear).unwrap();
        assert!(matches!(Palette::from_file(&clear), Err(PaletteError::Empty { .. })));

        let photo = dir.path().join("photo.png");
        RgbaImage::from_fn(32, 32, |x, y| Rgba([x as u8 * 8, y as u8 * 8, 0, 255])).save(&photo).unwrap();
        let err = Palette::from_file(&photo).unwrap_err();
        assert!(matches!(err, PaletteError::TooManyColours { .. }) && err.to_string().contains("photo.png"), "{err}");
    }

    #[test]
    fn unreadable_and_unrecognised_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Palette::from_file(&dir.path().join("missing.hex")).unwrap_err();
        assert!(matches!(err, PaletteError::Unreadable { .. }) && err.to_string().contains("missing.hex"), "{err}");
        let err = Palette::from_file(&write(&dir, "blob", &[0xff, 0xfe, 0x00, 0x80, 0x81])).unwrap_err();
        assert!(matches!(err, PaletteError::UnknownFormat { .. }) && err.to_string().contains("blob"), "{err}");
        let err = Palette::from_file(&write(&dir, "broken.png", b"not a png")).unwrap_err();
        assert!(matches!(err, PaletteError::Image(_)) && err.to_string().contains("broken.png"), "{err}");
        let err = Palette::from_file(&write(&dir, "binary.gpl", &[0xff, 0xfe, 0x00])).unwrap_err();
        assert!(matches!(err, PaletteError::NotText { .. }) && err.to_string().contains("GIMP"), "{err}");
    }

    #[test]
    fn hex_output_reads_back() {
        let palette = Palette { colours: vec![[1, 2, 3], [250, 128, 0]] };
        assert_eq!(Palette::from_text(&palette.to_hex(), PaletteFormat::Hex, Path::new("x.hex")).unwrap(), palette);
    }
}
