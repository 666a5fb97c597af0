//! Safetensors checkpoints with stable tensor names and the model configuration in the metadata.
//!
//! # Format (version `eabs-models/1`)
//! - Tensors: every parameter and buffer under its [`crate::params::ParamStore`] name, f32, e.g.
//!   `encoder.conv0.weight` `(16, 1, 5, 5)`, `encoder.bn0.running_mean`, `decoders.3.fc.weight`,
//!   `decoders.3.convt4.bias`, `discriminator.fc2.weight`, `classifier.weight`. Training
//!   checkpoints add optimiser moments `optim.<group>.{m,v}.<param name>`.
//! - Metadata (string -> string): `format` = `eabs-models/1`, `model_config` = JSON of
//!   [`crate::ModelConfig`], and in training checkpoints `train_state` = JSON of
//!   [`crate::train::TrainState`].
//!
//! Loading from PyTorch: `safetensors.torch.load_file(path)` gives the tensors with PyTorch's
//! layouts (linear `(out, in)`, conv `(out, in, k, k)`, transposed conv `(in, out, k, k)`), and
//! `safe_open(path, "pt").metadata()["model_config"]` the architecture.
//!
//! Files are written to a temporary file in the same directory and renamed into place, so a
//! crash never leaves a half-written checkpoint under the final name.

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
            .to_vec1::<f32>()?
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
    let bytes =
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Safetensors {
            path: path.into(),
            source: e,
        })?;
    write_atomic(path, &bytes)
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
    /// rejected with [`Error::TensorDtype`].
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
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::TensorDtype {
                    path: path.into(),
                    name,
                    expected: "F32".into(),
                    found: format!("{:?}", view.dtype()),
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
