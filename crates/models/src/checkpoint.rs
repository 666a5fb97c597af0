//! Safetensors checkpoints with stable tensor names and the model configuration in the metadata.
//!
//! # Format (version `eabs-models/1`)
//! - Tensors: every parameter and buffer under its [`crate::params::ParamStore`] name, f32, e.g.
//!   `encoder.conv0.weight` `(16, 1, 5, 5)`, `encoder.bn0.running_mean`, `decoders.3.fc.weight`,
//!   `decoders.3.convt4.bias`, `discriminator.fc2.weight`, `classifier.weight`. Training
//!   checkpoints add optimiser moments `optim.<group>.{m,v}.<param name>`.
//! - Metadata (string -> string): `format` = `eabs-models/1`, `model_config` = JSON of
//!   [`crate::ModelConfig`] (model kind, dataset family, architecture), `tensors_sha256` = the
//!   [`tensors_digest`] of the tensors, and in training checkpoints `train_state` = JSON of
//!   [`crate::train::TrainState`].
//!
//! Reading verifies `tensors_sha256` when present (checkpoints written before it existed have
//! none; released weights are also covered by the file digests of their `release.json`) and
//! refuses any tensor with NaN or infinite values: a corrupt checkpoint never loads silently.
//!
//! Loading from PyTorch: `safetensors.torch.load_file(path)` gives the tensors with PyTorch's
//! layouts (linear `(out, in)`, conv `(out, in, k, k)`, transposed conv `(in, out, k, k)`), and
//! `safe_open(path, "pt").metadata()["model_config"]` the architecture.
//!
//! Files are written to a temporary file in the same directory and renamed into place, so a
//! crash never leaves a half-written checkpoint under the final name.

use eabs_core::host::HostRead;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::params::ParamStore;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "eabs-models/1";
/// Metadata key of the model configuration.
pub const KEY_CONFIG: &str = "model_config";
/// Metadata key of the training state.
pub const KEY_TRAIN_STATE: &str = "train_state";
/// Prefix of optimiser tensors (ignored when loading a model).
pub const OPTIM_PREFIX: &str = "optim.";
/// Metadata key of the digest of the tensor data ([`tensors_digest`]).
pub const KEY_TENSORS_SHA256: &str = "tensors_sha256";

/// sha256 over every tensor in name order: name, shape and little-endian f32 data, each
/// length-prefixed, so that renaming, reshaping or changing any value changes the digest.
/// Independent of the safetensors header layout, so the digest of a checkpoint re-serialised
/// by another tool stays the same.
pub fn tensors_digest<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>,
) -> String {
    let mut buf: Vec<u8> = Vec::new();
    let mut hasher = eabs_datasets::manifest::Sha256Stream::new();
    for (name, shape, data) in tensors {
        buf.clear();
        buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(shape.len() as u64).to_le_bytes());
        for d in shape {
            buf.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
        hasher.update(&buf);
        hasher.update(data);
    }
    hasher.finish_hex()
}

/// Number of NaN or infinite values in little-endian f32 `data`.
fn non_finite(data: &[u8]) -> usize {
    data.chunks_exact(4)
        .filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
        .count()
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Serialises named f32 tensors plus metadata and writes them atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.flatten_all()?;
        let bytes: Vec<u8> = t
            .host_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        raw.push((name.clone(), tensors[name].dims().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, bytes) in &raw {
        let view =
            TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| Error::Safetensors {
                path: path.into(),
                source: e,
            })?;
        views.push((name.clone(), view));
    }
    let mut metadata = metadata;
    metadata.insert(
        KEY_TENSORS_SHA256.to_string(),
        tensors_digest(
            raw.iter()
                .map(|(n, shape, bytes)| (n.as_str(), shape.as_slice(), bytes.as_slice())),
        ),
    );
    let bytes =
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Safetensors {
            path: path.into(),
            source: e,
        })?;
    write_atomic(path, &canonical_header(bytes))
}

/// The same safetensors file with its JSON header's keys sorted. `safetensors` writes the
/// metadata from a `HashMap`, whose order changes from process to process, so two identical
/// trainings would otherwise give files with different bytes (and digests). The header keeps
/// its length (same keys and values, padded with spaces as before), so data offsets hold.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + n) else {
        return bytes;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    // serde_json's map is ordered by key (no `preserve_order`), so this sorts every level.
    let Ok(mut sorted) = serde_json::to_vec(&value) else {
        return bytes;
    };
    if sorted.len() > n {
        return bytes;
    }
    sorted.resize(n, b' ');
    let mut out = bytes;
    out[8..8 + n].copy_from_slice(&sorted);
    out
}

