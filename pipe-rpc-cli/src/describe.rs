//! `probe` and `methods`: what a server says about itself.

use std::time::Duration;

use rpc_core::introspect::{MethodInfo, ServerDescription};
use rpc_core::wire::caps;
use rpc_core::{ClientConfig, PeerCredentials};
use serde_json::{Value, json};

use crate::args::Options;
use crate::fail::{Failure, NO_INTROSPECTION};
use crate::out::Printer;

/// Connect and handshake time without `--timeout`.
const CONNECT: Duration = Duration::from_secs(5);

/// The client settings of a probe: `--timeout` (or 5 s) to connect and to be answered.
pub(crate) fn probe_config(opts: &Options) -> ClientConfig {
    let t = opts.timeout.unwrap_or(CONNECT);
    ClientConfig::default().connect_timeout(t).handshake_timeout(t)
}

/// Probes `name`, reporting a failure to reach it.
pub(crate) async fn fetch(name: &str, opts: &Options) -> Result<ServerDescription, Failure> {
    rpc_core::introspect::probe(name, probe_config(opts)).await.map_err(|e| Failure::reaching(name, &e))
}

/// The description's methods, or why there are none.
pub(crate) fn require_methods<'a>(name: &str, about: &'a ServerDescription) -> Result<&'a [MethodInfo], Failure> {
    if about.legacy {
        return Err(Failure::new(
            NO_INTROSPECTION,
            format!(
                "{name} serves `{}` with a pipe-rpc older than introspection: it cannot list its methods",
                about.service
            ),
        ));
    }
    if !about.introspection {
        return Err(Failure::new(
            NO_INTROSPECTION,
            format!(
                "{name} serves `{}` without introspection: it does not list its methods, so they cannot be \
                 called from here (the server enables it with ServerConfig::introspection(true))",
                about.service
            ),
        ));
    }
    Ok(&about.methods)
}

/// `pipe-rpc probe NAME`.
pub(crate) async fn probe(name: &str, opts: &Options, out: &mut Printer) -> Result<(), Failure> {
    let about = fetch(name, opts).await?;
    if out.json {
        let mut v = description_json(&about);
        v["name"] = json!(name);
        return out.json_line(&v);
    }
    let unknown = || "unknown (an older server)".to_owned();
    let mut fields = vec![
        ("name", name.to_owned()),
        ("service", about.service.clone()),
        ("fingerprint", format!("{:016x}", about.fingerprint)),
        ("protocol", format!("v{}", about.protocol_version)),
    ];
    if about.legacy {
        fields.push(("codecs", unknown()));
        fields.push(("limits", unknown()));
    } else {
        fields.push(("codecs", codecs_text(&about)));
        fields.push(("capabilities", capabilities(about.capabilities).join(", ")));
        fields.push(("max message", format!("{} bytes", about.max_message)));
        fields.push(("max in flight", format!("{} calls", about.max_in_flight)));
        fields.push(("max one-way", format!("{} calls", about.max_oneway)));
        fields.push(("stream window", format!("{} bytes", about.stream_window)));
    }
    fields.push(("server pid", pid_text(&about)));
    fields.push(("server user", about.server.as_ref().map_or_else(|| "unknown".to_owned(), user_text)));
    fields.push((
        "introspection",
        if about.legacy {
            unknown()
        } else if about.introspection {
            format!("on ({} methods)", about.methods.len())
        } else {
            "off".to_owned()
        },
    ));
    out.fields(&fields)
}

/// `pipe-rpc methods NAME`.
pub(crate) async fn methods(name: &str, opts: &Options, out: &mut Printer) -> Result<(), Failure> {
    let about = fetch(name, opts).await?;
    let methods = require_methods(name, &about)?;
    if out.json {
        for m in methods {
            out.json_line(&method_json(m))?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = methods
        .iter()
        .map(|m| vec![m.name.to_string(), m.shape.describe(), m.signature(), m.doc.to_string()])
        .collect();
    out.table(&["METHOD", "SHAPE", "SIGNATURE", "DOC"], &rows)
}

/// A method as one JSON object: its description, its signature and shape in words.
pub(crate) fn method_json(m: &MethodInfo) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    v["signature"] = json!(m.signature());
    v["kind"] = json!(m.shape.describe());
    v
}

/// Everything a probe learned, as one JSON object.
pub(crate) fn description_json(about: &ServerDescription) -> Value {
    json!({
        "service": about.service,
        "fingerprint": format!("{:016x}", about.fingerprint),
        "protocol_version": about.protocol_version,
        "codecs": about.codecs.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "unknown_codec_ids": about.unknown_codecs,
        "capabilities": capabilities(about.capabilities),
        "max_message": about.max_message,
        "max_in_flight": about.max_in_flight,
        "max_oneway": about.max_oneway,
        "stream_window": about.stream_window,
        "reported_pid": about.server_pid,
        "server": about.server.as_ref().map(credentials_json),
        "introspection": about.introspection,
        "methods": about.methods.len(),
        "legacy": about.legacy,
    })
}

/// The server's credentials as JSON: `pid`, `uid`, `user` (its name, where known), `gid`
/// (Unix), `sid` (Windows).
pub(crate) fn credentials_json(c: &PeerCredentials) -> Value {
    json!({
        "pid": c.pid,
        "uid": c.uid,
        "user": c.uid.and_then(user_name),
        "gid": c.gid,
        "sid": c.sid.as_ref().map(ToString::to_string),
    })
}

/// The name of user `uid` from `/etc/passwd` (`None` where it is not there: users from a
/// directory service, or no such file). Read-only and without a C library call, so the
/// tool needs no `unsafe`.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// `uid 1000 (alice), gid 1000` or the SID.
pub(crate) fn user_text(c: &PeerCredentials) -> String {
    let mut parts = Vec::new();
    if let Some(uid) = c.uid {
        match user_name(uid) {
            Some(name) => parts.push(format!("uid {uid} ({name})")),
            None => parts.push(format!("uid {uid}")),
        }
    }
    if let Some(gid) = c.gid {
        parts.push(format!("gid {gid}"));
    }
    if let Some(sid) = &c.sid {
        parts.push(format!("sid {sid}"));
    }
    if parts.is_empty() { "unknown".to_owned() } else { parts.join(", ") }
}

/// The pid the OS reports, and the one the server reported if it differs.
pub(crate) fn pid_text(about: &ServerDescription) -> String {
    match about.server.as_ref().and_then(|c| c.pid) {
        Some(pid) if pid == about.server_pid => pid.to_string(),
        Some(pid) => format!("{pid} (the server reported {})", about.server_pid),
        None => format!("{} (as the server reported it)", about.server_pid),
    }
}

fn codecs_text(about: &ServerDescription) -> String {
    let mut names: Vec<String> = about.codecs.iter().map(|c| c.name().to_owned()).collect();
    names.extend(about.unknown_codecs.iter().map(|id| format!("#{id}")));
    names.join(", ")
}

/// The capability bits in words.
fn capabilities(bits: u32) -> Vec<String> {
    let mut names = Vec::new();
    for (bit, name) in [
        (caps::ONEWAY, "one-way"),
        (caps::STREAMS, "streams"),
        (caps::CALLBACKS, "callbacks"),
        (caps::BATCH, "batches"),
    ] {
        if bits & bit != 0 {
            names.push(name.to_owned());
        }
    }
    let rest = bits & !caps::SUPPORTED;
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    names
}

// Linux: where `/etc/passwd` is sure to name uid 0.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn uid_0_is_named_root_and_an_unused_uid_has_no_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(u32::MAX - 7), None);
    }
}
