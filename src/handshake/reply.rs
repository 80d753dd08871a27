//! An HTTP answer, written by hand: a status, a few fixed headers, a body of one
//! line or a file, and `Connection: close` (one request per connection).

use std::borrow::Cow;

use http::StatusCode;

/// An HTTP answer instead of an upgrade: a refusal with a one-line reason, or the
/// answer to a plain request such as the health check or the web page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The header lines other than `Content-Length` and `Connection`, in order.
    headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body: one line saying why, the health figures, or a file of the page.
    pub(crate) body: Cow<'static, str>,
    /// Whether a newline follows the body (one-line bodies); files are sent as they are.
    newline: bool,
}

/// The plain-text media type of one-line answers.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

impl Reply {
    /// A plain-text reply with `status` and a one-line `reason`.
    pub(crate) fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, TEXT_PLAIN, reason.into(), true)
    }

    /// A reply of media type `content_type` with `status` and `body`.
    pub(crate) fn typed(
        status: StatusCode,
        content_type: &'static str,
        body: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::with_body(status, content_type, body.into(), false)
    }

    /// A JSON reply with `status` and `body`.
    pub(crate) fn json(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, "application/json", body.into(), true)
    }

    /// `200 OK` with a file of `content_type`, sent as it is.
    pub(crate) fn file(content_type: &'static str, body: &'static str) -> Self {
        Self::with_body(StatusCode::OK, content_type, Cow::Borrowed(body), false)
    }

    /// A reply without a body, such as `204 No Content` or `304 Not Modified`.
    pub(crate) fn empty(status: StatusCode) -> Self {
        let mut reply = Self::with_body(status, TEXT_PLAIN, Cow::Borrowed(""), false);
        reply.headers.retain(|(name, _)| *name != "Content-Type");
        reply
    }

    fn with_body(
        status: StatusCode,
        content_type: &'static str,
        body: Cow<'static, str>,
        newline: bool,
    ) -> Self {
        let mut headers = vec![
            ("Content-Type", Cow::Borrowed(content_type)),
            ("Cache-Control", Cow::Borrowed("no-store")),
            ("X-Content-Type-Options", Cow::Borrowed("nosniff")),
        ];
        match status {
            StatusCode::UPGRADE_REQUIRED => headers.extend([
                ("Upgrade", Cow::Borrowed("websocket")),
                ("Sec-WebSocket-Version", Cow::Borrowed("13")),
            ]),
            StatusCode::UNAUTHORIZED => headers.push(("WWW-Authenticate", Cow::Borrowed("Bearer"))),
            _ => {}
        }
        Self {
            status,
            headers,
            body,
            newline,
        }
    }

    /// Sets the header `name` to `value`, in place of one of the same name.
    pub(crate) fn with_header(
        mut self,
        name: &'static str,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, old)) => *old = value,
            None => self.headers.push((name, value)),
        }
        self
    }

    /// The value of the header `name`, if the reply has it.
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// The whole HTTP response, head and body.
    pub(super) fn to_response(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("")
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let newline = if self.newline { "\n" } else { "" };
        // Answers that never have a body have no length either (RFC 9110, 8.6).
        if !matches!(
            self.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        ) {
            let _ = write!(
                head,
                "Content-Length: {}\r\n",
                self.body.len() + newline.len()
            );
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut response = head.into_bytes();
        response.extend_from_slice(self.body.as_bytes());
        response.extend_from_slice(newline.as_bytes());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_as_they_are_and_bodiless_answers_have_no_length() {
        let text = String::from_utf8(
            Reply::file("text/css; charset=utf-8", "a{}")
                .with_header("Cache-Control", "no-cache")
                .with_header("ETag", "\"1\"")
                .to_response(),
        )
        .expect("utf-8");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/css; charset=utf-8\r\nCache-Control: no-cache\r\n\
             X-Content-Type-Options: nosniff\r\nETag: \"1\"\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\na{}"
        );
        let text =
            String::from_utf8(Reply::empty(StatusCode::NOT_MODIFIED).to_response()).expect("utf-8");
        assert_eq!(
            text,
            "HTTP/1.1 304 Not Modified\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn reply_is_a_complete_http_response() {
        let text = String::from_utf8(
            Reply::new(StatusCode::FORBIDDEN, "origin not allowed").to_response(),
        )
        .expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("Content-Length: 19\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\norigin not allowed\n"), "{text}");
    }
}
