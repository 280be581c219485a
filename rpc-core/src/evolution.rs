//! Service evolution: the shape of each method, and what a client may call on a server
//! built from another version of the trait.
//!
//! The service fingerprint ([`ServiceId::fingerprint`](crate::ServiceId)) is made at compile
//! time from the *spelling* of the signatures: it cannot see that `QueueInfo` and
//! `crate::QueueInfo` are one type, nor that a struct gained a field. So each method also
//! gets a **shape**, computed once per process at run time: the serde data model of its
//! request variant (its arguments), its stream item variant (if it takes a stream) and its
//! response variant (its result, or its stream's item), traced (a `Deserializer` that
//! records what a type asks for, in the data types of
//! [`serde-reflection`](https://docs.rs/serde-reflection)) and hashed (FNV-1a 64) over a
//! canonical text that holds what the codecs put on the wire: struct field names and their
//! shapes in order, enum variant names in order with their contents, sequences, options,
//! maps, tuples, fixed arrays and primitives. It does not hold Rust paths or container
//! names (a renamed or moved type is the same shape), and a newtype struct is its content, a
//! unit struct `()`, a tuple struct a tuple, as bincode, postcard and JSON encode them. The
//! method's name, whether it is one-way, whether it streams either way, and the fingerprint
//! of its callback trait (callback traits keep the exact rule) are part of its shape too.
//!
//! A type the tracer cannot follow (a `Deserialize` impl that rejects the sample values the
//! tracer offers, one that needs `deserialize_any` such as `#[serde(untagged)]`,
//! `#[serde(flatten)]` or `serde_json::Value`, or a container that reuses one name for two
//! different shapes, such as `Page<u32>` and `Page<String>` inside one argument) gives its
//! method the shape of its spelled signature instead (the text the fingerprint hashes), so
//! that method keeps the old rule: same spelling, same shape. [`MethodEntry::traced`] says
//! which was used. A server takes a client's spelled shape for its own method where the
//! spellings match ([`MethodEntry::fallback`]), so a client that could not trace a method
//! (or was built with a tracer that could not) keeps the old rule for it.
//!
//! The tracer sees every variant of every enum reached, wherever it is reached: it runs a
//! type's `Deserialize` in passes and chooses each enum's variant where the enum occurs (one
//! not seen yet, else one that leads to an enum not seen whole, else one that ends a
//! recursion), so the `E` of a `Result<T, E>`, an enum inside an `Option` and an enum beneath
//! a later variant of another are seen whole (serde-reflection's own tracer takes an enum's
//! first variant once it has seen them all, and missed those).
//!
//! Under [`caps::EVOLUTION`](crate::wire::caps::EVOLUTION) the client sends its method table
//! (name and shape of each method, in order) in its hello, and the server answers, for each,
//! whether it serves that method with the same shape ([`MethodStatus`]). The fingerprint is
//! then no longer a refusal: the connection opens, and a call of a method the server does
//! not serve as the client knows it fails at once, without sending anything, with
//! [`RpcError::Incompatible`](crate::RpcError::Incompatible) naming the method. Peers
//! without the capability keep the exact fingerprint rule.
//!
//! Methods may sit at other places in the two sides' wire enums (a method inserted or
//! removed before them, or, for a method that takes a stream, whose item variant follows
//! every call variant, any method added or removed). bincode and postcard encode a variant
//! by its place, so the server translates: for that connection it rewrites the one varint
//! that holds the place at the start of each call, item and reply body, its client's
//! numbering in, its own out. JSON encodes variants by name and needs none of it.
//!
//! The README's "Service evolution" table says which changes are compatible.
//!
//! ```
//! use rpc_core::RpcError;
//! use rpc_core::evolution::MethodStatus;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! pub struct QueueInfo { pub name: String, pub len: u32 }
//!
//! #[rpc_core::service]
//! pub trait Queues {
//!     async fn list(&self) -> Vec<QueueInfo>;
//!     async fn purge(&self, name: String) -> u64;
//! }
//!
//! // The table the client offers in its hello: names and shapes, in declaration order.
//! let table = QueuesClient::ID.methods().unwrap();
//! assert_eq!(table.iter().map(|m| m.name).collect::<Vec<_>>(), ["list", "purge"]);
//! assert!(table.iter().all(|m| m.traced));
//!
//! // What a call of a method the server does not have fails with, before sending anything.
//! fn explain(e: &RpcError) -> Option<String> {
//!     match e {
//!         RpcError::Incompatible { method, reason: MethodStatus::Missing } => {
//!             Some(format!("the server is older: it has no `{method}`"))
//!         }
//!         RpcError::Incompatible { method, reason } => Some(format!("`{method}`: {reason}")),
//!         _ => None,
//!     }
//! }
//! let e = RpcError::Incompatible { method: "purge".into(), reason: MethodStatus::Missing };
//! assert_eq!(explain(&e).unwrap(), "the server is older: it has no `purge`");
//! ```

