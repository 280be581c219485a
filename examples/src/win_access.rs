//! Windows: may the user of a pipe client read a file? The answer Windows would give that
//! user itself: `AccessCheck` of the file's security descriptor (owner, group, DACL) against
//! an identification-level copy of the caller's token, for `FILE_GENERIC_READ`. Used by the
//! `file-server` example (seed 004); [`set_dacl`] is what its tests use to make a file the
//! caller may not read.
//!
//! ## Why the caller's process token, and not `ImpersonateNamedPipeClient`
//!
//! A handler knows its caller from [`Context::peer`](rpc_core::context::Context::peer): the
//! process id the pipe reported and the user SID of the token the client connected with (read
//! by impersonating it when its hello came in). Impersonating the pipe client per call would
//! need the pipe's handle, on a thread of the connection's engine, not a handler's. So the
//! handler opens the caller's process
//! token itself (`OpenProcess` with `PROCESS_QUERY_LIMITED_INFORMATION`, `OpenProcessToken`),
//! makes an identification-level copy (`DuplicateToken` with `SecurityIdentification`, which
//! `AccessCheck` needs: it takes impersonation tokens only, and identification is the level
//! that lets a server ask about a client without acting as it), and checks that the copy's
//! user is still the SID read at connect time: if the pid the pipe reported is another user's
//! process (the caller exited and its pid was reused, or the client made the pipe report
//! another pid, which Windows allows), the read is refused.
//!
//! What that costs: opening another user's process token needs rights an ordinary user does
//! not have (`SeDebugPrivilege`, which administrators and LocalSystem hold). A server run as
//! LocalSystem (a service, the usual way to serve files to several users) can check any
//! caller; an ordinary user's server can check only callers of its own user, and refuses the
//! others, saying why. Nothing here ever grants a read it could not check (fail closed).
//!
//! The file is opened once, with `READ_CONTROL` only (which its owner always has), its
//! descriptor read from that handle, and the contents read through `ReOpenFile` of that same
//! handle: what is checked is what is read, even if the name is pointed elsewhere meanwhile.

use std::fs::File;
use std::io;
use std::os::windows::fs::OpenOptionsExt as _;
use std::os::windows::io::{AsRawHandle as _, FromRawHandle as _, OwnedHandle};
use std::path::Path;

use rpc_core::Sid;
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetSecurityInfo, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    AccessCheck, DACL_SECURITY_INFORMATION, DuplicateToken, GENERIC_MAPPING, GROUP_SECURITY_INFORMATION, GetLengthSid,
    GetTokenInformation, OBJECT_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, SecurityIdentification, SetFileSecurityW, TOKEN_DUPLICATE, TOKEN_QUERY, TOKEN_USER,
    TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_ALL_ACCESS, FILE_GENERIC_EXECUTE, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_SHARE_DELETE, FILE_SHARE_READ,
    FILE_SHARE_WRITE, READ_CONTROL, ReOpenFile,
};
use windows_sys::Win32::System::Threading::{OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION};

