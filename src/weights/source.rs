//! Where weights come from: parsing a `--weights` value and resolving it to local files,
//! through the Hugging Face cache for `hf://` sources.

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The Hugging Face repository of StableSR's released weights.
pub const DEFAULT_REPO: &str = "Iceclear/StableSR";
/// The branch used when an `hf://` source names no revision.
pub const DEFAULT_REVISION: &str = "main";
/// The diffusion model checkpoint in [`DEFAULT_REPO`] (512 px, Lightning `state_dict`).
pub const STABLESR_CKPT: &str = "stablesr_000117.ckpt";
/// The CFW autoencoder checkpoint in [`DEFAULT_REPO`] (keys without prefix).
pub const VQGAN_CFW_CKPT: &str = "vqgan_cfw_00011.ckpt";
/// What `hf://Iceclear/StableSR` without a file resolves to.
pub const DEFAULT_FILES: [&str; 2] = [STABLESR_CKPT, VQGAN_CFW_CKPT];
/// The Hub used unless `HF_ENDPOINT` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

const HUB_SYNTAX: &str = "expected hf://OWNER/REPO[/FILE][@REVISION], \
     e.g. hf://Iceclear/StableSR/stablesr_000117.ckpt or hf://Iceclear/StableSR@main";
const LOCAL_KINDS: &str = "a .ckpt/.pt/.pth or .safetensors file, a folder in Hugging Face \
     layout, or hf://OWNER/REPO[/FILE][@REVISION]";

/// How a weight file stores its tensors, as told by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// `.safetensors`.
    Safetensors,
    /// A PyTorch zip pickle: `.ckpt`, `.pt`, `.pth`, or a Hugging Face `pytorch_model*.bin`.
    Pickle,
}

impl WeightFormat {
    /// The format a file name's extension stands for, if it is a weight file at all.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "safetensors" => Some(Self::Safetensors),
            "ckpt" | "pt" | "pth" => Some(Self::Pickle),
            "bin" if name.starts_with("pytorch_model") => Some(Self::Pickle),
            _ => None,
        }
    }
}

/// A file, or all weight files, of a model repository on the Hugging Face Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/REPO`.
    pub repo: String,
    /// A path inside the repository; `None` for the repository's weight files.
    pub file: Option<String>,
    /// Branch, tag or commit hash; `None` for [`DEFAULT_REVISION`].
    pub revision: Option<String>,
}

impl HubRef {
    /// The revision asked for, or [`DEFAULT_REVISION`].
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }
}

/// Where weights come from: the value of `--weights`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightSource {
    /// One local weight file.
    File(PathBuf),
    /// A local folder in Hugging Face layout (config.json beside the weight files).
    Folder(PathBuf),
    /// Files of a Hugging Face Hub repository.
    Hub(HubRef),
}

impl WeightSource {
    /// Parses `hf://OWNER/REPO[/FILE][@REVISION]` or a local path, which must exist: a
    /// folder, or a file whose extension is that of a weight file.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("hf://") {
            return parse_hub(rest).map(Self::Hub).map_err(|reason| {
                anyhow!("malformed weights source `{text}`: {reason}; {HUB_SYNTAX}")
            });
        }
        if text.starts_with("hf:") || text.starts_with("https://huggingface.co/") {
            bail!("malformed weights source `{text}`: {HUB_SYNTAX}");
        }
        if text.is_empty() {
            bail!("empty weights source; expected {LOCAL_KINDS}");
        }
        let path = PathBuf::from(text);
        let meta = std::fs::metadata(&path).map_err(|e| {
            anyhow!(
                "weights source {}: {e}; expected {LOCAL_KINDS}",
                path.display()
            )
        })?;
        if meta.is_dir() {
            return Ok(Self::Folder(path));
        }
        if WeightFormat::from_path(&path).is_none() {
            bail!(
                "weights source {} is not a weight file (by its extension); expected {LOCAL_KINDS}",
                path.display()
            );
        }
        Ok(Self::File(path))
    }
}