use std::fmt::Write as _;

use crate::codec::Codec;
use crate::engine::{VariantMap, Varint};
use crate::wire::OfferedMethod;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_reflection::{ContainerFormat, Format, FormatHolder, Registry, VariantFormat};

mod tracer;
use tracer::Tracer;

/// One method of a service as the handshake compares it: its name and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodEntry {
    /// The method's name.
    pub name: &'static str,
    /// The hash of its shape (see the [module docs](self)).
    pub shape: u64,
    /// True if it takes a stream (its items have a variant of their own in the request enum).
    pub upload: bool,
    /// True if its shape was traced from its types; false if it is the hash of its spelled
    /// signature (a type the tracer cannot follow).
    pub traced: bool,
    /// The hash of its spelled signature (what the service fingerprint is made of).
    pub spelled: u64,
    /// Its shape under the spelled rule (its spelled signature, and its callback trait's
    /// fingerprint): what a peer offers that could not trace its types, such as one built
    /// with an older tracer. A server takes it as the same method if its own spelling
    /// matches, as the old rule would.
    pub fallback: u64,
}

/// What the server said about one of the client's methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MethodStatus {
    /// The server serves it with the same shape: calls work. (Where the method sits at
    /// another place in the server's wire enums, the server translates the places.)
    Same,
    /// The server has no method of that name.
    Missing,
    /// The server has a method of that name with another shape (an argument, a result or a
    /// type they contain changed, or it became one-way, or started streaming).
    Changed,
    /// The server has it with the same shape, but at another place in its wire enums that
    /// it cannot translate: an older server (one that does not translate places), or a place
    /// whose encoding has another length than the client's (with bincode, a variant past the
    /// 250th on one side only; with postcard, past the 127th).
    Moved,
}

impl MethodStatus {
    /// The byte the handshake carries.
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            MethodStatus::Same => 0,
            MethodStatus::Missing => 1,
            MethodStatus::Changed => 2,
            MethodStatus::Moved => 3,
        }
    }

    /// The status for a handshake byte (an unknown byte is treated as `Changed`: not callable).
    pub(crate) fn from_u8(b: u8) -> MethodStatus {
        match b {
            0 => MethodStatus::Same,
            1 => MethodStatus::Missing,
            3 => MethodStatus::Moved,
            _ => MethodStatus::Changed,
        }
    }
}

impl std::fmt::Display for MethodStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MethodStatus::Same => "the server has it with the same shape",
            MethodStatus::Missing => "the server does not have this method",
            MethodStatus::Changed => "the server's version of this method has other types (its shape differs)",
            MethodStatus::Moved => {
                "the server has it, but at another place in its wire enums that it does not translate (an older server, or a service with over 127 methods)"
            }
        })
    }
}

