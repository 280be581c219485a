//! Every rule a `#[service]` trait must follow. All problems are collected, each at the
//! user's offending token, and reported together.

use std::collections::{HashMap, HashSet};

use proc_macro2::Span;
use quote::ToTokens;
use syn::visit::{self, Visit};
use syn::{Error, GenericParam, Lifetime, Pat, TraitItem, Type, TypeParamBound, TypeReference};

use crate::model::{MethodDef, Output, ServiceDef};
use crate::naming::{self, Item};

/// Accumulates errors so one expansion reports all of them.
#[derive(Default)]
pub(crate) struct Errors(Option<Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: Error) {
        match &mut self.0 {
            Some(acc) => acc.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(Error::new(span, message));
    }

    fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(Error::new_spanned(tokens, message));
    }

    pub(crate) fn into_result(self) -> Result<(), Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks the whole service; problems go to `errors` in source order.
pub(crate) fn check(def: &ServiceDef<'_>, errors: &mut Errors) {
    check_trait(def, errors);
    check_names(def, errors);
    let mut variants: HashMap<String, &MethodDef<'_>> = HashMap::new();
    let mut methods = def.methods.iter();
    for item in &def.item.items {
        match item {
            TraitItem::Fn(_) => {
                let Some(m) = methods.next() else { continue };
                check_method(m, &def.names, errors);
                if let Ok(variant) = &m.variant {
                    if let Some(first) = variants.get(&variant.to_string()) {
                        if first.name == m.name {
                            errors.at(m.span(), format!("`{}` is declared more than once; rename one of them", m.name));
                        } else {
                            errors.at(
                                m.span(),
                                format!(
                                    "`{}` and `{}` both become the wire variant `{variant}`; rename one of them",
                                    first.name, m.name
                                ),
                            );
                        }
                    } else {
                        variants.insert(variant.to_string(), m);
                    }
                }
            }
            other => check_other_item(other, errors),
        }
    }
}

/// Generated items need names distinct from each other and from the trait.
fn check_names(def: &ServiceDef<'_>, errors: &mut Errors) {
    let mut seen: Vec<(&proc_macro2::Ident, Item)> = Vec::new();
    for item in Item::ALL {
        let name = def.names.get(item);
        if *name == *def.ident() {
            errors.at(
                name.span(),
                format!("the {} cannot be named like the trait `{name}`; choose another name", item.describe()),
            );
        } else if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            errors.at(
                name.span(),
                format!(
                    "the {} and the {} would both be named `{name}`; choose another name for one of them",
                    first.describe(),
                    item.describe()
                ),
            );
        }
        seen.push((name, item));
    }
}

fn check_trait(def: &ServiceDef<'_>, errors: &mut Errors) {
    let item = def.item;
    if let Some(unsafety) = &item.unsafety {
        errors.spanned(unsafety, "a `#[service]` trait cannot be `unsafe`; remove `unsafe`");
    }
    if let Some(auto) = &item.auto_token {
        errors.spanned(auto, "a `#[service]` trait cannot be an `auto` trait; remove `auto`");
    }
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a `#[service]` trait cannot have generic parameters: both ends must agree on concrete wire types; \
             use concrete types in the method signatures",
        );
    }
    if let Some(where_clause) = &item.generics.where_clause {
        errors.spanned(where_clause, "a `#[service]` trait cannot have a `where` clause; remove it");
    }
    for bound in &item.supertraits {
        if !is_implied_supertrait(bound) {
            errors.spanned(
                bound,
                "a `#[service]` trait cannot have supertraits: only its own methods can be called over the pipe \
                 (the generated trait is already `Send + Sync`, and `'static` may be written); remove this bound",
            );
        }
    }
}

