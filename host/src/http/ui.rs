//! The plugin page, `GET /ui/`: static files embedded in the binary
//! (`host/ui/`, rust-embed), talking to the admin API with the token it
//! gets at login. It loads nothing from another host, which its
//! `Content-Security-Policy` enforces.

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header},
};
use rust_embed::RustEmbed;

use super::envelope;

#[derive(RustEmbed)]
#[folder = "ui/"]
struct Assets;

/// Only the page's own files, scripts and styles; connections only to this host.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The file a request for an embedded page (`/ui/…`, `/docs/…`) names
/// below the page's directory; `None` for the page itself without its
/// slash, which [`to_page_directory`] answers.
pub(crate) fn page_file(req: &HttpRequest) -> Option<&str> {
    let tail = req.match_info().get("tail").unwrap_or("");
    (!tail.is_empty() || req.path().ends_with('/')).then_some(tail)
}

/// The redirect from `/page` to `/page/`, so the page's relative links
/// resolve.
pub(crate) fn to_page_directory(req: &HttpRequest) -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, format!("{}/", req.path())))
        .finish()
}

/// `GET /ui/{tail}`: a file of the page (`index.html` for the directory).
pub(crate) async fn page(req: HttpRequest) -> HttpResponse {
    let Some(tail) = page_file(&req) else {
        return to_page_directory(&req);
    };
    let name = if tail.is_empty() { "index.html" } else { tail };
    match Assets::get(name) {
        Some(file) => HttpResponse::Ok()
            .content_type(file.metadata.mimetype())
            .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(file.data.into_owned()),
        None => envelope::error(
            StatusCode::NOT_FOUND,
            &format!("no file {} in the plugin page", req.path()),
        ),
    }
}
