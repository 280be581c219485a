//! `pipe-rpc call NAME METHOD [ARG...]`: a call built from the server's description, in
//! JSON.
//!
//! The request is the method's variant of the generated request enum as serde_json writes
//! it, `{"Variant":{"arg":value,...}}`; the answer the response enum's variant,
//! `{"Variant":result}`. The connection is an ordinary [`Channel`] over the JSON codec whose
//! request and response types are `serde_json::Value`: the server cannot tell it from a
//! generated client's.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::introspect::MethodInfo;
use rpc_core::{CallOptions, Channel, ClientConfig, Codec, RpcError, ServerError, ServerErrorKind, ServiceId};
use serde_json::{Map, Value};

use crate::args::Options;
use crate::describe::{fetch, require_methods};
use crate::fail::{CALL_FAILED, Failure};
use crate::out::Printer;

/// `pipe-rpc call`.
pub(crate) async fn call(
    name: &str,
    method: &str,
    args: &[String],
    opts: &Options,
    out: &mut Printer,
) -> Result<(), Failure> {
    let about = fetch(name, opts).await?;
    let methods = require_methods(name, &about)?;
    let Some(m) = about.method(method) else {
        let names: Vec<&str> = methods.iter().map(|m| &*m.name).collect();
        return Err(Failure::usage(format!(
            "`{}` has no method `{method}`; its methods: {}",
            about.service,
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        )));
    };
    if let Some(cb) = &m.shape.callback {
        return Err(Failure::usage(format!(
            "`{}` takes a callback (`{}: Callback<{}>`), which pipe-rpc cannot serve",
            m.name, cb.name, cb.ty
        )));
    }
    let request = request(m, args)?;
    // The name lives as long as the process: one string per run.
    let service: &'static str = Box::leak(about.service.clone().into_boxed_str());
    let connect = opts.timeout.unwrap_or(Duration::from_secs(5));
    let mut config = ClientConfig::default().codec(Codec::Json).connect_timeout(connect).handshake_timeout(connect);
    if let Some(t) = opts.timeout {
        config = config.default_timeout(t);
    }
    let channel = Channel::<Value, Value>::connect(name, ServiceId::new(service, about.fingerprint), config)
        .await
        .map_err(|e| Failure::reaching(name, &e))?;
    let options = opts.timeout.map_or_else(CallOptions::default, CallOptions::with_timeout);
    let failed = |e: RpcError| match &e {
        // The arguments were JSON but not of the method's types: a usage mistake.
        RpcError::Server(ServerError { kind: ServerErrorKind::BadRequest, detail }) => Failure::usage(format!(
            "{}: the server could not read the arguments as {}: {detail}",
            m.name,
            m.signature()
        )),
        _ => Failure::call(&m.name, &e),
    };

    if m.shape.oneway {
        channel.oneway(&options, request).await.map_err(failed)?;
        // Returned once queued: make sure it reached the pipe before the process ends.
        return channel.flush().await.map_err(failed);
    }
    let stdin_error = Arc::new(Mutex::new(None));
    let up = m.shape.upload_variant.as_deref().map(|variant| stdin_items(variant.to_owned(), stdin_error.clone()));
    let bad_input = || stdin_error.lock().unwrap_or_else(PoisonError::into_inner).take().map(Failure::usage);
    if m.shape.download.is_some() {
        let mut items = channel.call_download(&options, request, up, Some).await.map_err(failed)?;
        while let Some(item) = items.next().await {
            let item = match item {
                Ok(item) => item,
                Err(e) => return Err(bad_input().unwrap_or_else(|| failed(e))),
            };
            out.json_line(&answer(m, item)?)?;
        }
        return bad_input().map_or(Ok(()), Err);
    }
    let reply = match up {
        Some(up) => channel.call_upload(&options, request, up).await,
        None => channel.call(&options, request).await,
    };
    if let Some(bad) = bad_input() {
        return Err(bad);
    }
    let value = answer(m, reply.map_err(failed)?)?;
    // A fallible method's `Err` is the call's failure: printed (it is the method's
    // answer), exit 1.
    let (value, error) = match value {
        Value::Object(mut o) if m.shape.fallible && o.len() == 1 && o.contains_key("Ok") => (o.remove("Ok"), false),
        Value::Object(mut o) if m.shape.fallible && o.len() == 1 && o.contains_key("Err") => (o.remove("Err"), true),
        other => (Some(other), false),
    };
    let value = value.unwrap_or(Value::Null);
    if out.json {
        out.json_line(&value)?;
    } else {
        out.line(&serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string()))?;
    }
    if error {
        return Err(Failure::new(CALL_FAILED, format!("{}: the method returned an error (printed above)", m.name)));
    }
    Ok(())
}

