//! ferry's attribute macros. They generate code against `::ferry`, so users depend on the
//! `ferry` facade only.
//!
//! `#[ferry::remote]` on `fn f(a: A, b: B) -> R` keeps `f` as a plain local function and adds
//! a module `f` (modules and functions live in different namespaces) holding:
//! - `f::remote(a, b) -> ObjectRef<R>`, where each argument is an `A` or an `ObjectRef<A>`;
//! - `f::options()`, a builder (`num_cpus`, `resource`, `max_retries`, `name`) with `.remote`;
//! - the function's registration under the stable id `module::path::f`, with an invoker
//!   that decodes the arguments, runs `f` catching panics, and stores the return value.

mod args;

use args::{parse_actor_args, parse_args, ActorArgs, RemoteArgs};
use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::{parse_macro_input, spanned::Spanned, FnArg, ImplItem, Item, ItemFn, ItemImpl, LitInt, ReturnType, Type};

/// Makes a function callable as a remote task. See the crate docs.
///
/// Options: `num_cpus`, `max_retries`, `max_preemptions`, `name`, `resources(gpu = 1)`, `priority = "real_time"`
/// (or `"best_effort"`; default `"normal"`), and `num_returns = n` on
/// a function returning an n-tuple, which makes `remote` give one typed ref per element
/// (Ray's `num_returns`). A function returning `Vec<T>` can have its value split by the
/// caller instead: `f::options().num_returns(n).remote(..)` gives `Vec<ObjectRef<T>>`.
///
/// ```no_run
/// #[ferry::remote(num_cpus = 1, max_retries = 2)]
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// fn main() -> Result<(), ferry::Error> {
///     ferry::init(ferry::Config::default())?;
///     let r: ferry::ObjectRef<i64> = add::remote(1, 2);
///     assert_eq!(ferry::get(&r)?, 3);
///     Ok(())
/// }
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

/// The name a generated function gives argument `i`: the parameter's own (so an error about
/// an argument of the wrong type names it), or `__argN` for a pattern.
fn arg_name(pt: &syn::PatType, i: usize) -> syn::Ident {
    match &*pt.pat {
        syn::Pat::Ident(p) if p.subpat.is_none() => syn::Ident::new(&p.ident.to_string(), p.ident.span()),
        _ => format_ident!("__arg{}", i),
    }
}

/// The parameters of a generated call (`name: impl IntoArg<T>`), each spanned on the user's
/// own parameter: an argument of the wrong type is then reported at that parameter, by name.
fn arg_params(idents: &[syn::Ident], tys: &[Type]) -> Vec<proc_macro2::TokenStream> {
    idents
        .iter()
        .zip(tys)
        .map(|(i, t)| {
            let span = i.span().join(t.span()).unwrap_or_else(|| i.span());
            quote::quote_spanned!(span=> #i: impl ::ferry::IntoArg<#t>)
        })
        .collect()
}

/// For `num_returns = n`: the element types of the tuple the function returns, one per ref.
fn tuple_returns(n: Option<u32>, ret: &Type, at: Span) -> syn::Result<Option<Vec<Type>>> {
    let Some(n) = n else { return Ok(None) };
    match ret {
        Type::Tuple(t) if t.elems.len() == n as usize => Ok(Some(t.elems.iter().cloned().collect())),
        _ => Err(syn::Error::new(
            at,
            format!(
                "num_returns = {n} needs a function returning a tuple of {n} values: each becomes an object of its own"
            ),
        )),
    }
}

/// Where a function's return type is written (its name when it has none).
fn ret_span(sig: &syn::Signature) -> Span {
    match &sig.output {
        ReturnType::Type(_, t) => t.span(),
        ReturnType::Default => sig.ident.span(),
    }
}

/// For `streaming`: `T` of the `impl Iterator<Item = T>` (or `IntoIterator`) the function
/// returns; each value it yields becomes an object of its own.
fn stream_item(ret: &Type, at: Span) -> syn::Result<Type> {
    let err = || {
        syn::Error::new(
            at,
            "a streaming function returns `impl Iterator<Item = T>` (or `impl IntoIterator<Item = T>`): \
             each value it yields becomes a ref of the caller's RefStream<T>",
        )
    };
    let Type::ImplTrait(it) = ret else { return Err(err()) };
    for b in &it.bounds {
        let syn::TypeParamBound::Trait(t) = b else { continue };
        let Some(last) = t.path.segments.last() else { continue };
        if last.ident != "Iterator" && last.ident != "IntoIterator" {
            continue;
        }
        if let syn::PathArguments::AngleBracketed(a) = &last.arguments {
            for g in &a.args {
                if let syn::GenericArgument::AssocType(at) = g {
                    if at.ident == "Item" {
                        return Ok(at.ty.clone());
                    }
                }
            }
        }
    }
    Err(err())
}

/// A streaming task's body: its values sent one by one as the iterator yields them, panics
/// included (a panic mid-stream ends it, after the values made).
fn stream_body(setup: ProtoTs, call: ProtoTs) -> ProtoTs {
    quote! {
        ::ferry::__private::run_catching(__ID, move || {
            let mut __s = ::ferry::__private::StreamOut::new(__ID)?;
            #setup
            for __v in #call {
                __s.push(&__v)?;
            }
            __s.finish()
        })?
    }
}