/// `Send`, `Sync` and `'static` are accepted as supertraits: the generated trait has them anyway.
fn is_implied_supertrait(bound: &TypeParamBound) -> bool {
    match bound {
        TypeParamBound::Lifetime(lt) => lt.ident == "static",
        TypeParamBound::Trait(t) => {
            t.lifetimes.is_none()
                && matches!(t.modifier, syn::TraitBoundModifier::None)
                && t.path
                    .segments
                    .last()
                    .is_some_and(|s| s.arguments.is_none() && (s.ident == "Send" || s.ident == "Sync"))
        }
        _ => false,
    }
}

fn check_other_item(item: &TraitItem, errors: &mut Errors) {
    let message = match item {
        TraitItem::Const(_) => {
            "associated constants are not supported in a `#[service]` trait: only methods cross the pipe; \
             move the constant out of the trait"
        }
        TraitItem::Type(_) => {
            "associated types are not supported in a `#[service]` trait: both ends need concrete wire types; \
             write the concrete type in the method signatures"
        }
        TraitItem::Macro(_) => {
            "macro invocations are not supported in a `#[service]` trait: `#[service]` runs before they expand; \
             write the methods out"
        }
        _ => "unsupported item in a `#[service]` trait: only `async fn` methods are allowed",
    };
    errors.spanned(item, message);
}

fn check_method(m: &MethodDef<'_>, names: &naming::Names, errors: &mut Errors) {
    let sig = m.sig;
    if let Some(constness) = &sig.constness {
        errors.spanned(constness, "RPC methods cannot be `const fn`; write `async fn`");
    }
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format!("RPC methods must be `async fn`: write `async fn {}(&self, ..)`", sig.ident),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(
            unsafety,
            "RPC methods cannot be `unsafe`: a remote caller cannot uphold safety conditions; remove `unsafe`",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "RPC methods cannot declare an ABI; remove the `extern`");
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "RPC methods cannot be variadic; take a `Vec<T>` instead");
    }
    check_generics(m, errors);
    if let Some(block) = &m.item.default {
        errors.spanned(
            block,
            "RPC methods cannot have a default body: the server's implementation provides every method; \
             end the declaration with `;` and move the body into your `impl`",
        );
    }
    let name = m.name.as_str();
    let owner = if naming::CLIENT_RESERVED.contains(&name) {
        Some(&names.client)
    } else if naming::BLOCKING_RESERVED.contains(&name) {
        Some(&names.blocking_client)
    } else {
        None
    };
    if let Some(owner) = owner {
        errors.at(m.span(), format!("`{name}` collides with the generated `{owner}::{name}`; rename the method"));
    }
    if let Err(message) = &m.variant {
        errors.at(m.span(), message);
    }
    check_receiver(m, errors);
    check_args(m, errors);
    check_oneway(m, errors);
    check_idempotent(m, errors);
    match m.output {
        // The stream itself is fine; what it carries is checked like any wire type.
        Output::Stream { item, .. } => TypeCheck { errors, position: Position::Return }.visit_type(item),
        _ => {
            if let Some(ty) = m.output.written() {
                TypeCheck { errors, position: Position::Return }.visit_type(ty);
            }
        }
    }
}

fn check_oneway(m: &MethodDef<'_>, errors: &mut Errors) {
    for (i, attr) in m.oneway.iter().enumerate() {
        if i > 0 {
            errors.spanned(attr, "`#[oneway]` is given more than once; keep one");
        } else if !matches!(attr.meta, syn::Meta::Path(_)) {
            errors.spanned(attr, "`#[oneway]` takes no arguments: write `#[oneway]`");
        }
    }
    if m.is_oneway()
        && let Some(arg) = m.upload()
    {
        errors.spanned(
            arg.ty,
            "a `#[oneway]` method cannot take a stream: a one-way call is a single message; \
             remove `#[oneway]` to stream items to the server",
        );
    }
    if m.is_oneway()
        && let Output::Plain(ty) | Output::Fallible { whole: ty, .. } | Output::Stream { whole: ty, .. } = m.output
    {
        errors.spanned(
            ty,
            "a `#[oneway]` method returns nothing: the server sends no reply to a one-way call; \
             remove the return type (the client method returns `Result<(), RpcError>` once the message is queued), \
             or remove `#[oneway]` to get a reply",
        );
    }
}

