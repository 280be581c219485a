//! Pipe names: validation and the mapping to an operating-system address.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, ErrorKind},
    platform,
};

/// Longest plain name, in characters. Plain names are ASCII, so this is also their length in
/// bytes. The resolved address has its own, platform-specific limit (see [`PipeName`]).
pub const NAME_MAX: usize = 64;

/// A pipe endpoint: a plain name mapped per platform, or an explicit path.
///
/// Build one with [`PipeName::new`], [`PipeName::path`] or `From` a string or path. Nothing is
/// checked until the name is used: [`resolve`](PipeName::resolve) (called by
/// [`PipeListener::bind`](crate::PipeListener::bind) and [`connect`](crate::connect)) reports
/// a bad name as [`ErrorKind::InvalidName`].
///
/// A string that is an absolute path (starting with `/` on Unix, with `\\` on Windows) is taken
/// as an explicit path; any other string is a plain name. A plain name has 1 to [`NAME_MAX`]
/// characters from `A-Z a-z 0-9 . _ -`, and does not start or end with `.`.
///
/// ## Platform-specific behavior
///
/// ### Unix
///
/// A plain name `NAME` maps to a filesystem socket (never the Linux abstract namespace, which has
/// no permissions):
///
/// - `$XDG_RUNTIME_DIR/pipe-rpc/NAME.sock` when `XDG_RUNTIME_DIR` is set to an absolute path of
///   an existing directory;
/// - otherwise `{temp_dir}/pipe-rpc-{uid}/NAME.sock`, where `temp_dir` is
///   [`std::env::temp_dir`] (`$TMPDIR`, else `/tmp`) and `uid` the real user id.
///
/// Client and server must therefore see the same `XDG_RUNTIME_DIR` and `TMPDIR`; error messages
/// show the resolved path so a mismatch is visible. The listener creates the `pipe-rpc`
/// directory with mode `0700`, and both sides refuse (with [`ErrorKind::PermissionDenied`]) a
/// directory that is a symlink, is owned by another user, or is group- or world-writable.
///
/// A socket address holds at most 108 bytes on Linux and Android and 104 on macOS and the BSDs,
/// including the terminating NUL, so the resolved path may be at most 107 (resp. 103) bytes.
/// A longer path is an [`ErrorKind::InvalidName`] error; use a shorter name or an explicit
/// [`PipeName::path`]. Names are case-sensitive.
///
/// An explicit path is used as given (a relative path is relative to the working directory of
/// each process) and is subject to the same length limit; its directory is not checked.
///
/// ### Windows
///
/// A plain name `NAME` maps to the local named pipe `\\.\pipe\pipe-rpc.NAME` (a prefix that
/// keeps pipe-rpc's endpoints apart from other programs' pipes in the machine-wide namespace,
/// as the per-user directory does on Unix; a program that is not pipe-rpc connects to that
/// full name). An explicit path must
/// start with `\\.\pipe\` (remote pipes are not supported). The whole pipe name may be at most
/// 256 characters. Pipe names are case-insensitive, so `Foo` and `foo` are the same pipe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipeName {
    /// What the user gave (lossy for a non-UTF-8 path), for messages.
    given: String,
    /// `Some` for an explicit path, `None` for a plain name (then `given` is the name).
    path: Option<PathBuf>,
}

impl PipeName {
    /// A pipe name from a string: a plain name, or an explicit path if the string is an
    /// absolute path (see [`PipeName`]).
    pub fn new(name: impl Into<String>) -> PipeName {
        let given = name.into();
        if platform::is_absolute_path_str(&given) {
            PipeName { path: Some(PathBuf::from(&given)), given }
        } else {
            PipeName { given, path: None }
        }
    }

    /// An explicit path: a Unix socket file path, or a full Windows pipe path such as
    /// `\\.\pipe\foo`.
    pub fn path(path: impl Into<PathBuf>) -> PipeName {
        let path = path.into();
        PipeName { given: path.to_string_lossy().into_owned(), path: Some(path) }
    }

    /// The name or path as the user gave it (for messages).
    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// Whether this is an explicit path rather than a plain name.
    pub fn is_path(&self) -> bool {
        self.path.is_some()
    }

    /// The operating-system address: the Unix socket path, or the Windows pipe path
    /// `\\.\pipe\pipe-rpc.NAME`. Validates the name and checks the platform's length limits; it does not
    /// create or inspect anything on disk except whether `$XDG_RUNTIME_DIR` is a directory.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`] for a malformed name or a resolved address over the platform
    /// limit; the message names the offending character or the limit.
    pub fn resolve(&self) -> Result<PathBuf, Error> {
        let resolved = match &self.path {
            Some(path) => path.clone(),
            None => {
                validate_plain(&self.given).map_err(|e| e.with_name(self))?;
                platform::plain_name_address(&self.given)
            }
        };
        platform::check_address(self, &resolved)?;
        Ok(resolved)
    }

