//! The real model: known similarities, batching, the fallback, fetching and verification.
//!
//! The model comes from `TEST_EMBED_MODEL_DIR`, else it is fetched into
//! `$HOME/.cache/aida/models`. These tests never skip: no model, no pass.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use aida_ai::embed::{self, Embedder, Lexical, MiniLm, cosine};
use aida_ai::models::{self, ModelError};

fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("TEST_EMBED_MODEL_DIR") {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").expect("HOME is set");
        let root = Path::new(&home).join(".cache/aida/models");
        models::fetch(&root).unwrap_or_else(|e| panic!("cannot obtain the model: {e}"))
    })
}

fn model() -> &'static MiniLm {
    static MODEL: OnceLock<MiniLm> = OnceLock::new();
    MODEL.get_or_init(|| {
        MiniLm::load(model_dir()).unwrap_or_else(|e| panic!("cannot load the model: {e}"))
    })
}

fn assert_normalised(v: &[f32]) {
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

fn pair(e: &dyn Embedder, a: &str, b: &str) -> f32 {
    let v = e.embed(&[a, b]).expect("embed");
    cosine(&v[0], &v[1])
}

#[test]
fn minilm_known_similarities() {
    let m = model();
    for (a, b, expected) in [
        (
            "The new movie is awesome",
            "The new movie is so great",
            0.894,
        ),
        ("The cat sits outside", "The cat plays in the garden", 0.679),
        ("I love pasta", "Do you like pizza?", 0.510),
    ] {
        let got = pair(m, a, b);
        eprintln!("cos({a:?}, {b:?}) = {got:.4}");
        assert!(
            (got - expected).abs() <= 0.01,
            "cos({a:?}, {b:?}) = {got}, expected {expected}"
        );
    }
    assert!(pair(m, "The new movie is awesome", "Quarterly invoice overdue") < 0.2);
}

#[test]
fn minilm_shape_version_and_norm() {
    let m = model();
    assert_eq!(m.dimensions(), 384);
    assert_eq!(m.model_version(), "all-MiniLM-L6-v2@53aa5117");
    let v = m
        .embed(&[
            "hello",
            "",
            "a much longer sentence about a customer renewal",
        ])
        .expect("embed");
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), 384);
        assert_normalised(x);
    }
    assert!(m.embed(&[]).expect("empty batch").is_empty());
}

#[test]
fn minilm_batched_equals_single() {
    let m = model();
    let texts = [
        "The new movie is awesome",
        "Do you like pizza?",
        "A lead from the trade fair asked for a quote on 40 seats, delivery before March.",
        "ok",
    ];
    let started = Instant::now();
    let batched = m.embed(&texts).expect("batch");
    let batch_time = started.elapsed();
    let started = Instant::now();
    let single: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| m.embed(&[t]).expect("single").remove(0))
        .collect();
    let single_time = started.elapsed();
    eprintln!(
        "embed: {:.1} ms/sentence single, {:.1} ms/sentence batched ({} texts)",
        single_time.as_secs_f64() * 1e3 / texts.len() as f64,
        batch_time.as_secs_f64() * 1e3 / texts.len() as f64,
        texts.len()
    );
    for (b, s) in batched.iter().zip(&single) {
        let max_diff = b
            .iter()
            .zip(s)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "batched and single differ by {max_diff}");
    }
}

#[test]
fn minilm_truncates_long_input() {
    let long = "renewal ".repeat(1000);
    let v = model().embed(&[&long]).expect("long text");
    assert_normalised(&v[0]);
}

#[test]
fn load_picks_the_model_when_present() {
    let e = embed::load(model_dir());
    assert_eq!(e.model_version(), "all-MiniLM-L6-v2@53aa5117");
}

#[test]
fn load_falls_back_honestly_on_empty_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = embed::load(dir.path());
    assert_eq!(e.model_version(), Lexical::VERSION);
    assert!(e.model_version().contains("fallback"));
    assert_eq!(e.dimensions(), 384);
    let v = e.embed(&["still works"]).expect("fallback embeds");
    assert_normalised(&v[0]);
}

#[test]
fn fallback_warns_with_dir_and_remedy() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let dir = tempfile::tempdir().expect("tempdir");
    tracing::subscriber::with_default(subscriber, || embed::load(dir.path()));
    let log = String::from_utf8(buf.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains(&dir.path().display().to_string()), "{log}");
    assert!(log.contains("aida models fetch"), "{log}");
}

#[test]
fn lexical_is_deterministic_and_lexically_sensible() {
    let l = Lexical::new();
    let a = l.embed(&["Invoice overdue for ACME Corp"]).expect("embed");
    let b = Lexical::new()
        .embed(&["Invoice overdue for ACME Corp"])
        .expect("embed");
    assert_eq!(a, b);
    assert_eq!(a[0].len(), 384);
    assert_normalised(&a[0]);
    let near = pair(&l, "invoice overdue for ACME", "ACME invoices are overdue");
    let far = pair(&l, "invoice overdue for ACME", "lunch meeting in Berlin");
    assert!(near > far + 0.3, "near {near}, far {far}");
    assert!(l.model_version().contains("fallback"));
}

#[test]
fn fetch_is_idempotent() {
    let dir = model_dir();
    let root = dir.parent().expect("model dir has a parent");
    let before = fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("mtime");
    // A Python that does not exist proves no download is attempted.
    let again = models::fetch_with_python(root, OsStr::new("/nonexistent/python3"))
        .expect("present model is accepted without pip");
    assert_eq!(again, dir);
    let after = fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after);
    models::verify(dir).expect("hashes verified");
}

#[test]
fn corrupted_weights_are_detected_and_refetched() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let copy = scratch.path().join(models::MODEL_DIR_NAME);
    fs::create_dir(&copy).expect("mkdir");
    for name in models::REQUIRED_FILES {
        fs::copy(model_dir().join(name), copy.join(name)).expect("copy model file");
    }
    models::verify(&copy).expect("intact copy verifies");

    let weights = copy.join("model.safetensors");
    let mut bytes = fs::read(&weights).expect("read weights");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&weights, &bytes).expect("write weights");
    drop(bytes);

    let err = models::verify(&copy).expect_err("flipped byte detected");
    assert!(
        matches!(&err, ModelError::Checksum { path, .. } if path == &weights),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    assert!(
        MiniLm::load(&copy).is_err(),
        "loader refuses corrupt weights"
    );
    assert_eq!(embed::load(&copy).model_version(), Lexical::VERSION);

    // fetch does not trust the damaged copy: it tries to download again.
    let err = models::fetch_with_python(scratch.path(), OsStr::new("/nonexistent/python3"))
        .expect_err("re-fetch attempted");
    assert!(matches!(err, ModelError::PythonMissing { .. }), "{err}");
    // And a real fetch repairs it, unless the model was handed in (possibly offline).
    if std::env::var_os("TEST_EMBED_MODEL_DIR").is_none() {
        let repaired = models::fetch(scratch.path()).expect("re-fetch");
        assert_eq!(repaired, copy);
        models::verify(&copy).expect("repaired");
    }
}
