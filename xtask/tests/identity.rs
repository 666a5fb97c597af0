//! The identity defects a hostile user found (issue 16), each reproduced through the real
//! command line: results bound to the checkpoint's content, checkpoints checked for kind,
//! dataset and NaNs, and the small CLI ones.
//!
//! `eval` needs the real Fashion-MNIST test set (checksum-verified), which `.ci/run` installs
//! (`/usr/share/datasets/fashion-mnist`). Without it these tests say so and pass: there is no
//! offline way to generate files that pass the manifest's digests.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use eabs_models::checkpoint::{model_metadata, save_tensors, store_tensors};
use eabs_models::{DatasetKind, Model, ModelConfig, ModelKind};

fn xtask() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.env("RUST_BACKTRACE", "0").env("RUST_LOG", "warn");
    c
}

fn have_fashion_mnist() -> bool {
    let ok = Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file();
    if !ok {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
    }
    ok
}

/// Runs `xtask` and returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running xtask");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn save(path: &Path, family: DatasetKind, kind: ModelKind, seed: u64) {
    Model::new(&ModelConfig::paper(family, kind), seed, &Device::Cpu)
        .unwrap()
        .save(path)
        .unwrap();
}

fn eval(out: &Path, ckpt: &Path, extra: &[&str]) -> Command {
    let mut c = xtask();
    c.args([
        "eval",
        "--dataset",
        "fashion-mnist",
        "--preset",
        "smoke",
        "--samples",
        "16",
    ])
    .arg("--checkpoint")
    .arg(ckpt)
    .arg("--out")
    .arg(out)
    .args(extra);
    c
}

/// A temporary folder with `results/` and a fresh Fashion-MNIST CNN checkpoint `ckpt_name`
/// (seed 0) in it, or `None` (after saying so) where the data are not installed.
fn cnn_fixture(ckpt_name: &str) -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    if !have_fashion_mnist() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("results"), dir.path().join(ckpt_name));
    save(&ckpt, DatasetKind::FashionMnist, ModelKind::Cnn, 0);
    Some((dir, out, ckpt))
}

#[test]
fn eval_results_are_bound_to_the_checkpoints_content() {
    let Some((dir, out, ckpt)) = cnn_fixture("best.safetensors") else {
        return;
    };
    let (ok, text) = run(&mut eval(&out, &ckpt, &["--model", "cnn"]));
    assert!(ok && text.contains("clean accuracy"), "{text}");
    // Another CNN at the same path: the journal is not reused, the run names what changed.
    save(&ckpt, DatasetKind::FashionMnist, ModelKind::Cnn, 1);
    let (ok, text) = run(&mut eval(&out, &ckpt, &["--model", "cnn"]));
    assert!(!ok, "a journal of other weights was reused: {text}");
    assert!(text.contains("checkpoint_sha256: was"), "{text}");
    // Asked to, it starts the stage over for the new weights.
    let (ok, text) = run(&mut eval(
        &out,
        &ckpt,
        &["--model", "cnn", "--restart-changed"],
    ));
    assert!(ok && text.contains("clean accuracy"), "{text}");
    // NaN weights at the same path: refused by name before anything runs.
    let model = Model::load(&ckpt, &Device::Cpu).unwrap();
    let mut tensors = store_tensors(model.store());
    let w = tensors["classifier.weight"].clone();
    tensors.insert(
        "classifier.weight".into(),
        (w.ones_like().unwrap() * f64::NAN).unwrap(),
    );
    save_tensors(&ckpt, &tensors, model_metadata(model.config())).unwrap();
    let fresh = dir.path().join("fresh");
    let (ok, text) = run(&mut eval(&fresh, &ckpt, &["--model", "cnn"]));
    assert!(!ok && text.contains("NaN or infinite"), "{text}");
}

/// `eval --json` records the training the weights had (the trainer's `train_config.json`
/// beside the checkpoint), null where none is known, never the preset's configuration; a
/// damaged configuration file is an error that names it.
#[test]
fn eval_records_the_checkpoints_training_not_the_presets() {
    let Some((dir, out, ckpt)) = cnn_fixture("best.safetensors") else {
        return;
    };
    let settings_train = |json: &Path| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(json).expect("reading eval's --json")).unwrap();
        v["settings"]["train"].clone()
    };
    // A bare checkpoint: the training is unknown, and the result says so.
    let json = dir.path().join("bare.json");
    let mut cmd = eval(&out, &ckpt, &["--model", "cnn", "--json"]);
    let (ok, text) = run(cmd.arg(&json));
    assert!(ok, "{text}");
    assert_eq!(settings_train(&json), serde_json::Value::Null);
    // Beside a custom run's configuration (not the smoke preset's: 3 epochs, every image).
    let custom = eabs_models::TrainConfig {
        preset: "smoke+custom".into(),
        epochs: 3,
        max_train_samples: None,
        ..eabs_eval::preset::train_config(
            eabs_eval::Preset::Smoke,
            DatasetKind::FashionMnist,
            ModelKind::Cnn,
            0,
        )
    };
    std::fs::write(
        dir.path().join("train_config.json"),
        serde_json::to_vec_pretty(&custom).unwrap(),
    )
    .unwrap();
    let json = dir.path().join("custom.json");
    let fresh = dir.path().join("results-custom");
    let mut cmd = eval(&fresh, &ckpt, &["--model", "cnn", "--json"]);
    let (ok, text) = run(cmd.arg(&json));
    assert!(ok, "{text}");
    assert_eq!(
        settings_train(&json),
        serde_json::to_value(&custom).unwrap()
    );
    // The journal of the bare run was bound to "training unknown": reusing it is refused.
    let (ok, text) = run(&mut eval(&out, &ckpt, &["--model", "cnn"]));
    assert!(!ok && text.contains("train: was null"), "{text}");
    // A damaged configuration: refused, naming the file.
    std::fs::write(dir.path().join("train_config.json"), b"{\"epochs\": ").unwrap();
    let (ok, text) = run(&mut eval(&fresh, &ckpt, &["--model", "cnn"]));
    assert!(
        !ok && text.contains("train_config.json") && text.contains("not a training configuration"),
        "{text}"
    );
}

