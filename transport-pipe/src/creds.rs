//! Who is at the other end of a pipe, as the operating system reports it.
//!
//! On Unix the kernel records the peer's credentials when the connection is made
//! (`SO_PEERCRED` on Linux, `getpeereid`/`LOCAL_PEERCRED` on macOS and the BSDs, read
//! through interprocess): the client's at `connect`, the server's at `listen`. They cannot
//! be forged by the peer and do not change afterwards. On Windows the pipe reports the
//! peer's process id (`GetNamedPipeClientProcessId`/`GetNamedPipeServerProcessId`); user
//! ids there are SIDs, not read yet (see the crate's known limits).

use std::fmt;
use std::io;

use interprocess::local_socket::traits::StreamCommon as _;

use crate::stream::PipeStream;

/// The credentials of a pipe's peer (or of this process). A field is `None` where the
/// platform does not report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PeerCredentials {
    /// The peer's process id.
    pub pid: Option<u32>,
    /// The peer's effective user id (Unix).
    pub uid: Option<u32>,
    /// The peer's effective group id (Unix).
    pub gid: Option<u32>,
}

impl PeerCredentials {
    /// Credentials with the given fields, for tests and custom transports.
    pub fn new(pid: Option<u32>, uid: Option<u32>, gid: Option<u32>) -> PeerCredentials {
        PeerCredentials { pid, uid, gid }
    }

    /// This process's own credentials (effective user and group on Unix), the reference
    /// for "the same user".
    pub fn current_process() -> PeerCredentials {
        let pid = Some(std::process::id());
        #[cfg(unix)]
        {
            let (uid, gid) = crate::platform::effective_ids();
            PeerCredentials { pid, uid: Some(uid), gid: Some(gid) }
        }
        #[cfg(not(unix))]
        {
            PeerCredentials { pid, uid: None, gid: None }
        }
    }
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (label, v) in [("pid", self.pid), ("uid", self.uid), ("gid", self.gid)] {
            if let Some(v) = v {
                write!(f, "{sep}{label} {v}")?;
                sep = ", ";
            }
        }
        if sep.is_empty() {
            f.write_str("unknown credentials")?;
        }
        Ok(())
    }
}

impl PipeStream {
    /// The credentials of the process at the other end: the client's as of its `connect`,
    /// or the server's as of its `listen`.
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        let creds = self.inner().peer_creds()?;
        let pid = creds.pid().and_then(|p| u32::try_from(p).ok());
        #[cfg(unix)]
        {
            Ok(PeerCredentials { pid, uid: creds.euid(), gid: creds.egid() })
        }
        #[cfg(not(unix))]
        {
            Ok(PeerCredentials { pid, uid: None, gid: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_display_only_what_is_known() {
        assert_eq!(PeerCredentials::new(Some(7), Some(0), Some(1)).to_string(), "pid 7, uid 0, gid 1");
        assert_eq!(PeerCredentials::new(Some(7), None, None).to_string(), "pid 7");
        assert_eq!(PeerCredentials::default().to_string(), "unknown credentials");
    }

    #[test]
    fn both_ends_of_a_pipe_see_this_process() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let name = format!("creds-{}", std::process::id());
            let listener = crate::PipeListener::bind(name.as_str()).unwrap();
            let opts = crate::ConnectOptions::default();
            let (server, client) = tokio::join!(listener.accept(), crate::connect(name.as_str(), &opts));
            let me = PeerCredentials::current_process();
            for end in [server.unwrap(), client.unwrap()] {
                let peer = end.peer_credentials().unwrap();
                assert_eq!(peer.pid, me.pid, "{peer}");
                assert_eq!((peer.uid, peer.gid), (me.uid, me.gid), "{peer}");
            }
        });
    }
}
