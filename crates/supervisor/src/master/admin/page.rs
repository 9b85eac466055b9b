//! The dashboard's files, built into the binary: no external asset, nothing inline, so the
//! same Content-Security-Policy as the chat's pages holds.

use http::Response;

const HTML: &str = include_str!("page/dashboard.html");
const SCRIPT: &str = include_str!("page/dashboard.js");
const STYLE: &str = include_str!("page/dashboard.css");

/// The content type and body of the page file at `path`.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", HTML)),
        "/dashboard.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "/dashboard.css" => Some(("text/css; charset=utf-8", STYLE)),
        // Browsers ask for it on their own: an empty one, rather than a 404 in the console.
        "/favicon.ico" => Some(("image/x-icon", "")),
        _ => None,
    }
}

/// Adds the page's defences, the chat's own: scripts, styles and requests from this origin
/// only, no framing.
pub fn secured<B>(mut response: Response<B>) -> Response<B> {
    sticky::page_headers::secure_headers(response.headers_mut());
    response
}
