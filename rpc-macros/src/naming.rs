//! The naming scheme: CamelCase wire variants and the `{Trait}…` generated items.

use proc_macro2::Ident;
use syn::ext::IdentExt;

/// Items of the async client (`{Trait}Client`) a trait method must not shadow: its
/// inherent items, and `clone` (a method named so would hide `Clone::clone`).
pub(crate) const CLIENT_RESERVED: &[&str] = &[
    "connect",
    "connect_with",
    "connect_tcp",
    "connect_tcp_with",
    "from_channel",
    "channel",
    "with_timeout",
    "with_options",
    "clone",
    "ID",
];

/// Items of the blocking client (`{Trait}BlockingClient`) a trait method must not shadow.
pub(crate) const BLOCKING_RESERVED: &[&str] =
    &["connect", "connect_with", "channel", "with_timeout", "with_options", "as_async", "into_async", "clone"];

/// The generated items whose names can be chosen (`#[service(client = "..")]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Client,
    BlockingClient,
    Server,
    Request,
    Response,
}

impl Item {
    pub(crate) const ALL: [Item; 5] = [Item::Client, Item::BlockingClient, Item::Server, Item::Request, Item::Response];

    /// The attribute key that names it.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Item::Client => "client",
            Item::BlockingClient => "blocking_client",
            Item::Server => "server",
            Item::Request => "request",
            Item::Response => "response",
        }
    }

    /// What it is, for messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Item::Client => "client (`client = ..`)",
            Item::BlockingClient => "blocking client (`blocking_client = ..`)",
            Item::Server => "server adapter (`server = ..`)",
            Item::Request => "request enum (`request = ..`)",
            Item::Response => "response enum (`response = ..`)",
        }
    }

    pub(crate) fn from_key(key: &str) -> Option<Item> {
        Item::ALL.into_iter().find(|i| i.key() == key)
    }

    /// The default name's suffix after the trait name.
    fn suffix(self) -> &'static str {
        match self {
            Item::Client => "Client",
            Item::BlockingClient => "BlockingClient",
            Item::Server => "Server",
            Item::Request => "Request",
            Item::Response => "Response",
        }
    }
}

/// The names of the generated items: chosen in the attribute, else `{Trait}{Suffix}`.
pub(crate) struct Names {
    pub(crate) client: Ident,
    pub(crate) blocking_client: Ident,
    pub(crate) server: Ident,
    pub(crate) request: Ident,
    pub(crate) response: Ident,
}

impl Names {
    pub(crate) fn new(trait_ident: &Ident, chosen: &[(Item, Ident)]) -> Names {
        let name = |item: Item| {
            chosen
                .iter()
                .find(|(i, _)| *i == item)
                .map_or_else(|| derived(trait_ident, item.suffix()), |(_, n)| n.clone())
        };
        Names {
            client: name(Item::Client),
            blocking_client: name(Item::BlockingClient),
            server: name(Item::Server),
            request: name(Item::Request),
            response: name(Item::Response),
        }
    }

    pub(crate) fn get(&self, item: Item) -> &Ident {
        match item {
            Item::Client => &self.client,
            Item::BlockingClient => &self.blocking_client,
            Item::Server => &self.server,
            Item::Request => &self.request,
            Item::Response => &self.response,
        }
    }
}

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
        for list in [CLIENT_RESERVED, BLOCKING_RESERVED] {
            for (i, a) in list.iter().enumerate() {
                assert!(!list[i + 1..].contains(a), "{a} listed twice");
            }
        }
    }

    #[test]
    fn chosen_names_override_the_defaults() {
        let t = Ident::new("Hello", Span::call_site());
        let names = Names::new(&t, &[(Item::Server, Ident::new("HelloService", Span::call_site()))]);
        assert_eq!(names.server.to_string(), "HelloService");
        assert_eq!(names.client.to_string(), "HelloClient");
        assert_eq!(names.blocking_client.to_string(), "HelloBlockingClient");
        assert_eq!(names.request.to_string(), "HelloRequest");
        assert_eq!(names.response.to_string(), "HelloResponse");
        for item in Item::ALL {
            assert_eq!(Item::from_key(item.key()), Some(item));
        }
    }
}
