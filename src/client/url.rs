//! The server's URL: checking it, showing it, and the request target and `Host` it gives.

use crate::{Error, Result};

/// Checks that `url` is a `ws://` or `wss://` URL with a host, as the client needs it.
///
/// # Errors
/// [`Error::InvalidUrl`] saying what is wrong: not a URL, another scheme, no host.
pub fn parse_url(url: &str) -> Result<http::Uri> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some(_) => return Err(invalid("the scheme must be ws:// or wss://")),
        None => return Err(invalid("missing scheme: write ws://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("missing host"));
    }
    Ok(uri)
}

/// `url` as people write it: `ws://host:port`, without the `/` that `Uri` adds.
pub fn display_url(url: &http::Uri) -> String {
    let text = url.to_string();
    match text.strip_suffix('/') {
        Some(bare) if url.path() == "/" && url.query().is_none() => bare.to_owned(),
        _ => text,
    }
}

/// The `Host` header for `uri`: its authority without any user information.
pub(super) fn host_header(uri: &http::Uri) -> String {
    let authority = uri.authority().map_or("", http::uri::Authority::as_str);
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

/// The request target for `uri`: its path and query, with `params` added (any of
/// the same name already in the query replaced).
pub fn request_target(uri: &http::Uri, params: &[(&str, String)]) -> String {
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    let ours = |pair: &&str| {
        params
            .iter()
            .any(|(key, _)| pair.split('=').next() == Some(*key))
    };
    let mut query: Vec<String> = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty() && !ours(pair))
        .map(str::to_owned)
        .collect();
    query.extend(params.iter().map(|(key, value)| format!("{key}={value}")));
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> Vec<(&'static str, String)> {
        vec![("name", name.to_owned())]
    }

    #[test]
    fn the_name_goes_in_the_query_and_the_path_stays() {
        let uri = |s: &str| parse_url(s).expect("valid");
        assert_eq!(request_target(&uri("ws://h:2000"), &[]), "/");
        assert_eq!(
            request_target(&uri("ws://h:2000"), &name("alice")),
            "/?name=alice"
        );
        assert_eq!(
            request_target(&uri("ws://h:2000/rust"), &name("alice")),
            "/rust?name=alice"
        );
        assert_eq!(
            request_target(&uri("ws://h/rust?x=1"), &name("bob")),
            "/rust?x=1&name=bob"
        );
        assert_eq!(
            request_target(&uri("ws://h/?name=old&x=1"), &name("new")),
            "/?x=1&name=new"
        );
        assert_eq!(
            request_target(&uri("ws://h/r?name=kept"), &[]),
            "/r?name=kept"
        );
        assert_eq!(host_header(&uri("ws://user@[::1]:9/x")), "[::1]:9");
    }
}
