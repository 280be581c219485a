//! The service as the generator sees it, built from the parsed trait. Building never
//! fails: odd shapes are kept as they are and [`crate::validate`] reports them. Every
//! part keeps a reference to the user's tokens so errors and generated code carry
//! their spans.

use proc_macro2::{Ident, Span};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{
    AttrStyle, Attribute, FnArg, GenericArgument, ItemTrait, Meta, Pat, PatType, Path, PathArguments, Receiver,
    ReturnType, Signature, Token, TraitItem, TraitItemFn, Type, TypeParamBound, parse_quote,
};

use crate::attr::ServiceArgs;
use crate::naming::{self, Names};

pub(crate) struct ServiceDef<'a> {
    pub(crate) item: &'a ItemTrait,
    /// Path to rpc-core (`::rpc_core` unless overridden).
    pub(crate) krate: Path,
    /// The name announced in the handshake.
    pub(crate) name: String,
    /// The methods in declaration order (other trait items are only in `item`, and rejected).
    pub(crate) methods: Vec<MethodDef<'a>>,
    /// `#[cfg]`s on the trait itself, repeated on every generated item.
    pub(crate) cfgs: Vec<&'a Attribute>,
    /// Lint attributes on the trait, repeated (see [`carried_lint`]) on every generated item.
    pub(crate) lints: Vec<Attribute>,
    /// The names of the generated items.
    pub(crate) names: Names,
    /// `#[service(derive(..))]`: extra derives on the wire enums.
    pub(crate) derives: Vec<Path>,
    /// True if the user wrote `'static` among the supertraits: the emitted trait keeps it.
    pub(crate) static_bound: bool,
}

pub(crate) struct MethodDef<'a> {
    pub(crate) item: &'a TraitItemFn,
    pub(crate) sig: &'a Signature,
    /// The method name as written (raw idents stay raw).
    pub(crate) ident: &'a Ident,
    /// The name without `r#`: the wire and log name.
    pub(crate) name: String,
    /// The first argument, if it is a receiver (`self` elsewhere does not parse).
    pub(crate) receiver: Option<&'a Receiver>,
    pub(crate) args: Vec<ArgDef<'a>>,
    pub(crate) output: Output<'a>,
    pub(crate) variant: Result<Ident, String>,
    pub(crate) cfgs: Vec<&'a Attribute>,
    pub(crate) docs: Vec<&'a Attribute>,
    pub(crate) deprecated: Vec<&'a Attribute>,
    /// Lint attributes, as repeated on the generated pieces of the method ([`carried_lint`]).
    pub(crate) lints: Vec<Attribute>,
    /// `#[oneway]`: fire and forget, no reply. Removed from the emitted trait.
    pub(crate) oneway: Vec<&'a Attribute>,
    /// `#[idempotent]`: running it twice does what running it once does, so a reconnecting
    /// client sends it again when the connection broke under it. Removed from the trait.
    pub(crate) idempotent: Vec<&'a Attribute>,
}

pub(crate) struct ArgDef<'a> {
    pub(crate) arg: &'a PatType,
    /// The argument name when the pattern is a plain identifier.
    pub(crate) ident: Option<&'a Ident>,
    pub(crate) ty: &'a Type,
    /// `T` when the argument is an `RpcStream<T>`: a stream from the caller.
    pub(crate) stream: Option<&'a Type>,
    /// `C` when the argument is a `Callback<C>`: a client of a trait the caller serves.
    pub(crate) callback: Option<&'a Type>,
}