/// What the server of one connection said about each of the client's methods, by name.
pub(crate) type MethodStatuses = std::sync::Arc<[(&'static str, MethodStatus)]>;

/// What generated code says about one method, for [`trace_methods`].
#[derive(Clone, Copy, Debug)]
pub struct MethodSpec {
    /// The method's name.
    pub name: &'static str,
    /// One-way (no reply).
    pub oneway: bool,
    /// Takes a stream.
    pub upload: bool,
    /// Returns a stream.
    pub download: bool,
    /// The fingerprint of its callback trait, if it takes a callback.
    pub callback: Option<u64>,
    /// The hash of its spelled signature: its shape if the tracer cannot follow its types.
    pub spelled: u64,
}

/// The shapes of a service's methods: `specs` in declaration order (only those compiled
/// in), `Req`/`Resp` the wire enums. Request variant `i` is method `i`'s call, then come
/// the item variants of the methods that take a stream, in order; response variant `i` is
/// method `i`'s.
pub fn trace_methods<Req: DeserializeOwned, Resp: DeserializeOwned>(specs: &[MethodSpec]) -> Vec<MethodEntry> {
    let mut uploads = 0u32;
    let n = specs.len() as u32;
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let i = i as u32;
            let item = spec.upload.then(|| {
                uploads += 1;
                n + uploads - 1
            });
            let fallback = spec.callback.map_or(spec.spelled, |cb| fnv1a64_extend(spec.spelled, &cb.to_le_bytes()));
            let traced = (|| {
                let call = trace_variant::<Req>(i)?;
                let item = item.map(trace_variant::<Req>).transpose()?;
                let reply = trace_variant::<Resp>(i)?;
                Ok::<_, String>((call, item, reply))
            })();
            match traced {
                Ok((call, item, reply)) => {
                    let mut text = format!("{}:", spec.name);
                    let _ = write!(
                        text,
                        "{}{}{}|call{}|item{}|reply{}|cb{:x}",
                        if spec.oneway { "oneway" } else { "call" },
                        if spec.upload { "+up" } else { "" },
                        if spec.download { "+down" } else { "" },
                        call,
                        item.unwrap_or_default(),
                        reply,
                        spec.callback.unwrap_or(0)
                    );
                    MethodEntry {
                        name: spec.name,
                        shape: fnv1a64(text.as_bytes()),
                        upload: spec.upload,
                        traced: true,
                        spelled: spec.spelled,
                        fallback,
                    }
                }
                Err(why) => {
                    tracing::debug!(method = spec.name, %why, "method shape not traced: its spelled signature is used");
                    MethodEntry {
                        name: spec.name,
                        shape: fallback,
                        upload: spec.upload,
                        traced: false,
                        spelled: spec.spelled,
                        fallback,
                    }
                }
            }
        })
        .collect()
}

/// For each of the client's methods (`client`, in its order), what this server (`server`)
/// says about it, over a connection that uses `codec`; and, if the client numbers some of
/// them otherwise in the wire enums, the map of its positions to ours (see
/// `engine/translate.rs`). A method at another position is served
/// ([`MethodStatus::Same`]) when its positions can be translated, else it is
/// [`MethodStatus::Moved`].
pub(crate) fn answer(
    server: &[MethodEntry],
    client: &[OfferedMethod],
    codec: Codec,
) -> (Vec<MethodStatus>, Option<VariantMap>) {
    // Request variant `i` is method `i`'s call; the item variants of the methods that take a
    // stream follow, in order. Response variant `i` is method `i`'s.
    fn item_places(uploads: impl ExactSizeIterator<Item = bool>) -> Vec<Option<usize>> {
        let mut next = uploads.len();
        uploads
            .map(|up| {
                up.then(|| {
                    let at = next;
                    next += 1;
                    at
                })
            })
            .collect()
    }
    let client_items = item_places(client.iter().map(|m| m.upload));
    let server_items = item_places(server.iter().map(|m| m.upload));
    let client_requests = client.len() + client_items.iter().flatten().count();
    let server_requests = server.len() + server_items.iter().flatten().count();
    let mut map = Varint::of(codec).map(|v| VariantMap::new(v, client_requests, server_requests, server.len()));
    let statuses = client
        .iter()
        .enumerate()
        .map(|(ci, OfferedMethod { name, shape, upload })| {
            let Some(si) = server.iter().position(|m| m.name == name.as_str()) else {
                return MethodStatus::Missing;
            };
            let mine = &server[si];
            // A client that could not trace the method offers its spelled shape: the same
            // method if the spelling is (the rule it asked for).
            if (mine.shape != *shape && mine.fallback != *shape) || mine.upload != *upload {
                return MethodStatus::Changed;
            }
            let Some(map) = map.as_mut() else {
                // The codec writes variants by name: their positions do not matter.
                return MethodStatus::Same;
            };
            let (c_item, s_item) = (client_items[ci], server_items[si]);
            let fits = map.fits(ci, si) && c_item.zip(s_item).is_none_or(|(c, s)| map.fits(c, s));
            if !fits {
                return MethodStatus::Moved;
            }
            map.request(ci, si);
            map.response(si, ci);
            if let Some((c, s)) = c_item.zip(s_item) {
                map.request(c, s);
            }
            MethodStatus::Same
        })
        .collect();
    (statuses, map.filter(|m| !m.is_identity()))
}

