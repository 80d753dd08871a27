//! The chat in a browser: one page, served by the server itself at every room's
//! path (`/rust` is the page of `rust`), with its script, style and icon under
//! `/_/`, all embedded in the binary at build time. The page speaks the structured
//! protocol; `chat.js` says how it joins, resumes and asks for the token.

use http::StatusCode;

use crate::handshake::{FILES_PREFIX, PageRequest, Reply};
use crate::protocol;

/// What the page may load and do: its script, style and images from its own server
/// only (no inline code, so injected markup runs nothing), connections to its own
/// server only (`'self'` covers `ws:` and `wss:` to the same host), no plugins, no
/// `<base>`, no form posts, and no framing by other sites.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The name under `/_/` of the admission check: a plain GET answered as an upgrade
/// with the same `Authorization` would be on the token and origin (204, 401 or
/// 403). A browser cannot see why a WebSocket was refused; the page asks here.
pub(crate) const AUTH_FILE: &str = "auth";

/// A file of the page, embedded at build time.
struct File {
    /// Its name under `/_/`; empty for the page itself.
    name: &'static str,
    /// Its media type.
    content_type: &'static str,
    /// Its content.
    body: &'static str,
    /// A hash of the content, computed at build time, for the `ETag`.
    hash: u64,
}

impl File {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Self {
        Self {
            name,
            content_type,
            body,
            hash: fnv1a(body.as_bytes()),
        }
    }

