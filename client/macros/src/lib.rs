//! The `#[cacheback]` attribute: django-cacheback's `@cacheback()` decorator for an
//! `async fn`. Use it through the `cacheback` crate, which re-exports it.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::{
    parse_macro_input, spanned::Spanned, Error, Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit,
    LitBool, LitStr, Pat, PathArguments, ReturnType, Type,
};

/// Turns an `async fn` into a cacheback job; calling the function then reads through
/// the daemon.
///
/// ```ignore
/// #[cacheback]                                         // lifetime 300 s, fetch on miss
/// async fn fetch_tweets(username: &str) -> Result<Vec<Tweet>, ApiError> { ... }
///
/// #[cacheback(lifetime = 1200, fetch_on_miss = false)] // returns Ok(None) on a miss
/// async fn fetch_followers(username: &str) -> Result<Vec<String>, ApiError> { ... }
/// ```
///
/// The function keeps its name and parameters and now returns
/// `Result<T, cacheback::Error>` (`Result<Option<T>, cacheback::Error>` with
/// `fetch_on_miss = false`), where `T` is the data its body returns. Beside it, a type of
/// the same name is the job: `fetch_tweets::JOB` is cacheback's `fetch_tweets.job`, to
/// serve with a `Worker` or to pass to `Client::job`, and `fetch_tweets::invalidate("bob")`,
/// `::delete`, `::set(.., &value)` and `::get_item` take the function's own parameters. The job's
/// name is the function's path, `module_path!()::fetch_tweets`, unless `name = "..."`
/// says otherwise; its `Args` are the tuple of the parameters (owned: `&str` becomes
/// `String`).
///
/// Options: `lifetime`, `refresh_timeout`, `fetch_on_stale_threshold`, `cache_ttl`,
/// `absent_lifetime`, `error_ttl` (whole seconds, or a const `Duration` expression),
/// `early_refresh_beta` (a float, > 0), `fetch_on_miss` (bool), `name` (string).
#[proc_macro_attribute]
pub fn cacheback(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(attr with parser);
    let function = parse_macro_input!(item as ItemFn);
    expand(&options, function)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

#[derive(Default)]
struct Options {
    name: Option<LitStr>,
    lifetime: Option<TokenStream2>,
    refresh_timeout: Option<TokenStream2>,
    fetch_on_miss: Option<LitBool>,
    fetch_on_stale_threshold: Option<TokenStream2>,
    cache_ttl: Option<TokenStream2>,
    absent_lifetime: Option<TokenStream2>,
    error_ttl: Option<TokenStream2>,
    early_refresh_beta: Option<syn::LitFloat>,
}

impl Options {
    fn parse(&mut self, meta: syn::meta::ParseNestedMeta) -> syn::Result<()> {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let slot = match key.as_str() {
            "name" => {
                let name: LitStr = meta.value()?.parse()?;
                if !valid_job_name(&name.value()) {
                    return Err(Error::new(
                        name.span(),
                        "a job name is 1 to 128 bytes of [A-Za-z0-9_.:-]",
                    ));
                }
                return set_once(&mut self.name, name, &meta);
            }
            "fetch_on_miss" => {
                let value: LitBool = meta.value()?.parse()?;
                return set_once(&mut self.fetch_on_miss, value, &meta);
            }
            "early_refresh_beta" => {
                let value: syn::LitFloat = meta.value()?.parse()?;
                let beta: f64 = value.base10_parse()?;
                if !(beta.is_finite() && beta > 0.0) {
                    return Err(Error::new(
                        value.span(),
                        "early_refresh_beta must be greater than 0 and finite",
                    ));
                }
                return set_once(&mut self.early_refresh_beta, value, &meta);
            }
            "lifetime" => &mut self.lifetime,
            "refresh_timeout" => &mut self.refresh_timeout,
            "fetch_on_stale_threshold" => &mut self.fetch_on_stale_threshold,
            "cache_ttl" => &mut self.cache_ttl,
            "absent_lifetime" => &mut self.absent_lifetime,
            "error_ttl" => &mut self.error_ttl,
            _ => {
                return Err(meta.error(
                    "unknown option: expected lifetime, refresh_timeout, fetch_on_miss, \
                     fetch_on_stale_threshold, cache_ttl, absent_lifetime, error_ttl, \
                     early_refresh_beta or name",
                ))
            }
        };
        let value = duration(meta.value()?.parse()?)?;
        set_once(slot, value, &meta)
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &syn::meta::ParseNestedMeta,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error("option given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// `1200` is whole seconds; any other expression must be a const `Duration`.
fn duration(expr: Expr) -> syn::Result<TokenStream2> {
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(seconds),
            ..
        }) => {
            seconds.base10_parse::<u64>()?;
            Ok(quote_spanned!(seconds.span()=> ::std::time::Duration::from_secs(#seconds)))
        }
        Expr::Lit(ExprLit { lit, .. }) => Err(Error::new(
            lit.span(),
            "expected whole seconds (an integer) or a const Duration expression",
        )),
        _ => Ok(quote!(#expr)),
    }
}

fn valid_job_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// One parameter of the function: how it travels in `Args` and back into the body.
struct Param {
    name: syn::Ident,
    /// The type in the original signature.
    ty: Type,
    /// The owned type stored in `Args`.
    owned: TokenStream2,
    /// `&T` in the signature: stored as `T::Owned`, lent back to the body.
    borrowed: bool,
}

fn expand(options: &Options, function: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            "#[cacheback] needs an async fn",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "#[cacheback] functions cannot be generic: the job has one Args type",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(Error::new(
            unsafety.span(),
            "#[cacheback] functions cannot be unsafe",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(Error::new(
            variadic.span(),
            "#[cacheback] functions cannot be variadic",
        ));
    }
    let params = sig
        .inputs
        .iter()
        .map(param)
        .collect::<syn::Result<Vec<_>>>()?;
    let ReturnType::Type(_, returned) = &sig.output else {
        return Err(Error::new(
            sig.span(),
            "a #[cacheback] function returns a Result: the fetch can fail",
        ));
    };

    let vis = &function.vis;
    let attrs = &function.attrs;
    let ident = &sig.ident;
    let body = &function.block;
    let output = result_ok_type(returned).map_or_else(
        || quote!(<#returned as ::cacheback::__private::FetchReturn>::Output),
        |ok| quote!(#ok),
    );

    let name = match &options.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        )),
    };
    let consts = [
        ("LIFETIME", &options.lifetime),
        ("REFRESH_TIMEOUT", &options.refresh_timeout),
        ("CACHE_TTL", &options.cache_ttl),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        let name = format_ident!("{name}");
        value
            .as_ref()
            .map(|value| quote!(const #name: ::std::time::Duration = #value;))
    });
    let fetch_on_miss = options
        .fetch_on_miss
        .as_ref()
        .map(|value| quote!(const FETCH_ON_MISS: bool = #value;));
    let optional_spans = [
        (
            "FETCH_ON_STALE_THRESHOLD",
            &options.fetch_on_stale_threshold,
        ),
        ("ABSENT_LIFETIME", &options.absent_lifetime),
        ("ERROR_TTL", &options.error_ttl),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        let name = format_ident!("{name}");
        value.as_ref().map(|value| {
            quote!(const #name: ::core::option::Option<::std::time::Duration> =
                ::core::option::Option::Some(#value);)
        })
    });
    let beta = options.early_refresh_beta.as_ref().map(|value| {
        quote!(const EARLY_REFRESH_BETA: ::core::option::Option<f64> =
            ::core::option::Option::Some(#value);)
    });

    // Locals of the expansion: mixed-site, so they never clash with parameter names.
    let args = syn::Ident::new("args", Span::mixed_site());
    let client = syn::Ident::new("client", Span::mixed_site());
    // An item, so not hygienic: a name no body will use.
    let fetch = format_ident!("__cacheback_fetch_{ident}");

    let names: Vec<_> = params.iter().map(|p| &p.name).collect();
    let types: Vec<_> = params.iter().map(|p| &p.ty).collect();
    let owned: Vec<_> = params.iter().map(|p| &p.owned).collect();
    let into_args: Vec<_> = params
        .iter()
        .map(|p| {
            let name = &p.name;
            if p.borrowed {
                quote!(::std::borrow::ToOwned::to_owned(#name))
            } else {
                quote!(#name)
            }
        })
        .collect();
    let make_args = quote! {
        let #args: <#ident as ::cacheback::Job>::Args = (#(#into_args,)*);
    };
    let value = syn::Ident::new("value", Span::mixed_site());
    let into_body = params.iter().map(|p| {
        let name = &p.name;
        if p.borrowed {
            quote!(::std::borrow::Borrow::borrow(&#name))
        } else {
            quote!(#name)
        }
    });

    let fetch_on_miss_value = options.fetch_on_miss.as_ref().is_none_or(LitBool::value);
    let (wrapper_output, read) = if fetch_on_miss_value {
        (
            quote!(::core::result::Result<#output, ::cacheback::Error>),
            quote! {
                match #client.job(&#ident::JOB).get(&#args).await? {
                    ::core::option::Option::Some(data) => ::core::result::Result::Ok(data),
                    ::core::option::Option::None => ::core::result::Result::Err(
                        ::cacheback::Error::UnexpectedMiss {
                            job: ::std::borrow::ToOwned::to_owned(
                                <#ident as ::cacheback::Job>::NAME,
                            ),
                        },
                    ),
                }
            },
        )
    } else {
        (
            quote!(::core::result::Result<::core::option::Option<#output>, ::cacheback::Error>),
            quote!(#client.job(&#ident::JOB).get(&#args).await),
        )
    };

    let job_doc = format!(
        "The cacheback job of [`{ident}()`](fn@{ident}) (cacheback's `{ident}.job`): \
         `{ident}::JOB` goes to a `Worker` to serve its fetches; `{ident}::invalidate(..)`, \
         `{ident}::delete(..)`, `{ident}::set(.., &value)` and `{ident}::get_item(..)` \
         reach its items with the function's own parameters."
    );
    let through = "through `cacheback::current_client()`";
    let get_item_doc =
        format!("Reads the item of these args with its state and times ({through}).");
    let set_doc = format!(
        "Stores `value` as the item of these args, cacheback's `{ident}.job.set` ({through})."
    );
    let invalidate_doc = format!("Marks the item of these args stale and schedules a refresh, cacheback's `{ident}.job.invalidate` ({through}).");
    let delete_doc =
        format!("Removes the item of these args, cacheback's `{ident}.job.delete` ({through}).");
    let job_const_doc = format!(
        "The job of [`{ident}()`](fn@{ident}), as a constant: `&{ident}::JOB` lives forever."
    );

    Ok(quote! {
        #(#attrs)*
        #vis async fn #ident(#(#names: #types),*) -> #wrapper_output {
            #make_args
            let #client = ::cacheback::current_client()?;
            #read
        }

        #[doc = #job_doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident {}

        impl #ident {
            #[doc = #job_const_doc]
            #vis const JOB: Self = Self {};

            #[doc = #get_item_doc]
            #vis async fn get_item(#(#names: #types),*)
                -> ::core::result::Result<::cacheback::Item<#output>, ::cacheback::Error>
            {
                #make_args
                ::cacheback::current_client()?.job(&Self::JOB).get_item(&#args).await
            }

            #[doc = #set_doc]
            #vis async fn set(#(#names: #types,)* #value: &#output)
                -> ::core::result::Result<::std::time::SystemTime, ::cacheback::Error>
            {
                #make_args
                ::cacheback::current_client()?.job(&Self::JOB).set(&#args, #value).await
            }

            #[doc = #invalidate_doc]
            #vis async fn invalidate(#(#names: #types),*)
                -> ::core::result::Result<::cacheback::Invalidated, ::cacheback::Error>
            {
                #make_args
                ::cacheback::current_client()?.job(&Self::JOB).invalidate(&#args).await
            }

            #[doc = #delete_doc]
            #vis async fn delete(#(#names: #types),*)
                -> ::core::result::Result<bool, ::cacheback::Error>
            {
                #make_args
                ::cacheback::current_client()?.job(&Self::JOB).delete(&#args).await
            }
        }

        impl ::cacheback::Job for #ident {
            type Args = (#(#owned,)*);
            type Output = <#returned as ::cacheback::__private::FetchReturn>::Output;
            type Error = <#returned as ::cacheback::__private::FetchReturn>::Error;
            const NAME: &'static str = #name;
            #(#consts)*
            #fetch_on_miss
            #(#optional_spans)*
            #beta

            async fn fetch(&self, #args: Self::Args) -> #returned {
                async fn #fetch(#(#names: #types),*) -> #returned #body
                let (#(#names,)*) = #args;
                #fetch(#(#into_body),*).await
            }
        }

        const _: () = ::core::assert!(
            ::cacheback::is_valid_job_name(<#ident as ::cacheback::Job>::NAME),
            "a job name is 1 to 128 bytes of [A-Za-z0-9_.:-]: give #[cacheback] a shorter `name`",
        );
    })
}

fn param(input: &FnArg) -> syn::Result<Param> {
    let FnArg::Typed(typed) = input else {
        return Err(Error::new(
            input.span(),
            "#[cacheback] goes on a free function, not a method",
        ));
    };
    let Pat::Ident(pat) = &*typed.pat else {
        return Err(Error::new(
            typed.pat.span(),
            "#[cacheback] parameters must be plain names (they become the job's args)",
        ));
    };
    if pat.by_ref.is_some() || pat.subpat.is_some() {
        return Err(Error::new(
            pat.span(),
            "#[cacheback] parameters must be plain names",
        ));
    }
    let ty = (*typed.ty).clone();
    let (owned, borrowed) = match &ty {
        Type::Reference(reference) if reference.mutability.is_some() => {
            return Err(Error::new(
                reference.span(),
                "#[cacheback] parameters cannot be &mut: args are values",
            ))
        }
        Type::Reference(reference) => {
            let inner = &reference.elem;
            (quote!(<#inner as ::std::borrow::ToOwned>::Owned), true)
        }
        Type::ImplTrait(_) => {
            return Err(Error::new(
                ty.span(),
                "#[cacheback] parameters need concrete types (they are serialized)",
            ))
        }
        _ => (quote!(#ty), false),
    };
    Ok(Param {
        name: pat.ident.clone(),
        ty,
        owned,
        borrowed,
    })
}

/// `T` in `Result<T, E>`, `io::Result<T>`, `anyhow::Result<T>`: to show the plain type
/// in the wrapper's signature (the job itself uses the `FetchReturn` projection, so a
/// wrong guess here is a type error, never a silent one).
fn result_ok_type(returned: &Type) -> Option<&Type> {
    let Type::Path(path) = returned else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    match arguments.args.first()? {
        GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}
