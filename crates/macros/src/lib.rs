//! ferry's attribute macros. They generate code against `::ferry`, so users depend on the
//! `ferry` facade only.
//!
//! `#[ferry::remote]` on `fn f(a: A, b: B) -> R` keeps `f` as a plain local function and adds
//! a module `f` (modules and functions live in different namespaces) holding:
//! - `f::remote(a, b) -> ObjectRef<R>`, where each argument is an `A` or an `ObjectRef<A>`;
//! - `f::options()`, a builder (`num_cpus`, `resource`, `max_retries`, `name`) with `.remote`;
//! - the function's registration under the stable id `module::path::f`, with an invoker
//!   that decodes the arguments, runs `f` catching panics, and stores the return value.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::{
    parse_macro_input, spanned::Spanned, FnArg, ItemFn, LitFloat, LitInt, LitStr, ReturnType, Type,
};

#[derive(Default)]
struct RemoteArgs {
    num_cpus: Option<f64>,
    max_retries: Option<u32>,
    name: Option<String>,
    resources: Vec<(String, f64)>,
}

fn number(input: syn::parse::ParseStream) -> syn::Result<f64> {
    if input.peek(LitFloat) {
        input.parse::<LitFloat>()?.base10_parse()
    } else {
        Ok(input.parse::<LitInt>()?.base10_parse::<u64>()? as f64)
    }
}

fn parse_args(attr: TokenStream) -> syn::Result<RemoteArgs> {
    let mut a = RemoteArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("num_cpus") {
            a.num_cpus = Some(number(meta.value()?)?);
        } else if meta.path.is_ident("max_retries") {
            a.max_retries = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("name") {
            a.name = Some(meta.value()?.parse::<LitStr>()?.value());
        } else if meta.path.is_ident("resources") {
            meta.parse_nested_meta(|m| {
                let name = m
                    .path
                    .get_ident()
                    .ok_or_else(|| m.error("expected a resource name"))?
                    .to_string();
                a.resources.push((name, number(m.value()?)?));
                Ok(())
            })?;
        } else {
            return Err(meta.error("expected num_cpus, max_retries, name or resources(...)"));
        }
        Ok(())
    });
    syn::parse::Parser::parse(parser, attr)?;
    Ok(a)
}

/// Makes a function callable as a remote task. See the crate docs.
///
/// ```ignore
/// #[ferry::remote(num_cpus = 1, max_retries = 2)]
/// fn add(a: i64, b: i64) -> i64 { a + b }
/// let r: ferry::ObjectRef<i64> = add::remote(1, 2);
/// ```
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match parse_args(attr) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let f = parse_macro_input!(item as ItemFn);
    match expand_remote(args, f) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_remote(args: RemoteArgs, f: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &f.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "remote functions cannot be generic: each needs one registered id",
        ));
    }
    let name = &sig.ident;
    let vis = &f.vis;
    let mut tys = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "remote functions take no self; use #[ferry::actor] for methods",
                ))
            }
            FnArg::Typed(pt) => {
                if let Type::Reference(r) = &*pt.ty {
                    return Err(syn::Error::new(
                        r.span(),
                        "remote functions take owned arguments (they cross process boundaries); use String, Vec<T>, ...",
                    ));
                }
                tys.push((*pt.ty).clone());
            }
        }
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let n = tys.len();
    let idents: Vec<_> = (0..n).map(|i| format_ident!("__arg{}", i)).collect();
    let idx: Vec<_> = (0..n).collect();
    let call = if sig.asyncness.is_some() {
        quote!(::ferry::block_on(super::#name(#(#idents),*)))
    } else {
        quote!(super::#name(#(#idents),*))
    };
    let num_cpus = args.num_cpus.unwrap_or(1.0);
    let max_retries = match args.max_retries {
        Some(r) => quote!(::core::option::Option::Some(#r)),
        None => quote!(::core::option::Option::None),
    };
    let display = match &args.name {
        Some(n) => quote!(::core::option::Option::Some(::std::string::String::from(#n))),
        None => quote!(::core::option::Option::None),
    };
    let res_names: Vec<_> = args.resources.iter().map(|(n, _)| n.clone()).collect();
    let res_amounts: Vec<_> = args.resources.iter().map(|(_, a)| *a).collect();
    let doc =
        format!("Remote form of [`{name}`](fn@{name}): `{name}::remote(..)` runs it as a task.");
    let span = Span::call_site();
    let mod_vis = vis.clone();
    Ok(quote::quote_spanned! {span=>
        #f

        #[doc = #doc]
        #[allow(non_snake_case, unused_imports, clippy::all)]
        #mod_vis mod #name {
            use super::*;

            fn __invoke(__args: &[::ferry::__private::ArgData<'_>]) -> ::core::result::Result<::ferry::__private::Return, ::ferry::__private::TaskError> {
                const __ID: &str = ::core::module_path!();
                ::ferry::__private::check_arity(__args, #n, __ID)?;
                #( let #idents: #tys = ::ferry::__private::decode_arg(__args, #idx, __ID)?; )*
                let __out: #ret = ::ferry::__private::run_catching(__ID, move || #call)?;
                ::ferry::store_return(&__out, __ID)
            }

            #[::ferry::__private::linkme::distributed_slice(::ferry::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::ferry::__private::linkme)]
            static __ENTRY: ::ferry::__private::RemoteFunction =
                ::ferry::__private::RemoteFunction { id: ::core::module_path!(), invoke: __invoke };

            /// Options for one call; finish with `.remote(..)`.
            pub struct Options(::ferry::TaskOptions);

            impl ::ferry::RemoteOptions for Options {
                fn task_options(&mut self) -> &mut ::ferry::TaskOptions {
                    &mut self.0
                }
            }

            /// Options for one call of this function.
            pub fn options() -> Options {
                Options(::ferry::TaskOptions {
                    num_cpus: #num_cpus,
                    resources: ::std::vec![#( (::std::string::String::from(#res_names), #res_amounts) ),*],
                    max_retries: #max_retries,
                    name: #display,
                })
            }

            impl Options {
                /// Submits the task with these options.
                pub fn remote(self, #( #idents: impl ::ferry::IntoArg<#tys> ),*) -> ::ferry::ObjectRef<#ret> {
                    ::ferry::__private::submit::<#ret>(
                        __ENTRY.id,
                        &self.0,
                        ::std::vec![#( ::ferry::IntoArg::<#tys>::into_arg(#idents) ),*],
                    )
                }
            }

            /// Submits the task; returns its result's future at once.
            pub fn remote(#( #idents: impl ::ferry::IntoArg<#tys> ),*) -> ::ferry::ObjectRef<#ret> {
                options().remote(#(#idents),*)
            }
        }
    })
}

/// Wraps `main`: a process started as a worker enters worker mode before the body runs,
/// and ferry is shut down (workers stopped, files removed) when the body returns.
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    let attrs = &f.attrs;
    let sig = &f.sig;
    let body = &f.block;
    let output = &sig.output;
    if sig.asyncness.is_some() {
        return quote!(compile_error!("#[ferry::main] takes a plain fn main; use ferry::block_on inside for async code");).into();
    }
    quote! {
        // Public so the same file can also be used as a module (the quickstart test does).
        #(#attrs)*
        pub fn main() #output {
            ::ferry::__private::worker_entry_point();
            fn __ferry_user_main() #output #body
            let __ferry_result = __ferry_user_main();
            ::ferry::shutdown();
            __ferry_result
        }
    }
    .into()
}
