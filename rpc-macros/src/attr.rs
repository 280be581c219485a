//! Parsing of the attribute's own arguments: `#[service(crate = path, name = "Svc")]`.

use proc_macro2::{Ident, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{LitStr, Path, Token};

use crate::validate::Errors;

/// The arguments of `#[service(..)]`; every key is optional.
#[derive(Default)]
pub(crate) struct ServiceArgs {
    /// `crate = path`: where generated code finds rpc-core.
    pub(crate) krate: Option<Path>,
    /// `name = "..."`: the service name in the handshake.
    pub(crate) name: Option<LitStr>,
}

const EXPECTED: &str = "expected `crate = path::to::rpc_core` or `name = \"service-name\"`";

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
    fn malformed_value() {
        let (_, errors) = run(quote!(name = 5));
        assert_eq!(errors.len(), 1);
    }
}
