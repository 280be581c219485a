//! Time limits for whole tests, so a hang is a failure and not a stuck test run.

use std::future::Future;
use std::time::Duration;

/// How long a test may take, by default: [`watchdog`] and [`blocking_watchdog`] with this.
pub const TEST_WATCHDOG: Duration = Duration::from_secs(30);

/// Runs `test` and fails (panics) if it takes longer than `limit`. The test's future is
/// dropped first, so the [`TestServer`](crate::TestServer)s it holds are torn down (their
/// processes killed, their files removed) before the failure is reported.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let answer = rpc_testkit::watchdog(std::time::Duration::from_secs(5), async { 42 }).await;
/// assert_eq!(answer, 42);
/// # }
/// ```
pub async fn watchdog<F: Future>(limit: Duration, test: F) -> F::Output {
    match tokio::time::timeout(limit, test).await {
        Ok(out) => out,
        Err(_) => panic!("test hung: watchdog fired after {limit:?}"),
    }
}

/// [`watchdog`] for a test that blocks (no async runtime, or the blocking client): `test`
/// runs on a thread of its own, and the caller fails if it takes longer than `limit`. A
/// panic in `test` is the caller's panic. (A thread that hangs cannot be stopped: its
/// servers end with their own [`ServerCommand::watchdog`](crate::ServerCommand::watchdog), or
/// with the test process.)
pub fn blocking_watchdog<T: Send + 'static>(limit: Duration, test: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(std::thread::current().name().unwrap_or("test").to_owned())
        .spawn(move || {
            let out = test();
            let _ = done.send(());
            out
        })
        .expect("spawn the test's thread");
    match finished.recv_timeout(limit) {
        // Finished, or panicked (the sender is dropped): the join says which.
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("test hung: watchdog fired after {limit:?}"),
    }
}
