//! Who is at the other end of a pipe, as the operating system reports it.
//!
//! On Unix the kernel records the peer's credentials when the connection is made
//! (`SO_PEERCRED` on Linux, `getpeereid`/`LOCAL_PEERCRED` on macOS and the BSDs, read
//! through interprocess): the client's at `connect`, the server's at `listen`. They cannot
//! be forged by the peer and do not change afterwards.
//!
//! On Windows the pipe reports the peer's process id
//! (`GetNamedPipeClientProcessId`/`GetNamedPipeServerProcessId`), and the user is a SID read
//! the way Windows provides for each end, so that it works between users without privileges:
//! a server reads its client's from the token the client connected with
//! (`ImpersonateNamedPipeClient`, which works once something has been read from the pipe); a
//! client reads its server's as the pipe's owner, cross-checked with the token of the
//! server's process where this process may open it. See [`PipeStream::peer_credentials`].

use std::fmt;
use std::io;

#[cfg(not(windows))]
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
    /// The peer's user SID (Windows): for a client, the user of the token it connected with;
    /// for a server, the owner of its pipe (see [`PipeStream::peer_credentials`]).
    pub sid: Option<Sid>,
}

/// A Windows security identifier in its binary form (at most 68 bytes), shown in the usual
/// `S-1-5-21-...` form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid {
    bytes: [u8; Sid::MAX],
    len: u8,
}

impl Sid {
    /// `SECURITY_MAX_SID_SIZE`.
    pub const MAX: usize = 68;

    /// The SID of the local system account, `S-1-5-18`.
    pub const LOCAL_SYSTEM: Sid = {
        let mut bytes = [0u8; Sid::MAX];
        // Revision 1, one sub-authority, authority 5 (NT), sub-authority 18.
        bytes[0] = 1;
        bytes[1] = 1;
        bytes[7] = 5;
        bytes[8] = 18;
        Sid { bytes, len: 12 }
    };

    /// A SID from its binary form; `None` if it is not one (wrong length for its
    /// sub-authority count, or too long).
    pub fn from_bytes(b: &[u8]) -> Option<Sid> {
        let count = *b.get(1)? as usize;
        if b.len() != 8 + 4 * count || b.len() > Sid::MAX {
            return None;
        }
        let mut bytes = [0u8; Sid::MAX];
        bytes[..b.len()].copy_from_slice(b);
        Some(Sid { bytes, len: b.len() as u8 })
    }

    /// The binary form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.as_bytes();
        let authority = b[2..8].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
        write!(f, "S-{}-{authority}", b[0])?;
        for sub in b[8..].chunks_exact(4) {
            write!(f, "-{}", u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]))?;
        }
        Ok(())
    }
}

/// A string that is not a SID in the `S-R-I-S...` form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseSidError(String);

impl fmt::Display for ParseSidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a SID (S-1-<authority>-<sub-authority>...): {}", self.0)
    }
}

impl std::error::Error for ParseSidError {}

impl std::str::FromStr for Sid {
    type Err = ParseSidError;

    /// Parses the usual form, `S-1-5-21-3623811015-3361044348-30300820-1013`: revision,
    /// identifier authority (below 2^48), then up to 15 sub-authorities (each a `u32`).
    fn from_str(s: &str) -> Result<Sid, ParseSidError> {
        let bad = || ParseSidError(s.to_owned());
        let mut parts = s.strip_prefix("S-").or_else(|| s.strip_prefix("s-")).ok_or_else(bad)?.split('-');
        let revision: u8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let authority: u64 = parts.next().and_then(|p| p.parse().ok()).filter(|a| *a < 1 << 48).ok_or_else(bad)?;
        let subs = parts.map(|p| p.parse::<u32>().map_err(|_| bad())).collect::<Result<Vec<_>, _>>()?;
        if subs.len() > 15 {
            return Err(bad());
        }
        let mut b = vec![revision, subs.len() as u8];
        b.extend_from_slice(&authority.to_be_bytes()[2..]);
        for sub in subs {
            b.extend_from_slice(&sub.to_le_bytes());
        }
        Sid::from_bytes(&b).ok_or_else(bad)
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({self})")
    }
}

impl PeerCredentials {
    /// Credentials with the given fields, for tests and custom transports.
    pub fn new(pid: Option<u32>, uid: Option<u32>, gid: Option<u32>) -> PeerCredentials {
        PeerCredentials { pid, uid, gid, sid: None }
    }

    /// These credentials with the user SID `sid` (Windows).
    #[must_use]
    pub fn with_sid(mut self, sid: Option<Sid>) -> PeerCredentials {
        self.sid = sid;
        self
    }

