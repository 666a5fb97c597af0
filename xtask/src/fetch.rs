//! `cargo xtask fetch <dataset>`: downloads a dataset's files from the URLs in its manifest
//! (`datasets/<name>.json`), with a progress bar, resuming a partial download with an HTTP
//! `Range` request, and renaming into place only after the checksums match: the archive's digest
//! where one is published, then the digest of the decompressed bytes. Without network it fails
//! with a message that says what to download by hand and where to put it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use eabs_datasets::idx::decompress_if_gzip;
use eabs_datasets::manifest::{md5_hex, sha256_hex, verify, FileEntry};
use eabs_datasets::{DatasetKind, Manifest};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// mnist, fashion-mnist or svhn.
    dataset: String,
    /// Data directory; files go to <data-dir>/<dataset>/ (default: <workspace>/data).
    #[arg(long, env = "EABS_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Runs `fetch`.
pub fn run(args: &FetchArgs) -> anyhow::Result<()> {
    let kind: DatasetKind = args.dataset.parse()?;
    let Some(manifest) = Manifest::builtin(kind) else {
        bail!(
            "{kind} is not downloadable: it is built from GTSRB, DFG and BelgiumTSC; download those \
             (see `cargo xtask data build-supertraffic --help`) and run `cargo xtask data build-supertraffic`"
        );
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::data::workspace_root().join("data"))
        .join(kind.name());
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    for entry in &manifest.files {
        let path = fetch_file(&agent, entry, &dir, true)?;
        println!("ok  {}", path.display());
    }
    println!("{kind}: all files verified in {}", dir.display());
    Ok(())
}

/// Checks a downloaded file: the archive digest (when `check_archive` and one is published),
/// then the decompressed digest from the manifest.
fn verify_download(path: &Path, entry: &FileEntry, check_archive: bool) -> anyhow::Result<()> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if check_archive && entry.archive.is_some() {
        if let Some(expected) = &entry.archive_sha256 {
            let found = sha256_hex(&raw);
            if &found != expected {
                bail!("{}: sha256 checksum mismatch of the archive: expected {expected}, found {found}", path.display());
            }
        } else if let Some(expected) = &entry.archive_md5 {
            let found = md5_hex(&raw);
            if &found != expected {
                bail!(
                    "{}: md5 checksum mismatch of the archive: expected {expected}, found {found}",
                    path.display()
                );
            }
        }
    }
    let bytes = decompress_if_gzip(raw, path)?;
    verify(&bytes, entry, path)?;
    Ok(())
}

/// Downloads `entry` into `dir` unless a verified copy is already there; returns its path.
///
/// The download goes to `<name>.partial` (kept between attempts so the next one resumes), and is
/// renamed to `<name>` only when it verifies; a file that fails verification is deleted.
pub fn fetch_file(
    agent: &ureq::Agent,
    entry: &FileEntry,
    dir: &Path,
    show_progress: bool,
) -> anyhow::Result<PathBuf> {
    let dest = dir.join(entry.download_name());
    if dest.is_file() && verify_download(&dest, entry, false).is_ok() {
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!("{}.partial", entry.download_name()));
    let mut failures = Vec::new();
    let mut done = false;
    for url in &entry.urls {
        match download_resumable(agent, url, &partial, show_progress) {
            Ok(()) => {
                done = true;
                break;
            }
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    if !done {
        let digest = entry
            .archive_md5
            .as_ref()
            .map(|d| format!("archive md5 {d}"))
            .or_else(|| entry.md5.as_ref().map(|d| format!("md5 {d}")))
            .unwrap_or_default();
        bail!(
            "could not download {} ({}).\nDownload it by hand from {} and put it at {} ({digest}); \
             a partial download at {} will be resumed next time",
            entry.download_name(),
            failures.join("; "),
            entry.urls.join(" or "),
            dest.display(),
            partial.display()
        );
    }
    if let Err(e) = verify_download(&partial, entry, true) {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!(
            "downloaded {} is corrupt and was deleted",
            entry.download_name()
        )));
    }
    std::fs::rename(&partial, &dest)
        .with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    Ok(dest)
}

