//! HTTP plumbing shared by both proxies.

pub mod body;
pub mod conn_limit;
pub mod detach;
pub mod framing;
pub mod h2_guard;
pub mod headers;
pub mod listen;
pub mod park;
pub mod proxy;
pub mod response;
pub mod server;