impl FromStr for WeightSource {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl fmt::Display for WeightSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) | Self::Folder(path) => write!(f, "{}", path.display()),
            Self::Hub(hub) => {
                write!(f, "hf://{}", hub.repo)?;
                if let Some(file) = &hub.file {
                    write!(f, "/{file}")?;
                }
                if let Some(revision) = &hub.revision {
                    write!(f, "@{revision}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses what follows `hf://`; the error is the reason only.
fn parse_hub(rest: &str) -> std::result::Result<HubRef, String> {
    let (path, revision) = match rest.split_once('@') {
        Some((path, revision)) => {
            if revision.is_empty() {
                return Err("empty revision after `@`".into());
            }
            if revision.contains('@') || revision.chars().any(char::is_whitespace) {
                return Err(format!("invalid revision `{revision}`"));
            }
            (path, Some(revision.to_string()))
        }
        None => (rest, None),
    };
    let segments: Vec<&str> = path.split('/').collect();
    if segments[0].is_empty() {
        return Err("empty owner name".into());
    }
    if segments.len() < 2 {
        return Err("missing the repository name".into());
    }
    for (what, name) in [("owner", segments[0]), ("repository", segments[1])] {
        if name.is_empty() {
            return Err(format!("empty {what} name"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !name.chars().all(allowed) || name.starts_with('.') {
            return Err(format!(
                "invalid {what} name `{name}` (letters, digits, `-`, `_` and `.` only)"
            ));
        }
    }
    let file_segments = &segments[2..];
    if file_segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(format!(
            "invalid file path `{}` inside the repository",
            file_segments.join("/")
        ));
    }
    Ok(HubRef {
        repo: format!("{}/{}", segments[0], segments[1]),
        file: (!file_segments.is_empty()).then(|| file_segments.join("/")),
        revision,
    })
}

/// How the Hugging Face Hub is reached: where its cache is, whether downloading is allowed,
/// and with which token and endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache (the folder holding `models--OWNER--REPO`).
    pub cache_dir: PathBuf,
    /// Read the cache only; never touch the network.
    pub offline: bool,
    /// Access token for gated or private repositories.
    pub token: Option<String>,
    /// Base URL of the Hub.
    pub endpoint: String,
}

impl HubOptions {
    /// Options from the process environment, as the Hugging Face tools read it: the cache
    /// is `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else
    /// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
    /// `HF_HUB_OFFLINE=1` (or true/yes/on) forbids downloads; the token is `HF_TOKEN` (or
    /// the older `HUGGING_FACE_HUB_TOKEN`), else the token file that `huggingface-cli
    /// login` writes under `HF_HOME`; `HF_ENDPOINT` replaces the Hub's address.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HubOptions::from_env`] over any variable lookup (tests pass their own instead of
    /// changing the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))?;
            Some(cache.join("huggingface"))
        });
        let hub_cache = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE"));
        let cache_dir = match (hub_cache, &hf_home) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => home.join("hub"),
            (None, None) => bail!(
                "cannot find the Hugging Face cache: set HF_HOME or HF_HUB_CACHE (HOME is not set)"
            ),
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN"));
        let token = token.map(|t| t.trim().to_string()).or_else(|| {
            let file = hf_home.as_ref()?.join("token");
            let text = std::fs::read_to_string(file).ok()?;
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_string())
        });
        let endpoint = var("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(Self {
            cache_dir,
            offline,
            token,
            endpoint,
        })
    }
}