pub(crate) enum Output<'a> {
    /// No return type, or `-> ()`.
    Unit(Option<&'a Type>),
    /// Any `T` that is not `Result<_, _>`: the client returns `Result<T, RpcError>`.
    Plain(&'a Type),
    /// `Result<T, E>`: the client returns `Result<T, E>` and needs `E: From<RpcError>`.
    Fallible { whole: &'a Type, ok: &'a Type, err: &'a Type },
    /// `RpcStream<T>`: the handler streams items back; the client gets the stream.
    Stream { whole: &'a Type, item: &'a Type },
}

impl<'a> Output<'a> {
    fn of(sig: &'a Signature) -> Self {
        let ty = match &sig.output {
            ReturnType::Default => return Output::Unit(None),
            ReturnType::Type(_, ty) => &**ty,
        };
        if let Some(item) = stream_item(ty) {
            return Output::Stream { whole: ty, item };
        }
        match peel(ty) {
            Type::Tuple(t) if t.elems.is_empty() => Output::Unit(Some(ty)),
            Type::Path(p) if p.qself.is_none() => match result_args(&p.path) {
                Some((ok, err)) => Output::Fallible { whole: ty, ok, err },
                None => Output::Plain(ty),
            },
            _ => Output::Plain(ty),
        }
    }

    /// The type the handler returns.
    pub(crate) fn handler_type(&self) -> Type {
        match *self {
            Output::Unit(Some(ty))
            | Output::Plain(ty)
            | Output::Fallible { whole: ty, .. }
            | Output::Stream { whole: ty, .. } => ty.clone(),
            Output::Unit(None) => parse_quote!(()),
        }
    }

    /// What the response variant holds: the handler's result, or one item of its stream.
    pub(crate) fn wire_type(&self) -> Type {
        match *self {
            Output::Stream { item, .. } => item.clone(),
            _ => self.handler_type(),
        }
    }

    /// Every user-written type in the return position.
    pub(crate) fn written(&self) -> Option<&'a Type> {
        match *self {
            Output::Unit(ty) => ty,
            Output::Plain(ty) | Output::Fallible { whole: ty, .. } | Output::Stream { whole: ty, .. } => Some(ty),
        }
    }
}

/// `T` if `ty` is `RpcStream<T>` (any path ending in that segment, one type argument).
pub(crate) fn stream_item(ty: &Type) -> Option<&Type> {
    wrapped(ty, "RpcStream")
}

/// `T` if `ty` is `{name}<T>` (any path ending in that segment, one type argument).
fn wrapped<'t>(ty: &'t Type, name: &str) -> Option<&'t Type> {
    let Type::Path(p) = peel(ty) else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match (args.args.len(), args.args.first()) {
        (1, Some(GenericArgument::Type(t))) => Some(t),
        _ => None,
    }
}

/// Looks through invisible groups (types passed through `macro_rules!`) and parens.
fn peel(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(g) => ty = &g.elem,
            Type::Paren(p) => ty = &p.elem,
            _ => return ty,
        }
    }
}

/// `(T, E)` if `path` ends in a segment `Result<T, E>` with exactly two type arguments.
fn result_args(path: &Path) -> Option<(&Type, &Type)> {
    let last = path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    let mut types = args.args.iter().map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(Some(ok)), Some(Some(err)), None) => Some((ok, err)),
        _ => None,
    }
}

/// Attributes `#[service]` reads on methods and does not pass on.
pub(crate) fn is_own_attr(attr: &Attribute) -> bool {
    attr.path().is_ident("oneway") || attr.path().is_ident("idempotent")
}

fn attrs_named<'a>(attrs: &'a [Attribute], name: &str) -> Vec<&'a Attribute> {
    attrs.iter().filter(|a| a.path().is_ident(name)).collect()
}

const LINT_LEVELS: &[&str] = &["allow", "expect", "warn", "deny", "forbid"];

