//! Code generation: one method per emitted item, assembled in [`ToTokens`].

use std::collections::HashSet;

use proc_macro2::{Delimiter, Ident, Literal, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ItemTrait;
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::fingerprint::{self, MethodText};
use crate::model::{MethodDef, Output, ServiceDef};
use crate::validate::{self, Errors};
use crate::{attr, describe, fallback};

/// The whole expansion; never panics. On any error the result is the errors plus the
/// user's trait (see [`fallback`]).
pub(crate) fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let trait_item: ItemTrait = match syn::parse2(item.clone()) {
        Ok(t) => t,
        Err(e) => return fallback::not_a_trait(e, item),
    };
    let mut errors = Errors::default();
    let args = attr::parse(args, &mut errors);
    let def = ServiceDef::from_syn(args, &trait_item);
    validate::check(&def, &mut errors);
    match errors.into_result() {
        Ok(()) => ServiceGenerator::new(&def).into_token_stream(),
        Err(e) => fallback::expand(e, &trait_item),
    }
}

struct ServiceGenerator<'a> {
    def: &'a ServiceDef<'a>,
    /// `#krate::__private`
    private: TokenStream,
    trait_ident: &'a Ident,
    request: &'a Ident,
    response: &'a Ident,
    client: &'a Ident,
    blocking: &'a Ident,
    server: &'a Ident,
    /// The server's type parameter.
    param: Ident,
    /// The trait's own `#[cfg]`s and lint attributes, repeated on every item.
    item_attrs: TokenStream,
}

/// Lints that generated code may trip in user crates and that the user cannot fix.
fn allow_lints() -> TokenStream {
    quote! {
        #[allow(
            deprecated,
            unused_qualifications,
            unreachable_pub,
            clippy::unit_arg,
            clippy::let_unit_value,
            clippy::too_many_arguments,
            clippy::missing_errors_doc,
            clippy::must_use_candidate,
            clippy::absolute_paths,
            clippy::used_underscore_binding
        )]
    }
}

