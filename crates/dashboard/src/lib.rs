//! The infinibay web dashboard, embedded.
//!
//! `build.rs` embeds every file of `web/dist` (built by `scripts/build-web`) into the binary;
//! [`router`] serves them at `/` and `/assets/*`. When the crate was compiled without a web
//! build, the same routes answer `503` with a page that says how to build it — never a blank
//! page.
//!
//! Caching: bundles with a content hash in their name (`app-3HX7KQ2P.js`) are `immutable` for a
//! year; `index.html` is revalidated on every load (`no-cache` + ETag), so a new binary's
//! dashboard is picked up at once.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Path under `web/dist`, `/`-separated (`index.html`, `assets/app-3HX7KQ2P.js`).
    pub path: &'static str,
    /// The file's bytes.
    pub bytes: &'static [u8],
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Strong ETag (quoted), from the content.
    pub etag: &'static str,
    /// The name carries a content hash: safe to cache forever.
    pub immutable: bool,
}

include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// Whether this binary was compiled with a web build (`web/dist/index.html` existed).
pub const BUILT: bool = cfg!(dashboard_built);

/// The embedded files (empty when [`BUILT`] is false).
pub fn assets() -> &'static [Asset] {
    ASSETS
}

/// GraphiQL's page (`web/dist/graphiql.html`, naming its hashed bundle under
/// `/assets/graphiql/`), when the web build has it. The API answers `GET /graphql` with it when
/// `api.graphiql` is on; the host hands it over (`ApiSettings::graphiql_page`).
pub fn graphiql_page() -> Option<&'static [u8]> {
    ASSETS
        .iter()
        .find(|asset| asset.path == "graphiql.html")
        .map(|asset| asset.bytes)
}

/// Content-Security-Policy of the page: scripts only from this origin, no inline script, so
/// even a markup injection could not run code. Inline styles stay allowed because uPlot sizes
/// its canvas through style attributes.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

const NOT_BUILT_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>infinibay: dashboard not built</title>\
<style>body{font-family:system-ui,sans-serif;background:#0f141b;color:#e3e8ef;display:grid;\
place-items:center;min-height:100vh;margin:0}main{max-width:560px;padding:24px}\
code{background:#1c2532;padding:2px 6px;border-radius:4px}</style></head>\n<body><main>\
<h1>dashboard not built: run scripts/build-web</h1>\
<p>This infinibay binary was compiled without the web dashboard. Run \
<code>scripts/build-web</code> (needs Node.js 20 and npm), then rebuild the binary \
(<code>cargo build -p infinibay</code>).</p>\
<p>The API is unaffected: GraphQL at <code>/graphql</code>, Socket.IO at \
<code>/socket.io/</code>.</p></main></body></html>\n";

/// Routes `/` and `/assets/{*path}` serving the embedded dashboard. Stateless, so it fits any
/// router state `S`. Prefer [`mount`]: merged the other way round (`app.merge(router())`),
/// axum replaces `app`'s fallback with this router's plain one, and a layer that serves
/// unrouted paths (socketioxide's `/socket.io/`) stops seeing requests.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    router_for(ASSETS)
}

/// `app` plus the dashboard at `/` and `/assets/*`, keeping `app`'s fallback and the layers
/// wrapped around it (the Socket.IO layer answers `/socket.io/` from there).
pub fn mount<S: Clone + Send + Sync + 'static>(app: Router<S>) -> Router<S> {
    router().merge(app)
}

/// [`router`] over an explicit file table (an empty table behaves like a missing build).
pub fn router_for<S: Clone + Send + Sync + 'static>(assets: &'static [Asset]) -> Router<S> {
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| async move { index(assets, &headers) }),
        )
        .route(
            "/index.html",
            get(move |headers: HeaderMap| async move { index(assets, &headers) }),
        )
        .route(
            "/assets/{*path}",
            get(
                move |Path(path): Path<String>, headers: HeaderMap| async move {
                    asset(assets, &path, &headers)
                },
            ),
        )
}

fn index(assets: &'static [Asset], headers: &HeaderMap) -> Response {
    match assets.iter().find(|a| a.path == "index.html") {
        Some(page) => serve(page, headers),
        None => not_built(),
    }
}

fn asset(assets: &'static [Asset], path: &str, headers: &HeaderMap) -> Response {
    if !assets.iter().any(|a| a.path == "index.html") {
        return not_built();
    }
    // A plain table lookup: no file system access, so `..` or encoded separators cannot reach
    // anything outside the embedded set.
    let wanted = format!("assets/{path}");
    match assets.iter().find(|a| a.path == wanted) {
        Some(found) => serve(found, headers),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such dashboard asset (the page may be older than this server: reload it)\n",
        )
            .into_response(),
    }
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let cache_control = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if etag_matches(headers, asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.bytes,
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    out.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type.starts_with("text/html") {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

fn not_built() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        NOT_BUILT_PAGE,
    )
        .into_response()
}
