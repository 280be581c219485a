//! Who may connect to a server ([`AccessPolicy`]) and whom a client accepts as its server
//! ([`ServerIdentity`]). Both are decided once per connection from the credentials the
//! operating system reports for the peer ([`PeerCredentials`]), before a byte of a request
//! is read or written: a server checks right after accept, before it reads the client's
//! hello; a client checks right after connect, before it sends its own.
//!
//! The defaults are the strict ones: a server admits only clients running as its own user,
//! and a client talks only to a server running as its own user. Either end widens that
//! with one setting ([`ServerConfig::access`](crate::ServerConfig::access),
//! [`ClientConfig::expect_server`](crate::ClientConfig::expect_server)).
//!
//! ## Platform-specific behavior
//!
//! On Unix the user is the effective uid (and group the effective gid) the kernel recorded
//! at `connect` (the client's) or `listen` (the server's). On Windows it is a user SID: a
//! client's is the user of the token it connected with (read once its hello is in), a server's
//! is its pipe's owner (see `transport_pipe::PipeStream::peer_credentials`); uid and gid lists
//! do not apply there. A peer whose user cannot be read is refused by the user rules (fail
//! closed).

use std::fmt;
use std::sync::Arc;

pub use transport_pipe::{PeerCredentials, Sid};

/// Whether `a` and `b` run as the same user: by uid where both are known (Unix), else by
/// user SID (Windows); `None` if neither tells.
fn same_user(a: &PeerCredentials, b: &PeerCredentials) -> Option<bool> {
    match ((a.uid, b.uid), (a.sid, b.sid)) {
        ((Some(x), Some(y)), _) => Some(x == y),
        (_, (Some(x), Some(y))) => Some(x == y),
        _ => None,
    }
}

/// A custom admission check: `Err(why)` refuses the client, and `why` reaches it.
type CheckFn = dyn Fn(&PeerCredentials) -> Result<(), String> + Send + Sync;

/// Which clients a server admits. Default: [`same_user`](Self::same_user).
///
/// A refused client gets [`TransportError::PermissionDenied`](crate::TransportError)
/// naming the rule, and nothing it sent is decoded. Finer, per-method decisions belong in
/// handlers, which see the caller's credentials in [`Context::peer`](crate::context::Context::peer).
#[derive(Clone)]
pub struct AccessPolicy {
    rule: Rule,
}

#[derive(Clone)]
enum Rule {
    SameUser,
    Anyone,
    Allow { uids: Vec<u32>, gids: Vec<u32>, sids: Vec<Sid> },
    Custom(Arc<CheckFn>),
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy::same_user()
    }
}

impl fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessPolicy({})", self.rule_name())
    }
}

impl AccessPolicy {
    /// Only clients running as the server's own (effective) user.
    pub fn same_user() -> Self {
        AccessPolicy { rule: Rule::SameUser }
    }

    /// Every client that can open the pipe. The pipe's permissions are then the only
    /// barrier: make them match (for example a socket mode of `0o666` in a shared directory).
    pub fn anyone() -> Self {
        AccessPolicy { rule: Rule::Anyone }
    }

    /// The server's own user, plus clients whose user id is in `uids` or whose group id is
    /// in `gids`.
    pub fn allow(uids: impl IntoIterator<Item = u32>, gids: impl IntoIterator<Item = u32>) -> Self {
        AccessPolicy {
            rule: Rule::Allow { uids: uids.into_iter().collect(), gids: gids.into_iter().collect(), sids: Vec::new() },
        }
    }

    /// The server's own user, plus clients whose user SID is in `sids` (Windows; parse
    /// them from the usual form with `"S-1-5-21-...".parse::<Sid>()`). Combine with uids
    /// and gids through [`and_sids`](Self::and_sids).
    pub fn allow_sids(sids: impl IntoIterator<Item = Sid>) -> Self {
        AccessPolicy::allow([], []).and_sids(sids)
    }

    /// Adds `sids` to an [`allow`](Self::allow) or [`allow_sids`](Self::allow_sids) list
    /// (other rules are returned unchanged).
    #[must_use]
    pub fn and_sids(mut self, more: impl IntoIterator<Item = Sid>) -> Self {
        if let Rule::Allow { sids, .. } = &mut self.rule {
            sids.extend(more);
        }
        self
    }

    /// A check of your own: it gets the client's credentials and returns `Err(why)` to
    /// refuse it (`why` is sent to the client).
    pub fn custom(check: impl Fn(&PeerCredentials) -> Result<(), String> + Send + Sync + 'static) -> Self {
        AccessPolicy { rule: Rule::Custom(Arc::new(check)) }
    }