    /// The `ETag` header's value.
    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// The page, served at every room's path.
const PAGE: File = File::new("", "text/html; charset=utf-8", include_str!("chat.html"));

/// The page's files under `/_/`.
const FILES: [File; 3] = [
    File::new(
        "chat.js",
        "text/javascript; charset=utf-8",
        include_str!("chat.js"),
    ),
    File::new(
        "chat.css",
        "text/css; charset=utf-8",
        include_str!("chat.css"),
    ),
    File::new("icon.svg", "image/svg+xml", include_str!("icon.svg")),
];

/// The answer to a plain request for the page or one of its files: the page at a
/// room's path (400 with the rule for a path that is not a room), a file under
/// `/_/` (404 for a name that is none), or the admission check, which `admit`
/// decides: `204`, or with a signed token `200` and the name it gives
/// (`{"name":"alice"}`), which the page then joins with.
pub(crate) fn answer(
    request: &PageRequest,
    admit: impl FnOnce() -> Result<Option<String>, Reply>,
) -> Reply {
    let Some(name) = request.path.strip_prefix(FILES_PREFIX) else {
        return match protocol::room_from_path(&request.path) {
            Ok(_) => serve(&PAGE, request),
            Err(reason) => Reply::new(StatusCode::BAD_REQUEST, reason),
        };
    };
    if name == AUTH_FILE {
        return match admit() {
            Ok(None) => Reply::empty(StatusCode::NO_CONTENT),
            Ok(Some(name)) => Reply::json(
                StatusCode::OK,
                serde_json::json!({ "name": name }).to_string(),
            ),
            Err(refusal) => refusal,
        };
    }
    match FILES.iter().find(|file| file.name == name) {
        Some(file) => serve(file, request),
        None => Reply::new(
            StatusCode::NOT_FOUND,
            format!("no such file {:?}", request.path),
        ),
    }
}

/// `file` with the page's headers, or `304 Not Modified` (same headers, no body)
/// when the browser's copy is this one.
fn serve(file: &File, request: &PageRequest) -> Reply {
    let etag = file.etag();
    let fresh = crate::handshake::list(&request.headers, http::header::IF_NONE_MATCH)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    let reply = if fresh {
        Reply::empty(StatusCode::NOT_MODIFIED)
    } else {
        Reply::file(file.content_type, file.body)
    };
    // `no-cache`, not `no-store`: the browser keeps its copy but asks each time
    // whether it is still current (`ETag`, answered with a bodiless 304), so a new
    // server's page is used at once, never a new page with an old script. Nothing
    // in these files is secret, so a kept copy gives nothing away.
    reply
        .with_header("Cache-Control", "no-cache")
        .with_header("ETag", etag)
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .with_header("Referrer-Policy", "no-referrer")
}

/// The 64-bit FNV-1a hash of `bytes`: enough to tell two versions of a file apart,
/// and computable at build time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, headers: &[(&'static str, &str)]) -> Reply {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().expect("a header value"));
        }
        let request = PageRequest {
            path: path.to_owned(),
            headers: map,
        };
        answer(&request, || {
            Err(Reply::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token",
            ))
        })
    }

    #[test]
    fn every_room_path_gets_the_page_with_its_policy() {
        for path in ["/", "/rust", "/rust/"] {
            let reply = get(path, &[]);
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            assert_eq!(reply.body, PAGE.body);
            assert_eq!(
                reply.header("Content-Type"),
                Some("text/html; charset=utf-8")
            );
            assert_eq!(
                reply.header("Content-Security-Policy"),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(reply.header("X-Content-Type-Options"), Some("nosniff"));
            assert_eq!(reply.header("Cache-Control"), Some("no-cache"));
        }
        let reply = get("/a b", &[]);
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(
            reply.body.starts_with("invalid room name \"a b\""),
            "{reply:?}"
        );
    }

    #[test]
    fn files_are_served_by_name_and_others_are_not_found() {
        assert_eq!(get("/_/chat.js", &[]).body, FILES[0].body);
        assert_eq!(
            get("/_/chat.css", &[]).header("Content-Type"),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(
            get("/_/icon.svg", &[]).header("Content-Type"),
            Some("image/svg+xml")
        );
        let missing = get("/_/chat.jsx", &[]);
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.body, "no such file \"/_/chat.jsx\"");
    }

    #[test]
    fn a_current_copy_gets_304_without_a_body() {
        let etag = FILES[0].etag();
        for header in [etag.clone(), format!("\"other\", W/{etag}"), "*".to_owned()] {
            let reply = get("/_/chat.js", &[("if-none-match", &header)]);
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{header}");
            assert_eq!(reply.body, "");
            assert_eq!(reply.header("ETag"), Some(etag.as_str()));
            assert_eq!(reply.header("Content-Type"), None);
        }
        let stale = get("/_/chat.js", &[("if-none-match", "\"0000000000000000\"")]);
        assert_eq!(stale.status, StatusCode::OK);
    }

    #[test]
    fn the_admission_check_answers_as_admit_decides() {
        assert_eq!(get("/_/auth", &[]).status, StatusCode::UNAUTHORIZED);
        let request = PageRequest {
            path: "/_/auth".to_owned(),
            headers: http::HeaderMap::new(),
        };
        assert_eq!(answer(&request, || Ok(None)).status, StatusCode::NO_CONTENT);
        let named = answer(&request, || Ok(Some("alice".into())));
        assert_eq!(
            (named.status, named.body.as_ref()),
            (StatusCode::OK, r#"{"name":"alice"}"#)
        );
    }

    #[test]
    fn the_page_loads_only_files_that_are_served_and_has_no_inline_code() {
        let page = PAGE.body;
        let mut linked = 0;
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in page.match_indices(attribute) {
                let value = &page[at + attribute.len()..];
                let value = &value[..value.find('"').expect("a closing quote")];
                let name = value
                    .strip_prefix(FILES_PREFIX)
                    .unwrap_or_else(|| panic!("{value} is not one of the page's files"));
                assert!(
                    FILES.iter().any(|f| f.name == name),
                    "{value} is not served"
                );
                linked += 1;
            }
        }
        assert_eq!(linked, FILES.len(), "every file is linked once");
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "inline style attribute");
        assert_eq!(
            page.matches("<script").count(),
            page.matches("<script src=").count(),
            "inline script"
        );
        for (at, _) in page.match_indices(" on") {
            let rest = &page[at + 3..];
            let word = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
            assert!(!word.starts_with('='), "inline event handler at {rest:.20}");
        }
    }

    #[test]
    fn etags_differ_between_files() {
        let tags: std::collections::HashSet<_> =
            FILES.iter().chain([&PAGE]).map(|f| f.etag()).collect();
        assert_eq!(tags.len(), FILES.len() + 1);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