/// Why [`open_for_read`] did not return the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The file's descriptor does not grant the caller's user read access. Both fields are
    /// in SDDL, as Windows prints them.
    #[error("owner {owner}, DACL {dacl}")]
    Denied {
        /// The file's owner (`S-1-5-21-...`, or an alias such as `BA`).
        owner: String,
        /// The file's DACL, e.g. `D:P(A;;FA;;;SY)`.
        dacl: String,
    },
    /// The caller's token could not be opened or copied (`step` names the call): typically
    /// another user's process and a server without the rights to open its token.
    #[error("cannot open the token of the caller's process {pid} ({step}): {source}")]
    CallerToken {
        /// The caller's process id.
        pid: u32,
        /// The call that failed.
        step: &'static str,
        /// What it said.
        #[source]
        source: io::Error,
    },
    /// The process with the caller's pid runs as another user than the caller did: the
    /// caller has exited and its pid was reused.
    #[error("process {pid} runs as {found}, not as the caller's user {expected}: the caller is gone")]
    NotTheCaller {
        /// The caller's process id.
        pid: u32,
        /// The caller's user, as read when it connected.
        expected: Sid,
        /// The user of the process now at `pid`.
        found: Sid,
    },
    /// The file could not be opened to read its descriptor (missing, or the server may not).
    #[error("cannot open the file to read its security descriptor: {0}")]
    Open(#[source] io::Error),
    /// The file's security descriptor could not be read.
    #[error("cannot read the file's security descriptor: {0}")]
    Descriptor(#[source] io::Error),
    /// `AccessCheck` itself failed.
    #[error("AccessCheck failed: {0}")]
    Check(#[source] io::Error),
    /// The caller may read the file, but this server cannot (its own user lacks the right).
    #[error("the server itself cannot read the file: {0}")]
    Read(#[source] io::Error),
}

/// Opens `path` for reading if the user of process `pid` may read it. `user` is that
/// process's user SID as read when it connected ([`PeerCredentials::sid`](rpc_core::PeerCredentials)):
/// the token opened now must still be that user's.
pub fn open_for_read(path: &Path, pid: u32, user: &Sid) -> Result<File, AccessError> {
    let token = caller_token(pid, user)?;
    // READ_CONTROL only: enough to read the descriptor, and implied for the file's owner even
    // when the DACL grants nothing.
    let file = std::fs::OpenOptions::new()
        .access_mode(READ_CONTROL)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .open(path)
        .map_err(AccessError::Open)?;
    let sd = Descriptor::of(&file)?;
    if !may_read(&sd, &token)? {
        return Err(AccessError::Denied {
            owner: sd.sddl(OWNER_SECURITY_INFORMATION).trim_start_matches("O:").to_owned(),
            dacl: sd.sddl(DACL_SECURITY_INFORMATION),
        });
    }
    #[allow(unsafe_code)]
    // SAFETY: `file` is an open file handle; the other arguments are plain flags.
    let reopened = unsafe { ReOpenFile(file.as_raw_handle(), FILE_GENERIC_READ, FILE_SHARE_READ, 0) };
    if reopened == INVALID_HANDLE_VALUE {
        return Err(AccessError::Read(io::Error::last_os_error()));
    }
    #[allow(unsafe_code)]
    // SAFETY: ReOpenFile just returned this handle, and nothing else owns it.
    Ok(unsafe { File::from_raw_handle(reopened) })
}

/// Sets `path`'s DACL from SDDL (`D:...`; a `P` makes it protected, so nothing is inherited),
/// as `icacls` would. The tests use it to make a file its own user may not read.
pub fn set_dacl(path: &Path, sddl: &str) -> io::Result<()> {
    let sd = LocalSd::from_sddl(sddl)?;
    let wide = wide(path.as_os_str());
    #[allow(unsafe_code)]
    // SAFETY: `wide` is a NUL-terminated path and `sd.0` a valid descriptor, both live across
    // the call.
    let ok = unsafe {
        SetFileSecurityW(wide.as_ptr(), DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION, sd.0)
    };
    if ok == 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// An identification-level copy of process `pid`'s token, checked to be `user`'s.
fn caller_token(pid: u32, user: &Sid) -> Result<OwnedHandle, AccessError> {
    let fail = |step| AccessError::CallerToken { pid, step, source: io::Error::last_os_error() };
    #[allow(unsafe_code)]
    // SAFETY: no pointers; a null result is checked.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(fail("OpenProcess"));
    }
    #[allow(unsafe_code)]
    // SAFETY: OpenProcess just returned this handle, and nothing else owns it.
    let process = unsafe { OwnedHandle::from_raw_handle(process) };
    let mut primary: HANDLE = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: `process` is an open process handle; `primary` is a live out-pointer.
    if unsafe { OpenProcessToken(process.as_raw_handle(), TOKEN_QUERY | TOKEN_DUPLICATE, &mut primary) } == 0 {
        return Err(fail("OpenProcessToken"));
    }
    #[allow(unsafe_code)]
    // SAFETY: OpenProcessToken just returned this handle, and nothing else owns it.
    let primary = unsafe { OwnedHandle::from_raw_handle(primary) };
    let mut ident: HANDLE = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: `primary` is a token handle with TOKEN_DUPLICATE; `ident` is a live out-pointer.
    if unsafe { DuplicateToken(primary.as_raw_handle(), SecurityIdentification, &mut ident) } == 0 {
        return Err(fail("DuplicateToken"));
    }
    #[allow(unsafe_code)]
    // SAFETY: DuplicateToken just returned this handle, and nothing else owns it.
    let ident = unsafe { OwnedHandle::from_raw_handle(ident) };
    let found = token_user(&ident).map_err(|source| AccessError::CallerToken { pid, step: "TokenUser", source })?;
    if found != *user {
        return Err(AccessError::NotTheCaller { pid, expected: *user, found });
    }
    Ok(ident)
}

/// The user SID of `token`.
fn token_user(token: &OwnedHandle) -> io::Result<Sid> {
    // TOKEN_USER plus the SID it points to; 256 bytes is ample (a SID is at most 68).
    let mut buf = [0u64; 32];
    let mut len = 0u32;
    #[allow(unsafe_code)]
    // SAFETY: `buf` is 256 writable, 8-aligned bytes and its size is passed; `len` is a live
    // out-pointer.
    let ok = unsafe { GetTokenInformation(token.as_raw_handle(), TokenUser, buf.as_mut_ptr().cast(), 256, &mut len) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: on success `buf` starts with a TOKEN_USER whose `Sid` points into `buf`, at a
    // valid SID of `GetLengthSid` bytes.
    let bytes = unsafe {
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        std::slice::from_raw_parts(user.User.Sid.cast::<u8>(), GetLengthSid(user.User.Sid) as usize).to_vec()
    };
    Sid::from_bytes(&bytes).ok_or_else(|| io::Error::other("the token's user SID is malformed"))
}

/// Whether `token` may read what `sd` protects, by `AccessCheck` with the file mapping.
fn may_read(sd: &Descriptor, token: &OwnedHandle) -> Result<bool, AccessError> {
    let mapping = GENERIC_MAPPING {
        GenericRead: FILE_GENERIC_READ,
        GenericWrite: FILE_GENERIC_WRITE,
        GenericExecute: FILE_GENERIC_EXECUTE,
        GenericAll: FILE_ALL_ACCESS,
    };
    // The privileges used, which AccessCheck reports; room for several.
    let mut privileges = [0u64; 32];
    let mut privileges_len = std::mem::size_of_val(&privileges) as u32;
    let mut granted = 0u32;
    let mut status = 0;
    #[allow(unsafe_code)]
    // SAFETY: `sd.0` is a valid descriptor with owner, group and DACL; `token` is an
    // identification-level impersonation token with TOKEN_QUERY; the buffers are live and
    // their sizes passed.
    let ok = unsafe {
        AccessCheck(
            sd.0,
            token.as_raw_handle(),
            FILE_GENERIC_READ,
            &mapping,
            privileges.as_mut_ptr().cast(),
            &mut privileges_len,
            &mut granted,
            &mut status,
        )
    };
    if ok == 0 {
        return Err(AccessError::Check(io::Error::last_os_error()));
    }
    Ok(status != 0 && granted & FILE_GENERIC_READ == FILE_GENERIC_READ)
}

/// A file's security descriptor (owner, group, DACL), freed with `LocalFree`.
struct Descriptor(PSECURITY_DESCRIPTOR);

impl Descriptor {
    fn of(file: &File) -> Result<Descriptor, AccessError> {
        let (mut owner, mut group, mut dacl) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        let mut sd = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: `file` is open with READ_CONTROL; every out-pointer is live; the descriptor
        // comes back in one LocalAlloc block that `Descriptor` frees.
        let rc = unsafe {
            GetSecurityInfo(
                file.as_raw_handle(),
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
                &mut owner,
                &mut group,
                &mut dacl,
                std::ptr::null_mut(),
                &mut sd,
            )
        };
        if rc != 0 {
            return Err(AccessError::Descriptor(io::Error::from_raw_os_error(rc as i32)));
        }
        Ok(Descriptor(sd))
    }

    /// The parts `info` selects, in SDDL; a note in its place if they cannot be converted.
    fn sddl(&self, info: OBJECT_SECURITY_INFORMATION) -> String {
        let mut text = std::ptr::null_mut();
        let mut len = 0u32;
        #[allow(unsafe_code)]
        // SAFETY: `self.0` is a valid descriptor; `text` and `len` are live out-pointers.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(self.0, SDDL_REVISION_1, info, &mut text, &mut len)
        };
        if ok == 0 {
            return format!("<not convertible to SDDL: {}>", io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: on success `text` points at `len` UTF-16 units (its NUL included), allocated
        // with LocalAlloc; it is copied out, then freed once.
        let s = unsafe {
            let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, len as usize));
            LocalFree(text.cast());
            s
        };
        s.trim_end_matches('\0').to_owned()
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: GetSecurityInfo allocated it with LocalAlloc; freed once.
        unsafe {
            LocalFree(self.0);
        }
    }
}

/// A descriptor parsed from SDDL, freed with `LocalFree`.
struct LocalSd(PSECURITY_DESCRIPTOR);

impl LocalSd {
    fn from_sddl(sddl: &str) -> io::Result<LocalSd> {
        let text = wide(std::ffi::OsStr::new(sddl));
        let mut sd = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: `text` is NUL-terminated; `sd` is a live out-pointer; the size is optional.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{sddl:?} is not a security descriptor: {}", io::Error::last_os_error()),
            ));
        }
        Ok(LocalSd(sd))
    }
}