    /// The rule's name, as refusals quote it.
    pub fn rule_name(&self) -> String {
        match &self.rule {
            Rule::SameUser => "same user only".to_owned(),
            Rule::Anyone => "anyone".to_owned(),
            Rule::Allow { uids, gids, sids } if sids.is_empty() => {
                format!("the server's user, uids {uids:?}, gids {gids:?}")
            }
            Rule::Allow { uids, gids, sids } => {
                let sids: Vec<String> = sids.iter().map(Sid::to_string).collect();
                format!("the server's user, uids {uids:?}, gids {gids:?}, users {sids:?}")
            }
            Rule::Custom(_) => "a custom check".to_owned(),
        }
    }

    /// Whether the rule decides by the client's user (the default `same_user`, `allow`
    /// lists): it cannot be applied where the transport reports no user (TCP).
    pub(crate) fn is_about_users(&self) -> bool {
        matches!(self.rule, Rule::SameUser | Rule::Allow { .. })
    }

    /// Admits or refuses a client with credentials `peer`, for a server running as `me`;
    /// `Err` says why, naming the rule.
    pub fn check(&self, peer: &PeerCredentials, me: &PeerCredentials) -> Result<(), String> {
        let refused = |why: String| Err(format!("refused by the access rule `{}`: {why}", self.rule_name()));
        match &self.rule {
            Rule::Anyone => Ok(()),
            Rule::Custom(check) => check(peer).or_else(refused),
            Rule::SameUser | Rule::Allow { .. } => {
                match same_user(peer, me) {
                    Some(true) => return Ok(()),
                    // Fail closed: a client whose user cannot be read is not admitted.
                    None => return refused(format!("the client's user cannot be read ({peer})")),
                    Some(false) => {}
                }
                if let Rule::Allow { uids, gids, sids } = &self.rule {
                    let by_uid = peer.uid.is_some_and(|u| uids.contains(&u));
                    let by_gid = peer.uid.is_some() && peer.gid.is_some_and(|g| gids.contains(&g));
                    let by_sid = peer.sid.is_some_and(|s| sids.contains(&s));
                    if by_uid || by_gid || by_sid {
                        return Ok(());
                    }
                }
                refused(format!("the client runs as {peer}, the server as {}", user_of(me)))
            }
        }
    }
}

/// Whom a client accepts as its server. Default: [`SameUser`](Self::SameUser).
///
/// Checked right after connecting, before the client sends anything: a process of another
/// user that took the pipe's name gets not one byte, and the client gets
/// [`TransportError::ServerIdentity`](crate::TransportError) naming both users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerIdentity {
    /// A server running as the client's own (effective) user.
    #[default]
    SameUser,
    /// A server running as this user id (Unix).
    User(u32),
    /// A server running as root (uid 0), for system services.
    Root,
    /// Any server (no check).
    Anyone,
}

impl ServerIdentity {
    /// A server running as user `uid`.
    pub fn user(uid: u32) -> Self {
        ServerIdentity::User(uid)
    }

    /// Whom this expects, for messages.
    pub fn describe(self, me: &PeerCredentials) -> String {
        match self {
            ServerIdentity::SameUser => format!("{} (the same user as this client)", user_of(me)),
            ServerIdentity::User(uid) => format!("uid {uid}"),
            ServerIdentity::Root => "uid 0 (root) or LocalSystem (S-1-5-18)".to_owned(),
            ServerIdentity::Anyone => "any user".to_owned(),
        }
    }

    /// Whether a server with credentials `server` is acceptable to a client running as `me`.
    /// A server whose user cannot be read is accepted only by [`Anyone`](Self::Anyone).
    pub fn admits(self, server: &PeerCredentials, me: &PeerCredentials) -> bool {
        match self {
            ServerIdentity::SameUser => same_user(server, me) == Some(true),
            ServerIdentity::User(expected) => server.uid == Some(expected),
            ServerIdentity::Root => server.uid == Some(0) || server.sid == Some(Sid::LOCAL_SYSTEM),
            ServerIdentity::Anyone => true,
        }
    }
}

