//! The naming scheme: CamelCase wire variants and the `{Trait}…` generated items.

use proc_macro2::Ident;
use syn::ext::IdentExt;

/// Generated client methods a trait method must not shadow (see the macro docs).
pub(crate) const RESERVED: &[&str] = &[
    "connect",
    "connect_with",
    "from_channel",
    "channel",
    "with_timeout",
    "with_options",
    "new",
    "into_inner",
    "clone",
    "ID",
];

/// `snake_case` (or anything else) to `CamelCase`: every `_`-separated part gets its
/// first character upper-cased; the rest is kept (`getX` -> `GetX`, `get_x` -> `GetX`).
pub(crate) fn to_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for part in name.split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// The wire variant of a method, spanned at the method name; `Err` says why the name
/// gives no usable variant.
pub(crate) fn variant(method: &Ident) -> Result<Ident, String> {
    let name = method.unraw().to_string();
    let camel = to_camel(&name);
    match camel.chars().next() {
        None => Err(format!("cannot derive a wire variant name from `{name}`: give the method a name with letters")),
        Some(c) if !(c.is_alphabetic()) => {
            Err(format!("cannot derive a wire variant name from `{name}`: start the method name with a letter"))
        }
        _ if camel == "Self" => Err(format!("`{name}` maps to the wire variant `Self`, a keyword; rename the method")),
        _ => Ok(Ident::new(&camel, method.span())),
    }
}

/// `{Trait}{suffix}`, spanned at the trait name so errors about it point there.
pub(crate) fn derived(trait_ident: &Ident, suffix: &str) -> Ident {
    Ident::new(&format!("{}{suffix}", trait_ident.unraw()), trait_ident.span())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::Span;

    fn v(name: &str) -> Result<String, String> {
        let ident = match name.strip_prefix("r#") {
            Some(raw) => Ident::new_raw(raw, Span::call_site()),
            None => Ident::new(name, Span::call_site()),
        };
        variant(&ident).map(|i| i.to_string())
    }

    #[test]
    fn camel() {
        assert_eq!(to_camel("create"), "Create");
        assert_eq!(to_camel("create_queue"), "CreateQueue");
        assert_eq!(to_camel("getX"), "GetX");
        assert_eq!(to_camel("get_x"), "GetX");
        assert_eq!(to_camel("__private__thing_"), "PrivateThing");
        assert_eq!(to_camel("v2_api"), "V2Api");
        assert_eq!(to_camel("ünïcode_ok"), "ÜnïcodeOk");
        assert_eq!(to_camel("already_Camel"), "AlreadyCamel");
    }

    #[test]
    fn variants() {
        assert_eq!(v("list").unwrap(), "List");
        assert_eq!(v("r#type").unwrap(), "Type");
        assert_eq!(v("r#async").unwrap(), "Async");
        assert!(v("__").is_err());
        assert!(v("_1a").is_err());
        assert!(v("self_").unwrap_err().contains("keyword"));
    }

    #[test]
    fn derived_names() {
        let t = Ident::new("WorkQueues", Span::call_site());
        assert_eq!(derived(&t, "Client").to_string(), "WorkQueuesClient");
        let raw = Ident::new_raw("match", Span::call_site());
        assert_eq!(derived(&raw, "Server").to_string(), "matchServer");
    }

    #[test]
    fn reserved_are_unique() {
        for (i, a) in RESERVED.iter().enumerate() {
            assert!(!RESERVED[i + 1..].contains(a), "{a} listed twice");
        }
    }
}