/// The local files of a source, in a stable order: a file as it is, a folder's weight
/// files, a Hub repository's files from the cache or downloaded into it.
///
/// A folder (or a Hub repository without a file) gives its top-level weight files: for
/// each name the `.safetensors` when there is one, else the PyTorch pickle; Hugging Face
/// `pytorch_model*.bin` files only when there is nothing else. `hf://Iceclear/StableSR`
/// without a file gives [`DEFAULT_FILES`].
pub fn resolve(source: &WeightSource, hub: &HubOptions) -> Result<Vec<PathBuf>> {
    match source {
        WeightSource::File(path) => {
            if !path.is_file() {
                bail!(
                    "weights file {} does not exist; expected {LOCAL_KINDS}",
                    path.display()
                );
            }
            Ok(vec![path.clone()])
        }
        WeightSource::Folder(dir) => {
            let names = list_files(dir)
                .with_context(|| format!("cannot list the weights folder {}", dir.display()))?;
            let chosen = weight_files(&names);
            if chosen.is_empty() {
                bail!(
                    "weights folder {} has no weight files (expected model.safetensors, \
                     other *.safetensors, or *.ckpt/*.pt/*.pth)",
                    dir.display()
                );
            }
            Ok(chosen.iter().map(|name| dir.join(name)).collect())
        }
        WeightSource::Hub(hub_ref) => {
            let files: Vec<String> = match &hub_ref.file {
                Some(file) => vec![file.clone()],
                None if hub_ref.repo.eq_ignore_ascii_case(DEFAULT_REPO) => {
                    DEFAULT_FILES.iter().map(|f| f.to_string()).collect()
                }
                None => {
                    let chosen = weight_files(&list_hub_repo(hub_ref, hub)?);
                    if chosen.is_empty() {
                        bail!(
                            "{} at revision {} has no weight files at its top level; \
                             name one: hf://{}/FILE",
                            hub_ref.repo,
                            hub_ref.revision(),
                            hub_ref.repo
                        );
                    }
                    chosen
                }
            };
            files
                .iter()
                .map(|file| resolve_hub_file(&hub_ref.repo, file, hub_ref.revision(), hub))
                .collect()
        }
    }
}

/// The names of the plain files (or links to files) directly in `dir`, sorted.
fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Hub snapshots hold symlinks to blobs, so follow links; skip dangling ones.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The weight files among `names` (see [`resolve`]), sorted.
fn weight_files(names: &[String]) -> Vec<String> {
    let format = |name: &String| {
        if name.starts_with('.') || name.contains('/') {
            None
        } else {
            WeightFormat::from_path(Path::new(name))
        }
    };
    let stem = |name: &str| Path::new(name).file_stem().map(|s| s.to_owned());
    let safetensors: Vec<&String> = names
        .iter()
        .filter(|n| format(n) == Some(WeightFormat::Safetensors))
        .collect();
    let (hf_bins, pickles): (Vec<&String>, Vec<&String>) = names
        .iter()
        .filter(|n| format(n) == Some(WeightFormat::Pickle))
        .partition(|n| n.ends_with(".bin"));
    let mut chosen: Vec<String> = safetensors.iter().map(|n| n.to_string()).collect();
    chosen.extend(
        pickles
            .iter()
            .filter(|p| !safetensors.iter().any(|s| stem(s) == stem(p)))
            .map(|p| p.to_string()),
    );
    if chosen.is_empty() {
        chosen.extend(hf_bins.iter().map(|n| n.to_string()));
    }
    chosen.sort();
    chosen
}

/// The top-level file names of a Hub repository: from the cached snapshot when offline,
/// from the Hub's listing otherwise.
fn list_hub_repo(hub_ref: &HubRef, hub: &HubOptions) -> Result<Vec<String>> {
    let repo = Repo::with_revision(
        hub_ref.repo.clone(),
        RepoType::Model,
        hub_ref.revision().to_string(),
    );
    if hub.offline {
        let snapshot = cached_snapshot(&hub.cache_dir, &repo).ok_or_else(|| {
            anyhow!(
                "{} at revision {} is not in the Hugging Face cache {} ({}), and HF_HUB_OFFLINE \
                 is set, so nothing is downloaded. On a machine with internet, run \
                 `huggingface-cli download {} --revision {}` and copy the cache folder {} it makes \
                 into {}, or name a local file or folder with --weights",
                hub_ref.repo,
                hub_ref.revision(),
                hub.cache_dir.display(),
                diagnose_cache(&hub.cache_dir, &repo, None),
                hub_ref.repo,
                hub_ref.revision(),
                repo.folder_name(),
                hub.cache_dir.display(),
            )
        })?;
        return list_files(&snapshot)
            .with_context(|| format!("cannot list the cached snapshot {}", snapshot.display()));
    }
    let info = build_api(hub)?.repo(repo).info().map_err(|e| {
        anyhow!(
            "cannot list {} at revision {} on {}: {e}. {}",
            hub_ref.repo,
            hub_ref.revision(),
            hub.endpoint,
            ONLINE_HINT
        )
    })?;
    Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
}

