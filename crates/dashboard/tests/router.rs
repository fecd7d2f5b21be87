//! The dashboard router over real HTTP requests (tower `oneshot`, no network needed).

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use infinibay_dashboard::{Asset, BUILT, assets, mount, router, router_for};
use tower::ServiceExt;

static BUILT_TABLE: &[Asset] = &[
    Asset {
        path: "index.html",
        bytes: b"<!doctype html><title>t</title><script type=module src=/assets/app-ABCD1234.js></script>",
        content_type: "text/html; charset=utf-8",
        etag: "\"00000000000000aa\"",
        immutable: false,
    },
    Asset {
        path: "assets/app-ABCD1234.js",
        bytes: b"console.log(1)",
        content_type: "text/javascript; charset=utf-8",
        etag: "\"00000000000000bb\"",
        immutable: true,
    },
    Asset {
        path: "assets/app-ABCD1234.css",
        bytes: b"body{}",
        content_type: "text/css; charset=utf-8",
        etag: "\"00000000000000cc\"",
        immutable: true,
    },
];

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

async fn get(app: Router, uri: &str, if_none_match: Option<&str>) -> Answer {
    let mut request = Request::builder().uri(uri);
    if let Some(tag) = if_none_match {
        request = request.header(header::IF_NONE_MATCH, tag);
    }
    let response = app
        .oneshot(request.body(Body::empty()).expect("valid request"))
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body readable")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn header_of(answer: &Answer, name: header::HeaderName) -> &str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn root_serves_index_html_revalidated_with_a_script_only_csp() {
    let answer = get(router_for(BUILT_TABLE), "/", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        header_of(&answer, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(header_of(&answer, header::CACHE_CONTROL), "no-cache");
    assert_eq!(header_of(&answer, header::ETAG), "\"00000000000000aa\"");
    assert!(header_of(&answer, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
    assert_eq!(answer.body, BUILT_TABLE[0].bytes);
}

#[tokio::test]
async fn hashed_assets_have_their_content_type_and_are_immutable() {
    let js = get(router_for(BUILT_TABLE), "/assets/app-ABCD1234.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(
        header_of(&js, header::CONTENT_TYPE),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        header_of(&js, header::CACHE_CONTROL),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header_of(&js, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(js.body, b"console.log(1)");
    let css = get(router_for(BUILT_TABLE), "/assets/app-ABCD1234.css", None).await;
    assert_eq!(
        header_of(&css, header::CONTENT_TYPE),
        "text/css; charset=utf-8"
    );
}

#[tokio::test]
async fn a_matching_etag_answers_304_without_a_body() {
    let answer = get(router_for(BUILT_TABLE), "/", Some("\"00000000000000aa\"")).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert!(answer.body.is_empty());
    let other = get(router_for(BUILT_TABLE), "/", Some("\"0000000000000000\"")).await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_and_traversing_asset_paths_are_404() {
    for uri in [
        "/assets/nope.js",
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/assets/",
    ] {
        let answer = get(router_for(BUILT_TABLE), uri, None).await;
        assert!(
            answer.status == StatusCode::NOT_FOUND,
            "{uri} answered {}",
            answer.status
        );
    }
}

#[tokio::test]
async fn without_a_web_build_every_route_answers_503_with_instructions() {
    for uri in ["/", "/index.html", "/assets/app-ABCD1234.js"] {
        let answer = get(router_for(&[]), uri, None).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(
            header_of(&answer, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let page = String::from_utf8(answer.body).expect("utf-8 page");
        assert!(
            page.contains("dashboard not built: run scripts/build-web"),
            "{page}"
        );
    }
}

#[tokio::test]
async fn the_router_merges_into_a_router_with_state() {
    #[derive(Clone)]
    struct HostState;
    let app: Router = Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(router_for::<HostState>(BUILT_TABLE))
        .with_state(HostState);
    assert_eq!(
        get(app.clone(), "/healthz", None).await.status,
        StatusCode::OK
    );
    assert_eq!(get(app, "/", None).await.status, StatusCode::OK);
}

/// The real table is what `web/dist` held at compile time, served byte for byte.
#[tokio::test]
async fn the_embedded_build_matches_web_dist() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
    if std::env::var_os("INFINIBAY_WEB_DIST").is_some() {
        return; // built from another directory; nothing to compare here
    }
    assert_eq!(
        BUILT,
        dist.join("index.html").is_file(),
        "cfg(dashboard_built) follows web/dist"
    );
    if !BUILT {
        let answer = get(router(), "/", None).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        return;
    }
    let index = get(router(), "/", None).await;
    assert_eq!(index.status, StatusCode::OK);
    let html = String::from_utf8(index.body).expect("utf-8 index");
    for asset in assets() {
        let on_disk = std::fs::read(dist.join(asset.path)).expect("embedded file still on disk");
        assert_eq!(
            asset.bytes,
            on_disk.as_slice(),
            "{} differs from web/dist",
            asset.path
        );
        if let Some(name) = asset.path.strip_prefix("assets/") {
            // Entry bundles are named by index.html; code-split chunks (noVNC) by the bundle
            // that imports them.
            let referenced = html.contains(name)
                || assets()
                    .iter()
                    .filter(|other| other.path != asset.path)
                    .any(|other| contains(other.bytes, name.as_bytes()));
            assert!(
                referenced,
                "neither index.html nor another asset references {name}"
            );
            let served = get(router(), &format!("/{}", asset.path), None).await;
            assert_eq!(served.status, StatusCode::OK);
            assert!(
                asset.immutable,
                "{} should carry a content hash",
                asset.path
            );
        }
    }
}

/// A layer that answers a path no route has, as socketioxide does for `/socket.io/`.
fn app_with_a_layer_serving_unrouted_paths() -> Router {
    Router::new()
        .route("/graphql", axum::routing::post(|| async { "graphql" }))
        .layer(axum::middleware::from_fn(
            |request: Request<Body>, next: axum::middleware::Next| async move {
                if request.uri().path().starts_with("/socket.io/") {
                    return axum::response::IntoResponse::into_response("socket.io");
                }
                next.run(request).await
            },
        ))
}

#[tokio::test]
async fn mount_keeps_the_layers_of_the_app_for_unrouted_paths() {
    let app = mount(app_with_a_layer_serving_unrouted_paths());
    let io = get(app.clone(), "/socket.io/?EIO=4&transport=polling", None).await;
    assert_eq!(io.status, StatusCode::OK);
    assert_eq!(io.body, b"socket.io");
    let index = get(app, "/", None).await;
    assert!(
        index.status == StatusCode::OK || index.status == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        index.status
    );
}

/// Why `mount` exists: merged the other way round, axum keeps the dashboard's plain fallback.
#[tokio::test]
async fn merging_the_dashboard_into_a_layered_app_loses_its_fallback_layer() {
    let app = app_with_a_layer_serving_unrouted_paths().merge(router());
    let io = get(app, "/socket.io/?EIO=4&transport=polling", None).await;
    assert_eq!(io.status, StatusCode::NOT_FOUND);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