fn check_idempotent(m: &MethodDef<'_>, errors: &mut Errors) {
    for (i, attr) in m.idempotent.iter().enumerate() {
        if i > 0 {
            errors.spanned(attr, "`#[idempotent]` is given more than once; keep one");
        } else if !matches!(attr.meta, syn::Meta::Path(_)) {
            errors.spanned(attr, "`#[idempotent]` takes no arguments: write `#[idempotent]`");
        }
    }
    let Some(attr) = m.idempotent.first() else { return };
    let why = if m.is_oneway() {
        Some("a one-way call is never sent again: it is gone once written")
    } else if m.upload().is_some() || m.is_download() {
        Some("a stream is not sent again: it ends with the connection and the caller opens it again")
    } else if m.callback().is_some() {
        Some("a call with a `Callback` is not sent again: its callbacks may already have run")
    } else {
        None
    };
    if let Some(why) = why {
        errors.spanned(
            attr,
            format!("`#[idempotent]` applies to request-reply methods only; {why}; remove `#[idempotent]`"),
        );
    }
}

fn check_generics(m: &MethodDef<'_>, errors: &mut Errors) {
    let generics = &m.sig.generics;
    if !generics.params.is_empty() {
        let only_lifetimes = generics.params.iter().all(|p| matches!(p, GenericParam::Lifetime(_)));
        errors.spanned(
            generics,
            if only_lifetimes {
                "RPC methods cannot have lifetime parameters: arguments cross the pipe by value; \
                 remove them and use owned types"
            } else {
                "RPC methods cannot be generic: both ends must agree on one concrete wire type; \
                 use concrete types (an enum if several are needed)"
            },
        );
    }
    if let Some(where_clause) = &generics.where_clause {
        errors.spanned(where_clause, "RPC methods cannot have a `where` clause; remove it");
    }
}

fn check_receiver(m: &MethodDef<'_>, errors: &mut Errors) {
    let Some(r) = m.receiver else {
        errors.at(
            m.span(),
            format!(
                "RPC methods take `&self`: add it as the first argument (`async fn {}(&self, ..)`); \
                 associated functions cannot be called over the pipe",
                m.ident
            ),
        );
        return;
    };
    let message = if r.colon_token.is_some() {
        "take `&self`: the server shares one instance (behind an `Arc`) across concurrent calls, \
         so typed receivers such as `self: Box<Self>` are not supported"
    } else {
        match &r.reference {
            None => {
                "take `&self`, not `self`: the server shares one instance across concurrent calls, so no call can own it"
            }
            Some(_) if r.mutability.is_some() => {
                "take `&self`, not `&mut self`: the server shares one instance across concurrent calls; \
                 keep mutable state behind interior mutability (`Mutex`, `RwLock`, atomics)"
            }
            Some((_, Some(_))) => "write `&self` without a lifetime",
            Some((_, None)) => return,
        }
    };
    errors.spanned(r, message);
}