const ONLINE_HINT: &str = "Check the repository and file names and the network; for a gated \
     or private repository set HF_TOKEN; set HF_HUB_OFFLINE=1 to use the local cache only";

fn build_api(hub: &HubOptions) -> Result<hf_hub::api::sync::Api> {
    use std::io::IsTerminal;
    ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .context("cannot set up the Hugging Face Hub client")
}

/// One file of a Hub repository: from the cache when it is there, else downloaded into
/// it (unless offline).
fn resolve_hub_file(
    repo_id: &str,
    file: &str,
    revision: &str,
    hub: &HubOptions,
) -> Result<PathBuf> {
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    if let Some(path) = cached_file(&hub.cache_dir, &repo, file) {
        return Ok(path);
    }
    if hub.offline {
        bail!(
            "{file} of {repo_id} at revision {revision} is not in the Hugging Face cache {} ({}), \
             and HF_HUB_OFFLINE is set, so nothing is downloaded. On a machine with internet, run \
             `huggingface-cli download {repo_id} {file} --revision {revision}` and copy the cache \
             folder {} it makes into {} (or point HF_HOME / HF_HUB_CACHE at a copy of that \
             cache), or copy the file itself and pass its path to --weights",
            hub.cache_dir.display(),
            diagnose_cache(&hub.cache_dir, &repo, Some(file)),
            repo.folder_name(),
            hub.cache_dir.display(),
        );
    }
    build_api(hub)?.repo(repo).download(file).map_err(|e| {
        anyhow!(
            "downloading {file} of {repo_id} at revision {revision} from {} into {} failed: {e}. \
             {ONLINE_HINT}",
            hub.endpoint,
            hub.cache_dir.display()
        )
    })
}

/// The snapshot folder that `repo`'s revision points to in the cache, if it is there.
/// A revision is looked up in `refs/`; a full commit hash may also name a snapshot directly.
fn cached_snapshot(cache_dir: &Path, repo: &Repo) -> Option<PathBuf> {
    let repo_dir = cache_dir.join(repo.folder_name());
    let snapshot = |hash: &str| {
        let dir = repo_dir.join("snapshots").join(hash);
        dir.is_dir().then_some(dir)
    };
    let from_ref = std::fs::read_to_string(repo_dir.join("refs").join(repo.revision()))
        .ok()
        .and_then(|hash| snapshot(hash.trim()));
    from_ref.or_else(|| is_commit_hash(repo.revision()).then(|| snapshot(repo.revision()))?)
}

