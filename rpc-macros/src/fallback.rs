//! Output on error: the errors, plus the user's trait so that their `impl`s and uses of
//! the trait do not add a cascade of "cannot find trait" errors. Nothing else: after an
//! error in a macro's expansion rustc does not report paths that fail to resolve (they
//! may be what the macro failed to make), so uses of the client and server report nothing
//! more, while stand-ins for them would be type-checked and could only add errors.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, ItemTrait, Pat, TraitItem};

/// The errors and the trait. The trait is kept as written except for what rustc itself
/// would reject in a bodyless trait method (patterns, `mut` bindings, `const fn`,
/// variadics), so each mistake is reported once, by us; `async fn` in it is allowed (the
/// lint would be one more message, about a trait the generated one replaces).
pub(crate) fn expand(errors: syn::Error, item: &ItemTrait) -> TokenStream {
    let errors = errors.into_compile_error();
    let mut item = item.clone();
    item.auto_token = None;
    item.attrs.push(syn::parse_quote!(#[allow(async_fn_in_trait)]));
    for trait_item in &mut item.items {
        let TraitItem::Fn(f) = trait_item else { continue };
        // Our own method attributes mean nothing to rustc.
        f.attrs.retain(|a| !crate::model::is_own_attr(a));
        f.sig.constness = None;
        f.sig.variadic = None;
        if f.default.is_some() {
            continue;
        }
        for input in &mut f.sig.inputs {
            let FnArg::Typed(arg) = input else { continue };
            match &mut *arg.pat {
                Pat::Ident(p) if p.subpat.is_none() => {
                    p.by_ref = None;
                    p.mutability = None;
                }
                pat => *pat = Pat::Wild(syn::PatWild { attrs: Vec::new(), underscore_token: Default::default() }),
            }
        }
    }
    quote!(#errors #item)
}

/// `#[service]` on something that does not parse as a trait: say so, keep the item.
pub(crate) fn not_a_trait(parse_error: syn::Error, item: TokenStream) -> TokenStream {
    let error = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(_) => syn::Error::new(
            proc_macro2::Span::call_site(),
            "`#[service]` goes on a trait: `pub trait Name { async fn method(&self, ..) -> T; }`",
        ),
        Err(_) => parse_error,
    };
    let error = error.into_compile_error();
    quote!(#error #item)
}