impl Drop for LocalSd {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: ConvertStringSecurityDescriptorToSecurityDescriptorW allocated it with
        // LocalAlloc; freed once.
        unsafe {
            LocalFree(self.0);
        }
    }
}

fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt as _;
    s.encode_wide().chain([0]).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// A scratch file with `text`, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str, text: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!("win-access-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            // The DACL may deny even deletion; give it back first.
            let _ = set_dacl(&self.0, "D:(A;;FA;;;WD)");
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn me() -> (u32, Sid) {
        (std::process::id(), rpc_core::PeerCredentials::current_process().sid.expect("this process's user SID"))
    }

    #[test]
    fn a_file_the_caller_may_read_is_opened_for_reading() {
        let f = Scratch::new("open.txt", "readable");
        let (pid, sid) = me();
        let mut text = String::new();
        open_for_read(&f.0, pid, &sid).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "readable");
    }

    #[test]
    fn a_dacl_that_denies_the_caller_is_a_denial_naming_owner_and_dacl() {
        let (pid, sid) = me();
        for (name, sddl) in [("empty.txt", "D:P".to_owned()), ("deny.txt", format!("D:P(D;;FR;;;{sid})(A;;FA;;;WD)"))] {
            let f = Scratch::new(name, "secret");
            set_dacl(&f.0, &sddl).unwrap();
            match open_for_read(&f.0, pid, &sid) {
                Err(AccessError::Denied { owner, dacl }) => {
                    assert_eq!(owner, sid.to_string(), "{sddl}");
                    assert!(dacl.starts_with("D:"), "{sddl}: {dacl}");
                }
                other => panic!("{sddl}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_token_of_another_user_than_the_callers_is_refused() {
        let f = Scratch::new("other.txt", "x");
        let (pid, sid) = me();
        let other: Sid = "S-1-5-21-1-2-3-4242".parse().unwrap();
        match open_for_read(&f.0, pid, &other) {
            Err(AccessError::NotTheCaller { expected, found, .. }) => assert_eq!((expected, found), (other, sid)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_caller_whose_token_cannot_be_opened_is_refused_with_the_step() {
        let f = Scratch::new("gone.txt", "x");
        let (_, sid) = me();
        // Process ids are multiples of 4; this one is never a live process.
        match open_for_read(&f.0, 0xffff_fff1, &sid) {
            Err(e @ AccessError::CallerToken { step: "OpenProcess", .. }) => {
                assert!(e.to_string().contains("process 4294967281"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_sddl_is_an_error() {
        let f = Scratch::new("bad-sddl.txt", "x");
        let e = set_dacl(&f.0, "not SDDL").unwrap_err();
        assert!(e.to_string().contains("is not a security descriptor"), "{e}");
    }
}
