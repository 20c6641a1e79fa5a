//! Image input and output.
//!
//! Reads PNG (8/16-bit, grey, palette, RGB, RGBA), JPEG, WebP, GIF (first frame) and BMP
//! into RGBA8, which is what every part of the engine works in. Errors name the file and
//! say what is wrong with it. Writes PNG atomically: the image goes to a temporary file
//! in the destination folder, which is then renamed over the destination, so a crash or a
//! full disk never leaves a half-written output.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbaImage};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// Default largest accepted image, in pixels (width x height): 64 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// What can go wrong reading or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    #[error("{path}: cannot read the file: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an image in a supported format (PNG, JPEG, WebP, GIF, BMP)")]
    NotAnImage { path: PathBuf },
    #[error("{path}: the {format} data is corrupt or truncated: {detail}")]
    Corrupt { path: PathBuf, format: String, detail: String },
    #[error("{path}: the image has zero width or height ({width}x{height})")]
    ZeroSized { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: {width}x{height} is larger than the limit of {max_pixels} pixels; raise it with --max-pixels if this is intended")]
    TooLarge { path: PathBuf, width: u32, height: u32, max_pixels: u64 },
    #[error("{path}: cannot write the image: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// Limits applied when reading.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Largest accepted width x height.
    pub max_pixels: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { max_pixels: DEFAULT_MAX_PIXELS }
    }
}

/// Reads an image file into RGBA8 with the default limits.
pub fn load_rgba(path: &Path) -> Result<RgbaImage, ImageIoError> {
    load_rgba_with(path, ReadLimits::default())
}

/// Reads an image file into RGBA8. The format is taken from the content, not the extension.
pub fn load_rgba_with(path: &Path, limits: ReadLimits) -> Result<RgbaImage, ImageIoError> {
    let unreadable = |source| ImageIoError::Unreadable { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut reader = ImageReader::new(BufReader::new(file)).with_guessed_format().map_err(unreadable)?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp)) => f,
        _ => return Err(ImageIoError::NotAnImage { path: path.to_owned() }),
    };
    let corrupt = |e: image::ImageError| ImageIoError::Corrupt {
        path: path.to_owned(),
        format: format!("{format:?}").to_uppercase(),
        detail: e.to_string(),
    };
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(1 << 26));
    reader.limits(decoder_limits);
    // The decoder reads only the header until asked for pixels, so a huge image is
    // refused cheaply.
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageIoError::ZeroSized { path: path.to_owned(), width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageIoError::TooLarge { path: path.to_owned(), width, height, max_pixels: limits.max_pixels });
    }
    Ok(DynamicImage::from_decoder(decoder).map_err(corrupt)?.into_rgba8())
}

/// Writes an RGBA8 image as PNG, atomically (temporary file in the same folder, then rename).
/// Creates the parent folder when it is missing.
pub fn save_png_atomic(img: &RgbaImage, path: &Path) -> Result<(), ImageIoError> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| ImageIoError::Write { path: path.to_owned(), detail: e.to_string() })?;
    write_atomic(path, &bytes)
        .map_err(|e| ImageIoError::Write { path: path.to_owned(), detail: e.to_string() })
}

/// Writes bytes to `path` atomically: a temporary file in the same folder, flushed, then
/// renamed over `path`. Creates the parent folder when it is missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".spritedx-").suffix(".tmp").tempfile_in(&dir)?;
    tmp.write_all(bytes)?;
    persist_atomic(tmp, path)
}

/// Finishes an atomic write: flushes the temporary file to disk and renames it over
/// `path`. Temporary files are private (0600); the output gets the permissions of the file
/// it replaces, or those of an ordinary new file.
pub fn persist_atomic(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    let permissions = match std::fs::metadata(path) {
        Ok(existing) => existing.permissions(),
        Err(_) => new_file_permissions(tmp.as_file())?,
    };
    tmp.as_file().set_permissions(permissions)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(unix)]