type ProtoTs = proc_macro2::TokenStream;

/// `T` when the function returns `Vec<T>`: its caller may split the vector into one object
/// per item (`options().num_returns(n)`).
fn vec_item(ret: &Type) -> Option<Type> {
    let Type::Path(p) = ret else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Vec" {
        return None;
    }
    match &last.arguments {
        syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            syn::GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// How a task's value becomes its return objects: one, a tuple split by element, or (when
/// the caller asks) a vector split by item.
fn store_code(tuple: &Option<Vec<Type>>, item: &Option<Type>) -> proc_macro2::TokenStream {
    if let Some(elems) = tuple {
        let n = elems.len() as u32;
        let idx = (0..elems.len()).map(syn::Index::from);
        return quote! {
            let mut __r = ::ferry::__private::Returns::new(__ID, #n)?;
            #( __r.push(&__out.#idx)?; )*
            __r.finish()
        };
    }
    if item.is_some() {
        return quote! {
            match ::ferry::__private::split_returns() {
                ::core::option::Option::None => ::ferry::__private::store_return(&__out, __ID),
                ::core::option::Option::Some(_) => {
                    let mut __r = ::ferry::__private::Returns::new(__ID, __out.len() as u32)?;
                    for __v in &__out {
                        __r.push(__v)?;
                    }
                    __r.finish()
                }
            }
        };
    }
    quote!(::ferry::__private::store_return(&__out, __ID))
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
    let mut idents = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(r.span(), "remote functions take no self; use #[ferry::actor] for methods"))
            }
            FnArg::Typed(pt) => {
                if let Type::Reference(r) = &*pt.ty {
                    return Err(syn::Error::new(
                        r.span(),
                        "remote functions take owned arguments (they cross process boundaries); use String, Vec<T>, ...",
                    ));
                }
                idents.push(arg_name(pt, tys.len()));
                tys.push((*pt.ty).clone());
            }
        }
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let tuple = tuple_returns(args.num_returns, &ret, ret_span(sig))?;
    let streamed = if args.streaming { Some(stream_item(&ret, ret_span(sig))?) } else { None };
    let item = if streamed.is_some() { None } else { vec_item(&ret) };
    let store = store_code(&tuple, &item);
    let n = tys.len();
    let idx: Vec<_> = (0..n).collect();
    let params = arg_params(&idents, &tys);
    // What `remote` gives: a ref, or one per element of the tuple.
    let (out_ty, submit) = match &tuple {
        Some(elems) => {
            let k = elems.len() as u32;
            let i = (0..elems.len()).map(syn::Index::from);
            (
                quote!(( #( ::ferry::ObjectRef<#elems> ),* )),
                quote! {
                    let mut __o = self.0;
                    __o.num_returns = ::core::option::Option::Some(#k);
                    let __ids = ::ferry::__private::submit_returning(__ENTRY.id, &__o, __args);
                    ( #( ::ferry::__private::adopt_ref::<#elems>(__ids[#i]) ),* )
                },
            )
        }
        None => match &streamed {
            Some(t) => (
                quote!(::ferry::RefStream<#t>),
                quote!(::ferry::__private::submit_stream::<#t>(__ENTRY.id, &self.0, __args)),
            ),
            None => (
                quote!(::ferry::ObjectRef<#ret>),
                quote!(::ferry::__private::submit::<#ret>(__ENTRY.id, &self.0, __args)),
            ),
        },
    };
    let backpressure = match &streamed {
        Some(_) => quote! {
            impl Options {
                /// At most `n` values made ahead of what the caller took from its stream
                /// (default 64): the task waits for the caller past that.
                pub fn backpressure(mut self, n: u32) -> Options {
                    self.0.backpressure = ::core::option::Option::Some(n.max(1));
                    self
                }
            }
        },
        None => quote!(),
    };
    // A function returning `Vec<T>` may have it split, as many refs as the caller says.
    let split = match &item {
        Some(t) => quote! {
            impl Options {
                /// Splits the returned vector into `n` objects, one per item: `.remote(..)`
                /// then gives `n` refs (Ray's `num_returns`). The task must return exactly
                /// `n` items; otherwise every ref fails, saying so.
                pub fn num_returns(mut self, n: u32) -> Split {
                    self.0.num_returns = ::core::option::Option::Some(n);
                    Split(self.0)
                }
            }

            /// Options for one call whose vector is split into refs; finish with `.remote(..)`.
            pub struct Split(::ferry::TaskOptions);

            impl ::ferry::RemoteOptions for Split {
                fn task_options(&mut self) -> &mut ::ferry::TaskOptions {
                    &mut self.0
                }
            }

            impl Split {
                /// Submits the task; returns one ref per item at once.
                pub fn remote(self, #(#params),*) -> ::std::vec::Vec<::ferry::ObjectRef<#t>> {
                    ::ferry::__private::begin_exports();
                    let __args = ::std::vec![#( ::ferry::IntoArg::<#tys>::into_arg(#idents) ),*];
                    ::ferry::__private::submit_returning(__ENTRY.id, &self.0, __args)
                        .into_iter()
                        .map(::ferry::__private::adopt_ref::<#t>)
                        .collect()
                }
            }
        },
        None => quote!(),
    };
    let call = if sig.asyncness.is_some() {
        quote!(::ferry::block_on(super::#name(#(#idents),*)))
    } else {
        quote!(super::#name(#(#idents),*))
    };
    let body = match &streamed {
        Some(_) => stream_body(quote!(), call.clone()),
        None => quote! {
            let __out: #ret = ::ferry::__private::run_catching(__ID, move || #call)?;
            #store
        },
    };
    let num_cpus = args.num_cpus.unwrap_or(1.0);
    let max_retries = match args.max_retries {
        Some(r) => quote!(::core::option::Option::Some(#r)),
        None => quote!(::core::option::Option::None),
    };
    let max_preemptions = match args.max_preemptions {
        Some(r) => quote!(::core::option::Option::Some(#r)),
        None => quote!(::core::option::Option::None),
    };
    let display = match &args.name {
        Some(n) => quote!(::core::option::Option::Some(::std::string::String::from(#n))),
        None => quote!(::core::option::Option::None),
    };
    let priority = args::priority_tokens(args.priority.as_deref());
    let res_names: Vec<_> = args.resources.iter().map(|(n, _)| n.clone()).collect();
    let res_amounts: Vec<_> = args.resources.iter().map(|(_, a)| *a).collect();
    let doc = format!("Remote form of [`{name}`](fn@{name}): `{name}::remote(..)` runs it as a task.");
    let span = Span::call_site();
    let mod_vis = vis.clone();
    Ok(quote::quote_spanned! {span=>
        #f

        #[doc = #doc]
        #[allow(non_snake_case, unused_imports, clippy::all)]
        #mod_vis mod #name {
            use super::*;

            fn __invoke(__args: &[::ferry::__private::ArgData<'_>]) -> ::core::result::Result<::ferry::__private::Returned, ::ferry::__private::TaskError> {
                const __ID: &str = ::core::module_path!();
                ::ferry::__private::check_arity(__args, #n, __ID)?;
                #( let #idents: #tys = ::ferry::__private::decode_arg(__args, #idx, __ID)?; )*
                #body
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
                    strategy: ::std::default::Default::default(),
                    retry_exceptions: false,
                    priority: #priority,
                    max_preemptions: #max_preemptions,
                    ..::std::default::Default::default()
                })
            }

            impl Options {
                /// Submits the task with these options.
                pub fn remote(self, #(#params),*) -> #out_ty {
                    ::ferry::__private::begin_exports();
                    let __args = ::std::vec![#( ::ferry::IntoArg::<#tys>::into_arg(#idents) ),*];
                    #submit
                }
            }

            #split

            #backpressure

            /// Submits the task; returns its result's future at once.
            pub fn remote(#(#params),*) -> #out_ty {
                self::options().remote(#(#idents),*)
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

/// Makes a type an actor. Put it on the struct (or enum) and on its `impl` block:
///
/// ```no_run
/// #[ferry::actor]
/// pub struct Counter { n: i64 }
///
/// #[ferry::actor]
/// impl Counter {
///     pub fn new(start: i64) -> Self { Counter { n: start } }
///     pub fn incr(&mut self, by: i64) -> i64 { self.n += by; self.n }
///     pub fn get(&self) -> i64 { self.n }
/// }
///
/// fn main() -> Result<(), ferry::Error> {
///     ferry::init(ferry::Config::default())?;
///     let c = Counter::remote(10)?;        // ActorHandle<Counter>
///     let r = c.incr(5);                   // ObjectRef<i64>
///     assert_eq!(ferry::get(&r)?, 15);
///     Ok(())
/// }
/// ```
///
/// On the type it adds `<Type>Proxy` (what a handle derefs to) and the `ferry::Actor` impl.
/// On the `impl` block: `new` is the constructor; each `&self` / `&mut self` method becomes
/// callable through handles (`&self` methods may run together when `max_concurrency` > 1;
/// `&mut self` ones run alone); `Type::remote(..)` and `Type::options()` create actors.
/// Options on the `impl` attribute set defaults: `max_concurrency`, `max_restarts`,
/// `max_task_retries`, `num_cpus`, `priority = "best_effort"` (or `"real_time"`).
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed = parse_macro_input!(item as Item);
    let out = match parsed {
        Item::Struct(s) => {
            if !attr.is_empty() {
                return syn::Error::new(Span::call_site(), "options go on the #[ferry::actor] of the impl block")
                    .to_compile_error()
                    .into();
            }
            expand_actor_type(&s.ident, &s.vis, quote!(#s))
        }
        Item::Enum(e) => expand_actor_type(&e.ident, &e.vis, quote!(#e)),
        Item::Impl(i) => match parse_actor_args(attr) {
            Ok(a) => expand_actor_impl(a, i),
            Err(e) => Err(e),
        },
        other => Err(syn::Error::new(other.span(), "#[ferry::actor] goes on a struct and on its impl block")),
    };
    match out {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn proxy_name(ty: &syn::Ident) -> syn::Ident {
    format_ident!("{}Proxy", ty)
}

fn expand_actor_type(
    name: &syn::Ident,
    vis: &syn::Visibility,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let proxy = proxy_name(name);
    let split = format_ident!("{}Split", name);
    let doc = format!("The methods of actor [`{name}`], called through an `ActorHandle<{name}>`.");
    let split_doc = format!(
        "The methods of actor [`{name}`] that return a `Vec`, split into refs (`method_options().num_returns(n)`)."
    );
    Ok(quote! {
        #item

        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #proxy {
            raw: ::ferry::RawActor,
        }

        impl ::ferry::ActorProxy for #proxy {
            fn from_raw(raw: ::ferry::RawActor) -> Self {
                #proxy { raw }
            }
            fn raw(&self) -> &::ferry::RawActor {
                &self.raw
            }
        }

        impl ::ferry::Actor for #name {
            const CLASS: &'static str = ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name));
            type Proxy = #proxy;
            type Split = #split;
        }

        #[doc = #split_doc]
        #vis struct #split {
            raw: ::ferry::RawActor,
            n: u32,
        }

        impl ::ferry::SplitProxy for #split {
            fn from_raw(raw: ::ferry::RawActor, n: u32) -> Self {
                #split { raw, n }
            }
        }
    })
}

/// `#[ferry::method(num_returns = n)]` or `#[ferry::method(streaming)]` on an actor method
/// (removed from the emitted impl).
fn method_returns(f: &mut syn::ImplItemFn) -> syn::Result<(Option<u32>, bool)> {
    let mut n = None;
    let mut streaming = false;
    let mut err = None;
    f.attrs.retain(|a| {
        let p = a.path();
        let ours = p.is_ident("method")
            || (p.segments.len() == 2 && p.segments[0].ident == "ferry" && p.segments[1].ident == "method");
        if ours {
            let r = a.parse_nested_meta(|meta| {
                if meta.path.is_ident("num_returns") {
                    let lit = meta.value()?.parse::<LitInt>()?;
                    let v: u32 = lit.base10_parse()?;
                    if v < 2 {
                        return Err(syn::Error::new(lit.span(), "num_returns splits a tuple: give 2 or more"));
                    }
                    n = Some(v);
                    Ok(())
                } else if meta.path.is_ident("streaming") {
                    streaming = true;
                    Ok(())
                } else {
                    Err(meta.error("expected num_returns or streaming"))
                }
            });
            if let Err(e) = r {
                err = Some(e);
            }
        }
        !ours
    });
    match err {
        Some(e) => Err(e),
        None if streaming && n.is_some() => {
            Err(syn::Error::new(f.sig.ident.span(), "a method is either streaming or has num_returns, not both"))
        }
        None => Ok((n, streaming)),
    }
}

fn expand_actor_impl(args: ActorArgs, mut imp: ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    if !imp.generics.params.is_empty() || imp.trait_.is_some() {
        return Err(syn::Error::new(imp.span(), "#[ferry::actor] goes on a plain, non-generic `impl Type` block"));
    }
    let Type::Path(tp) = &*imp.self_ty else {
        return Err(syn::Error::new(imp.self_ty.span(), "expected `impl Type`"));
    };
    let name = tp.path.segments.last().expect("a path").ident.clone();
    let proxy = proxy_name(&name);
    let split_ty = format_ident!("{}Split", name);
    let options = format_ident!("{}Options", name);
    let mut ctor: Option<(Vec<Type>, Vec<syn::Ident>, bool)> = None;
    let mut methods = Vec::new();
    let mut splits = Vec::new();
    let mut on_exit = false;
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let (split, streaming) = method_returns(f)?;
        let sig = &f.sig;
        let mut receiver = None;
        let mut tys = Vec::new();
        let mut names = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(r) => {
                    if r.reference.is_none() {
                        return Err(syn::Error::new(r.span(), "actor methods take &self or &mut self"));
                    }
                    receiver = Some(r.mutability.is_some());
                }
                FnArg::Typed(pt) => {
                    if let Type::Reference(r) = &*pt.ty {
                        return Err(syn::Error::new(
                            r.span(),
                            "actor methods take owned arguments (they cross process boundaries)",
                        ));
                    }
                    names.push(arg_name(pt, tys.len()));
                    tys.push((*pt.ty).clone());
                }
            }
        }
        match receiver {
            None if sig.ident == "new" => ctor = Some((tys, names, sig.asyncness.is_some())),
            None => {}
            // The exit hook: run by the actor's own worker when it ends on purpose, never
            // called through a handle.
            Some(true) if sig.ident == "on_exit" && tys.is_empty() => on_exit = true,
            Some(mutable) => {
                if !sig.generics.params.is_empty() {
                    return Err(syn::Error::new(sig.generics.span(), "actor methods cannot be generic"));
                }
                let ret: Type = match &sig.output {
                    ReturnType::Default => syn::parse_quote!(()),
                    ReturnType::Type(_, t) => (**t).clone(),
                };
                let tuple = tuple_returns(split, &ret, ret_span(sig))?;
                let streamed = if streaming { Some(stream_item(&ret, ret_span(sig))?) } else { None };
                if streamed.is_some() && sig.asyncness.is_some() {
                    return Err(syn::Error::new(
                        sig.ident.span(),
                        "a streaming method is a plain fn returning an iterator",
                    ));
                }
                splits.push((tuple, streamed));
                methods.push((sig.ident.clone(), tys, names, ret, mutable, sig.asyncness.is_some(), f.vis.clone()));
            }
        }
    }
    let Some((ctor_tys, cidents, ctor_async)) = ctor else {
        return Err(syn::Error::new(imp.span(), "an actor needs a constructor `fn new(..) -> Self`"));
    };
    if ctor_async {
        return Err(syn::Error::new(imp.span(), "the constructor cannot be async"));
    }
    let is_async = methods.iter().any(|m| m.5);
    if is_async {
        if let Some(m) = methods.iter().find(|m| m.4) {
            return Err(syn::Error::new(
                m.0.span(),
                "an actor with async methods runs its calls interleaved on one event loop, so its methods take \
                 &self (keep mutable state in a Mutex or Cell)",
            ));
        }
    }
    let n = ctor_tys.len();
    let cidx: Vec<_> = (0..n).collect();
    let cparams = arg_params(&cidents, &ctor_tys);

    let mut method_items = Vec::new();
    let mut proxy_methods = Vec::new();
    let mut split_methods = Vec::new();
    for ((mname, tys, idents, ret, mutable, is_async, mvis), (tuple, streamed)) in methods.iter().zip(&splits) {
        let k = tys.len();
        let item = if tuple.is_none() && streamed.is_none() { vec_item(ret) } else { None };
        let store = store_code(tuple, &item);
        let params = arg_params(idents, tys);
        let idx: Vec<_> = (0..k).collect();
        let invoke = format_ident!("__ferry_invoke_{}", mname);
        let entry = format_ident!("__FERRY_METHOD_{}", mname.to_string().to_uppercase());
        let lock = if *mutable {
            quote!(let mut __g = __cell.write().unwrap_or_else(|e| e.into_inner());)
        } else {
            quote!(let __g = __cell.read().unwrap_or_else(|e| e.into_inner());)
        };
        let call = if *is_async {
            quote!(::ferry::block_on(__g.#mname(#(#idents),*)))
        } else {
            quote!(__g.#mname(#(#idents),*))
        };
        let id = quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#name),
            "::",
            ::core::stringify!(#mname)
        ));
        let body = match streamed {
            Some(_) => stream_body(lock.clone(), call.clone()),
            None => quote! {
                let __out: #ret = ::ferry::__private::run_catching(__ID, move || { #lock #call })?;
                #store
            },
        };
        let invoke_async = format_ident!("__ferry_start_{}", mname);
        let (async_fn, async_entry) = if *is_async {
            (
                quote! {
                    fn #invoke_async(
                        __inst: &::ferry::__private::ActorInstance,
                        __args: &[::ferry::__private::ArgData<'_>],
                    ) -> ::core::result::Result<::ferry::__private::MethodFuture, ::ferry::__private::TaskError> {
                        const __ID: &str = #id;
                        if __inst.downcast_ref::<::std::sync::RwLock<#name>>().is_none() {
                            return ::core::result::Result::Err(::ferry::__private::TaskError::UnknownFunction {
                                function: ::std::string::String::from(__ID),
                            });
                        }
                        ::ferry::__private::check_arity(__args, #k, __ID)?;
                        #( let #idents: #tys = ::ferry::__private::decode_arg(__args, #idx, __ID)?; )*
                        let __inst = __inst.clone();
                        ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                            let __cell = __inst.downcast_ref::<::std::sync::RwLock<#name>>().expect("checked above");
                            let __g = __cell.read().unwrap_or_else(|e| e.into_inner());
                            let __out: #ret = ::ferry::__private::await_catching(__ID, __g.#mname(#(#idents),*)).await?;
                            #store
                        }))
                    }
                },
                quote!(::core::option::Option::Some(#invoke_async)),
            )
        } else {
            (quote!(), quote!(::core::option::Option::None))
        };
        method_items.push(quote! {
            fn #invoke(
                __inst: &::ferry::__private::ActorInstance,
                __args: &[::ferry::__private::ArgData<'_>],
            ) -> ::core::result::Result<::ferry::__private::Returned, ::ferry::__private::TaskError> {
                const __ID: &str = #id;
                let __cell = __inst.downcast_ref::<::std::sync::RwLock<#name>>().ok_or_else(|| {
                    ::ferry::__private::TaskError::UnknownFunction { function: ::std::string::String::from(__ID) }
                })?;
                ::ferry::__private::check_arity(__args, #k, __ID)?;
                #( let #idents: #tys = ::ferry::__private::decode_arg(__args, #idx, __ID)?; )*
                #body
            }

            #[::ferry::__private::linkme::distributed_slice(::ferry::__private::ACTOR_METHODS)]
            #[linkme(crate = ::ferry::__private::linkme)]
            static #entry: ::ferry::__private::ActorMethod =
                ::ferry::__private::ActorMethod { id: #id, invoke: #invoke, invoke_async: #async_entry };

            #async_fn
        });
        let mname_str = mname.to_string();
        let (out_ty, call_it) = match tuple {
            Some(elems) => {
                let n = elems.len() as u32;
                let i = (0..elems.len()).map(syn::Index::from);
                (
                    quote!(( #( ::ferry::ObjectRef<#elems> ),* )),
                    quote! {
                        let __ids = self.raw.call_returning(#id, #mname_str, __args, ::core::option::Option::Some(#n));
                        ( #( ::ferry::__private::adopt_ref::<#elems>(__ids[#i]) ),* )
                    },
                )
            }
            None => match streamed {
                Some(t) => (
                    quote!(::ferry::RefStream<#t>),
                    quote!(self.raw.call_stream(#id, #mname_str, __args, ::core::option::Option::None)),
                ),
                None => (quote!(::ferry::ObjectRef<#ret>), quote!(self.raw.call(#id, #mname_str, __args))),
            },
        };
        if let Some(t) = &item {
            split_methods.push(quote! {
                /// Calls the actor's method; returns one ref per item of the vector it returns.
                #mvis fn #mname(&self, #(#params),*) -> ::std::vec::Vec<::ferry::ObjectRef<#t>> {
                    ::ferry::__private::begin_exports();
                    let __args = ::std::vec![#( ::ferry::IntoArg::<#tys>::into_arg(#idents) ),*];
                    self.raw
                        .call_returning(#id, #mname_str, __args, ::core::option::Option::Some(self.n))
                        .into_iter()
                        .map(::ferry::__private::adopt_ref::<#t>)
                        .collect()
                }
            });
        }
        proxy_methods.push(quote! {
            /// Calls the actor's method; returns its result's future at once.
            #mvis fn #mname(&self, #(#params),*) -> #out_ty {
                ::ferry::__private::begin_exports();
                let __args = ::std::vec![#( ::ferry::IntoArg::<#tys>::into_arg(#idents) ),*];
                #call_it
            }
        });
    }
    // Async actors interleave calls on one thread: many may be in flight (Ray's default).
    let mc = args.max_concurrency.unwrap_or(if is_async { 1000 } else { 1 });
    let mr = args.max_restarts.unwrap_or(0);
    let mtr = args.max_task_retries.unwrap_or(0);
    let cpus = args.num_cpus.unwrap_or(0.0);
    let priority = args::priority_tokens(args.priority.as_deref());
    let options_doc = format!("Options for creating a [`{name}`] actor; finish with `.remote(..)`.");
    let (on_exit_fn, on_exit_entry) = match on_exit {
        true => (
            quote! {
                fn __ferry_on_exit(__inst: &::ferry::__private::ActorInstance) {
                    // Calls still in flight (an async actor's) may hold the instance: waited
                    // for a moment, then the hook is skipped rather than the exit hung.
                    let ::core::option::Option::Some(__cell) = __inst.downcast_ref::<::std::sync::RwLock<#name>>() else {
                        return;
                    };
                    for _ in 0..200 {
                        match __cell.try_write() {
                            ::core::result::Result::Ok(mut __g) => return __g.on_exit(),
                            ::core::result::Result::Err(::std::sync::TryLockError::Poisoned(__p)) => {
                                return __p.into_inner().on_exit()
                            }
                            ::core::result::Result::Err(::std::sync::TryLockError::WouldBlock) => {
                                ::std::thread::sleep(::std::time::Duration::from_millis(10))
                            }
                        }
                    }
                }
            },
            quote!(::core::option::Option::Some(__ferry_on_exit)),
        ),
        false => (quote!(), quote!(::core::option::Option::None)),
    };
    Ok(quote! {
        #imp

        // Async methods hold the instance's read guard across `.await`: an async actor has
        // no `&mut self` methods, so nothing ever waits for the write side of that lock.
        #[allow(non_snake_case, non_upper_case_globals, clippy::await_holding_lock)]
        const _: () = {
            fn __ferry_construct(
                __args: &[::ferry::__private::ArgData<'_>],
            ) -> ::core::result::Result<::ferry::__private::ActorInstance, ::ferry::__private::TaskError> {
                const __ID: &str = <#name as ::ferry::Actor>::CLASS;
                ::ferry::__private::check_arity(__args, #n, __ID)?;
                #( let #cidents: #ctor_tys = ::ferry::__private::decode_arg(__args, #cidx, __ID)?; )*
                let __v = ::ferry::__private::run_catching(__ID, move || #name::new(#(#cidents),*))?;
                ::core::result::Result::Ok(::std::sync::Arc::new(::std::sync::RwLock::new(__v)))
            }

            #[::ferry::__private::linkme::distributed_slice(::ferry::__private::ACTOR_CLASSES)]
            #[linkme(crate = ::ferry::__private::linkme)]
            static __FERRY_CLASS: ::ferry::__private::ActorClass = ::ferry::__private::ActorClass {
                id: <#name as ::ferry::Actor>::CLASS,
                is_async: #is_async,
                construct: __ferry_construct,
                on_exit: #on_exit_entry,
            };

            #on_exit_fn

            #(#method_items)*
        };

        impl #proxy {
            #(#proxy_methods)*
        }

        impl #split_ty {
            #(#split_methods)*
        }

        #[doc = #options_doc]
        #[allow(private_interfaces)]
        pub struct #options(::ferry::ActorOptions);

        impl ::ferry::ActorOptionsBuilder for #options {
            fn actor_options(&mut self) -> &mut ::ferry::ActorOptions {
                &mut self.0
            }
        }

        #[allow(private_interfaces)]
        impl #options {
            /// Creates the actor with these options; its constructor runs on a dedicated worker.
            pub fn remote(self, #(#cparams),*) -> ::ferry::Result<::ferry::ActorHandle<#name>> {
                ::ferry::__private::begin_exports();
                let __args = ::std::vec![#( ::ferry::IntoArg::<#ctor_tys>::into_arg(#cidents) ),*];
                ::ferry::__private::create_actor::<#name>(&self.0, __args)
            }
        }

        #[allow(private_interfaces)]
        impl #name {
            /// Creates an actor; returns its handle at once.
            pub fn remote(#(#cparams),*) -> ::ferry::Result<::ferry::ActorHandle<#name>> {
                Self::options().remote(#(#cidents),*)
            }

            /// Options for creating an actor of this type.
            pub fn options() -> #options {
                #options(::ferry::ActorOptions {
                    max_concurrency: #mc,
                    max_restarts: #mr,
                    max_task_retries: #mtr,
                    num_cpus: #cpus,
                    priority: #priority,
                    ..::core::default::Default::default()
                })
            }
        }
    })
}

/// Options of an actor method, read by `#[ferry::actor]` on its `impl` block:
/// `#[ferry::method(num_returns = 2)]` splits the tuple the method returns into one ref per
/// element. It means nothing elsewhere.
#[proc_macro_attribute]
pub fn method(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut out: proc_macro2::TokenStream =
        quote!(compile_error!("#[ferry::method] goes on a method inside an #[ferry::actor] impl block"););
    out.extend(proc_macro2::TokenStream::from(item));
    out.into()
}
