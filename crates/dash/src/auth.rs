//! Who may see the dashboard: holders of its access token, which is derived from the cluster
//! token (an HMAC of a fixed label under it), so that a browser's cookie or a scraper's
//! configuration never holds what joins the cluster.

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use subtle::ConstantTimeEq;

use crate::api::App;

/// The cookie that keeps a browser logged in.
pub const COOKIE: &str = "ferry_dashboard";

/// The dashboard's access token for a cluster token: 64 hex digits.
pub fn access_token(cluster_token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(cluster_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"ferry dashboard access v1");
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is the access token (in constant time).
fn is_access(app: &App, given: &str) -> bool {
    given.len() == app.access.len() && bool::from(given.as_bytes().ct_eq(app.access.as_bytes()))
}

/// Whether `given` is the access token or the cluster token (the login form takes either).
fn may_log_in(app: &App, given: &str) -> bool {
    let given = given.trim();
    is_access(app, given) || is_access(app, &access_token(given))
}

/// Whether the request carries the access token, in the cookie or as a bearer token.
pub fn allowed(app: &App, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| is_access(app, t.trim()));
    bearer
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == COOKIE && is_access(app, v))
}

/// The answer to a request without the token.
pub fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"the dashboard needs its access token: open the URL `ferry start` printed, or log in at /login with the cluster token"}"#,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
}

fn logged_in(app: &App) -> Response {
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", app.access);
    // A redirect without a fragment keeps the one the browser had (`/?token=..#/tasks`).
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// `/`: the page, once logged in; `?token=` logs in.
pub async fn index(State(app): State<Arc<App>>, Query(q): Query<TokenQuery>, headers: HeaderMap) -> Response {
    match q.token {
        Some(t) if may_log_in(&app, &t) => logged_in(&app),
        Some(_) => login_page(StatusCode::UNAUTHORIZED, "That token is not this cluster's.").into_response(),
        None if allowed(&app, &headers) => Html(crate::api::INDEX).into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "").into_response()
}

pub async fn login(State(app): State<Arc<App>>, Form(f): Form<LoginForm>) -> Response {
    if may_log_in(&app, &f.token) {
        logged_in(&app)
    } else {
        login_page(StatusCode::UNAUTHORIZED, "That token is not this cluster's.").into_response()
    }
}

fn login_page(status: StatusCode, problem: &str) -> (StatusCode, Html<String>) {
    let problem = if problem.is_empty() { String::new() } else { format!(r#"<p class="error">{problem}</p>"#) };
    (status, Html(crate::api::LOGIN.replace("<!--problem-->", &problem)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_token_is_derived_and_not_the_cluster_token() {
        let a = access_token("a-cluster-token-of-at-least-32-characters");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, access_token("another-cluster-token-of-32-characters!"));
        assert_eq!(a, access_token("a-cluster-token-of-at-least-32-characters"));
    }
}