/// The user part of `c`, for messages: `uid 1000` or `user S-1-5-21-...`.
fn user_of(c: &PeerCredentials) -> String {
    match (c.uid, c.sid) {
        (Some(uid), _) => format!("uid {uid}"),
        (None, Some(sid)) => format!("user {sid}"),
        (None, None) => "an unknown user".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials::new(Some(100), Some(uid), Some(gid))
    }

    #[test]
    fn same_user_admits_only_the_servers_user_and_names_the_rule() {
        let me = user(1000, 1000);
        let p = AccessPolicy::default();
        assert!(p.check(&user(1000, 5), &me).is_ok());
        let why = p.check(&user(0, 0), &me).unwrap_err();
        assert!(why.contains("same user only") && why.contains("uid 0") && why.contains("uid 1000"), "{why}");
    }

    #[test]
    fn allow_lists_admit_listed_users_and_groups() {
        let me = user(1000, 1000);
        let p = AccessPolicy::allow([2000], [50]);
        assert!(p.check(&user(1000, 1), &me).is_ok());
        assert!(p.check(&user(2000, 1), &me).is_ok());
        assert!(p.check(&user(3000, 50), &me).is_ok());
        assert!(p.check(&user(3000, 51), &me).is_err());
    }

    #[test]
    fn custom_checks_refuse_with_their_own_reason() {
        let p = AccessPolicy::custom(|c| if c.pid == Some(1) { Ok(()) } else { Err("not init".into()) });
        let why = p.check(&user(0, 0), &user(0, 0)).unwrap_err();
        assert!(why.contains("custom check") && why.contains("not init"), "{why}");
    }

    #[test]
    fn users_are_compared_by_sid_where_there_are_no_uids() {
        let sid = |n: u8| Sid::from_bytes(&[1, 1, 0, 0, 0, 0, 0, 5, n, 0, 0, 0]);
        let me = PeerCredentials::new(Some(1), None, None).with_sid(sid(21));
        let same = PeerCredentials::new(Some(2), None, None).with_sid(sid(21));
        let other = PeerCredentials::new(Some(3), None, None).with_sid(sid(22));
        let unknown = PeerCredentials::new(Some(4), None, None);
        let p = AccessPolicy::same_user();
        assert!(p.check(&same, &me).is_ok());
        assert!(p.check(&other, &me).unwrap_err().contains("S-1-5-22"));
        assert!(p.check(&unknown, &me).unwrap_err().contains("cannot be read"));
        assert!(ServerIdentity::SameUser.admits(&same, &me));
        assert!(!ServerIdentity::SameUser.admits(&other, &me));
        assert!(!ServerIdentity::SameUser.admits(&unknown, &me));
        assert!(ServerIdentity::Root.admits(&PeerCredentials::default().with_sid(Some(Sid::LOCAL_SYSTEM)), &me));
    }

    #[test]
    fn sid_allow_lists_admit_listed_windows_users_only() {
        let me = PeerCredentials::new(Some(1), None, None).with_sid(Some("S-1-5-21-1-2-3-1000".parse().unwrap()));
        let listed: Sid = "S-1-5-21-1-2-3-1001".parse().unwrap();
        let p = AccessPolicy::allow_sids([listed]);
        let client = |sid: &str| PeerCredentials::new(Some(2), None, None).with_sid(Some(sid.parse().unwrap()));
        assert!(p.check(&client("S-1-5-21-1-2-3-1000"), &me).is_ok(), "the server's own user");
        assert!(p.check(&client("S-1-5-21-1-2-3-1001"), &me).is_ok(), "a listed user");
        let why = p.check(&client("S-1-5-21-1-2-3-1002"), &me).unwrap_err();
        assert!(why.contains("S-1-5-21-1-2-3-1001") && why.contains("S-1-5-21-1-2-3-1002"), "{why}");
        // Lists combine; a gid list does not admit a Windows peer (it has no gid).
        let both = AccessPolicy::allow([2000], [0]).and_sids([listed]);
        assert!(both.check(&client("S-1-5-21-1-2-3-1001"), &me).is_ok());
        assert!(both.check(&client("S-1-5-21-1-2-3-1003"), &me).is_err());
    }

    #[test]
    fn a_client_accepts_only_the_server_it_expects() {
        let me = user(1000, 1000);
        assert!(ServerIdentity::SameUser.admits(&user(1000, 1), &me));
        assert!(!ServerIdentity::SameUser.admits(&user(1001, 1), &me));
        assert!(ServerIdentity::Root.admits(&user(0, 0), &me));
        assert!(!ServerIdentity::Root.admits(&user(1000, 0), &me));
        assert!(ServerIdentity::user(7).admits(&user(7, 7), &me));
        assert!(ServerIdentity::Anyone.admits(&user(9, 9), &me));
    }
}