fn check_args(m: &MethodDef<'_>, errors: &mut Errors) {
    let mut seen = HashSet::new();
    for arg in &m.args {
        for attr in &arg.arg.attrs {
            errors.spanned(attr, "attributes on RPC arguments are not supported; remove it");
        }
        match arg.ident {
            Some(ident) => {
                let name = syn::ext::IdentExt::unraw(ident).to_string();
                if !seen.insert(name.clone()) {
                    errors.spanned(ident, format!("duplicate argument `{name}`; rename it"));
                }
            }
            None => match &*arg.arg.pat {
                Pat::Wild(w) => errors.spanned(
                    w,
                    "name this argument (`value: Type`): every argument becomes a field of the wire request",
                ),
                Pat::Ident(p) if p.mutability.is_some() => errors.spanned(
                    p.mutability,
                    "remove `mut`: a trait declaration cannot bind mutably; write `mut` in your `impl` instead",
                ),
                Pat::Ident(p) if p.by_ref.is_some() => {
                    errors.spanned(p.by_ref, "remove `ref`: write a plain argument name (`value: Type`)")
                }
                pat => errors.spanned(
                    pat,
                    "RPC arguments must be plain names (`value: Type`): every argument becomes a field of the \
                     wire request; destructure it inside your `impl` instead",
                ),
            },
        }
        if let Some(client) = arg.callback {
            if m.callback().is_some_and(|first| !std::ptr::eq(first.arg, arg.arg)) {
                errors.spanned(
                    arg.ty,
                    "a method takes at most one `Callback` argument; put the methods in one callback trait",
                );
            }
            if m.is_oneway() {
                errors.spanned(
                    arg.ty,
                    "a `#[oneway]` method cannot take a `Callback`: callbacks are valid while their call is open, \
                     and a one-way call is never open; remove `#[oneway]`",
                );
            }
            if m.upload().is_some() || m.is_download() {
                errors.spanned(
                    arg.ty,
                    "a method with a `Callback` argument cannot also stream: take the callback or the streams; \
                     a callback method can carry the items instead",
                );
            }
            TypeCheck { errors, position: Position::Argument }.visit_type(client);
            continue;
        }
        match arg.stream {
            Some(item) => {
                if m.upload().is_some_and(|first| !std::ptr::eq(first.arg, arg.arg)) {
                    errors.spanned(
                        arg.ty,
                        "a method takes at most one `RpcStream` argument: a call has one stream in each direction; \
                         merge the streams into one of an enum",
                    );
                }
                TypeCheck { errors, position: Position::Argument }.visit_type(item);
            }
            None => TypeCheck { errors, position: Position::Argument }.visit_type(arg.ty),
        }
    }
}

#[derive(Clone, Copy)]
enum Position {
    Argument,
    Return,
}

/// Rejects types that cannot be owned wire types: references, lifetimes, `impl Trait`,
/// `_`, `!`, `Self`.
struct TypeCheck<'e> {
    errors: &'e mut Errors,
    position: Position,
}

impl TypeCheck<'_> {
    fn verb(&self) -> &'static str {
        match self.position {
            Position::Argument => "take",
            Position::Return => "return",
        }
    }

    fn reference(&mut self, r: &TypeReference) {
        let elem = r.elem.to_token_stream().to_string().split_whitespace().collect::<String>();
        let owned = match &*r.elem {
            Type::Slice(s) => {
                Some(format!("Vec<{}>", s.elem.to_token_stream().to_string().split_whitespace().collect::<String>()))
            }
            Type::Path(p) if p.qself.is_none() => {
                match p.path.segments.last().map(|s| s.ident.to_string()).as_deref() {
                    Some("str") => Some("String".to_string()),
                    Some("Path") => Some("PathBuf".to_string()),
                    Some("OsStr") => Some("OsString".to_string()),
                    Some("CStr") => Some("CString".to_string()),
                    _ => None,
                }
            }
            _ => None,
        };
        let message = match owned {
            Some(owned) => format!("a reference cannot cross the pipe: {} `{owned}` instead of `&{elem}`", self.verb()),
            None => format!("a reference cannot cross the pipe: {} an owned type (`{elem}`) instead", self.verb()),
        };
        self.errors.spanned(r, message);
    }
}

