//! Parsing of the attribute's own arguments: `#[service(crate = path, name = "Svc",
//! client = "Name", .., derive(Clone, ..))]`.

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{LitStr, Path, Token};

use crate::naming::Item;
use crate::validate::Errors;

/// The arguments of `#[service(..)]`; every key is optional.
#[derive(Default)]
pub(crate) struct ServiceArgs {
    /// `crate = path`: where generated code finds rpc-core.
    pub(crate) krate: Option<Path>,
    /// `name = "..."`: the service name in the handshake.
    pub(crate) name: Option<LitStr>,
    /// `client = "..."`, `server = ".."`, ...: names chosen for generated items, each
    /// spanned at what the user wrote.
    pub(crate) names: Vec<(Item, Ident)>,
    /// `derive(..)`: extra derives on the wire enums.
    pub(crate) derives: Option<Vec<Path>>,
}

const EXPECTED: &str = "expected `crate = path::to::rpc_core`, `name = \"service-name\"`, \
                        `client = \"Name\"`, `blocking_client = \"Name\"`, `server = \"Name\"`, \
                        `request = \"Name\"`, `response = \"Name\"` or `derive(Trait, ..)`";

/// Parses what it can; every problem found goes to `errors`.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> ServiceArgs {
    let mut args = ServiceArgs::default();
    let parser = |input: ParseStream<'_>| parse_into(input, &mut args, errors);
    if let Err(e) = parser.parse2(tokens) {
        errors.push(e);
    }
    args
}

fn parse_into(input: ParseStream<'_>, args: &mut ServiceArgs, errors: &mut Errors) -> syn::Result<()> {
    // The item-naming keys given so far, valid or not, to report repeats.
    let mut named = Vec::new();
    while !input.is_empty() {
        if !input.peek(Ident::peek_any) {
            errors.push(input.error(EXPECTED));
            skip_to_comma(input)?;
            continue;
        }
        let key = input.call(Ident::parse_any)?;
        match key.to_string().as_str() {
            "crate" => {
                input.parse::<Token![=]>()?;
                let path = if input.peek(LitStr) {
                    input.parse::<LitStr>()?.parse()?
                } else {
                    input.call(Path::parse_mod_style)?
                };
                set(&mut args.krate, path, &key, errors);
            }
            "name" => {
                input.parse::<Token![=]>()?;
                let name: LitStr = input.parse()?;
                if name.value().is_empty() {
                    errors.push(syn::Error::new(name.span(), "the service name cannot be empty"));
                }
                set(&mut args.name, name, &key, errors);
            }
            "derive" => {
                let content;
                syn::parenthesized!(content in input);
                let paths = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
                set(&mut args.derives, paths.into_iter().collect(), &key, errors);
            }
            other if Item::from_key(other).is_some() => {
                let item = Item::from_key(other).expect("checked by the guard");
                input.parse::<Token![=]>()?;
                let (text, span) = if input.peek(LitStr) {
                    let lit: LitStr = input.parse()?;
                    (lit.value(), lit.span())
                } else {
                    let ident = input.call(Ident::parse_any)?;
                    (ident.to_string(), ident.span())
                };
                if named.contains(&item) {
                    errors.push(syn::Error::new(key.span(), format!("`{key}` is specified more than once; keep one")));
                } else {
                    named.push(item);
                    match item_name(&text, span) {
                        Ok(ident) => args.names.push((item, ident)),
                        Err(e) => errors.push(e),
                    }
                }
            }
            other => {
                errors
                    .push(syn::Error::new(key.span(), format!("unknown `#[service]` argument `{other}`: {EXPECTED}")));
                skip_to_comma(input)?;
                continue;
            }
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(())
}

fn set<T>(slot: &mut Option<T>, value: T, key: &Ident, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(syn::Error::new(key.span(), format!("`{key}` is specified more than once; keep one")));
    } else {
        *slot = Some(value);
    }
}

/// The identifier a generated item is named by: a plain identifier, spanned at `span`
/// so that errors about the item (a clash with another item of that name) point there.
fn item_name(text: &str, span: Span) -> syn::Result<Ident> {
    match syn::parse_str::<Ident>(text) {
        Ok(_) if !text.starts_with("r#") => Ok(Ident::new(text, span)),
        _ => Err(syn::Error::new(
            span,
            format!("`{text}` cannot name a generated type: write a plain identifier, such as `\"MyClient\"`"),
        )),
    }
}

/// Skips an unusable argument: everything up to and including the next top-level `,`.
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() {
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
            break;
        }
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{ToTokens, quote};

    fn run(tokens: TokenStream) -> (ServiceArgs, Vec<String>) {
        let mut errors = Errors::default();
        let args = parse(tokens, &mut errors);
        let messages =
            errors.into_result().err().map(|e| e.into_iter().map(|e| e.to_string()).collect()).unwrap_or_default();
        (args, messages)
    }

    #[test]
    fn empty() {
        let (args, errors) = run(quote!());
        assert!(args.krate.is_none() && args.name.is_none() && errors.is_empty());
    }

    #[test]
    fn both_keys() {
        let (args, errors) = run(quote!(crate = ::my::reexport::rpc_core, name = "work-queues.v1",));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.krate.unwrap().to_token_stream().to_string(), ":: my :: reexport :: rpc_core");
        assert_eq!(args.name.unwrap().value(), "work-queues.v1");
    }

    #[test]
    fn crate_forms() {
        for (tokens, want) in [(quote!(crate = crate), "crate"), (quote!(crate = "renamed::x"), "renamed :: x")] {
            let (args, errors) = run(tokens);
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(args.krate.unwrap().to_token_stream().to_string(), want);
        }
    }

    #[test]
    fn all_problems_reported() {
        let (args, errors) = run(quote!(nmae = "x", crate = a, crate = b, 5, name = ""));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("unknown `#[service]` argument `nmae`"));
        assert!(errors[1].contains("`crate` is specified more than once"));
        assert!(errors[2].starts_with("expected `crate"));
        assert!(errors[3].contains("cannot be empty"));
        assert_eq!(args.krate.unwrap().to_token_stream().to_string(), "a");
    }

    #[test]
    fn item_names_and_derives() {
        let (args, errors) = run(quote!(
            client = "Stub",
            server = Service,
            request = "Req",
            response = "Resp",
            derive(Clone, std::fmt::Debug)
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = args.names.iter().map(|(i, n)| format!("{}={n}", i.key())).collect();
        assert_eq!(names, ["client=Stub", "server=Service", "request=Req", "response=Resp"]);
        let derives: Vec<_> =
            args.derives.unwrap().iter().map(|p| p.to_token_stream().to_string().replace(' ', "")).collect();
        assert_eq!(derives, ["Clone", "std::fmt::Debug"]);
    }

    #[test]
    fn bad_item_names() {
        let (args, errors) = run(quote!(client = "two words", client = X, server = "r#type", derive(A), derive(B)));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("`two words` cannot name a generated type"), "{errors:?}");
        assert!(errors[1].contains("`client` is specified more than once"), "{errors:?}");
        assert!(errors[2].contains("`r#type` cannot name"), "{errors:?}");
        assert!(errors[3].contains("`derive` is specified more than once"), "{errors:?}");
        assert!(args.names.is_empty());
    }

    #[test]
    fn malformed_value() {
        let (_, errors) = run(quote!(name = 5));
        assert_eq!(errors.len(), 1);
    }
}
