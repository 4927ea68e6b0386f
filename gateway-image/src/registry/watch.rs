//! Re-reads the table file when it changes. The kubelet updates a mounted Secret by
//! swapping a symlink, which inotify on the file's path misses; polling the metadata of
//! the path (symlinks followed) every few seconds sees every swap and costs a `stat`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Registry;

/// How often the table file's metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What identifies one version of the file: device, inode, size, modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn version(path: &Path) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Version {
        device: metadata.dev(),
        inode: metadata.ino(),
        len: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

/// Polls `path` every `interval` until `stop`; a changed file is loaded into `registry`
/// (on the blocking pool: a large table takes a while to decompress and parse).
pub async fn watch(
    registry: Arc<Registry>,
    path: PathBuf,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut seen = version(&path);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = version(&path);
        if now.is_none() || now == seen {
            continue;
        }
        seen = now;
        let registry = Arc::clone(&registry);
        let path = path.clone();
        let _ = tokio::task::spawn_blocking(move || registry.load_file(&path)).await;
    }
}