/// FNV-1a 64, as the fingerprint uses.
fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a64_extend(state: u64, bytes: &[u8]) -> u64 {
    crate::__private::fingerprint_extend(state, bytes)
}

/// The name given to a struct variant's fields while tracing them.
const VARIANT: &str = "__rpc_variant";

/// Most passes over one variant (each sees at least one more variant of a nested enum).
const MAX_PASSES: usize = 512;

/// The canonical text of variant `index` of the enum `E`'s content.
fn trace_variant<E: DeserializeOwned>(index: u32) -> Result<String, String> {
    std::panic::catch_unwind(|| trace_variant_unguarded::<E>(index))
        .unwrap_or_else(|p| Err(format!("a Deserialize impl panicked: {}", crate::error::panic_message(p.as_ref()))))
}

fn trace_variant_unguarded<E: DeserializeOwned>(index: u32) -> Result<String, String> {
    let mut tracer = Tracer::default();
    let mut content: Option<Format> = None;
    for _ in 0..MAX_PASSES {
        tracer.begin_pass();
        let mut out = None;
        E::deserialize(Front { tracer: &mut tracer, index, out: &mut out }).map_err(|e| e.to_string())?;
        let out = out.ok_or("the variant was not reached")?;
        match &mut content {
            None => content = Some(out),
            Some(content) => content.unify(out).map_err(|e| e.to_string())?,
        }
        let incomplete = tracer.incomplete();
        if incomplete.is_empty() {
            let registry = tracer.registry().map_err(|e| e.to_string())?;
            let mut content = content.ok_or("the variant was not reached")?;
            content.normalize().map_err(|e| e.to_string())?;
            let mut text = String::new();
            write_format(&content, &registry, &mut Vec::new(), &mut text)?;
            return Ok(text);
        }
        if !tracer.progressed() {
            return Err(format!("enums {incomplete:?} could not be reached whole"));
        }
    }
    Err(format!("enums {:?} not seen whole after {MAX_PASSES} passes", tracer.incomplete()))
}

/// Appends the canonical text of `format` to `out`. `stack` holds the containers being
/// written, so a recursive type is written as a back reference.
fn write_format(format: &Format, registry: &Registry, stack: &mut Vec<String>, out: &mut String) -> Result<(), String> {
    match format {
        Format::Variable(_) => return Err("a type whose format was not traced".into()),
        Format::TypeName(name) => {
            if let Some(at) = stack.iter().rposition(|n| n == name) {
                let _ = write!(out, "rec{}", stack.len() - at);
                return Ok(());
            }
            let container = registry.get(name).ok_or_else(|| format!("`{name}` was not traced"))?;
            stack.push(name.clone());
            write_container(container, registry, stack, out)?;
            stack.pop();
        }
        Format::Unit => out.push_str("()"),
        Format::Bool => out.push_str("bool"),
        Format::I8 => out.push_str("i8"),
        Format::I16 => out.push_str("i16"),
        Format::I32 => out.push_str("i32"),
        Format::I64 => out.push_str("i64"),
        Format::I128 => out.push_str("i128"),
        Format::U8 => out.push_str("u8"),
        Format::U16 => out.push_str("u16"),
        Format::U32 => out.push_str("u32"),
        Format::U64 => out.push_str("u64"),
        Format::U128 => out.push_str("u128"),
        Format::F32 => out.push_str("f32"),
        Format::F64 => out.push_str("f64"),
        Format::Char => out.push_str("char"),
        Format::Str => out.push_str("str"),
        Format::Bytes => out.push_str("bytes"),
        Format::Option(inner) => {
            out.push_str("opt<");
            write_format(inner, registry, stack, out)?;
            out.push('>');
        }
        Format::Seq(inner) => {
            out.push_str("seq<");
            write_format(inner, registry, stack, out)?;
            out.push('>');
        }
        Format::Map { key, value } => {
            out.push_str("map<");
            write_format(key, registry, stack, out)?;
            out.push(',');
            write_format(value, registry, stack, out)?;
            out.push('>');
        }
        Format::Tuple(items) => write_tuple(items, registry, stack, out)?,
        Format::TupleArray { content, size } => {
            out.push('[');
            write_format(content, registry, stack, out)?;
            let _ = write!(out, ";{size}]");
        }
    }
    Ok(())
}

