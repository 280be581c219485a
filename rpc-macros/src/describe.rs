//! The text a service's method list (`Service::METHODS`) shows people: types as written,
//! spaced as rustfmt would, and the first paragraph of a method's docs.

use quote::ToTokens;
use syn::{Attribute, Expr, ExprLit, Lit, Meta};

/// A type as written, spaced for reading: `HashMap<String, Vec<u32>>`, `&'static str`,
/// `[u8; 32]`, `(u8, i64)`.
pub(crate) fn type_display(ty: &impl ToTokens) -> String {
    // proc-macro2 separates tokens by single spaces (`Vec < u8 >`); join them back where
    // rustfmt would not put a space.
    let text = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut prev: &str = "";
    for piece in text.split(' ').filter(|p| !p.is_empty()) {
        let word = |s: &str| s.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
        let glued = prev.is_empty()
            || prev.ends_with(['<', '(', '[', '&', '!'])
            || prev.ends_with("::")
            || piece.starts_with(['>', ')', ']', ',', ';', '?'])
            || piece.starts_with("::")
            || (piece.starts_with(['<', '(']) && word(prev));
        if !glued {
            out.push(' ');
        }
        out.push_str(piece);
        prev = piece;
    }
    out
}

/// The first paragraph of `#[doc]` attributes (`///` lines), its lines trimmed and joined
/// by spaces; empty if there is none.
pub(crate) fn first_paragraph(docs: &[&Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in docs {
        let Meta::NameValue(nv) = &attr.meta else { continue };
        let Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) = &nv.value else { continue };
        let value = s.value();
        // `///` alone is `#[doc = ""]`: no lines at all, but a paragraph break.
        for line in value.lines().chain(value.trim().is_empty().then_some("")) {
            let line = line.trim();
            if line.is_empty() {
                if lines.is_empty() {
                    continue;
                }
                return lines.join(" ");
            }
            lines.push(line.to_owned());
        }
    }
    lines.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> String {
        type_display(&syn::parse_str::<syn::Type>(s).unwrap())
    }

    #[test]
    fn types_read_as_rustfmt_writes_them() {
        for (written, shown) in [
            ("Vec<u8>", "Vec<u8>"),
            ("HashMap<String,Vec<u32>>", "HashMap<String, Vec<u32>>"),
            ("&'static   str", "&'static str"),
            ("& mut [u8 ; 32]", "&mut [u8; 32]"),
            ("(u8,i64,String)", "(u8, i64, String)"),
            ("()", "()"),
            ("Option<Box<Record>>", "Option<Box<Record>>"),
            ("::std::vec::Vec<(u8, Option<bool>)>", "::std::vec::Vec<(u8, Option<bool>)>"),
            ("Result<RpcStream<u64>, ProbeError>", "Result<RpcStream<u64>, ProbeError>"),
            ("<T as Trait>::Assoc", "<T as Trait>::Assoc"),
            ("Box<dyn Fn(u8) -> u8 + Send>", "Box<dyn Fn(u8) -> u8 + Send>"),
        ] {
            assert_eq!(ty(written), shown, "{written}");
        }
    }

    #[test]
    fn the_first_paragraph_of_the_docs_is_kept() {
        let item: syn::ItemFn = syn::parse_quote! {
            ///
            /// Creates a queue
            ///   in the stopped state.
            ///
            /// Fails if it exists.
            fn f() {}
        };
        let docs: Vec<&Attribute> = item.attrs.iter().collect();
        assert_eq!(first_paragraph(&docs), "Creates a queue in the stopped state.");
        assert_eq!(first_paragraph(&[]), "");
        let item: syn::ItemFn = syn::parse_quote! {
            #[doc = "One line.\nTwo."]
            #[doc = ""]
            #[doc = "Three."]
            fn f() {}
        };
        assert_eq!(first_paragraph(&item.attrs.iter().collect::<Vec<_>>()), "One line. Two.");
    }
}