    /// Whether the name lives in the per-user directory this crate manages (plain names on Unix).
    pub(crate) fn is_plain(&self) -> bool {
        self.path.is_none()
    }
}

/// Checks the plain-name rules shared by all platforms.
fn validate_plain(name: &str) -> Result<(), Error> {
    let invalid = |why: String| Error::new(ErrorKind::InvalidName, format!("invalid pipe name `{name}`: {why}"));
    if name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(invalid(format!(
            "character {bad:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-', or give an \
             absolute path)"
        )));
    }
    if name.len() > NAME_MAX {
        return Err(invalid(format!("{} characters is over the limit of {NAME_MAX} (NAME_MAX)", name.len())));
    }
    // Windows path normalization strips trailing dots (so `foo.` would alias `foo`, and `..`
    // would escape `\\.\pipe\`); a leading dot hides the socket file on Unix.
    if name.starts_with('.') || name.ends_with('.') {
        return Err(invalid("a name may not start or end with '.'".into()));
    }
    Ok(())
}

impl fmt::Display for PipeName {
    /// Shows the name and, for a plain name that resolves, the address it maps to:
    /// `foo (/run/user/1000/pipe-rpc/foo.sock)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)?;
        if self.is_plain()
            && let Ok(addr) = self.resolve()
        {
            write!(f, " ({})", addr.display())?;
        }
        Ok(())
    }
}

impl From<&str> for PipeName {
    fn from(s: &str) -> PipeName {
        PipeName::new(s)
    }
}

impl From<String> for PipeName {
    fn from(s: String) -> PipeName {
        PipeName::new(s)
    }
}

impl From<&String> for PipeName {
    fn from(s: &String) -> PipeName {
        PipeName::new(s.as_str())
    }
}

impl From<&PipeName> for PipeName {
    fn from(n: &PipeName) -> PipeName {
        n.clone()
    }
}

impl From<&Path> for PipeName {
    fn from(p: &Path) -> PipeName {
        PipeName::path(p)
    }
}

impl From<PathBuf> for PipeName {
    fn from(p: PathBuf) -> PipeName {
        PipeName::path(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_and_msg(name: &PipeName) -> (ErrorKind, String) {
        let e = name.resolve().expect_err("should be invalid");
        (e.kind(), e.to_string())
    }

    #[test]
    fn plain_names_accept_the_documented_alphabet() {
        for ok in ["a", "A-b_c.d", "0", "x".repeat(NAME_MAX).as_str(), "a..b"] {
            PipeName::new(ok).resolve().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn bad_characters_are_named_in_the_error() {
        for (name, bad) in [("a b", "' '"), ("a/b", "'/'"), ("é", "'é'"), ("a:b", "':'")] {
            let (kind, msg) = kind_and_msg(&PipeName::new(name));
            assert_eq!(kind, ErrorKind::InvalidName);
            assert!(msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn empty_dot_and_overlong_names_are_invalid() {
        assert!(kind_and_msg(&PipeName::new("")).1.contains("empty"));
        for dotty in [".", "..", ".hidden", "trailing."] {
            assert!(kind_and_msg(&PipeName::new(dotty)).1.contains("start or end with '.'"));
        }
        let (kind, msg) = kind_and_msg(&PipeName::new("x".repeat(NAME_MAX + 1)));
        assert_eq!(kind, ErrorKind::InvalidName);
        assert!(msg.contains(&format!("limit of {NAME_MAX}")), "{msg}");
    }

    #[test]
    fn absolute_path_strings_become_paths() {
        #[cfg(unix)]
        let abs = "/tmp/some.sock";
        #[cfg(windows)]
        let abs = r"\\.\pipe\some";
        let n = PipeName::from(abs);
        assert!(n.is_path());
        assert_eq!(n.as_str(), abs);
        assert_eq!(n.resolve().unwrap(), PathBuf::from(abs));
        assert_eq!(PipeName::from(abs.to_string()), n);
        assert_eq!(PipeName::from(Path::new(abs)), n);
        assert_eq!(PipeName::from(PathBuf::from(abs)), n);
        assert_eq!(PipeName::from(&n), n);
        // Display of a path is just the path.
        assert_eq!(n.to_string(), abs);
    }

    #[test]
    fn plain_display_shows_the_address() {
        let n = PipeName::from(&"disp".to_string());
        assert!(!n.is_path());
        let shown = n.to_string();
        assert!(shown.starts_with("disp ("), "{shown}");
        assert!(shown.contains(&n.resolve().unwrap().display().to_string()), "{shown}");
    }
}
