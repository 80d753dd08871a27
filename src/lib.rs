//! A WebSocket broadcast chat: a server that fans every text message out to every
//! connected client, and a terminal client.
//!
//! It grows out of the "broadcast chat" exercise that many people learn async Rust
//! from, and keeps its shape and output while fixing what breaks under load: a
//! client that falls behind is told how much it missed instead of being dropped,
//! a stuck peer is noticed and closed, and every network wait has a bound.
//!
//! # Layout
//! - [`auth`]: signed tokens (JWTs): their claims, keys, minting, and the limit on
//!   failed authentications.
//! - [`config`]: every limit and timeout, with defaults ([`ServerConfig`], [`ClientConfig`]).
//! - `error`: the library's [`Error`], one enum.
//! - [`protocol`]: the wire formats (classic lines, `broadcast-chat.v1` frames): tagging,
//!   names and rooms, notices, close reasons.
//! - `handshake`: HTTP/1.1 by hand: the request head, the WebSocket upgrade, answers.
//! - `route`: every HTTP endpoint in one table, and the plain requests' answers.
//! - `admit`: who may come in: the failed-authentication limit, the token, the
//!   origin, and a signed token's room and name.
//! - `publish`: the publish API, `POST /_/rooms/NAME/messages`, for backends.
//! - `hub`: the fan-out: rooms, each with its members, a `tokio::sync::broadcast`
//!   channel per wire format, and its log from the store.
//! - `store`: the rooms' logs (offsets, epoch) and sequencers behind one trait: in
//!   memory, or in Redis.
//! - `limits`: the per-client message rate limit.
//! - `metrics`: what the server counts, and `GET /metrics`.
//! - `state`: what the sessions share with the accept loop: configuration, hub,
//!   metrics, the connection count.
//! - [`server`]: the accept loop and graceful shutdown ([`server::run`]); it starts a
//!   session per connection.
//! - `session`: one connection's task: the upgrade, the welcome and replay, the chat
//!   loop (read, publish, write, write delay, keepalive), the close.
//! - [`tls`]: certificates for `wss://` on both sides, and how the client checks a server's.
//! - `web`: the chat in a browser: the page the server serves, its files, their
//!   headers.
//! - [`cli`]: the `completions` and `man` subcommands both binaries share.
//! - [`client`]: connect, the stdin/socket loop ([`client::chat`], with reconnects),
//!   commands and the terminal mode.
//!
//! Data flows one way: socket → session → hub → every session → socket.

mod admit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
mod error;
mod handshake;
mod hub;
mod limits;
mod metrics;
pub mod protocol;
mod publish;
mod route;
pub mod server;
mod session;
mod state;
mod store;
pub mod tls;
mod web;

pub use config::{
    ClientConfig, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_URL, RedisSentinel, SHARED_BUFFER,
    SHARED_WRITE_DELAY, Secret, ServerConfig,
};
pub use error::{Error, Result};
pub use store::disk::backup::{BackedUp, backup};