    /// This process's own credentials (effective user and group on Unix), the reference
    /// for "the same user".
    pub fn current_process() -> PeerCredentials {
        let pid = Some(std::process::id());
        #[cfg(unix)]
        {
            let (uid, gid) = crate::platform::effective_ids();
            PeerCredentials { pid, uid: Some(uid), gid: Some(gid), sid: None }
        }
        #[cfg(windows)]
        {
            PeerCredentials { pid, uid: None, gid: None, sid: crate::platform::current_sid().ok() }
        }
        #[cfg(not(any(unix, windows)))]
        {
            PeerCredentials { pid, uid: None, gid: None, sid: None }
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
        if let Some(sid) = self.sid {
            write!(f, "{sep}user {sid}")?;
            sep = ", ";
        }
        if sep.is_empty() {
            f.write_str("unknown credentials")?;
        }
        Ok(())
    }
}

#[cfg(unix)]
impl PeerCredentials {
    /// What interprocess read from the kernel for a Unix socket's peer.
    pub(crate) fn of(creds: &interprocess::local_socket::PeerCreds) -> PeerCredentials {
        let pid = creds.pid().and_then(|p| u32::try_from(p).ok());
        PeerCredentials { pid, uid: creds.euid(), gid: creds.egid(), sid: None }
    }
}

impl PipeStream {
    /// The credentials of the process at the other end: the client's as of its `connect`,
    /// or the server's as of its `listen`.
    ///
    /// A user that cannot be read is `None` (every rule about users then refuses the peer);
    /// `Err` only if the pipe cannot report its peer at all.
    ///
    /// ## Platform-specific behavior
    ///
    /// On Unix the uid, gid and pid the kernel recorded for the socket's peer.
    ///
    /// On Windows the pid the pipe reports, and the user SID:
    ///
    /// - On the server's end, the user of the token the client connected with: read by
    ///   impersonating the client on the calling thread (`ImpersonateNamedPipeClient`, then
    ///   `OpenThreadToken` as this process, `TokenUser`, and `RevertToSelf` before returning).
    ///   That works whatever the two users are, because clients connect at identification
    ///   level or above (ours always do), but only **once the server has read something from
    ///   the pipe**: before that Windows refuses (`ERROR_CANNOT_IMPERSONATE`) and the user of
    ///   the client process's token is read instead (by the pid), which needs the right to open
    ///   it: the same user, or `SeDebugPrivilege`. So read the client's first message, then ask
    ///   (rpc-core's server does: it applies its access policy once the client's hello is in).
    ///   A client impersonated but whose token cannot be read (one connected at anonymous
    ///   level) has no SID: the pid is not used then, since a client can make the pipe report
    ///   another process's pid.
    /// - On the client's end, the owner of the pipe (`GetSecurityInfo` on this handle): the
    ///   account that created it, which a process of another user cannot set to ours. Our
    ///   listeners make the server's user the owner ([`ListenOptions::windows_sddl`]). Where
    ///   this process may open the token of the server's process (the same user, or a
    ///   privileged client), its user must be the owner, or the SID is `None`.
    ///
    /// [`ListenOptions::windows_sddl`]: crate::ListenOptions::windows_sddl
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        #[cfg(unix)]
        {
            Ok(PeerCredentials::of(&self.inner().peer_creds()?))
        }
        #[cfg(windows)]
        {
            crate::platform::peer_credentials(self.inner())
        }
        #[cfg(not(any(unix, windows)))]
        {
            let pid = self.inner().peer_creds()?.pid().and_then(|p| u32::try_from(p).ok());
            Ok(PeerCredentials { pid, uid: None, gid: None, sid: None })
        }
    }
}

#[cfg(test)]
mod sid_tests {
    use super::*;

    #[test]
    fn sids_parse_from_and_print_to_the_usual_form() {
        for text in ["S-1-5-18", "S-1-5-21-3623811015-3361044348-30300820-1013", "S-1-1-0"] {
            let sid: Sid = text.parse().unwrap();
            assert_eq!(sid.to_string(), text);
        }
        assert_eq!("S-1-5-18".parse::<Sid>().unwrap(), Sid::LOCAL_SYSTEM);
        for bad in ["", "S-1", "1-5-18", "S-1-5-x", "S-1-281474976710656-1", "S-1-5-4294967296"] {
            assert!(bad.parse::<Sid>().is_err(), "{bad}");
        }
        let too_many = format!("S-1-5{}", "-1".repeat(16));
        assert!(too_many.parse::<Sid>().is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_read_and_show_in_the_usual_form() {
        assert_eq!(Sid::LOCAL_SYSTEM.to_string(), "S-1-5-18");
        let mut b = vec![1u8, 2, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0];
        b.extend_from_slice(&1000u32.to_le_bytes());
        let sid = Sid::from_bytes(&b).unwrap();
        assert_eq!(sid.to_string(), "S-1-5-21-1000");
        assert_eq!(Sid::from_bytes(sid.as_bytes()), Some(sid));
        assert_eq!(Sid::from_bytes(&b[..15]), None);
    }

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
                assert_eq!((peer.uid, peer.gid, peer.sid), (me.uid, me.gid, me.sid), "{peer}");
            }
        });
    }
}