/// Appends the rest of `url` to `partial`, asking for `Range: bytes=<len>-` when `partial`
/// already holds `len` bytes. A server that ignores the range (200) restarts the file; one that
/// answers 416 has nothing more to send, so the partial file is taken as complete.
pub fn download_resumable(
    agent: &ureq::Agent,
    url: &str,
    partial: &Path,
    show_progress: bool,
) -> anyhow::Result<()> {
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(e) => return Err(anyhow!(e)),
    };
    let (append, start) = match resp.status() {
        206 => {
            // Content-Range: bytes <start>-<end>/<total>
            let start = resp
                .header("Content-Range")
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(have) {
                bail!("server resumed at byte {start:?}, expected {have}");
            }
            (true, have)
        }
        200 => (false, 0),
        s => bail!("unexpected HTTP status {s}"),
    };
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + start);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .with_context(|| format!("opening {}", partial.display()))?;
    let bar = if show_progress {
        ProgressBar::new(total.unwrap_or(0))
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(
        partial
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".partial").to_string())
            .unwrap_or_default(),
    );
    bar.set_position(start);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", partial.display()))?;
        written += n as u64;
        bar.set_position(written);
    }
    file.sync_all()
        .with_context(|| format!("flushing {}", partial.display()))?;
    bar.finish_and_clear();
    if let Some(t) = total {
        if written != t {
            bail!("connection closed after {written} of {t} bytes (run again to resume)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// A one-file HTTP/1.1 server on 127.0.0.1 that honours `Range: bytes=N-` when `ranges` is
    /// set, records the Range header of each request, and stops after 20 seconds at the latest.
    struct Server {
        url: String,
        seen: Arc<Mutex<Vec<Option<String>>>>,
        stop: Arc<AtomicBool>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn serve(body: Vec<u8>, ranges: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/file.gz", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let range = text
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                    .map(|l| l[6..].trim().to_string());
                seen2.lock().unwrap().push(range.clone());
                let start = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                    .filter(|_| ranges);
                let resp = match start {
                    Some(k) if k >= body.len() => format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", body.len()).into_bytes(),
                    Some(k) => {
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {k}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len() - 1,
                            body.len(),
                            body.len() - k
                        )
                        .into_bytes();
                        r.extend_from_slice(&body[k..]);
                        r
                    }
                    None => {
                        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                };
                let _ = s.write_all(&resp);
            }
        });
        Server { url, seen, stop }
    }

    fn fixture() -> (Vec<u8>, FileEntry) {
        let raw: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let gz = eabs_datasets::idx::gzip(&raw);
        let entry = FileEntry {
            name: "file".into(),
            size: Some(raw.len() as u64),
            sha256: Some(sha256_hex(&raw)),
            md5: None,
            archive: Some("file.gz".into()),
            archive_md5: Some(md5_hex(&gz)),
            archive_sha256: None,
            urls: vec![],
        };
        (gz, entry)
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
    }

    #[test]
    fn resumes_with_range_verifies_and_renames() {
        let (gz, mut entry) = fixture();
        let server = serve(gz.clone(), true);
        entry.urls = vec![server.url.clone()];
        let dir = tempfile::tempdir().unwrap();
        let half = gz.len() / 2;
        std::fs::write(dir.path().join("file.gz.partial"), &gz[..half]).unwrap();
        let path = fetch_file(&agent(), &entry, dir.path(), false).unwrap();
        assert_eq!(path, dir.path().join("file.gz"));
        assert_eq!(std::fs::read(&path).unwrap(), gz);
        assert!(!dir.path().join("file.gz.partial").exists());
        assert_eq!(
            server.seen.lock().unwrap().as_slice(),
            &[Some(format!("bytes={half}-"))]
        );
        // A verified file is not downloaded again.
        fetch_file(&agent(), &entry, dir.path(), false).unwrap();
        assert_eq!(server.seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn restarts_when_the_server_ignores_range() {
        let (gz, mut entry) = fixture();
        let server = serve(gz.clone(), false);
        entry.urls = vec![server.url.clone()];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("file.gz.partial"),
            b"garbage that is not the start",
        )
        .unwrap();
        let path = fetch_file(&agent(), &entry, dir.path(), false).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), gz);
    }

    #[test]
    fn checksum_mismatch_leaves_no_file() {
        let (gz, mut entry) = fixture();
        let server = serve(gz, true);
        entry.urls = vec![server.url.clone()];
        entry.sha256 = Some("00".repeat(32));
        entry.archive_md5 = None;
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            fetch_file(&agent(), &entry, dir.path(), false).unwrap_err()
        );
        assert!(
            e.contains("checksum mismatch") && e.contains(&"00".repeat(32)),
            "{e}"
        );
        assert!(!dir.path().join("file.gz").exists());
        assert!(!dir.path().join("file.gz.partial").exists());
        // A wrong archive digest is caught too.
        let (_, mut entry2) = fixture();
        entry2.urls = entry.urls.clone();
        entry2.archive_md5 = Some("11".repeat(16));
        let e = format!(
            "{:#}",
            fetch_file(&agent(), &entry2, dir.path(), false).unwrap_err()
        );
        assert!(e.contains("md5 checksum mismatch of the archive"), "{e}");
    }

    #[test]
    fn without_network_says_what_to_download_and_where() {
        let (_, mut entry) = fixture();
        // A port nobody listens on: bind, read the port, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        entry.urls = vec![format!("http://127.0.0.1:{port}/file.gz")];
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            fetch_file(&agent(), &entry, dir.path(), false).unwrap_err()
        );
        assert!(
            e.contains("Download it by hand from http://127.0.0.1")
                && e.contains(&dir.path().join("file.gz").display().to_string()),
            "{e}"
        );
    }
}