/// A lint attribute (`allow`, `expect`, `warn`, `deny`, `forbid`, or a `cfg_attr` that
/// holds only those) as it is repeated on generated items, else `None`. `expect` becomes
/// `allow`: the expectation is checked once, on the user's own item, and a generated copy
/// where the lint does not fire would report it unfulfilled. `forbid` becomes `deny`, so the
/// generated item's own `allow`s (which follow it) stay legal.
pub(crate) fn carried_lint(attr: &Attribute) -> Option<Attribute> {
    if !matches!(attr.style, AttrStyle::Outer) {
        return None;
    }
    let meta = if attr.path().is_ident("cfg_attr") {
        let Meta::List(list) = &attr.meta else { return None };
        let (predicate, inner) = list
            .parse_args_with(|input: syn::parse::ParseStream<'_>| {
                let predicate: Meta = input.parse()?;
                input.parse::<Token![,]>()?;
                Ok((predicate, Punctuated::<Meta, Token![,]>::parse_terminated(input)?))
            })
            .ok()?;
        let inner = inner.iter().map(lint_meta).collect::<Option<Vec<_>>>()?;
        parse_quote!(cfg_attr(#predicate, #(#inner),*))
    } else {
        lint_meta(&attr.meta)?
    };
    Some(Attribute { meta, ..attr.clone() })
}

fn lint_meta(meta: &Meta) -> Option<Meta> {
    let Meta::List(list) = meta else { return None };
    let level = LINT_LEVELS.iter().find(|l| list.path.is_ident(l))?;
    let carried = match *level {
        "expect" => "allow",
        "forbid" => "deny",
        other => other,
    };
    let mut list = list.clone();
    list.path = Ident::new(carried, list.path.segments[0].ident.span()).into();
    Some(Meta::List(list))
}

impl<'a> ServiceDef<'a> {
    pub(crate) fn from_syn(args: ServiceArgs, item: &'a ItemTrait) -> Self {
        let methods = item
            .items
            .iter()
            .filter_map(|i| match i {
                TraitItem::Fn(f) => Some(MethodDef::from_syn(f)),
                _ => None,
            })
            .collect();
        ServiceDef {
            item,
            krate: args.krate.unwrap_or_else(|| parse_quote!(::rpc_core)),
            name: args.name.map_or_else(|| item.ident.unraw().to_string(), |n| n.value()),
            methods,
            cfgs: attrs_named(&item.attrs, "cfg"),
            lints: item.attrs.iter().filter_map(carried_lint).collect(),
            names: Names::new(&item.ident, &args.names),
            derives: args.derives.unwrap_or_default(),
            static_bound: item
                .supertraits
                .iter()
                .any(|b| matches!(b, TypeParamBound::Lifetime(lt) if lt.ident == "static")),
        }
    }

    pub(crate) fn ident(&self) -> &'a Ident {
        &self.item.ident
    }
}

impl<'a> MethodDef<'a> {
    fn from_syn(item: &'a TraitItemFn) -> Self {
        let sig = &item.sig;
        let mut receiver = None;
        let mut args = Vec::new();
        for (i, input) in sig.inputs.iter().enumerate() {
            match input {
                FnArg::Receiver(r) if i == 0 => receiver = Some(r),
                FnArg::Receiver(_) => {}
                FnArg::Typed(arg) => args.push(ArgDef {
                    arg,
                    ident: match &*arg.pat {
                        Pat::Ident(p) if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none() => {
                            Some(&p.ident)
                        }
                        _ => None,
                    },
                    ty: &arg.ty,
                    stream: stream_item(&arg.ty),
                    callback: wrapped(&arg.ty, "Callback"),
                }),
            }
        }
        MethodDef {
            item,
            sig,
            ident: &sig.ident,
            name: sig.ident.unraw().to_string(),
            receiver,
            args,
            output: Output::of(sig),
            variant: naming::variant(&sig.ident),
            cfgs: attrs_named(&item.attrs, "cfg"),
            docs: attrs_named(&item.attrs, "doc"),
            deprecated: attrs_named(&item.attrs, "deprecated"),
            lints: item.attrs.iter().filter_map(carried_lint).collect(),
            oneway: attrs_named(&item.attrs, "oneway"),
            idempotent: attrs_named(&item.attrs, "idempotent"),
        }
    }