/// The request: `{"Variant":{"arg":value,...}}`, from one JSON text per argument, or from
/// one JSON object of them by name (see the crate docs).
fn request(m: &MethodInfo, args: &[String]) -> Result<Value, Failure> {
    let fields = match named(m, args) {
        Some(fields) => fields,
        None => positional(m, args)?,
    };
    let mut request = Map::new();
    request.insert(m.variant.to_string(), Value::Object(fields));
    Ok(Value::Object(request))
}

/// The arguments by name: one argument, a JSON object whose keys are exactly the method's
/// argument names.
fn named(m: &MethodInfo, args: &[String]) -> Option<Map<String, Value>> {
    let [text] = args else { return None };
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else { return None };
    let same = fields.len() == m.args.len() && m.args.iter().all(|a| fields.contains_key(&*a.name));
    same.then_some(fields)
}

/// One JSON text per argument, in order.
fn positional(m: &MethodInfo, args: &[String]) -> Result<Map<String, Value>, Failure> {
    if args.len() != m.args.len() {
        let names: Vec<&str> = m.args.iter().map(|a| &*a.name).collect();
        return Err(Failure::usage(format!(
            "`{}` takes {} argument{} ({}), got {}; give each as one JSON value, or all as one object {{{}}}",
            m.name,
            m.args.len(),
            if m.args.len() == 1 { "" } else { "s" },
            m.signature(),
            args.len(),
            names.iter().map(|n| format!("\"{n}\":...")).collect::<Vec<_>>().join(",")
        )));
    }
    let mut fields = Map::new();
    for (i, (arg, text)) in m.args.iter().zip(args).enumerate() {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let hint = if text.starts_with(['"', '[', '{']) { "" } else { " (a string needs quotes: '\"text\"')" };
            Failure::usage(format!(
                "argument {} (`{}: {}`) is not JSON: {}{hint}",
                i + 1,
                arg.name,
                arg.ty,
                json_error(&e)
            ))
        })?;
        fields.insert(arg.name.to_string(), value);
    }
    Ok(fields)
}

/// serde_json's complaint about one line of text: what, and at which column (its "line 1"
/// is always the only line).
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = text.rfind(" at line ").map_or(text.as_str(), |at| &text[..at]);
    format!("{what} (column {})", e.column())
}

/// The result inside the response variant (`{"Variant":result}`).
fn answer(m: &MethodInfo, response: Value) -> Result<Value, Failure> {
    match response {
        Value::Object(mut o) if o.len() == 1 && o.contains_key(&*m.variant) => {
            Ok(o.remove(&*m.variant).unwrap_or(Value::Null))
        }
        other => Err(Failure::new(CALL_FAILED, format!("{}: the server answered another method: {other}", m.name))),
    }
}

/// The items of a stream argument: standard input, one JSON value per line (blank lines
/// skipped), each as the request variant `variant`. A line that is not JSON ends the
/// stream with an error (the call fails) and is kept in `bad` for the exit code.
fn stdin_items(
    variant: String,
    bad: Arc<Mutex<Option<String>>>,
) -> futures::stream::BoxStream<'static, Result<Value, RpcError>> {
    use tokio::io::AsyncBufReadExt;
    let lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    futures::stream::unfold((lines, 0usize, false), move |(mut lines, mut n, done)| {
        let (variant, bad) = (variant.clone(), bad.clone());
        async move {
            if done {
                return None;
            }
            let fail = |why: String| {
                *bad.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
                Err(RpcError::Server(ServerError::new(ServerErrorKind::BadRequest, why)))
            };
            loop {
                n += 1;
                let item = match lines.next_line().await {
                    Ok(None) => return None,
                    Ok(Some(line)) if line.trim().is_empty() => continue,
                    Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                        Ok(value) => {
                            let mut item = Map::new();
                            item.insert(variant.clone(), value);
                            Ok(Value::Object(item))
                        }
                        Err(e) => fail(format!("line {n} of standard input is not JSON: {}", json_error(&e))),
                    },
                    Err(e) => fail(format!("cannot read standard input: {e}")),
                };
                let done = item.is_err();
                return Some((item, (lines, n, done)));
            }
        }
    })
    .boxed()
}
