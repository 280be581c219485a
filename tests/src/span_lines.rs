//! `tracing` spans as lines on stdout, so a test can read a server process's spans:
//! `test-server --spans 1` installs [`install`], [`ServerProcess::spans`](crate::ServerProcess::spans)
//! reads them back.
//!
//! Each span of a target under `rpc_core` prints one line when it closes:
//! `span<TAB>NAME<TAB>key=value<TAB>...`, every field it recorded, values escaped
//! (`str::escape_debug`) so that a line holds one span.

use std::collections::BTreeMap;
use std::io::Write;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// A closed span as read back: its name and fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanLine {
    /// The span's name (`rpc.call`, ...).
    pub name: String,
    /// Every field it recorded, by name.
    pub fields: BTreeMap<String, String>,
}

impl SpanLine {
    /// Parses a line printed by [`install`]'s layer; `None` if it is not one.
    pub fn parse(line: &str) -> Option<SpanLine> {
        let mut parts = line.strip_prefix("span\t")?.split('\t');
        let name = parts.next()?.to_owned();
        let fields = parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Some(SpanLine { name, fields })
    }

    /// The field `key`, or `""` if the span did not record it.
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// Makes this process print its `rpc_core` spans (at `DEBUG`) as lines on stdout.
pub fn install() {
    let filter = tracing_subscriber::filter::Targets::new().with_target("rpc_core", tracing::Level::DEBUG);
    tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(Lines, filter)).init();
}

struct Fields(BTreeMap<&'static str, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}").escape_debug().to_string());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.escape_debug().to_string());
    }
}

struct Lines;

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Lines {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        if let Some(span) = cx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        if let Some(span) = cx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        let Some(span) = cx.span(&id) else { return };
        let mut line = format!("span\t{}", span.name());
        if let Some(fields) = span.extensions().get::<Fields>() {
            for (k, v) in &fields.0 {
                line.push_str(&format!("\t{k}={v}"));
            }
        }
        line.push('\n');
        // One write per line under the lock: lines from several threads never interleave.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}