/// A file in the cache: first as hf-hub's own cache finds it, then through
/// [`cached_snapshot`], which also accepts a commit hash as the revision and a ref file
/// that ends in a newline.
fn cached_file(cache_dir: &Path, repo: &Repo, file: &str) -> Option<PathBuf> {
    if let Some(path) = Cache::new(cache_dir.to_path_buf())
        .repo(repo.clone())
        .get(file)
    {
        return Some(path);
    }
    let path = cached_snapshot(cache_dir, repo)?.join(file);
    path.is_file().then_some(path)
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Why a repository (or a file of it) was not found in the cache, in a few words.
fn diagnose_cache(cache_dir: &Path, repo: &Repo, file: Option<&str>) -> String {
    let repo_dir = cache_dir.join(repo.folder_name());
    if !repo_dir.is_dir() {
        return format!("it has no {} folder", repo.folder_name());
    }
    let Some(snapshot) = cached_snapshot(cache_dir, repo) else {
        return format!(
            "{} has no refs/{} pointing to a snapshot",
            repo.folder_name(),
            repo.revision()
        );
    };
    match file {
        Some(file) => format!(
            "snapshot {} has no {file}",
            snapshot.file_name().unwrap_or_default().to_string_lossy()
        ),
        None => "the snapshot could not be read".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_sources_parse_with_and_without_file_and_revision() {
        let parse = |s: &str| match WeightSource::parse(s).unwrap() {
            WeightSource::Hub(h) => h,
            other => panic!("{other:?}"),
        };
        let full = parse("hf://Iceclear/StableSR/stablesr_000117.ckpt@v1.0");
        assert_eq!(full.repo, "Iceclear/StableSR");
        assert_eq!(full.file.as_deref(), Some("stablesr_000117.ckpt"));
        assert_eq!(full.revision(), "v1.0");
        let nested = parse("hf://a/b/sub/dir/w.safetensors");
        assert_eq!(nested.file.as_deref(), Some("sub/dir/w.safetensors"));
        assert_eq!(nested.revision(), DEFAULT_REVISION);
        let repo_only = parse("hf://Iceclear/StableSR@refs/pr/1");
        assert_eq!(repo_only.file, None);
        assert_eq!(repo_only.revision(), "refs/pr/1");
        for text in [
            "hf://Iceclear/StableSR/stablesr_000117.ckpt@v1.0",
            "hf://a/b",
        ] {
            assert_eq!(WeightSource::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn malformed_hub_sources_say_what_was_expected() {
        for (text, reason) in [
            ("hf://", "empty owner"),
            ("hf://Iceclear", "missing the repository name"),
            ("hf://Iceclear/", "empty repository"),
            ("hf://Iceclear/StableSR@", "empty revision"),
            ("hf://Iceclear/StableSR/", "invalid file path"),
            (
                "hf://Iceclear/StableSR/../../etc/passwd",
                "invalid file path",
            ),
            ("hf://Ice clear/StableSR", "invalid owner name"),
            ("hf:Iceclear/StableSR", "hf://OWNER/REPO"),
        ] {
            let err = WeightSource::parse(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
            assert!(
                err.contains("expected hf://OWNER/REPO[/FILE][@REVISION]"),
                "{err}"
            );
        }
    }

    #[test]
    fn local_sources_must_exist_and_be_weight_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.ckpt");
        let err = WeightSource::parse(missing.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope.ckpt") && err.contains("expected a .ckpt"),
            "{err}"
        );
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "x").unwrap();
        let err = WeightSource::parse(text.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a weight file"), "{err}");
        assert_eq!(
            WeightSource::parse(dir.path().to_str().unwrap()).unwrap(),
            WeightSource::Folder(dir.path().to_path_buf())
        );
    }

    #[test]
    fn folders_prefer_safetensors_per_name() {
        let names: Vec<String> = [
            "config.json",
            "model.safetensors",
            "model.ckpt",
            "vqgan.ckpt",
            "pytorch_model.bin",
            ".hidden.ckpt",
            "notes.bin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            weight_files(&names),
            vec!["model.safetensors", "vqgan.ckpt"]
        );
        let only_bin = vec!["config.json".to_string(), "pytorch_model.bin".to_string()];
        assert_eq!(weight_files(&only_bin), vec!["pytorch_model.bin"]);
    }

    #[test]
    fn environment_is_read_like_the_hugging_face_tools() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
        let home_str = home.path().to_str().unwrap().to_string();
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let opts = HubOptions::from_vars(vars(vec![("HF_HOME", home_str.clone())])).unwrap();
        assert_eq!(opts.cache_dir, home.path().join("hub"));
        assert!(!opts.offline);
        assert_eq!(opts.token.as_deref(), Some("hf_from_file"));
        assert_eq!(opts.endpoint, DEFAULT_ENDPOINT);

        let opts = HubOptions::from_vars(vars(vec![
            ("HF_HOME", home_str.clone()),
            ("HF_HUB_CACHE", "/elsewhere".into()),
            ("HF_HUB_OFFLINE", "1".into()),
            ("HF_TOKEN", "hf_env".into()),
            ("HF_ENDPOINT", "http://127.0.0.1:9/".into()),
        ]))
        .unwrap();
        assert_eq!(opts.cache_dir, PathBuf::from("/elsewhere"));
        assert!(opts.offline);
        assert_eq!(opts.token.as_deref(), Some("hf_env"));
        assert_eq!(opts.endpoint, "http://127.0.0.1:9");

        let opts = HubOptions::from_vars(vars(vec![
            ("HOME", "/home/u".into()),
            ("HF_HUB_OFFLINE", "0".into()),
        ]))
        .unwrap();
        assert_eq!(
            opts.cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert!(!opts.offline);
        assert!(HubOptions::from_vars(|_| None).is_err());
    }
}