impl<'a> ServiceGenerator<'a> {
    fn new(def: &'a ServiceDef<'a>) -> Self {
        let trait_ident = def.ident();
        let krate = &def.krate;
        let cfgs = &def.cfgs;
        let lints = &def.lints;
        ServiceGenerator {
            def,
            private: quote!(#krate::__private),
            trait_ident,
            request: &def.names.request,
            response: &def.names.response,
            client: &def.names.client,
            blocking: &def.names.blocking_client,
            server: &def.names.server,
            param: if trait_ident.unraw() == "S" { format_ident!("__S") } else { format_ident!("S") },
            item_attrs: quote!(#(#cfgs)* #(#lints)*),
        }
    }

    /// Names for generated locals: mixed-site, so no user argument can shadow them.
    fn local(name: &str) -> Ident {
        Ident::new(name, Span::mixed_site())
    }

    /// One method's piece of the fingerprinted text.
    fn method_text(m: &MethodDef<'_>) -> MethodText {
        MethodText {
            name: m.name.clone(),
            args: m.args.iter().map(|a| fingerprint::type_text(a.ty)).collect(),
            // A one-way method is a different exchange on the wire: both ends must agree.
            output: if m.is_oneway() { "oneway".to_owned() } else { fingerprint::type_text(&m.output.handler_type()) },
        }
    }

    /// The fingerprint in `ID`, as a `const` expression. Which methods are compiled in is
    /// only known after this macro has run (a `#[cfg]` on a method is evaluated later,
    /// and removes that method's wire variants, so the serde variant index of every later
    /// method shifts). So each method's piece of the hashed text is folded in by a
    /// statement that carries the method's `#[cfg]`s: the fingerprint covers exactly the
    /// methods that are compiled in, and builds that number their methods differently
    /// refuse each other in the handshake. The callback traits' fingerprints are mixed in
    /// last, each under its method's `#[cfg]`s. With every method compiled in the value
    /// is FNV-1a 64 of the whole canonical text, as documented.
    fn fingerprint(&self) -> TokenStream {
        let private = &self.private;
        let fp = Self::local("__rpc_fingerprint");
        let start = Literal::u64_suffixed(fingerprint::fnv1a64(fingerprint::prefix(&self.def.name).as_bytes()));
        let methods = self.methods().map(|m| {
            let cfgs = &m.cfgs;
            let text = Literal::byte_string(Self::method_text(m.def).text().as_bytes());
            quote!(#cfgs let #fp = #private::fingerprint_extend(#fp, #text);)
        });
        // Both ends must agree on the callback traits too, not only on their names.
        let callbacks = self.methods().filter_map(|m| {
            let (_, client) = m.callback?;
            let cfgs = &m.cfgs;
            let own = quote_spanned!(client.span()=> <#client as #private::Client>::ID.fingerprint);
            Some(quote!(#cfgs let #fp = #private::mix_fingerprints(#fp, &[#own]);))
        });
        quote!({
            let #fp: u64 = #start;
            #(#methods)*
            #(#callbacks)*
            #fp
        })
    }

    /// `{Client}::__rpc_methods`: each compiled-in method's name and shape, traced from the
    /// wire enums on first use (see `rpc_core::evolution`), under its `#[cfg]`s, so the
    /// table numbers methods as the wire enums do.
    fn method_table(&self) -> TokenStream {
        let Self { private, request, response, .. } = self;
        let specs = Self::local("__rpc_specs");
        let table = Self::local("__RPC_TABLE");
        let pushes = self.methods().map(|m| {
            let cfgs = &m.cfgs;
            let name = &m.def.name;
            let oneway = m.def.is_oneway();
            let upload = m.upload.is_some();
            let download = m.def.is_download();
            let callback = match m.callback {
                Some((_, client)) => {
                    let own = quote_spanned!(client.span()=> <#client as #private::Client>::ID.fingerprint);
                    quote!(::core::option::Option::Some(#own))
                }
                None => quote!(::core::option::Option::None),
            };
            let spelled = Literal::u64_suffixed(fingerprint::fnv1a64(Self::method_text(m.def).text().as_bytes()));
            quote! {
                #cfgs #specs.push(#private::MethodSpec {
                    name: #name,
                    oneway: #oneway,
                    upload: #upload,
                    download: #download,
                    callback: #callback,
                    spelled: #spelled,
                });
            }
        });
        quote! {
            /// The method table of service evolution (see `rpc_core::evolution`).
            #[doc(hidden)]
            pub fn __rpc_methods() -> &'static [#private::MethodEntry] {
                static #table: #private::std::sync::OnceLock<#private::std::vec::Vec<#private::MethodEntry>> =
                    #private::std::sync::OnceLock::new();
                #table.get_or_init(|| {
                    #[allow(unused_mut)]
                    let mut #specs = #private::std::vec::Vec::new();
                    #(#pushes)*
                    #private::trace_methods::<#request, #response>(&#specs)
                })
            }
        }
    }

    fn methods(&self) -> impl Iterator<Item = Method<'_>> {
        self.def.methods.iter().filter_map(|m| {
            let variant = m.variant.as_ref().ok()?;
            let args = m.args.iter().filter_map(|a| a.ident).collect();
            let tys = m.args.iter().map(|a| a.ty).collect();
            let plain = m.args.iter().filter(|a| a.stream.is_none() && a.callback.is_none());
            let wire_args = plain.clone().filter_map(|a| a.ident).collect();
            let wire_tys = plain.map(|a| a.ty).collect();
            let upload = m.upload().and_then(|a| Some((a.ident?, a.stream?, format_ident!("__{}Item", variant))));
            let callback = m.callback().and_then(|a| Some((a.ident?, a.callback?)));
            let cfgs = &m.cfgs;
            let lints = &m.lints;
            Some(Method {
                def: m,
                variant,
                args,
                tys,
                wire_args,
                wire_tys,
                upload,
                callback,
                cfgs: quote!(#(#cfgs)*),
                attrs: quote!(#(#cfgs)* #(#lints)*),
            })
        })
    }

    /// The user's trait: `Send + Sync`, each `async fn` as `fn -> impl Future + Send`.
    /// `'static` is not a supertrait (unless written): a server needs its implementation
    /// to be `'static`, and says so where one is made (`{Trait}Server::new`), at the
    /// caller's borrow; as a supertrait it made `impl Trait for &mut T` a cascade of
    /// lifetime errors that never named the requirement.
    fn service_trait(&self) -> TokenStream {
        let ItemTrait { attrs, vis, trait_token, ident, .. } = self.def.item;
        let methods = self.methods().map(|m| {
            let attrs = m.def.emitted_attrs();
            let name = m.def.ident;
            let fn_token = m.def.sig.fn_token;
            let receiver = m.def.receiver;
            let (args, tys) = (&m.args, &m.tys);
            let output = m.def.output.handler_type();
            let future = quote_spanned! {m.def.span()=>
                impl ::core::future::Future<Output = #output> + ::core::marker::Send
            };
            quote! {
                #(#attrs)*
                #fn_token #name(#receiver #(, #args: #tys)*) -> #future;
            }
        });
        let lifetime = self.def.static_bound.then(|| quote!(+ 'static));
        quote! {
            #(#attrs)*
            #vis #trait_token #ident: ::core::marker::Send + ::core::marker::Sync #lifetime {
                #(#methods)*
            }
        }
    }

    fn serde_path(&self) -> String {
        let private = &self.private;
        quote!(#private::serde).to_string().split_whitespace().collect()
    }

    fn enum_attrs(&self) -> TokenStream {
        let private = &self.private;
        let serde_path = self.serde_path();
        let derives = &self.def.derives;
        let derives = (!derives.is_empty()).then(|| quote!(#[derive(#(#derives),*)]));
        quote! {
            #[derive(#private::serde::Serialize, #private::serde::Deserialize)]
            #derives
            #[serde(crate = #serde_path)]
        }
    }

    /// The serde bounds of one wire field: `T: Serialize` and `T: Deserialize`, each under a
    /// binder (`for<'__rpc>`, used by the bound: `SerializeAt<'__rpc>`, `Deserialize<'__rpc>`).
    /// A bound with a binder is not checked where the impl is declared, only where it is
    /// used, and inside the impl it is assumed: so when `T` lacks a serde trait the derived
    /// bodies do not report it a second (and third, ...) time. That is left to the wire
    /// check at the user's type, which reports it once. The string is spanned at the type,
    /// so a type that does not resolve is reported there (and deduplicated with the field's
    /// own error). Types written through `$crate` cannot be spelled in a string and keep the
    /// plain derive.
    fn wire_bounds(&self, ty: &syn::Type) -> TokenStream {
        let text = ty.to_token_stream().to_string();
        if text.contains('$') {
            return TokenStream::new();
        }
        let private = &self.private;
        let private: String = quote!(#private).to_string();
        let serde = self.serde_path();
        let ser = syn::LitStr::new(&format!("for<'__rpc> {text}: {private}::SerializeAt<'__rpc>"), ty.span());
        let de = syn::LitStr::new(&format!("for<'__rpc> {text}: {serde}::Deserialize<'__rpc>"), ty.span());
        quote!(#[serde(bound(serialize = #ser, deserialize = #de))])
    }

    /// `where` clauses for the impls that need the wire enums to be serde types: with
    /// them, a wire type that is not is reported only by its wire check (see `WireAt`).
    fn wire_where(&self) -> TokenStream {
        let Self { private, request, response, .. } = self;
        quote!(where for<'__rpc> #request: #private::WireAt<'__rpc>, for<'__rpc> #response: #private::WireAt<'__rpc>)
    }

    fn request_enum(&self) -> TokenStream {
        let Self { request, trait_ident, item_attrs, .. } = self;
        let vis = &self.def.item.vis;
        let attrs = self.enum_attrs();
        let doc = format!(
            "Wire request of [`{trait_ident}`]: one variant per method, holding its arguments. \
             The variant order is the wire format."
        );
        let variants = self.methods().map(|m| {
            let Method { variant, wire_args, wire_tys, attrs, .. } = &m;
            let bounds = wire_tys.iter().map(|ty| self.wire_bounds(ty));
            quote!(#attrs #variant { #(#bounds #wire_args: #wire_tys),* })
        });
        // The items of streams from the caller, after every call variant.
        let items = self.methods().filter_map(|m| {
            let (_, item, item_variant) = m.upload.as_ref()?;
            let attrs = &m.attrs;
            let bounds = self.wire_bounds(item);
            Some(quote!(#[doc(hidden)] #attrs #item_variant(#bounds #item)))
        });
        quote! {
            #[doc = #doc]
            #attrs
            #[allow(missing_docs, non_camel_case_types, missing_debug_implementations, clippy::large_enum_variant, clippy::enum_variant_names)]
            #item_attrs
            #vis enum #request { #(#variants,)* #(#items,)* }
        }
    }

    fn response_enum(&self) -> TokenStream {
        let Self { response, trait_ident, item_attrs, .. } = self;
        let vis = &self.def.item.vis;
        let attrs = self.enum_attrs();
        let doc = format!(
            "Wire response of [`{trait_ident}`]: one variant per method, holding its result \
             (or one item of its stream). The variant order is the wire format."
        );
        let variants = self.methods().map(|m| {
            let Method { variant, attrs, .. } = &m;
            let output = m.def.output.wire_type();
            let bounds = self.wire_bounds(&output);
            quote!(#attrs #variant(#bounds #output))
        });
        quote! {
            #[doc = #doc]
            #attrs
            #[allow(missing_docs, non_camel_case_types, missing_debug_implementations, clippy::large_enum_variant, clippy::enum_variant_names)]
            #item_attrs
            #vis enum #response { #(#variants,)* }
        }
    }

    fn server_struct(&self) -> TokenStream {
        let Self { private, trait_ident, server, param, item_attrs, .. } = self;
        let vis = &self.def.item.vis;
        let allow = allow_lints();
        let doc = format!(
            "Serves a [`{trait_ident}`] implementation: pass `{server}::new(implementation)` to `Server::new`. \
             Cheap to clone; clones share the implementation."
        );
        let name = server.to_string();
        quote! {
            #[doc = #doc]
            #item_attrs
            #vis struct #server<#param> {
                inner: #private::std::sync::Arc<#param>,
            }

            #item_attrs
            #allow
            impl<#param: #trait_ident + 'static> #server<#param> {
                /// Wraps an implementation. It must be `'static` (own its state, or
                /// borrow only `'static` data): the server shares it with every connection.
                #[must_use]
                pub fn new(service: #param) -> Self {
                    Self::from_arc(#private::std::sync::Arc::new(service))
                }

                /// Wraps an implementation that is already shared.
                #[must_use]
                pub fn from_arc(service: #private::std::sync::Arc<#param>) -> Self {
                    Self { inner: service }
                }

                /// The wrapped implementation.
                #[must_use]
                pub fn get_ref(&self) -> &#param {
                    &self.inner
                }
            }

            #item_attrs
            impl<#param> ::core::clone::Clone for #server<#param> {
                fn clone(&self) -> Self {
                    Self { inner: ::core::clone::Clone::clone(&self.inner) }
                }
            }

            #item_attrs
            impl<#param> ::core::fmt::Debug for #server<#param> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#name).finish_non_exhaustive()
                }
            }
        }
    }

    fn service_impl(&self) -> TokenStream {
        let Self { private, trait_ident, request, response, client, server, param, item_attrs, .. } = self;
        let allow = allow_lints();
        let wire_where = self.wire_where();
        let req = Self::local("__rpc_request");
        let svc = Self::local("__rpc_service");
        let streams = Self::local("__rpc_streams");
        let item = Self::local("__rpc_item");
        let names = self.methods().map(|m| {
            let Method { variant, cfgs, .. } = &m;
            let name = &m.def.name;
            let item_name = m.upload.as_ref().map(|(_, _, iv)| quote!(#cfgs #request::#iv(..) => #name,));
            quote!(#cfgs #request::#variant { .. } => #name, #item_name)
        });
        let shapes: Vec<_> = self
            .methods()
            .filter(|m| m.upload.is_some() || m.def.is_download() || m.callback.is_some())
            .map(|m| {
                let Method { variant, cfgs, .. } = &m;
                if m.callback.is_some() {
                    return quote!(#cfgs #request::#variant { .. } => #private::Shape::CALLBACK,);
                }
                let (up, down) = (m.upload.is_some(), m.def.is_download());
                quote!(#cfgs #request::#variant { .. } => #private::Shape::new(#up, #down),)
            })
            .collect();
        // Whether a method with a callback is compiled in: decided under each one's `#[cfg]`s.
        let callbacks = Self::local("__rpc_callbacks");
        let with_callback = self.methods().filter(|m| m.callback.is_some()).map(|m| {
            let cfgs = &m.cfgs;
            quote!(#cfgs let #callbacks = true;)
        });
        let uses_callbacks = quote!({
            let #callbacks = false;
            #(#with_callback)*
            #callbacks
        });
        let arms: Vec<_> =
            self.methods()
                .map(|m| {
                    let Method { variant, args, wire_args, cfgs, attrs, .. } = &m;
                    let method = m.def.ident;
                    let take_up = m.upload.as_ref().map(|(ident, _, iv)| {
                        quote! {
                            let #ident = #streams.upload(|#item| match #item {
                                #request::#iv(#item) => ::core::option::Option::Some(#item),
                                #[allow(unreachable_patterns)]
                                _ => ::core::option::Option::None,
                            });
                        }
                    });
                    let take_callback = m.callback.as_ref().map(
                        |(ident, client)| quote_spanned!(client.span()=> let #ident = #private::Callback::<#client>::bind(&mut #streams);),
                    );
                    let take_up = quote!(#take_up #take_callback);
                    let run = quote!(<#param as #trait_ident>::#method(&*#svc #(, #args)*).await);
                    let reply = if m.def.is_download() {
                        quote!(#private::Reply::Stream(#private::RpcStream::into_wire(#run, #response::#variant)))
                    } else {
                        quote!(#private::Reply::Value(#response::#variant(#run)))
                    };
                    let item_arm = m.upload.as_ref().map(|(_, _, iv)| {
                        let name = &m.def.name;
                        quote! {
                            #cfgs #request::#iv(_) => #private::std::boxed::Box::pin(
                                #private::std::future::ready(#private::Reply::Error(#private::not_a_call(#name)))
                            ),
                        }
                    });
                    // Each method's future is boxed on its own, so a call allocates (and
                    // moves) only its own method's state, not room for the largest method's.
                    quote! {
                        #attrs
                        #request::#variant { #(#wire_args),* } => {
                            #take_up
                            #private::std::boxed::Box::pin(async move { #reply })
                        }
                        #item_arm
                    }
                })
                .collect();
        let call = if self.def.methods.is_empty() {
            quote!(match #req {})
        } else {
            quote! {
                let #svc = ::core::clone::Clone::clone(&self.inner);
                #[allow(unused_mut)]
                let mut #streams = #streams;
                match #req { #(#arms)* }
            }
        };
        let methods = self.method_infos();
        let shape = if shapes.is_empty() {
            quote!()
        } else {
            quote! {
                fn shape(#req: &Self::Request) -> #private::Shape {
                    match *#req {
                        #(#shapes)*
                        #[allow(unreachable_patterns)]
                        _ => #private::Shape::UNARY,
                    }
                }
            }
        };
        quote! {
            #item_attrs
            #allow
            impl<#param: #trait_ident + 'static> #private::Service for #server<#param> #wire_where {
                type Request = #request;
                type Response = #response;
                const ID: #private::ServiceId = #client::ID;
                const CALLBACKS: bool = #uses_callbacks;
                const METHODS: &'static [#private::MethodInfo] = #methods;

                fn method_name(#req: &Self::Request) -> &'static str {
                    match *#req { #(#names)* }
                }

                #shape

                fn call(
                    &self,
                    #req: Self::Request,
                    #streams: #private::CallStreams<Self::Request>,
                ) -> #private::BoxFuture<#private::Reply<Self::Response>> {
                    #call
                }
            }
        }
    }

    /// `Service::METHODS`: each compiled-in method described for probes (see
    /// `rpc_core::introspect`), under its `#[cfg]`s.
    fn method_infos(&self) -> TokenStream {
        let private = &self.private;
        let text = |s: &str| Literal::string(s);
        let unraw = |i: &Ident| i.unraw().to_string();
        let infos = self.methods().map(|m| {
            let cfgs = &m.cfgs;
            let name = text(&m.def.name);
            let variant = text(&m.variant.unraw().to_string());
            let args = m.wire_args.iter().zip(&m.wire_tys).map(|(ident, ty)| {
                let (name, ty) = (text(&unraw(ident)), text(&describe::type_display(ty)));
                quote!(#private::arg_info(#name, #ty))
            });
            let returns = text(&describe::type_display(&m.def.output.handler_type()));
            let oneway = m.def.is_oneway();
            let fallible = matches!(m.def.output, Output::Fallible { .. });
            let some = |t: TokenStream| quote!(::core::option::Option::Some(#t));
            let none = quote!(::core::option::Option::None);
            let upload = m.upload.as_ref().map_or(none.clone(), |(ident, item, iv)| {
                let (name, item, iv) =
                    (text(&unraw(ident)), text(&describe::type_display(item)), text(&iv.to_string()));
                some(quote!((#name, #item, #iv)))
            });
            let download = match m.def.output {
                Output::Stream { item, .. } => some(text(&describe::type_display(item)).into_token_stream()),
                _ => none.clone(),
            };
            let callback = m.callback.as_ref().map_or(none, |(ident, client)| {
                let (name, client) = (text(&unraw(ident)), text(&describe::type_display(client)));
                some(quote!((#name, #client)))
            });
            let doc = text(&describe::first_paragraph(&m.def.docs));
            // The arguments in a `const` of their own: a temporary array passed to a call
            // would be dropped at the end of the initializer, which a `const` cannot do.
            quote! {
                #cfgs {
                    const ARGS: &[#private::ArgInfo] = &[#(#args),*];
                    #private::method_info(
                        #name,
                        #variant,
                        ARGS,
                        #returns,
                        #private::method_shape(#oneway, #fallible, #upload, #download, #callback),
                        #doc,
                    )
                }
            }
        });
        quote!(&[#(#infos),*])
    }

    fn client_struct(&self) -> TokenStream {
        let Self { private, trait_ident, request, response, client, item_attrs, .. } = self;
        let vis = &self.def.item.vis;
        let doc = format!(
            "Client of [`{trait_ident}`]: one `async` method per RPC. \
             Cheap to clone; clones share one connection."
        );
        quote! {
            #[doc = #doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug)]
            #item_attrs
            #vis struct #client {
                channel: #private::Channel<#request, #response>,
                options: #private::CallOptions,
            }
        }
    }

    fn client_impl(&self) -> TokenStream {
        let Self { private, request, response, client, item_attrs, .. } = self;
        let allow = allow_lints();
        let name = &self.def.name;
        let fingerprint = self.fingerprint();
        let method_table = self.method_table();
        let channel = quote!(#private::Channel<#request, #response>);
        let methods = self.methods().map(|m| self.client_method(&m));
        let wire_where = self.wire_where();
        quote! {
            #item_attrs
            #allow
            impl #client #wire_where {
                /// Name, fingerprint and method table of this service, checked when a
                /// connection opens.
                pub const ID: #private::ServiceId =
                    #private::ServiceId::new(#name, #fingerprint).with_methods(Self::__rpc_methods);

                #method_table

                /// Connects to the server listening on the pipe `name` with the default
                /// `ClientConfig` (a busy server is retried within the connect timeout, one
                /// that is not running is reported at once), and checks that it serves this
                /// service.
                ///
                /// # Errors
                ///
                /// The server could not be reached in time, or it serves another service
                /// (or another version of this one).
                pub async fn connect(
                    name: impl ::core::convert::Into<#private::PipeName>,
                ) -> ::core::result::Result<Self, #private::RpcError> {
                    Self::connect_with(name, <#private::ClientConfig as ::core::default::Default>::default()).await
                }

                /// Like [`connect`](Self::connect), with the given `ClientConfig`.
                ///
                /// # Errors
                ///
                /// As for [`connect`](Self::connect).
                pub async fn connect_with(
                    name: impl ::core::convert::Into<#private::PipeName>,
                    config: #private::ClientConfig,
                ) -> ::core::result::Result<Self, #private::RpcError> {
                    ::core::result::Result::map(#private::Channel::connect(name, Self::ID, config).await, Self::from_channel)
                }

                /// Connects to the server listening on the TCP address `addr` (see
                /// `rpc_core::tcp`) with `ClientConfig::for_tcp()`, and checks that it serves
                /// this service. TCP does not say who serves a port: use it only where that is
                /// acceptable.
                ///
                /// # Errors
                ///
                /// As for [`connect`](Self::connect).
                pub async fn connect_tcp(
                    addr: impl #private::ToSocketAddrs,
                ) -> ::core::result::Result<Self, #private::RpcError> {
                    Self::connect_tcp_with(addr, #private::ClientConfig::for_tcp()).await
                }

                /// Like [`connect_tcp`](Self::connect_tcp), with the given `ClientConfig`
                /// (whose `expect_server` must be `ServerIdentity::Anyone`).
                ///
                /// # Errors
                ///
                /// As for [`connect`](Self::connect).
                pub async fn connect_tcp_with(
                    addr: impl #private::ToSocketAddrs,
                    config: #private::ClientConfig,
                ) -> ::core::result::Result<Self, #private::RpcError> {
                    ::core::result::Result::map(#private::Channel::connect_tcp(addr, Self::ID, config).await, Self::from_channel)
                }

                /// Wraps a connected channel (for instance from `Channel::from_io`).
                #[must_use]
                pub fn from_channel(channel: #channel) -> Self {
                    Self { channel, options: <#private::CallOptions as ::core::default::Default>::default() }
                }

                /// The underlying connection.
                #[must_use]
                pub fn channel(&self) -> &#channel {
                    &self.channel
                }

                /// A handle whose calls may take at most `timeout` each. It shares this
                /// client's connection.
                #[must_use]
                pub fn with_timeout(&self, timeout: ::core::time::Duration) -> Self {
                    let mut options = ::core::clone::Clone::clone(&self.options);
                    options.timeout = ::core::option::Option::Some(timeout);
                    self.with_options(options)
                }

                /// A handle whose calls use `options`. It shares this client's connection.
                #[must_use]
                pub fn with_options(&self, options: #private::CallOptions) -> Self {
                    Self { channel: ::core::clone::Clone::clone(&self.channel), options }
                }

                #(#methods)*
            }

            #item_attrs
            #allow
            impl #private::Client for #client #wire_where {
                type Request = #request;
                type Response = #response;
                const ID: #private::ServiceId = #client::ID;
                fn from_channel(channel: #channel) -> Self {
                    #client::from_channel(channel)
                }
            }
        }
    }

    /// The docs of a generated method: the trait method's, or one line saying what it calls.
    fn method_docs(&self, def: &MethodDef<'_>) -> TokenStream {
        let name = &def.name;
        let trait_ident = self.trait_ident;
        let mut docs = if def.docs.is_empty() {
            let doc = format!("Calls `{name}` of [`{trait_ident}`] on the server.");
            quote!(#[doc = #doc])
        } else {
            let docs = &def.docs;
            quote!(#(#docs)*)
        };
        if def.is_oneway() {
            docs.extend(quote! {
                #[doc = ""]
                #[doc = "One-way: returns once the message is queued for the pipe; the server sends no reply. See `Channel::oneway`."]
            });
        }
        docs
    }

    /// The attributes of a generated method: docs, `#[deprecated]`, `#[cfg]`s and the
    /// user's lint attributes, then (if there are any) the generated code's own allowances
    /// again, so that a `#[deny(..)]` the user wrote for their method does not reach lints
    /// only the generated body trips.
    fn method_attrs(&self, m: &Method<'_>) -> TokenStream {
        let docs = self.method_docs(m.def);
        let deprecated = &m.def.deprecated;
        let attrs = &m.attrs;
        let allow = (!m.def.lints.is_empty()).then(allow_lints);
        quote!(#docs #(#deprecated)* #attrs #allow)
    }

    /// A client method's `where` clause: its callback's client and (for a blocking method)
    /// its error type are assumed to be what they must be, so that if they are not, the one
    /// check at the type reports it, and not every generated method again (see `WireAt`).
    fn method_where(&self, m: &Method<'_>, blocking: bool) -> TokenStream {
        let private = &self.private;
        let mut bounds = Vec::new();
        if let Some((_, client)) = m.callback {
            bounds.push(quote!(for<'__rpc> #client: #private::ClientAt<'__rpc>));
        }
        if let (true, Output::Fallible { err, .. }) = (blocking, &m.def.output) {
            bounds.push(quote!(for<'__rpc> #err: #private::AbsorbsRpcErrorAt<'__rpc>));
        }
        if bounds.is_empty() { TokenStream::new() } else { quote!(where #(#bounds),*) }
    }

    /// The client's argument types: the trait's, except that a callback argument takes an
    /// object serving the callback trait, not the callback's client.
    fn client_arg_types(&self, m: &Method<'_>) -> Vec<TokenStream> {
        let private = &self.private;
        m.args
            .iter()
            .zip(&m.tys)
            .map(|(arg, ty)| match m.callback {
                Some((ident, client)) if ident == *arg => quote_spanned! {client.span()=>
                    impl #private::Service<
                        Request = <#client as #private::Client>::Request,
                        Response = <#client as #private::Client>::Response,
                    >
                },
                _ => quote!(#ty),
            })
            .collect()
    }

    /// What the client method returns.
    fn client_return(&self, def: &MethodDef<'_>) -> TokenStream {
        let private = &self.private;
        match &def.output {
            _ if def.is_oneway() => quote!(::core::result::Result<(), #private::RpcError>),
            Output::Stream { whole, .. } => quote!(::core::result::Result<#whole, #private::RpcError>),
            Output::Fallible { ok, err, .. } => quote!(::core::result::Result<#ok, #err>),
            output => {
                let ty = output.handler_type();
                quote!(::core::result::Result<#ty, #private::RpcError>)
            }
        }
    }

    fn client_method(&self, m: &Method<'_>) -> TokenStream {
        let Self { private, request, response, .. } = self;
        let Method { def, variant, args, wire_args, upload, callback, .. } = m;
        let ident = def.ident;
        let name = &def.name;
        let attrs = self.method_attrs(m);
        let tys = self.client_arg_types(m);
        let ret = self.client_return(def);
        let resp = Self::local("__rpc_response");
        let value = Self::local("__rpc_value");
        let body = quote!(#request::#variant { #(#wire_args),* });
        // The method's name travels with the options, for the call's span.
        let options = quote!(self.options.for_method(#name));
        // The caller's stream, each item wrapped in the method's item variant.
        let up = upload.as_ref().map(|(ident, _, iv)| quote!(#private::RpcStream::into_wire(#ident, #request::#iv)));
        let call = match (&up, callback) {
            (Some(up), _) => quote!(self.channel.call_upload(&#options, #body, #up).await),
            (None, Some((ident, _))) => quote! {
                self.channel.call_with_callback(&#options, #body, #private::erase_callback(#ident)).await
            },
            (None, None) if def.is_idempotent() => {
                // Each argument cloned for every attempt, the clone spanned at its type: a
                // type that is not `Clone` is reported there.
                let clones = wire_args
                    .iter()
                    .zip(&m.wire_tys)
                    .map(|(arg, ty)| quote_spanned!(ty.span()=> #arg: #private::clone_for_resend(&#arg)));
                quote! {
                    self.channel.call_idempotent(&#options, || #request::#variant { #(#clones),* }).await
                }
            }
            (None, None) => quote!(self.channel.call(&#options, #body).await),
        };
        // A method the server said it lacks (service evolution) fails here, before sending.
        let error = Self::local("__rpc_error");
        let checked = |call: TokenStream| {
            quote! {
                match self.channel.check_method(#name) {
                    ::core::result::Result::Err(#error) => ::core::result::Result::Err(#error),
                    ::core::result::Result::Ok(()) => #call,
                }
            }
        };
        let call = checked(call);
        let pick = quote! {
            |#resp| match #resp {
                #response::#variant(#value) => ::core::option::Option::Some(#value),
                #[allow(unreachable_patterns)]
                _ => ::core::option::Option::None,
            }
        };
        let body = match &def.output {
            _ if def.is_oneway() => checked(quote!(self.channel.oneway(&#options, #body).await)),
            Output::Stream { .. } => {
                let up = match &up {
                    Some(up) => quote!(::core::option::Option::Some(#up)),
                    None => quote!(::core::option::Option::None),
                };
                checked(quote!(self.channel.call_download(&#options, #body, #up, #pick).await))
            }
            Output::Fallible { err, .. } => {
                // The call expression (path and parentheses) is spanned at `E`: if `E`
                // cannot absorb `RpcError`, this error lands there too.
                let fallible = respan(quote!(#private::fallible), err.span());
                let mut args = proc_macro2::Group::new(Delimiter::Parenthesis, quote!(#call, #name, #pick));
                args.set_span(err.span());
                quote!(#fallible #args)
            }
            _ => quote!(#private::plain(#call, #name, #pick)),
        };
        let where_clause = self.method_where(m, false);
        quote! {
            #attrs
            pub async fn #ident(&self #(, #args: #tys)*) -> #ret #where_clause {
                #body
            }
        }
    }

    fn blocking_client_struct(&self) -> TokenStream {
        let Self { private, trait_ident, client, blocking, item_attrs, .. } = self;
        let vis = &self.def.item.vis;
        let doc = format!(
            "Blocking client of [`{trait_ident}`]: one plain `fn` per RPC, for code without an async \
             runtime; a connection of its own with a small runtime (one background thread) that runs it. \
             Cheap to clone; clones share the connection, and any number of threads may call at once. \
             Inside a tokio runtime every method returns `RpcError::BlockingInRuntime`: use [`{client}`] \
             there (`as_async`). See `rpc_core::blocking`."
        );
        quote! {
            #[doc = #doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug)]
            #item_attrs
            #vis struct #blocking {
                client: #client,
                runtime: #private::BlockingRuntime,
            }
        }
    }

    fn blocking_client_impl(&self) -> TokenStream {
        let Self { private, request, response, client, blocking, item_attrs, .. } = self;
        let allow = allow_lints();
        let wire_where = self.wire_where();
        let channel = quote!(#private::Channel<#request, #response>);
        let connect_call = format!("{blocking}::connect");
        let connect_doc = format!(
            "Connects to the server listening on the pipe `name` with the default `ClientConfig`, as \
             [`{client}::connect`] does, on a runtime of its own (a background thread, which ends with \
             the connection)."
        );
        let methods = self.methods().map(|m| self.blocking_method(&m));
        quote! {
            #item_attrs
            #allow
            impl #blocking #wire_where {
                #[doc = #connect_doc]
                ///
                /// # Errors
                ///
                /// The server could not be reached in time, or it serves another service
                /// (or another version of this one); `RpcError::BlockingInRuntime` inside
                /// a tokio runtime.
                pub fn connect(
                    name: impl ::core::convert::Into<#private::PipeName>,
                ) -> ::core::result::Result<Self, #private::RpcError> {
                    Self::connect_with(name, <#private::ClientConfig as ::core::default::Default>::default())
                }

                /// Like [`connect`](Self::connect), with the given `ClientConfig`.
                ///
                /// # Errors
                ///
                /// As for [`connect`](Self::connect).
                pub fn connect_with(
                    name: impl ::core::convert::Into<#private::PipeName>,
                    config: #private::ClientConfig,
                ) -> ::core::result::Result<Self, #private::RpcError> {
                    let runtime = #private::BlockingRuntime::start(#connect_call)?;
                    let name: #private::PipeName = ::core::convert::Into::into(name);
                    let client = runtime.run(#connect_call, move || #client::connect_with(name, config))??;
                    runtime.attach(client.channel());
                    ::core::result::Result::Ok(Self { client, runtime })
                }

                /// The underlying connection.
                #[must_use]
                pub fn channel(&self) -> &#channel {
                    self.client.channel()
                }

                /// The async client on the same connection, for code that runs on an async
                /// runtime (clones of it keep the connection, and its runtime, alive).
                #[must_use]
                pub fn as_async(&self) -> &#client {
                    &self.client
                }

                /// The async client on the same connection (its runtime keeps running until
                /// the connection ends).
                #[must_use]
                pub fn into_async(self) -> #client {
                    self.client
                }

                /// A handle whose calls may take at most `timeout` each. It shares this
                /// client's connection.
                #[must_use]
                pub fn with_timeout(&self, timeout: ::core::time::Duration) -> Self {
                    Self {
                        client: self.client.with_timeout(timeout),
                        runtime: ::core::clone::Clone::clone(&self.runtime),
                    }
                }

                /// A handle whose calls use `options`. It shares this client's connection.
                #[must_use]
                pub fn with_options(&self, options: #private::CallOptions) -> Self {
                    Self {
                        client: self.client.with_options(options),
                        runtime: ::core::clone::Clone::clone(&self.runtime),
                    }
                }

                #(#methods)*
            }
        }
    }

    /// A blocking method: the async client's, run to completion on the calling thread.
    fn blocking_method(&self, m: &Method<'_>) -> TokenStream {
        let private = &self.private;
        let Method { def, args, upload, .. } = m;
        let ident = def.ident;
        let call = format!("{}::{}", self.blocking, def.name);
        let attrs = self.method_attrs(m);
        let mut tys = self.client_arg_types(m);
        // A stream argument takes an iterator too; it becomes an `RpcStream` on the runtime.
        let passed: Vec<TokenStream> = args
            .iter()
            .zip(&mut tys)
            .map(|(arg, ty)| match upload {
                Some((up, item, _)) if up == arg => {
                    *ty = quote!(impl #private::Upload<#item>);
                    quote!(#private::Upload::into_rpc_stream(#arg, &self.runtime))
                }
                _ => quote!(#arg),
            })
            .collect();
        let run = quote!(self.runtime.run(#call, move || self.client.#ident(#(#passed),*)));
        let (ret, body) = match &def.output {
            Output::Stream { item, .. } if !def.is_oneway() => (
                quote!(::core::result::Result<#private::BlockingStream<#item>, #private::RpcError>),
                quote!(#private::blocking_finish_stream(&self.runtime, #call, #run)),
            ),
            _ => (self.client_return(def), quote!(#private::blocking_finish(#run))),
        };
        let where_clause = self.method_where(m, true);
        quote! {
            #attrs
            pub fn #ident(&self #(, #args: #tys)*) -> #ret #where_clause {
                #body
            }
        }
    }

    /// `Wire` assertions, each spanned at the user's type, one per distinct type (and
    /// set of `#[cfg]`s): a type used by several methods is reported once.
    fn type_checks(&self) -> TokenStream {
        let Self { private, item_attrs, .. } = self;
        let mut out = TokenStream::new();
        let mut clients = TokenStream::new();
        let mut seen = HashSet::new();
        for m in self.methods() {
            let cfgs = &m.cfgs;
            let mut wire = |ty: &syn::Type| {
                if !seen.insert((cfgs.to_string(), fingerprint::type_text(ty))) {
                    return;
                }
                // The probe answers whether `T` is `Serialize` (autoref: the fallback impl
                // is on `&WireProbe<T>`), and the answer's `check` asks for the rest, so a
                // type without its serde derives is reported once, not once per trait.
                out.extend(quote_spanned! {ty.span()=>
                    #item_attrs #cfgs
                    const _: () = {
                        #[allow(unused_imports)]
                        use #private::{ProbeSerialize as _, ProbeFallback as _};
                        #[allow(dead_code)]
                        fn __rpc_check() {
                            (&#private::WireProbe::<#ty>::NEW).step().check::<#ty>();
                        }
                    };
                });
            };
            // A stream is checked by what it carries, a callback by being a generated client.
            for a in &m.def.args {
                match a.callback {
                    Some(client) => clients.extend(quote_spanned! {client.span()=>
                        #item_attrs #cfgs
                        const _: () = #private::assert_client::<#client>();
                    }),
                    None => wire(a.stream.unwrap_or(a.ty)),
                }
            }
            match &m.def.output {
                Output::Stream { item, .. } => wire(item),
                Output::Fallible { ok, err, .. } => {
                    // `E: AbsorbsRpcError` is checked by the client method's call to
                    // `fallible`, which is spanned at `E`.
                    wire(ok);
                    wire(err);
                }
                Output::Plain(ty) | Output::Unit(Some(ty)) => wire(ty),
                Output::Unit(None) => {}
            }
        }
        out.extend(clients);
        out
    }
}

/// `tokens` with every span set to `span`, so that rustc reports errors about the
/// whole expression at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(g) = &tree {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tree = group.into();
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// A method that passed validation, with the pieces every generated item needs.
struct Method<'a> {
    def: &'a MethodDef<'a>,
    variant: &'a Ident,
    /// Every argument, in order (the trait's and the client's signatures).
    args: Vec<&'a Ident>,
    tys: Vec<&'a syn::Type>,
    /// The arguments that travel in the call frame: all but the stream.
    wire_args: Vec<&'a Ident>,
    wire_tys: Vec<&'a syn::Type>,
    /// The stream argument: its name, item type and item variant in the request enum.
    upload: Option<(&'a Ident, &'a syn::Type, Ident)>,
    /// The callback argument: its name and client type.
    callback: Option<(&'a Ident, &'a syn::Type)>,
    /// The method's `#[cfg]`s: for statements.
    cfgs: TokenStream,
    /// Its `#[cfg]`s and lint attributes: for the items, variants and match arms that
    /// are the method's.
    attrs: TokenStream,
}

impl ToTokens for ServiceGenerator<'_> {
    fn to_tokens(&self, out: &mut TokenStream) {
        out.extend([
            self.service_trait(),
            // First, so that a type that cannot cross the pipe is reported by these
            // checks before anything else that uses it.
            self.type_checks(),
            self.request_enum(),
            self.response_enum(),
            self.server_struct(),
            self.service_impl(),
            self.client_struct(),
            self.client_impl(),
            self.blocking_client_struct(),
            self.blocking_client_impl(),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, item: TokenStream) -> String {
        service(args, item).to_string()
    }

    #[test]
    fn valid_trait_expands_without_errors() {
        let out = expand(
            quote!(),
            quote! {
                pub trait WorkQueues {
                    async fn create(&self, name: String) -> Result<QueueInfo, QueueError>;
                    async fn list(&self) -> Vec<QueueInfo>;
                }
            },
        );
        assert!(!out.contains("compile_error"), "{out}");
        for item in [
            "trait WorkQueues",
            "enum WorkQueuesRequest",
            "enum WorkQueuesResponse",
            "struct WorkQueuesServer",
            "struct WorkQueuesClient",
            "struct WorkQueuesBlockingClient",
        ] {
            assert!(out.contains(item), "missing {item}");
        }
        assert!(out.contains(":: rpc_core :: __private :: fallible"));
        assert!(out.contains(":: rpc_core :: __private :: plain"));
        assert!(out.contains("\"::rpc_core::__private::serde\""));
    }

    #[test]
    fn crate_override_and_name() {
        let out = expand(
            quote!(crate = renamed, name = "svc.v1"),
            quote!(
                trait T {
                    async fn a(&self);
                }
            ),
        );
        assert!(out.contains("renamed :: __private :: Service"), "{out}");
        assert!(out.contains("\"renamed::__private::serde\""), "{out}");
        assert!(out.contains("ServiceId :: new (\"svc.v1\""), "{out}");
    }

    /// The method texts the generated `ID` folds into its fingerprint, each after the
    /// tokens of the statement that folds it in (its `#[cfg]`s).
    fn fingerprinted(out: &str) -> Vec<(String, String)> {
        let mut rest = out;
        let mut found = Vec::new();
        while let Some(i) = rest.find(":: fingerprint_extend (__rpc_fingerprint , b\"") {
            let statement = rest[..i].rsplit(';').next().unwrap_or("");
            let attrs = statement.split("let __rpc_fingerprint").next().unwrap_or("").trim().to_owned();
            rest = &rest[i..];
            let start = rest.find("b\"").unwrap() + 2;
            let end = start + rest[start..].find('"').unwrap();
            found.push((attrs, rest[start..end].to_owned()));
            rest = &rest[end..];
        }
        found
    }

    #[test]
    fn making_a_method_one_way_changes_the_fingerprint() {
        let fp = |item: TokenStream| fingerprinted(&expand(quote!(), item));
        let call = fp(quote!(
            trait T {
                async fn log(&self, line: String);
            }
        ));
        let oneway = fp(quote!(
            trait T {
                #[oneway]
                async fn log(&self, line: String);
            }
        ));
        assert_eq!(call, [(String::new(), "log(String)->();".to_owned())]);
        assert_eq!(oneway, [(String::new(), "log(String)->oneway;".to_owned())]);
    }

    #[test]
    fn each_method_is_fingerprinted_under_its_own_cfgs() {
        let out = expand(
            quote!(),
            quote!(
                trait T {
                    async fn a(&self);
                    #[cfg(feature = "x")]
                    #[cfg(unix)]
                    async fn b(&self, n: u8) -> u8;
                }
            ),
        );
        assert_eq!(
            fingerprinted(&out),
            [
                (String::new(), "a()->();".to_owned()),
                ("# [cfg (feature = \"x\")] # [cfg (unix)]".to_owned(), "b(u8)->u8;".to_owned()),
            ],
            "{out}"
        );
    }

    #[test]
    fn a_one_way_attribute_does_not_reach_the_emitted_trait() {
        let out = expand(
            quote!(),
            quote!(
                trait T {
                    #[oneway]
                    async fn log(&self, line: String);
                }
            ),
        );
        assert!(!out.contains("# [oneway]"), "{out}");
        assert!(out.contains("channel . oneway"), "{out}");
    }

    #[test]
    fn errors_keep_the_trait() {
        let out = expand(
            quote!(bogus = 1),
            quote!(
                trait T {
                    fn a(&self);
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 2, "{out}");
        assert!(out.contains("trait T { fn a (& self) ; }"), "{out}");
        // Nothing else: after an error in a macro expansion rustc does not report paths that
        // do not resolve (they may be what the macro failed to make), so uses of `TClient`
        // report nothing, where stand-ins would be checked (and a failed method missing).
        assert!(!out.contains("TClient"), "{out}");
    }

    #[test]
    fn not_a_trait() {
        let out = expand(
            quote!(),
            quote!(
                struct S;
            ),
        );
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("struct S ;"), "{out}");
    }
}