impl<'ast> Visit<'ast> for TypeCheck<'_> {
    fn visit_type(&mut self, ty: &'ast Type) {
        match ty {
            Type::Reference(r) => self.reference(r),
            Type::ImplTrait(t) => {
                let verb = self.verb();
                self.errors.spanned(t, format!("`impl Trait` cannot cross the pipe: {verb} a concrete type"));
            }
            Type::Infer(t) => self.errors.spanned(t, "write the type out: `_` is not allowed in an RPC signature"),
            Type::Never(t) => {
                self.errors.spanned(t, "`!` cannot cross the pipe: return `()` or a `Result` whose error says why")
            }
            _ => visit::visit_type(self, ty),
        }
    }

    fn visit_lifetime(&mut self, lt: &'ast Lifetime) {
        if lt.ident != "static" {
            let verb = self.verb();
            self.errors.spanned(
                lt,
                format!("borrowed data cannot cross the pipe: {verb} an owned type, without the lifetime `{lt}`"),
            );
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first().filter(|s| s.ident == "Self") {
            self.errors.spanned(&first.ident, "`Self` cannot appear in an RPC signature: name the concrete type");
        }
        if let Some(last) = path.segments.last().filter(|s| s.ident == "Callback") {
            self.errors.spanned(
                &last.ident,
                "a `Callback` must be a whole argument (`events: Callback<EventsClient>`), not inside another type",
            );
        }
        if let Some(last) = path.segments.last().filter(|s| s.ident == "RpcStream") {
            self.errors.spanned(
                &last.ident,
                "an `RpcStream` must be a whole argument or the whole return type (`-> RpcStream<T>`), \
                 not inside another type; an application error mid-stream is an item: `RpcStream<Result<T, E>>`",
            );
        }
        visit::visit_path(self, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::ServiceArgs;

    fn errors(src: &str) -> Vec<String> {
        errors_with(ServiceArgs::default(), src)
    }

    fn errors_with(args: ServiceArgs, src: &str) -> Vec<String> {
        let item: syn::ItemTrait = syn::parse_str(src).unwrap();
        let def = ServiceDef::from_syn(args, &item);
        let mut errors = Errors::default();
        check(&def, &mut errors);
        errors.into_result().err().map(|e| e.into_iter().map(|e| e.to_string()).collect()).unwrap_or_default()
    }

    fn one(src: &str, needle: &str) {
        let e = errors(src);
        assert_eq!(e.len(), 1, "{src}: {e:#?}");
        assert!(e[0].contains(needle), "{src}: {:?} lacks {needle:?}", e[0]);
    }

    #[test]
    fn accepts_good_trait() {
        let e = errors(
            "pub trait T: Send + Sync + 'static { \
               /// doc\n async fn a(&self, x: String, r#in: u8) -> Result<u8, E>; \
               async fn b(&self); \
               #[cfg(x)] async fn r#type(&self, c: std::borrow::Cow<'static, str>) -> (); \
               async fn d(&self, m: HashMap<String, Vec<(u8, [u8; 4])>>) -> Option<u8>; }",
        );
        assert!(e.is_empty(), "{e:#?}");
    }

    #[test]
    fn method_shape() {
        one("trait T { fn a(&self); }", "must be `async fn`");
        one("trait T { async fn a(&self) {} }", "default body");
        one("trait T { async fn a<X>(&self, x: X); }", "cannot be generic");
        one("trait T { async fn a<'a>(&self); }", "lifetime parameters");
        one("trait T { async fn a(&self) where u8: Copy; }", "`where` clause");
        one("trait T { async unsafe fn a(&self); }", "`unsafe`");
        one("trait T { async extern \"C\" fn a(&self); }", "ABI");
    }

    #[test]
    fn receivers() {
        one("trait T { async fn a(); }", "take `&self`");
        one("trait T { async fn a(self); }", "not `self`");
        one("trait T { async fn a(mut self); }", "not `self`");
        one("trait T { async fn a(&mut self); }", "interior mutability");
        one("trait T { async fn a(self: Box<Self>); }", "typed receivers");
        one("trait T { async fn a(&'static self); }", "without a lifetime");
    }

    #[test]
    fn arguments() {
        one("trait T { async fn a(&self, (x, y): (u8, u8)); }", "plain names");
        one("trait T { async fn a(&self, _: u8); }", "name this argument");
        one("trait T { async fn a(&self, mut x: u8); }", "remove `mut`");
        one("trait T { async fn a(&self, s: &str); }", "`String` instead of `&str`");
        one("trait T { async fn a(&self, s: &[u8]); }", "`Vec<u8>` instead of `&[u8]`");
        one("trait T { async fn a(&self, s: &Foo); }", "an owned type (`Foo`)");
        one("trait T { async fn a(&self, s: Cow<'a, str>); }", "lifetime `'a`");
        one("trait T { async fn a(&self, s: impl Into<String>); }", "`impl Trait`");
        one("trait T { async fn a(&self, s: Vec<_>); }", "`_`");
        one("trait T { async fn a(&self, s: Vec<Self>); }", "`Self`");
        one("trait T { async fn a(&self, x: u8, r#x: u8); }", "duplicate argument `x`");
        one("trait T { async fn a(&self, #[cfg(x)] x: u8); }", "attributes on RPC arguments");
    }

    #[test]
    fn returns() {
        one("trait T { async fn a(&self) -> &str; }", "return `String` instead of `&str`");
        one("trait T { async fn a(&self) -> impl Clone; }", "return a concrete type");
        one("trait T { async fn a(&self) -> !; }", "`!`");
    }

    #[test]
    fn streams() {
        assert!(
            errors(
                "trait T { async fn a(&self, x: u8) -> RpcStream<u8>; async fn b(&self, s: RpcStream<u8>) -> u64; \
                 async fn c(&self, s: rpc_core::RpcStream<String>) -> RpcStream<Result<u8, E>>; }"
            )
            .is_empty()
        );
        one("trait T { async fn a(&self, s: RpcStream<u8>, t: RpcStream<u8>); }", "at most one `RpcStream`");
        one("trait T { async fn a(&self) -> Result<RpcStream<u8>, E>; }", "whole argument or the whole return type");
        one("trait T { async fn a(&self, v: Vec<RpcStream<u8>>); }", "not inside another type");
        one("trait T { async fn a(&self) -> RpcStream<&str>; }", "`String` instead of `&str`");
        one("trait T { #[oneway] async fn a(&self, s: RpcStream<u8>); }", "cannot take a stream");
        one("trait T { #[oneway] async fn a(&self) -> RpcStream<u8>; }", "returns nothing");
    }

    #[test]
    fn callbacks() {
        assert!(errors("trait T { async fn a(&self, x: u8, c: Callback<EvClient>) -> Result<(), E>; }").is_empty());
        one("trait T { async fn a(&self, c: Callback<A>, d: Callback<B>); }", "at most one `Callback`");
        one("trait T { #[oneway] async fn a(&self, c: Callback<A>); }", "cannot take a `Callback`");
        one("trait T { async fn a(&self, c: Callback<A>) -> RpcStream<u8>; }", "cannot also stream");
        one("trait T { async fn a(&self, c: Option<Callback<A>>); }", "whole argument");
        one("trait T { async fn a(&self) -> Callback<A>; }", "whole argument");
    }

    #[test]
    fn idempotent() {
        assert!(errors("trait T { #[idempotent] async fn a(&self, x: u8) -> u8; }").is_empty());
        one("trait T { #[idempotent] #[oneway] async fn a(&self, x: u8); }", "a one-way call is never sent again");
        one("trait T { #[idempotent] async fn a(&self) -> RpcStream<u8>; }", "a stream is not sent again");
        one("trait T { #[idempotent] async fn a(&self, s: RpcStream<u8>) -> u8; }", "a stream is not sent again");
        one("trait T { #[idempotent] async fn a(&self, c: Callback<A>); }", "a `Callback` is not sent again");
        one("trait T { #[idempotent(yes)] async fn a(&self); }", "takes no arguments");
        one("trait T { #[idempotent] #[idempotent] async fn a(&self); }", "more than once");
    }

    #[test]
    fn oneway() {
        assert!(
            errors("trait T { #[oneway] async fn a(&self, x: u8); #[oneway] async fn b(&self) -> (); }").is_empty()
        );
        one("trait T { #[oneway] async fn a(&self) -> u8; }", "a `#[oneway]` method returns nothing");
        one("trait T { #[oneway] async fn a(&self) -> Result<(), E>; }", "returns nothing");
        one("trait T { #[oneway(fast)] async fn a(&self); }", "takes no arguments");
        one("trait T { #[oneway] #[oneway] async fn a(&self); }", "more than once");
    }

    #[test]
    fn names() {
        one("trait WorkQueues { async fn connect(&self); }", "collides with the generated `WorkQueuesClient::connect`");
        one("trait T { async fn clone(&self); }", "`TClient::clone`");
        one("trait T { async fn as_async(&self); }", "collides with the generated `TBlockingClient::as_async`");
        one("trait T { async fn into_async(&self); }", "`TBlockingClient::into_async`");
        one(
            "trait T { async fn get_x(&self); async fn getX(&self); }",
            "`get_x` and `getX` both become the wire variant `GetX`",
        );
        one("trait T { async fn a(&self); async fn a(&self); }", "declared more than once");
        // The client has no `new` or `into_inner`: they are ordinary method names.
        assert!(errors("trait T { async fn new(&self); async fn into_inner(&self); }").is_empty());
        one("trait T { async fn __(&self); }", "cannot derive a wire variant name");
    }

    fn named(pairs: &[(Item, &str)]) -> ServiceArgs {
        let names = pairs.iter().map(|(i, n)| (*i, proc_macro2::Ident::new(n, Span::call_site()))).collect();
        ServiceArgs { names, ..ServiceArgs::default() }
    }

    #[test]
    fn chosen_names() {
        let e = errors_with(named(&[(Item::Client, "Queues")]), "trait WorkQueues { async fn connect(&self); }");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("collides with the generated `Queues::connect`"), "{e:?}");
        let e = errors_with(named(&[(Item::Server, "T")]), "trait T {}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("server adapter (`server = ..`) cannot be named like the trait `T`"), "{e:?}");
        let e = errors_with(named(&[(Item::Request, "W"), (Item::Response, "W")]), "trait T {}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("would both be named `W`"), "{e:?}");
        // A chosen name may be a default name of another item, if it is then not used.
        assert!(errors_with(named(&[(Item::Client, "TServer"), (Item::Server, "TService")]), "trait T {}").is_empty());
        let e = errors_with(named(&[(Item::Client, "TServer")]), "trait T {}");
        assert!(e[0].contains("would both be named `TServer`"), "{e:?}");
    }

    #[test]
    fn trait_shape() {
        one("trait T<X> {}", "generic parameters");
        one("trait T where u8: Copy {}", "`where` clause");
        one("trait T: Clone {}", "supertraits");
        one("unsafe trait T {}", "`unsafe`");
        one("trait T { const X: u8; }", "associated constants");
        one("trait T { type X; }", "associated types");
        one("trait T { m!(); }", "macro invocations");
        assert!(errors("trait T: Send + Sync + 'static + std::marker::Send {}").is_empty());
    }

    #[test]
    fn all_errors_in_source_order() {
        let e = errors("trait T: Clone { fn a(self); type X; async fn b(&self, s: &str) -> &str; }");
        assert_eq!(e.len(), 6, "{e:#?}");
        assert!(e[0].contains("supertraits"));
        assert!(e[1].contains("`async fn`"));
        assert!(e[2].contains("not `self`"));
        assert!(e[3].contains("associated types"));
        assert!(e[4].contains("take `String`"));
        assert!(e[5].contains("return `String`"));
    }
}