#[test]
fn eval_refuses_a_checkpoint_of_another_kind_or_dataset() {
    if !have_fashion_mnist() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let eabs = dir.path().join("eabs.safetensors");
    save(&eabs, DatasetKind::FashionMnist, ModelKind::E_ABS, 0);
    let (ok, text) = run(&mut eval(&out, &eabs, &["--model", "cnn"]));
    assert!(
        !ok && text
            .contains("holds a E-ABS for fashion-mnist, but a CNN for fashion-mnist was asked for"),
        "{text}"
    );
    let mnist = dir.path().join("mnist-cnn.safetensors");
    save(&mnist, DatasetKind::Mnist, ModelKind::Cnn, 0);
    let (ok, text) = run(&mut eval(&out, &mnist, &["--model", "cnn"]));
    assert!(
        !ok && text.contains("holds a CNN for mnist, but a CNN for fashion-mnist was asked for"),
        "{text}"
    );
}

#[test]
fn small_cli_defects_get_clear_answers() {
    let Some((dir, out, ckpt)) = cnn_fixture("cnn.safetensors") else {
        return;
    };
    // --epsilon without an attack is refused, not ignored.
    let (ok, text) = run(&mut eval(
        &out,
        &ckpt,
        &["--model", "cnn", "--epsilon", "0.3"],
    ));
    assert!(
        !ok && text.contains("--epsilon makes no sense for clean accuracy"),
        "{text}"
    );
    // A huge epsilon is a number, not a file name that is too long.
    let (ok, text) = run(&mut eval(
        &out,
        &ckpt,
        &[
            "--model",
            "cnn",
            "--attack",
            "noise",
            "--norm",
            "linf",
            "--epsilon",
            "1e308",
        ],
    ));
    assert!(ok && !text.contains("File name too long"), "{text}");
    // --json naming a directory: refused, and nothing left behind in it.
    let json_dir = dir.path().join("a-directory");
    std::fs::create_dir(&json_dir).unwrap();
    let mut c = eval(&out, &ckpt, &["--model", "cnn", "--json"]);
    c.arg(&json_dir);
    let (ok, text) = run(&mut c);
    assert!(!ok && text.contains("is a directory"), "{text}");
    assert_eq!(std::fs::read_dir(&json_dir).unwrap().count(), 0);
    // An empty EABS_DATA_DIR means "not set" (it used to fail every command in clap).
    let (ok, text) = run(eval(&out, &ckpt, &["--model", "cnn"]).env("EABS_DATA_DIR", ""));
    assert!(ok && !text.contains("a value is required"), "{text}");
}

#[test]
fn an_empty_data_dir_variable_is_not_set() {
    // No data needed: `data info` with an empty variable reaches the loader, whose error
    // (or success, where the dataset is installed) is not clap's.
    let (_, text) = run(xtask()
        .args(["data", "info", "svhn"])
        .env("EABS_DATA_DIR", ""));
    assert!(!text.contains("a value is required"), "{text}");
    assert!(text.contains("svhn"), "{text}");
}

#[test]
fn a_second_eval_on_the_same_journal_folder_is_refused_at_once() {
    let Some((_dir, out, ckpt)) = cnn_fixture("cnn.safetensors") else {
        return;
    };
    let (ok, text) = run(&mut eval(&out, &ckpt, &["--model", "cnn"]));
    assert!(ok, "{text}");
    // Another run holds the folder (this test process plays it): refused, naming the holder.
    let folder = out.join("eval/journal/fashion-mnist/smoke/seed0/CNN");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(folder.join(".lock"))
        .unwrap();
    lock.try_lock().unwrap();
    std::fs::write(
        folder.join(".lock"),
        "pid 4242, since unix time 0, `xtask eval`",
    )
    .unwrap();
    let (ok, text) = run(&mut eval(&out, &ckpt, &["--model", "cnn"]));
    assert!(
        !ok && text.contains("is in use by another run (pid 4242"),
        "{text}"
    );
    // Released (the holder exits, however): the next run resumes and gives the same line.
    drop(lock);
    let (ok, again) = run(&mut eval(&out, &ckpt, &["--model", "cnn"]));
    assert!(ok && again.contains("clean accuracy"), "{again}");
}