fn write_tuple(items: &[Format], registry: &Registry, stack: &mut Vec<String>, out: &mut String) -> Result<(), String> {
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_format(item, registry, stack, out)?;
    }
    out.push(')');
    Ok(())
}

fn write_fields(
    fields: &[serde_reflection::Named<Format>],
    registry: &Registry,
    stack: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    out.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:", field.name);
        write_format(&field.value, registry, stack, out)?;
    }
    out.push('}');
    Ok(())
}

fn write_container(
    container: &ContainerFormat,
    registry: &Registry,
    stack: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    match container {
        // As the codecs write them: a unit struct is nothing, a newtype its content.
        ContainerFormat::UnitStruct => out.push_str("()"),
        ContainerFormat::NewTypeStruct(inner) => write_format(inner, registry, stack, out)?,
        ContainerFormat::TupleStruct(items) => write_tuple(items, registry, stack, out)?,
        ContainerFormat::Struct(fields) => write_fields(fields, registry, stack, out)?,
        ContainerFormat::Enum(variants) => {
            out.push_str("enum{");
            for (expected, (index, variant)) in variants.iter().enumerate() {
                if *index as usize != expected {
                    return Err(format!("an enum whose variants were not all traced: {variants:?}"));
                }
                if expected > 0 {
                    out.push('|');
                }
                out.push_str(&variant.name);
                match &variant.value {
                    VariantFormat::Variable(_) => return Err("an enum variant that was not traced".into()),
                    VariantFormat::Unit => {}
                    VariantFormat::NewType(inner) => {
                        out.push('(');
                        write_format(inner, registry, stack, out)?;
                        out.push(')');
                    }
                    VariantFormat::Tuple(items) => write_tuple(items, registry, stack, out)?,
                    VariantFormat::Struct(fields) => write_fields(fields, registry, stack, out)?,
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

/// The front of a trace: offers the wire enum variant `index` only, and traces its content
/// (so the other variants' types are never visited).
struct Front<'t> {
    tracer: &'t mut Tracer,
    index: u32,
    out: &'t mut Option<Format>,
}

impl<'de> de::Deserializer<'de> for Front<'_> {
    type Error = serde_reflection::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde_reflection::Error::NotSupported("a wire type that is not an enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for Front<'_> {
    type Error = serde_reflection::Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Self::Error> {
        let index: de::value::U32Deserializer<Self::Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Front<'_> {
    type Error = serde_reflection::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        *self.out = Some(Format::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Self::Error> {
        let mut format = Format::unknown();
        let value = seed.deserialize(self.tracer.root(&mut format))?;
        *self.out = Some(format);
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        let mut format = Format::unknown();
        let value = de::Deserializer::deserialize_tuple(self.tracer.root(&mut format), len, visitor)?;
        *self.out = Some(format);
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let mut format = Format::unknown();
        let value = de::Deserializer::deserialize_struct(self.tracer.root(&mut format), VARIANT, fields, visitor)?;
        *self.out = Some(format);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde::Deserialize;

    fn spec(name: &'static str) -> MethodSpec {
        MethodSpec { name, oneway: false, upload: false, download: false, callback: None, spelled: 7 }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        A,
        B(u8),
        C { x: Option<String> },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Info {
        name: String,
        kind: Kind,
        tags: Vec<(u32, bool)>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Req {
        Get { id: u32 },
        Put { info: Info },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Resp {
        Get(Result<Info, String>),
        Put(()),
    }

    #[test]
    fn a_variant_is_traced_with_its_nested_enums_whole() {
        assert_eq!(trace_variant::<Req>(0).unwrap(), "{id:u32}");
        assert_eq!(
            trace_variant::<Req>(1).unwrap(),
            "{info:{name:str,kind:enum{A|B(u8)|C{x:opt<str>}},tags:seq<(u32,bool)>}}"
        );
        assert_eq!(
            trace_variant::<Resp>(0).unwrap(),
            "enum{Ok({name:str,kind:enum{A|B(u8)|C{x:opt<str>}},tags:seq<(u32,bool)>})|Err(str)}"
        );
        let table = trace_methods::<Req, Resp>(&[spec("get"), spec("put")]);
        assert!(table.iter().all(|m| m.traced), "{table:?}");
        assert_ne!(table[0].shape, table[1].shape);
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(u8),
        Node(Vec<Tree>),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Recursive {
        Walk(Tree),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum List {
        Cons(u8, Box<List>),
        Nil,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Lists {
        Walk(List),
    }

    #[test]
    fn a_recursive_enum_whose_first_variant_holds_itself_is_traced_through_its_other_variant() {
        assert_eq!(trace_variant::<Lists>(0).unwrap(), "enum{Cons(u8,rec1)|Nil}");
    }

    /// No finite value: every variant holds the enum again.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Endless {
        A(Box<Endless>),
        B(u8, Box<Endless>),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Endlesses {
        Walk(Endless),
    }

    #[test]
    fn an_enum_without_a_finite_value_fails_at_the_depth_limit_instead_of_overflowing() {
        let err = trace_variant::<Endlesses>(0).unwrap_err();
        assert!(err.contains("deeper"), "{err}");
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Fault {
        Busy,
        Bad { why: String, code: Code },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Code {
        Low(u8),
        High(u64),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Fault2 {
        Busy,
        Bad { why: String, code: Code2 },
    }

    /// `Code` with its second variant changed.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Code2 {
        Low(u8),
        High(i64),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Replies {
        Get(Result<u32, Fault>),
        Find(Option<Code>),
        Get2(Result<u32, Fault2>),
    }

    #[test]
    fn enums_reached_only_through_a_later_variant_or_an_option_are_seen_whole() {
        // The `E` of a `Result`, and an enum inside a struct variant of it.
        assert_eq!(
            trace_variant::<Replies>(0).unwrap(),
            "enum{Ok(u32)|Err(enum{Busy|Bad{why:str,code:enum{Low(u8)|High(u64)}}})}"
        );
        assert_eq!(trace_variant::<Replies>(1).unwrap(), "opt<enum{Low(u8)|High(u64)}>");
        // So a change in a variant the old tracer never reached changes the shape.
        let table = trace_methods::<Replies, Replies>(&[spec("get"), spec("find"), spec("get2")]);
        assert!(table.iter().all(|m| m.traced), "{table:?}");
        assert_ne!(trace_variant::<Replies>(0).unwrap(), trace_variant::<Replies>(2).unwrap());
    }

    #[test]
    fn a_recursive_type_is_written_with_a_back_reference() {
        assert_eq!(trace_variant::<Recursive>(0).unwrap(), "enum{Leaf(u8)|Node(seq<rec1>)}");
    }

    #[allow(dead_code)]
    struct Picky;

    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            Err(de::Error::custom(format!("never `{s}`")))
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum PickyReq {
        Take(Picky),
        Fine(u8),
    }

    #[test]
    fn a_type_the_tracer_cannot_follow_falls_back_to_the_spelling_for_its_method_only() {
        let table = trace_methods::<PickyReq, PickyReq>(&[spec("take"), spec("fine")]);
        assert!(!table[0].traced);
        assert_eq!(table[0].shape, 7);
        // `fine`'s reply is variant 1 of `PickyReq` too: `u8`, traced.
        assert!(table[1].traced);
    }

    fn entry(name: &'static str, shape: u64, upload: bool) -> MethodEntry {
        MethodEntry { name, shape, upload, traced: true, spelled: 0, fallback: shape ^ 0xf }
    }

    fn offer(m: &[MethodEntry]) -> Vec<OfferedMethod> {
        m.iter().map(|m| OfferedMethod { name: m.name.to_owned(), shape: m.shape, upload: m.upload }).collect()
    }

    #[test]
    fn answers_name_missing_and_changed_methods_and_serves_moved_ones_through_a_map() {
        let client = [entry("a", 1, false), entry("b", 2, false), entry("c", 3, false)];
        for codec in Codec::ALL {
            // Appended: the client's methods keep their places, nothing to translate.
            let appended = [entry("a", 1, false), entry("b", 2, false), entry("c", 3, false), entry("d", 4, false)];
            let (status, map) = answer(&appended, &offer(&client), codec);
            assert_eq!((status, map.is_none()), (vec![MethodStatus::Same; 3], true));
            // Inserted in the middle, one changed, one removed: `a` keeps its place.
            let server = [entry("a", 1, false), entry("x", 9, false), entry("b", 5, false)];
            let (status, map) = answer(&server, &offer(&client), codec);
            assert_eq!(status, [MethodStatus::Same, MethodStatus::Changed, MethodStatus::Missing]);
            assert!(map.is_none());
            // Inserted first: every method moved one place, served through the map (JSON
            // names variants and needs none).
            let inserted = [entry("x", 9, false), entry("a", 1, false), entry("b", 2, false), entry("c", 3, false)];
            let (status, map) = answer(&inserted, &offer(&client), codec);
            assert_eq!(status, [MethodStatus::Same; 3]);
            assert_eq!(map.is_some(), codec != Codec::Json, "{codec:?}");
            if let Some(map) = map {
                assert_eq!(map.places(), (vec![Some(1), Some(2), Some(3)], vec![None, Some(0), Some(1), Some(2)]));
            }
            // A stream's item variant comes after every call variant: any added method moves
            // it, and the map carries it.
            let up = [entry("a", 1, true)];
            let (status, map) = answer(&[entry("a", 1, true), entry("z", 8, false)], &offer(&up), codec);
            assert_eq!(status, [MethodStatus::Same]);
            if let Some(map) = map {
                assert_eq!(map.places(), (vec![Some(0), Some(2)], vec![Some(0), None]));
            }
            assert!(answer(&up, &offer(&up), codec).1.is_none());
        }
    }

    #[test]
    fn a_client_that_offers_a_methods_spelled_shape_is_served_where_the_spelling_matches() {
        let server = [entry("a", 1, false), entry("b", 2, false)];
        // `a` as a client that could not trace it offers it (its fallback), `b` spelled
        // otherwise.
        let client = [entry("a", 1 ^ 0xf, false), entry("b", 5, false)];
        let (status, _) = answer(&server, &offer(&client), Codec::Bincode);
        assert_eq!(status, [MethodStatus::Same, MethodStatus::Changed]);
    }

    #[test]
    fn a_method_whose_place_would_change_its_encoded_length_is_moved() {
        // The client's 251st method (place 250, bincode's last one-byte varint) is the
        // server's 252nd; the client's 128th (postcard's first two-byte place) is past the
        // inserted one on both sides: the same length.
        let names: Vec<&'static str> = (0..251).map(|i| &*Box::leak(format!("m{i}").into_boxed_str())).collect();
        let client: Vec<MethodEntry> = names.iter().map(|n| entry(n, 1, false)).collect();
        let mut server = vec![entry("new", 2, false)];
        server.extend(client.iter().cloned());
        let (status, map) = answer(&server, &offer(&client), Codec::Bincode);
        assert_eq!(status[249], MethodStatus::Same);
        assert_eq!(status[250], MethodStatus::Moved);
        assert_eq!(map.unwrap().places().0[250], None);
        let (status, _) = answer(&server, &offer(&client), Codec::Postcard);
        assert_eq!(status[126], MethodStatus::Same);
        assert_eq!(status[127], MethodStatus::Moved);
        assert_eq!(status[128], MethodStatus::Same);
        let (status, _) = answer(&server, &offer(&client), Codec::Json);
        assert!(status.iter().all(|s| *s == MethodStatus::Same));
    }

    #[test]
    fn status_bytes_round_trip() {
        for s in [MethodStatus::Same, MethodStatus::Missing, MethodStatus::Changed, MethodStatus::Moved] {
            assert_eq!(MethodStatus::from_u8(s.to_u8()), s);
        }
        assert_eq!(MethodStatus::from_u8(200), MethodStatus::Changed);
    }
}
