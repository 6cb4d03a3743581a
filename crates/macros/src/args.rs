//! The options of `#[ferry::remote(..)]` and `#[ferry::actor(..)]`, parsed and checked at
//! compile time: an unknown option or value is an error naming the ones there are.

use proc_macro::TokenStream;
use proc_macro2::Span;
use syn::{LitFloat, LitInt, LitStr};

#[derive(Default)]
pub(crate) struct RemoteArgs {
    pub(crate) num_returns: Option<u32>,
    pub(crate) streaming: bool,
    pub(crate) num_cpus: Option<f64>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) max_preemptions: Option<u32>,
    pub(crate) name: Option<String>,
    pub(crate) resources: Vec<(String, f64)>,
    /// `real_time`, `normal` or `best_effort` (checked here, at compile time).
    pub(crate) priority: Option<String>,
}

pub(crate) fn number(input: syn::parse::ParseStream) -> syn::Result<f64> {
    if input.peek(LitFloat) {
        input.parse::<LitFloat>()?.base10_parse()
    } else {
        Ok(input.parse::<LitInt>()?.base10_parse::<u64>()? as f64)
    }
}

/// `priority = "real_time" | "normal" | "best_effort"`, checked.
fn priority(input: syn::parse::ParseStream) -> syn::Result<String> {
    let lit = input.parse::<LitStr>()?;
    let p = lit.value().trim().to_ascii_lowercase().replace('-', "_");
    if !["real_time", "normal", "best_effort"].contains(&p.as_str()) {
        return Err(syn::Error::new(lit.span(), "priority is \"real_time\", \"normal\" or \"best_effort\""));
    }
    Ok(p)
}

/// The `::ferry::Priority` a checked priority names.
pub(crate) fn priority_tokens(p: Option<&str>) -> proc_macro2::TokenStream {
    match p {
        Some("real_time") => quote::quote!(::ferry::Priority::RealTime),
        Some("best_effort") => quote::quote!(::ferry::Priority::BestEffort),
        _ => quote::quote!(::ferry::Priority::Normal),
    }
}

pub(crate) fn parse_args(attr: TokenStream) -> syn::Result<RemoteArgs> {
    let mut a = RemoteArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("num_cpus") {
            a.num_cpus = Some(number(meta.value()?)?);
        } else if meta.path.is_ident("max_retries") {
            a.max_retries = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("max_preemptions") {
            a.max_preemptions = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("num_returns") {
            let lit = meta.value()?.parse::<LitInt>()?;
            let n: u32 = lit.base10_parse()?;
            if n < 2 {
                return Err(syn::Error::new(lit.span(), "num_returns splits a tuple: give 2 or more"));
            }
            a.num_returns = Some(n);
        } else if meta.path.is_ident("streaming") {
            a.streaming = true;
        } else if meta.path.is_ident("priority") {
            a.priority = Some(priority(meta.value()?)?);
        } else if meta.path.is_ident("name") {
            a.name = Some(meta.value()?.parse::<LitStr>()?.value());
        } else if meta.path.is_ident("resources") {
            meta.parse_nested_meta(|m| {
                let name = m.path.get_ident().ok_or_else(|| m.error("expected a resource name"))?.to_string();
                a.resources.push((name, number(m.value()?)?));
                Ok(())
            })?;
        } else {
            return Err(
                meta.error("expected num_cpus, max_retries, max_preemptions, num_returns, streaming, name, priority or resources(...)")
            );
        }
        Ok(())
    });
    syn::parse::Parser::parse(parser, attr)?;
    if a.streaming && a.num_returns.is_some() {
        return Err(syn::Error::new(
            Span::call_site(),
            "a function is either streaming (one ref per value it yields) or has num_returns, not both",
        ));
    }
    Ok(a)
}

#[derive(Default)]
pub(crate) struct ActorArgs {
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) max_restarts: Option<u32>,
    pub(crate) max_task_retries: Option<u32>,
    pub(crate) num_cpus: Option<f64>,
    pub(crate) priority: Option<String>,
}

pub(crate) fn parse_actor_args(attr: TokenStream) -> syn::Result<ActorArgs> {
    let mut a = ActorArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("max_concurrency") {
            a.max_concurrency = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("max_restarts") {
            a.max_restarts = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("max_task_retries") {
            a.max_task_retries = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("num_cpus") {
            a.num_cpus = Some(number(meta.value()?)?);
        } else if meta.path.is_ident("priority") {
            a.priority = Some(priority(meta.value()?)?);
        } else {
            return Err(meta.error("expected max_concurrency, max_restarts, max_task_retries, num_cpus or priority"));
        }
        Ok(())
    });
    syn::parse::Parser::parse(parser, attr)?;
    Ok(a)
}
