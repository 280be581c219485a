//! Helpers shared by the integration tests: collision-free names, a watchdog, wine detection.
#![allow(dead_code)] // each test crate uses a different subset

use std::{
    future::Future,
    panic::Location,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use transport_pipe::PipeName;

/// A name no other test (in this process or a parallel `cargo test`) uses: pid, the caller's
/// line and a per-process counter.
#[track_caller]
pub(crate) fn unique_name() -> PipeName {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    PipeName::new(format!("tp-{}-{}-{n}", std::process::id(), Location::caller().line()))
}

/// A scratch directory for tests that need explicit paths; removed on drop.
pub(crate) struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub(crate) fn join(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[track_caller]
pub(crate) fn scratch_dir() -> ScratchDir {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tp-it-{}-{}-{n}", std::process::id(), Location::caller().line()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// Fails the test instead of hanging it.
pub(crate) async fn watchdog<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test hung: watchdog fired")
}

/// Whether the tests run under wine (cargo-win sets WINEPREFIX; wine passes it through).
pub(crate) fn under_wine() -> bool {
    cfg!(windows) && std::env::var_os("WINEPREFIX").is_some()
}

/// Timing assertions get more slack under wine, which is much slower to start threads and
/// deliver I/O completions.
pub(crate) fn timing_margin() -> Duration {
    if under_wine() { Duration::from_secs(3) } else { Duration::from_millis(1500) }
}

/// Whether the tests run as root, who bypasses file permissions.
pub(crate) fn is_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Our own uid without unsafe code: the owner of a file we just created.
        let probe = std::env::temp_dir().join(format!("tp-uid-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").unwrap();
        let uid = std::fs::metadata(&probe).unwrap().uid();
        let _ = std::fs::remove_file(&probe);
        uid == 0
    }
    #[cfg(not(unix))]
    false
}