fn new_file_permissions(_file: &std::fs::File) -> std::io::Result<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn new_file_permissions(file: &std::fs::File) -> std::io::Result<std::fs::Permissions> {
    Ok(file.metadata()?.permissions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageBuffer, Luma, Rgba};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn reads_every_supported_format_into_rgba8() {
        let dir = tmp();
        let rgba = RgbaImage::from_fn(5, 3, |x, y| Rgba([x as u8 * 40, y as u8 * 80, 7, 255]));
        for (ext, fmt) in [("png", ImageFormat::Png), ("bmp", ImageFormat::Bmp), ("gif", ImageFormat::Gif), ("webp", ImageFormat::WebP)] {
            let p = dir.path().join(format!("a.{ext}"));
            DynamicImage::ImageRgba8(rgba.clone()).save_with_format(&p, fmt).unwrap();
            let back = load_rgba(&p).unwrap();
            assert_eq!(back.dimensions(), (5, 3), "{ext}");
            if ext != "gif" {
                assert_eq!(back, rgba, "{ext} is lossless");
            }
        }
        // JPEG (lossy, opaque) and 16-bit grey PNG.
        let p = dir.path().join("a.jpg");
        DynamicImage::ImageRgba8(rgba.clone()).to_rgb8().save(&p).unwrap();
        assert_eq!(load_rgba(&p).unwrap().dimensions(), (5, 3));
        let grey16: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(4, 4, |x, _| Luma([x as u16 * 20000]));
        let p = dir.path().join("g16.png");
        DynamicImage::ImageLuma16(grey16).save(&p).unwrap();
        let back = load_rgba(&p).unwrap();
        // 60000 / 257 = 233.46: 16-bit values scale to 8 bits by rounding.
        assert_eq!(back.get_pixel(3, 0).0, [233, 233, 233, 255]);
    }

    #[test]
    fn bad_inputs_give_errors_naming_the_file() {
        let dir = tmp();
        let missing = dir.path().join("missing.png");
        assert!(matches!(load_rgba(&missing), Err(ImageIoError::Unreadable { .. })));

        let text = dir.path().join("notes.png");
        std::fs::write(&text, b"hello, this is not an image").unwrap();
        let err = load_rgba(&text).unwrap_err();
        assert!(matches!(err, ImageIoError::NotAnImage { .. }));
        assert!(err.to_string().contains("notes.png"));

        let good = dir.path().join("good.png");
        save_png_atomic(&RgbaImage::from_pixel(64, 64, Rgba([1, 2, 3, 255])), &good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.png");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(load_rgba(&truncated), Err(ImageIoError::Corrupt { .. })));

        let big = load_rgba_with(&good, ReadLimits { max_pixels: 100 }).unwrap_err();
        assert!(matches!(big, ImageIoError::TooLarge { .. }));
        assert!(big.to_string().contains("--max-pixels"));
    }

    #[test]
    fn zero_sized_images_are_refused() {
        let dir = tmp();
        // A GIF whose logical screen is 0x0, with no frames.
        let p = dir.path().join("zero.gif");
        std::fs::write(&p, b"GIF89a\x00\x00\x00\x00\x00\x00\x00\x3b").unwrap();
        let err = load_rgba(&p).unwrap_err();
        assert!(matches!(err, ImageIoError::ZeroSized { .. } | ImageIoError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("zero.gif"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tmp();
        let p = dir.path().join("sub/out.png");
        save_png_atomic(&RgbaImage::from_pixel(2, 2, Rgba([9, 9, 9, 255])), &p).unwrap();
        save_png_atomic(&RgbaImage::from_pixel(3, 3, Rgba([1, 1, 1, 255])), &p).unwrap();
        assert_eq!(load_rgba(&p).unwrap().dimensions(), (3, 3));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644, "readable by others like any new file");
        }
    }
}
