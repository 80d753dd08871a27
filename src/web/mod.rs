//! The chat in a browser: one page, served by the server itself at every room's
//! path (`/rust` is the page of `rust`), with its script, style and icon under
//! `/_/`, all embedded in the binary at build time. The page speaks the structured
//! protocol; `chat.js` says how it joins, resumes and asks for the token. Which path
//! is which is decided in `crate::route`.

use http::StatusCode;

use crate::handshake::{self, Reply};

/// What the page may load and do: its script, style and images from its own server
/// only (no inline code, so injected markup runs nothing), connections to its own
/// server only (`'self'` covers `ws:` and `wss:` to the same host), no plugins, no
/// `<base>`, no form posts, and no framing by other sites.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Where the web page's own files are: a room's path has exactly one segment, so
/// `/_/chat.js` can never be a room.
pub(crate) const FILES_PREFIX: &str = "/_/";

/// The name under `/_/` of the admission check: a plain GET answered as an upgrade
/// with the same `Authorization` would be on the token and origin (204, 401 or
/// 403). A browser cannot see why a WebSocket was refused; the page asks here.
pub(crate) const AUTH_FILE: &str = "auth";

/// A file of the page, embedded at build time.
#[derive(Debug)]
pub(crate) struct File {
    /// Its name under `/_/`; empty for the page itself.
    pub(crate) name: &'static str,
    /// Its media type.
    content_type: &'static str,
    /// Its content.
    pub(crate) body: &'static str,
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
pub(crate) const PAGE: File = File::new("", "text/html; charset=utf-8", include_str!("chat.html"));

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

/// The page's file named `name` (under `/_/`), if there is one.
pub(crate) fn file(name: &str) -> Option<&'static File> {
    FILES.iter().find(|file| file.name == name)
}

/// `file` with the page's headers, or `304 Not Modified` (same headers, no body)
/// when the browser's copy is this one.
pub(crate) fn serve(file: &File, headers: &http::HeaderMap) -> Reply {
    let etag = file.etag();
    let fresh = handshake::list(headers, http::header::IF_NONE_MATCH)
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

    fn get(file: &File, headers: &[(&'static str, &str)]) -> Reply {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().expect("a header value"));
        }
        serve(file, &map)
    }

    // The headers a browser gets are checked on the wire, in tests/web.rs.
    #[test]
    fn files_are_found_by_name() {
        assert_eq!(
            file("chat.css").map(|f| f.content_type),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(
            file("icon.svg").map(|f| f.content_type),
            Some("image/svg+xml")
        );
        assert!(file("chat.jsx").is_none());
        assert!(file("").is_none(), "the page is no file under /_/");
    }

    #[test]
    fn a_current_copy_gets_304_without_a_body() {
        let etag = FILES[0].etag();
        for header in [etag.clone(), format!("\"other\", W/{etag}"), "*".to_owned()] {
            let reply = get(&FILES[0], &[("if-none-match", &header)]);
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{header}");
            assert_eq!(reply.body, "");
            assert_eq!(reply.header("ETag"), Some(etag.as_str()));
            assert_eq!(reply.header("Content-Type"), None);
        }
        let stale = get(&FILES[0], &[("if-none-match", "\"0000000000000000\"")]);
        assert_eq!(stale.status, StatusCode::OK);
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
