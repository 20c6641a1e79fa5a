//! The deterministic train/validation split of a sprite collection.
//!
//! A sprite belongs to the validation split when the FNV-1a hash of its file name falls in
//! the lowest [`VALIDATION_PERCENT`] percent. The split depends on the name alone, so it is
//! the same on every machine, does not move when files are added, and training code can
//! never see a validation sprite by accident.

use crate::rng::{fnv1a, splitmix64};
use std::path::Path;

/// Share of the collection held out for validation, in percent.
pub const VALIDATION_PERCENT: u64 = 10;

/// Which part of the collection a sprite belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    /// Every sprite, regardless of split.
    All,
}

/// The split of a sprite, from its file name (not its directory).
pub fn split_of(path: &Path) -> Split {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if splitmix64(fnv1a(name.as_bytes())) % 100 < VALIDATION_PERCENT {
        Split::Val
    } else {
        Split::Train
    }
}

/// Whether a sprite is selected by the requested split.
pub fn in_split(path: &Path, wanted: Split) -> bool {
    wanted == Split::All || split_of(path) == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ignores_directory_and_is_roughly_ten_percent() {
        assert_eq!(split_of(Path::new("a/b/x.png")), split_of(Path::new("x.png")));
        let val = (0..10_000)
            .filter(|i| split_of(Path::new(&format!("sprite_{i}.png"))) == Split::Val)
            .count();
        assert!((800..1200).contains(&val), "validation share {val} of 10000");
    }
}