    /// The argument that is a stream from the caller, if any (the first, if several).
    pub(crate) fn upload(&self) -> Option<&ArgDef<'a>> {
        self.args.iter().find(|a| a.stream.is_some())
    }

    /// The argument that is a callback to the caller, if any (the first, if several).
    pub(crate) fn callback(&self) -> Option<&ArgDef<'a>> {
        self.args.iter().find(|a| a.callback.is_some())
    }

    /// True if the handler streams items back.
    pub(crate) fn is_download(&self) -> bool {
        matches!(self.output, Output::Stream { .. })
    }

    /// True for a `#[oneway]` method.
    pub(crate) fn is_oneway(&self) -> bool {
        !self.oneway.is_empty()
    }

    /// True for an `#[idempotent]` method.
    pub(crate) fn is_idempotent(&self) -> bool {
        !self.idempotent.is_empty()
    }

    /// The method's attributes as emitted on the trait: ours (`#[oneway]`,
    /// `#[idempotent]`) removed.
    pub(crate) fn emitted_attrs(&self) -> impl Iterator<Item = &'a Attribute> {
        self.item.attrs.iter().filter(|a| !is_own_attr(a))
    }

    /// Span for errors about the method as a whole.
    pub(crate) fn span(&self) -> Span {
        self.ident.span()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::ToTokens;

    fn output(sig: &str) -> String {
        let f: TraitItemFn = syn::parse_str(sig).unwrap();
        match Output::of(&f.sig) {
            Output::Unit(_) => "unit".into(),
            Output::Plain(t) => format!("plain {}", t.to_token_stream()),
            Output::Fallible { ok, err, .. } => {
                format!("fallible {} / {}", ok.to_token_stream(), err.to_token_stream())
            }
            Output::Stream { item, .. } => format!("stream {}", item.to_token_stream()),
        }
    }

    #[test]
    fn output_shapes() {
        assert_eq!(output("async fn f(&self);"), "unit");
        assert_eq!(output("async fn f(&self) -> ();"), "unit");
        assert_eq!(output("async fn f(&self) -> u8;"), "plain u8");
        assert_eq!(output("async fn f(&self) -> Result<u8, E>;"), "fallible u8 / E");
        assert_eq!(output("async fn f(&self) -> std::result::Result<(), E>;"), "fallible () / E");
        assert_eq!(output("async fn f(&self) -> ::core::result::Result<A, B>;"), "fallible A / B");
        assert_eq!(output("async fn f(&self) -> io::Result<u8>;"), "plain io :: Result < u8 >");
        assert_eq!(output("async fn f(&self) -> Reply;"), "plain Reply");
        assert_eq!(output("async fn f(&self) -> RpcStream<u8>;"), "stream u8");
        assert_eq!(output("async fn f(&self) -> rpc_core::RpcStream<Result<u8, E>>;"), "stream Result < u8 , E >");
        assert_eq!(output("async fn f(&self) -> Option<Result<u8, E>>;"), "plain Option < Result < u8 , E > >");
        assert_eq!(output("async fn f(&self) -> <X as Y>::Result<u8, E>;"), "plain < X as Y > :: Result < u8 , E >");
    }

    fn carried(attr: &str) -> Option<String> {
        let f: TraitItemFn = syn::parse_str(&format!("{attr} async fn f(&self);")).unwrap();
        carried_lint(&f.attrs[0]).map(|a| a.to_token_stream().to_string())
    }

    #[test]
    fn lint_attributes_carried_to_generated_items() {
        assert_eq!(carried("#[allow(non_snake_case)]").unwrap(), "# [allow (non_snake_case)]");
        assert_eq!(carried("#[warn(clippy::pedantic)]").unwrap(), "# [warn (clippy :: pedantic)]");
        assert_eq!(carried("#[deny(unused)]").unwrap(), "# [deny (unused)]");
        assert_eq!(
            carried("#[expect(non_snake_case, reason = \"wire name\")]").unwrap(),
            "# [allow (non_snake_case , reason = \"wire name\")]"
        );
        assert_eq!(carried("#[forbid(unsafe_code)]").unwrap(), "# [deny (unsafe_code)]");
        assert_eq!(
            carried("#[cfg_attr(feature = \"x\", expect(dead_code), warn(unused))]").unwrap(),
            "# [cfg_attr (feature = \"x\" , allow (dead_code) , warn (unused))]"
        );
        assert_eq!(carried("#[cfg_attr(unix, doc = \"x\")]"), None);
        assert_eq!(carried("#[doc = \"x\"]"), None);
        assert_eq!(carried("#[allow]"), None);
        assert_eq!(carried("#[cfg(unix)]"), None);
    }

    #[test]
    fn args_and_receivers() {
        let f: TraitItemFn = syn::parse_str("async fn f(&self, r#in: u8, (a, b): (u8, u8), mut m: u8);").unwrap();
        let m = MethodDef::from_syn(&f);
        assert!(m.receiver.is_some());
        let names: Vec<_> = m.args.iter().map(|a| a.ident.map(ToString::to_string)).collect();
        assert_eq!(names, [Some("r#in".to_string()), None, None]);
    }
}
