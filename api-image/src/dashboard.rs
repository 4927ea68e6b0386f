//! The dashboard: a static page served at `/dashboard` that reads the API with a key the
//! user pastes. Every asset is compiled into the binary; the page holds no data, so it needs
//! no key, and it loads nothing from anywhere but this server (the CSP says so).

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;

/// One file of the dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The file name under `/dashboard/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The page itself.
pub const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("dashboard/index.html"),
};

/// The files the page loads, served at `/dashboard/{name}`.
pub const ASSETS: [Asset; 4] = [
    INDEX,
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/dashboard.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/dashboard.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("dashboard/icon.svg"),
    },
];

/// Only this server's own scripts, styles, images and connections; no framing, no inline
/// script or style, no forms posting anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset named `name`, if the dashboard has one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

fn serve(asset: &Asset) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Small files compiled into the binary: revalidate, so an upgrade shows at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (StatusCode::OK, headers, asset.body).into_response()
}

/// `GET /dashboard`: the page.
pub async fn page() -> Response {
    serve(&INDEX)
}

/// `GET /dashboard/{file}`: one of the page's files, or 404.
pub async fn file(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some(asset) => serve(asset),
        None => ApiError::new(StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
    }
}

/// The local paths a text references in `src="…"` and `href="…"` attributes, in order.
pub fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let Some(end) = rest.find('"') else { break };
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_of_the_page_is_a_served_asset() {
        let references = references(INDEX.body);
        assert!(references.len() >= 3, "{references:?}");
        for reference in references {
            let name = reference
                .strip_prefix("/dashboard/")
                .unwrap_or_else(|| panic!("{reference} is not under /dashboard/"));
            assert!(asset(name).is_some(), "{reference} is not an asset");
        }
    }

    #[test]
    fn no_asset_names_another_origin() {
        for asset in ASSETS {
            for scheme in ["http://", "https://", "//cdn", "ws://", "wss://"] {
                // The SVG namespace is an identifier, not a fetch.
                let body = asset.body.replace("http://www.w3.org/2000/svg", "");
                assert!(!body.contains(scheme), "{} contains {scheme}", asset.name);
            }
        }
    }

    #[test]
    fn references_are_read_from_src_and_href() {
        assert_eq!(
            references(r##"<link href="/a.css"><script src="/b.js"></script><a href="#x">"##),
            vec!["/b.js", "/a.css", "#x"]
        );
    }
}