/// A checkpoint read into memory: its tensors and metadata.
#[derive(Debug)]
pub struct Checkpoint {
    /// The file it came from.
    pub path: PathBuf,
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Metadata.
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Reads and validates the container (not yet against an architecture). Non-f32 tensors are
    /// rejected with [`Error::TensorDtype`], tensor data that differ from the recorded
    /// `tensors_sha256` with [`Error::Corrupt`], NaN or infinite values with
    /// [`Error::NonFinite`].
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: path.into(),
            source: e,
        })?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::Safetensors {
                path: path.into(),
                source: e,
            })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(expected) = metadata.get(KEY_TENSORS_SHA256) {
            let found =
                tensors_digest(views.iter().map(|(n, v)| (n.as_str(), v.shape(), v.data())));
            if &found != expected {
                return Err(Error::Corrupt {
                    path: path.into(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in views {
            if view.dtype() != Dtype::F32 {
                return Err(Error::TensorDtype {
                    path: path.into(),
                    name,
                    expected: "F32".into(),
                    found: format!("{:?}", view.dtype()),
                });
            }
            let count = non_finite(view.data());
            if count > 0 {
                return Err(Error::NonFinite {
                    path: path.into(),
                    name,
                    count,
                });
            }
            let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), device)?;
            tensors.insert(name, t);
        }
        Ok(Self {
            path: path.into(),
            tensors,
            metadata,
        })
    }

    /// A metadata value, or [`Error::MissingMetadata`].
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::MissingMetadata {
                path: self.path.clone(),
                key: key.into(),
            })
    }

    /// Checks the `format` key and parses the model configuration.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let format = self.meta("format")?;
        if format != FORMAT {
            return Err(Error::BadMetadata {
                path: self.path.clone(),
                key: "format".into(),
                message: format!("expected `{FORMAT}`, found `{format}`"),
            });
        }
        let json = self.meta(KEY_CONFIG)?;
        serde_json::from_str(json).map_err(|e| Error::BadMetadata {
            path: self.path.clone(),
            key: KEY_CONFIG.into(),
            message: e.to_string(),
        })
    }

    /// Copies the tensors into `store`, strictly: every store tensor must be present with the
    /// same shape, and no tensor outside the store may appear except optimiser state.
    pub fn load_into(&self, store: &ParamStore) -> Result<()> {
        let all = store.all();
        for (name, var) in &all {
            let Some(t) = self.tensors.get(name) else {
                return Err(Error::MissingTensor {
                    path: self.path.clone(),
                    name: name.clone(),
                });
            };
            if t.dims() != var.dims() {
                return Err(Error::TensorShape {
                    path: self.path.clone(),
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
        }
        for name in self.tensors.keys() {
            if !all.contains_key(name) && !name.starts_with(OPTIM_PREFIX) {
                return Err(Error::UnexpectedTensor {
                    path: self.path.clone(),
                    name: name.clone(),
                });
            }
        }
        for (name, var) in &all {
            var.set(&self.tensors[name])?;
        }
        Ok(())
    }

    /// Optimiser tensors, checked against the parameters they belong to.
    pub fn optimizer_tensors(&self, store: &ParamStore) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, t) in &self.tensors {
            let Some(rest) = name.strip_prefix(OPTIM_PREFIX) else {
                continue;
            };
            // rest = "<group>.<m|v>.<param>"
            let param = rest.splitn(3, '.').nth(2).unwrap_or("");
            let Some(var) = store.params().get(param) else {
                return Err(Error::UnexpectedTensor {
                    path: self.path.clone(),
                    name: name.clone(),
                });
            };
            if var.dims() != t.dims() {
                return Err(Error::TensorShape {
                    path: self.path.clone(),
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            out.insert(name.clone(), t.clone());
        }
        Ok(out)
    }
}

/// The standard metadata of a model checkpoint.
pub fn model_metadata(config: &ModelConfig) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (KEY_CONFIG.to_string(), config.to_json()),
    ])
}

/// Every parameter and buffer of `store` as named tensors.
pub fn store_tensors(store: &ParamStore) -> BTreeMap<String, Tensor> {
    store
        .all()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect()
}
