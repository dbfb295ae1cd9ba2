//! Sentence embeddings: text in, L2-normalised vectors out.
//!
//! [`MiniLm`] runs all-MiniLM-L6-v2 (384 dimensions) on the CPU with candle. [`Lexical`] is a
//! deterministic feature-hashing stand-in for when the model is not installed; it finds shared
//! words and spellings, not meaning, and says so in its [`Embedder::model_version`].
//! [`load`] picks the model when its files are present and intact, else the stand-in.
//!
//! Embedding is CPU-bound and synchronous: async callers use `spawn_blocking`.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

use crate::models;

/// Something that turns texts into vectors.
pub trait Embedder: Send + Sync {
    /// Which model (and weights) produced the vectors; vectors from different versions do not mix.
    fn model_version(&self) -> &str;
    /// Length of every vector.
    fn dimensions(&self) -> usize;
    /// One L2-normalised vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model file {0} is missing")]
    MissingFile(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not the pinned file: sha256 {actual}, expected {expected}")]
    Checksum {
        path: PathBuf,
        expected: &'static str,
        actual: String,
    },
    #[error("invalid model config {path}: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

/// The vector length of both embedders.
pub const DIMENSIONS: usize = 384;

/// Longest input in tokens; the rest of a text is ignored (the model was trained on 256).
pub const MAX_TOKENS: usize = 256;

/// Texts run through the model together; larger inputs are split to bound memory.
const MAX_BATCH: usize = 32;

/// The model if `model_dir` holds it intact, else the [`Lexical`] fallback with a warning;
/// its calls measured (see [`crate::measured`]).
pub fn load(model_dir: &Path) -> Box<dyn Embedder> {
    Box::new(crate::measured::MeasuredEmbedder(load_unmeasured(
        model_dir,
    )))
}

fn load_unmeasured(model_dir: &Path) -> Box<dyn Embedder> {
    match MiniLm::load(model_dir) {
        Ok(model) => {
            tracing::info!(
                dir = %model_dir.display(),
                version = model.model_version(),
                "sentence embedder loaded"
            );
            Box::new(model)
        }
        Err(error) => {
            tracing::warn!(
                dir = %model_dir.display(),
                "embedding model in {} not usable ({error}); falling back to lexical hashing, \
                 which matches words, not meaning. Install the model with `aida models fetch`",
                model_dir.display()
            );
            Box::new(Lexical::new())
        }
    }
}

/// all-MiniLM-L6-v2 on the CPU: BERT, mean pooling over real tokens, L2 normalisation.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    version: String,
}

impl MiniLm {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`, checking the
    /// weights and tokenizer against their pinned sha256.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let tokenizer_path = dir.join("tokenizer.json");
        let weights_path = dir.join("model.safetensors");
        for path in [&config_path, &tokenizer_path, &weights_path] {
            if !path.is_file() {
                return Err(EmbedError::MissingFile(path.clone()));
            }
        }
        check(&weights_path, models::WEIGHTS_SHA256)?;
        check(&tokenizer_path, models::TOKENIZER_SHA256)?;

        let config_text = fs::read_to_string(&config_path).map_err(|source| EmbedError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|source| EmbedError::Config {
                path: config_path.clone(),
                source,
            })?;

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        // The packaged tokenizer pads every input to 128 tokens and truncates at 128: pad to
        // the longest text of each batch instead, and allow the model's 256.
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".to_owned(),
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;

        // SAFETY: the weights are mapped read-only and only read while the map lives. They
        // were just checked; a file changed under a running process would give wrong vectors
        // (or a fault), which is why model directories are replaced by rename, never in place.
        #[allow(unsafe_code)]
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, &Device::Cpu)?
        };
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            version: format!(
                "{}@{}",
                models::MODEL_DIR_NAME,
                &models::WEIGHTS_SHA256[..8]
            ),
        })
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut types = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            types.extend_from_slice(encoding.get_type_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (rows, cols), device)?;
        let types = Tensor::from_vec(types, (rows, cols), device)?;
        let mask = Tensor::from_vec(mask, (rows, cols), device)?;

        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (rows, cols, 384)
        // Mean over the real tokens only: padding must not dilute short texts.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, cols, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, 384)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

impl Embedder for MiniLm {
    fn model_version(&self) -> &str {
        &self.version
    }

    fn dimensions(&self) -> usize {
        DIMENSIONS
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_BATCH) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }
}

fn check(path: &Path, expected: &'static str) -> Result<(), EmbedError> {
    let actual = models::sha256_file(path).map_err(|source| EmbedError::Io {
        path: path.to_owned(),
        source,
    })?;
    if actual == expected {
        Ok(())
    } else {
        Err(EmbedError::Checksum {
            path: path.to_owned(),
            expected,
            actual,
        })
    }
}

/// Deterministic fallback: hashed word unigrams and character trigrams of the lowercased text.
///
/// Texts sharing words or spellings come out close; synonyms do not. Same text, same vector,
/// on every machine and release (FNV-1a, not the std hasher).
#[derive(Debug, Clone, Default)]
pub struct Lexical;

impl Lexical {
    /// Version label, stored next to vectors so they are never mixed with the model's.
    pub const VERSION: &'static str = "lexical-hash-v1 (fallback: embedding model not installed)";

    pub fn new() -> Self {
        Self
    }

    fn embed_one(text: &str) -> Vec<f32> {
        let mut v = vec![0f32; DIMENSIONS];
        let lower = text.to_lowercase();
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            add_feature(&mut v, b'w', word.as_bytes(), 1.0);
            // Trigrams of the word with boundary marks, so "cat" and "cats" share "^ca", "cat".
            let chars: Vec<char> = std::iter::once('^')
                .chain(word.chars())
                .chain(std::iter::once('$'))
                .collect();
            let mut buf = String::new();
            for gram in chars.windows(3) {
                buf.clear();
                buf.extend(gram);
                add_feature(&mut v, b'c', buf.as_bytes(), 0.5);
            }
        }
        normalise(&mut v);
        v
    }
}

impl Embedder for Lexical {
    fn model_version(&self) -> &str {
        Self::VERSION
    }

    fn dimensions(&self) -> usize {
        DIMENSIONS
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| Self::embed_one(t)).collect())
    }
}

/// Adds `weight` to one signed bucket chosen by the hash of (`kind`, `feature`).
fn add_feature(v: &mut [f32], kind: u8, feature: &[u8], weight: f32) {
    let h = fnv1a(kind, feature);
    let bucket = (h % v.len() as u64) as usize;
    // A hash-chosen sign keeps collisions from adding up to spurious similarity.
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[bucket] += sign * weight;
}

fn fnv1a(kind: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&kind).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Scales `v` to length 1; the zero vector (no features, e.g. empty text) stays zero.
fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cosine similarity; for normalised vectors, their dot product.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_is_normalised_and_stable() {
        let v = Lexical::embed_one("Hello, world");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(v, Lexical::embed_one("hello WORLD"));
        assert!(Lexical::embed_one("").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn fnv_is_pinned() {
        // FNV-1a 64 of "wcat", computed independently. A changed hash changes every stored
        // fallback vector: bump VERSION if this moves.
        assert_eq!(fnv1a(b'w', b"cat"), 0x4f9f_66f6_246a_307a);
    }
}
