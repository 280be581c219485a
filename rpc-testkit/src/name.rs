//! Pipe names no other test uses, and the files a name leaves on disk (Unix).

use std::sync::atomic::{AtomicU64, Ordering};

use rpc_core::PipeName;

/// Names handed out by this process so far.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The longest plain pipe name (`transport-pipe`'s limit).
const NAME_MAX: usize = 64;

/// A pipe name no other test uses: `tk-<pid>-<n>-<test>`, where `<n>` counts the names this
/// process handed out and `<test>` is the end of the calling test's name (libtest names each
/// test's thread after the test; `#[tokio::test]` runs its body on that thread), shortened to
/// fit the 64-character limit (left out when called on a thread of a runtime's own, such as
/// a tokio worker). Unique across the processes of parallel test runs (the pid)
/// and within one (the counter); the test's name is there for people reading a directory
/// listing.
///
/// ```
/// let a = rpc_testkit::unique_name();
/// let b = rpc_testkit::unique_name();
/// assert_ne!(a.as_str(), b.as_str());
/// assert!(a.as_str().starts_with(&format!("tk-{}-", std::process::id())));
/// ```
pub fn unique_name() -> PipeName {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let head = format!("tk-{}-{n}", std::process::id());
    let thread = std::thread::current();
    // A task spawned onto a runtime's worker runs on a thread named after the runtime, not
    // the test: no name says more than a misleading one.
    let test = thread.name().filter(|n| !n.starts_with("tokio-")).map(sanitize).unwrap_or_default();
    // The end of the test's name says most (`module::the_test_name`): keep that.
    let room = NAME_MAX.saturating_sub(head.len() + 1);
    let start = test.len().saturating_sub(room);
    let tail = test[start..].trim_matches(|c| c == '.' || c == '-');
    if tail.is_empty() { PipeName::new(head) } else { PipeName::new(format!("{head}-{tail}")) }
}

/// A test's name in the characters a pipe name may hold (`A-Z a-z 0-9 . _ -`).
fn sanitize(name: &str) -> String {
    name.replace("::", ".")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect()
}

/// What a server of a name leaves on disk when it is killed: on Unix its socket file and
/// the lock file beside it, in the per-user directory; on Windows nothing (a named pipe
/// vanishes with its last handle). Noted once the server said it is ready (it bound the name),
/// and removed once it is gone.
#[derive(Debug, Default)]
pub(crate) struct SocketFiles {
    name: Option<PipeName>,
}

impl SocketFiles {
    /// The files of `name`, whose server has just bound it.
    pub(crate) fn of(name: &PipeName) -> SocketFiles {
        SocketFiles { name: Some(name.clone()) }
    }

    /// Removes them, now that their server is gone: the socket only if nothing listens on it
    /// (a server that took the name over since keeps its own), and the lock file with it,
    /// under the name's lock as a server starting on the name would
    /// ([`PipeListener::remove_stale`](rpc_core::pipe::PipeListener::remove_stale)). `Err`
    /// says why they could not be removed.
    pub(crate) fn remove(&mut self) -> Result<(), String> {
        let Some(name) = self.name.take() else { return Ok(()) };
        match rpc_core::pipe::PipeListener::remove_stale(name.clone()) {
            Ok(_) => Ok(()),
            // Another server serves the name now: what is there is its own.
            Err(e) if e.kind() == rpc_core::pipe::ErrorKind::NameInUse => Ok(()),
            // The server ran as another user (a test of access control): its files are that
            // user's, not ours to remove (in a directory the test made, as a rule).
            Err(e) if e.kind() == rpc_core::pipe::ErrorKind::ForeignSocket => Ok(()),
            Err(e) => Err(format!("cannot remove the socket files of {name}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_unique_and_say_which_test_made_them() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a.as_str(), b.as_str());
        for name in [&a, &b] {
            assert!(name.as_str().len() <= NAME_MAX, "{name:?}");
            name.resolve().unwrap_or_else(|e| panic!("{name:?} does not resolve: {e}"));
            assert!(name.as_str().ends_with("names_are_valid_unique_and_say_which_test_made_them"), "{name:?}");
        }
    }

    #[test]
    fn a_long_test_name_is_cut_from_the_front_to_fit() {
        let long = "a_module::".repeat(10) + "and_a_test_name_that_goes_on_and_on_for_far_longer_than_any_pipe_name";
        let name = std::thread::Builder::new().name(long).spawn(unique_name).unwrap().join().unwrap();
        assert!(name.as_str().len() <= NAME_MAX, "{name:?}");
        assert!(name.as_str().ends_with("on_and_on_for_far_longer_than_any_pipe_name"), "{name:?}");
        name.resolve().unwrap_or_else(|e| panic!("{name:?} does not resolve: {e}"));
    }

    #[test]
    fn a_runtime_workers_thread_name_is_left_out() {
        let name =
            std::thread::Builder::new().name("tokio-rt-worker".into()).spawn(unique_name).unwrap().join().unwrap();
        assert!(!name.as_str().contains("tokio"), "{name:?}");
        assert!(name.as_str().starts_with(&format!("tk-{}-", std::process::id())), "{name:?}");
    }
}
